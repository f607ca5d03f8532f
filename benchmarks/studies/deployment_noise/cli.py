"""Deployment noise: the command line (``--prepare`` on the CPU, ``--bundle`` on the device)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.studies.deployment_noise.bundle import RECIPES, _log, prepare
from benchmarks.studies.deployment_noise.measure import run_bundle
from benchmarks.studies.deployment_noise.report import plot_deviation, render, summarize
from benchmarks.studies.deployment_noise.variants import VARIANTS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prepare", metavar="DIR", help="make the bundle here (CPU)")
    mode.add_argument("--bundle", metavar="DIR", help="run the variants on a bundle")
    p.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES),
                   help="models to bundle (prepare)")
    p.add_argument("--bag", type=int, default=120, help="fingerprint bag size (prepare)")
    p.add_argument("--steps", type=int, default=150, help="generation steps (prepare)")
    p.add_argument("--natural", type=int, default=1000, help="natural test inputs kept (prepare)")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of the MLPs (prepare; default: 20 digits, 1 Fashion-MNIST)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cuda", help="device to run on (default cuda)")
    p.add_argument("--variants", nargs="+", default=None, choices=[v.name for v in VARIANTS],
                   help="run only these variants")
    p.add_argument("--time-limit", type=float, default=150.0,
                   help="skip the variants still waiting after this many seconds (default 150)")
    p.add_argument("--out", default=None, help="JSON results")
    p.add_argument("--report", default=None, help="Markdown report")
    p.add_argument("--plot", default=None, help="PNG plot (default: next to the report)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prepare:
        manifest = prepare(Path(args.prepare), args.models, bag=args.bag, steps=args.steps, natural=args.natural,
                           epochs=args.epochs)
        size = sum(f.stat().st_size for f in Path(args.prepare).iterdir() if f.is_file())
        _log(f"bundle {args.prepare}: {len(manifest['models'])} models, {size / 1e6:.2f} MB, "
             f"{manifest['prepared']['seconds']} s")
        return 0
    res = run_bundle(Path(args.bundle), args.device, args.variants, time_limit=args.time_limit)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    if args.report:
        report = Path(args.report)
        plot_path = Path(args.plot) if args.plot else report.with_suffix(".png")
        plot_name = None
        try:
            if plot_deviation(res, plot_path):
                plot_name = plot_path.name if plot_path.parent == report.parent else str(plot_path)
        except Exception as e:  # the plot is optional; the report is not
            _log(f"no plot: {type(e).__name__}: {e}")
        report.write_text(render(res, plot_name))
    for line in summarize(res):
        print(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
