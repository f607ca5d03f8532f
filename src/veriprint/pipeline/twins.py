"""Stage 5, twins: for each refined sample, a twin a pixel or two away across the boundary.

A change of the weights that moves the top-1 vs top-2 margin either way flips one of the
pair (see :func:`veriprint.pipeline.twins.boundary_twins`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from veriprint.data import InputDomain
from veriprint.models import OutputKind
from veriprint.noise import as_logits
from veriprint.numerics import top2_margin
from veriprint.pipeline.candidates import Candidates
from veriprint.pipeline.config import FingerprintConfig
from veriprint.pipeline.generate import Norm
from veriprint.pipeline.refinement import settle_margin

__all__ = ["Twins", "boundary_twins", "make_twins", "wants_twins"]


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


def boundary_twins(
    model: nn.Module,
    x: torch.Tensor,
    seeds: torch.Tensor,
    *,
    target: float | torch.Tensor,
    eps: float,
    norm: Norm = "linf",
    domain: InputDomain | None = None,
    model_outputs: OutputKind = "logits",
    steps: int = 24,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For samples at margin about ``target`` (label ``c``, runner-up ``r``), find twins a
    few pixels away on the other side of the boundary, label ``r`` at margin about
    ``target``.

    Returns:
        ``(twins, ok)``: the twins, and whether each crossed to a new label with a margin of
        at least ``target / 2`` over every other class (those that did not are unusable).
    """
    domain = domain or InputDomain()
    n = x.shape[0]
    tau = torch.as_tensor(target, dtype=torch.float64, device=x.device).expand(n).clone()
    with torch.no_grad():
        labels = as_logits(model(x), model_outputs).argmax(dim=1)
    twins = settle_margin(model, x, seeds, labels, -tau, eps=eps, norm=norm, domain=domain,
                          model_outputs=model_outputs, steps=steps)
    with torch.no_grad():
        z = as_logits(model(twins), model_outputs)
    new = z.argmax(dim=1)
    ok = (new != labels) & (top2_margin(z) >= tau / 2)
    return twins, ok
