"""Benign-looking retraining, BIVBench's (ACM MM 2024) fine-tuning family.

* ``finetune``: fine-tune all layers, or only the last ``k`` layers, on clean data.
* ``freeze-tune``: train the last layer alone with everything else frozen, then unfreeze
  and tune all layers.
* ``retrain-last``: re-initialize the last layer and train it again.
* ``distill``: knowledge distillation into a freshly initialized copy of the architecture
  (Hinton et al., 2015: ``T^2 KL(softmax(t/T) || softmax(s/T))``).
* ``transfer``: online learning: fine-tune on a new task (same input shape), then back on
  the original data.

Each reports the clean accuracy it keeps as its success measure: the attacker wants a
model that is different but still serves well.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from veriprint.data import Dataset
from veriprint.models.train import accuracy
from veriprint.tamper.base import AttackContext, AttackOutcome, Objective, register, require
from veriprint.tamper.layers import last_layer, param_groups, reinit_
from veriprint.tamper.training import fit_

__all__ = ["DistillConfig", "FineTuneConfig", "FreezeTuneConfig", "RetrainLastConfig", "TransferConfig"]


def _check_training(steps: int, lr: float, batch_size: int, what: str = "steps") -> None:
    require(isinstance(steps, int) and steps >= 0, f"{what} >= 0", steps)
    require(lr > 0, "lr > 0", lr)
    require(isinstance(batch_size, int) and batch_size >= 1, "batch_size >= 1", batch_size)


def _clean(model: nn.Module, ctx: AttackContext, objective: Objective | None = None,
           metrics: dict[str, float] | None = None) -> AttackOutcome:
    return AttackOutcome(model, "clean_accuracy", accuracy(model, ctx.eval_data),
                         metrics=metrics or {}, objective=objective)


@dataclass(frozen=True)
class FineTuneConfig:
    """Fine-tune on the attacker's clean data.

    Args:
        last: number of last layers trained (parameter groups by module); 0 (default)
            trains all layers.
        steps: Adam steps (default 200).
        lr: learning rate (default 1e-4).
        batch_size: batch size (default 64).
        seed: seed of the batch order (default 0).
    """

    last: int = 0
    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        require(isinstance(self.last, int) and self.last >= 0, "last >= 0", self.last)
        _check_training(self.steps, self.lr, self.batch_size)


def _last_groups(model: nn.Module, k: int) -> tuple[str, ...] | None:
    if k == 0:
        return None
    groups = param_groups(model)
    if k > len(groups):
        raise ValueError(f"expected last <= {len(groups)} layers with parameters, got {k}")
    return tuple(n for g in groups[-k:] for n in g)


@register(FineTuneConfig, "finetune", "fine-tune all layers or the last k layers on clean data")
def _finetune(model: nn.Module, cfg: FineTuneConfig, ctx: AttackContext) -> AttackOutcome:
    params = _last_groups(model, cfg.last)
    fit_(model, ctx.data, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
         params=params, progress=ctx.progress, desc="finetune")
    return _clean(model, ctx, Objective(ctx.data, params, lambda m: accuracy(m, ctx.eval_data)))


@dataclass(frozen=True)
class FreezeTuneConfig:
    """Freeze all but the last layer and train it, then tune all layers.

    Args:
        freeze_steps: steps with only the last layer trained (default 100).
        tune_steps: steps with all layers trained (default 100).
        lr: learning rate (default 1e-4).
        batch_size: batch size (default 64).
        seed: seed of the batch order (default 0).
    """

    freeze_steps: int = 100
    tune_steps: int = 100
    lr: float = 1e-4
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        _check_training(self.freeze_steps, self.lr, self.batch_size, "freeze_steps")
        require(isinstance(self.tune_steps, int) and self.tune_steps >= 0, "tune_steps >= 0", self.tune_steps)


@register(FreezeTuneConfig, "freeze-tune", "train the last layer with the rest frozen, then tune all")
def _freeze_tune(model: nn.Module, cfg: FreezeTuneConfig, ctx: AttackContext) -> AttackOutcome:
    last = last_layer(model, ctx.data.x)
    fit_(model, ctx.data, steps=cfg.freeze_steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
         params=last.names, progress=ctx.progress, desc="freeze-tune: frozen")
    fit_(model, ctx.data, steps=cfg.tune_steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed + 1,
         progress=ctx.progress, desc="freeze-tune: all")
    return _clean(model, ctx, Objective(ctx.data, None, lambda m: accuracy(m, ctx.eval_data)))


@dataclass(frozen=True)
class RetrainLastConfig:
    """Re-initialize the last layer (PyTorch's default init, seeded) and train it again.

    Args:
        steps: Adam steps (default 300).
        lr: learning rate (default 1e-3).
        batch_size: batch size (default 64).
        seed: seed of the initialization and the batch order (default 0).
    """

    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        _check_training(self.steps, self.lr, self.batch_size)


@register(RetrainLastConfig, "retrain-last", "re-initialize the last layer and retrain it")
def _retrain_last(model: nn.Module, cfg: RetrainLastConfig, ctx: AttackContext) -> AttackOutcome:
    last = last_layer(model, ctx.data.x)
    params = dict(model.named_parameters())
    reinit_(params[last.weight], params[last.bias] if last.bias else None,
            torch.Generator().manual_seed(cfg.seed))
    fit_(model, ctx.data, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
         params=last.names, progress=ctx.progress, desc="retrain-last")
    return _clean(model, ctx, Objective(ctx.data, tuple(last.names), lambda m: accuracy(m, ctx.eval_data)))


@dataclass(frozen=True)
class DistillConfig:
    """Distill the model into a freshly initialized copy of its architecture.

    Args:
        steps: Adam steps (default 1500).
        lr: learning rate (default 1e-3).
        temperature: softening temperature ``T`` (default 4.0).
        hard_weight: weight of the cross-entropy on the true labels (default 0.0).
        batch_size: batch size (default 64).
        seed: seed of the initialization and the batch order (default 0).
    """

    steps: int = 1500
    lr: float = 1e-3
    temperature: float = 4.0
    hard_weight: float = 0.0
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        _check_training(self.steps, self.lr, self.batch_size)
        require(self.temperature > 0, "temperature > 0", self.temperature)
        require(self.hard_weight >= 0, "hard_weight >= 0", self.hard_weight)


def reinitialize_(model: nn.Module, seed: int) -> None:
    """Fresh default initialization of every layer, seeded, normalization reset."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    for group in param_groups(model):
        matrices = [n for n in group if params[n].dim() >= 2]
        if matrices:
            w = matrices[0]
            b = next((n for n in group if n != w and n.endswith("bias")), None)
            reinit_(params[w], params[b] if b else None, g)
        else:
            with torch.no_grad():
                for n in group:
                    params[n].fill_(0.0 if n.endswith("bias") else 1.0)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean") or name.endswith("num_batches_tracked"):
                buf.zero_()
            elif name.endswith("running_var"):
                buf.fill_(1.0)


@register(DistillConfig, "distill", "knowledge distillation into a fresh copy of the architecture")
def _distill(model: nn.Module, cfg: DistillConfig, ctx: AttackContext) -> AttackOutcome:
    teacher = copy.deepcopy(model).eval()
    reinitialize_(model, cfg.seed)
    t = cfg.temperature

    def loss(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = F.log_softmax(teacher(x) / t, dim=-1)
        out = student(x)
        kd = F.kl_div(F.log_softmax(out / t, dim=-1), soft, log_target=True, reduction="batchmean")
        return kd * t * t + cfg.hard_weight * F.cross_entropy(out, y)

    fit_(model, ctx.data, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
         loss=loss, train_mode=True, progress=ctx.progress, desc="distill")
    return _clean(model, ctx)


@dataclass(frozen=True)
class TransferConfig:
    """Online learning: fine-tune on a new task, then back on the original data.

    Args:
        task: the new task, built from the attacker's data: ``"invert"`` (inverted
            intensities, default), ``"flip"`` (mirrored images) or ``"shift-labels"``
            (label ``y`` becomes ``y + 1 mod r``).
        out_steps: steps on the new task (default 200).
        back_steps: steps back on the original data (default 200).
        lr: learning rate (default 1e-4).
        batch_size: batch size (default 64).
        seed: seed of the batch order (default 0).
    """

    task: Literal["invert", "flip", "shift-labels"] = "invert"
    out_steps: int = 200
    back_steps: int = 200
    lr: float = 1e-4
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.task in ("invert", "flip", "shift-labels"), "task among invert, flip, shift-labels", self.task)
        _check_training(self.out_steps, self.lr, self.batch_size, "out_steps")
        require(isinstance(self.back_steps, int) and self.back_steps >= 0, "back_steps >= 0", self.back_steps)


def _new_task(data: Dataset, task: str) -> Dataset:
    assert data.y is not None
    d = data.domain
    if task == "invert":
        return Dataset(d.hi + d.lo - data.x, data.y, d, f"{data.name}+invert")
    if task == "flip":
        return Dataset(data.x.flip(-1), data.y, d, f"{data.name}+flip")
    r = int(data.y.max()) + 1
    return Dataset(data.x, (data.y + 1) % r, d, f"{data.name}+shift-labels")


@register(TransferConfig, "transfer", "online learning: fine-tune on a new task, then back")
def _transfer(model: nn.Module, cfg: TransferConfig, ctx: AttackContext) -> AttackOutcome:
    new = _new_task(ctx.data, cfg.task)
    fit_(model, new, steps=cfg.out_steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
         progress=ctx.progress, desc="transfer: out")
    new_acc = accuracy(model, _new_task(ctx.eval_data, cfg.task))
    fit_(model, ctx.data, steps=cfg.back_steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed + 1,
         progress=ctx.progress, desc="transfer: back")
    return _clean(model, ctx, metrics={"new_task_accuracy": new_acc})
