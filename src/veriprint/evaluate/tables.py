"""Tables rendered from result rows by pure functions (rows in, Markdown or CSV out).

Missing rates of an attack are the mean over its instances (the missing rate against an
instance drawn at random from the plan's instances of that attack).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "PAPER_TABLE3",
    "PAPER_TABLE4",
    "PAPER_TABLE6",
    "aggregate",
    "markdown",
    "table2_attacks",
    "table2_models",
    "table3",
    "table4",
    "table5",
    "table6",
    "table_detection_rate",
    "table_false_positives",
    "table_pools",
    "to_csv",
]

PAPER_TABLE3 = {
    "trojan": [5.93, 0.22, 0.00, 0.00, 0.00, 0.00],
    "poison-generic": [12.26, 0.04, 0.01, 0.00, 0.00, 0.00],
    "poison-specific": [2.20, 0.01, 0.00, 0.00, 0.00, 0.00],
    "quantize": [48.93, 15.56, 4.72, 1.81, 0.83, 0.04],
}
"""He, Zhang, Lee (CVPR 2019), Table 3: Sensitive-Samples + MANC missing rate (%) at N_S 1,2,3,4,5,8
(VGG-Face trojan, GTSRB poisonings, CIFAR-10 compression)."""

PAPER_NS = (1, 2, 3, 4, 5, 8)
"""The N_S columns of the paper's Table 3."""

PAPER_TABLE4 = {"top1": [5.93, 0.22, 0.0], "topk:3": [0.0, 0.0, 0.0], "topk:5": [0.0, 0.0, 0.0],
                "top1-prob:2": [0.43, 0.0, 0.0], "probs:1": [0.21, 0.0, 0.0], "probs:2": [0.0, 0.0, 0.0]}
"""The paper's Table 4 (trojan, N_S 1..3), by our spec names."""

PAPER_TABLE6 = {"before": [12.26, 0.04, 0.01, 0.00, 0.00], "after": [4.82, 0.01, 0.00, 0.00, 0.00]}
"""The paper's Table 6, error-generic poisoning, N_S 1..5."""

Row = dict[str, Any]


