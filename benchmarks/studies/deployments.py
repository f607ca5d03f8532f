"""False alarms and detection per CPU deployment, for four kinds of fingerprint.

    python -m benchmarks.studies.deployments --out docs/measurements/deployments-measured.md --json /tmp/deployments.json \\
        --plot docs/guide/deployments.png
    python -m benchmarks.studies.deployments --quick --out /tmp/deployments.md      # one small model, a few minutes
    python -m benchmarks.studies.deployments --models fashion-cnn --deployments TorchServe "ATen default" --json cnn.json

Each model (the zoo's small ones) is fingerprinted on this CPU, in float32 on one thread,
as these kinds:

- **fixed floor**: ``floor="fixed"``, the default: never below ``min_floor`` = 1e-4;
- **measured floor**: ``floor="measured"``: safety times the measured noise, down to two
  units of float32 resolution instead of 1e-4;
- **profile**: made with the deployment's own ``--precision`` (only where it differs
  from float32: ``fp64``, ``bf16``, ``autocast-bf16``; elsewhere it is the default);
- **enrolled**: a pool of ``--pool`` samples enrolled against that deployment
  (:func:`veriprint.enrollment.enroll`, top1, 6 rounds, declared tolerance 0.1);
- **enrolled, profiled pool** (deployments with a precision only): the same, from a pool
  made with the deployment's ``--precision`` (its pairs straddle that deployment's
  boundary, :func:`veriprint.pipeline.straddle.straddle`);
- **declared**: the default with a declared tolerance (``--tolerance``, 0.05 logits), made
  from a bag four times larger (the raised floor leaves fewer samples above it).

Each deployment serves the intact model. For each one, ``--checks`` verifications send
every kind's samples at once, shuffled among ``0..63`` natural test inputs at random
positions and cut into requests of random sizes (1 to 64), and compare each kind's
answers under ``top1`` and ``logits`` with the library's comparison
(:meth:`veriprint.verification.specs.OutputSpec.compare`) and verdict rule: any mismatch is a false
alarm; all samples within the floor is INCONCLUSIVE. Then every tampered copy of the
suite (:mod:`veriprint.tamper`) is served the same way and verified once per kind
(:func:`veriprint.verification.verify.verify`); the exact-CPU line (float32, one thread, the
fingerprinting numerics) is the reference.

The deployments served from elsewhere than this process:

- **MLServer** and **TorchServe** (``.venv-serving``, ``scripts/setup-serving.sh``): a
  real server on 127.0.0.1, onnxruntime on one thread behind it (MLServer's REST V2
  protocol, TorchServe's ``/predictions`` with the JSON handler of
  ``testkit/servers/ts_handler.py``), verified through veriprint's HTTP targets. The
  tampered copies are served by the same server: MLServer loads all of them at start,
  TorchServe registers one at a time beside the intact model. Their detection is compared
  case by case with in-process onnxruntime (all graph optimizations, what both run);
- **kernels** (:mod:`benchmarks.lib.kernel_worker`): a child process started with
  ``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA`` or ``MKL_ENABLE_INSTRUCTIONS`` (only the
  ATen levels this CPU runs), serving the intact model and every tampered copy: the
  kernels of a CPU of another vector width, on this CPU (not another CPU model).

``--deployments`` measures only some; ``--render A.json B.json`` writes the report of a
run again from its JSON files (one per model, say), and ``--render`` repeated puts several
runs in one report, each deployment measured in more than one run named with its run.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.lib.deployments import (
    KINDS,
    LEGACY_KINDS,
    REFERENCE,
    SPECS,
    Row,
    Tally,
    Zoo,
    _row_dict,
    _row_from,
    _strict,
    deployments,
    detected,
    false_alarms,
    log,
    open_fleet,
    tamper_suite,
    zoo,
)
from benchmarks.lib.report import machine, write_report
from veriprint.enrollment import EnrollmentError, enroll
from veriprint.errors import ConfigError
from veriprint.fingerprint import Fingerprint
from veriprint.pipeline import FingerprintConfig, make_fingerprint
from veriprint.pipeline.generate import GenerationConfig
from veriprint.targets import QueryBatch
from veriprint.verification.specs import parse_spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="digits MLP only, small bag, 100 checks")
    ap.add_argument("--models", nargs="+", default=None, help="only these models")
    ap.add_argument("--checks", type=int, default=None, help="verifications per deployment (default 1000)")
    ap.add_argument("--bag", type=int, default=None, help="seeds per fingerprint (default 120; quick 40)")
    ap.add_argument("--steps", type=int, default=None, help="generation steps (default 100; quick 20)")
    ap.add_argument("--pool", type=int, default=24, help="samples in the enrollment pool (default 24)")
    ap.add_argument("--tolerance", type=float, default=0.05, help="the declared kind's tolerance (logits)")
    ap.add_argument("--no-mlserver", action="store_true", help="skip the MLServer deployment")
    ap.add_argument("--no-torchserve", action="store_true", help="skip the TorchServe deployment")
    ap.add_argument("--deployments", nargs="+", default=None, metavar="NAME",
                    help="only these deployments (names as in the report; default: all)")
    ap.add_argument("--out", type=Path, default=None, help="Markdown report (default: stdout)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None, help="PNG of false alarms and detection")
    ap.add_argument("--render", type=Path, nargs="+", action="append", default=None, metavar="JSON",
                    help="only write --out and --plot again from the --json of an earlier run (its files: one "
                         "per model, say); repeated: several runs, each deployment measured in more than one "
                         "named with its run")
    ap.add_argument("--shift", action="store_true",
                    help="only measure how far the kernel deployments move the intact models' logits on the same "
                         "batches as this process (no fingerprints, no tampered copies)")
    args = ap.parse_args(argv)
    if args.render:
        return rerender(args)
    if args.shift:
        return shift(args)
    known = [d.name for d in deployments(torch.zeros(1))]
    unknown = sorted(set(args.deployments or ()) - set(known))
    if unknown:
        ap.error(f"expected deployments among {known}, got {unknown}")
    torch.set_num_threads(1)
    checks = args.checks or (100 if args.quick else 1000)
    bag = args.bag or (40 if args.quick else 120)
    steps = args.steps or (20 if args.quick else 100)
    start = time.perf_counter()
    rows: list[Row] = []
    models_info: list[dict[str, Any]] = []
    for z in zoo(args.quick, args.models):
        rows += run_model(z, args, bag, steps, checks, models_info)
    total = time.perf_counter() - start
    text = render(rows, models_info, args, bag, steps, checks, total)
    write_report(text, args.out)
    if args.json:
        args.json.write_text(json.dumps(_strict({"rows": [_row_dict(r) for r in rows], "models": models_info,
                                                  "seconds": total, "command": shlex.join(sys.argv[1:]),
                                                  "machine": machine(),
                                                  "args": {"pool": args.pool, "tolerance": args.tolerance,
                                                           "bag": bag, "steps": steps}}),
                                         indent=1, allow_nan=False))
    if args.plot:
        plot(rows, args.plot)
    return 0


def shift(args: argparse.Namespace) -> int:
    """Per model and kernel deployment, the largest change of a logit (and of the top-1 label)
    against this process on the same inputs: 500 test inputs in batches of 64, then one by one."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    deps = [d for d in deployments(torch.zeros(1)) if d.kernels is not None
            and (args.deployments is None or d.name in args.deployments)]
    res: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="deployments-shift-"))
    for z in zoo(args.quick, args.models):
        x = z.test.x[:500].float()
        with torch.no_grad():
            here = {64: torch.cat([z.model(x[i: i + 64]) for i in range(0, len(x), 64)]).numpy(),
                    1: torch.cat([z.model(x[i: i + 1]) for i in range(len(x))]).numpy()}
        for d in deps:
            fleet = open_fleet(d, [z.model], x[:2], z.name, int(here[64].shape[1]), work)
            assert fleet is not None
            try:
                tgt = fleet.target(0)
                row: dict[str, Any] = {"model": z.name, "deployment": d.name, "inputs": len(x)}
                for b, ref in here.items():
                    there = np.concatenate([tgt.query(QueryBatch(x[i: i + b].numpy())) for i in range(0, len(x), b)])
                    row[f"dz_{b}"] = float(np.abs(there - ref).max())
                    row[f"flips_{b}"] = int((there.argmax(1) != ref.argmax(1)).sum())
            finally:
                fleet.stop()
            res.append(row)
            log(f"{z.name} / {d.name}: max |dz| {row['dz_64']:.2g} (batches of 64), {row['dz_1']:.2g} (one by one)")
    mach = machine()
    out = ["# How far other CPU kernels move the logits (measured)", "",
           f"Generated by `python -m benchmarks.studies.deployments {shlex.join(sys.argv[1:])}` in "
           f"{(time.perf_counter() - start) / 60:.1f} min; do not edit by hand. Machine: {mach['cpu']}, torch "
           f"{torch.__version__}, ATen at {mach['aten']} in this process. Each kernel deployment is a child process "
           "started with the variables named (benchmarks/lib/kernel_worker.py): it emulates the kernels of a CPU of "
           "another vector width on this CPU, not another CPU model.", "",
           "Cells: the largest |logit there - logit here| over the first 500 test inputs (all of them where there "
           "are fewer) of the intact model, sent in "
           "batches of 64 and one by one, the same batches here and there (float32, one thread); in brackets, "
           "the inputs whose top-1 label differs.", "",
           "| model | deployment | inputs | max abs dz, batches of 64 | max abs dz, one by one |",
           "|---|---|---|---|---|"]
    for r in res:
        out.append(f"| {r['model']} | {r['deployment']} | {r['inputs']} | {r['dz_64']:.2g} ({r['flips_64']}) | "
                   f"{r['dz_1']:.2g} ({r['flips_1']}) |")
    write_report("\n".join(out) + "\n", args.out)
    if args.json:
        args.json.write_text(json.dumps(_strict({"rows": res, "machine": mach, "command": shlex.join(sys.argv[1:])}),
                                         indent=1, allow_nan=False))
    return 0


