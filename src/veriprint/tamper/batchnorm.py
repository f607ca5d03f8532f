"""BatchNorm recalibration: the running statistics re-estimated on other data.

A provider that re-estimates a model's BatchNorm statistics (after a conversion, on its own
traffic, to "adapt" it) changes no weight and every normalised activation. The running mean
and variance of every BatchNorm layer are recomputed as the plain average over ``batches``
batches of the attacker's data; the affine weights stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from veriprint.tamper.base import AttackContext, AttackOutcome, register, require

__all__ = ["BnRecalibrateConfig"]


@dataclass(frozen=True)
class BnRecalibrateConfig:
    """Recompute BatchNorm running statistics.

    Args:
        batches: batches of the attacker's data averaged (default 8).
        batch_size: inputs per batch (default 64).
        seed: seed of the inputs drawn (default 0).
    """

    batches: int = 8
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        require(isinstance(self.batches, int) and self.batches >= 1, "batches >= 1", self.batches)
        require(isinstance(self.batch_size, int) and self.batch_size >= 2, "batch_size >= 2", self.batch_size)


@register(BnRecalibrateConfig, "bn-recalibrate", "BatchNorm running statistics re-estimated on other data",
          family="subtle")
def _bn_recalibrate(model: nn.Module, cfg: BnRecalibrateConfig, ctx: AttackContext) -> AttackOutcome:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("expected a model with BatchNorm layers to recalibrate, got none")
    x = ctx.data.x
    g = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(len(x), generator=g)[: cfg.batches * cfg.batch_size]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for lo in range(0, len(idx), cfg.batch_size):
            model(x[idx[lo: lo + cfg.batch_size]])
    model.eval()
    return AttackOutcome(model, "layers_recalibrated", float(len(norms)),
                         metrics={"inputs": float(len(idx))})
