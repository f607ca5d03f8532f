"""A whole bag: 500 seeds on the default Fashion-MNIST CNN, 1000 steps, samples per second and memory.

Runs in a child process (``python -m benchmarks.bag --worker ...``) so that its peak
resident memory is its own. The model is the default CNN trained briefly on
Fashion-MNIST (seeds: the first test images); without the data set, random weights and
uniform seeds, which the report then says.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Context, Goal, Section, clock, fmt_s, fmt_x, unit_step


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(n: int, steps: int, threads: int, seed: int, train: bool) -> dict[str, Any]:
    torch.set_num_threads(threads)
    from veriprint.generate import GenerationConfig, generate
    from veriprint.zoo import fashion_cnn

    torch.manual_seed(seed)
    model = fashion_cnn()
    source = "random weights, uniform random seeds"
    seeds = torch.rand(n, 1, 28, 28)
    try:
        if not train:
            raise RuntimeError("no training in quick mode")
        from veriprint.data import load_data
        from veriprint.train import TrainConfig, train_

        train = load_data("fashion-mnist", split="train", limit=6400)
        test = load_data("fashion-mnist", split="test", limit=n)
        t0 = time.perf_counter()
        train_(model, train, TrainConfig(epochs=1, seed=seed), progress=False)
        source = (f"trained 1 epoch on 6,400 Fashion-MNIST images ({time.perf_counter() - t0:.0f} s), "
                  f"seeds: the first {n} test images")
        seeds = test.x[:n]
    except (OSError, ValueError, RuntimeError) as e:
        source += f" ({e})"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    unit = unit_step(model, seeds)
    unit()
    units = [clock(unit) for _ in range(3)]
    gc.collect()
    reset = _reset_peak()
    rss_before = _rss_mib()
    start = time.perf_counter()
    res = generate(model, seeds, GenerationConfig(steps=steps), progress=False)
    seconds = time.perf_counter() - start
    peak = _peak_mib()
    units += [clock(unit) for _ in range(3)]
    return {
        "n": n, "steps": steps, "steps_run": res.steps_run, "seconds": seconds,
        "unit": statistics.median(units), "rss_before_mib": rss_before, "peak_rss_mib": peak,
        "log_s_gain_median": float((res.log_s_after - res.log_s_before).median()),
        "linf_max": float(res.linf.max()), "source": source, "peak_reset": reset,
    }


def run(ctx: Context) -> Section:
    n, steps = (32, 20) if ctx.quick else (500, 1000)
    cmd = [sys.executable, "-m", "benchmarks.bag", "--worker", "--n", str(n), "--steps", str(steps),
           "--threads", str(ctx.threads), "--seed", str(ctx.seed)] + ([] if ctx.quick else ["--train"])
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    per_step = r["seconds"] / max(r["steps_run"], 1)
    sec = Section(
        key="bag",
        title=f"A bag of {n} seeds, {steps} steps (default settings, early stop on plateau)",
        text=(f"`generate(model, seeds, GenerationConfig(steps={steps}))` on the default Fashion-MNIST "
              f"CNN ({r['source']}), the whole bag in one batch, in a child process. *unit* = one plain "
              "forward+backward to the input at the same batch, timed in the same process just before and after "
              "generation (not interleaved with it, so noisier than the step section's ratios)."),
        headers=["samples", "steps run", "wall time", "samples / s", "time / step", "step / unit",
                 "peak RSS", "peak RSS - RSS before", "median gain in log S", "max L-inf"],
        rows=[[str(n), str(r["steps_run"]), fmt_s(r["seconds"]), f"{n / r['seconds']:.2f}", fmt_s(per_step),
               fmt_x(per_step / r["unit"]), f"{r['peak_rss_mib']:.0f} MiB",
               f"{r['peak_rss_mib'] - r['rss_before_mib']:.0f} MiB", f"{r['log_s_gain_median']:.2f}",
               f"{r['linf_max'] * 255:.1f}/255"]],
        data=r,
    )
    sec.goals.append(Goal(f"bag of {n}: generation step vs plain forward+backward", fmt_x(per_step / r["unit"]),
                          "<= 1.2x", per_step / r["unit"] <= 1.2))
    sec.notes.append("Peak RSS is the process's high-water mark during generation "
                     + ("(reset just before it), " if r.get("peak_reset") else "(over the process's life: the reset "
                        "was not possible), ")
                     + "including the interpreter, torch and the data; the increase over the RSS before "
                     "generation is what generation used. It is bounded by `GenerationConfig.batch_size` "
                     "(default 500 samples per chunk).")
    return sec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", action="store_true", help="train the CNN briefly on Fashion-MNIST first")
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.n, a.steps, a.threads, a.seed, a.train)))
        return 0
    sec = run(Context(threads=a.threads, seed=a.seed))
    print(json.dumps(sec.data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