def rerender(args: argparse.Namespace) -> int:
    """The report and plot of earlier runs, from their JSON (kind names brought up to date).

    Each ``--render`` is one run, of one or more files (one model each, say). A deployment
    measured in more than one run keeps each run's rows, named ``NAME (run K)``: runs of
    other versions of the pipeline make other fingerprints and tampered copies, so each
    run is compared with its own reference. Model entries (floors, suite) are the last
    run's."""
    runs: list[list[Row]] = []
    models: dict[str, dict[str, Any]] = {}
    commands: list[str] = []
    seconds, meta, mach = 0.0, dict[str, Any](), None
    for files in args.render:
        rows_run: list[Row] = []
        cmds = []
        for path in files:
            raw = json.loads(path.read_text())
            for d in raw["rows"]:
                rows_run.append(_row_from(d))
            for m in raw["models"]:
                m["floors"] = {LEGACY_KINDS.get(k, k): math.nan if v is None else v for k, v in m["floors"].items()}
                models[m["model"]] = m
            meta = raw.get("args", meta)
            mach = raw.get("machine", mach)
            seconds += raw["seconds"]
            cmds.append(f"`python -m benchmarks.studies.deployments {raw.get('command', '--json ' + path.name)}`")
        runs.append(rows_run)
        commands.append(", ".join(cmds))
    seen: dict[str, set[int]] = {}
    for k, rows_run in enumerate(runs, start=1):
        for r in rows_run:
            seen.setdefault(r.deployment, set()).add(k)
    order = {n: i for i, n in enumerate(d.name for d in deployments(torch.zeros(1)))}
    model_order = {n: i for i, n in enumerate(models)}
    rows: list[tuple[tuple[int, int, int], Row]] = []
    for k, rows_run in enumerate(runs, start=1):
        for r in rows_run:
            key = (model_order.get(r.model, 99), order.get(r.deployment, 99), k)
            r.run = k
            if len(seen[r.deployment]) > 1:
                r.deployment = f"{r.deployment} (run {k})"
            rows.append((key, r))
    rows.sort(key=lambda kr: kr[0])  # stable: the kinds keep their order
    flat = [r for _, r in rows]
    ns = argparse.Namespace(pool=meta.get("pool", args.pool), tolerance=meta.get("tolerance", args.tolerance))
    checks = max((sum(vars(t).values()) for r in flat for t in r.tally.values()), default=0)
    made = ("; ".join(f"run {k}: {c}" for k, c in enumerate(commands, start=1)) if len(commands) > 1
            else commands[0])
    text = render(flat, list(models.values()), ns, meta.get("bag", 120), meta.get("steps", 100), checks, seconds,
                  command=f"{made} (this file re-rendered from the JSON by "
                          f"`python -m benchmarks.studies.deployments {shlex.join(sys.argv[1:])}`)", mach=mach)
    write_report(text, args.out)
    if args.plot:
        plot(flat, args.plot)
    return 0


