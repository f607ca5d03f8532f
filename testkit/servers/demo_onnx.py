"""The demo's shipped zoo model (``veriprint.zoo:fashion_cnn``) and its tampered copies,
every one an attack of the tampering registry (:func:`veriprint.demo.tampered_copies`),
exported to ONNX for model servers. Built once per test process."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from testkit.servers.required import missing
from veriprint.data import load_data
from veriprint.demo import load_shipped, tampered_copies
from veriprint.models import load_model
from veriprint.models.onnx_export import export_onnx

# served names of demo.tampered_copies, in its order (the intact copy first)
NAMES = ("cnn", "cnn-float16", "cnn-int8", "cnn-prune2", "cnn-noise", "cnn-last-x105", "cnn-first-x105")
FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


@dataclass(frozen=True)
class DemoModels:
    model: nn.Module
    fingerprint: Path  # the shipped .vpf
    onnx: dict[str, Path]  # served name -> ONNX file
    labels: dict[str, str]  # served name -> the demo's label of the copy


@functools.lru_cache(maxsize=1)
def demo_models() -> DemoModels:
    """Exports the shipped model and the demo's tampered copies (the registry's measures are
    taken on 500 test images: they do not change the tampered weights)."""
    if not FASHION.exists():
        missing(f"Fashion-MNIST is not installed ({FASHION} missing): run scripts/setup.sh "
                "(Debian package dataset-fashion-mnist)")
    shipped = load_shipped()
    model = load_model(shipped.factory, weights=shipped.weights)
    data = load_data(shipped.dataset, split="test").subset(slice(0, 500))
    d = Path(tempfile.mkdtemp(prefix="veriprint-demo-onnx-"))
    atexit.register(shutil.rmtree, d, True)
    x = torch.zeros(2, *data.x.shape[1:])
    onnx, labels = {}, {}
    for name, (label, copy) in zip(NAMES, tampered_copies(model, data), strict=True):
        onnx[name] = export_onnx(copy, x, d / f"{name}.onnx")
        labels[name] = label
    return DemoModels(model, shipped.fingerprint, onnx, labels)
