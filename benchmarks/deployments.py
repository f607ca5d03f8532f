"""False alarms and detection per CPU deployment, for four kinds of fingerprint.

    python -m benchmarks.deployments --out docs/measurements/deployments-measured.md --json /tmp/deployments.json \\
        --plot docs/guide/deployments.png
    python -m benchmarks.deployments --quick --out /tmp/deployments.md      # one small model, a few minutes
    python -m benchmarks.deployments --models fashion-cnn --deployments TorchServe "ATen default" --json cnn.json

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
  ``tests/servers/ts_handler.py``), verified through veriprint's HTTP targets. The
  tampered copies are served by the same server: MLServer loads all of them at start,
  TorchServe registers one at a time beside the intact model. Their detection is compared
  case by case with in-process onnxruntime (all graph optimizations, what both run);
- **kernels** (:mod:`benchmarks.kernel_worker`): a child process started with
  ``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA`` or ``MKL_ENABLE_INSTRUCTIONS`` (only the
  ATen levels this CPU runs), serving the intact model and every tampered copy: the
  kernels of a CPU of another vector width, on this CPU (not another CPU model).

``--deployments`` measures only some; ``--render A.json B.json`` writes the report of a
run again from its JSON files (one per model, say), and ``--render`` repeated puts several
runs in one report, each deployment measured in more than one run named with its run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.common import write_report  # noqa: E402
from veriprint.data import Dataset, load_data  # noqa: E402
from veriprint.deployments.profiles import DeviceProfile, served  # noqa: E402
from veriprint.enrollment import EnrollmentError, enroll  # noqa: E402
from veriprint.errors import ConfigError  # noqa: E402
from veriprint.fingerprint import Fingerprint  # noqa: E402
from veriprint.pipeline import FingerprintConfig, make_fingerprint  # noqa: E402
from veriprint.pipeline.generate import GenerationConfig  # noqa: E402
from veriprint.targets import CallableTarget, QueryBatch, Target, TorchTarget, open_target  # noqa: E402
from veriprint.verification.specs import parse_spec  # noqa: E402
from veriprint.verification.verify import verify  # noqa: E402

SPECS = ("top1", "logits")
KINDS = ("fixed floor", "measured floor", "profile", "enrolled", "enrolled, profiled pool", "declared")
#: Kind names of reports written before the kinds were named by their floor.
LEGACY_KINDS = {"default": "fixed floor"}


def log(msg: str) -> None:
    print(f"[deployments] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Deployment:
    """One way of serving a model on this CPU.

    Attributes:
        name: short name.
        what: what differs from the fingerprinting numerics.
        precision: the profile that matches it (``None``: float32, the default).
        make: model -> Target serving it in this process (``None``: ``server`` or ``kernels``).
        server: ``"mlserver"`` or ``"torchserve"``: a real server on 127.0.0.1 serves it.
        kernels: kernel variables of a child process that serves it
            (:class:`benchmarks.kernel_worker.KernelWorker`).
        tampers: whether tampered copies are served this way (detection measured).
    """

    name: str
    what: str
    precision: str | None
    make: Callable[[nn.Module], Target] | None = None
    server: str | None = None
    kernels: dict[str, str] | None = None
    tampers: bool = True


def _onnx_target(model: nn.Module, example: torch.Tensor, optimize: bool, threads: int = 1,
                 denormal_zero: bool = False) -> Target:
    import onnxruntime as ort

    from veriprint.models.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as d:
        path = export_onnx(model, example, Path(d) / "m.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                         else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        if denormal_zero:
            opts.add_session_config_entry("session.set_denormal_as_zero", "1")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0])

    run.__name__ = f"onnxruntime-{'opt' if optimize else 'noopt'}"
    return CallableTarget(run)


#: Kernel deployments: (name, what, variables, the ATen capability it needs on this CPU).
KERNELS: list[tuple[str, str, dict[str, str], str]] = [
    ("ATen default", "child process, ATEN_CPU_CAPABILITY=default (no AVX2/AVX-512 ATen kernels)",
     {"ATEN_CPU_CAPABILITY": "default"}, "DEFAULT"),
    ("ATen AVX2", "child process, ATEN_CPU_CAPABILITY=avx2", {"ATEN_CPU_CAPABILITY": "avx2"}, "AVX2"),
    ("ATen AVX-512", "child process, ATEN_CPU_CAPABILITY=avx512 (this CPU's own level: the control)",
     {"ATEN_CPU_CAPABILITY": "avx512"}, "AVX512"),
    ("oneDNN SSE4.1", "child process, ONEDNN_MAX_CPU_ISA=SSE41", {"ONEDNN_MAX_CPU_ISA": "SSE41"}, "DEFAULT"),
    ("oneDNN AVX2", "child process, ONEDNN_MAX_CPU_ISA=AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "DEFAULT"),
    ("MKL AVX2", "child process, MKL_ENABLE_INSTRUCTIONS=AVX2", {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, "DEFAULT"),
    ("all kernels lowest", "child process, ATen default, oneDNN SSE4.1 and MKL SSE4.2 at once",
     {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
     "DEFAULT"),
]
_LEVELS = ("DEFAULT", "AVX2", "AVX512")


def deployments(example: torch.Tensor) -> list[Deployment]:
    def torch_in(precision: str | None, threads: int) -> Callable[[nn.Module], Target]:
        def make(m: nn.Module) -> Target:
            prof = DeviceProfile("cpu", precision or "fp32")
            return TorchTarget(served(m, prof), threads=threads)
        return make

    here = torch.backends.cpu.get_cpu_capability()
    level = _LEVELS.index(here) if here in _LEVELS else 0
    kernels = [Deployment(n, w, None, kernels=env) for n, w, env, need in KERNELS if _LEVELS.index(need) <= level]
    return [
        Deployment("exact CPU", "torch float32, 1 thread: the numerics that made the fingerprints", None,
                   torch_in(None, 1)),
        Deployment("2 threads", "torch float32, 2 threads", None, torch_in(None, 2)),
        Deployment("onnxruntime, optimized", "onnxruntime CPU, all graph optimizations (fusions)", None,
                   lambda m: _onnx_target(m, example, True)),
        Deployment("onnxruntime, plain", "onnxruntime CPU, graph optimizations off", None,
                   lambda m: _onnx_target(m, example, False)),
        Deployment("onnxruntime, 2 threads", "onnxruntime CPU, all graph optimizations, intra_op_num_threads=2",
                   None, lambda m: _onnx_target(m, example, True, threads=2)),
        Deployment("onnxruntime, denormals zero", "onnxruntime CPU, all graph optimizations, "
                   "session.set_denormal_as_zero=1", None, lambda m: _onnx_target(m, example, True,
                                                                                denormal_zero=True)),
        Deployment("autocast-bf16", "torch.autocast(cpu, bfloat16), float32 weights", "autocast-bf16",
                   torch_in("autocast-bf16", 1)),
        Deployment("bf16 weights", "model.to(bfloat16), bfloat16 inputs", "bf16", torch_in("bf16", 1)),
        Deployment("float64", "model.double(), answers rounded to float32", "fp64", torch_in("fp64", 1)),
        Deployment("MLServer", "MLServer 1.7 over REST, onnxruntime runtime, 1 thread", None, server="mlserver"),
        Deployment("TorchServe", "TorchServe 0.12 over HTTP, onnxruntime handler, 1 thread", None,
                   server="torchserve"),
        *kernels,
    ]


#: Where a deployment's detection is compared case by case (default: the exact CPU).
REFERENCE = {"MLServer": "onnxruntime, optimized", "TorchServe": "onnxruntime, optimized"}


class Fleet:
    """The intact model (index 0) and its tampered copies, as one deployment serves them.

    Args:
        target: index -> the Target answering for that model.
        stop: shuts the serving down (server, child process).
    """

    def __init__(self, target: Callable[[int], Target], stop: Callable[[], object] | None = None) -> None:
        self.target = target
        self._stop = stop

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()


def open_fleet(d: Deployment, models: list[nn.Module], example: torch.Tensor, name: str, classes: int,
               workdir: Path) -> Fleet | None:
    """Serve ``models`` the way ``d`` does; ``None`` where that server is not installed."""
    if d.make is not None:
        make = d.make
        return Fleet(lambda i: make(models[i]))
    if d.kernels is not None:
        from benchmarks.kernel_worker import KernelWorker

        worker = KernelWorker(models, d.kernels, workdir / f"kernels-{zlib.crc32(d.name.encode())}.pt")
        want = d.kernels.get("ATEN_CPU_CAPABILITY", torch.backends.cpu.get_cpu_capability()).upper()
        if worker.info["aten"] != want:
            worker.stop()
            raise RuntimeError(f"{d.name}: expected the child to run ATen {want}, it runs {worker.info['aten']}")

        def kernel_target(i: int) -> Target:
            def run(x: np.ndarray) -> np.ndarray:
                return worker.run(i, x)
            run.__name__ = f"kernels-{d.name}-{i}"
            return CallableTarget(run)
        return Fleet(kernel_target, worker.stop)
    assert d.server is not None
    names = [name] + [f"{name}-t{i}" for i in range(1, len(models))]
    paths = _export_all(models, example, names, workdir / d.server)
    if d.server == "mlserver":
        srv = _mlserver(paths)
        if srv is None:
            return None
        return Fleet(lambda i: open_target(srv.url(names[i]), classes=classes), srv.stop)
    ts = _torchserve(paths, names[0])
    if ts is None:
        return None
    loaded = {"tampered": ""}

    def ts_target(i: int) -> Target:  # one tampered copy loaded at a time, beside the intact model
        if i > 0 and loaded["tampered"] != names[i]:
            if loaded["tampered"]:
                ts.unregister(loaded["tampered"])
            ts.register(names[i])
            loaded["tampered"] = names[i]
        return open_target(ts.url(names[i]), classes=classes)
    return Fleet(ts_target, ts.stop)


def _export_all(models: list[nn.Module], example: torch.Tensor, names: list[str], d: Path) -> list[Path]:
    from veriprint.models.onnx_export import export_onnx

    d.mkdir(parents=True, exist_ok=True)
    return [export_onnx(copy.deepcopy(m), example, d / f"{n}.onnx") for m, n in zip(models, names, strict=True)]


# --- models -------------------------------------------------------------------------------


@dataclass
class Zoo:
    name: str
    what: str
    model: nn.Module
    train: Dataset
    test: Dataset


def zoo(quick: bool, only: list[str] | None) -> list[Zoo]:
    from veriprint.demo import load_shipped
    from veriprint.models import load_model
    from veriprint.models.train import TrainConfig, train_
    from veriprint.zoo import digits_mlp, fashion_mlp, pretrained_mnist

    names = ["digits-mlp"] if quick else ["digits-mlp", "fashion-mlp", "fashion-cnn", "pretrained-mnist"]
    out = []
    for name in names:
        if only and name not in only:
            continue
        torch.manual_seed(0)
        if name == "digits-mlp":
            tr, te = load_data("digits", split="train"), load_data("digits", split="test")
            m = train_(digits_mlp(), tr, TrainConfig(epochs=20, batch_size=32), progress=False)
            out.append(Zoo(name, "LayerNorm/GELU MLP on 8x8 digits, trained here", m, tr, te))
        elif name == "fashion-mlp":
            tr = load_data("fashion-mnist", split="train", limit=12000)
            te = load_data("fashion-mnist", split="test", limit=2000)
            m = train_(fashion_mlp(), tr, TrainConfig(epochs=2), progress=False)
            out.append(Zoo(name, "LayerNorm/GELU MLP on Fashion-MNIST, trained here", m, tr, te))
        elif name == "fashion-cnn":
            s = load_shipped()
            m = load_model(s.factory, weights=s.weights)
            tr = load_data("fashion-mnist", split="train", limit=6000)
            te = load_data("fashion-mnist", split="test", limit=2000)
            out.append(Zoo(name, "the demo's shipped BatchNorm CNN", m, tr, te))
        else:
            tr, te = load_data("mnist-5k", split="train"), load_data("mnist-5k", split="test")
            out.append(Zoo(name, "third-party pretrained MNIST CNN (veriprint.zoo:pretrained_mnist)",
                           pretrained_mnist(), tr, te))
        out[-1].model.eval()
    return out


def tamper_suite(model: nn.Module, quick: bool, side: int) -> list[tuple[str, Any]]:
    """The detection-power suite's cases (benchmarks/detection_power.py), with half its
    training steps (a quarter in quick mode, which also has one random draw per layer and
    no backdoors), and the 14 single-parameter edits this benchmark has always served
    (x1.05 of the largest and of three random weights of the first, middle and last weight
    layer, the largest and one random bias of the last; one random draw per layer in quick
    mode), after the weight noise; the trojan's trigger patch is at most a third of the
    image side."""
    import dataclasses

    from benchmarks.detection_power import cases
    from veriprint.tamper import TrojanConfig, WeightEditConfig

    weights = [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2]
    biases = [n for n, _ in model.named_parameters() if n.endswith("bias")]
    edits: list[tuple[str, Any]] = []
    for tag, layer in (("first", weights[0]), ("middle", weights[len(weights) // 2]), ("last", weights[-1])):
        edits.append((f"one weight x1.05, {tag} layer, largest",
                      WeightEditConfig(layer=layer, amount=0.05, select="largest")))
        for s in (1,) if quick else (1, 2, 3):
            edits.append((f"one weight x1.05, {tag} layer, random #{s}",
                          WeightEditConfig(layer=layer, amount=0.05, seed=s)))
    edits.append(("one bias x1.05, last layer, largest",
                  WeightEditConfig(layer=biases[-1], amount=0.05, select="largest")))
    edits.append(("one bias x1.05, last layer, random #1", WeightEditConfig(layer=biases[-1], amount=0.05, seed=1)))
    out = []
    for name, cfg in cases(model, quick, 0.25 if quick else 0.5, side):
        if isinstance(cfg, TrojanConfig) and cfg.size > side // 3:
            cfg = dataclasses.replace(cfg, size=max(1, side // 3))
        out.append((name, cfg))
        if name.startswith("noise"):
            out += edits
    return out


# --- the checks -----------------------------------------------------------------------------


@dataclass
class Tally:
    intact: int = 0
    alarms: int = 0
    inconclusive: int = 0

    def add(self, mismatch: np.ndarray, ambiguous: np.ndarray) -> None:
        if mismatch.any():
            self.alarms += 1
        elif ambiguous.all():
            self.inconclusive += 1
        else:
            self.intact += 1


@dataclass
class Row:
    model: str
    deployment: str
    kind: str
    samples: int
    floor: float
    ambiguous: dict[str, int]
    tally: dict[str, Tally] = field(default_factory=dict)
    caught: dict[str, int] = field(default_factory=dict)
    cases: int = 0
    note: str = ""
    #: the cases caught, per spec (rows of runs before it was kept have none)
    caught_cases: dict[str, list[str]] = field(default_factory=dict)
    #: the largest |answer - expected logit| over the kind's samples and every check (NaN: not kept)
    max_dz: float = float("nan")
    #: which run of a report made from several (``--render`` repeated; 0: this one)
    run: int = 0


def _answers(tgt: Target, x: np.ndarray, natural: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``tgt``'s answers to ``x``, sent shuffled among up to 63 natural inputs in requests
    of random sizes; the rows of ``x``, in order."""
    k = int(rng.integers(0, 64))
    mix = np.concatenate([x, natural[rng.choice(len(natural), size=k, replace=False)]])
    order = rng.permutation(len(mix))
    out: np.ndarray | None = None
    lo = 0
    while lo < len(mix):
        size = int(rng.integers(1, 65))
        idx = order[lo: lo + size]
        ans = np.asarray(tgt.query(QueryBatch(mix[idx].astype(np.float32))), dtype=np.float64)
        if out is None:
            out = np.empty((len(mix), ans.shape[1]))
        out[idx] = ans
        lo += size
    assert out is not None
    return out[: len(x)]


