"""Any parameter subset: the exact objective by vmap'd Jacobians vs a per-output loop, and probes.

``params="all"``: no closed form. The exact value takes one vector-Jacobian product per
output, vectorized over outputs and samples (``method="jacobian"``: ``torch.func.vmap``
over ``jacrev``); the reference is the per-output autograd loop
(:func:`veriprint.pipeline.objective.sensitivity_loop`, the paper's Algorithm 1 for ``S``). The
Hutchinson estimator (``method="probe"``) costs one vector-Jacobian product per probe;
its relative error is measured against the exact value.

On a GPU the probe calls run under ``with torch.device("cuda")`` with a CUDA generator,
so that the probe signs are drawn on the device of the inputs (and, for a fair ratio,
the exact evaluation they are compared with runs under the same context); on the CPU
both run as before.
"""

from __future__ import annotations

import contextlib
import statistics
from typing import Any

import torch
from torch import nn

from benchmarks.lib.timing import Check, Context, Section, cnn, fmt_s, fmt_x, inputs, paired
from veriprint.evaluate.baselines import literal_value_and_grad
from veriprint.numerics import freeze
from veriprint.pipeline.objective import log_sensitivity, resolve_params, sensitivity_loop
from veriprint.zoo import digits_mlp


def _mlp(seed: int, device: str = "cpu") -> nn.Module:
    torch.manual_seed(seed)
    return freeze(digits_mlp()).to(device)


def _scope(ctx: Context) -> contextlib.AbstractContextManager[Any]:
    """Where random probe signs are drawn: the inputs' device (a no-op on the CPU)."""
    return torch.device(ctx.device) if ctx.cuda else contextlib.nullcontext()


def _generator(ctx: Context, seed: int) -> torch.Generator:
    return (torch.Generator(device=ctx.device) if ctx.cuda else torch.Generator()).manual_seed(seed)


def _speed(ratio: float) -> str:
    """``ratio`` = time of the new way / time of the reference."""
    return f"{fmt_x(1 / ratio)} faster" if ratio <= 1 else f"{fmt_x(ratio)} slower"


def run(ctx: Context) -> Section:
    sec = Section(
        key="general",
        title="General parameter subsets (params=\"all\"): vmap'd Jacobians, per-output loop, probes",
        text=(
            f"Device: {ctx.device}. "
            "Exact `log S` over all parameters by `log_sensitivity(params=\"all\")` (vmap over "
            "jacrev) vs the per-output autograd loop (`sensitivity_loop`), and the random-probe "
            "(Hutchinson) estimate: cost relative to the exact vmap evaluation and mean relative "
            "error of `S` over samples and 3 probe seeds."
        ),
        headers=["model", "what", "time / sample", "ratio", "mean rel. error of S"],
    )
    data: dict[str, Any] = {}
    dev = ctx.device
    cases: list[tuple[str, nn.Module, torch.Tensor]] = [
        ("digits MLP (5k params)", _mlp(ctx.seed, dev), inputs(8, ctx.seed, (1, 8, 8), device=dev))]
    if not ctx.quick:
        cases.append(("Fashion CNN (420k params)", cnn(10, ctx.seed, device=dev), inputs(4, ctx.seed, device=dev)))
    for label, model, x in cases:
        n = x.shape[0]
        names = resolve_params(model, "all")
        exact = log_sensitivity(model, x, params="all")
        loop = torch.log(sensitivity_loop(model, x, names))
        err = float((exact - loop).abs().max())
        sec.checks.append(Check(f"vmap Jacobian = per-output loop, params=all, {label}", err < 1e-4,
                                f"max |log S diff| {err:.1e} (tol 1e-4), {n} samples"))
        reps = 3 if label.startswith("digits") else 2
        p = paired(lambda m=model, x=x: log_sensitivity(m, x, params="all"),
                   lambda m=model, x=x, nm=names: sensitivity_loop(m, x, nm), reps, scale_a=n, scale_b=n)
        sec.rows.append([label, "S, per-output loop", fmt_s(p.b), "1 (reference)", "exact"])
        sec.rows.append([label, "S, vmap Jacobian", fmt_s(p.a), _speed(p.ratio), "exact"])
        data[label] = {"loop_per_sample": p.b, "jacobian_per_sample": p.a, "loop_over_jacobian": 1 / p.ratio}
        if label.startswith("digits"):
            # value and input gradient (what a generation step needs)
            def jac_grad(m: nn.Module = model, x: torch.Tensor = x) -> torch.Tensor:
                xx = x.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(log_sensitivity(m, xx, params="all").sum(), xx)
                return g

            q = paired(jac_grad, lambda m=model, x=x: literal_value_and_grad(m, x, params="all"), reps,
                       scale_a=n, scale_b=n)
            sec.rows.append([label, "S + input gradient, per-output loop (Algorithm 1)", fmt_s(q.b),
                             "1 (reference)", "exact"])
            sec.rows.append([label, "S + input gradient, vmap Jacobian", fmt_s(q.a),
                             _speed(q.ratio), "exact"])
            data[label]["grad_loop_over_jacobian"] = 1 / q.ratio
        exact_s = exact.double().exp()
        for probes in ((1, 4, 16, 64) if not ctx.quick else (1, 4, 16)):
            what = f"S, {probes} probe{'s' if probes > 1 else ''}"
            try:
                errs = []
                for s in range(3):
                    with _scope(ctx):
                        est = log_sensitivity(model, x, params="all", method="probe", probes=probes,
                                              generator=_generator(ctx, ctx.seed + s))
                    errs.append(float((est.double().exp() / exact_s - 1).abs().mean()))

                def probe(m: nn.Module = model, x: torch.Tensor = x, k: int = probes) -> torch.Tensor:
                    with _scope(ctx):
                        return log_sensitivity(m, x, params="all", method="probe", probes=k,
                                               generator=_generator(ctx, 0))

                def jac(m: nn.Module = model, x: torch.Tensor = x) -> torch.Tensor:
                    with _scope(ctx):
                        return log_sensitivity(m, x, params="all")

                pr = paired(probe, jac, reps, scale_a=n, scale_b=n)
            except Exception as e:  # report the rows that ran; the probe path is not the exact check
                sec.rows.append([label, what, "failed", "-", "-"])
                sec.notes.append(f"{label}, {what}: failed on {dev}: `{type(e).__name__}: {e}`.")
                data[label][f"probes_{probes}"] = {"error": f"{type(e).__name__}: {e}"}
                continue
            sec.rows.append([label, what, fmt_s(pr.a),
                             f"{fmt_x(pr.ratio)} of vmap Jacobian", f"{statistics.mean(errs):.3f}"])
            data[label][f"probes_{probes}"] = {"over_jacobian": pr.ratio, "rel_error": statistics.mean(errs)}
        ctx.log(f"general: {label} done")
    sec.notes.append("The probe estimate is unbiased; its error falls about as 1/sqrt(probes). Its cost "
                     "per probe does not grow with r, while the exact evaluation holds an r x P Jacobian "
                     "per sample (r = 1000 on the Fashion CNN: 1.7 GB per sample).")
    sec.data = data
    return sec
