"""The GPU benchmark: the whole fingerprint pipeline on one GPU, and the deployment numerics there.

    python -m benchmarks.speed.gpu --out docs/measurements/gpu-measured.md --json docs/measurements/gpu-measured.json   # on a GPU, ~8 min
    python -m benchmarks.speed.gpu --device cpu --quick --out /tmp/gpu.md                    # a dry run, tiny model

One command, four sections, written as one Markdown report and one JSON file:

a. **default**: the default ``veriprint fingerprint`` of EfficientNet-Lite2
   (``veriprint.zoo:efficientnet_lite2``, data ``imagenet-samples:260``) with ``--device
   cuda``: every stage on the GPU, the plan's automatic budget (60 s on an accelerator),
   per-stage seconds, samples through the model and peak GPU memory, and what the plan
   trimmed. The fingerprint is kept for section d.
b. **compiled**: the generation stage of section a's plan (its bag and steps, no early
   stop) with every module of the network but its last layer compiled
   (``nn.Module.compile``; the last layer stays eager, where the closed form of the
   objective hooks it), against eager: compile seconds, seconds per ascent step, the steps
   that pay the compilation back, and whether the samples changed.
c. **scaling**: ``benchmarks/speed/scaling.py --quick --device cuda``, its report kept as is.
d. **numerics**: the deployment-noise question on this GPU. Each variant (float32 with TF32
   off, torch's defaults, TF32 on, ``cudnn.benchmark``, autocast float16 / bfloat16,
   float16 / bfloat16 weights) at batch sizes 1, 8, 64 and 512: the largest logit change
   against the float32 batch-1 answers on the GPU and against the CPU's float32 answers on
   natural inputs; then false alarms of two fingerprints, one made on the CPU (a small one,
   made here unless ``--cpu-fingerprint FILE`` gives one) and the CUDA one of section a,
   each verified ``--repeats`` times per variant and batch size with the queries shuffled
   into batches of natural inputs (top-1 API). A fingerprint of the intact model that is
   not INTACT is a false alarm.

``--device cpu --quick`` runs every section on a tiny random CNN, in seconds, so the script
is exercised by the tests (``tests/test_benchmarks.py``); its numbers mean nothing. On a
machine without a GPU, ``--device cuda`` (the default) is refused before anything runs. A
section that fails is recorded with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.lib.report import write_report
from benchmarks.studies.deployment_noise.variants import VARIANTS, Variant, make_forward
from veriprint.data import Dataset
from veriprint.deployments.profiles import check_device
from veriprint.errors import ConfigError
from veriprint.fingerprint import Fingerprint
from veriprint.models import split_last_layer
from veriprint.pipeline import FingerprintConfig, make_fingerprint
from veriprint.pipeline.cost import format_costs
from veriprint.pipeline.generate import GenerationConfig
from veriprint.pipeline.plan import plan_line
from veriprint.pipeline.seeds import natural_views

SECTIONS = ("default", "compiled", "scaling", "numerics")
#: The numeric variants of section d (names of :data:`benchmarks.studies.deployment_noise.variants.VARIANTS`).
NUMERICS = ("fp32", "defaults", "tf32", "cudnn.benchmark", "autocast-fp16", "autocast-bf16", "half", "bfloat16")
BATCHES = (1, 8, 64, 512)
QUICK_BATCHES = (1, 8, 32)


def log(msg: str) -> None:
    print(f"[gpu] {msg}", file=sys.stderr, flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


# -- the subject ---------------------------------------------------------------------------------------------

def subject(quick: bool) -> tuple[str, nn.Module, Dataset]:
    """EfficientNet-Lite2 on imagenet-samples:260, or (quick) a tiny random CNN on random 32x32 images."""
    if quick:
        from benchmarks.speed.scaling import images, resnet_like

        return "tiny random CNN (width 8, 10 classes, 32x32)", resnet_like(8, 10), Dataset(images(96, 32), None,
                                                                                          name="random-32")
    from veriprint.data import load_data
    from veriprint.zoo import efficientnet_lite2

    return "EfficientNet-Lite2", efficientnet_lite2(), load_data("imagenet-samples:260")


def default_config(device: str, quick: bool) -> FingerprintConfig:
    """The default configuration (quick: a bag of 24, 5 steps, 4 queries, no budget)."""
    if quick:
        return FingerprintConfig(bag=24, select=4, budget="none", generation=GenerationConfig(steps=5), device=device)
    return FingerprintConfig(device=device)


def run_fingerprint(model: nn.Module, data: Dataset, cfg: FingerprintConfig) -> tuple[Fingerprint, dict[str, Any]]:
    sync(cfg.device)
    t0 = time.perf_counter()
    fp, gen, _ = make_fingerprint(model, data, cfg, progress=False, source="benchmarks.speed.gpu")
    sync(cfg.device)
    seconds = time.perf_counter() - t0
    reach = fp.meta.get("reach") or {}
    budget = fp.meta.get("budget") or {}
    row = {"seconds": round(seconds, 2), "stages": fp.meta["stages"], "plan": fp.meta["plan"],
           "plan_line": plan_line(fp.meta["plan"], took=seconds), "queries": len(fp),
           "pairs": fp.meta["selection"]["pairs"], "steps_run": gen.steps_run, "bag": len(gen),
           "reach_5pct": reach.get("all", [None])[0], "predicted_coverage": budget.get("predicted"),
           "floor": fp.noise.floor}
    return fp, row


# -- b. compiled -----------------------------------------------------------------------------------------------

def compile_body(model: nn.Module, x: torch.Tensor, backend: str, mode: str | None) -> list[str]:
    """Compile, in place, every module of ``model`` that does not hold its last linear layer
    (containers without a forward are entered); returns the compiled modules' names."""
    import torch._dynamo

    # Blocks of one class share their forward's code: each instance (other channels) is a
    # recompilation of it, and refinement's shrinking batches add their own.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 512)
    last = split_last_layer(model, x[:2]).weight.rsplit(".", 1)[0]
    done: list[str] = []

    def visit(mod: nn.Module, prefix: str) -> None:
        for name, child in mod.named_children():
            path = prefix + name
            if path == last:
                continue
            if last.startswith(path + ".") or type(child).forward is nn.Module.forward:
                visit(child, path + ".")
            elif any(True for _ in child.parameters()):
                child.compile(backend=backend, mode=mode, dynamic=True)
                done.append(path)

    visit(model, "")
    return done