def false_alarms(fps: dict[str, Fingerprint], tgt: Target, natural: np.ndarray, checks: int,
                 seed: int) -> tuple[dict[str, dict[str, Tally]], dict[str, float]]:
    """Per kind and spec, the verdicts of ``checks`` verifications with varied batches; per
    kind, the largest distance of an answered logit from the stored one."""
    names = list(fps)
    xs = [fps[k].samples.numpy() for k in names]
    cuts = np.cumsum([0] + [len(x) for x in xs])
    x_all = np.concatenate(xs)
    specs = {s: parse_spec(s) for s in SPECS}
    out = {k: {s: Tally() for s in SPECS} for k in names}
    dz = dict.fromkeys(names, 0.0)
    rng = np.random.default_rng(seed)
    for _ in range(checks):
        ans = _answers(tgt, x_all, natural, rng)
        for j, k in enumerate(names):
            a = ans[cuts[j]: cuts[j + 1]]
            z = fps[k].expected_logits.numpy()
            dz[k] = max(dz[k], float(np.abs(a - z).max()))
            for s, spec in specs.items():
                cmp = spec.compare(z, a, "logits", fps[k].noise)
                out[k][s].add(cmp.mismatch, cmp.ambiguous)
    return out, dz


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
           f"Generated by `python -m benchmarks.deployments {shlex.join(sys.argv[1:])}` in "
           f"{(time.perf_counter() - start) / 60:.1f} min; do not edit by hand. Machine: {mach['cpu']}, torch "
           f"{torch.__version__}, ATen at {mach['aten']} in this process. Each kernel deployment is a child process "
           "started with the variables named (benchmarks/kernel_worker.py): it emulates the kernels of a CPU of "
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


