"""Reference implementations of the generation step that veriprint is measured against.

Two baselines, both one sample at a time (batch 1), as their authors ran them:

* **Algorithm 1 done literally** (He, Zhang, Lee, CVPR 2019, lines 10-16): for every
  output ``f_k`` one autograd pass gives ``d f_k / dW`` (kept differentiable), the
  per-output losses ``l_k = ||d f_k / dW||^2`` add up to ``S`` (Eq. 6), and one more
  backward pass gives ``Delta = sum_k d l_k / d v``. Cost: ``r`` gradient graphs per
  sample and step, ``r`` the number of classes.
* **the authors' public approach**: a surrogate objective, the squared norm of the
  gradient, with respect to the last layer's parameters, of the sum of the first 40
  log-softmax outputs; one double backward per sample and step. It is not Eq. 6 (it
  ignores all but 40 outputs and sums them before squaring); it is here for its cost and
  for comparing what its samples detect.

:func:`literal_value_and_grad` and :func:`surrogate_value_and_grad` give one objective
value and its input gradient per sample; :func:`generate_baseline` runs a whole projected
ascent with either of them and returns the same :class:`~veriprint.pipeline.generate.GenerationResult`
as :func:`veriprint.pipeline.generate.generate`, so an evaluation can swap generators.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from veriprint.data import InputDomain
from veriprint.models import OutputKind
from veriprint.pipeline.generate import (
    GenerationConfig,
    GenerationResult,
    project,
    result_for,
    snap_to_ball,
)
from veriprint.pipeline.objective import ParamSpec, resolve_params

__all__ = [
    "AUTHORS_CLASSES",
    "AUTHORS_EPS_PIXELS",
    "Baseline",
    "ValueAndGrad",
    "authors_config",
    "generate_baseline",
    "literal_value_and_grad",
    "surrogate_value_and_grad",
]

Baseline = Literal["algorithm1", "authors"]

AUTHORS_CLASSES = 40
"""How many leading log-softmax outputs the authors' surrogate sums."""

AUTHORS_EPS_PIXELS = 10.0
"""The authors' L2 radius per ``sqrt(input size)``, in 0-255 pixel units."""


@dataclass(frozen=True)
class ValueAndGrad:
    """An objective per sample and its gradient with respect to the input.

    Attributes:
        value: the objective, shape ``(N,)``, float32 (not its log).
        grad: its gradient with respect to each input, shape ``(N, ...)``.
    """

    value: torch.Tensor
    grad: torch.Tensor


def _chosen(model: nn.Module, names: list[str]) -> list[torch.Tensor]:
    params = dict(model.named_parameters())
    return [params[n] for n in names]


def _per_sample(
    model: nn.Module, x: torch.Tensor, names: list[str], objective: Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor],
) -> ValueAndGrad:
    chosen = _chosen(model, names)
    flags = [p.requires_grad for p in chosen]
    for p in chosen:
        p.requires_grad_(True)
    values, grads = [], []
    try:
        for xi in x:
            v = xi.detach().unsqueeze(0).requires_grad_(True)
            with torch.enable_grad():
                value = objective(v, chosen)
                (g,) = torch.autograd.grad(value, v)
            values.append(value.detach())
            grads.append(g.squeeze(0))
    finally:
        for p, f in zip(chosen, flags, strict=True):
            p.requires_grad_(f)
    return ValueAndGrad(torch.stack(values), torch.stack(grads))