def compiled_section(model: nn.Module, data: Dataset, device: str, quick: bool, base: dict[str, Any],
                     backend: str, mode: str | None) -> dict[str, Any]:
    """The generation stage of section a's plan (its bag, its steps, no early stop), eager,
    then compiled twice: the first compiled run pays the compilation, the second is the
    steady state. Samples of the compiled run are compared with the eager ones."""
    from veriprint.pipeline.generate import generate
    from veriprint.pipeline.seeds import draw_seeds

    plan = base["plan"]
    steps = max(1, min(base["steps_run"], 100))
    gen_cfg = dataclasses.replace(default_config(device, quick).generation, steps=steps, patience=0,
                                  batch_size=plan["batch"])
    eager = copy.deepcopy(model).to(device)
    seeds, _ = draw_seeds(data, base["bag"], 0, "boundary", eager, pool=plan["pool"], batch_size=plan["batch"])
    seeds = seeds.to(device)

    def timed(m: nn.Module) -> tuple[float, torch.Tensor]:
        sync(device)
        t = time.perf_counter()
        r = generate(m, seeds, gen_cfg, domain=data.domain, progress=False)
        sync(device)
        return time.perf_counter() - t, r.samples

    timed(eager)  # warm-up (cuDNN's first calls)
    eager_s, x_eager = timed(eager)
    compiled = copy.deepcopy(model).to(device)
    names = compile_body(compiled, seeds, backend, mode)
    first_s, _ = timed(compiled)  # includes the compilation
    comp_s, x_comp = timed(compiled)
    chunks = -(-len(seeds) // gen_cfg.batch_size)
    saved = (eager_s - comp_s) / (steps * chunks)  # seconds saved per ascent step of one batch
    compile_s = max(0.0, first_s - comp_s)
    log(f"generation: eager {eager_s:.1f} s, compiled {comp_s:.1f} s, first compiled run {first_s:.1f} s")
    return {"backend": backend, "mode": mode, "modules_compiled": len(names), "bag": len(seeds), "steps": steps,
            "batch": gen_cfg.batch_size, "eager_s": round(eager_s, 3), "compiled_s": round(comp_s, 3),
            "first_compiled_s": round(first_s, 3), "compile_s": round(compile_s, 3),
            "step_eager_s": round(eager_s / (steps * chunks), 5), "step_compiled_s": round(comp_s / (steps * chunks), 5),
            "break_even_steps": None if saved <= 0 else int(np.ceil(compile_s / saved)),
            "samples_max_diff": float((x_comp - x_eager).abs().max()),
            "samples_differ": int((x_comp != x_eager).flatten(1).any(1).sum())}


# -- d. numerics -----------------------------------------------------------------------------------------------

def _variant(name: str) -> Variant:
    return next(v for v in VARIANTS if v.name == name)


class Embedded:
    """A top-1 target that answers the queries inside batches of ``batch`` natural inputs,
    the queries at random places (so every call sees another batch composition)."""

    def __init__(self, fwd: Callable[[np.ndarray], np.ndarray], batch: int, fillers: np.ndarray, seed: int) -> None:
        self.fwd, self.batch, self.fillers = fwd, batch, fillers
        self.rng = np.random.default_rng(seed)
        self.__name__ = f"embedded-batch-{batch}"

    def __call__(self, q: np.ndarray) -> np.ndarray:
        k = len(q)
        total = -(-k // self.batch) * self.batch
        arr = self.fillers[self.rng.integers(0, len(self.fillers), total)].copy()
        where = self.rng.permutation(total)[:k]
        arr[where] = q
        return self.fwd(arr)[where]


def numerics_section(model: nn.Module, data: Dataset, device: str, quick: bool, fps: dict[str, Fingerprint],
                     repeats: int) -> dict[str, Any]:
    from veriprint.targets import CallableTarget
    from veriprint.verification.verify import verify

    batches = QUICK_BATCHES if quick else BATCHES
    n = max(batches)
    x, _ = natural_views(data.x, n)
    x = x[:n].float()
    xs = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    with torch.inference_mode():
        cpu_ref = torch.cat([model(c) for c in torch.split(x, 64)]).float().numpy()
    on_device = not device.startswith("cpu")
    ref = make_forward(model, dataclasses.replace(_variant("fp32"), batch=1), device)(xs)
    rows, verdicts = [], []
    for name in NUMERICS:
        base = _variant(name)
        if base.cuda_only and not on_device:
            rows.append({"variant": name, "skipped": "CUDA only"})
            continue
        for b in batches:
            v = dataclasses.replace(base, batch=b)
            try:
                fwd = make_forward(model, v, device)
                got = fwd(xs)
            except Exception as e:  # a precision the device lacks: recorded, the run goes on
                rows.append({"variant": name, "batch": b, "error": f"{type(e).__name__}: {e}"[:300]})
                continue
            rows.append({"variant": name, "batch": b, "about": base.about,
                         "vs_device_fp32_b1": float(np.abs(got - ref).max()),
                         "vs_cpu_fp32": float(np.abs(got - cpu_ref).max()),
                         "top1_changed_vs_cpu": int((got.argmax(1) != cpu_ref.argmax(1)).sum())})
            for fp_name, fp in fps.items():
                for r in range(repeats):
                    target = CallableTarget(Embedded(fwd, b, xs, seed=1000 * r + b), output="logits")
                    rep = verify(fp, target, spec="top1")
                    verdicts.append({"fingerprint": fp_name, "variant": name, "batch": b, "repeat": r,
                                     "verdict": rep.verdict, "mismatches": rep.mismatches,
                                     "ambiguous": rep.ambiguous})
    return {"inputs": n, "batches": list(batches), "repeats": repeats, "deviation": rows, "verifications": verdicts}


def cpu_fingerprint(model: nn.Module, data: Dataset, quick: bool) -> tuple[Fingerprint, dict[str, Any]]:
    """A small fingerprint made on this machine's CPU (bag 32, 10 steps; quick: the default quick one)."""
    cfg = default_config("cpu", quick)
    if not quick:
        cfg = dataclasses.replace(cfg, bag=32, budget="120s", generation=GenerationConfig(steps=10))
    return run_fingerprint(copy.deepcopy(model).cpu(), data, cfg)


# -- the report ------------------------------------------------------------------------------------------------

def _e(x: Any) -> str:
    return "-" if x is None else f"{x:.2g}" if isinstance(x, float) else str(x)


def render(res: dict[str, Any], command: str) -> str:
    env = res["environment"]
    out = ["# The pipeline on a GPU", "",
           f"Generated by `{command}`; do not edit by hand. Subject: {res['subject']}. Device: {env['device_name']} "
           f"(torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, {env['cpu_threads']} CPU threads). "
           f"Whole run: {res['seconds']:.0f} s.", ""]
    a = res.get("default")
    if a:
        out += ["## a. The default fingerprint on the GPU", ""]
        if "error" in a:
            out += [f"Failed: `{a['error']}`", ""]
        else:
            out += [f"{a['seconds']:.1f} s in all; {a['plan_line']}.", "",
                    f"{a['queries']} queries ({a['pairs']} pairs) from a bag of {a['bag']}, {a['steps_run']} ascent "
                    f"steps; predicted coverage of ±5% single-parameter changes {_e(a['predicted_coverage'])}, "
                    f"reach (±5%, mean over tensors) {_e(a['reach_5pct'])}, floor {_e(a['floor'])}.", "", "```",
                    format_costs(a["stages"]), "```", ""]
    b = res.get("compiled")
    if b:
        out += ["## b. Compiled (every module but the last layer)", ""]
        if "error" in b:
            out += [f"Failed: `{b['error']}`", ""]
        else:
            out += [f"Backend {b['backend']}, mode {b['mode'] or 'default'}, {b['modules_compiled']} modules compiled. "
                    f"Generation of section a's bag ({b['bag']} seeds, batch {b['batch']}) for {b['steps']} steps "
                    f"without early stop: eager {b['eager_s']:.1f} s, compiled {b['compiled_s']:.1f} s "
                    f"({b['step_eager_s'] * 1e3:.1f} against {b['step_compiled_s'] * 1e3:.1f} ms per step of one "
                    f"batch); the first compiled run took {b['first_compiled_s']:.1f} s (compilation about "
                    f"{b['compile_s']:.1f} s), paid back after {_e(b['break_even_steps'])} steps. Samples that "
                    f"differ from the eager ones: {b['samples_differ']} of {b['bag']} (largest difference "
                    f"{b['samples_max_diff']:.2g}).", ""]
    c = res.get("scaling")
    if c:
        out += ["## c. Scaling on the GPU", ""]
        out += [f"Failed: `{c['error']}`", ""] if "error" in c else [c["report"].replace("# ", "### ", 1), ""]
    d = res.get("numerics")
    if d:
        out += ["## d. Deployment numerics on the GPU", ""]
        if "error" in d:
            out += [f"Failed: `{d['error']}`", ""]
        else:
            out += _numerics_tables(d)
    if res.get("cpu_fingerprint"):
        cf = res["cpu_fingerprint"]
        out += [f"The CPU-made fingerprint of section d: {cf.get('source', 'made here')}"
                + (f", {cf['seconds']:.0f} s, {cf['queries']} queries, floor {_e(cf['floor'])}."
                   if "seconds" in cf else "."), ""]
    return "\n".join(out) + "\n"


def _numerics_tables(d: dict[str, Any]) -> list[str]:
    out = [f"Largest logit change on {d['inputs']} natural inputs, against the float32 batch-1 answers on this "
           "device and against the CPU's float32 answers; top-1 changed: inputs whose label differs from the CPU's.",
           "", "| variant | batch | vs GPU fp32 batch 1 | vs CPU fp32 | top-1 changed |", "|---|---|---|---|---|"]
    for r in d["deviation"]:
        if "skipped" in r or "error" in r:
            out.append(f"| {r['variant']} | {r.get('batch', '-')} | {r.get('skipped') or r['error'][:80]} | | |")
        else:
            out.append(f"| {r['variant']} | {r['batch']} | {r['vs_device_fp32_b1']:.2g} | {r['vs_cpu_fp32']:.2g} "
                       f"| {r['top1_changed_vs_cpu']} |")
    out += ["", f"False alarms (verdict not INTACT) of the intact model, top-1 API, {d['repeats']} verifications "
            "per variant and batch size, queries shuffled into batches of natural inputs:", "",
            "| fingerprint | variant | verifications | INTACT | TAMPERED | INCONCLUSIVE |", "|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[str]] = {}
    for v in d["verifications"]:
        groups.setdefault((v["fingerprint"], v["variant"]), []).append(v["verdict"])
    for (fp, var), vs in groups.items():
        out.append(f"| {fp} | {var} | {len(vs)} | {vs.count('INTACT')} | {vs.count('TAMPERED')} "
                   f"| {vs.count('INCONCLUSIVE')} |")
    total = len(d["verifications"])
    alarms = sum(v["verdict"] != "INTACT" for v in d["verifications"])
    return [*out, "", f"In all: {alarms} false alarms in {total} verifications.", ""]


# -- the command -----------------------------------------------------------------------------------------------

def environment(device: str) -> dict[str, Any]:
    cuda = device.startswith("cuda")
    return {"device": device, "device_name": torch.cuda.get_device_name(torch.device(device)) if cuda
            else platform.processor() or platform.machine(), "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None, "cudnn": torch.backends.cudnn.version() if cuda else None,
            "cpu_threads": torch.get_num_threads(), "python": platform.python_version()}


def _guarded(res: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    log(f"section {key} ...")
    try:
        got = fn()
    except Exception as e:  # one section failing must not lose the others
        res[key] = {"error": f"{type(e).__name__}: {e}"[:500], "traceback": traceback.format_exc()[-3000:]}
        log(f"section {key} failed: {type(e).__name__}: {e}")
        return None
    log(f"section {key}: {time.perf_counter() - t0:.1f} s")
    return got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a dry run")
    p.add_argument("--quick", action="store_true", help="a tiny random CNN and tiny sizes (the dry run)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    p.add_argument("--repeats", type=int, default=None, help="verifications per fingerprint, variant and batch "
                   "size (default 4; quick 1)")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; "
                   "eager on the CPU, where inductor needs a C++ compiler)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--cpu-fingerprint", type=Path, default=None, help="a .vpf of the same model made on a CPU "
                   "(default: make a small one here, about a minute)")
    p.add_argument("--out", type=Path, default=None, help="Markdown report (default: stdout)")
    p.add_argument("--json", type=Path, default=None, help="JSON results")
    args = p.parse_args(argv)
    try:
        check_device(args.device)
    except ConfigError as e:
        print(f"error: {e}; this benchmark needs a GPU (or --device cpu --quick for a dry run)", file=sys.stderr)
        return 2
    device = args.device
    repeats = args.repeats or (1 if args.quick else 4)
    backend = args.compile_backend or ("eager" if device == "cpu" else "inductor")
    t0 = time.perf_counter()
    name, model, data = subject(args.quick)
    res: dict[str, Any] = {"subject": name, "environment": environment(device), "quick": args.quick}
    fps: dict[str, Fingerprint] = {}
    base: dict[str, Any] | None = None
    if "default" in args.sections or "compiled" in args.sections:
        got = _guarded(res, "default", lambda: run_fingerprint(model, data, default_config(device, args.quick)))
        if got is not None:
            fps[f"pipeline on {device} (a)"], base = got
            res["default"] = base
    if "compiled" in args.sections:
        if base is None:
            res["compiled"] = {"error": "section a did not run, so there is no plan to compile for"}
        else:
            b = base
            got = _guarded(res, "compiled", lambda: compiled_section(model, data, device, args.quick, b, backend,
                                                                     args.compile_mode))
            if got is not None:
                res["compiled"] = got
    if "scaling" in args.sections:
        res["scaling"] = _guarded(res, "scaling", lambda: _scaling(device)) or res.get("scaling")
    if "numerics" in args.sections:
        if args.cpu_fingerprint is not None:
            fps["made on the CPU"] = Fingerprint.load(args.cpu_fingerprint)  # as given
            res["cpu_fingerprint"] = {"source": str(args.cpu_fingerprint)}
        else:
            got = _guarded(res, "cpu_fingerprint", lambda: cpu_fingerprint(model, data, args.quick))
            if got is not None:
                fps["made on the CPU"], res["cpu_fingerprint"] = got
        got = _guarded(res, "numerics", lambda: numerics_section(model, data, device, args.quick, fps, repeats))
        if got is not None:
            res["numerics"] = got
    res["seconds"] = round(time.perf_counter() - t0, 1)
    command = "python -m benchmarks.speed.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(render(res, command), args.out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1, default=str))
    failed = [k for k in (*SECTIONS, "cpu_fingerprint") if isinstance(res.get(k), dict) and "error" in res[k]]
    if failed:
        log(f"failed sections: {', '.join(failed)}")
    return 1 if failed else 0


def _scaling(device: str) -> dict[str, Any]:
    import tempfile

    from benchmarks.speed import scaling

    with tempfile.TemporaryDirectory() as d:
        md, js = Path(d) / "scaling.md", Path(d) / "scaling.json"
        rc = scaling.main(["--quick", "--device", device, "--out", str(md), "--json", str(js)])
        if rc != 0:
            raise RuntimeError(f"benchmarks.speed.scaling exited with {rc}")
        return {"report": md.read_text(), "rows": json.loads(js.read_text())}


if __name__ == "__main__":
    raise SystemExit(main())
