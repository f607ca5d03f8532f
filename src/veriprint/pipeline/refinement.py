"""Stage 4, refine: move each sample to just above the noise floor of its decision boundary."""

from __future__ import annotations

import torch
from torch import nn

from veriprint.generate import GenerationResult, result_for
from veriprint.models import OutputKind
from veriprint.noise import NoiseFloor
from veriprint.pipeline.config import FingerprintConfig
from veriprint.refine import refine_to_boundary

__all__ = ["redescribe", "refine"]


def refine(model: nn.Module, gen: GenerationResult, noise: NoiseFloor, cfg: FingerprintConfig, *,
           model_outputs: OutputKind = "logits") -> tuple[GenerationResult, torch.Tensor]:
    """Refined samples (re-described) and which of them reached ``refine_factor x floor``.

    See :func:`veriprint.refine.refine_to_boundary`; the samples stay in the ``eps`` ball
    around their seeds and on the input grid.
    """
    samples, reached = [], []
    b = cfg.generation.batch_size  # the memory budget's batch (a whole small bag at once)
    for x, s in zip(torch.split(gen.samples, b), torch.split(gen.seeds, b), strict=True):
        ref = refine_to_boundary(model, x, s, target=cfg.refine_factor * noise.floor, eps=cfg.generation.eps,
                                 norm=cfg.generation.norm, domain=gen.domain, model_outputs=model_outputs)
        samples.append(ref.samples)
        reached.append(ref.reached)
    return redescribe(model, gen, torch.cat(samples), model_outputs), torch.cat(reached)


def redescribe(model: nn.Module, gen: GenerationResult, samples: torch.Tensor,
               model_outputs: OutputKind) -> GenerationResult:
    """``gen`` describing ``samples`` instead (margins, PSNR, grid), keeping its history."""
    return result_for(model, samples, gen.seeds, gen.config, domain=gen.domain, model_outputs=model_outputs,
                      history=gen.history, steps_run=gen.steps_run, seconds=gen.seconds,
                      log_s_before=gen.log_s_before)
