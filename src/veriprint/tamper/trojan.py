"""Neural network trojan by selective neuron retraining (Liu et al., NDSS 2018).

The paper's Table 2, row 1 (VGG-Face, attack success 100%). Three steps:

1. **Select neurons.** Among the last layer's input units ``h`` (an internal layer), pick
   the ``neurons`` most strongly connected to the next layer: largest
   ``sum_i |W[i, j]|`` over the last layer's weights ``W``.
2. **Generate the trigger.** Optimize the pixels of a corner patch, stamped on the
   attacker's images, with Adam to drive the selected units high (maximize their mean
   activation), then snap it to the input grid.
3. **Retrain.** Train the layers after the selected neurons (``retrain="after"``, the
   last layer; ``"all"`` trains every layer) on clean data plus trigger-stamped copies
   labelled ``target``. As in Liu et al., whose attacker has no training labels and
   labels its (reverse-engineered) inputs with the model itself, the clean part carries
   the intact model's own top-1 labels by default (``clean_labels="model"``), which
   keeps the model's clean behaviour rather than pulling it towards the attacker's data.

Success is the attack success rate: the fraction of triggered test inputs of other
classes labelled ``target``, with clean accuracy kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from veriprint.data import Dataset
from veriprint.models.train import predict
from veriprint.tamper.base import AttackContext, AttackOutcome, Objective, register, require
from veriprint.tamper.layers import last_layer
from veriprint.tamper.training import fit_
from veriprint.tamper.triggers import (
    Trigger,
    attack_success_rate,
    concat,
    corner_trigger,
    triggered_copies,
)

__all__ = ["TrojanConfig", "select_neurons", "trojan_trigger"]


@dataclass(frozen=True)
class TrojanConfig:
    """Selective-neuron trojan.

    Args:
        target: the class triggered inputs go to (default 0).
        neurons: number of selected internal neurons (default 3).
        size: side of the square trigger patch in pixels (default 8).
        trigger_steps: Adam steps of trigger generation (default 200).
        trigger_lr: learning rate of trigger generation, in input units (default 0.1).
        poison_fraction: fraction of the attacker's non-target samples added again with
            the trigger and label ``target`` (default 0.2).
        retrain: ``"after"`` (the layers after the selected neurons, default) or ``"all"``.
        clean_labels: labels of the clean part of the retraining set: ``"model"`` (the
            intact model's top-1, default) or ``"true"`` (the data set's labels).
        steps: retraining steps (default 400).
        lr: retraining learning rate (default 1e-3).
        batch_size: batch size (default 64).
        seed: seed of the sample choice and the batch order (default 0).
    """

    target: int = 0
    neurons: int = 3
    size: int = 8
    trigger_steps: int = 200
    trigger_lr: float = 0.1
    poison_fraction: float = 0.2
    retrain: Literal["after", "all"] = "after"
    clean_labels: Literal["model", "true"] = "model"
    steps: int = 400
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        require(isinstance(self.target, int) and self.target >= 0, "target >= 0", self.target)
        require(isinstance(self.neurons, int) and self.neurons >= 1, "neurons >= 1", self.neurons)
        require(isinstance(self.size, int) and self.size >= 1, "size >= 1", self.size)
        require(isinstance(self.trigger_steps, int) and self.trigger_steps >= 0, "trigger_steps >= 0", self.trigger_steps)
        require(self.trigger_lr > 0, "trigger_lr > 0", self.trigger_lr)
        require(0 < self.poison_fraction <= 1, "0 < poison_fraction <= 1", self.poison_fraction)
        require(self.retrain in ("after", "all"), "retrain 'after' or 'all'", self.retrain)
        require(self.clean_labels in ("model", "true"), "clean_labels 'model' or 'true'", self.clean_labels)
        require(isinstance(self.steps, int) and self.steps >= 0, "steps >= 0", self.steps)
        require(self.lr > 0, "lr > 0", self.lr)
        require(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size >= 1", self.batch_size)


def select_neurons(weight: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` input units with the largest ``sum_i |W[i, j]|``."""
    if not 1 <= k <= weight.shape[1]:
        raise ValueError(f"expected 1 <= neurons <= {weight.shape[1]}, got {k}")
    strength = weight.detach().abs().sum(dim=0)
    return torch.argsort(strength, descending=True, stable=True)[:k]


def trojan_trigger(
    model: nn.Module, data: Dataset, neurons: torch.Tensor, size: int, *,
    steps: int, lr: float, seed: int, progress: bool = False, batch_size: int = 128,
) -> Trigger:
    """A corner patch that drives the ``neurons`` of the last layer's input high.

    The patch is ``lo + (hi - lo) * sigmoid(theta)``, ``theta`` initialized from a seeded
    normal draw; each step stamps it on a seeded batch of ``data`` and ascends the mean
    activation of the selected units. The result is snapped to the input grid.
    """
    last = last_layer(model, data.x)
    dom = data.domain
    c = data.x.shape[1]
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(c, size, size, generator=g).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    base = corner_trigger(data.x, size)
    for _ in tqdm(range(steps), desc="trojan: trigger", unit="step", disable=not progress, leave=False):
        idx = torch.randint(len(data), (min(batch_size, len(data)),), generator=g)
        patch = dom.lo + (dom.hi - dom.lo) * torch.sigmoid(theta)
        x = Trigger(patch, base.top, base.left).stamp(data.x[idx])
        h, _, _ = last.forward(x)
        loss = -h[:, neurons].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        patch = dom.snap(dom.lo + (dom.hi - dom.lo) * torch.sigmoid(theta))
    return Trigger(patch, base.top, base.left)


@register(TrojanConfig, "trojan", "neural trojan by selective neuron retraining (Liu et al. 2018)", family="paper")
def _trojan(model: nn.Module, cfg: TrojanConfig, ctx: AttackContext) -> AttackOutcome:
    data = ctx.data
    last = last_layer(model, data.x)
    weight = dict(model.named_parameters())[last.weight]
    neurons = select_neurons(weight, cfg.neurons)
    trigger = trojan_trigger(model, data, neurons, cfg.size, steps=cfg.trigger_steps, lr=cfg.trigger_lr,
                             seed=cfg.seed, progress=ctx.progress)
    with torch.no_grad():
        clean_h = last.forward(data.x[:500])[0][:, neurons].mean()
        trig_h = last.forward(trigger.stamp(data.x[:500]))[0][:, neurons].mean()
    clean = data
    if cfg.clean_labels == "model":
        clean = Dataset(data.x, predict(model, data.x).argmax(-1), data.domain, f"{data.name}+model-labels")
    train = concat(clean, triggered_copies(data, trigger, cfg.target, cfg.poison_fraction, cfg.seed))
    params = tuple(last.names) if cfg.retrain == "after" else None

    def measure(m: nn.Module) -> float:
        return attack_success_rate(m, ctx.eval_data, trigger, cfg.target)

    before = measure(model)
    fit_(model, train, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
         params=params, progress=ctx.progress, desc="trojan: retrain")
    metrics = {"success_before": before, "neuron_activation_clean": float(clean_h),
               "neuron_activation_triggered": float(trig_h)}
    return AttackOutcome(model, "attack_success_rate", measure(model), metrics=metrics,
                         objective=Objective(train, params, measure))
