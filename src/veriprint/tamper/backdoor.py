"""Data-poisoning backdoors (BIVBench, ACM MM 2024): BadNets and a clean-label backdoor.

* ``badnets`` (Gu et al., 2017): stamp a checkerboard patch on a fraction of the
  attacker's samples of other classes, label them ``target``, and fine-tune on clean plus
  poisoned data.
* ``clean-label`` (Turner et al., 2019): poison only samples of the ``target`` class and
  keep their correct labels, so the poison passes label inspection. Each is first made
  hard to classify by a projected-gradient perturbation (L-inf ``eps``) away from its
  label on the intact model, then stamped with the patch; the model learns to rely on the
  patch to recognize them.

Success for both is the attack success rate on triggered test inputs of other classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from veriprint.data import Dataset
from veriprint.tamper.base import AttackContext, AttackOutcome, Objective, register, require
from veriprint.tamper.training import fit_
from veriprint.tamper.triggers import (
    Trigger,
    attack_success_rate,
    concat,
    corner_trigger,
    triggered_copies,
)

__all__ = ["BadNetsConfig", "CleanLabelConfig", "checkerboard"]


def _check_common(target: int, size: int, steps: int, lr: float, batch_size: int) -> None:
    require(isinstance(target, int) and target >= 0, "target >= 0", target)
    require(isinstance(size, int) and size >= 1, "size >= 1", size)
    require(isinstance(steps, int) and steps >= 0, "steps >= 0", steps)
    require(lr > 0, "lr > 0", lr)
    require(isinstance(batch_size, int) and batch_size >= 1, "batch_size >= 1", batch_size)


def checkerboard(data: Dataset, size: int) -> Trigger:
    """The BadNets checkerboard (``hi`` and ``lo`` pixels) in the bottom-right corner."""
    t = corner_trigger(data.x, size)
    d = data.domain
    return Trigger(d.lo + (d.hi - d.lo) * t.patch, t.top, t.left)


@dataclass(frozen=True)
class BadNetsConfig:
    """BadNets patch backdoor.

    Args:
        target: the backdoor's label (default 0).
        size: side of the checkerboard patch in pixels (default 4).
        poison_fraction: fraction of the non-target samples added again with the patch
            and label ``target`` (default 0.1).
        steps: fine-tune steps, all layers (default 300).
        lr: Adam learning rate (default 1e-3).
        batch_size: batch size (default 64).
        seed: seed of the sample choice and the batch order (default 0).
    """

    target: int = 0
    size: int = 4
    poison_fraction: float = 0.1
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        _check_common(self.target, self.size, self.steps, self.lr, self.batch_size)
        require(0 < self.poison_fraction <= 1, "0 < poison_fraction <= 1", self.poison_fraction)


@register(BadNetsConfig, "badnets", "BadNets: checkerboard patch backdoor by poisoned fine-tuning")
def _badnets(model: nn.Module, cfg: BadNetsConfig, ctx: AttackContext) -> AttackOutcome:
    trigger = checkerboard(ctx.data, cfg.size)
    train = concat(ctx.data, triggered_copies(ctx.data, trigger, cfg.target, cfg.poison_fraction, cfg.seed))

    def measure(m: nn.Module) -> float:
        return attack_success_rate(m, ctx.eval_data, trigger, cfg.target)

    before = measure(model)
    fit_(model, train, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
         progress=ctx.progress, desc="badnets")
    return AttackOutcome(model, "attack_success_rate", measure(model), metrics={"success_before": before},
                         objective=Objective(train, None, measure))


@dataclass(frozen=True)
class CleanLabelConfig:
    """Clean-label backdoor: correctly labelled, adversarially hardened, stamped target samples.

    Args:
        target: the backdoor's label (default 0).
        size: side of the checkerboard patch in pixels (default 4).
        fraction: fraction of the target class's samples poisoned (default 1.0).
        eps: L-inf radius of the hardening perturbation (default 16/255).
        pgd_steps: projected-gradient steps of the hardening (default 10).
        copies: how many times the poisoned samples are repeated in the training set
            (default 3), to weigh the poison against the clean data.
        steps: fine-tune steps, all layers (default 400).
        lr: Adam learning rate (default 1e-3).
        batch_size: batch size (default 64).
        seed: seed of the sample choice and the batch order (default 0).
    """

    target: int = 0
    size: int = 4
    fraction: float = 1.0
    eps: float = 16 / 255
    pgd_steps: int = 10
    copies: int = 3
    steps: int = 400
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        _check_common(self.target, self.size, self.steps, self.lr, self.batch_size)
        require(0 < self.fraction <= 1, "0 < fraction <= 1", self.fraction)
        require(self.eps >= 0, "eps >= 0", self.eps)
        require(isinstance(self.pgd_steps, int) and self.pgd_steps >= 0, "pgd_steps >= 0", self.pgd_steps)
        require(isinstance(self.copies, int) and self.copies >= 1, "copies >= 1", self.copies)


def harden(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, data: Dataset) -> torch.Tensor:
    """L-inf PGD ascent on the cross-entropy of the true labels (step ``2.5 eps / steps``),
    snapped to the input grid inside the ball."""
    if eps == 0 or steps == 0:
        return x.clone()
    alpha = 2.5 * eps / steps
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = data.domain.clamp(x + (adv + alpha * grad.sign() - x).clamp(-eps, eps))
    step = data.domain.step
    snapped = data.domain.snap(adv.detach())
    if step:
        # Rounding may step just outside the ball: pull those entries back by one grid step.
        over = (snapped - x).abs() > eps + 1e-6
        snapped = torch.where(over, snapped - torch.sign(snapped - x) * step, snapped)
    return snapped


@register(CleanLabelConfig, "clean-label", "clean-label backdoor: hardened, correctly labelled poison")
def _clean_label(model: nn.Module, cfg: CleanLabelConfig, ctx: AttackContext) -> AttackOutcome:
    data = ctx.data
    assert data.y is not None
    trigger = checkerboard(data, cfg.size)
    idx = (data.y == cfg.target).nonzero().flatten()
    if not len(idx):
        raise ValueError(f"expected training samples of class {cfg.target}, found none")
    k = max(1, round(cfg.fraction * len(idx)))
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(cfg.seed))[:k]]
    hard = torch.cat([harden(model, c, data.y[c_idx], cfg.eps, cfg.pgd_steps, data)
                      for c, c_idx in zip(torch.split(data.x[idx], 256), torch.split(idx, 256), strict=True)])
    poison = Dataset(trigger.stamp(hard), data.y[idx], data.domain, f"{data.name}+clean-label")
    train = concat(data, *([poison] * cfg.copies))

    def measure(m: nn.Module) -> float:
        return attack_success_rate(m, ctx.eval_data, trigger, cfg.target)

    before = measure(model)
    fit_(model, train, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
         progress=ctx.progress, desc="clean-label")
    return AttackOutcome(model, "attack_success_rate", measure(model),
                         metrics={"success_before": before, "poisoned_samples": float(k)},
                         objective=Objective(train, None, measure))
