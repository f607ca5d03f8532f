"""Deployment noise: how far a GPU (or any device) deployment moves the logits of a model
whose fingerprint was made on the CPU, and whether that fingerprint still verifies.

Two modes. ``--prepare DIR`` (on the owner's CPU) trains or loads a few models, makes a
default fingerprint of each (small bag, modest generation steps) and writes a
self-contained bundle: weights (safetensors), the ``.vpf`` files, and for natural test
inputs, the fingerprint's samples and the whole refined bag, the CPU float32 and float64
logits (npz)::

    PYTHONPATH=src python3 -m benchmarks.deployment_noise --prepare .gpu/bundle

``--bundle DIR`` (on the target device) runs every model under each deployment variant
(float32 with TF32 off, torch's default flags, TF32 on, cudnn.benchmark, batch sizes 1, 8
and 64, autocast float16 and bfloat16, all weights float16 or bfloat16), compares the
logits with the CPU's, verifies the CPU-made fingerprint through a
:class:`~veriprint.targets.CallableTarget` under the specs top1, probs and logits, and
writes JSON, a Markdown report and a plot::

    PYTHONPATH=src python3 -m benchmarks.deployment_noise --bundle .gpu/bundle --device cuda \\
        --out deployment-noise.json --report docs/deployment-noise.md

A variant that cannot run on the device (TF32 on a CPU) is skipped with a note; one that
fails is recorded with its error and the run goes on. The run mode needs only torch,
numpy, safetensors (and matplotlib for the plot); without tqdm a silent stand-in is used.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib
import json
import math
import platform
import sys
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from veriprint.numerics import softmax_np, top2_margin_np

BUNDLE_FORMAT = "veriprint.deployment-noise-bundle"
BUNDLE_VERSION = 1
SPECS = ("top1", "probs", "logits")
SETS = ("natural", "fingerprint", "bag")


# --------------------------------------------------------------------------- prepare


@dataclass(frozen=True)
class Recipe:
    """How one bundled model is obtained and fingerprinted (prepare mode only)."""

    name: str
    factory: str
    kwargs: dict[str, Any]
    data: str
    about: str
    epochs: int = 1
    eps: float | None = None
    lr: float | None = None


RECIPES: dict[str, Recipe] = {
    "fashion-cnn": Recipe("fashion-cnn", "veriprint.zoo:fashion_cnn", {}, "fashion-mnist",
                          "the demo's reference BatchNorm CNN (veriprint.train.reference_model)"),
    "digits-mlp": Recipe("digits-mlp", "veriprint.zoo:digits_mlp", {}, "digits",
                         "LayerNorm/GELU MLP 64-64-32-10 trained on 8x8 digits",
                         epochs=20, eps=2 / 16, lr=1e-2),
    "fashion-mlp": Recipe("fashion-mlp", "veriprint.zoo:mlp", {"in_features": 784, "hidden": [256, 128]},
                          "fashion-mnist", "LayerNorm/GELU MLP 784-256-128-10 trained on 12,000 images"),
}


def _log(msg: str) -> None:
    print(f"[deployment-noise] {msg}", file=sys.stderr, flush=True)


def _build(factory: str, kwargs: dict[str, Any]) -> nn.Module:
    module, _, name = factory.partition(":")
    fn = getattr(importlib.import_module(module), name)
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    model: nn.Module = fn(**kw)
    return model


def _trained(recipe: Recipe, epochs: int | None = None) -> nn.Module:
    """The recipe's model, trained (seeded; one thread, faster for these sizes on a busy CPU)."""
    from veriprint.data import load_data
    from veriprint.train import TrainConfig, reference_model, train_

    if recipe.name == "fashion-cnn":
        model, _, _ = reference_model("fashion-mnist", progress=False)
        return model.eval()
    torch.manual_seed(0)
    model = _build(recipe.factory, recipe.kwargs)
    if recipe.data == "digits":
        data, batch = load_data("digits", split="train"), 32
    else:
        data, batch = load_data(recipe.data, split="train").subset(slice(0, 12000)), 64
    cfg = TrainConfig(epochs=recipe.epochs if epochs is None else epochs, batch_size=batch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_(model, data, cfg, progress=False)
    finally:
        torch.set_num_threads(threads)


@torch.inference_mode()
def _logits(model: nn.Module, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> np.ndarray:
    m = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    out: np.ndarray = m(x.to(dtype)).double().numpy()
    return out


def prepare(out: Path, models: list[str], *, bag: int, steps: int, natural: int,
            epochs: int | None = None) -> dict[str, Any]:
    """Write the bundle to ``out`` and return its manifest."""
    from veriprint.data import load_data
    from veriprint.generate import GenerationConfig
    from veriprint.models import save_weights
    from veriprint.pipeline import FingerprintConfig, make_fingerprint
    from veriprint.train import accuracy

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    entries = []
    for name in models:
        recipe = RECIPES[name]
        t0 = time.perf_counter()
        model = _trained(recipe, epochs)
        test = load_data(recipe.data, split="test")
        gen_kw: dict[str, Any] = {"steps": steps}
        if recipe.eps is not None:
            gen_kw["eps"] = recipe.eps
        if recipe.lr is not None:
            gen_kw["lr"] = recipe.lr
        cfg = FingerprintConfig(bag=bag, generation=GenerationConfig(**gen_kw))
        fp, gen, _ = make_fingerprint(model, test, cfg, progress=False, source=recipe.factory)
        fp = fp.save(out / f"{name}.vpf")
        save_weights(model, out / f"{name}.safetensors")
        x_nat = test.x[:natural].float()
        y_nat = test.y[:natural] if test.y is not None else torch.zeros(len(x_nat), dtype=torch.long)
        sets = {"natural": x_nat, "fingerprint": fp.samples, "bag": gen.samples}
        arrays: dict[str, np.ndarray] = {"natural_y": y_nat.numpy()}
        for key, x in sets.items():
            if key != "fingerprint":
                arrays[f"{key}_x"] = x.numpy().astype(np.float32)
            arrays[f"{key}_z32"] = _logits(model, x).astype(np.float32)
            arrays[f"{key}_z64"] = _logits(model, x.double(), torch.float64)
        if not np.array_equal(arrays["fingerprint_z32"], fp.expected.numpy()):
            _log(f"{name}: CPU logits of the fingerprint samples differ from the stored expected outputs")
        np.savez_compressed(out / f"{name}.npz", **arrays)  # type: ignore[arg-type]
        acc = accuracy(model, test)
        entries.append({
            "name": name, "factory": recipe.factory, "kwargs": recipe.kwargs, "about": recipe.about,
            "data": f"{recipe.data}/test", "weights": f"{name}.safetensors", "fingerprint": f"{name}.vpf",
            "arrays": f"{name}.npz", "epochs": None if name == "fashion-cnn" else (recipe.epochs if epochs is None else epochs),
            "test_accuracy": round(acc, 4), "natural": len(x_nat),
            "bag": len(gen), "samples": len(fp), "noise": fp.noise.to_dict(),
            "fingerprint_config": fp.meta["config"], "seconds": round(time.perf_counter() - t0, 1),
        })
        _log(f"{name}: accuracy {acc:.1%}, {len(fp)} samples, floor {fp.noise.floor:.3g}, "
             f"{time.perf_counter() - t0:.0f} s")
    manifest = {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
        "prepared": {"torch": torch.__version__, "python": platform.python_version(),
                     "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                     "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - start, 1),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "models": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# --------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One way of serving the same weights.

    Attributes:
        name: short name used in the report.
        about: what it is.
        batch: samples per forward pass (``None``: the whole set at once).
        tf32: TF32 for matmuls and convolutions (``None``: leave torch's defaults).
        benchmark: ``torch.backends.cudnn.benchmark``.
        autocast: ``torch.autocast`` dtype, or ``None``.
        weights: dtype of the weights and inputs (``model.half()``, ``model.to(bfloat16)``).
        cuda_only: meaningless off CUDA (skipped with a note).
    """

    name: str
    about: str
    batch: int | None = None
    tf32: bool | None = False
    benchmark: bool = False
    autocast: torch.dtype | None = None
    weights: torch.dtype = torch.float32
    cuda_only: bool = False


VARIANTS: tuple[Variant, ...] = (
    Variant("fp32", "float32, TF32 off, whole set in one batch"),
    Variant("defaults", "torch's default backend flags, untouched", tf32=None, cuda_only=True),
    Variant("tf32", "TF32 on for matmuls and cuDNN convolutions", tf32=True, cuda_only=True),
    Variant("cudnn.benchmark", "float32, TF32 off, cudnn.benchmark on", benchmark=True, cuda_only=True),
    Variant("batch=1", "float32, TF32 off, one sample per call", batch=1),
    Variant("batch=8", "float32, TF32 off, 8 samples per call", batch=8),
    Variant("batch=64", "float32, TF32 off, 64 samples per call", batch=64),
    Variant("autocast-fp16", "torch.autocast(dtype=float16)", autocast=torch.float16),
    Variant("autocast-bf16", "torch.autocast(dtype=bfloat16)", autocast=torch.bfloat16),
    Variant("half", "model.half(): float16 weights and inputs", weights=torch.float16),
    Variant("bfloat16", "model.to(bfloat16): bfloat16 weights and inputs", weights=torch.bfloat16),
)
FULL_PRECISION = ("fp32", "defaults", "tf32", "cudnn.benchmark", "batch=1", "batch=8", "batch=64")


def _cudnn() -> Any:
    """``torch.backends.cudnn`` (its ``conv`` sub-backend is added at run time)."""
    return torch.backends.cudnn


def _read_flags() -> dict[str, Any]:
    """The backend flags in effect: TF32 as the legacy API reports it, else the newer
    per-backend ``fp32_precision`` (torch >= 2.9 refuses legacy reads after new writes)."""
    getters: tuple[tuple[str, Callable[[], Any]], ...] = (
        ("matmul.allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32),
        ("cudnn.allow_tf32", lambda: torch.backends.cudnn.allow_tf32),
        ("matmul.fp32_precision", lambda: torch.backends.cuda.matmul.fp32_precision),
        ("cudnn.conv.fp32_precision", lambda: _cudnn().conv.fp32_precision),
        ("cudnn.benchmark", lambda: torch.backends.cudnn.benchmark),
    )
    flags: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, get in getters:
            try:
                value = get()
            except Exception:  # a torch without the flag, or one that refuses to read it
                continue
            flags[key] = value if isinstance(value, str) else bool(value)
    return flags


def _get_tf32() -> tuple[str, Any, Any]:
    """``(api, matmul, conv)``: the TF32 settings, read through whichever API allows it."""
    try:
        return "legacy", torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    except RuntimeError:
        return "new", torch.backends.cuda.matmul.fp32_precision, _cudnn().conv.fp32_precision


def _set_tf32(api: str, matmul: Any, conv: Any) -> None:
    if api == "legacy":
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = conv
    else:
        torch.backends.cuda.matmul.fp32_precision = matmul
        _cudnn().conv.fp32_precision = conv


@contextlib.contextmanager
def _flags(variant: Variant) -> Iterator[None]:
    """Set TF32 and cudnn.benchmark for one call, then restore them.

    TF32 is set through the legacy ``allow_tf32`` flags, or through ``fp32_precision``
    where torch refuses the legacy API.
    """
    if variant.tf32 is None and not variant.benchmark:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = _get_tf32()
        bench = torch.backends.cudnn.benchmark
        if variant.tf32 is not None:
            on = variant.tf32 if saved[0] == "legacy" else ("tf32" if variant.tf32 else "ieee")
            _set_tf32(saved[0], on, on)
        torch.backends.cudnn.benchmark = variant.benchmark
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _set_tf32(*saved)
            torch.backends.cudnn.benchmark = bench


class DeviceForward:
    """A function from a float32 NumPy batch to float32 logits, run as ``variant`` on ``device``.

    Attributes:
        flags: the backend flags in effect during the last call.
    """

    def __init__(self, model: nn.Module, variant: Variant, device: str) -> None:
        self.model = copy.deepcopy(model).to(device=device, dtype=variant.weights).eval()
        self.variant = variant
        self.device = device
        self.flags: dict[str, Any] = {}
        self.__name__ = f"{variant.name}@{device}"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        v = self.variant
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device).to(v.weights)
        outs = []
        with _flags(v), torch.inference_mode():
            self.flags = _read_flags()
            for chunk in torch.split(t, v.batch or max(len(t), 1)):
                if v.autocast is not None:
                    with torch.autocast(device_type=torch.device(self.device).type, dtype=v.autocast):
                        out = self.model(chunk)
                else:
                    out = self.model(chunk)
                outs.append(out.float().cpu())
        return torch.cat(outs).numpy()


def make_forward(model: nn.Module, variant: Variant, device: str) -> DeviceForward:
    """The model served as ``variant`` on ``device`` (a copy; ``model`` stays on the CPU)."""
    return DeviceForward(model, variant, device)


# --------------------------------------------------------------------------- measuring


_softmax = softmax_np
_margins = top2_margin_np


def deviation(got: np.ndarray, z32: np.ndarray, z64: np.ndarray, floor: float) -> dict[str, Any]:
    """Deviation of ``got`` from the CPU's float32 and float64 logits on one set.

    Percentiles are over samples, of each sample's largest ``|Δ logit|``.
    ``top1_changed`` counts samples whose top-1 label differs from the CPU's;
    ``top1_changed_decided`` those of them whose CPU margin is at least ``floor`` (they
    would have been false alarms under ``top1`` had they been fingerprint samples).
    """
    g = got.astype(np.float64)
    d32 = np.abs(g - z32.astype(np.float64)).max(axis=1)
    d64 = np.abs(g - z64).max(axis=1)
    dp = np.abs(_softmax(g) - _softmax(z32)).max(axis=1)
    changed = g.argmax(1) != z32.argmax(1)
    return {
        "n": len(g),
        "max_logit": float(d32.max()), "p999_logit": float(np.percentile(d32, 99.9)),
        "max_logit_f64": float(d64.max()), "p999_logit_f64": float(np.percentile(d64, 99.9)),
        "max_prob": float(dp.max()),
        "top1_changed": int(changed.sum()),
        "top1_changed_decided": int((changed & (_margins(z32) >= floor)).sum()),
    }


def needed_tolerances(got: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    """Smallest declared tolerances under which the fingerprint samples would match.

    ``logit`` (spec logits) is the largest ``|Δ logit|``; ``prob`` (spec probs) the
    largest ``|Δ p|``; ``top1`` is half the largest CPU margin among samples whose label
    changed (the margin floor is ``2 * declared``), 0 when none changed.
    """
    g, z = got.astype(np.float64), expected.astype(np.float64)
    changed = g.argmax(1) != z.argmax(1)
    return {
        "logit": float(np.abs(g - z).max()),
        "prob": float(np.abs(_softmax(g) - _softmax(z)).max()),
        "top1": float(_margins(z)[changed].max() / 2) if changed.any() else 0.0,
    }


def _verify_all(fp: Any, fwd: Callable[[np.ndarray], np.ndarray], batch: int | None) -> dict[str, Any]:
    from veriprint.targets import CallableTarget
    from veriprint.verify import verify

    out = {}
    for spec in SPECS:
        r = verify(fp, CallableTarget(fwd, output="logits", max_batch=batch), spec=spec)
        out[spec] = {"verdict": r.verdict, "mismatches": r.mismatches, "ambiguous": r.ambiguous,
                     "compared": r.compared, "reason": r.reason}
    return out


def _with_declared(fp: Any, logit: float, prob: float) -> Any:
    """The fingerprint with tolerances declared (samples unchanged; the floor rises)."""
    noise = dataclasses.replace(fp.noise, declared=logit, declared_prob=prob)
    return dataclasses.replace(fp, noise=noise)


def _ensure_tqdm() -> bool:
    """Install a silent stand-in for tqdm when it is missing; True if one was installed.

    The library imports tqdm at module level for progress bars that verification never
    shows; a bare device machine may not have it.
    """
    try:
        import tqdm.auto  # noqa: F401
        return False
    except ImportError:
        pass

    class _Bar:
        def __init__(self, iterable: Any = None, *args: Any, **kwargs: Any) -> None:
            self.iterable = iterable

        def __iter__(self) -> Iterator[Any]:
            return iter(self.iterable or ())

        def __enter__(self) -> _Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, *args: Any) -> None:
            return None

        def set_postfix(self, *args: Any, **kwargs: Any) -> None:
            return None

        def close(self) -> None:
            return None

    root = types.ModuleType("tqdm")
    auto = types.ModuleType("tqdm.auto")
    root.tqdm = auto.tqdm = _Bar  # type: ignore[attr-defined]
    root.auto = auto  # type: ignore[attr-defined]
    sys.modules["tqdm"], sys.modules["tqdm.auto"] = root, auto
    return True


def _environment(device: str, tqdm_stub: bool) -> dict[str, Any]:
    env: dict[str, Any] = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
                           "numpy": np.__version__, "default_flags": _read_flags(), "tqdm_stand_in": tqdm_stub}
    try:
        if torch.device(device).type == "cuda":
            env["device_name"] = torch.cuda.get_device_name(torch.device(device))
            env["cuda"] = torch.version.cuda
            env["cudnn"] = torch.backends.cudnn.version()
            env["capability"] = list(torch.cuda.get_device_capability(torch.device(device)))
        else:
            env["device_name"] = platform.processor() or platform.machine()
            env["threads"] = torch.get_num_threads()
    except Exception as e:  # a description, not a result: never worth a failed run
        env["device_name"] = f"{device} ({type(e).__name__}: {e})"
    return env


def run_bundle(bundle: Path, device: str, variants: list[str] | None = None, *,
               time_limit: float = 150.0) -> dict[str, Any]:
    """Measure every bundled model under every variant on ``device``.

    Variants still waiting when ``time_limit`` seconds have passed are skipped with a note.
    """
    tqdm_stub = _ensure_tqdm()
    from safetensors.torch import load_file

    from veriprint.fingerprint import Fingerprint

    manifest = json.loads((bundle / "manifest.json").read_text())
    if manifest.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{bundle}: expected a {BUNDLE_FORMAT} manifest, got {manifest.get('format')!r}")
    on_cuda = torch.device(device).type == "cuda"
    chosen = [v for v in VARIANTS if variants is None or v.name in variants]
    start = time.perf_counter()
    env = _environment(device, tqdm_stub)
    results = []
    for entry in manifest["models"]:
        model = _build(entry["factory"], entry["kwargs"])
        model.load_state_dict(load_file(str(bundle / entry["weights"])))
        model.eval()
        fp = Fingerprint.load(bundle / entry["fingerprint"])
        with np.load(bundle / entry["arrays"]) as z:
            arrays = {k: z[k] for k in z.files}
        inputs = {"natural": arrays["natural_x"], "fingerprint": fp.samples.numpy(), "bag": arrays["bag_x"]}
        floor = fp.noise.floor
        cpu_f64 = {s: float(np.abs(arrays[f"{s}_z32"].astype(np.float64) - arrays[f"{s}_z64"]).max())
                   for s in SETS}
        rows = []
        for v in chosen:
            row: dict[str, Any] = {"variant": v.name, "about": v.about}
            if v.cuda_only and not on_cuda:
                rows.append({**row, "status": "skipped", "note": f"needs cuda, device is {device}"})
                continue
            if time.perf_counter() - start > time_limit:
                rows.append({**row, "status": "skipped", "note": f"time limit of {time_limit:g} s reached"})
                continue
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    fwd = make_forward(model, v, device)
                    got = {s: fwd(x) for s, x in inputs.items()}
                    row["flags"] = fwd.flags
                    row["sets"] = {s: deviation(got[s], arrays[f"{s}_z32"], arrays[f"{s}_z64"], floor)
                                   for s in SETS}
                    row["verify"] = _verify_all(fp, fwd, v.batch)
                    need = needed_tolerances(got["fingerprint"], fp.expected.numpy())
                    row["needed"] = need
                    declared = _with_declared(fp, need["logit"] * 1.01, need["prob"] * 1.01)
                    row["verify_declared"] = _verify_all(declared, fwd, v.batch)
                row["warnings"] = sorted({str(w.message).splitlines()[0][:200] for w in caught})
                row["status"] = "ok"
            except Exception as e:  # a variant the device cannot run is a result, not a crash
                row["status"] = "error"
                row["error"] = f"{type(e).__name__}: {e}"[:500]
                row["traceback"] = traceback.format_exc(limit=3)[-1500:]
            row["seconds"] = round(time.perf_counter() - t0, 3)
            rows.append(row)
            _log(f"{entry['name']} {v.name}: {row['status']} ({row['seconds']:.1f} s)")
        results.append({
            "model": entry["name"], "about": entry["about"], "data": entry["data"],
            "test_accuracy": entry["test_accuracy"], "samples": len(fp), "natural": len(inputs["natural"]),
            "bag": len(inputs["bag"]), "noise": fp.noise.to_dict(),
            "fingerprint_margins": [float(m) for m in fp.margin], "cpu_fp32_vs_f64": cpu_f64, "rows": rows,
        })
    env["seconds"] = round(time.perf_counter() - start, 1)
    return {"environment": env, "prepared": manifest["prepared"], "variants": [v.name for v in chosen],
            "specs": list(SPECS), "models": results}


# --------------------------------------------------------------------------- report


def _e(x: float | None) -> str:
    return "-" if x is None else ("0" if x == 0 else f"{x:.2g}")


def _verdict(r: dict[str, Any]) -> str:
    if r["verdict"] == "INTACT":
        return "INTACT" + (f" ({r['ambiguous']} amb.)" if r["ambiguous"] else "")
    return f"**{r['verdict']}** ({r['mismatches']}/{r['compared']})"


def _model_tables(m: dict[str, Any]) -> list[str]:
    nz = m["noise"]
    lines = [
        f"### {m['model']}",
        "",
        f"{m['about']}; {m['data']}, test accuracy {m['test_accuracy']:.1%}. Fingerprint: {m['samples']} "
        f"samples, margins {_e(min(m['fingerprint_margins']))}..{_e(max(m['fingerprint_margins']))}; "
        f"margin floor {_e(nz['floor'])}, logit tolerance {_e(nz['logit_tolerance'])}, probability "
        f"tolerance {_e(nz['prob_tolerance'])} (calibrated on the CPU: {', '.join(nz['variants'])}). "
        f"CPU float32 vs float64: {_e(m['cpu_fp32_vs_f64']['natural'])} (natural), "
        f"{_e(m['cpu_fp32_vs_f64']['fingerprint'])} (fingerprint).",
        "",
        f"Deviation from the CPU's float32 logits ({m['natural']} natural inputs, the {m['samples']} "
        f"fingerprint samples, the {m['bag']} refined bag samples):",
        "",
        "| variant | max \\|Δz\\| natural | p99.9 | max \\|Δz\\| vs f64 | max \\|Δp\\| | top-1 changed "
        "(natural) | top-1 changed, margin ≥ floor (bag) | max \\|Δz\\| fingerprint |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in m["rows"]:
        if r["status"] != "ok":
            note = r.get("note") or r.get("error", "")
            lines.append(f"| {r['variant']} | {r['status']}: {note} | | | | | | |")
            continue
        n, b, f = r["sets"]["natural"], r["sets"]["bag"], r["sets"]["fingerprint"]
        lines.append(f"| {r['variant']} | {_e(n['max_logit'])} | {_e(n['p999_logit'])} | "
                     f"{_e(n['max_logit_f64'])} | {_e(n['max_prob'])} | {n['top1_changed']}/{n['n']} | "
                     f"{b['top1_changed_decided']}/{b['n']} | {_e(f['max_logit'])} |")
    lines += [
        "",
        "Verification of the CPU-made fingerprint (mismatches/compared when not INTACT), the smallest "
        "declared tolerances that would have matched every fingerprint sample (as a multiple of the "
        "fingerprint's logit tolerance), and the verdicts with those tolerances declared on the same "
        "samples (amb.: samples whose margin is now inside the raised floor, so top1 no longer checks them):",
        "",
        "| variant | top1 | probs | logits | needed logits | × logit tol. | needed probs | needed top1 "
        "| with declared: top1 / probs / logits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in m["rows"]:
        if r["status"] != "ok":
            continue
        v, need, dec = r["verify"], r["needed"], r["verify_declared"]
        ratio = need["logit"] / nz["logit_tolerance"]
        lines.append(f"| {r['variant']} | {_verdict(v['top1'])} | {_verdict(v['probs'])} | "
                     f"{_verdict(v['logits'])} | {_e(need['logit'])} | {ratio:.3g} | {_e(need['prob'])} | "
                     f"{_e(need['top1'])} | {' / '.join(_verdict(dec[s]) for s in SPECS)} |")
    return [*lines, ""]


def _round_up(x: float) -> float:
    """``x`` rounded up to one significant digit."""
    if x <= 0:
        return 0.0
    p = 10 ** math.floor(math.log10(x))
    return float(math.ceil(x / p - 1e-9) * p)


def summarize(res: dict[str, Any]) -> list[str]:
    """The "what this means" paragraphs, computed from the results."""
    ok = [(m, r) for m in res["models"] for r in m["rows"] if r["status"] == "ok"]
    if not ok:
        return ["No variant ran."]
    by_variant: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for m, r in ok:
        by_variant.setdefault(r["variant"], []).append((m, r))
    clean = [v for v, mr in by_variant.items()
             if all(r["verify"][s]["verdict"] == "INTACT" for _, r in mr for s in SPECS)]
    def failed(r: dict[str, Any]) -> str:
        return ", ".join(f"{s}: {r['verify'][s]['verdict']} {r['verify'][s]['mismatches']}/"
                         f"{r['verify'][s]['compared']}" for s in SPECS if r["verify"][s]["verdict"] != "INTACT")

    alarms = [f"{r['variant']} on {m['model']} ({failed(r)})" for m, r in ok if failed(r)]
    out = []
    dev = res["environment"].get("device_name", res["environment"]["device"])
    out.append(f"On {dev} ({res['environment']['device']}, torch {res['environment']['torch']}), "
               f"{len(clean)} of {len(by_variant)} variants verified INTACT under top1, probs and logits for "
               f"every model: {', '.join(clean) or 'none'}. "
               + (f"False alarms (not INTACT although the weights are unchanged): {'; '.join(alarms)}."
                  if alarms else "No variant raised a false alarm."))
    full = [(m, r) for m, r in ok if r["variant"] in FULL_PRECISION]
    low = [(m, r) for m, r in ok if r["variant"] not in FULL_PRECISION]
    min_tol = min(m["noise"]["logit_tolerance"] for m in res["models"])
    min_floor = min(m["noise"]["floor"] for m in res["models"])
    for label, group in (("float32-weight variants", full), ("reduced-precision variants", low)):
        if not group:
            continue
        worst_m, worst_r = max(group, key=lambda mr: max(mr[1]["sets"][s]["max_logit"] for s in SETS))
        worst = max(worst_r["sets"][s]["max_logit"] for s in SETS)
        need = max(r["needed"]["logit"] for _, r in group)
        need_p = max(r["needed"]["prob"] for _, r in group)
        amb_m, amb_r = max(group, key=lambda mr: mr[1]["needed"]["logit"])
        amb = amb_r["verify_declared"]["top1"]
        changed = sum(r["sets"]["natural"]["top1_changed"] for _, r in group)
        total = sum(r["sets"]["natural"]["n"] for _, r in group)
        out.append(
            f"The {label} ({', '.join(sorted({r['variant'] for _, r in group}))}) moved logits by at most "
            f"{_e(worst)} on any input ({worst_r['variant']} on {worst_m['model']}), "
            f"{worst / min_tol:.3g}× the smallest logit tolerance ({_e(min_tol)}) and "
            f"{worst / min_floor:.3g}× the smallest margin floor ({_e(min_floor)}) of these fingerprints; "
            f"top-1 labels of natural inputs changed in {changed} of {total} predictions. "
            f"On the fingerprint samples the largest deviation was {_e(need)} in logits and {_e(need_p)} in "
            f"probabilities: declaring `FingerprintConfig(tolerance={_round_up(need):g}, "
            f"prob_tolerance={_round_up(need_p):g})` covers them"
            + (" (the default tolerances already do)." if need <= min_tol else
               f". That raises the margin floor to {_round_up(need) * 2:g}, so the fingerprint has to be made "
               "with it: declared only at verification, it leaves "
               f"{amb['ambiguous']} of the {amb['compared']} samples of {amb_m['model']} under {amb_r['variant']} "
               "inside the floor, where top1 no longer checks them."))
    risky = [(m, r) for m, r in ok if r["sets"]["bag"]["top1_changed_decided"]]
    if risky:
        worst_m, worst_r = max(risky, key=lambda mr: mr[1]["sets"]["bag"]["top1_changed_decided"])
        b = worst_r["sets"]["bag"]
        out.append(f"Among the refined bag samples (all candidates for the fingerprint, margins just above "
                   f"the CPU floor), {b['top1_changed_decided']} of {b['n']} changed their top-1 label under "
                   f"{worst_r['variant']} on {worst_m['model']}: that is the chance per sample of a top1 false "
                   "alarm when such a deployment is checked with the default tolerances.")
    else:
        out.append("No refined bag sample with a margin above the floor changed its top-1 label under any "
                   "variant.")
    return out


def render(res: dict[str, Any], plot: str | None = None) -> str:
    """The Markdown report."""
    env, prep = res["environment"], res["prepared"]
    lines = [
        "# Deployment noise: CPU-made fingerprints on another device",
        "",
        "Generated by `benchmarks/deployment_noise.py` (do not edit by hand). The fingerprints were made "
        f"on the CPU (torch {prep['torch']}, {prep['machine']}, {prep['threads']} threads, {prep['created']}); "
        f"the variants ran on {env.get('device_name', '?')} ({env['device']}), torch {env['torch']}"
        + (f", CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}" if "cuda" in env else "")
        + f", in {env['seconds']} s. torch's default flags there: "
        + ", ".join(f"{k}={v}" for k, v in env["default_flags"].items()) + ".",
        "",
        "## What this means",
        "",
        *[p + "\n" for p in summarize(res)],
        "## Variants",
        "",
        "| variant | what |",
        "|---|---|",
        *[f"| {v.name} | {v.about} |" for v in VARIANTS if v.name in res["variants"]],
        "",
        "Δz: largest |logit difference| of a sample against the CPU's float32 logits (p99.9: 99.9th "
        "percentile over samples of that largest difference), or against float64 (vs f64). top-1 changed "
        "(bag): refined bag samples whose CPU margin clears the fingerprint's floor yet whose label changed; "
        "each would be a top1 false alarm had it been picked. needed logits/probs/top1: the smallest "
        "`tolerance` / `prob_tolerance` / top1 tolerance (half the largest margin among changed labels) under "
        "which every fingerprint sample matches.",
        "",
        "## Results per model",
        "",
    ]
    for m in res["models"]:
        lines += _model_tables(m)
    if plot:
        lines += [f"![largest logit deviation per variant]({plot})", ""]
    return "\n".join(lines)


def plot_deviation(res: dict[str, Any], path: Path) -> bool:
    """One PNG: largest |Δ logit| (all sets) per variant and model, log axis."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = res["variants"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, m in enumerate(res["models"]):
        xs, ys = [], []
        for r in m["rows"]:
            if r["status"] == "ok":
                xs.append(names.index(r["variant"]))
                ys.append(max(max(r["sets"][s]["max_logit"] for s in SETS), 1e-9))
        line = ax.plot(xs, ys, "o", label=m["model"], alpha=0.8)[0]
        ax.axhline(m["noise"]["logit_tolerance"], color=line.get_color(), ls="--", lw=0.8,
                   label="logit tolerance (dashed, per model)" if i == 0 else None)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_ylabel("max |logit - CPU float32 logit|")
    ax.set_title(f"{res['environment'].get('device_name', res['environment']['device'])}: deviation per "
                 "variant (dashed: each fingerprint's logit tolerance; 0 shown as 1e-9)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- CLI


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
