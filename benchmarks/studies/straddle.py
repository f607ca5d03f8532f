"""Top-1 detection behind reduced-precision CPU deployments: pairs on the served boundary.

    python -m benchmarks.studies.straddle --models fashion-mlp fashion-cnn pretrained-mnist \\
        --precisions autocast-bf16 bf16 --json docs/measurements/straddle-runs/ --out docs/measurements/straddle.md
    python -m benchmarks.studies.straddle --render docs/measurements/straddle-runs/*.json --out docs/measurements/straddle.md

A device profile (``--precision``) makes the fingerprint expect what the deployment
answers. Its twin pairs are still made on the float32 boundary, a few times the floor
from it, while a bfloat16 deployment rounds its logits in steps of 0.01-0.06: both ends of
a pair then mostly get one label from it, or a tie. Straddling
(:func:`veriprint.pipeline.straddle.straddle`, the pipeline's default with a profile) moves each
chosen pair onto the deployment's own boundary, and tightening
(:func:`veriprint.pipeline.straddle.tighten`) then moves each end to where a shift of one logit as
small as the floor allows flips the deployment's label, whichever of the label's and the
runner-up's logits moves. Per model and
precision, three fingerprints of the same config (the deployments benchmark's: bag 120,
100 steps, 8 queries plus class coverage, fixed floor):

- **profile, float32 pairs**: the profile without straddling;
- **straddled**: pairs moved onto the served boundary, not tightened (runs made before
  tightening have these two kinds only);
- **straddled, tightened**: the library's default with a rounded profile.

A tampered copy counts as *visible* behind the deployment when, served in that precision,
some logit of one of the first 500 natural test inputs moves by more than twice the floor
from what the intact model served the same way answers: a change the rounding swallows on
every natural input is one no fingerprint of natural-looking inputs can be expected to see.
The last column of the sums compares with the exact CPU on the visible cases only: a
bfloat16 cast of a model served in bfloat16 weights, for one, serves exactly what the
intact model does there, while the exact CPU, serving float32, sees it.

Each is checked ``--checks`` times against the intact model served in that precision
(requests of random sizes among natural inputs, as in ``benchmarks.studies.deployments``: false
alarms), then verified once against every tampered copy of the deployments suite, served
in that precision too (caught under top1 and logits). Beside them, the **exact CPU**: a
fingerprint of the same config without a profile, verified against the same tampered
copies served in float32 on this CPU (what the deployment's detection is measured
against; the deployments benchmark has the same rows for its own fingerprints).

``--ceiling-share`` and ``--max-queries`` set the fingerprints' query budget: 0 (the
rows of ``docs/measurements/straddle.md``) keeps 8 queries plus class coverage; ``0.97`` is the
library's default (pairs by reach until 97% of the bag's ceiling, at most 64 queries).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.lib.deployments import SPECS, false_alarms, tamper_suite, zoo
from benchmarks.lib.report import write_report
from benchmarks.studies.deployments import machine
from veriprint.deployments.profiles import DeviceProfile, served
from veriprint.fingerprint import Fingerprint
from veriprint.pipeline import FingerprintConfig, make_fingerprint
from veriprint.pipeline.generate import GenerationConfig
from veriprint.targets import TorchTarget
from veriprint.verification.verify import verify

KINDS = ("profile, float32 pairs", "straddled", "straddled, tightened")
EXACT = "exact CPU"  # the same config without a profile, against the tampered copies in float32


def fingerprints(model: torch.nn.Module, data: Any, cfg: FingerprintConfig) -> dict[str, Fingerprint]:
    """The three kinds, from one config: the pipeline's straddle stage left out, then
    straddling without tightening, then the pipeline as it is."""
    import veriprint.pipeline.make as make
    import veriprint.pipeline.straddle as stage_module

    out: dict[str, Fingerprint] = {}
    stage, tight = make.straddle_pairs, stage_module.tighten
    try:
        make.straddle_pairs = lambda model, cands, cfg, idx, chosen, pairs, mo, deadline=None: (chosen, {})  # type: ignore[assignment]
        out[KINDS[0]] = make_fingerprint(model, data, cfg, progress=False)[0]
        make.straddle_pairs = stage
        stage_module.tighten = lambda *a, **k: None  # type: ignore[assignment]
        out[KINDS[1]] = make_fingerprint(model, data, cfg, progress=False)[0]
    finally:
        make.straddle_pairs, stage_module.tighten = stage, tight
    out[KINDS[2]] = make_fingerprint(model, data, cfg, progress=False)[0]
    return out


def run(name: str, precision: str, checks: int, ceiling_share: float = 0.0,
        max_queries: int | None = None) -> dict[str, Any]:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    z = zoo(False, [name])[0]
    model, prof = z.model, DeviceProfile("cpu", precision)
    budget: dict[str, Any] = {"ceiling_share": ceiling_share}
    if max_queries is not None:
        budget["max_queries"] = max_queries
    cfg = FingerprintConfig(bag=120, generation=GenerationConfig(steps=100), precision=precision, **budget)
    fps = fingerprints(model, z.test, cfg)
    exact = make_fingerprint(model, z.test, replace(cfg, precision="fp32"), progress=False)[0]
    natural = z.test.x[:500].float()
    intact = served(model, prof)
    tallies, dz = false_alarms(fps, TorchTarget(intact, threads=1), natural.numpy(), checks, seed=1)
    from veriprint.tamper import tamper

    cases: list[dict[str, Any]] = []
    floor = fps[KINDS[-1]].noise.floor
    with torch.inference_mode():
        z0 = intact(natural).double()
    for case, tcfg in tamper_suite(model, False, int(z.test.x.shape[-1])):
        bad = tamper(model, tcfg, data=z.train, eval_data=z.test, progress=False).model.eval()
        deployed = served(bad, prof)
        with torch.inference_mode():
            z1 = deployed(natural).double()
        # what this deployment shows of the change at all, on natural inputs
        moved = float((z1 - z0).abs().max())
        flips = int((z1.argmax(1) != z0.argmax(1)).sum())
        tgt = TorchTarget(deployed, threads=1)
        cases.append({"case": case, "max_dz_natural": moved, "labels_flipped": flips, "visible": moved > 2 * floor,
                      **{k: {s: verify(fp, tgt, spec=s).verdict for s in SPECS} for k, fp in fps.items()},
                      EXACT: {s: verify(exact, TorchTarget(bad, threads=1), spec=s).verdict for s in SPECS}})
        print(f"{name} {precision}: {case}: " + ", ".join(f"{k} {v['top1']}" for k, v in cases[-1].items() if k in KINDS),
              file=sys.stderr, flush=True)
    return {"model": name, "precision": precision, "checks": checks,
            "budget": {"ceiling_share": cfg.ceiling_share, "max_queries": cfg.max_queries},
            "exact": {"queries": len(exact)},
            "kinds": {k: {"queries": len(fp), "straddle": fp.meta.get("straddle"),
                          "false_alarms": {s: tallies[k][s].alarms for s in SPECS},
                          "inconclusive": {s: tallies[k][s].inconclusive for s in SPECS}, "max_dz": dz[k]}
                      for k, fp in fps.items()},
            "cases": cases, "seconds": round(time.perf_counter() - t0, 1)}


def _budget(r: dict[str, Any], short: bool = False) -> str:
    """A run's query budget in words (runs before the option: 8 queries plus class coverage)."""
    b = r.get("budget") or {"ceiling_share": 0.0}
    if not b["ceiling_share"]:
        return "8 + classes" if short else "8 queries plus class coverage"
    if short:
        return f"{b['ceiling_share']:.0%} of ceiling, at most {b['max_queries']}"
    return (f"pairs by reach until {b['ceiling_share']:.0%} of the bag's ceiling (at most {b['max_queries']} "
            "queries), plus class coverage")