def machine() -> dict[str, Any]:
    """What the report says of the machine: the CPU, torch's ATen level, onnxruntime's providers."""
    import platform

    import onnxruntime as ort

    from veriprint.demo import cpu_model

    cpu = cpu_model() or platform.machine()
    return {"cpu": cpu, "aten": torch.backends.cpu.get_cpu_capability(), "onnxruntime": ort.__version__,
            "providers": ort.get_available_providers()}


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
            cmds.append(f"`python -m benchmarks.deployments {raw.get('command', '--json ' + path.name)}`")
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
                          f"`python -m benchmarks.deployments {shlex.join(sys.argv[1:])}`)", mach=mach)
    write_report(text, args.out)
    if args.plot:
        plot(flat, args.plot)
    return 0


def _row_dict(r: Row) -> dict[str, Any]:
    d = {k: v for k, v in vars(r).items() if k != "tally"}
    d["tally"] = {s: vars(t) for s, t in r.tally.items()}
    return d


def _strict(v: Any) -> Any:
    """``v`` with every NaN float replaced by ``None``, so the JSON written is standard
    (``null``, not ``NaN``, which strict parsers refuse)."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    return v


def _row_from(d: dict[str, Any]) -> Row:
    """A row read back from the JSON: ``null`` floats (not measured) become NaN again."""
    tally = {s: Tally(**t) for s, t in d.pop("tally").items()}
    d["kind"] = LEGACY_KINDS.get(d["kind"], d["kind"])
    for k in ("floor", "max_dz"):
        if k in d and d[k] is None:
            d[k] = math.nan
    return Row(**d, tally=tally)


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


def detected(rows: list[Row], model: str, d: Deployment, kinds: dict[str, Fingerprint], cases: list[str],
             fleet: Fleet) -> None:
    """Verify every kind against each tampered copy (model ``i + 1`` of ``fleet``) once."""
    mine = {r.kind: r for r in rows if r.model == model and r.deployment == d.name}
    for i, case in enumerate(cases, start=1):
        tgt = fleet.target(i)
        for k, fp in kinds.items():
            r = mine[k]
            for s in SPECS:
                if verify(fp, tgt, spec=s).verdict == "TAMPERED":
                    r.caught[s] = r.caught.get(s, 0) + 1
                    r.caught_cases.setdefault(s, []).append(case)
                else:
                    r.caught.setdefault(s, 0)
                    r.caught_cases.setdefault(s, [])
    for k in kinds:
        mine[k].cases = len(cases)


def _installed(name: str, binary: str, module: str) -> bool:
    """Whether the test servers' helpers (``module``) import and ``binary`` is in the serving
    venv (else the reason is logged and the deployment skipped)."""
    import importlib

    try:
        importlib.import_module(module)
        from servers.mlserver import serving_venv
    except ImportError as e:
        log(f"{name} helpers unavailable ({e}); skipping it")
        return False
    if not (serving_venv() / "bin" / binary).exists():
        log(f"{name} is not installed (scripts/setup-serving.sh); skipping it")
        return False
    return True


def _mlserver(paths: list[Path]) -> Any:
    """MLServer serving every ONNX file of ``paths`` (named by its stem)."""
    if not _installed("MLServer", "mlserver", "servers.mlserver"):
        return None
    from servers.mlserver import MLServer, ServedModel

    srv = MLServer(Path(tempfile.mkdtemp(prefix="deployments-mlserver-")),
                   [ServedModel(p.stem, p) for p in paths])
    srv.start(timeout=300)
    return srv


def _torchserve(paths: list[Path], preload: str) -> Any:
    """TorchServe with every ONNX file of ``paths`` in its store; only ``preload`` loaded."""
    if not _installed("TorchServe", "torchserve", "servers.torchserve"):
        return None
    from servers.torchserve import TorchServe, TsModel

    ts = TorchServe(Path(tempfile.mkdtemp(prefix="deployments-torchserve-")),
                    [TsModel(p.stem, p) for p in paths], preload=[preload])
    ts.start(timeout=300)
    return ts


# --- the report -------------------------------------------------------------------------------


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
    cmd = command or f"`python -m benchmarks.deployments {shlex.join(sys.argv[1:])}`"
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
