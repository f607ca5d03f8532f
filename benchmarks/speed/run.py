"""Run the benchmarks and write one Markdown report (and optionally JSON).

    .venv/bin/python -m benchmarks.speed.run --out docs/measurements/benchmarks.md          # full, < 15 min
    .venv/bin/python -m benchmarks.speed.run --quick --out /tmp/bench.md       # CI, < 2 min
    PYTHONPATH=src python3 -m benchmarks.speed.run --device cuda --out bench-gpu.md --json bench-gpu.json
                                                                         # on a CUDA GPU, < 6 min

Every figure is a ratio of two things timed alternately in the same run (absolute times
are printed for orientation only; the machine may be shared). The exit status is 1 when a
correctness check fails (e.g. the closed form and the literal Algorithm 1 disagree) or a
family raises, 0 otherwise; speed goals are reported, not enforced. A family that raises
is reported as a failed check with a section naming the error, and the run goes on; the
report (and JSON) is rewritten after every family, so a run cut short still leaves one.

``--device cuda`` builds every model and tensor on the GPU; timings then wait for the
device (``torch.cuda.synchronize``) at both ends, peak memory is
``torch.cuda.max_memory_allocated``, and ``--threads`` only affects the work that stays on
the CPU (MANC, onnxruntime, fingerprinting, training the bag's model).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.lib import ROOT
from benchmarks.lib.timing import DEVICES, Check, Context, Section, fmt_s

FAMILIES = ("step", "general", "bag", "selection", "verification", "compiled")

# Optimizations made after profiling, with the ratios measured when each was made (in one
# run, before and after, same machine); the commits hold the details.
HISTORY = """\
| change (commit message title) | figure | before | after |
|---|---|---|---|
| Generation step: input gradient only, last layer located once per chunk | step / unit, r=10, frozen params, batch 32 | 1.39x | 1.17x |
| | same, batch 500 | 1.07x | 0.98x |
| | step / unit, params requiring grad, batch 32 | 1.64x | 1.08x |
| | same, batch 500 | 1.36x | 0.91x |
| MANC: 64-bit words, cache-sized row blocks, coverable neurons from the packed matrix | `manc` 8 of 10,000 x 100,000 (load average ~9) | 6.4-8.6 s | 0.8-0.9 s |
| Closed form: the non-top classes' factor `1 - 2 p_i + sum p^2` computed directly, log space only for the top class | closed / unit at r = 10 / 100 / 1000, batch 500 (one run each, another job on the machine) | 1.12x / 1.18x / 1.15x | 0.98x / 0.98x / 1.07x |
| | step / unit, same runs | 1.12x / 1.01x / 1.28x | 0.98x / 1.05x / 1.00x |

