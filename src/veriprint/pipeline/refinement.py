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
           model_outputs: OutputKind = "logits") -> tuple[GenerationResult, torch.Tensor, int]:
    """Refined samples (re-described), which of them reached ``refine_factor x floor``, and
    how many were refined.

    See :func:`veriprint.refine.refine_to_boundary`; the samples stay in the ``eps`` ball
    around their seeds and on the input grid. Samples are refined in batches of
    ``cfg.generation.batch_size``, in bag order (the seeds closest to a boundary first),
    every one of them: the work is counted, never cut by the clock.
    """
    samples, reached = gen.samples.clone(), torch.zeros(len(gen), dtype=torch.bool, device="cpu")
    done = 0
    # the memory budget's batches (a whole small bag at once)
    for lo in range(0, len(gen), cfg.generation.batch_size):
        part = slice(lo, min(lo + cfg.generation.batch_size, len(gen)))
        ref = refine_to_boundary(model, gen.samples[part], gen.seeds[part], target=cfg.refine_factor * noise.floor,
                                 eps=cfg.generation.eps, norm=cfg.generation.norm, domain=gen.domain,
                                 model_outputs=model_outputs)
        samples[part], reached[part], done = ref.samples, ref.reached, part.stop
    return redescribe(model, gen, samples, model_outputs), reached, done


def redescribe(model: nn.Module, gen: GenerationResult, samples: torch.Tensor,
               model_outputs: OutputKind) -> GenerationResult:
    """``gen`` describing ``samples`` instead (margins, PSNR, grid), keeping its history."""
    return result_for(model, samples, gen.seeds, gen.config, domain=gen.domain, model_outputs=model_outputs,
                      history=gen.history, steps_run=gen.steps_run, seconds=gen.seconds,
                      log_s_before=gen.log_s_before)