def run_model(z: Zoo, args: argparse.Namespace, bag: int, steps: int, checks: int,
              models_info: list[dict[str, Any]]) -> list[Row]:
    model = z.model
    gen = GenerationConfig(steps=steps)
    base = dict(bag=bag, generation=gen, ceiling_share=0.0)  # the budget the docs' rows were measured with
    example = z.test.x[:2].float()
    deps = [d for d in deployments(example)
            if (args.deployments is None or d.name in args.deployments)
            and not (d.server == "mlserver" and args.no_mlserver)
            and not (d.server == "torchserve" and args.no_torchserve)]
    t0 = time.perf_counter()

    def make(**kw: Any) -> Fingerprint:
        cfg = FingerprintConfig(**{**base, **kw})  # type: ignore[arg-type]
        return make_fingerprint(model, z.test, cfg, progress=False)[0]

    fps = {"fixed floor": make(floor="fixed"), "measured floor": make(floor="measured")}
    refused: dict[str, str] = {}
    try:  # a declared tolerance raises the floor: fewer samples clear it, so a larger bag
        fps["declared"] = make(tolerance=args.tolerance, bag=min(4 * bag, len(z.test)))
    except ConfigError as e:
        refused["declared"] = f"could not be made: {e}"
    # every profile, even where no deployment run needs one: the tampered copies below then
    # start from the same random state in every run, whatever deployments it measures
    profiled = {p: make(precision=p) for p in ("fp64", "bf16", "autocast-bf16")}
    pool = make(bag=max(bag, 2 * args.pool), select=args.pool)
    made = time.perf_counter() - t0
    log(f"{z.name}: fingerprints made in {made:.0f} s; floors: "
        + ", ".join(f"{k} {f.noise.floor:.2g}" for k, f in fps.items()))
    natural = z.test.x[:500].numpy().astype(np.float32)
    classes = int(fps["fixed floor"].expected.shape[1])
    tampered = []
    t1 = time.perf_counter()
    from veriprint.tamper import tamper

    for case, cfg in tamper_suite(model, args.quick, int(z.test.x.shape[-1])):
        res = tamper(model, cfg, data=z.train, eval_data=z.test, progress=False)
        tampered.append((case, res.model.eval()))
    log(f"{z.name}: {len(tampered)} tampered copies in {time.perf_counter() - t1:.0f} s")
    # pools made with the deployment's own profile (after the tampered copies, which keep the
    # random state of earlier runs): an owner who knows the serving precision enrolls this one
    profiled_pools = {p: make(bag=max(bag, 2 * args.pool), select=args.pool, precision=p)
                      for p in dict.fromkeys(d.precision for d in deps) if p is not None}
    models_info.append({"model": z.name, "what": z.what, "fingerprint_s": round(made, 1),
                        "cases": [c for c, _ in tampered],
                        "floors": {k: f.noise.floor for k, f in {**fps, **profiled}.items()}})
    out: list[Row] = []
    work = Path(tempfile.mkdtemp(prefix="deployments-"))
    for d in deps:
        t2 = time.perf_counter()
        served = [model] + ([m for _, m in tampered] if d.tampers else [])
        fleet = open_fleet(d, served, example, z.name, classes, work)
        if fleet is None:
            continue
        try:
            tgt = fleet.target(0)
            kinds: dict[str, Fingerprint] = dict(fps)
            if d.precision is not None:
                kinds["profile"] = profiled[d.precision]
            note = ""
            try:
                rep = enroll(pool, tgt, spec="top1", model=model, tolerance=0.1, keep=8)
                kinds["enrolled"] = rep.fingerprint
            except EnrollmentError as e:
                note = f"enrollment refused: {str(e)[:120]}"
            pnote = ""
            if d.precision is not None:
                try:
                    rep = enroll(profiled_pools[d.precision], tgt, spec="top1", model=model, tolerance=0.1, keep=8)
                    kinds["enrolled, profiled pool"] = rep.fingerprint
                except EnrollmentError as e:
                    pnote = f"enrollment refused: {str(e)[:120]}"
            tallies, dz = false_alarms(kinds, tgt, natural, checks,
                                       seed=zlib.crc32(f"{z.name}/{d.name}".encode()))
            for k, fp in kinds.items():
                amb = {s: int(parse_spec(s).compare(fp.expected_logits.numpy(), fp.expected_logits.numpy(),
                                                    "logits", fp.noise).ambiguous.sum()) for s in SPECS}
                out.append(Row(z.name, d.name, k, len(fp), fp.noise.floor, amb, tallies[k],
                               note=note if k == "enrolled" else "", max_dz=dz[k]))
            if "enrolled" not in kinds:
                out.append(Row(z.name, d.name, "enrolled", 0, float("nan"), {}, note=note))
            if pnote:
                out.append(Row(z.name, d.name, "enrolled, profiled pool", 0, float("nan"), {}, note=pnote))
            for k, why in refused.items():
                out.append(Row(z.name, d.name, k, 0, float("nan"), {}, note=why[:160]))
            if d.tampers:
                detected(out, z.name, d, kinds, [c for c, _ in tampered], fleet)
        finally:
            fleet.stop()
        log(f"{z.name} / {d.name}: {time.perf_counter() - t2:.0f} s; max |dz| {max(dz.values()):.2g}; "
            "top1 false alarms " + ", ".join(f"{k} {tallies[k]['top1'].alarms}" for k in kinds))
    return out