The first two changes keep results identical: the generation change is bit-identical on 16
configurations; MANC gives the same picks, gains, levels and coverage on 400 random cases.
The closed-form change agrees with the previous formula within float rounding (float64:
<= 2e-15; float32: <= 5e-7, saturated logits of scale 200 included; input gradients within
2e-6 relative), and the closed form = Algorithm 1 checks below still pass.
"""


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        if name == "veriprint":  # run from the source tree (PYTHONPATH=src), not installed
            import veriprint

            return f"{veriprint.__version__} (from {Path(veriprint.__file__).parent})"
        return "not installed"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "benchmarks"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + (" (with uncommitted changes in src/ or benchmarks/)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _load() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def _gpu_meta() -> dict[str, str]:
    """The GPU, its CUDA and cuDNN versions and the TF32 settings the timings ran with."""

    def get(fn: Callable[[], object]) -> str:
        try:
            return str(fn())
        except Exception as e:  # a missing or changed torch API must not stop the run
            return f"unknown ({type(e).__name__})"

    def device() -> str:
        props = torch.cuda.get_device_properties(0)
        return (f"cuda: {torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB, "
                f"compute capability {props.major}.{props.minor}), {torch.cuda.device_count()} visible")

    return {
        "device": get(device),
        "CUDA": f"{torch.version.cuda} (cuDNN {get(torch.backends.cudnn.version)})",
        "TF32 (torch defaults, used for all timings)": (
            f"torch.backends.cuda.matmul.allow_tf32 = {get(lambda: torch.backends.cuda.matmul.allow_tf32)}, "
            f"torch.backends.cudnn.allow_tf32 = {get(lambda: torch.backends.cudnn.allow_tf32)} "
            f"(fp32_precision: matmul {get(lambda: torch.backends.cuda.matmul.fp32_precision)}, "
            f"cuDNN conv {get(lambda: torch.backends.cudnn.conv.fp32_precision)}); the float32 "
            "closed form = Algorithm 1 checks run with both off"),
    }


def failed_section(name: str, error: BaseException) -> Section:
    """The section of a family that raised: what failed, as a failed check."""
    last = traceback.format_exception_only(type(error), error)[-1].strip()
    tb = traceback.format_exception(type(error), error, error.__traceback__)
    where = next((line.strip().splitlines()[0] for line in reversed(tb) if line.lstrip().startswith("File ")), "")
    return Section(
        key=name,
        title=f"{name}: FAILED",
        text=f"The `{name}` family raised and was skipped; the other families ran. Error: `{last}`"
             + (f" (raised at `{where}`)." if where else "."),
        checks=[Check(f"{name} family ran", False, last.replace("|", "\\|"))],
        data={"error": last, "traceback": "".join(tb)},
    )


def render(sections: list[Section], meta: dict[str, str]) -> str:
    out = ["# Benchmarks", "",
           "Generated by `benchmarks/speed/run.py`; do not edit by hand. Every ratio compares two "
           "computations timed alternately in this one run (median of per-pair ratios); "
           "absolute times are for orientation only.", "", "## Machine and run", ""]
    out += [f"- **{k}**: {v}" for k, v in meta.items()]
    goals = [(s, g) for s in sections for g in s.goals]
    if goals:
        out += ["", "## Goals", "", "| goal | measured | target | met |", "|---|---|---|---|"]
        for _, g in goals:
            met = "n/a" if g.met is None else ("yes" if g.met else "**no**")
            out.append(f"| {g.name} | {g.measured} | {g.target} | {met} |")
    checks = [c for s in sections for c in s.checks]
    if checks:
        out += ["", "## Correctness checks (the run fails if one fails)", "",
                "| check | passed | detail |", "|---|---|---|"]
        out += [f"| {c.name} | {'yes' if c.passed else '**NO**'} | {c.detail} |" for c in checks]
    out += ["", "## Optimizations (before / after, measured when made)", "", HISTORY.rstrip()]
    for s in sections:
        out += ["", f"## {s.title}", "", s.text, ""]
        if s.headers:
            out.append("| " + " | ".join(s.headers) + " |")
            out.append("|" + "---|" * len(s.headers))
            out += ["| " + " | ".join(row) + " |" for row in s.rows]
            out.append("")
        out += [f"- {n}" for n in s.notes]
        out.append(f"\n_Section time: {fmt_s(s.seconds)}._")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI (< 2 minutes)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown report (default: stdout)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures as JSON")
    parser.add_argument("--only", nargs="+", choices=FAMILIES, default=list(FAMILIES),
                        help="run only these families")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for all timings (default 1: on a shared machine, "
                             "more threads make batch-1 code tens of times slower and ratios meaningless)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="where models and tensors live (default cpu); cuda: the first visible GPU")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"expected --threads >= 1, got {args.threads}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device "
                     f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")

    torch.set_num_threads(args.threads)
    ctx = Context(quick=args.quick, threads=args.threads, seed=args.seed, device=args.device)
    gpu = _gpu_meta() if ctx.cuda else {"device": "cpu"}
    start = time.perf_counter()
    load_start = _load()
    command = "python -m benchmarks.speed.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    sections: list[Section] = []

    def meta(done: bool) -> dict[str, str]:
        m = {
            "command": f"`{command.strip()}`" + (" (quick mode: small sizes, not the reported figures)"
                                                 if args.quick else ""),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "machine": (f"{_cpu()}, {os.cpu_count()} logical cores, {_memory()} RAM, "
                        f"{platform.system()} {platform.release()}"),
        }
        m.update(gpu)
        m.update({
            "load average (1, 5, 15 min) at start / end": f"{load_start} / {_load()}",
            "torch threads": str(args.threads) + (" (CPU-side work only)" if ctx.cuda else ""),
            "versions": (f"Python {platform.python_version()}, torch {torch.__version__}, "
                         f"numpy {_version('numpy')}, onnxruntime {_version('onnxruntime')}, "
                         f"veriprint {_version('veriprint')}"),
            "git commit": _git(),
            "total time": fmt_s(time.perf_counter() - start) + (
                "" if done else f" so far (run in progress: {len(sections)} of {len(args.only)} families done)"),
        })
        return m

    def write(done: bool) -> None:
        m = meta(done)
        text = render(sections, m)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
        elif done:
            sys.stdout.write(text)
        if args.json:
            payload = {"meta": m, "seconds": time.perf_counter() - start, "complete": done,
                       "sections": {s.key: {"data": s.data, "seconds": s.seconds,
                                            "checks": [c.__dict__ for c in s.checks],
                                            "goals": [g.__dict__ for g in s.goals]} for s in sections}}
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(payload, indent=1, default=str))

    for name in args.only:
        ctx.log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.speed.{name}")
            sec: Section = module.run(ctx)
        except Exception as e:  # one family's failure must not lose the others' figures
            sec = failed_section(name, e)
            ctx.log(f"{name} FAILED: {sec.data['traceback']}")
        sec.seconds = time.perf_counter() - t0
        sections.append(sec)
        ctx.log(f"{name}: {sec.seconds:.1f} s")
        if ctx.cuda:
            try:
                torch.cuda.empty_cache()
            except RuntimeError as e:  # after a device error; the next family will report its own
                ctx.log(f"torch.cuda.empty_cache failed: {e}")
        write(done=False)
    write(done=True)
    if args.out:
        ctx.log(f"wrote {args.out}")
    failed = [c.name for s in sections for c in s.checks if not c.passed]
    for name in failed:
        ctx.log(f"FAILED check: {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
