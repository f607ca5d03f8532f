"""Arbitrary weight modification (the paper's AT&T MLP experiment, Section 5).

Change ``n`` chosen weights, in one named layer or anywhere in the model, by an absolute
amount, a relative amount, a sign flip, or to a set value. ``n = 1`` is the subtlest
integrity breach a fingerprint can be asked to catch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from veriprint.tamper.base import AttackContext, AttackOutcome, register, require

__all__ = ["WeightEditConfig"]


@dataclass(frozen=True)
class WeightEditConfig:
    """Modify ``n`` scalar weights.

    Args:
        n: number of weights changed (default 1).
        layer: a parameter name (``"11.weight"``) or a module name (``"11"``: all its
            parameters); ``None`` (default) chooses among every parameter of the model.
        mode: ``"add"`` (``w + amount``), ``"scale"`` (``w * (1 + amount)``), ``"sign"``
            (``-w``) or ``"set"`` (``amount``); default ``"scale"``.
        amount: the absolute or relative change (default 0.1).
        select: ``"random"`` (seeded, default) or ``"largest"`` magnitude.
        seed: seed of the random choice (default 0).
    """

    n: int = 1
    layer: str | None = None
    mode: Literal["add", "scale", "sign", "set"] = "scale"
    amount: float = 0.1
    select: Literal["random", "largest"] = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        require(isinstance(self.n, int) and self.n >= 1, "n >= 1", self.n)
        require(self.mode in ("add", "scale", "sign", "set"), "mode among add, scale, sign, set", self.mode)
        require(self.select in ("random", "largest"), "select 'random' or 'largest'", self.select)
        require(self.mode in ("sign", "set") or self.amount != 0, "amount != 0", self.amount)


def _candidates(model: nn.Module, layer: str | None) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    if layer is None:
        return params
    if layer in params:
        return {layer: params[layer]}
    chosen = {n: p for n, p in params.items() if n.rpartition(".")[0] == layer}
    if not chosen:
        raise ValueError(f"expected a parameter or module name among {sorted(params)}, got {layer!r}")
    return chosen


@register(WeightEditConfig, "weight-edit", "arbitrary modification of n chosen weights (n = 1 works)", family="paper")
def _weight_edit(model: nn.Module, cfg: WeightEditConfig, ctx: AttackContext) -> AttackOutcome:
    params = _candidates(model, cfg.layer)
    names = list(params)
    flat = torch.cat([p.detach().flatten() for p in params.values()])
    # Only entries the edit really changes are eligible.
    if cfg.mode in ("sign", "scale"):
        eligible = (flat != 0).nonzero().flatten()
    elif cfg.mode == "set":
        eligible = (flat != cfg.amount).nonzero().flatten()
    else:
        eligible = torch.arange(flat.numel())
    if eligible.numel() < cfg.n:
        raise ValueError(f"expected n <= {eligible.numel()} weights that the edit changes, got n={cfg.n}")
    if cfg.select == "largest":
        order = torch.argsort(flat[eligible].abs(), descending=True, stable=True)
    else:
        order = torch.randperm(eligible.numel(), generator=torch.Generator().manual_seed(cfg.seed))
    picked = eligible[order[: cfg.n]]
    offsets = torch.tensor([0] + [p.numel() for p in params.values()]).cumsum(0)
    with torch.no_grad():
        for i in picked.tolist():
            t = int(torch.searchsorted(offsets, i, right=True)) - 1
            p = params[names[t]].view(-1)
            j = i - int(offsets[t])
            if cfg.mode == "add":
                p[j] += cfg.amount
            elif cfg.mode == "scale":
                p[j] *= 1 + cfg.amount
            elif cfg.mode == "sign":
                p[j] = -p[j]
            else:
                p[j] = cfg.amount
    touched = sorted({names[int(torch.searchsorted(offsets, i, right=True)) - 1] for i in picked.tolist()})
    return AttackOutcome(model, "weights_changed", float(cfg.n),
                         metrics={"tensors_touched": float(len(touched))})


@dataclass(frozen=True)
class WeightNoiseConfig:
    """Add Gaussian noise to every parameter, relative to each entry's magnitude.

    Args:
        relative: noise standard deviation as a fraction of ``|w|`` (default 1e-3).
        seed: seed of the noise (default 0).
    """

    relative: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.relative > 0, "relative > 0", self.relative)


@register(WeightNoiseConfig, "weight-noise", "Gaussian noise on every weight, relative to its magnitude",
          family="subtle")
def _weight_noise(model: nn.Module, cfg: WeightNoiseConfig, ctx: AttackContext) -> AttackOutcome:
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * cfg.relative * p.abs())
    return AttackOutcome(model, "relative_noise", cfg.relative)