def _budget_text(results: list[dict[str, Any]]) -> str:
    """Every run's query budget in words, each once."""
    return " or ".join(dict.fromkeys(_budget(r) for r in results))


def render(results: list[dict[str, Any]], command: str, mach: dict[str, Any] | None) -> str:
    made = "; ".join(f"`{c}`" for c in dict.fromkeys(r.get("command", command) for r in results))
    again = f" (this file re-rendered from their JSON by `{command}`)" if made != f"`{command}`" else ""
    lines = ["# Top-1 detection behind bfloat16 CPU deployments: pairs on the served boundary (measured)", "",
             f"Generated by {made}{again}"
             + (f" on {mach.get('cpu', 'this CPU')} (torch {mach.get('torch', torch.__version__)})" if mach else "")
             + "; do not edit by hand. Each model's fingerprints: bag 120, 100 generation steps, "
             + _budget_text(results) + ", fixed floor, `--precision` the deployment's. See `benchmarks/studies/straddle.py`.", "",
             "| model | deployment | visible | kind | queries | pairs straddling the served boundary | false alarms top1 | "
             "false alarms logits | caught top1 | caught logits |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    totals: dict[tuple[str, str, str], list[int]] = {}
    for r in results:
        n = len(r["cases"])
        vis = sum(bool(c.get("visible")) for c in r["cases"]) if all("visible" in c for c in r["cases"]) else None
        for k in [k for k in KINDS if k in r["kinds"]]:
            info = r["kinds"][k]
            st = info["straddle"] or {}
            caught = {s: sum(c[k][s] == "TAMPERED" for c in r["cases"]) for s in SPECS}
            t = totals.setdefault((_budget(r, short=True), r["precision"], k), [0, 0, 0, 0, 0, 0, 0, 0, 0])
            # the exact CPU's count on the same cases (negative: a run made before it was measured)
            t[6] = -10**9 if EXACT not in r["cases"][0] else t[6] + sum(c[EXACT]["top1"] == "TAMPERED"
                                                                          for c in r["cases"])
            t[0] += caught["top1"]
            t[1] += caught["logits"]
            t[2] += n
            t[3] += info["false_alarms"]["top1"] + info["false_alarms"]["logits"]
            t[4] += 2 * r["checks"]
            t[5] = -10**9 if vis is None else t[5] + vis  # negative: not measured in some run
            if vis is not None and EXACT in r["cases"][0]:  # the same two counts on the visible cases only
                t[7] += sum(c[k]["top1"] == "TAMPERED" for c in r["cases"] if c["visible"])
                t[8] += sum(c[EXACT]["top1"] == "TAMPERED" for c in r["cases"] if c["visible"])
            pairs = f"{st['straddling']} of {st['pairs']}" if st else "-"
            lines.append(f"| {r['model']} | {r['precision']} | {'-' if vis is None else f'{vis}/{n}'} | {k} | "
                         f"{info['queries']} | {pairs} | "
                         f"{info['false_alarms']['top1']}/{r['checks']} | {info['false_alarms']['logits']}/{r['checks']} | "
                         f"{caught['top1']}/{n} | {caught['logits']}/{n} |")
    lines += ["", "Sums over the models:", "",
              "| query budget | deployment | kind | false alarms (both specs) | visible | caught top1 | caught logits | "
              "exact CPU: caught top1 | top1 against the exact CPU | the same, visible cases only |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for (bud, prec, k), t in totals.items():
        shown = f"{t[5]}/{t[2]}" if t[5] >= 0 else "-"
        ex, ratio = (f"{t[6]}/{t[2]}", f"{t[0] / t[6]:.1%}" if t[6] else "-") if t[6] >= 0 else ("-", "-")
        on_vis = f"{t[7]}/{t[8]} = {t[7] / t[8]:.1%}" if t[5] >= 0 and t[6] >= 0 and t[8] else "-"
        lines.append(f"| {bud} | {prec} | {k} | {t[3]}/{t[4]} | {shown} | **{t[0]}/{t[2]}** | {t[1]}/{t[2]} | {ex} | "
                     f"{ratio} | {on_vis} |")
    lines += ["", "Case by case (top1; T tampered, I intact, ? inconclusive), per model and deployment, in the kinds' order; "
              "the largest logit change on the natural inputs behind the deployment, and the labels it flips there:", "",
              "| model | deployment | query budget | case | max logit change | labels flipped | " + " | ".join(KINDS)
              + f" | {EXACT} |",
              "|---|---|---|---|---|---|" + "---|" * (len(KINDS) + 1)]
    mark = {"TAMPERED": "T", "INTACT": "I", "INCONCLUSIVE": "?"}
    for r in results:
        for c in r["cases"]:
            dz = f"{c['max_dz_natural']:.2g}" if "max_dz_natural" in c else "-"
            lines.append(f"| {r['model']} | {r['precision']} | {_budget(r, short=True)} | {c['case']} | {dz} | "
                         f"{c.get('labels_flipped', '-')} | "
                         + " | ".join(mark[c[k]["top1"]] if k in c else "-" for k in KINDS)
                         + f" | {mark[c[EXACT]['top1']] if EXACT in c else '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["fashion-mlp", "fashion-cnn", "pretrained-mnist"])
    ap.add_argument("--precisions", nargs="+", default=["autocast-bf16", "bf16"])
    ap.add_argument("--checks", type=int, default=200, help="verifications of the intact deployment per kind")
    ap.add_argument("--ceiling-share", type=float, default=0.0,
                    help="the fingerprints' ceiling_share (default 0: 8 queries plus class coverage; "
                         "the library's default is 0.97)")
    ap.add_argument("--max-queries", type=int, default=None, help="the fingerprints' max_queries (default: the library's)")
    ap.add_argument("--json", type=Path, default=None, help="a folder: one JSON per model and precision")
    ap.add_argument("--render", nargs="+", type=Path, default=None, help="write the report from these JSON files")
    ap.add_argument("--out", type=Path, default=None, help="the report (default: stdout)")
    args = ap.parse_args(argv)
    command = "python -m benchmarks.studies.straddle " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.render:
        results = [json.loads(p.read_text()) for p in args.render]
        write_report(render(results, command, results[0].get("machine")), args.out)
        return 0
    results = []
    for m in args.models:
        for p in args.precisions:
            r = run(m, p, args.checks, args.ceiling_share, args.max_queries)
            r["command"], r["machine"] = command, machine()
            results.append(r)
            if args.json is not None:
                args.json.mkdir(parents=True, exist_ok=True)
                (args.json / f"{m}-{p}.json").write_text(json.dumps(r, indent=1, allow_nan=False))
    write_report(render(results, command, machine()), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
