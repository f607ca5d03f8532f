"""Coverage of single-parameter edits of the shipped LM: the share of visible ±5% edits a fingerprint catches.

Usage (from the repository root)::

    PYTHONPATH=src .venv/bin/python -m benchmarks.studies.lm_edits [--fingerprint FP.vpf | --save FP.vpf]
        [--draws 32] [--delta 0.05] [--natural 128] [--seed 0] [--threads 1] [--set KEY=VALUE ...]
        [--json FILE] [--plot FILE.png]

The classifier's measurement (:func:`veriprint.coverage.edits.edit_sweep`) on a language model:

1. Makes the default LM fingerprint of the shipped ``fortunes-lm`` (``--set`` changes a
   setting of :class:`~veriprint.lm.builder.LmFingerprintConfig`), timing it and recording
   peak memory, or loads one (``--fingerprint``).
2. Draws, stratified per tensor as for classifiers, ``--draws`` entries of every parameter
   tensor (all of a smaller one; seeded), and edits each, in place, by ``-delta`` and
   ``+delta`` relative (``w * (1 -+ delta)``), restoring the exact float after each edit
   (the weights' SHA-256 is checked at the end). The embedding is tied to the output layer,
   so an edit of one of its entries changes both.
3. An edit is **visible** when some natural prompt shows it above twice the fingerprint's
   noise floor: ``--natural`` held-out fortunes (the shipped seeds the fingerprint did not
   use, cut to 12 tokens as seeds are), each run along its intact greedy answer of as many
   steps as the fingerprint's answers (teacher-forced), where at some step the margin
   between the intact top-1 and top-2 tokens, or the logprob of one of the intact top 10
   tokens, moves by more than ``2 x floor``. (The classifier's rule: some natural input's
   top-2 margin or some logit moves by more than twice the floor; logprobs stand in for
   logits, which a softmax leaves free up to a constant, and the top 10 for what an API
   shows.)
4. An edit is **caught** under a spec when :func:`veriprint.lm.verify.verify_lm` of the
   fingerprint against the edited model (the local completions target, 32 prompts per
   forward pass) says TAMPERED,
   for ``top1-token`` and ``logprobs:5`` (one greedy decoding per edit with the top 5
   logprobs, which both comparisons read: ``top1-token`` reads only the tokens).
5. The first-order reach the fingerprint predicts (:mod:`veriprint.lm.reach`) is computed
   for every entry that was edited, and compared per tensor with the real edits.

Coverage is ``caught / visible``; over all tensors as the classifier reports it (every
tensor weighs the same: the mean over tensors of the share caught, over the same mean of
the share visible), per tensor, and per tensor family (embedding, attention q/k/v/o, MLP
gate/up/down, norms). Prints a Markdown report; ``--json`` writes it with every edit's row,
``--plot`` draws coverage per tensor. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

import torch

SPECS = ("top1-token", "logprobs:5")
FAMILIES = ("embedding", "attn q", "attn k", "attn v", "attn o", "mlp gate", "mlp up", "mlp down", "norms")


def family(name: str) -> str:
    """The tensor family of a Llama parameter name."""
    for key, fam in (("embed_tokens", "embedding"), ("lm_head", "embedding"), ("q_proj", "attn q"),
                     ("k_proj", "attn k"), ("v_proj", "attn v"), ("o_proj", "attn o"), ("gate_proj", "mlp gate"),
                     ("up_proj", "mlp up"), ("down_proj", "mlp down"), ("norm", "norms")):
        if key in name:
            return fam
    return "other"


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class _Once:
    """The local completions target, decoding once per edit with the top 5 logprobs; both
    specs' comparisons read the same answers (``top1-token`` only their tokens)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.description = inner.description
        self.answers: Any = None

    def complete(self, prompts: Sequence[str], *, max_tokens: int, logprobs: int | None = None) -> Any:
        if self.answers is None:
            self.answers = self.inner.complete(prompts, max_tokens=max_tokens, logprobs=5)
        return self.answers