def literal_value_and_grad(
    model: nn.Module,
    x: torch.Tensor,
    *,
    params: ParamSpec = "last",
    outputs: OutputKind = "probs",
    model_outputs: OutputKind = "logits",
) -> ValueAndGrad:
    """Eq. 6 and its input gradient by the paper's Algorithm 1, literally.

    Per sample (batch 1) and per output ``k``: ``g_k = d f_k / dW`` by one autograd pass
    with its graph kept, ``S = sum_k ||g_k||^2``, then one backward pass of ``S`` to the
    input, which equals ``Delta = sum_k d l_k / d v`` of Algorithm 1 (line 15).

    Args:
        model: the classifier, in eval mode.
        x: inputs, shape ``(N, ...)``.
        params: parameters ``W``: ``"last"`` (default), ``"all"`` or names/globs.
        outputs: ``f`` in Eq. 6: ``"probs"`` (default) or ``"logits"``.
        model_outputs: what the model returns: ``"logits"`` (default) or ``"probs"``.

    Returns:
        ``S`` per sample and ``dS/dx``, a :class:`ValueAndGrad`.
    """
    if outputs == "logits" and model_outputs == "probs":
        raise ValueError("outputs='logits' needs a model that returns logits, got a probs model")
    names = resolve_params(model, params, x[:1])

    def objective(v: torch.Tensor, chosen: list[torch.Tensor]) -> torch.Tensor:
        out: torch.Tensor = model(v).squeeze(0)
        if outputs == "probs" and model_outputs == "logits":
            out = torch.softmax(out, dim=-1)
        s = out.new_zeros(())
        for k in range(out.shape[0]):
            gk = torch.autograd.grad(out[k], chosen, retain_graph=True, create_graph=True, allow_unused=True)
            for g in gk:
                if g is not None:
                    s = s + g.pow(2).sum()
        return s

    return _per_sample(model, x, names, objective)


def surrogate_value_and_grad(
    model: nn.Module,
    x: torch.Tensor,
    *,
    classes: int = AUTHORS_CLASSES,
    model_outputs: OutputKind = "logits",
) -> ValueAndGrad:
    """The authors' public surrogate and its input gradient, one sample at a time.

    ``L = sum_{i < classes} log softmax(z)_i``, ``value = ||dL/dW||^2`` with ``W`` the
    weight and bias of the last linear layer: one double backward per sample.

    Args:
        model: the classifier, in eval mode.
        x: inputs, shape ``(N, ...)``.
        classes: how many leading outputs are summed (default 40; all when fewer).
        model_outputs: what the model returns: ``"logits"`` (default) or ``"probs"``.

    Returns:
        The surrogate per sample and its input gradient, a :class:`ValueAndGrad`.
    """
    if classes < 1:
        raise ValueError(f"expected classes >= 1, got {classes}")
    names = resolve_params(model, "last", x[:1])

    def objective(v: torch.Tensor, chosen: list[torch.Tensor]) -> torch.Tensor:
        out: torch.Tensor = model(v)
        logp = torch.log(out.clamp_min(1e-45)) if model_outputs == "probs" else torch.log_softmax(out, dim=-1)
        loss = logp[0, :classes].sum()
        grads = torch.autograd.grad(loss, chosen, create_graph=True)
        return sum((g.pow(2).sum() for g in grads), start=loss.new_zeros(()))

    return _per_sample(model, x, names, objective)


def authors_config(input_shape: tuple[int, ...], *, steps: int = 1000, lr: float = 1e-3,
                   domain: InputDomain | None = None) -> GenerationConfig:
    """The authors' public settings as a :class:`GenerationConfig`.

    An L2 ball of radius ``10 sqrt(m)`` in 0-255 pixel units (``m`` input values per
    sample), converted to the domain's units; ascent on the raw objective; no early stop.

    Args:
        input_shape: shape of one sample, e.g. ``(1, 28, 28)``.
        steps: ascent steps (default 1000).
        lr: Adam learning rate (default 1e-3).
        domain: input range (default ``[0, 1]``).
    """
    domain = domain or InputDomain()
    m = math.prod(input_shape)
    eps = AUTHORS_EPS_PIXELS / 255.0 * math.sqrt(m) * (domain.hi - domain.lo)
    return GenerationConfig(steps=steps, lr=lr, eps=eps, norm="l2", log_space=False, patience=0)


def _step_fn(method: Baseline, cfg: GenerationConfig, model_outputs: OutputKind,
             ) -> Callable[[nn.Module, torch.Tensor], ValueAndGrad]:
    if method == "algorithm1":
        def literal(model: nn.Module, v: torch.Tensor) -> ValueAndGrad:
            return literal_value_and_grad(model, v, params=cfg.params, outputs=cfg.outputs,
                                          model_outputs=model_outputs)
        return literal
    if method == "authors":
        def surrogate(model: nn.Module, v: torch.Tensor) -> ValueAndGrad:
            return surrogate_value_and_grad(model, v, model_outputs=model_outputs)
        return surrogate
    raise ValueError(f"expected method 'algorithm1' or 'authors', got {method!r}")


