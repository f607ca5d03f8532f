"""Coverage of one fingerprint of a model too large for the full sweep: visible edits, and
the share of them its queries catch.

    .venv/bin/python -m benchmarks.studies.imagenet_coverage --fingerprint lite2.vpf \\
        --tensors 24 --draws 2 --json docs/guide/imagenet-coverage.json

``benchmarks/studies/detection_power.py`` edits 64 entries of every tensor and judges each edit
against 256 natural test inputs; on EfficientNet-Lite2 (260x260, 6.1M parameters in 194
tensors, one forward pass of the whole model per edit: it is no chain of layers) that
would take days on a CPU. This measures the same things on a seeded draw of ``--tensors``
tensors (every tensor weighing the same, as there), ``--draws`` entries of each, each
edited by ``1 - delta`` and ``1 + delta`` (:func:`veriprint.coverage.edits.edit_sweep`, whose
entries are those a full sweep would edit):

- **visible**: the edit moves some natural input's top-2 margin or some logit by more
  than twice the fingerprint's noise floor (the natural inputs: ``--natural`` of the
  data's views, drawn at random);
- **coverage**: caught (some query's top-1 label changes) over visible, for the first 8,
  16 and 32 queries and all of them (budgets are prefixes), and caught over all edits;
- **predicted**: the fingerprint's own first-order prediction (``meta["reach"]``) for the
  same tensors, a share of all edits.

The natural inputs come from the same photos as the fingerprint's seeds (the package
ships 20 ImageNet photos; their 200 views are all the data there is), which a reader
should weigh: a query and the natural input beside its seed see similar units.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.lib.report import write_report
from benchmarks.speed.stages import MODELS, last_weight, load_model
from veriprint.coverage.edits import edit_sweep
from veriprint.fingerprint import Fingerprint

BUDGETS = (8, 16, 32)


def log(msg: str) -> None:
    print(f"[imagenet-coverage] {msg}", file=sys.stderr, flush=True)


def natural_inputs(data: Any, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` of the data's inputs, drawn with ``seed + 1`` (the natural inputs of a run)."""
    g = torch.Generator().manual_seed(seed + 1)
    return data.x[torch.randperm(len(data), generator=g)[:n]].float()


def drawn_tensors(names: list[str], n: int | None, seed: int) -> list[str]:
    """``n`` of the tensors, drawn with ``seed`` (all of them when ``n`` is None or larger)."""
    if n is None or n >= len(names):
        return list(names)
    g = torch.Generator().manual_seed(seed)
    return [names[i] for i in sorted(torch.randperm(len(names), generator=g)[:n].tolist())]


def _num(x: float | None) -> float | None:
    """A share for JSON: None where there is none (NaN: a tensor without a visible edit)."""
    return None if x is None or x != x else x


def largest_last_weight(model: torch.nn.Module, natural: torch.Tensor) -> dict[str, Any]:
    """Why the structural case "the largest last-layer weight x1.05" can or cannot flip a
    natural-looking query: its class, how close that class comes to the top on the natural
    inputs, and how far the edit moves its logit there.

    The edit raises (or lowers) one class's logit only, by ``0.05 w h`` where ``h`` is the
    weight's input feature. A top-1 query changes label only when that class is within the
    change of the query's top logit; a query stays within its ball of a natural input.
    """
    name = last_weight(model)
    w = dict(model.named_parameters())[name]
    mod = dict(model.named_modules())[name.rsplit(".", 1)[0]]
    k = int(w.detach().abs().argmax())
    c, j = divmod(k, w.shape[1])
    feats: list[torch.Tensor] = []
    hook = mod.register_forward_hook(lambda m, i, o: feats.append(i[0].detach().flatten(1)))
    try:
        with torch.inference_mode():
            z = torch.cat([model(x) for x in torch.split(natural, 16)]).double()
    finally:
        hook.remove()
    h = torch.cat(feats).double()
    change = (0.05 * float(w.detach().reshape(-1)[k]) * h[:, j]).abs()
    rank = (z > z[:, c:c + 1]).sum(1)
    gap = z.max(1).values - z[:, c]
    return {"tensor": name, "class": c, "weight": float(w.detach().reshape(-1)[k]),
            "best_rank": int(rank.min()), "smallest_gap": float(gap.min()), "largest_change": float(change.max()),
            "natural_within_change": int((gap <= change).sum())}


