"""Deployments of a model for the studies: simulated (kernels, threads, precision, ONNX
Runtime) and real (MLServer, TorchServe) CPU deployments, the zoo the studies fingerprint, the
tamper suite, and counting false alarms; :mod:`benchmarks.studies.deployments` is the study
that runs them (its docstring describes each deployment)."""

from __future__ import annotations

import copy
import math
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from veriprint.data import Dataset, load_data
from veriprint.deployments.profiles import DeviceProfile, served
from veriprint.fingerprint import Fingerprint
from veriprint.targets import CallableTarget, QueryBatch, Target, TorchTarget, open_target
from veriprint.verification.specs import parse_spec
from veriprint.verification.verify import verify

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
        from benchmarks.lib.kernel_worker import KernelWorker

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
    """The detection-power suite's cases (benchmarks/lib/models.py), with half its
    training steps (a quarter in quick mode, which also has one random draw per layer and
    no backdoors), and the 14 single-parameter edits this benchmark has always served
    (x1.05 of the largest and of three random weights of the first, middle and last weight
    layer, the largest and one random bias of the last; one random draw per layer in quick
    mode), after the weight noise; the trojan's trigger patch is at most a third of the
    image side."""
    import dataclasses

    from benchmarks.lib.models import cases
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
        from testkit.servers.mlserver import serving_venv
    except ImportError as e:
        log(f"{name} helpers unavailable ({e}); skipping it")
        return False
    if not (serving_venv() / "bin" / binary).exists():
        log(f"{name} is not installed (scripts/setup-serving.sh); skipping it")
        return False
    return True


def _mlserver(paths: list[Path]) -> Any:
    """MLServer serving every ONNX file of ``paths`` (named by its stem)."""
    if not _installed("MLServer", "mlserver", "testkit.servers.mlserver"):
        return None
    from testkit.servers.mlserver import MLServer, ServedModel

    srv = MLServer(Path(tempfile.mkdtemp(prefix="deployments-mlserver-")),
                   [ServedModel(p.stem, p) for p in paths])
    srv.start(timeout=300)
    return srv


def _torchserve(paths: list[Path], preload: str) -> Any:
    """TorchServe with every ONNX file of ``paths`` in its store; only ``preload`` loaded."""
    if not _installed("TorchServe", "torchserve", "testkit.servers.torchserve"):
        return None
    from testkit.servers.torchserve import TorchServe, TsModel

    ts = TorchServe(Path(tempfile.mkdtemp(prefix="deployments-torchserve-")),
                    [TsModel(p.stem, p) for p in paths], preload=[preload])
    ts.start(timeout=300)
    return ts
