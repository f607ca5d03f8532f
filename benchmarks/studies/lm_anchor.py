"""veriprint's LM fingerprint and Logprob Tracking side by side, at one query budget.

Usage (from the repository root)::

    PYTHONPATH=src .venv/bin/python -m benchmarks.studies.lm_anchor [--json FILE] [--plot PNG]
        [--fingerprint FP.vpf] [--repeats 3] [--reference-per-config 32] [--threads 2]
        [--render JSON]

The same model (the shipped ``fortunes-lm``), the same tampers as ``benchmarks.studies.lm_tampers``
and the same servers for both methods. Every server is the model behind
:class:`SharedServer`, which batches each request with a random number (0 to its batch
size minus one) of other users' prompts, as a busy server does, so each answer meets the
batching afresh.

1. The default fingerprint (32 prompts, at most 4 tokens each), made or read (``--fingerprint``).
2. Logprob Tracking (:mod:`veriprint.lm.anchors`) on the paper's prompt ``"x"``, one token
   with its top-5 logprobs per request (what ``logprobs:5`` reveals), against two
   references: the **owner's** (``--reference-per-config`` answers of the intact model at
   each batch size 1, 2, 4, 8, 16 and 32 with eager and with SDPA attention, pooled: the
   honest serving variants veriprint's noise floor covers) and a **tracking** reference
   (as many answers as a check, from the very deployment checked, earlier: the paper's
   setting of one API tracked over time).
3. The budget: a fingerprint check generates ``prompts x max_tokens`` tokens (128) in
   ``prompts`` completions (32). Logprob Tracking gets the same 128 generated tokens, as 128
   one-token completions; and, with the completions equalised instead, 32.
4. Every tamper served at batch size 8 (eager attention), checked by ``top1-token``,
   ``logprobs:5`` and Logprob Tracking; then the intact model ``--repeats`` times at every
   batch size and both attention kernels, counting false alarms of each.

Prints a Markdown report, progress lines on stderr; writes the raw numbers with ``--json``
and a figure with ``--plot`` (``--render FILE`` redraws both from such a file).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

BATCHES = (1, 2, 4, 8, 16, 32)
ATTENTION = ("eager", "sdpa")
SPECS = ("top1-token", "logprobs:5")
PROMPT = "x"  # Logprob Tracking's prompt
TOP_K = 5


def _say(msg: str) -> None:
    print(f"[lm-anchor] {msg}", file=sys.stderr, flush=True)


class SharedServer:
    """A model behind a server that batches each request with other users' prompts.

    Every ``complete`` call joins ``0 .. batch_size - 1`` other prompts (drawn from
    ``others``), in a shuffled order, and the server answers all of them in batches of
    ``batch_size``; only the caller's answers come back. Seeded, so a run repeats.
    """

    def __init__(self, lm: Any, *, batch_size: int, seed: int, others: Sequence[str], chat: bool = False,
                 system_prompt: str | None = None) -> None:
        from veriprint.lm.target import LocalCompletions

        self.inner = LocalCompletions(lm, batch_size=batch_size, chat=chat, system_prompt=system_prompt)
        self.batch_size = batch_size
        self.rng = random.Random(seed)
        self.others = list(others)
        self.description = f"shared:{lm.source} (batch {batch_size})"

    def complete(self, prompts: Sequence[str], *, max_tokens: int, logprobs: int | None = None) -> list[Any]:
        extra = [self.others[self.rng.randrange(len(self.others))] for _ in range(self.rng.randrange(self.batch_size))]
        every = list(prompts) + extra
        order = list(range(len(every)))
        self.rng.shuffle(order)
        answers = self.inner.complete([every[i] for i in order], max_tokens=max_tokens, logprobs=logprobs)
        back = dict(zip(order, answers, strict=True))
        return [back[i] for i in range(len(prompts))]


def other_users(seed: int = 0) -> list[str]:
    """Other users' prompts: beginnings (8 to 120 characters) of the shipped natural seeds."""
    from veriprint.lm.builder import shipped_seeds

    rng = random.Random(seed)
    return [s[: rng.randrange(8, 121)] for s in shipped_seeds() if s.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fingerprint", default=None, help="a default LM fingerprint (.vpf) to use instead of making one")
    p.add_argument("--repeats", type=int, default=3, help="checks of the intact model per batch size and kernel")
    p.add_argument("--reference-per-config", type=int, default=32,
                   help="owner's reference answers per batch size and kernel")
    p.add_argument("--permutations", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="write the figure here (.png)")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="only print the report (and --plot the figure) of an earlier run's --json file")
    args = p.parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text())
        if args.plot:
            plot(report, args.plot)
        print(render(report))
        return 0
    torch.set_num_threads(args.threads)

    from benchmarks.studies.lm_tampers import tamper_list, torchao_missing
    from veriprint.lm.anchors import first_token_logprobs, logprob_tracking_test
    from veriprint.lm.builder import LmFingerprintConfig, make_lm_fingerprint
    from veriprint.lm.fingerprint import LmFingerprint
    from veriprint.lm.model import load_lm
    from veriprint.lm.tamper import tamper_lm
    from veriprint.lm.verify import verify_lm

    started = time.perf_counter()
    lm = load_lm("fortunes-lm")
    models = {"eager": lm, "sdpa": load_lm("fortunes-lm", attn_implementation="sdpa")}
    others = other_users()
    t0 = time.perf_counter()
    if args.fingerprint:
        fp = LmFingerprint.load(args.fingerprint)
        _say(f"fingerprint read from {args.fingerprint}")
    else:
        _say("making the default fingerprint (minutes)")
        fp = make_lm_fingerprint(lm, LmFingerprintConfig(prompts=32, max_tokens=4))
    fp_seconds = time.perf_counter() - t0
    tokens_budget = len(fp) * fp.max_tokens
    requests_budget = len(fp)
    budgets = (tokens_budget, requests_budget)
    configs = [(a, b) for a in ATTENTION for b in BATCHES]

    def answers(server: SharedServer, n: int) -> list[dict[str, float]]:
        return first_token_logprobs(server, [PROMPT], n, top_k=TOP_K)[PROMPT]

    t0 = time.perf_counter()
    owner: list[dict[str, float]] = []
    for i, (attn, b) in enumerate(configs):
        owner += answers(SharedServer(models[attn], batch_size=b, seed=10_000 + i, others=others),
                         args.reference_per_config)
    owner_seconds = time.perf_counter() - t0
    tracking = {c: answers(SharedServer(models[c[0]], batch_size=c[1], seed=20_000 + i, others=others), tokens_budget)
                for i, c in enumerate(configs)}
    _say(f"owner's reference: {len(owner)} answers in {owner_seconds:.1f} s; tracking references: "
         f"{tokens_budget} answers for each of {len(configs)} deployments")

    def check(server: SharedServer, track: list[dict[str, float]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for spec in SPECS:
            t = time.perf_counter()
            r = verify_lm(fp, server, spec=spec)
            out[spec] = {"verdict": r.verdict, "mismatches": r.mismatches, "compared": r.compared,
                         "seconds": time.perf_counter() - t}
        t = time.perf_counter()
        got = answers(server, tokens_budget)
        for ref_name, ref in (("owner", owner), ("tracking", track)):
            for n in budgets:
                res = logprob_tracking_test(ref, got[:n], alpha=args.alpha, permutations=args.permutations)
                out[f"lt-{ref_name}-{n}"] = {"changed": res.changed, "p": res.p_value, "statistic": res.statistic,
                                             "shift": res.largest_shift}
        out["lt_seconds"] = time.perf_counter() - t
        return out

    rows: list[dict[str, Any]] = []
    for j, (name, cfg) in enumerate(tamper_list()):
        res = tamper_lm(lm, cfg)
        server = SharedServer(res.lm, batch_size=8, seed=30_000 + j, others=others, chat=res.system_prompt is not None,
                              system_prompt=res.system_prompt)
        rows.append({"tamper": name, "changed": res.changed, "total": res.total,
                     **check(server, tracking[("eager", 8)])})
        _say(f"{name}: {_line(rows[-1], tokens_budget)}")
    checks: list[dict[str, Any]] = []
    for i, (attn, b) in enumerate(configs):
        for rep in range(args.repeats):
            server = SharedServer(models[attn], batch_size=b, seed=40_000 + 100 * i + rep, others=others)
            checks.append({"attention": attn, "batch": b, "repeat": rep, **check(server, tracking[(attn, b)])})
        last = checks[-args.repeats:]
        _say(f"intact, {attn}, batch {b}: false alarms " + ", ".join(
            f"{m} {sum(_alarm(c, m) for c in last)}/{len(last)}" for m in (*SPECS, f"lt-owner-{tokens_budget}",
                                                                         f"lt-tracking-{tokens_budget}")))

    methods = [*SPECS, *(f"lt-{r}-{n}" for r in ("owner", "tracking") for n in budgets)]
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "prompt": PROMPT, "top_k": TOP_K, "alpha": args.alpha, "permutations": args.permutations,
        "fingerprint": {"prompts": len(fp), "max_tokens": fp.max_tokens, "floor": fp.noise.floor,
                        "logprob_tolerance": fp.noise.logit_tolerance, "seconds": round(fp_seconds, 1),
                        "made": not args.fingerprint},
        "budget": {"generated_tokens": tokens_budget, "completions": requests_budget,
                   "fingerprint_prompt_tokens": sum(len(fp.prompt_ids(i)) for i in range(len(fp))),
                   "lt_prompt_tokens": tokens_budget * len(lm.encode(PROMPT))},
        "owner_reference": {"answers": len(owner), "per_config": args.reference_per_config,
                            "seconds": round(owner_seconds, 1)},
        "tracking_reference": {"answers": tokens_budget},
        "methods": methods, "rows": rows, "checks": checks,
        "false_alarms": {m: sum(_alarm(c, m) for c in checks) for m in methods},
        "seconds_per_check": {"fingerprint (per spec)": round(statistics.median(
            c[s]["seconds"] for c in checks for s in SPECS), 3),
            "logprob tracking (answers and 4 tests)": round(statistics.median(c["lt_seconds"] for c in checks), 3)},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "torchao": torchao_missing() or "installed",
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(report, args.plot)
    print(render(report))
    return 0


def _line(r: dict[str, Any], n: int) -> str:
    return (f"top1-token {r['top1-token']['verdict']}, logprobs:5 {r['logprobs:5']['verdict']}, LT owner p "
            f"{r[f'lt-owner-{n}']['p']:.3g}, LT tracking p {r[f'lt-tracking-{n}']['p']:.3g}")


def _alarm(c: dict[str, Any], method: str) -> bool:
    """Whether a check of the intact model by ``method`` said anything but intact."""
    return bool(c[method]["changed"]) if method.startswith("lt-") else c[method]["verdict"] != "INTACT"


def _lt(cell: dict[str, Any]) -> str:
    return f"{'CHANGED' if cell['changed'] else 'unchanged'} (p {cell['p']:.2g})"


def render(rep: dict[str, Any]) -> str:
    """The Markdown report (a pure function of the measured numbers)."""
    tok, req = rep["budget"]["generated_tokens"], rep["budget"]["completions"]
    f = rep["fingerprint"]
    lines = [
        f"fingerprint: {f['prompts']} prompts, {f['max_tokens']} tokens each, floor {f['floor']:.3g}; Logprob "
        f"Tracking: prompt {rep['prompt']!r}, top-{rep['top_k']} logprobs of 1 token, {rep['permutations']} "
        f"permutations, alpha {rep['alpha']}; owner's reference {rep['owner_reference']['answers']} answers; "
        f"{rep['machine']}; {rep['wall_seconds']} s in all",
        "",
        f"budget per check: the fingerprint {req} completions, {tok} generated tokens"
        + (f", {rep['budget']['fingerprint_prompt_tokens']} prompt tokens" if "fingerprint_prompt_tokens"
           in rep["budget"] else "")
        + f"; Logprob Tracking {tok} one-token completions (the generated tokens equalised)"
        + (f", {rep['budget']['lt_prompt_tokens']} prompt tokens" if "lt_prompt_tokens" in rep["budget"] else "")
        + f", or {req} (the completions equalised)",
        "",
        f"| served | top1-token | logprobs:5 | LT, owner's reference, {tok} answers | {req} answers | "
        f"LT, tracking reference, {tok} answers | {req} answers |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rep["rows"]:
        a, b = r["top1-token"], r["logprobs:5"]
        lines.append(f"| {r['tamper']} | {a['verdict']} {a['mismatches']}/{a['compared']} | {b['verdict']} "
                     f"{b['mismatches']}/{b['compared']} | " + " | ".join(
                         _lt(r[f"lt-{ref}-{n}"]) for ref in ("owner", "tracking") for n in (tok, req)) + " |")
    lines += ["", "False alarms (checks of the intact model that did not pass):", "",
              "| served at | checks | top1-token | logprobs:5 | LT owner, " + f"{tok} | LT owner, {req} | "
              f"LT tracking, {tok} | LT tracking, {req} |", "|---|---|---|---|---|---|---|---|"]
    methods = rep["methods"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in rep["checks"]:
        groups.setdefault(f"batch {c['batch']}", []).append(c)
    groups["**all**"] = rep["checks"]
    for g, cs in groups.items():
        lines.append(f"| {g} | {len(cs)} | " + " | ".join(str(sum(_alarm(c, m) for c in cs)) for m in methods) + " |")
    s = rep["seconds_per_check"]
    lines += ["", "median seconds per check: " + ", ".join(f"{k} {v}" for k, v in s.items())]
    if rep.get("torchao", "installed") != "installed":
        lines.append(f"torchao rows not run: {rep['torchao']}")
    return "\n".join(lines)


def plot(rep: dict[str, Any], path: str) -> None:
    """Two panels: Logprob Tracking's statistic per tamper against the intact checks' range,
    and its p-value per check of the intact model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tok = rep["budget"]["generated_tokens"]
    floor_p = 1 / (rep["permutations"] + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6.5), gridspec_kw={"width_ratios": [1.3, 1]})
    names = [f"{r['tamper']}  [" + "/".join("T" if r[s]["verdict"] == "TAMPERED" else "-" for s in SPECS) + "]"
             for r in rep["rows"]]
    y = list(range(len(names)))
    low = 1e-9
    for ref, marker, dy in (("owner", "o", -0.15), ("tracking", "s", 0.15)):
        honest = max(c[f"lt-{ref}-{tok}"]["statistic"] for c in rep["checks"])
        color = "C0" if ref == "owner" else "C1"
        ax1.axvspan(low, honest, alpha=0.12, color=color,
                    label=f"intact model, {len(rep['checks'])} checks, {ref} reference (0 to {honest:.2g})")
        ax1.scatter([r[f"lt-{ref}-{tok}"]["statistic"] for r in rep["rows"]], [v + dy for v in y], marker=marker,
                    color=color, label=f"tamper, {ref} reference")
    ax1.set_xscale("log")
    ax1.set_xlim(low, 10)
    ax1.set_yticks(y, names, fontsize=7)
    ax1.invert_yaxis()
    ax1.set_xlabel(f"Logprob Tracking statistic ({tok} answers): mean |difference of average logprobs|")
    ax1.set_title(f"Tampers at batch 8: every LT p-value {floor_p:.2g} (the smallest possible)\n"
                  "[veriprint top1-token/logprobs:5, T = TAMPERED]", fontsize=9)
    ax1.legend(fontsize=7, loc="lower left")
    for ref, marker in (("owner", "o"), ("tracking", "s")):
        for attn, dx in (("eager", 0.94), ("sdpa", 1.06)):
            cs = [c for c in rep["checks"] if c["attention"] == attn]
            ax2.scatter([c["batch"] * dx for c in cs], [c[f"lt-{ref}-{tok}"]["p"] for c in cs], marker=marker,
                        alpha=0.7, label=f"{ref} reference, {attn}")
    ax2.axhline(rep["alpha"], color="k", ls="--", lw=1, label=f"alpha {rep['alpha']}")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_ylim(floor_p / 2, 2)
    ax2.set_xticks(list(BATCHES), [str(b) for b in BATCHES])
    ax2.set_xlabel("server batch size (intact model)")
    ax2.set_ylabel("Logprob Tracking p-value (below the line: a false alarm)")
    fa = rep["false_alarms"]
    ax2.set_title(f"{len(rep['checks'])} checks of the intact model\nfalse alarms: LT owner {fa[f'lt-owner-{tok}']}, "
                  f"LT tracking {fa[f'lt-tracking-{tok}']},\nveriprint top1-token {fa['top1-token']}, "
                  f"logprobs:5 {fa['logprobs:5']}", fontsize=9)
    ax2.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
