"""Unlearning one class (BIVBench, ACM MM 2024).

Fine-tune so that the model forgets class ``forget``: on its samples minimize
``-log(1 - p_forget)`` (push the class's probability to zero, a bounded form of gradient
ascent), on the other samples keep the usual cross-entropy. Success is the forget class's
test misclassification rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from veriprint.tamper.base import AttackContext, AttackOutcome, Objective, register, require
from veriprint.tamper.poisoning import class_rates
from veriprint.tamper.training import fit_

__all__ = ["UnlearnConfig"]


@dataclass(frozen=True)
class UnlearnConfig:
    """Forget one class while keeping the others.

    Args:
        forget: the class to forget (default 0).
        forget_weight: weight of the forgetting term (default 1.0).
        steps: fine-tune steps (default 300).
        lr: Adam learning rate (default 1e-4).
        batch_size: batch size (default 64).
        seed: seed of the batch order (default 0).
    """

    forget: int = 0
    forget_weight: float = 1.0
    steps: int = 300
    lr: float = 1e-4
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        require(isinstance(self.forget, int) and self.forget >= 0, "forget >= 0", self.forget)
        require(self.forget_weight > 0, "forget_weight > 0", self.forget_weight)
        require(isinstance(self.steps, int) and self.steps >= 0, "steps >= 0", self.steps)
        require(self.lr > 0, "lr > 0", self.lr)
        require(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size >= 1", self.batch_size)


@register(UnlearnConfig, "unlearn", "unlearning: make the model forget one class, keep the others")
def _unlearn(model: nn.Module, cfg: UnlearnConfig, ctx: AttackContext) -> AttackOutcome:
    c = cfg.forget

    def loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(m(x), dim=-1)
        forget = y == c
        value = logp.new_zeros(())
        if (~forget).any():
            value = value + F.nll_loss(logp[~forget], y[~forget]) * (~forget).float().mean()
        if forget.any():
            lp = logp[forget, c].clamp(max=-1e-6)
            value = value - cfg.forget_weight * torch.log(-torch.expm1(lp)).sum() / len(y)
        return value

    def measure(m: nn.Module) -> float:
        return float(1 - class_rates(m, ctx.eval_data, c)[c])

    before = measure(model)
    fit_(model, ctx.data, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
         loss=loss, progress=ctx.progress, desc="unlearn")
    return AttackOutcome(model, "forget_rate", measure(model), metrics={"success_before": before},
                         objective=Objective(ctx.data, None, measure, loss=loss))
