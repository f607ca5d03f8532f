"""The generation step: closed form vs a plain forward+backward, Algorithm 1, the authors' code.

For each number of classes ``r`` the default Fashion-MNIST CNN gets an ``r``-wide last
layer. Per sample and step we time:

* ``unit``: one plain forward and backward pass to the input at batch ``B``;
* ``closed``: ``log S`` by the closed form (``params="last"``) and its input gradient, batch ``B``;
* ``step``: a whole generation step (objective, gradient, Adam, projection, bookkeeping),
  through the loop :func:`veriprint.pipeline.generate.generate` runs, batch ``B``;
* ``literal``: Eq. 6 and its gradient by the paper's Algorithm 1, batch 1
  (:func:`veriprint.evaluate.baselines.literal_value_and_grad`);
* ``authors``: the authors' public surrogate, batch 1
  (:func:`veriprint.evaluate.baselines.surrogate_value_and_grad`).

Before timing, the closed form and the literal reference are compared on the same
inputs (float64 and float32, an ordinary and a confident model): values of ``log S`` and
gradients of ``log S`` must agree, or the run fails. On a GPU the comparison runs with
TF32 off (matmuls and cuDNN convolutions in full float32), so the float32 tolerances
mean the same as on the CPU; the timings keep torch's TF32 defaults.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
from torch import nn

from benchmarks.lib.timing import (
    Check,
    Context,
    Goal,
    Section,
    cnn,
    fmt_s,
    fmt_x,
    inputs,
    no_tf32,
    paired,
    unit_step,
)
from veriprint.data import InputDomain
from veriprint.evaluate.baselines import literal_value_and_grad, surrogate_value_and_grad
from veriprint.pipeline.generate import GenerationConfig, _ascend
from veriprint.pipeline.objective import log_sensitivity


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def closed_step(model: nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
    def run() -> torch.Tensor:
        xx = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(log_sensitivity(model, xx).sum(), xx)
        return g

    return run


def generation_steps(model: nn.Module, x: torch.Tensor, steps: int):  # type: ignore[no-untyped-def]
    cfg = GenerationConfig(steps=steps, patience=0)
    domain = InputDomain()

    def run() -> torch.Tensor:
        return _ascend(model, x, cfg, domain, "logits", _NoBar())[0]

    return run


def agreement(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> tuple[float, float, float]:
    """Max |log S closed - log S literal|, max relative error of d log S / dx, mean top prob."""
    m = copy.deepcopy(model).to(dtype)
    xs = x.to(dtype)
    with no_tf32():
        return _agreement(m, xs)


def _agreement(m: nn.Module, xs: torch.Tensor) -> tuple[float, float, float]:
    lit = literal_value_and_grad(m, xs)
    xx = xs.detach().requires_grad_(True)
    ls = log_sensitivity(m, xx)
    (g,) = torch.autograd.grad(ls.sum(), xx)
    g_lit = lit.grad / lit.value.view(-1, *([1] * (xs.dim() - 1)))
    err_v = float((ls.detach() - torch.log(lit.value)).abs().max())
    err_g = float(((g - g_lit).flatten(1).norm(dim=1) / g_lit.flatten(1).norm(dim=1)).max())
    with torch.no_grad():
        top = float(torch.softmax(m(xs), dim=-1).amax(dim=-1).mean())
    return err_v, err_g, top


def confident(model: nn.Module, scale: float) -> nn.Module:
    m = copy.deepcopy(model)
    last = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(scale)
        if last.bias is not None:
            last.bias.mul_(scale)
    return m


def run(ctx: Context) -> Section:
    classes = (10, 100) if ctx.quick else (10, 100, 1000)
    batch = 32 if ctx.quick else 500
    dev = ctx.device
    sec = Section(
        key="step",
        title="Generation step: closed form vs one forward+backward, Algorithm 1, the authors' surrogate",
        text=(
            f"Device: {dev}. "
            f"Default Fashion-MNIST CNN (`veriprint.zoo.fashion_cnn`), random weights, with an r-wide "
            f"last layer. Batched figures at batch B = {batch}; the baselines run at batch 1 as their "
            "authors ran them. *unit* = one plain forward and backward pass to the input "
            "(`autograd.grad(model(x).sum(), x)`) at batch B. *closed* = `log_sensitivity` "
            "(closed form, `params=\"last\"`) plus its input gradient. *step* = a whole step of "
            "`generate`'s loop (objective, gradient, Adam, projection, bookkeeping). *literal* = "
            "the paper's Algorithm 1 (one autograd pass per output, then one backward to the input; "
            "`veriprint.evaluate.baselines.literal_value_and_grad`). *authors* = the authors' surrogate "
            "(`veriprint.evaluate.baselines.surrogate_value_and_grad`). Every ratio is per sample, from "
            "interleaved timings in this run."
        ),
        headers=["r", "unit / sample", "closed / unit", "step / unit", "literal / sample",
                 "literal / closed", "authors / sample", "authors / closed"],
    )
    data: dict[str, Any] = {}

    # -- agreement: the benchmark must time the right computation --
    for r in classes:
        model = cnn(r, ctx.seed, device=dev)
        n = 1 if r >= 1000 else 2
        x = inputs(n, ctx.seed + 1, device=dev)
        for dtype, tol_v, tol_g in ((torch.float64, 1e-9, 1e-7), (torch.float32, 1e-4, 1e-3)):
            if dtype == torch.float32 and r >= 1000:
                continue
            err_v, err_g, top = agreement(model, x, dtype)
            ok = err_v < tol_v and err_g < tol_g
            sec.checks.append(Check(
                f"closed form = Algorithm 1, r={r}, {str(dtype).removeprefix('torch.')}", ok,
                f"max |log S diff| {err_v:.1e} (tol {tol_v:.0e}), max rel. error of d log S/dx "
                f"{err_g:.1e} (tol {tol_g:.0e}), {n} samples, mean top prob {top:.3f}"))
            data[f"agree_r{r}_{dtype}"] = {"log_s": err_v, "grad": err_g}
    sure = confident(cnn(10, ctx.seed, device=dev), 6.0)
    err_v, err_g, top = agreement(sure, inputs(2, ctx.seed + 1, device=dev), torch.float64)
    sec.checks.append(Check(
        "closed form = Algorithm 1, confident model (last layer x6), r=10, float64",
        err_v < 1e-9 and err_g < 1e-7,
        f"max |log S diff| {err_v:.1e}, max rel. error of d log S/dx {err_g:.1e}, mean top prob {top:.4f}"))
    ctx.log("step: agreement checked")

    # -- timings --
    for r in classes:
        model = cnn(r, ctx.seed, device=dev)
        x = inputs(batch, ctx.seed, device=dev)
        unit, closed = unit_step(model, x), closed_step(model, x)
        steps = 2 if ctx.quick else 5
        reps = 3 if ctx.quick else 7
        p_closed = paired(closed, unit, reps)
        p_step = paired(generation_steps(model, x, steps), unit, max(3, reps // 2), scale_a=steps)
        n_lit = {10: 8, 100: 2, 1000: 1}[r] if not ctx.quick else 1
        lit_reps = {10: 3, 100: 2, 1000: 2}[r] if not ctx.quick else 1
        literal_value_and_grad(model, x[:1])  # warm-up on one sample
        p_lit = paired(lambda m=model, xs=x[:n_lit]: literal_value_and_grad(m, xs), closed, lit_reps,
                       warmup=0, scale_a=n_lit, scale_b=batch)
        n_auth = 4 if ctx.quick else 16
        p_auth = paired(lambda m=model, xs=x[:n_auth]: surrogate_value_and_grad(m, xs), closed,
                        2 if ctx.quick else 3, scale_a=n_auth, scale_b=batch)
        unit_per = p_closed.b / batch
        sec.rows.append([
            str(r), fmt_s(unit_per), fmt_x(p_closed.ratio), fmt_x(p_step.ratio),
            fmt_s(p_lit.a), fmt_x(p_lit.ratio), fmt_s(p_auth.a), fmt_x(p_auth.ratio),
        ])
        data[f"r{r}"] = {"unit_per_sample": unit_per, "closed_over_unit": p_closed.ratio,
                         "step_over_unit": p_step.ratio, "literal_per_sample": p_lit.a,
                         "literal_over_closed": p_lit.ratio, "authors_per_sample": p_auth.a,
                         "authors_over_closed": p_auth.ratio}
        ctx.log(f"step: r={r} closed/unit {p_closed.ratio:.2f} step/unit {p_step.ratio:.2f} "
                f"literal/closed {p_lit.ratio:.0f} authors/closed {p_auth.ratio:.1f}")

    # -- a model whose parameters require gradients (as zoo factories return it) --
    model = cnn(10, ctx.seed, frozen=False, device=dev)
    x = inputs(batch, ctx.seed, device=dev)
    steps = 2 if ctx.quick else 5
    p_open = paired(generation_steps(model, x, steps), unit_step(model, x), 3 if ctx.quick else 5,
                    scale_a=steps)
    data["step_over_unit_params_require_grad"] = p_open.ratio
    sec.notes.append(
        f"Same step, r=10, on a model whose parameters still require gradients (as "
        f"`veriprint.zoo` factories return it): step / unit = {fmt_x(p_open.ratio)}.")
    if ctx.cuda:
        # a batch of 500 (generate's default chunk) may leave a large GPU partly idle
        big = 512 if ctx.quick else 4000
        model = cnn(10, ctx.seed, device=dev)
        x = inputs(big, ctx.seed, device=dev)
        steps = 2 if ctx.quick else 5
        reps = 3 if ctx.quick else 7
        p_bc = paired(closed_step(model, x), unit_step(model, x), reps)
        p_bs = paired(generation_steps(model, x, steps), unit_step(model, x), max(3, reps // 2), scale_a=steps)
        data[f"r10_batch{big}"] = {"unit_per_sample": p_bc.b / big, "closed_over_unit": p_bc.ratio,
                                   "step_over_unit": p_bs.ratio}
        sec.notes.append(
            f"At a larger batch (r=10, B = {big}, frozen parameters, `GenerationConfig.batch_size` would have "
            f"to be raised to run it in one chunk): unit / sample = {fmt_s(p_bc.b / big)}, closed / unit = "
            f"{fmt_x(p_bc.ratio)}, step / unit = {fmt_x(p_bs.ratio)}. Not part of the goals below, which use "
            f"B = {batch}.")
        sec.notes.append("Correctness checks above ran with TF32 off (`torch.backends.cuda.matmul.allow_tf32` and "
                         "`torch.backends.cudnn.allow_tf32` False), the timings with torch's defaults.")

    worst_closed = max(data[f"r{r}"]["closed_over_unit"] for r in classes)
    worst_step = max(max(data[f"r{r}"]["step_over_unit"] for r in classes), p_open.ratio)
    sec.goals.append(Goal("closed-form objective + gradient vs plain forward+backward (worst r)",
                          fmt_x(worst_closed), "<= 1.2x", worst_closed <= 1.2))
    sec.goals.append(Goal("whole generation step vs plain forward+backward (worst case)",
                          fmt_x(worst_step), "<= 1.2x", worst_step <= 1.2))
    lit = [data[f"r{r}"]["literal_over_closed"] for r in classes]
    if 100 in classes:
        v = data["r100"]["literal_over_closed"]
        sec.goals.append(Goal("closed form vs Algorithm 1 literally, r=100", fmt_x(v), ">= 100x", v >= 100))
    growing = all(b > a for a, b in itertools.pairwise(lit))
    sec.goals.append(Goal("speed-up over Algorithm 1 grows with r",
                          " < ".join(fmt_x(v) for v in lit) if growing else ", ".join(fmt_x(v) for v in lit),
                          "increasing", growing))
    worst_auth = min(data[f"r{r}"]["authors_over_closed"] for r in classes)
    sec.goals.append(Goal("closed form vs the authors' surrogate (worst r)", fmt_x(worst_auth), ">= 7x",
                          worst_auth >= 7))
    data["classes"] = list(classes)
    data["batch"] = batch
    sec.data = data
    return sec
