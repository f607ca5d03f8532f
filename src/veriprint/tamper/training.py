"""The one training loop every training-based attack uses.

Seeded Adam over a chosen set of parameters, with an optional projection trained
straight-through (the model always holds projected values; the optimizer keeps the
unprojected "shadow" values), an optional custom batch loss and an optional extra term
(the adaptive attacker's output-preservation loss).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from veriprint.data import Dataset

__all__ = ["BatchLoss", "Projection", "fit_", "select_params"]

BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Projection = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def _cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def select_params(model: nn.Module, names: Sequence[str] | None) -> dict[str, nn.Parameter]:
    """The named parameters to train (all when ``names`` is ``None``), in model order."""
    params = dict(model.named_parameters())
    if names is None:
        return params
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"expected parameter names of the model, got unknown {missing}")
    return {n: params[n] for n in params if n in set(names)}


def fit_(
    model: nn.Module,
    train: Dataset,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    params: Sequence[str] | None = None,
    loss: BatchLoss | None = None,
    project: Projection | None = None,
    extra_loss: Callable[[nn.Module, int], torch.Tensor] | None = None,
    train_mode: bool = False,
    progress: bool = True,
    desc: str = "tamper",
) -> nn.Module:
    """Train ``model`` in place for ``steps`` Adam steps and return it in eval mode.

    Args:
        model: the model to change.
        train: labelled training data, drawn in seeded shuffled epochs.
        steps: number of optimizer steps (0: only apply ``project``).
        lr: Adam learning rate.
        batch_size: samples per step.
        seed: seed of the batch order.
        params: names of the trained parameters (``None``: all).
        loss: batch loss ``(model, x, y)`` (default: cross-entropy on the outputs).
        project: maps trained parameter values to the values the model holds; the
            gradient passes straight through it.
        extra_loss: ``(model, step) -> scalar`` added to every step's loss.
        train_mode: run the model in training mode (BatchNorm statistics move); default
            False keeps normalization statistics fixed, as a fine-tuning attacker would.
        progress: show a progress bar.
        desc: progress bar label.
    """
    if train.y is None:
        raise ValueError("training needs labels: the data set has no y")
    if steps < 0:
        raise ValueError(f"expected steps >= 0, got {steps}")
    loss_fn = loss or _cross_entropy
    trainable = select_params(model, params)
    if not trainable:
        raise ValueError("no parameters to train")
    shadow = {n: p.detach().clone() for n, p in trainable.items()} if project else None

    def load_projected() -> None:
        if shadow is None or project is None:
            return
        with torch.no_grad():
            for n, v in project(shadow).items():
                trainable[n].copy_(v)

    load_projected()
    if steps == 0:
        return model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable.values():
        p.requires_grad_(True)
    opt_params = list(shadow.values()) if shadow is not None else list(trainable.values())
    opt = torch.optim.Adam(opt_params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = len(train)
    perm = torch.randperm(n, generator=g)
    pos = 0
    model.train(train_mode)
    try:
        for step in tqdm(range(steps), desc=desc, unit="step", disable=not progress, leave=False):
            if pos + batch_size > n:
                perm, pos = torch.randperm(n, generator=g), 0
            idx = perm[pos : pos + batch_size]
            pos += batch_size
            value = loss_fn(model, train.x[idx], train.y[idx])
            if extra_loss is not None:
                value = value + extra_loss(model, step)
            grads = torch.autograd.grad(value, list(trainable.values()))
            for target, grad in zip(opt_params, grads, strict=True):
                target.grad = grad
            opt.step()
            load_projected()
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    return model
