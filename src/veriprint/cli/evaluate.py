"""``veriprint evaluate``: run an experiment plan and write its tables, figures and report."""

from __future__ import annotations

import argparse
import shlex
import sys

HELP = "run an evaluation plan (missing rates, false positives, tables 2-6, figures 3 and 5) on Dask"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="plan file (.json or .toml); default: the full plan")
    p.add_argument("--quick", action="store_true", help="the built-in quick plan (minutes on 2 cores; CI)")
    p.add_argument("--plan", choices=("quick", "medium", "full"), default=None,
                   help="a built-in plan by name (default: full)")
    p.add_argument("--out", default="evaluation", help="output folder: results.jsonl, artifacts, CSV, report "
                                                       "(default: ./evaluation); rerunning resumes from it")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786); "
                                                     "default: a local cluster on 127.0.0.1")
    p.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster (default 2)")
    p.add_argument("--report", default=None, help="write the Markdown report here (default: OUT/report.md); "
                                                  "figures go beside it")
    p.add_argument("--figure-prefix", default="", help="prefix of the figure file names (default: none)")
    p.add_argument("--print-plan", action="store_true", help="print the plan as JSON and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import json

    from veriprint.evaluate.plan import PLANS, load_plan
    from veriprint.evaluate.report import write_outputs
    from veriprint.evaluate.runner import run_plan

    if sum(bool(x) for x in (args.config, args.quick, args.plan)) > 1:
        print("error: give one of --config, --quick and --plan", file=sys.stderr)
        return 2
    name = "quick" if args.quick else args.plan or "full"
    plan = load_plan(args.config) if args.config else PLANS[name]()
    if args.print_plan:
        print(json.dumps(plan.to_dict(), indent=1))
        return 0
    if args.workers < 1:
        print(f"error: expected --workers >= 1, got {args.workers}", file=sys.stderr)
        return 2
    result = run_plan(plan, args.out, scheduler=args.scheduler, workers=args.workers, progress=not args.no_progress)
    command = "veriprint evaluate " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["evaluate"] else [])
    where = f"scheduler {args.scheduler}" if args.scheduler else f"local Dask cluster of {args.workers} worker(s)"
    path = write_outputs(plan, result.rows, args.out, command=command.strip(), seconds=result.seconds,
                         workers=where, failures=result.failures, report=args.report,
                         figure_prefix=args.figure_prefix)
    print(f"{result.computed} rows computed, {result.cached} cached, {len(result.failures)} failed "
          f"in {result.seconds:.1f} s; report: {path}")
    return 1 if result.failures else 0