class _Natural:
    """Natural prompts along their intact greedy answers, teacher-forced in one batch: the
    margins between the intact top-1 and top-2 tokens and the logprobs of the intact top 10."""

    def __init__(self, lm: Any, prompts: list[list[int]], steps: int) -> None:
        from veriprint.lm.model import pad_left
        from veriprint.lm.target import greedy

        ref = greedy(lm, prompts, steps, top=10)
        self.lm = lm
        seqs, rows, cols = [], [], []
        for i, p in enumerate(prompts):
            n = int(ref.lengths[i])
            seqs.append(list(p) + [int(t) for t in ref.ids[i, : n - 1]])
        width = max(len(s) for s in seqs)
        for i, p in enumerate(prompts):
            for t in range(int(ref.lengths[i])):
                rows.append(i)
                cols.append(width - len(seqs[i]) + len(p) - 1 + t)
        self.ids, self.mask = pad_left(seqs, int(lm.tokenizer.pad_token_id or 0))
        self.pos = (self.mask.cumsum(-1) - 1).clamp_min(0)
        self.rows, self.cols = torch.tensor(rows), torch.tensor(cols)
        step_of = [t for i in range(len(prompts)) for t in range(int(ref.lengths[i]))]
        self.top = ref.top_ids[self.rows, torch.tensor(step_of)]  # (S, 10)
        self.base_lp, self.base_m = self.read()
        self.steps = len(rows)

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            z = self.lm.model(input_ids=self.ids, attention_mask=self.mask, position_ids=self.pos,
                              use_cache=False).logits[self.rows, self.cols].double()
        lp = torch.log_softmax(z, dim=-1).gather(1, self.top)
        zz = z.gather(1, self.top[:, :2])
        return lp, zz[:, 0] - zz[:, 1]

    def change(self) -> float:
        lp, m = self.read()
        return max(float((lp - self.base_lp).abs().max()), float((m - self.base_m).abs().max()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fingerprint", default=None, help="load this LM fingerprint (.vpf) instead of making one")
    p.add_argument("--save", default=None, help="write the fingerprint made here (.vpf)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of LmFingerprintConfig for the fingerprint made here (repeatable)")
    p.add_argument("--draws", type=int, default=32, help="entries edited per tensor (default 32)")
    p.add_argument("--delta", type=float, default=0.05, help="relative size of each edit (default 0.05)")
    p.add_argument("--natural", type=int, default=128, help="held-out natural prompts deciding visibility")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from veriprint.lm.builder import LmFingerprintConfig, make_lm_fingerprint, shipped_seeds
    from veriprint.lm.fingerprint import LmFingerprint
    from veriprint.lm.model import load_lm, weights_sha256
    from veriprint.lm.prompts import seed_prompts
    from veriprint.lm.reach import fingerprint_reach
    from veriprint.lm.target import LocalCompletions
    from veriprint.lm.verify import verify_lm

    lm = load_lm("fortunes-lm")
    cost: dict[str, Any] = {}
    if args.fingerprint:
        fp = LmFingerprint.load(args.fingerprint)
    else:
        given = dict(kv.split("=", 1) for kv in args.set)
        cfg = LmFingerprintConfig(**{k: _value(v) for k, v in given.items()})
        print(f"making the fingerprint ({cfg})", file=sys.stderr)
        tracemalloc.start()
        t0 = time.perf_counter()
        fp = make_lm_fingerprint(lm, cfg)
        cost = {"seconds": round(time.perf_counter() - t0, 1), "stages": fp.meta["stages"],
                "peak_python_mib": round(tracemalloc.get_traced_memory()[1] / 2**20, 1),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 1)}
        tracemalloc.stop()
        if args.save:
            fp = fp.save(args.save)
    floor = fp.noise.floor
    visible_at = 2 * floor
    used = int(fp.meta.get("search", {}).get("seeds", 48))
    pool = seed_prompts(lm, shipped_seeds(), max_tokens=int(fp.meta["config"].get("seed_tokens", 12)))
    natural = [s for s in pool[used:] if lm.decode(s) not in set(fp.meta.get("seed_texts", []))][: args.natural]
    nat = _Natural(lm, natural, fp.max_tokens)
    print(f"fingerprint: {len(fp)} prompts, floor {floor:.3g}; {len(natural)} natural prompts ({nat.steps} steps)",
          file=sys.stderr)

    local = LocalCompletions(lm, batch_size=32)
    for spec in SPECS:
        r = verify_lm(fp, local, spec=spec)
        if r.verdict != "INTACT":
            raise SystemExit(f"the intact model is {r.verdict} under {spec}: {r.reason}")
    assert nat.change() == 0.0

    t0 = time.perf_counter()
    reach = fingerprint_reach(lm, fp, k=5, per_tensor=1 << 30, seed=args.seed)
    reach_s = time.perf_counter() - t0

    named = [(n, q) for n, q in lm.model.named_parameters() if q.numel() > 0]
    g = torch.Generator().manual_seed(args.seed)
    plan = [(t, torch.randperm(q.numel(), generator=g)[: args.draws].tolist()) for t, (_, q) in enumerate(named)]
    offsets = [0]
    for _, q in named:
        offsets.append(offsets[-1] + q.numel())
    total = sum(len(ix) for _, ix in plan) * 2
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for t, idx in plan:
        name, q = named[t]
        flat = q.data.view(-1)
        for j in idx:
            orig = flat[j].clone()
            for sign in (-1.0, 1.0):
                flat[j] = orig * (1 + sign * args.delta)
                try:
                    moved = nat.change()
                    target = _Once(local)
                    caught = {spec: verify_lm(fp, target, spec=spec).verdict == "TAMPERED" for spec in SPECS}
                finally:
                    flat[j] = orig
                col = offsets[t] + j
                pred = {"top1-token": bool((reach.down if sign < 0 else reach.up)[col] >= -torch.log10(
                    torch.tensor(args.delta))), "logprobs:5": bool(reach.logprob[col] >= -torch.log10(
                        torch.tensor(args.delta)))}
                rows.append({"tensor": name, "entry": j, "delta": sign * args.delta, "natural_change": moved,
                             "visible": moved > visible_at, **{f"caught {s}": v for s, v in caught.items()},
                             **{f"predicted {s}": v for s, v in pred.items()}})
                if len(rows) % 200 == 0:
                    el = time.perf_counter() - t0
                    print(f"  {len(rows)}/{total} edits, {el:.0f} s, about {el / len(rows) * (total - len(rows)):.0f} s "
                          "left", file=sys.stderr)
    sweep_s = time.perf_counter() - t0
    if weights_sha256(lm.model) != lm.weights_sha256:
        raise SystemExit("the weights were not restored bit for bit")

    report = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
                   + f", {torch.get_num_threads()} threads, torch {torch.__version__}",
        "fingerprint": {"prompts": len(fp), "roles": {r: fp.meta["roles"].count(r) for r in set(fp.meta["roles"])},
                        "max_tokens": fp.max_tokens, "floor": floor, "logprob_tolerance": fp.noise.logit_tolerance,
                        "config": fp.meta.get("config"), "reach_stored": fp.meta.get("reach", {}).get("all"),
                        "plan": fp.meta.get("plan"), **cost},
        "natural": len(natural), "natural_steps": nat.steps, "visible_at": visible_at, "delta": args.delta,
        "draws": args.draws, "seed": args.seed, "edits": len(rows), "sweep_seconds": round(sweep_s, 1),
        "reach_seconds": round(reach_s, 1), "tensors": [n for n, _ in named],
        "sizes": [q.numel() for _, q in named], "summary": summarise(rows, [n for n, _ in named]), "rows": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        plot(report, args.plot)
    print(render(report))
    return 0


def _share(rows: list[dict[str, Any]], key: str, among: str | None = None) -> tuple[int, int]:
    sel = [r for r in rows if among is None or r[among]]
    return sum(bool(r[key]) for r in sel), len(sel)


def summarise(rows: list[dict[str, Any]], tensors: list[str]) -> dict[str, Any]:
    """Per tensor, per family and overall: visible share, caught/visible per spec, caught of
    all, and the first-order prediction (share of all edits)."""
    by: dict[str, list[dict[str, Any]]] = {n: [r for r in rows if r["tensor"] == n] for n in tensors}

    def cell(rs: list[dict[str, Any]]) -> dict[str, Any]:
        vis, n = _share(rs, "visible")
        out: dict[str, Any] = {"edits": n, "visible": vis}
        for s in SPECS:
            out[s] = {"caught_visible": _share(rs, f"caught {s}", "visible")[0],
                      "caught": _share(rs, f"caught {s}")[0], "predicted": _share(rs, f"predicted {s}")[0]}
        return out

    per_tensor = {n: cell(rs) for n, rs in by.items()}

    def mean_over(names: list[str]) -> dict[str, Any]:
        """The classifier's overall figure: every tensor weighs the same."""
        cells = [per_tensor[n] for n in names if per_tensor[n]["edits"]]
        vis = sum(c["visible"] / c["edits"] for c in cells) / len(cells)
        out: dict[str, Any] = {"tensors": len(cells), "visible_share": vis}
        for s in SPECS:
            caught_vis = sum(c[s]["caught_visible"] / c["edits"] for c in cells) / len(cells)
            out[s] = {"coverage": caught_vis / vis if vis else float("nan"),
                      "caught_share": sum(c[s]["caught"] / c["edits"] for c in cells) / len(cells),
                      "predicted_share": sum(c[s]["predicted"] / c["edits"] for c in cells) / len(cells)}
        return out

    families = {f: mean_over([n for n in tensors if family(n) == f]) for f in FAMILIES
                if any(family(n) == f for n in tensors)}
    pooled = cell(rows)
    return {"per_tensor": per_tensor, "families": families, "overall": mean_over(tensors), "pooled": pooled}


def render(rep: dict[str, Any]) -> str:
    """The Markdown report (a pure function of the measured numbers)."""
    s = rep["summary"]
    fpi = rep["fingerprint"]
    head = (f"fingerprint: {fpi['prompts']} prompts ({', '.join(f'{v} {k}' for k, v in sorted(fpi['roles'].items()))}), "
            f"{fpi['max_tokens']} tokens each, floor {fpi['floor']:.3g}, logprob tolerance "
            f"{fpi['logprob_tolerance']:.3g}")
    if "seconds" in fpi:
        head += f"; made in {fpi['seconds']} s, peak RSS {fpi['peak_rss_mib']} MiB"
    lines = [head + f"; {rep['machine']}",
             f"{rep['edits']} edits (±{rep['delta']:.0%} of {rep['draws']} entries per tensor, all of a smaller one, "
             f"seed {rep['seed']}) in {rep['sweep_seconds']} s; visible: some of {rep['natural']} natural prompts "
             f"({rep['natural_steps']} steps) moves by more than {rep['visible_at']:.3g}", ""]
    o = s["overall"]
    lines += ["| | visible | top1-token caught/visible | logprobs:5 caught/visible | top1-token predicted (all edits) | "
              "top1-token caught (all edits) | logprobs:5 predicted | logprobs:5 caught |", "|---|---|---|---|---|---|---|---|"]

    def row(name: str, c: dict[str, Any]) -> str:
        a, b = c["top1-token"], c["logprobs:5"]
        return (f"| {name} | {c['visible_share']:.1%} | {a['coverage']:.1%} | {b['coverage']:.1%} | "
                f"{a['predicted_share']:.1%} | {a['caught_share']:.1%} | {b['predicted_share']:.1%} | "
                f"{b['caught_share']:.1%} |")

    lines.append(row(f"**all {o['tensors']} tensors**", o))
    for f, c in s["families"].items():
        lines.append(row(f"{f} ({c['tensors']})", c))
    pooled = s["pooled"]
    lines += ["", f"pooled over all {pooled['edits']} edits: {pooled['visible']} visible; caught/visible "
              + ", ".join(f"{sp} {pooled[sp]['caught_visible']}/{pooled['visible']}" for sp in SPECS), "",
              "| tensor | entries | edits | visible | top1-token caught/visible | logprobs:5 caught/visible |",
              "|---|---|---|---|---|---|"]
    for name, size in zip(rep["tensors"], rep["sizes"], strict=True):
        c = s["per_tensor"][name]
        lines.append(f"| {name} | {size:,} | {c['edits']} | {c['visible']} | {c['top1-token']['caught_visible']} | "
                     f"{c['logprobs:5']['caught_visible']} |")
    return "\n".join(lines)


def plot(rep: dict[str, Any], path: str) -> None:
    """Per tensor: the share of edits visible, and caught/visible under each spec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = rep["tensors"]
    per = rep["summary"]["per_tensor"]
    short = [n.replace("model.", "").replace("layers.", "L").replace("self_attn.", "").replace("mlp.", "")
             .replace(".weight", "").replace("_proj", "").replace("post_attention_layernorm", "mlp-norm")
             .replace("input_layernorm", "attn-norm").replace("embed_tokens", "embed (tied)") for n in names]
    x = torch.arange(len(names)).float()
    vis = [per[n]["visible"] / per[n]["edits"] for n in names]
    cov = {s: [per[n][s]["caught_visible"] / per[n]["visible"] if per[n]["visible"] else float("nan") for n in names]
           for s in SPECS}
    fig, ax = plt.subplots(figsize=(12, 4.6))
    ax.bar((x - 0.27).tolist(), vis, 0.27, label="visible (share of edits)", color="#bbbbbb")
    ax.bar(x.tolist(), cov["top1-token"], 0.27, label="top1-token: caught / visible", color="#d95f02")
    ax.bar((x + 0.27).tolist(), cov["logprobs:5"], 0.27, label="logprobs:5: caught / visible", color="#1b9e77")
    ax.axhline(0.9, color="k", lw=0.8, ls="--")
    ax.set_xticks(x.tolist())
    ax.set_xticklabels(short, rotation=70, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share")
    o = rep["summary"]["overall"]
    fig.suptitle(f"fortunes-lm, ±{rep['delta']:.0%} single-weight edits ({rep['edits']}): visible "
                 f"{o['visible_share']:.0%}, caught/visible top1-token {o['top1-token']['coverage']:.0%}, "
                 f"logprobs:5 {o['logprobs:5']['coverage']:.0%}", fontsize=10)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
