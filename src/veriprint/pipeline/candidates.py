"""The candidates a fingerprint is chosen from, and the stages that make them.

:func:`build_candidates` runs stages 1 to 4 on a bag: draw seeds (:mod:`.seeds`),
generate Sensitive-Samples (:func:`veriprint.pipeline.generate.generate`, Algorithm 1), calibrate
the noise floor (:mod:`.calibrate`) and refine towards the decision boundary
(:mod:`.refinement`). Its result, :class:`Candidates`, is what selection, the evaluation
harness and enrollment start from.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from veriprint.data import Dataset, InputDomain
from veriprint.errors import ConfigError
from veriprint.models import OutputKind, model_device
from veriprint.noise import NoiseFloor
from veriprint.pipeline.calibrate import calibrate
from veriprint.pipeline.config import FingerprintConfig
from veriprint.pipeline.cost import CostMeter
from veriprint.pipeline.generate import GenerationResult, generate
from veriprint.pipeline.refinement import refine
from veriprint.pipeline.seeds import draw_seeds

__all__ = ["Candidates", "build_candidates", "eligible"]


@dataclass(frozen=True)
class Candidates:
    """A bag of generated (and possibly refined) samples, described.

    Attributes:
        gen: the generation result, describing the current ``samples`` (margins, PSNR,
            ``log S``, grid), with the ascent's history.
        seed_indices: each sample's seed's index in the data.
        noise: the calibrated noise floor.
        reached: which samples refinement brought to its target margin (all False
            without refinement).
        boundary: whether the seeds were drawn near decision boundaries.
        refined: how many refinement ran on (all of them; 0 without refinement).
    """

    gen: GenerationResult
    seed_indices: torch.Tensor
    noise: NoiseFloor
    reached: torch.Tensor
    boundary: bool
    refined: int = 0

    @property
    def samples(self) -> torch.Tensor:
        return self.gen.samples

    @property
    def seeds(self) -> torch.Tensor:
        return self.gen.seeds

    def __len__(self) -> int:
        return len(self.gen)


def build_candidates(model: nn.Module, data: Dataset | torch.Tensor, cfg: FingerprintConfig, *,
                     domain: InputDomain, model_outputs: OutputKind = "logits",
                     progress: bool = True, meter: CostMeter | None = None) -> Candidates:
    """Stages 1-4: seeds, generation, calibration and (when ``cfg.refine``) refinement.

    ``meter`` (optional) records each stage's seconds and model passes. Each stage runs
    its configured work to the end (the ascent its steps, unless its own patience stops
    it; refinement every sample): nothing here reads the clock to decide what to do.
    """
    stage = meter.stage if meter is not None else _no_meter
    boundary = cfg.seeds == "boundary" and cfg.refine
    with stage("seeds"):
        seeds, seed_idx = draw_seeds(data, cfg.bag, cfg.seed, "boundary" if boundary else "random", model,
                                     model_outputs, pool=cfg.pool, batch_size=seed_batch(cfg))
        seeds = seeds.to(model_device(model))  # the bag goes where the model is; the data stays put
    with stage("generate"):
        gen = generate(model, seeds, cfg.generation, domain=domain, model_outputs=model_outputs,
                       progress=progress)
    with stage("calibrate"):
        noise = calibrate(model, gen.samples, cfg, model_outputs=model_outputs)
    reached = torch.zeros(len(gen), dtype=torch.bool, device="cpu")  # masks over the bag stay on the CPU
    refined = 0
    if cfg.refine and cfg.generation.eps > 0:
        with stage("refine"):
            gen, reached, refined = refine(model, gen, noise, cfg, model_outputs=model_outputs)
    return Candidates(gen, seed_idx, noise, reached, boundary, refined)


def seed_batch(cfg: FingerprintConfig) -> int:
    """Batch for the seed pool's margins: the gradient batch (an inference batch four times
    as large took 3.5 GB on EfficientNet-Lite2 at 260x260), and 500 at most (the plan
    prices the stage in these batches, :func:`veriprint.pipeline.plan.seed_batch`)."""
    from veriprint.pipeline.plan import seed_batch as planned

    return planned(cfg.generation.batch_size)


@contextmanager
def _no_meter(_name: str) -> Iterator[None]:
    yield


def eligible(c: Candidates, cfg: FingerprintConfig, need: int) -> torch.Tensor:
    """Which candidates may be chosen: margin above the floor (and, with refinement, when
    enough of them did, refined to the target).

    Raises:
        ConfigError: fewer than ``need`` are eligible, with what to change.
    """
    ok = (c.gen.margin > c.noise.floor).cpu()
    if cfg.refine and int((ok & c.reached).sum()) >= need:
        ok = ok & c.reached
    n_ok = int(ok.sum())
    if n_ok < need:
        raise ConfigError(
            f"only {n_ok} of {len(c)} samples have a top-1 margin above the noise floor "
            f"{c.noise.floor:.3g}; need {need}: use a larger bag or a smaller declared tolerance"
        )
    return ok