def measure(name: str, path: Path, *, tensors: int | None, draws: int, natural: int,
            deltas: tuple[float, ...], seed: int = 0) -> dict[str, Any]:
    """The coverage of the fingerprint at ``path`` on the zoo model ``name``."""
    model, _, data = load_model(name)
    fp = Fingerprint.load(path)
    names = [n for n, p in model.named_parameters() if p.numel() > 0]
    picked = drawn_tensors(names, tensors, seed)
    nat = natural_inputs(data, natural, seed)
    floor = float(fp.noise.floor)
    t0 = time.perf_counter()
    sw = edit_sweep(model, {"fingerprint": fp.samples}, nat, visible_at=2 * floor, draws=draws, deltas=deltas,
                    seed=seed, batch_size=16, tensors=picked, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - t0
    log(f"{name}: {len(sw)} edits of {len(picked)} tensors against {len(fp)} queries and {len(nat)} natural "
        f"inputs in {seconds:.0f} s")
    reach = fp.meta.get("reach") or {}
    rows: dict[str, Any] = {}
    for d in deltas:
        hit_all = sw.caught("fingerprint")
        budgets = {str(n): _num(sw.overall(sw.caught("fingerprint", n), d, of_visible=True))
                   for n in BUDGETS if n < len(fp)}
        pred = None
        if reach.get("deltas") and d in reach["deltas"]:
            share = dict(zip(reach["tensors"], reach["share"][reach["deltas"].index(d)], strict=True))
            pred = sum(share[t] for t in picked) / len(picked)
        rows[str(d)] = {
            "visible": _num(sw.overall(sw.visible, d, of_visible=False)),
            "coverage": _num(sw.overall(hit_all, d, of_visible=True)),
            "caught_all": _num(sw.overall(hit_all, d, of_visible=False)),
            "budgets": budgets,
            "predicted": pred,
            "edits": int(sw.edits(d).sum()),
            "visible_edits": int((sw.edits(d) & sw.visible).sum()),
            "caught_edits": int((sw.edits(d) & hit_all).sum()),
            "caught_visible_edits": int((sw.edits(d) & hit_all & sw.visible).sum()),
            "tensor_visible": {t: _num(sw.per_tensor(sw.visible, d, of_visible=False)[names.index(t)])
                               for t in picked},
            "tensor_coverage": {t: _num(sw.per_tensor(hit_all, d, of_visible=True)[names.index(t)])
                                for t in picked},
        }
    labels = fp.expected.argmax(1)
    return {"model": name, "largest_last_weight": largest_last_weight(model, nat), "file": str(path), "queries": len(fp), "floor": floor,
            "classes": int(fp.expected.shape[1]), "classes_labelled": len(set(labels.tolist())),
            "tensors": picked, "all_tensors": len(names), "draws": draws, "natural": len(nat),
            "data": fp.meta.get("data"), "seconds": seconds, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "deltas": rows}


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def table(r: dict[str, Any]) -> list[str]:
    """The Markdown table of a result's shares, one row per edit size."""
    out = ["| edits | visible | coverage (caught / visible): first 8 | 16 | 32 | all | caught / all | "
           "predicted (of all) | edits: visible, caught of them |",
           "|---|---|---|---|---|---|---|---|---|"]
    for d, row in r["deltas"].items():
        b = row["budgets"]
        out.append(f"| ±{float(d):.0%} | {_pct(row['visible'])} | {_pct(b.get('8'))} | {_pct(b.get('16'))} | "
                   f"{_pct(b.get('32'))} | **{_pct(row['coverage'])}** ({r['queries']}) | {_pct(row['caught_all'])} | "
                   f"{_pct(row['predicted'])} | {row['edits']}: {row['visible_edits']}, "
                   f"{row['caught_visible_edits']} |")
    return out


def describe(r: dict[str, Any]) -> str:
    """One sentence: the fingerprint, the sample of tensors, the natural inputs, the time."""
    return (f"{r['model']}: {r['queries']} queries, noise floor {r['floor']:.3g}; {len(r['tensors'])} of "
            f"{r['all_tensors']} tensors drawn, {r['draws']} entries each, up and down; {r['natural']} natural "
            f"inputs decide visibility; {r['seconds'] / 60:.1f} min on {r['threads']} thread(s).")


def explain_last(r: dict[str, Any]) -> str:
    """The largest last-layer weight's case in one sentence (empty for results without it)."""
    e = r.get("largest_last_weight")
    if not e:
        return ""
    rank = e["best_rank"] + 1
    return (f"The largest last-layer weight ({e['tensor']}, {e['weight']:.3g}) feeds class {e['class']}. On the "
            f"{r['natural']} natural inputs that class ranks {rank}{'st' if rank == 1 else 'nd' if rank == 2 else 'th'} "
            f"at best, at least {e['smallest_gap']:.3g} below the top logit, while the edit x1.05 moves its logit by "
            f"{e['largest_change']:.3g} at most: it could change the label of {e['natural_within_change']} of them. "
            f"A query would have to be pushed about {e['smallest_gap']:.2g} logits towards that class inside its ball; "
            f"refinement moves each sample to its nearest boundary instead, and the {r['queries']} queries are "
            f"labelled with {r['classes_labelled']} of the {r['classes']} classes.")


def render(r: dict[str, Any], command: str) -> str:
    out = [f"Generated by `{command}`.", "", describe(r), "", *table(r)]
    if explain_last(r):
        out += ["", explain_last(r)]
    first = next(iter(r["deltas"].values()))
    out += ["", f"Per tensor (±{float(next(iter(r['deltas']))):.0%}): visible share and coverage.", "",
            "| tensor | visible | coverage |", "|---|---|---|"]
    for t in r["tensors"]:
        out.append(f"| {t} | {_pct(first['tensor_visible'][t])} | {_pct(first['tensor_coverage'][t])} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet-lite2", choices=MODELS)
    p.add_argument("--fingerprint", type=Path, required=False, help="the fingerprint file (.vpf) to measure")
    p.add_argument("--tensors", type=int, default=24, help="tensors drawn at random (default 24; 0: all)")
    p.add_argument("--draws", type=int, default=2, help="entries edited per tensor (default 2)")
    p.add_argument("--natural", type=int, default=200, help="natural inputs deciding visibility (default 200)")
    p.add_argument("--deltas", type=float, nargs="+", default=[0.05], help="relative edit sizes (default 0.05)")
    p.add_argument("--json", type=Path, default=None, help="write the raw results")
    p.add_argument("--render", type=Path, default=None, help="render a JSON written before instead of measuring")
    p.add_argument("--out", type=Path, default=None, help="Markdown report (default: stdout)")
    p.add_argument("--explain", action="store_true",
                   help="with --render: (re)compute the largest last-layer weight's case and store it in the JSON")
    args = p.parse_args(argv)
    if args.render:
        r = json.loads(args.render.read_text())
        if args.explain:
            model, _, data = load_model(r["model"])
            r["largest_last_weight"] = largest_last_weight(model, natural_inputs(data, r["natural"]))
            args.render.write_text(json.dumps(r, indent=1, allow_nan=False))
    else:
        if args.fingerprint is None:
            p.error("expected --fingerprint FILE.vpf (or --render FILE.json)")
        r = measure(args.model, args.fingerprint, tensors=args.tensors or None, draws=args.draws,
                    natural=args.natural, deltas=tuple(args.deltas))
        r["command"] = "python -m benchmarks.studies.imagenet_coverage " + " ".join(sys.argv[1:] if argv is None else argv)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(r, indent=1, allow_nan=False))
    if args.out or not args.json:
        write_report(render(r, r.get("command", "python -m benchmarks.studies.imagenet_coverage")), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
