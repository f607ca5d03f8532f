"""Stage 5, twins: for each refined sample, a twin a pixel or two away across the boundary.

A change of the weights that moves the top-1 vs top-2 margin either way flips one of the
pair (see :func:`veriprint.refine.boundary_twins`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from veriprint.models import OutputKind
from veriprint.pipeline.candidates import Candidates
from veriprint.pipeline.config import FingerprintConfig
from veriprint.refine import boundary_twins

__all__ = ["Twins", "make_twins", "wants_twins"]


@dataclass(frozen=True)
class Twins:
    """``samples[i]`` is candidate ``i``'s twin when ``ok[i]`` (else a placeholder);
    ``tried`` candidates were tried (all of them)."""

    samples: torch.Tensor
    ok: torch.Tensor
    tried: int | None = None


def wants_twins(cfg: FingerprintConfig) -> bool:
    """Whether the config stores pairs: refinement and twins on, room for a pair, a ball."""
    return cfg.refine and cfg.twins and cfg.select >= 2 and cfg.generation.eps > 0


def make_twins(model: nn.Module, c: Candidates, cfg: FingerprintConfig, *,
               model_outputs: OutputKind = "logits", keep: torch.Tensor | None = None) -> Twins:
    """Twins of every candidate (or of candidates ``keep``, in that order), at
    ``refine_factor x floor`` on the other side.

    Made in batches of ``cfg.generation.batch_size``, for every candidate: the work is
    counted, never cut by the clock."""
    x, seeds = (c.samples, c.seeds) if keep is None else (c.samples[keep], c.seeds[keep])
    samples, ok = x.clone(), torch.zeros(len(x), dtype=torch.bool, device="cpu")
    tried = 0
    for lo in range(0, len(x), cfg.generation.batch_size):
        part = slice(lo, min(lo + cfg.generation.batch_size, len(x)))
        samples[part], ok[part] = boundary_twins(
            model, x[part], seeds[part], target=cfg.refine_factor * c.noise.floor, eps=cfg.generation.eps,
            norm=cfg.generation.norm, domain=c.gen.domain, model_outputs=model_outputs)
        tried = part.stop
    return Twins(samples, ok, tried)