def _cell(t: Tally | None, checks: int) -> str:
    if t is None:
        return "n/a"
    bold = "**" if t.alarms else ""
    extra = f", {t.inconclusive} inconcl." if t.inconclusive else ""
    return f"{bold}{t.alarms}{bold}/{checks}{extra}"


def _dz(v: float) -> str:
    return "-" if v != v else f"{v:.1g}"  # NaN: not kept by that run


def render(rows: list[Row], models_info: list[dict[str, Any]], args: argparse.Namespace, bag: int, steps: int,
           checks: int, total: float, command: str | None = None, mach: dict[str, Any] | None = None) -> str:
    cmd = command or f"`python -m benchmarks.studies.deployments {shlex.join(sys.argv[1:])}`"
    mach = mach or machine()
    out = ["# False alarms and detection per CPU deployment (measured)", "",
           f"Generated by {cmd} in {total / 60:.1f} min on a shared CPU (torch {torch.__version__}, "
           "1 thread; timings taken under contention); do not edit by hand. "
           f"Fingerprints: bag {bag}, {steps} generation steps, 8 queries and more until every class labels one (ceiling_share 0); enrollment pool {args.pool}; declared "
           f"tolerance {args.tolerance:g} logits. {checks} verifications per deployment and kind, each with every "
           "kind's samples shuffled among 0-63 natural inputs in requests of 1-64.", "",
           f"Machine: {mach['cpu']}, torch's ATen kernels at {mach['aten']}; onnxruntime {mach['onnxruntime']} "
           f"with the execution providers {', '.join(mach['providers'])} (on a CPU machine, CPUExecutionProvider "
           "is the only one that computes here: the Azure provider sends requests to a remote endpoint).", "",
           "Cells: false alarms / verifications (INCONCLUSIVE counted apart: every sample within the floor). "
           "Detection: tampered copies caught (TAMPERED) of the suite, served the same way. max |dz|: the "
           "largest distance of an answered logit from the stored one over the kind's samples and every "
           "verification ('-': not kept by that run).", ""]
    out += summary(rows, [i["model"] for i in models_info])
    out += agreement(rows)
    for info in models_info:
        name = info["model"]
        mine = [r for r in rows if r.model == name]
        out += [f"## {name}", "", f"{info['what']}. Floors (margin, logits): "
                + ", ".join(f"{k} {v:.2g}" for k, v in info["floors"].items())
                + f". Tamper suite ({len(info['cases'])} cases): {', '.join(info['cases'])}.", "",
                "| deployment | kind | queries | floor | ambiguous (top1) | max abs dz | false alarms top1 | "
                "false alarms logits | caught top1 | caught logits |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in mine:
            if not r.tally:
                out.append(f"| {r.deployment} | {r.kind} | - | - | - | - | {r.note} | | | |")
                continue
            caught = (" | ".join(f"{r.caught.get(s, 0)}/{r.cases}" for s in SPECS) if r.cases else "n/a | n/a")
            out.append(f"| {r.deployment} | {r.kind} | {r.samples} | {r.floor:.2g} | {r.ambiguous.get('top1', 0)} | "
                       f"{_dz(r.max_dz)} | {_cell(r.tally.get('top1'), checks)} | {_cell(r.tally.get('logits'), checks)} | {caught} |")
        out.append("")
    return "\n".join(out) + "\n"


def summary(rows: list[Row], models: list[str]) -> list[str]:
    """One line per deployment and kind, summed over the models."""
    out = [f"## Summary over {len(models)} model{'s' * (len(models) > 1)} ({', '.join(models)})", "",
           "| deployment | kind | max abs dz | false alarms top1 | false alarms logits | inconclusive top1 | "
           "caught top1 | caught logits |", "|---|---|---|---|---|---|---|---|"]
    for d in dict.fromkeys(r.deployment for r in rows):
        for k in KINDS:
            rs = [r for r in rows if r.deployment == d and r.kind == k and r.tally]
            if not rs:
                continue
            n = sum(sum(vars(r.tally["top1"]).values()) for r in rs)
            fa = {s: sum(r.tally[s].alarms for r in rs) for s in SPECS}
            inc = sum(r.tally["top1"].inconclusive for r in rs)
            cases = sum(r.cases for r in rs)
            det = " | ".join(f"{sum(r.caught.get(s, 0) for r in rs)}/{cases}" if cases else "n/a" for s in SPECS)
            cells = " | ".join(f"**{fa[s]}**/{n}" if fa[s] else f"0/{n}" for s in SPECS)
            dz = [r.max_dz for r in rs if r.max_dz == r.max_dz]
            out.append(f"| {d} | {k} | {_dz(max(dz) if dz else float('nan'))} | {cells} | {inc} | {det} |")
    return [*out, ""]


def _run_of(deployment: str) -> tuple[str, str]:
    """``"exact CPU (run 2)"`` -> ``("exact CPU", " (run 2)")``; a name without a run -> ``(name, "")``."""
    head, sep, tail = deployment.rpartition(" (run ")
    return (head, sep + tail) if sep and tail.endswith(")") else (deployment, "")


def agreement(rows: list[Row]) -> list[str]:
    """Case by case, each deployment's detection against its reference (:data:`REFERENCE`, else
    the exact CPU), where both runs kept the cases they caught."""
    ref = {(r.model, _run_of(r.deployment)[0], r.kind, r.run): r for r in rows if r.caught_cases}
    lines, same = [], []
    for r in rows:
        base = REFERENCE.get(_run_of(r.deployment)[0], "exact CPU")
        other = ref.get((r.model, base, r.kind, r.run))
        if not r.caught_cases or other is None or other is r:
            continue
        base = other.deployment
        for s in SPECS:
            mine, theirs = set(r.caught_cases.get(s, [])), set(other.caught_cases.get(s, []))
            if mine == theirs:
                same.append(r)
                continue
            diff = [f"caught only here: {', '.join(sorted(mine - theirs))}" if mine - theirs else "",
                    f"caught only there: {', '.join(sorted(theirs - mine))}" if theirs - mine else ""]
            lines.append(f"| {r.model} | {r.deployment} | {base} | {r.kind} | {s} | "
                         f"{'; '.join(x for x in diff if x)} |")
    if not same and not lines:
        return []
    compared = {r.deployment for r in same} | {ln.split(" | ")[1] for ln in lines}
    deps = [d for d in dict.fromkeys(r.deployment for r in rows) if d in compared]
    out = ["## Detection case by case against the reference", "",
           f"Each deployment's caught cases against those of its reference (the servers: in-process onnxruntime "
           f"with all graph optimizations, which is what they run; the others: the exact CPU), per model, kind and "
           f"spec, for: {'; '.join(deps)}.", ""]
    if not lines:
        return [*out, "Every one caught exactly the cases its reference caught.", ""]
    return [*out, "Where they differ (every other model, kind and spec caught the same cases):", "",
            "| model | deployment | reference | kind | spec | difference |", "|---|---|---|---|---|---|",
            *lines, ""]


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deps = list(dict.fromkeys(r.deployment for r in rows))
    kinds = [k for k in KINDS if any(r.kind == k and r.tally for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(max(13.0, 0.75 * len(deps)), 4.5))
    width = 0.8 / max(len(kinds), 1)
    for j, k in enumerate(kinds):
        alarm, caught = [], []
        for d in deps:
            rs = [r for r in rows if r.deployment == d and r.kind == k and r.tally]
            n = sum(sum(vars(r.tally["top1"]).values()) for r in rs)
            alarm.append(100 * sum(r.tally["top1"].alarms for r in rs) / n if n else np.nan)
            c = sum(r.cases for r in rs)
            caught.append(100 * sum(r.caught.get("top1", 0) for r in rs) / c if c else np.nan)
        xs = np.arange(len(deps)) + j * width
        axes[0].bar(xs, alarm, width, label=k)
        axes[1].bar(xs, caught, width, label=k)
    for ax, title in zip(axes, ("top1 false alarms (% of verifications, all models)",
                                "top1 detection (% of tampered copies caught, all models)"), strict=True):
        ax.set_xticks(np.arange(len(deps)) + 0.4 - width / 2, deps, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 100)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
