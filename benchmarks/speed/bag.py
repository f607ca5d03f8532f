"""A whole bag: 500 seeds on the default Fashion-MNIST CNN, 1000 steps, samples per second and memory.

Runs in a child process (``python -m benchmarks.speed.bag --worker ...``) so that its peak
resident memory is its own. The model is the default CNN trained briefly on
Fashion-MNIST (seeds: the first test images); without the data set, random weights and
uniform seeds, which the report then says. :func:`veriprint.data.load_data` looks for
the data set in ``$VERIPRINT_FASHION_MNIST_DIR`` first, then in
``/usr/share/datasets/fashion-mnist``.

On ``--device cuda`` the model is trained on the CPU (a one-off, not timed) and then
moved to the GPU with the seeds; memory is then the peak of
``torch.cuda.max_memory_allocated`` during generation (reset just before it).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.lib import ROOT
from benchmarks.lib.timing import (
    DEVICES,
    Context,
    Goal,
    Section,
    clock,
    fmt_s,
    fmt_x,
    sync,
    unit_step,
)


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


def worker(n: int, steps: int, threads: int, seed: int, train: bool, device: str = "cpu") -> dict[str, Any]:
    torch.set_num_threads(threads)
    from veriprint.numerics import freeze
    from veriprint.pipeline.generate import GenerationConfig, generate
    from veriprint.zoo import fashion_cnn

    torch.manual_seed(seed)
    model = fashion_cnn()
    source = "random weights, uniform random seeds"
    seeds = torch.rand(n, 1, 28, 28)
    real = False
    try:
        if not train:
            raise RuntimeError("no training in quick mode")
        from veriprint.data import load_data
        from veriprint.models.train import TrainConfig, train_

        train_set = load_data("fashion-mnist", split="train", limit=6400)
        test = load_data("fashion-mnist", split="test", limit=n)
        t0 = time.perf_counter()
        if device != "cpu":  # not timed: use the machine's cores
            torch.set_num_threads(max(threads, min(8, os.cpu_count() or 1)))
        try:
            train_(model, train_set, TrainConfig(epochs=1, seed=seed), progress=False)
        finally:
            torch.set_num_threads(threads)
        source = (f"trained 1 epoch on 6,400 Fashion-MNIST images ({time.perf_counter() - t0:.0f} s, on the CPU), "
                  f"seeds: the first {n} test images")
        seeds = test.x[:n]
        real = True
    except (OSError, ValueError, RuntimeError, ImportError) as e:
        source += f" ({type(e).__name__}: {e})"
    model = freeze(model).to(device)
    seeds = seeds.to(device)
    unit = unit_step(model, seeds)
    unit()
    units = [clock(unit) for _ in range(3)]
    gc.collect()
    cuda = device == "cuda"
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats()
        reset = True
        before = torch.cuda.memory_allocated() / 2**20
    else:
        reset = _reset_peak()
        before = _rss_mib()
    sync()
    start = time.perf_counter()
    res = generate(model, seeds, GenerationConfig(steps=steps), progress=False)
    sync()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_mib()
    units += [clock(unit) for _ in range(3)]
    return {
        "n": n, "steps": steps, "steps_run": res.steps_run, "seconds": seconds,
        "unit": statistics.median(units), "peak_reset": reset, "device": device,
        "memory": "cuda allocated" if cuda else "rss",
        # the keys keep their names on cuda (GPU memory allocated by torch, not RSS)
        "rss_before_mib": before, "peak_rss_mib": peak,
        "log_s_gain_median": float((res.log_s_after - res.log_s_before).median()),
        "linf_max": float(res.linf.max()), "source": source, "real_data": real,
    }


def run(ctx: Context) -> Section:
    n, steps = (32, 20) if ctx.quick else (500, 1000)
    cmd = [sys.executable, "-m", "benchmarks.speed.bag", "--worker", "--n", str(n), "--steps", str(steps),
           "--threads", str(ctx.threads), "--seed", str(ctx.seed), "--device", ctx.device] + (
               [] if ctx.quick else ["--train"])
    env = dict(os.environ)  # the child finds benchmarks/ and, uninstalled, veriprint in src/
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src")] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env,
                         timeout=300 if ctx.cuda else 1800)
    if out.returncode != 0:
        tail = [line for line in out.stderr.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        raise RuntimeError(f"bag worker exited with status {out.returncode}: {tail[0]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    per_step = r["seconds"] / max(r["steps_run"], 1)
    cuda = r.get("device") == "cuda"
    mem = "GPU memory (torch)" if cuda else "RSS"
    sec = Section(
        key="bag",
        title=f"A bag of {n} seeds, {steps} steps (default settings, early stop on plateau)",
        text=(f"Device: {ctx.device}. "
              f"`generate(model, seeds, GenerationConfig(steps={steps}))` on the default Fashion-MNIST "
              f"CNN ({r['source']}), the whole bag in one batch, in a child process. *unit* = one plain "
              "forward+backward to the input at the same batch, timed in the same process just before and after "
              "generation (not interleaved with it, so noisier than the step section's ratios)."),
        headers=["samples", "steps run", "wall time", "samples / s", "time / step", "step / unit",
                 f"peak {mem}", f"peak {mem} - {mem} before", "median gain in log S", "max L-inf"],
        rows=[[str(n), str(r["steps_run"]), fmt_s(r["seconds"]), f"{n / r['seconds']:.2f}", fmt_s(per_step),
               fmt_x(per_step / r["unit"]), f"{r['peak_rss_mib']:.0f} MiB",
               f"{r['peak_rss_mib'] - r['rss_before_mib']:.0f} MiB", f"{r['log_s_gain_median']:.2f}",
               f"{r['linf_max'] * 255:.1f}/255"]],
        data=r,
    )
    sec.goals.append(Goal(f"bag of {n}: generation step vs plain forward+backward", fmt_x(per_step / r["unit"]),
                          "<= 1.2x", per_step / r["unit"] <= 1.2))
    if cuda:
        sec.notes.append("GPU memory is `torch.cuda.max_memory_allocated` during generation (peak statistics "
                         "reset just before it): tensors torch allocated on the GPU, model and seeds included, "
                         "not the CUDA context or the caching allocator's reserve; the increase over "
                         "`torch.cuda.memory_allocated` before generation is what generation used. It is bounded "
                         "by `GenerationConfig.batch_size` (default 500 samples per chunk).")
    else:
        sec.notes.append("Peak RSS is the process's high-water mark during generation "
                         + ("(reset just before it), " if r.get("peak_reset") else "(over the process's life: the "
                            "reset was not possible), ")
                         + "including the interpreter, torch and the data; the increase over the RSS before "
                         "generation is what generation used. It is bounded by `GenerationConfig.batch_size` "
                         "(default 500 samples per chunk).")
    if not ctx.quick and not r.get("real_data", True):
        sec.notes.append("**Fashion-MNIST was not available**, so the model has random weights and the seeds are "
                         f"uniform noise ({r['source']}); these figures are not those of a trained model on real "
                         "images. Point `VERIPRINT_FASHION_MNIST_DIR` at a folder holding the four "
                         "`*-idx?-ubyte.gz` files to use the data set.")
    return sec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", action="store_true", help="train the CNN briefly on Fashion-MNIST first")
    p.add_argument("--device", choices=DEVICES, default="cpu")
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.n, a.steps, a.threads, a.seed, a.train, a.device)))
        return 0
    sec = run(Context(threads=a.threads, seed=a.seed, device=a.device))
    print(json.dumps(sec.data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
