"""Deployment noise: how far a GPU (or any device) deployment moves the logits of a model
whose fingerprint was made on the CPU, and whether that fingerprint still verifies.

Two modes. ``--prepare DIR`` (on the owner's CPU) trains or loads a few models, makes a
default fingerprint of each (small bag, modest generation steps) and writes a
self-contained bundle: weights (safetensors), the ``.vpf`` files, and for natural test
inputs, the fingerprint's samples and the whole refined bag, the CPU float32 and float64
logits (npz)::

    PYTHONPATH=src python3 -m benchmarks.studies.deployment_noise --prepare .gpu/bundle

``--bundle DIR`` (on the target device) runs every model under each deployment variant
(float32 with TF32 off, torch's default flags, TF32 on, cudnn.benchmark, batch sizes 1, 8
and 64, autocast float16 and bfloat16, all weights float16 or bfloat16), compares the
logits with the CPU's, verifies the CPU-made fingerprint through a
:class:`~veriprint.targets.CallableTarget` under the specs top1, probs and logits, and
writes JSON, a Markdown report and a plot::

    PYTHONPATH=src python3 -m benchmarks.studies.deployment_noise --bundle .gpu/bundle --device cuda \\
        --out deployment-noise.json --report docs/measurements/deployment-noise.md

A variant that cannot run on the device (TF32 on a CPU) is skipped with a note; one that
fails is recorded with its error and the run goes on. The run mode needs only torch,
numpy, safetensors (and matplotlib for the plot); without tqdm a silent stand-in is used.
"""

from __future__ import annotations

from benchmarks.studies.deployment_noise import measure
from benchmarks.studies.deployment_noise._common import BUNDLE_FORMAT, BUNDLE_VERSION, SETS, SPECS
from benchmarks.studies.deployment_noise.bundle import RECIPES, Recipe, prepare
from benchmarks.studies.deployment_noise.cli import main
from benchmarks.studies.deployment_noise.measure import deviation, needed_tolerances, run_bundle
from benchmarks.studies.deployment_noise.report import plot_deviation, render, summarize
from benchmarks.studies.deployment_noise.variants import (
           VARIANTS,
           DeviceForward,
           Variant,
           make_forward,
)

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "RECIPES", "SETS", "SPECS", "VARIANTS", "DeviceForward", "Recipe",
           "Variant", "deviation", "main", "make_forward", "measure", "needed_tolerances", "plot_deviation", "prepare",
           "render", "run_bundle", "summarize"]
