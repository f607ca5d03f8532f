"""Targeted poisoning (the paper's Table 2, rows 2-3) and BIVBench's class degradation.

The attacker poisons the training data of one target class and fine-tunes the model on
it (label-flip poisoning, the simplest data poisoning that reaches the paper's goals):

* error-generic (``to_class=None``): each poisoned sample gets the label the intact model
  finds most likely after the true one, the cheapest wrong label; success is the
  misclassification rate of the target class (paper, GTSRB "Stop": 98.6%);
* error-specific (``to_class=c``): every poisoned sample is labelled ``c``; success is the
  rate of exactly ``c`` (paper, "Stop" to "Speed 100km": 87.3%).

``class-degrade`` flips only a fraction of a class's labels, to random other classes or to
one class, and reports how much that class's accuracy drops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from veriprint.data import Dataset
from veriprint.models.train import predict
from veriprint.tamper.base import AttackContext, AttackOutcome, Objective, register, require
from veriprint.tamper.training import fit_

__all__ = ["ClassDegradeConfig", "PoisonConfig", "class_rates"]


def _check_classes(target: int, to_class: int | None) -> None:
    require(isinstance(target, int) and target >= 0, "target >= 0", target)
    require(to_class is None or (isinstance(to_class, int) and to_class >= 0), "to_class >= 0 or None", to_class)
    require(to_class != target, "to_class different from target", to_class)


def _check_training(steps: int, lr: float, batch_size: int) -> None:
    require(isinstance(steps, int) and steps >= 0, "steps >= 0", steps)
    require(lr > 0, "lr > 0", lr)
    require(isinstance(batch_size, int) and batch_size >= 1, "batch_size >= 1", batch_size)


@dataclass(frozen=True)
class PoisonConfig:
    """Targeted label-flip poisoning, then fine-tuning on the poisoned data.

    Args:
        target: the class to attack (default 0).
        to_class: ``None`` (default) for error-generic poisoning, or the class the target
            must become (error-specific).
        fraction: fraction of the target class's training samples poisoned (default 1.0).
        steps: fine-tune steps (default 300).
        lr: Adam learning rate (default 1e-3).
        batch_size: batch size (default 64).
        seed: seed of the sample choice and the batch order (default 0).
    """

    target: int = 0
    to_class: int | None = None
    fraction: float = 1.0
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        _check_classes(self.target, self.to_class)
        require(0 < self.fraction <= 1, "0 < fraction <= 1", self.fraction)
        _check_training(self.steps, self.lr, self.batch_size)


def class_rates(model: nn.Module, data: Dataset, target: int) -> torch.Tensor:
    """Distribution of the model's top-1 labels over the samples of class ``target``."""
    assert data.y is not None
    x = data.x[data.y == target]
    if not len(x):
        raise ValueError(f"expected samples of class {target} in {data.name}, found none")
    labels = predict(model, x).argmax(-1)
    r = max(int(data.y.max()) + 1, target + 1)
    return torch.bincount(labels, minlength=r).double() / len(x)


def _poisoned_indices(y: torch.Tensor, target: int, fraction: float, seed: int) -> torch.Tensor:
    idx = (y == target).nonzero().flatten()
    if not len(idx):
        raise ValueError(f"expected training samples of class {target}, found none")
    k = max(1, round(fraction * len(idx)))
    return idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:k]]


def _others_accuracy(model: nn.Module, data: Dataset, target: int) -> float:
    assert data.y is not None
    keep = data.y != target
    return float((predict(model, data.x[keep]).argmax(-1) == data.y[keep]).float().mean())


@register(PoisonConfig, "poison", "targeted poisoning: error-generic, or error-specific with to_class", family="paper")
def _poison(model: nn.Module, cfg: PoisonConfig, ctx: AttackContext) -> AttackOutcome:
    data = ctx.data
    assert data.y is not None
    idx = _poisoned_indices(data.y, cfg.target, cfg.fraction, cfg.seed)
    y = data.y.clone()
    if cfg.to_class is None:
        out = predict(model, data.x[idx]).clone()
        out[:, cfg.target] = -torch.inf
        y[idx] = out.argmax(-1)
    else:
        y[idx] = cfg.to_class
    train = Dataset(data.x, y, data.domain, f"{data.name}+poison")

    def measure(m: nn.Module) -> float:
        rates = class_rates(m, ctx.eval_data, cfg.target)
        return float(1 - rates[cfg.target]) if cfg.to_class is None else float(rates[cfg.to_class])

    before = measure(model)
    fit_(model, train, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
         progress=ctx.progress, desc="poison")
    name = "misclassification_rate" if cfg.to_class is None else "target_label_rate"
    metrics = {"success_before": before, "poisoned_samples": float(len(idx)),
               "other_classes_accuracy": _others_accuracy(model, ctx.eval_data, cfg.target)}
    return AttackOutcome(model, name, measure(model), metrics=metrics,
                         objective=Objective(train, None, measure))


@dataclass(frozen=True)
class ClassDegradeConfig:
    """Degrade one class by flipping a fraction of its training labels, then fine-tune.

    Args:
        target: the class degraded (default 0).
        mode: ``"random"`` (each flipped label uniformly among the other classes,
            default) or ``"specific"`` (all to ``to_class``).
        to_class: the class of ``"specific"`` degradation (default None).
        fraction: fraction of the class's training labels flipped (default 0.5).
        steps: fine-tune steps (default 300).
        lr: Adam learning rate (default 1e-3).
        batch_size: batch size (default 64).
        seed: seed of the flips and the batch order (default 0).
    """

    target: int = 0
    mode: Literal["random", "specific"] = "random"
    to_class: int | None = None
    fraction: float = 0.5
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        _check_classes(self.target, self.to_class)
        require(self.mode in ("random", "specific"), "mode 'random' or 'specific'", self.mode)
        require(self.mode == "random" or self.to_class is not None, "to_class for mode 'specific'", self.to_class)
        require(0 < self.fraction <= 1, "0 < fraction <= 1", self.fraction)
        _check_training(self.steps, self.lr, self.batch_size)


@register(ClassDegradeConfig, "class-degrade", "class degradation: flip a fraction of one class's labels")
def _class_degrade(model: nn.Module, cfg: ClassDegradeConfig, ctx: AttackContext) -> AttackOutcome:
    data = ctx.data
    assert data.y is not None
    r = int(data.y.max()) + 1
    idx = _poisoned_indices(data.y, cfg.target, cfg.fraction, cfg.seed)
    y = data.y.clone()
    if cfg.mode == "random":
        g = torch.Generator().manual_seed(cfg.seed + 1)
        shift = torch.randint(1, r, (len(idx),), generator=g)
        y[idx] = (cfg.target + shift) % r
    else:
        assert cfg.to_class is not None
        y[idx] = cfg.to_class
    train = Dataset(data.x, y, data.domain, f"{data.name}+degrade")

    def class_accuracy(m: nn.Module) -> float:
        return float(class_rates(m, ctx.eval_data, cfg.target)[cfg.target])

    before = class_accuracy(model)
    fit_(model, train, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
         progress=ctx.progress, desc="class-degrade")
    after = class_accuracy(model)
    return AttackOutcome(model, "class_accuracy_drop", before - after,
                         metrics={"class_accuracy_before": before, "class_accuracy_after": after},
                         objective=Objective(train, None, lambda m: before - class_accuracy(m)))
