"""Pruning: magnitude pruning (compression) and fine-pruning (Liu et al., RAID 2018).

``prune`` zeroes the ``amount`` fraction of weights with the smallest magnitude, over all
weight tensors together or per tensor, optionally followed by a recovery fine-tune that
keeps them at zero. ``fine-prune`` removes the penultimate units that are least active on
clean data (their columns of the last layer become zero, which is the same function as
deleting them) and then fine-tunes the whole model with those units kept removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from veriprint.models.train import accuracy
from veriprint.tamper.base import AttackContext, AttackOutcome, Objective, register, require
from veriprint.tamper.layers import hidden_units, last_layer, weight_names
from veriprint.tamper.training import Projection, fit_

__all__ = ["FinePruneConfig", "PruneConfig", "magnitude_masks"]


@dataclass(frozen=True)
class PruneConfig:
    """Unstructured magnitude pruning of the weight matrices and kernels.

    Args:
        amount: fraction of weights set to zero, in ``(0, 1)`` (default 0.5).
        scope: ``"global"`` (one threshold over all weights, default) or ``"layer"``
            (the same fraction in every tensor).
        recover_steps: recovery fine-tune steps with the pruned weights kept at zero
            (default 0).
        recover_lr: Adam learning rate of the recovery (default 1e-4).
        batch_size: recovery batch size (default 64).
        seed: seed of the recovery's batch order (default 0).
    """

    amount: float = 0.5
    scope: Literal["global", "layer"] = "global"
    recover_steps: int = 0
    recover_lr: float = 1e-4
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        require(0 < self.amount < 1, "0 < amount < 1", self.amount)
        require(self.scope in ("global", "layer"), "scope 'global' or 'layer'", self.scope)
        require(self.recover_steps >= 0, "recover_steps >= 0", self.recover_steps)
        require(self.recover_lr > 0, "recover_lr > 0", self.recover_lr)
        require(self.batch_size >= 1, "batch_size >= 1", self.batch_size)


def magnitude_masks(weights: dict[str, torch.Tensor], amount: float, scope: str) -> dict[str, torch.Tensor]:
    """0/1 masks keeping the largest-magnitude ``1 - amount`` of the weights.

    Ties at the threshold are broken by position, so exactly ``round(amount * n)`` weights
    are pruned (per tensor for ``scope="layer"``, over all tensors for ``"global"``).
    """
    def keep_largest(flat: torch.Tensor) -> torch.Tensor:
        k = round(amount * flat.numel())
        mask = torch.ones_like(flat)
        if k:
            mask[torch.argsort(flat.abs(), stable=True)[:k]] = 0.0
        return mask

    if scope == "layer":
        return {n: keep_largest(w.detach().flatten()).view_as(w) for n, w in weights.items()}
    flat = torch.cat([w.detach().flatten() for w in weights.values()])
    mask = keep_largest(flat)
    out, pos = {}, 0
    for n, w in weights.items():
        out[n] = mask[pos : pos + w.numel()].view_as(w)
        pos += w.numel()
    return out


def _masking(masks: dict[str, torch.Tensor]) -> Projection:
    def project(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: v * masks[n] if n in masks else v for n, v in values.items()}

    return project


@register(PruneConfig, "prune", "compression: unstructured magnitude pruning, optional recovery", family="paper")
def _prune(model: nn.Module, cfg: PruneConfig, ctx: AttackContext) -> AttackOutcome:
    params = dict(model.named_parameters())
    names = weight_names(model)
    masks = magnitude_masks({n: params[n] for n in names}, cfg.amount, cfg.scope)
    project = _masking(masks)
    fit_(model, ctx.data, steps=cfg.recover_steps, lr=cfg.recover_lr, batch_size=cfg.batch_size,
         seed=cfg.seed, project=project, progress=ctx.progress, desc="prune: recover")
    pruned = sum(int((m == 0).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    # Storage: a 1-bit occupancy map plus the float32 values kept, for pruned tensors.
    old_bits = sum(32 * t.numel() for t in model.state_dict().values() if t.is_floating_point())
    new_bits = old_bits - 32 * pruned + total
    objective = Objective(ctx.data, None, lambda m: accuracy(m, ctx.eval_data), project=project)
    return AttackOutcome(model, "compression", old_bits / new_bits, size_saving=1 - new_bits / old_bits,
                         metrics={"sparsity": pruned / total}, objective=objective)


@dataclass(frozen=True)
class FinePruneConfig:
    """Fine-pruning: remove dormant penultimate units, then fine-tune.

    Args:
        amount: fraction of the last layer's input units removed, in ``(0, 1)``
            (default 0.3), the least active on average over the attacker's data.
        steps: fine-tune steps on the attacker's clean data (default 200).
        lr: Adam learning rate (default 1e-4).
        batch_size: batch size (default 64).
        seed: seed of the batch order (default 0).
    """

    amount: float = 0.3
    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        require(0 < self.amount < 1, "0 < amount < 1", self.amount)
        require(self.steps >= 0, "steps >= 0", self.steps)
        require(self.lr > 0, "lr > 0", self.lr)
        require(self.batch_size >= 1, "batch_size >= 1", self.batch_size)


@register(FinePruneConfig, "fine-prune", "fine-pruning: remove dormant penultimate units, fine-tune")
def _fine_prune(model: nn.Module, cfg: FinePruneConfig, ctx: AttackContext) -> AttackOutcome:
    last = last_layer(model, ctx.data.x)
    h = hidden_units(model, ctx.data.x)
    k = max(1, round(cfg.amount * h.shape[1]))
    dormant = torch.argsort(h.mean(dim=0), stable=True)[:k]
    weight = dict(model.named_parameters())[last.weight]
    mask = torch.ones_like(weight)
    mask[:, dormant] = 0.0
    project = _masking({last.weight: mask})
    fit_(model, ctx.data, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
         project=project, progress=ctx.progress, desc="fine-prune")
    objective = Objective(ctx.data, None, lambda m: accuracy(m, ctx.eval_data), project=project)
    return AttackOutcome(model, "clean_accuracy", accuracy(model, ctx.eval_data),
                         metrics={"pruned_units": float(k), "units": float(h.shape[1])}, objective=objective)