def _ascend_one(model: nn.Module, v0: torch.Tensor, cfg: GenerationConfig, domain: InputDomain,
                fn: Callable[[nn.Module, torch.Tensor], ValueAndGrad]) -> tuple[torch.Tensor, int]:
    x = v0.clone()
    opt = torch.optim.Adam([x], lr=cfg.lr, maximize=True)
    best, since = -math.inf, 0
    for step in range(cfg.steps):
        vg = fn(model, x)
        value = float(vg.value[0])
        grad = vg.grad
        if cfg.log_space:
            value = math.log(value) if value > 0 else -math.inf
            grad = grad / vg.value.clamp_min(torch.finfo(vg.value.dtype).tiny).view(-1, *([1] * (grad.dim() - 1)))
        x.grad = grad
        opt.step()
        with torch.no_grad():
            x.copy_(project(x, v0, cfg.eps, cfg.norm, domain))
        if cfg.patience:
            if value > best + cfg.min_delta * (1 if cfg.log_space else abs(best) if math.isfinite(best) else 1):
                best, since = value, 0
            else:
                since += 1
                if since >= cfg.patience:
                    return x.detach(), step + 1
    return x.detach(), cfg.steps


def generate_baseline(
    model: nn.Module,
    seeds: torch.Tensor,
    config: GenerationConfig | None = None,
    *,
    method: Baseline = "algorithm1",
    domain: InputDomain | None = None,
    model_outputs: OutputKind = "logits",
    progress: bool = True,
) -> GenerationResult:
    """Projected Adam ascent one seed at a time with a baseline objective.

    The same projection, early stop, grid snapping and reported figures as
    :func:`veriprint.pipeline.generate.generate`; only the objective's evaluation (and batch 1)
    differ. ``method="algorithm1"`` ascends Eq. 6 (``log S`` when ``config.log_space``)
    through :func:`literal_value_and_grad`; ``method="authors"`` ascends the surrogate of
    :func:`surrogate_value_and_grad` (use :func:`authors_config` for their settings). The
    reported ``log_s_before``/``log_s_after`` are always ``log S`` of Eq. 6 (with
    ``config.params`` and ``config.outputs``), so results of different generators compare.

    Args:
        model: classifier in eval mode.
        seeds: natural inputs ``(N, ...)``.
        config: steps, learning rate, ball and objective options (default: the paper's).
        method: ``"algorithm1"`` (default) or ``"authors"``.
        domain: input range and grid (default ``[0, 1]``, 8-bit).
        model_outputs: ``"logits"`` (default) or ``"probs"``.
        progress: show a progress bar.

    Returns:
        A :class:`~veriprint.pipeline.generate.GenerationResult` (``history`` is empty: per-sample
        runs have no common step count).
    """
    cfg = config or GenerationConfig()
    domain = domain or InputDomain()
    if cfg.objective != "ssf":
        raise ValueError(f"expected objective 'ssf' for a baseline, got {cfg.objective!r}")
    if seeds.dim() < 2 or seeds.shape[0] == 0:
        raise ValueError(f"expected seeds of shape (N, ...) with N >= 1, got {tuple(seeds.shape)}")
    seeds = seeds.detach().float()
    if seeds.min() < domain.lo or seeds.max() > domain.hi:
        raise ValueError(
            f"expected seeds in [{domain.lo}, {domain.hi}], got [{seeds.min().item()}, {seeds.max().item()}]"
        )
    fn = _step_fn(method, cfg, model_outputs)
    start = time.perf_counter()
    outs, steps_run = [], 0
    steps = cfg.steps if cfg.eps > 0 else 0
    for v0 in tqdm(torch.split(seeds, 1), desc=f"generate ({method})", disable=not progress, leave=False):
        x, n = _ascend_one(model, v0, cfg, domain, fn) if steps else (v0.clone(), 0)
        steps_run = max(steps_run, n)
        outs.append(snap_to_ball(x, v0, cfg.eps, cfg.norm, domain))
    samples = torch.cat(outs)
    return result_for(model, samples, seeds, cfg, domain=domain, model_outputs=model_outputs,
                      steps_run=steps_run, seconds=time.perf_counter() - start)
