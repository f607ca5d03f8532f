"""What the measured floor buys on single-parameter edits, against the fixed 1e-4 floor.

    python -m benchmarks.studies.floors --out docs/measurements/floors-measured.md --json /tmp/floors.json
    python -m benchmarks.studies.floors --quick --out /tmp/floors.md          # digits MLP, seconds

For each model of :func:`benchmarks.lib.deployments.zoo`, two fingerprints are made with the
same seeds and budget as ``benchmarks/studies/deployments.py`` (float32 on the CPU, one thread):
the default (``floor="fixed"``: never below 1e-4) and ``floor="measured"`` (safety 10
times the measured noise, down to two units of float32 resolution). Both are verified
under ``top1`` against:

- the single-parameter edits of the tamper suite (largest and one random weight of the
  first, middle and last layer, largest and one random bias of the last, each x1.05);
- a sweep of random single entries of every parameter tensor, each edited by -5% and +5%
  (``--draws`` entries per tensor): the share caught, per tensor and on average.

Their false-alarm cost is measured by ``benchmarks/studies/deployments.py`` (the ``measured floor``
rows of each CPU deployment).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.lib.deployments import tamper_suite, zoo
from benchmarks.lib.report import write_report
from veriprint.fingerprint import Fingerprint
from veriprint.pipeline import FingerprintConfig, make_fingerprint
from veriprint.pipeline.generate import GenerationConfig
from veriprint.tamper import WeightEditConfig, tamper
from veriprint.verification.specs import parse_spec

MODES = ("fixed", "measured")


def log(msg: str) -> None:
    print(f"[floors] {msg}", file=sys.stderr, flush=True)


def caught(fp: Fingerprint, model: nn.Module) -> bool:
    """Whether a top1 verification of ``model`` (queried in one batch) says TAMPERED."""
    with torch.inference_mode():
        z = model(fp.samples).double().numpy()
    cmp = parse_spec("top1").compare(fp.expected_logits.numpy(), z, "logits", fp.noise)
    return bool(cmp.mismatch.any())


def sweep(model: nn.Module, fps: dict[str, Fingerprint], draws: int, seed: int = 0) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    work = copy.deepcopy(model)
    rows = []
    for (name, p), w in zip(model.named_parameters(), work.parameters(), strict=True):
        idx = torch.randperm(p.numel(), generator=g)[:draws].tolist()
        hits = {m: 0 for m in fps}
        for j in idx:
            for sign in (-1.0, 1.0):
                with torch.no_grad():
                    w.view(-1)[j] = p.reshape(-1)[j] * (1 + 0.05 * sign)
                for m, fp in fps.items():
                    hits[m] += caught(fp, work)
            with torch.no_grad():
                w.view(-1)[j] = p.reshape(-1)[j]
        rows.append({"tensor": name, "entries": p.numel(), "edits": 2 * len(idx),
                     **{m: hits[m] / (2 * len(idx)) for m in fps}})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="digits MLP only, small bag")
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--bag", type=int, default=None, help="seeds per fingerprint (default 120; quick 40)")
    ap.add_argument("--steps", type=int, default=None, help="generation steps (default 100; quick 20)")
    ap.add_argument("--draws", type=int, default=None, help="entries edited per tensor (default 32; quick 8)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    bag, steps = args.bag or (40 if args.quick else 120), args.steps or (20 if args.quick else 100)
    draws = args.draws or (8 if args.quick else 32)
    start = time.perf_counter()
    results = []
    for z in zoo(args.quick, args.models):
        fps = {m: make_fingerprint(z.model, z.test, FingerprintConfig(bag=bag, generation=GenerationConfig(
            steps=steps), floor=m), progress=False)[0] for m in MODES}  # type: ignore[arg-type]
        edits = [(c, cfg) for c, cfg in tamper_suite(z.model, args.quick, int(z.test.x.shape[-1]))
                 if isinstance(cfg, WeightEditConfig)]
        cases = []
        for case, cfg in edits:
            bad = tamper(z.model, cfg, data=z.train, progress=False).model
            with torch.inference_mode():
                dz = max(float((bad(c) - z.model(c)).abs().max()) for c in torch.split(z.test.x.float(), 500))
            cases.append({"case": case, "max_dz_test": dz, **{m: caught(fp, bad) for m, fp in fps.items()}})
        rows = sweep(z.model, fps, draws)
        info = {m: {"floor": fp.noise.floor, "margin_noise": fp.noise.margin,
                    "margins": [float(fp.margin.min()), float(fp.margin.max())],
                    "pairs": fp.meta["selection"].get("pairs", 0)} for m, fp in fps.items()}
        results.append({"model": z.name, "what": z.what, "fingerprints": info, "cases": cases, "sweep": rows})
        log(f"{z.name}: " + ", ".join(f"{m} floor {info[m]['floor']:.2g} caught "
                                      f"{sum(c[m] for c in cases)}/{len(cases)} edits, sweep "
                                      f"{sum(r[m] for r in rows) / len(rows):.1%}" for m in MODES))
    text = render(results, args, bag, steps, draws, time.perf_counter() - start)
    write_report(text, args.out)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def render(results: list[dict[str, Any]], args: argparse.Namespace, bag: int, steps: int, draws: int,
           seconds: float) -> str:
    cmd = "python -m benchmarks.studies.floors " + " ".join(sys.argv[1:])
    out = ["# Fixed 1e-4 floor against the measured floor: single-parameter edits (measured)", "",
           f"Generated by `{cmd.strip()}` in {seconds / 60:.1f} min on a shared CPU (torch {torch.__version__}, "
           f"1 thread; timings under contention); do not edit by hand. Bag {bag}, {steps} steps, 8 queries, "
           f"`top1`; sweep: {draws} random entries per tensor, each edited by -5% and +5%.", ""]
    for r in results:
        fi = r["fingerprints"]
        out += [f"## {r['model']}", "", r["what"] + ". " + "; ".join(
            f"{m}: floor {fi[m]['floor']:.2g} (margin noise {fi[m]['margin_noise']:.2g}), margins "
            f"{fi[m]['margins'][0]:.2g}..{fi[m]['margins'][1]:.2g}, {fi[m]['pairs']} pairs" for m in MODES) + ".", "",
            "| single edit | max logit change on test data | fixed 1e-4 | measured |", "|---|---|---|---|"]
        for c in r["cases"]:
            out.append(f"| {c['case']} | {c['max_dz_test']:.2g} | "
                       + " | ".join("TAMPERED" if c[m] else "**INTACT**" for m in MODES) + " |")
        out.append("| **caught** | | " + " | ".join(f"{sum(c[m] for c in r['cases'])}/{len(r['cases'])}"
                                                 for m in MODES) + " |")
        out += ["", "| tensor | entries | edits | fixed 1e-4: caught | measured: caught |", "|---|---|---|---|---|"]
        for s in r["sweep"]:
            out.append(f"| {s['tensor']} | {s['entries']} | {s['edits']} | {s['fixed']:.1%} | {s['measured']:.1%} |")
        n = len(r["sweep"])
        out += [f"| mean over tensors | | | {sum(s['fixed'] for s in r['sweep']) / n:.1%} | "
                f"{sum(s['measured'] for s in r['sweep']) / n:.1%} |", ""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