def markdown(header: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (cells converted with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def to_csv(header: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
    """The same table as CSV text."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(body)
    return buf.getvalue()


def _pct(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{100 * x:.{digits}f}"


def _pad_mean(curves: list[list[float]]) -> np.ndarray:
    """Mean of curves of unequal length, each extended with its last value."""
    curves = [c if c else [1.0] for c in curves]
    length = max(len(c) for c in curves)
    mean: np.ndarray = np.mean([np.pad(np.asarray(c, dtype=np.float64), (0, length - len(c)), mode="edge") for c in curves],
                   axis=0)
    return mean


def aggregate(rows: Iterable[Row], spec: str) -> list[Row]:
    """Detection rows of ``spec`` averaged per (model, attack group, method).

    Each output row has ``model, group, method, natural, instances, n, rate`` (mean
    per-sample detection rate ``d / n``), ``miss_random`` and ``miss_manc`` (means per
    ``N_S``; None for natural), ``curve_random``/``curve_manc`` (mean curves, headline
    spec only), ``bags`` (total MANC bags) and ``ns``.
    """
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for r in rows:
        if r.get("kind") == "detect" and r["spec"] == spec:
            groups[(r["model"], r["group"], r["method"])].append(r)
    out = []
    for (model, group, method), rs in groups.items():
        manc = [r for r in rs if r.get("miss_manc") is not None]
        out.append({
            "model": model, "group": group, "method": method, "natural": rs[0]["natural"], "instances": len(rs),
            "n": int(np.mean([r["n"] for r in rs])), "ns": rs[0]["ns"],
            "rate": float(np.mean([r["d"] / r["n"] if r["n"] else 0.0 for r in rs])),
            "miss_random": np.mean([r["miss_random"] for r in rs], axis=0).tolist(),
            "miss_manc": np.mean([r["miss_manc"] for r in manc], axis=0).tolist() if manc else None,
            "curve_random": _pad_mean([r["curve_random"] for r in rs]).tolist()
            if all(r.get("curve_random") is not None for r in rs) else None,
            "curve_manc": _pad_mean([r["curve_manc"] for r in manc]).tolist()
            if manc and all(r.get("curve_manc") is not None for r in manc) else None,
            "bags": sum(r.get("bags", 0) for r in manc),
            "selector": rs[0].get("selector", "MANC"), "unit": rs[0].get("unit", "sample"),
        })
    return out


def _lines(agg: list[Row]) -> list[tuple[Row, str, list[float]]]:
    """(row, selection label, missing rates) for natural, then each method's random and MANC."""
    out = []
    for r in agg:
        if r["natural"]:
            out.append((r, "random", r["miss_random"]))
        else:
            out.append((r, "random", r["miss_random"]))
            if r["miss_manc"] is not None:
                out.append((r, r["selector"], r["miss_manc"]))
    return out


def table3(rows: Iterable[Row], spec: str = "top1") -> tuple[list[str], list[list[Any]]]:
    """Missing rate (%) vs ``N_S`` per attack, method and selection (Table 3, Figure 5)."""
    agg = aggregate(rows, spec)
    ns = agg[0]["ns"] if agg else []
    header = ["attack", "model", "method", "selection", *[f"N_S={k}" for k in ns], "instances",
              "paper (MANC, same N_S)"]
    body = []
    for r, sel, miss in _lines(agg):
        paper = PAPER_TABLE3.get(r["group"]) if sel == "MANC" else None
        shown = [paper[PAPER_NS.index(k)] for k in ns if k in PAPER_NS] if paper else []
        body.append([r["group"], r["model"], r["method"], sel, *[_pct(m) for m in miss], r["instances"],
                     " / ".join(f"{v:.2f}" for v in shown)])
    return header, body


def table4(rows: Iterable[Row], specs: Sequence[str], ns_shown: Sequence[int] = (1, 2, 3)) -> tuple[list[str], list[list[Any]]]:
    """Missing rate (%) vs output spec (Table 4): MANC for generated samples, random for natural."""
    rows = list(rows)
    per_spec = {s: {(r["model"], r["group"], r["method"]): r for r in aggregate(rows, s)} for s in specs}
    header = ["attack", "model", "method", "N_S", *specs]
    body = []
    first = per_spec[specs[0]] if specs else {}
    for key, r0 in first.items():
        for k in ns_shown:
            if k not in r0["ns"]:
                continue
            i = r0["ns"].index(k)
            cells = []
            for s in specs:
                r = per_spec[s].get(key)
                if r is None:
                    cells.append("")
                    continue
                miss = r["miss_random"] if r["miss_manc"] is None else r["miss_manc"]
                cells.append(_pct(miss[i]))
            label = r0["method"] + ("" if r0["natural"] else f" + {r0['selector']}")
            body.append([r0["group"], r0["model"], label, k, *cells])
    return header, body


def table5(rows: Iterable[Row], alphas: Sequence[float], spec: str = "top1") -> tuple[list[str], list[list[Any]]]:
    """Samples needed for missing rate ``alpha`` and the efficiency against natural samples (Table 5).

    Random selection and natural samples are exact (hypergeometric over the pool; a
    ``>n`` entry means even the whole pool does not get there). MANC's entries come from
    its Monte Carlo estimate: ``*`` marks an ``alpha`` below ``1 / (bags drawn)``, where the
    entry is the size at which no drawn bag missed.
    """
    agg = aggregate(rows, spec)
    header = ["attack", "model", "method", *[f"α={a:.0e}" for a in alphas]]
    body: list[list[Any]] = []

    def need(curve: list[float] | None, a: float) -> int | None:
        if curve is None:
            return None
        return next((k for k, p in enumerate(curve, start=1) if p <= a), None)

    for group_model in dict.fromkeys((r["group"], r["model"]) for r in agg):
        rs = [r for r in agg if (r["group"], r["model"]) == group_model]
        nat = next((r for r in rs if r["natural"]), None)
        nat_req = [need(nat["curve_random"], a) for a in alphas] if nat else [None] * len(alphas)
        if nat:
            body.append([*group_model, "natural", *[_need_text(v, nat["n"]) for v in nat_req]])
        for r in rs:
            if r["natural"]:
                continue
            body.append([*group_model, f"{r['method']} + random",
                         *[_need_text(need(r["curve_random"], a), r["n"]) for a in alphas]])
            if r["curve_manc"] is not None:
                req = [need(r["curve_manc"], a) for a in alphas]
                body.append([*group_model, f"{r['method']} + {r['selector']}",
                             *[_need_text(v, len(r["curve_manc"])) + ("*" if a < 1 / max(r["bags"], 1) and v else "")
                               for v, a in zip(req, alphas, strict=True)]])
                body.append([*group_model, f"efficiency ({r['method']} + {r['selector']})",
                             *[f"{n / m:.1f}x" if n and m else "" for n, m in zip(nat_req, req, strict=True)]])
    return header, body


def _need_text(v: int | None, limit: int) -> str:
    return str(v) if v is not None else f">{limit}"


def table6(rows: Iterable[Row], spec: str = "top1", ns_shown: Sequence[int] = (1, 2, 3, 4, 5)) -> tuple[list[str], list[list[Any]]]:
    """Missing rate (%) before and after adversarial fine-tuning (Table 6), MANC selection.

    Pairs each adaptive instance (``hides``) with the instance it hides.
    """
    rows = list(rows)
    det = [r for r in rows if r.get("kind") == "detect" and r["spec"] == spec and r.get("miss_manc") is not None]
    header = ["attack", "method", "", *[f"N_S={k}" for k in ns_shown]]
    body: list[list[Any]] = []
    af = [r for r in det if r.get("hides")]
    pairs: dict[tuple[str, str], tuple[list[Row], list[Row]]] = defaultdict(lambda: ([], []))
    for r in af:
        base = next((b for b in det if b["attack"] == r["hides"] and b["method"] == r["method"]), None)
        if base is None:
            continue
        before, after = pairs[(base["group"], r["method"])]
        before.append(base)
        after.append(r)
    for (group, method), (before, after) in pairs.items():
        idx = [before[0]["ns"].index(k) for k in ns_shown if k in before[0]["ns"]]
        b = np.mean([r["miss_manc"] for r in before], axis=0)
        a = np.mean([r["miss_manc"] for r in after], axis=0)
        body.append([group, method, "before AF", *[_pct(b[i]) for i in idx]])
        body.append([group, method, "after AF", *[_pct(a[i]) for i in idx]])
        body.append([group, method, "change", *[f"{100 * (a[i] - b[i]):+.2f}" for i in idx]])
    return header, body


def table2_models(rows: Iterable[Row]) -> tuple[list[str], list[list[Any]]]:
    """The Table 2 analogue's model rows."""
    header = ["model", "data", "train / test samples", "parameters", "test accuracy", "training s"]
    body = [[r["model"], r["data"], f"{r['train_samples']} / {r['test_samples']}", f"{r['params']:,}",
             _pct(r["accuracy"], 1) + "%", f"{r['seconds']:.1f}"] for r in rows if r.get("kind") == "model"]
    return header, body


def table2_attacks(rows: Iterable[Row]) -> tuple[list[str], list[list[Any]]]:
    """The Table 2 analogue's attack rows: one per instance."""
    header = ["attack instance", "attack", "model", "family", "accuracy before", "after", "success measure",
              "success", "top-1 flips", "changed weights", "seconds"]
    body = []
    for r in rows:
        if r.get("kind") != "attack":
            continue
        s = r["success"]
        success = "" if s is None else (f"{100 * s:.1f}%" if abs(s) <= 1 else f"{s:.3g}")
        body.append([r["attack"], r["group"], r["model"], r["family"], _pct(r["clean_accuracy_before"], 1) + "%",
                     _pct(r["clean_accuracy_after"], 1) + "%", r["success_name"], success,
                     _pct(r["flip_rate"], 1) + "%", f"{r['changed_params']:,} / {r['total_params']:,}",
                     f"{r['seconds']:.1f}"])
    return header, body


def table_pools(rows: Iterable[Row]) -> tuple[list[str], list[list[Any]]]:
    """Candidate pools: how many were generated and kept, their sensitivity, PSNR and margins."""
    header = ["model", "method", "generated", "above noise floor", "noise floor", "log S seeds -> samples",
              "mean PSNR dB", "max L-inf", "median margin", "seconds"]
    body = []
    for r in rows:
        if r.get("kind") != "pool":
            continue
        body.append([r["model"], r["method"], r["generated"], r["eligible"], f"{r['noise_floor']:.2g}",
                     f"{r['log_s_before']:.2f} -> {r['log_s_after']:.2f}", f"{r['psnr_mean']:.1f}",
                     f"{r['linf_max']:.4f}", f"{r['margin_median']:.3g}", f"{r['seconds']:.1f}"])
    return header, body


def table_detection_rate(rows: Iterable[Row], spec: str = "top1") -> tuple[list[str], list[list[Any]]]:
    """Per-sample detection rate (%) ``d / n`` per attack and method."""
    agg = aggregate(rows, spec)
    methods = list(dict.fromkeys(r["method"] for r in agg))
    header = ["attack", "model", *methods]
    body = []
    for gm in dict.fromkeys((r["group"], r["model"]) for r in agg):
        by = {r["method"]: r for r in agg if (r["group"], r["model"]) == gm}
        body.append([*gm, *[_pct(by[m]["rate"], 1) if m in by else "" for m in methods]])
    return header, body


def table_false_positives(rows: Iterable[Row]) -> tuple[list[str], list[list[Any]]]:
    """False positives on intact deployments: mismatching samples over all specs, and the
    verdicts of an 8-sample fingerprint."""
    header = ["model", "method", "variant", "samples x specs", "mismatches", "8-sample fingerprint verdicts"]
    body = []
    for r in rows:
        if r.get("kind") != "fp":
            continue
        mism = r["mismatches"]
        bad = sum(v for v in mism.values() if v > 0)
        inconclusive = [s for s, v in mism.items() if v < 0]
        verdicts = sorted(set(r["fingerprint_verdicts"].values()))
        body.append([r["model"], r["method"], r["variant"], f"{r['n']} x {len(mism)}",
                     str(bad) + (f" (INCONCLUSIVE: {', '.join(inconclusive)})" if inconclusive else ""),
                     "/".join(verdicts)])
    return header, body


def table_coverage(rows: Iterable[Row]) -> tuple[list[str], list[list[Any]]]:
    """Coverage of real single-parameter edits (:mod:`veriprint.evaluate.coverage`): per
    model, method and edit size, the visible share, the coverage (caught / visible, mean
    over bags) at each fingerprint size, and the pool's ceiling."""
    header = ["model", "method", "edit", "visible", "queries: coverage (caught / visible)", "pool's ceiling"]
    body = []
    for r in rows:
        if r.get("kind") != "coverage":
            continue
        for method, res in r["methods"].items():
            for d, per in res["coverage"].items():
                curve = ", ".join(f"{n}: {_pct(v, 1)}%" for n, v in per.items())
                body.append([r["model"], method, f"±{float(d):.0%}", _pct(r["visible"][d], 1) + "%", curve,
                             _pct(res["ceiling"][d], 1) + "%"])
    return header, body
