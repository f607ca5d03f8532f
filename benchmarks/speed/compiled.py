"""Does ``torch.compile`` help the generation step (on the CPU, or on the GPU with ``--device cuda``)?

The closed-form objective (the model's forward pass to its last layer and ``log S``) is
compiled with the default inductor backend; its input gradient is taken through the
compiled graph. Timed alternately against the eager step at batch 500 (r = 10), after a
first call that pays for compilation. Full mode only: compilation alone takes tens of
seconds on 2 cores.
"""

from __future__ import annotations

import time

import torch

from benchmarks.lib.timing import Context, Goal, Section, cnn, fmt_s, fmt_x, inputs, paired, sync
from veriprint.models import split_last_layer
from veriprint.pipeline.objective import _log_closed_form


def run(ctx: Context) -> Section:
    sec = Section(
        key="compiled",
        title=f"torch.compile for the generation step ({'CPU' if not ctx.cuda else ctx.device})",
        text=(f"Device: {ctx.device}. "
              "Objective + input gradient, closed form, default Fashion-MNIST CNN, r = 10, batch 500: "
              "eager vs `torch.compile` (inductor), interleaved after compilation."),
        headers=["compile + first call", "eager step", "compiled step", "compiled / eager",
                 "max rel. gradient difference", "steps to repay compilation"],
    )
    if ctx.quick:
        sec.notes.append("Not measured in quick mode (compilation alone takes tens of seconds).")
        return sec
    model = cnn(10, ctx.seed, device=ctx.device)
    x = inputs(500, ctx.seed, device=ctx.device)
    last = split_last_layer(model, x[:4])

    def objective(v: torch.Tensor) -> torch.Tensor:
        h, z, _ = last.forward(v)
        return _log_closed_form(h, z, "probs", True)

    compiled = torch.compile(objective)

    def step(f):  # type: ignore[no-untyped-def]
        def run() -> torch.Tensor:
            v = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(f(v).sum(), v)
            return g
        return run

    sync()
    start = time.perf_counter()
    g_c = step(compiled)()
    sync()
    t_compile = time.perf_counter() - start
    g_e = step(objective)()
    diff = float(((g_c - g_e).flatten(1).norm(dim=1) / g_e.flatten(1).norm(dim=1)).max())
    p = paired(step(compiled), step(objective), 7)
    saved = p.b - p.a
    repay = f"{t_compile / saved:.0f}" if saved > 0 else "never"
    sec.rows.append([fmt_s(t_compile), fmt_s(p.b), fmt_s(p.a), fmt_x(p.ratio), f"{diff:.1e}", repay])
    helps = p.ratio < 0.9 and saved > 0 and t_compile / saved < 1000
    sec.goals.append(Goal("torch.compile worth using for a 1000-step bag of 500", fmt_x(p.ratio),
                          "< 0.9x and repaid within 1000 steps", helps))
    sec.notes.append(
        "Decision: " + ("compilation pays off here, but `generate` stays eager for now: compiling costs the "
                        "time above on every new model and input shape, and its numerics differ slightly "
                        "from eager (last column), so it would have to be an opt-in."
                        if helps else
                        f"`generate` stays eager: compilation does not pay for itself on this "
                        f"{'CPU' if not ctx.cuda else 'GPU'}."))
    sec.data = {"compile_s": t_compile, "eager_s": p.b, "compiled_s": p.a, "ratio": p.ratio, "grad_rel_diff": diff}
    return sec
