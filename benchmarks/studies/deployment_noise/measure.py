"""Deployment noise, device side: run every variant, compare logits, verify fingerprints."""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.studies.deployment_noise._common import BUNDLE_FORMAT, SETS, SPECS
from benchmarks.studies.deployment_noise.bundle import _build, _log
from benchmarks.studies.deployment_noise.variants import VARIANTS, _read_flags, make_forward
from veriprint.numerics import softmax_np, top2_margin_np

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
    from veriprint.verification.verify import verify

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
