"""Measure every tampering attack at its defaults on the default model; write docs/measurements/tampering.md.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.studies.tamper_table [--data fashion-mnist] [--train-limit 5000]
        [--eval-limit 2000] [--threads 1] [--out docs/measurements/tampering.md] [--json FILE]

The default model is :func:`veriprint.models.train.reference_model` of the data set (trained once
and cached). The attacker's data is the first ``--train-limit`` samples of the training
split; every figure is measured on the first ``--eval-limit`` samples of the test split.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _success(r: dict[str, Any]) -> str:
    v = r["success"]
    if v is None:
        return ""
    if r["success_name"].startswith("compression"):
        return f"{v:.2f}x"
    return f"{100 * v:.1f}%" if abs(v) <= 1 else f"{v:.4g}"


def render(rows: list[dict[str, Any]], header: list[str]) -> str:
    """The Markdown document (a pure function of the measured rows)."""
    lines = [*header, "",
             "| attack | family | clean acc. before | after | success measure | value | changed weights "
             "| L2 change | max change | size saving | top-1 flips | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| `{r['attack']}` | {r['family']} | {_pct(r['clean_accuracy_before'])} | "
            f"{_pct(r['clean_accuracy_after'])} | {r['success_name']} | {_success(r)} | "
            f"{r['changed_params']:,} / {r['total_params']:,} | {r['l2_change']:.3g} | {r['max_abs_change']:.3g} | "
            f"{_pct(r['size_saving'])} | {_pct(r['flip_rate'])} | {r['seconds']:.1f} |"
        )
    lines += ["", "Attack-specific figures:", ""]
    for r in rows:
        if r["metrics"]:
            items = ", ".join(f"{k} {v:.4g}" for k, v in r["metrics"].items())
            lines.append(f"- `{r['attack']}`: {items}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--train-limit", type=int, default=5000)
    p.add_argument("--eval-limit", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--attacks", nargs="*", default=None, help="only these attacks (default: all)")
    p.add_argument("--out", default="docs/measurements/tampering.md")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from veriprint.data import load_data
    from veriprint.models.train import reference_model
    from veriprint.tamper import list_attacks, tamper

    model, factory, _ = reference_model(args.data, progress=False)
    data = load_data(args.data, split="train", limit=args.train_limit)
    eval_data = load_data(args.data, split="test", limit=args.eval_limit)
    command = "python -m benchmarks.studies.tamper_table " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [
        "# Tampering attacks: measured figures on the default model",
        "",
        f"Model: `{factory}` trained by `veriprint.models.train.reference_model({args.data!r})`. Attacker's data: the "
        f"first {len(data)} samples of the {args.data} training split; every figure is measured on the first "
        f"{len(eval_data)} samples of its test split. Each attack runs at its default parameters "
        "(`veriprint tamper --list`), seed 0.",
        "",
        f"Produced by `{command.strip()}` on {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {args.threads} thread(s). Wall times were measured on a shared "
        "machine and are only indicative.",
        "",
        "Success measures follow the paper's Table 2: attack success rate on triggered test inputs of "
        "other classes (trojan, backdoors), misclassification rate of the target class (error-generic "
        "poisoning), rate of the chosen label (error-specific), compression ratio (precision reduction, "
        "pruning), the kept clean accuracy (benign-looking retraining). \"top-1 flips\" is the fraction of "
        "test inputs whose label changed.",
        "",
        "## Using the attacks",
        "",
        "```",
        "veriprint tamper --list",
        "veriprint tamper --model veriprint.zoo:fashion_cnn --weights W.safetensors --attack poison \\",
        "    --param target=7 --param to_class=5 --data fashion-mnist --out T.safetensors --report poison.json",
        "veriprint tamper --model M.pt2 --attack adversarial-finetune --param attack=trojan \\",
        "    --param attack.target=3 --data fashion-mnist --out T.pt2",
        "```",
        "",
        "In Python: `veriprint.tamper.tamper(model, PoisonConfig(target=7, to_class=5), data=train, "
        "eval_data=test)` returns a `TamperResult` (`.model`, `.report`); the input model is never modified, "
        "and the same seed gives the same tampered weights.",
        "",
        "## Measured figures",
    ]
    rows = []
    for info in list_attacks():
        if args.attacks and info.name not in args.attacks:
            continue
        start = time.perf_counter()
        result = tamper(model, info.config_type(), data=data, eval_data=eval_data, progress=False)
        row = {"family": info.family, **result.report.to_dict()}
        rows.append(row)
        print(f"{info.name:22s} {time.perf_counter() - start:7.1f} s  {_success(row)}", file=sys.stderr, flush=True)
        # Written after every attack, so a long run leaves its figures so far.
        Path(args.out).write_text(render(rows, header))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
