"""Figures (matplotlib, PNG): Figure 5 (missing rate vs N_S) and Figure 3 left (generation)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from veriprint.evaluate.tables import aggregate

__all__ = ["figure3", "figure5"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure5(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str], spec: str = "top1") -> Path:
    """Missing rate vs ``N_S``, one panel per attack: natural, each method + random and + MANC."""
    plt = _pyplot()
    agg = aggregate(rows, spec)
    groups = list(dict.fromkeys((r["group"], r["model"]) for r in agg))
    cols = min(len(groups), 4) or 1
    nrows = (len(groups) + cols - 1) // cols or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in agg if not r["natural"]))
    colours = dict(zip(methods, ["tab:blue", "tab:red", "tab:purple", "tab:brown", "tab:olive"], strict=False))
    for ax, gm in zip(axes.flat, groups, strict=False):
        for r in (r for r in agg if (r["group"], r["model"]) == gm):
            ns = r["ns"]
            if r["natural"]:
                ax.plot(ns, r["miss_random"], "o-", color="tab:green", label="natural")
                continue
            c = colours[r["method"]]
            ax.plot(ns, r["miss_random"], "s--", color=c, alpha=0.6, label=f"{r['method']} + random")
            if r["miss_manc"] is not None:
                ax.plot(ns, r["miss_manc"], "^-", color=c, label=f"{r['method']} + {r.get('selector', 'MANC')}")
        ax.set_title(f"{gm[0]} ({gm[1]})", fontsize=9)
        ax.set_xlabel("N_S")
        ax.set_ylabel(f"missing rate ({spec})")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    out = Path(path)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def figure3(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Mean objective (``log S`` or entropy) and mean PSNR over generation steps, per model and method."""
    plt = _pyplot()
    pools = [r for r in rows if r.get("kind") == "pool" and r.get("history")]
    models = list(dict.fromkeys(r["model"] for r in pools))
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(4.6 * max(len(models), 1), 3.2), squeeze=False)
    for ax, model in zip(axes.flat, models, strict=False):
        twin = ax.twinx()
        for r in (r for r in pools if r["model"] == model):
            h = r["history"]
            steps = range(1, len(h) + 1)
            label = f"{r['method']} ({'entropy' if r['objective'] == 'entropy' else 'log S'})"
            line = ax.plot(steps, [v[0] for v in h], "-", label=label)[0]
            twin.plot(steps, [v[1] for v in h], ":", color=line.get_color())
        ax.set_title(f"{model}: objective (solid), PSNR dB (dotted)", fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("mean objective")
        twin.set_ylabel("mean PSNR (dB)")
        ax.legend(fontsize=7, loc="center right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
