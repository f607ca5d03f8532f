"""The machine's speed on a model, calibrated once and cached: what the plan converts counted work with.

The plan (:mod:`.plan`) counts the work a fingerprint run will do (passes through the
model, rows, batch sizes per stage) and converts it to seconds with a :class:`Speed`: the
seconds one pass of each kind takes over a batch, measured at the batch sizes the run
will use. A load on the machine can only slow a timing down, so each point is the
fastest of several repeated timings, after a warm-up. The result is stored in a small
per-user cache (:func:`cache_dir`), one JSON file per machine and model shape
(:func:`speed_facts`), and later runs reuse it instead of timing again, so the plan of a
run does not depend on how busy the machine is when it starts. ``recalibrate=True``
(``veriprint fingerprint --recalibrate``) measures again and replaces the stored points.

The kinds of pass (:data:`OPS`): ``forward`` (inference), ``step`` (the ascent's
objective and its gradient to the input), ``backward`` (a margin and its gradient to the
input: refinement, twins, selection) and ``served`` (inference through the copy of the
model in a device profile's numerics, which the straddle stage runs).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veriprint.models import OutputKind

__all__ = ["OPS", "Speed", "cache_dir", "calibrate_speed", "speed_facts"]

log = logging.getLogger(__name__)

#: The kinds of pass a speed holds (see the module's docs).
OPS = ("forward", "step", "backward", "served")
#: Timed runs per batch size (after one warm-up); the fastest counts.
REPEATS = 5
#: Short passes are timed again until their timings add up to this many seconds, at
#: most :data:`MAX_REPEATS` times.
MIN_TOTAL_S = 1.0
MAX_REPEATS = 200
#: Cache format version: a file of another version is measured again.
CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where calibrated speeds are kept: ``$VERIPRINT_SPEED_CACHE``, else ``speed/`` under
    ``$VERIPRINT_CACHE``, ``$XDG_CACHE_HOME/veriprint`` or ``~/.cache/veriprint``."""
    if os.environ.get("VERIPRINT_SPEED_CACHE"):
        return Path(os.environ["VERIPRINT_SPEED_CACHE"])
    if os.environ.get("VERIPRINT_CACHE"):
        return Path(os.environ["VERIPRINT_CACHE"]) / "speed"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "veriprint" / "speed"


@dataclass(frozen=True)
class Speed:
    """Seconds per batch of each kind of pass, at measured batch sizes.

    Attributes:
        points: for each kind of pass (:data:`OPS`), ``{batch size: seconds of one pass
            over a batch of that size}``.
        bytes_per_sample: bytes of the tensors autograd keeps for one backward pass, per
            sample (counted, not timed).
        device: where the model runs.
        key: the cache file's key (empty for a speed made by hand).
        cached: read from the cache rather than measured by this run.
        seconds: what measuring took in this run (0 when all came from the cache).
    """

    points: Mapping[str, Mapping[int, float]]
    bytes_per_sample: int
    device: str = "cpu"
    key: str = ""
    cached: bool = False
    seconds: float = 0.0

    @classmethod
    def per_sample(cls, *, forward_s: float, step_s: float, backward_s: float, bytes_per_sample: int,
                   served_s: float | None = None, device: str = "cpu") -> Speed:
        """A speed proportional to the batch: each kind of pass costs its seconds per
        sample, with no per-batch overhead (for tests and what-if plans)."""
        costs = {"forward": forward_s, "step": step_s, "backward": backward_s,
                 "served": forward_s if served_s is None else served_s}
        return cls({k: {1: v} for k, v in costs.items()}, bytes_per_sample, device)

    def batch_s(self, op: str, n: int) -> float:
        """Seconds of one ``op`` pass over a batch of ``n``: the measured point, else the
        straight line through the two nearest (an overhead plus a cost per sample, the
        cost never negative), or proportional to ``n`` from a single point."""
        if n <= 0:
            return 0.0
        pts = sorted(self.points.get(op, {}).items())
        if not pts:
            raise KeyError(f"expected a calibrated speed for {op!r} passes, got only {sorted(self.points)}")
        if len(pts) == 1:
            b, s = pts[0]
            return s * n / b
        exact = dict(pts)
        if n in exact:
            return exact[n]
        lo, hi = (pts[0], pts[1]) if n < pts[0][0] else (pts[-2], pts[-1])
        for left, right in itertools.pairwise(pts):
            if left[0] < n < right[0]:
                lo, hi = left, right
                break
        slope = max(0.0, (hi[1] - lo[1]) / (hi[0] - lo[0]))
        return max(0.0, lo[1] + slope * (n - lo[0]))

    def over(self, op: str, n: int, batch: int, passes: float = 1.0) -> float:
        """Seconds of ``passes`` ``op`` passes over ``n`` items in batches of ``batch``
        (the last one partial)."""
        if n <= 0 or passes <= 0:
            return 0.0
        batch = max(1, min(batch, n))
        full, rest = divmod(n, batch)
        return passes * (full * self.batch_s(op, batch) + self.batch_s(op, rest))

    def to_dict(self) -> dict[str, Any]:
        return {"points": {op: {str(b): round(s, 6) for b, s in sorted(p.items())} for op, p in self.points.items()},
                "bytes_per_sample": self.bytes_per_sample, "device": self.device, "key": self.key,
                "cached": self.cached, "seconds": round(self.seconds, 3)}


def speed_facts(model: nn.Module, x: torch.Tensor, generation: Any, *, model_outputs: OutputKind = "logits",
                profile: str = "cpu/fp32") -> dict[str, Any]:
    """What a calibrated speed depends on: the machine (processor, cores, threads), torch
    and the device, the model's architecture (class, parameter and buffer shapes and
    count), the input shape, the objective, and the device profile. Two runs with the same
    facts share one cache file."""
    from veriprint.models import model_device

    dev = model_device(model)
    shapes = [(n, tuple(t.shape), str(t.dtype)) for n, t in (*model.named_parameters(), *model.named_buffers())]
    arch = hashlib.sha256(repr((type(model).__qualname__, shapes)).encode()).hexdigest()[:16]
    return {
        "machine": platform.machine(),
        "processor": _processor(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(dev) + (f" {torch.cuda.get_device_name(dev)}" if dev.type == "cuda"
                              and torch.cuda.is_available() else ""),
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "architecture": arch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "input": [*x.shape[1:]],
        "objective": [generation.objective, generation.params, generation.outputs, model_outputs],
        "profile": profile,
    }


def _processor() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _key(facts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]


def _read(path: Path, facts: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored entry at ``path`` when it is for ``facts``; None when missing or unreadable."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or d.get("version") != CACHE_VERSION or d.get("facts") != json.loads(
            json.dumps(facts)):
        return None
    return d


def _write(path: Path, entry: dict[str, Any]) -> None:
    """Store ``entry`` atomically; a cache that cannot be written is warned about, not fatal."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError as e:
        log.warning("could not store the calibrated speed in %s (%s); the next run measures again", path, e)


def calibrate_speed(model: nn.Module, x: torch.Tensor, generation: Any, *, batches: Mapping[str, Iterable[int]],
                    model_outputs: OutputKind = "logits", served: nn.Module | None = None,
                    profile: str = "cpu/fp32", recalibrate: bool = False, directory: Path | None = None,
                    repeats: int = REPEATS) -> Speed:
    """The :class:`Speed` of ``model`` on inputs like ``x`` at the batch sizes ``batches``
    asks for (``{op: sizes}``), from the cache where it holds them, measured (and stored)
    where it does not, or all measured again with ``recalibrate``.

    Args:
        model: the model, on the device it runs on.
        x: a few real inputs (repeated to fill a batch larger than them).
        generation: the :class:`~veriprint.pipeline.generate.GenerationConfig` (its objective).
        batches: the batch sizes to know, per kind of pass (:data:`OPS`); ``served``
            needs ``served``.
        model_outputs: ``"logits"`` or ``"probs"``.
        served: the model as the device profile runs it (:func:`veriprint.deployments.profiles.served`).
        profile: the profile's name, part of the cache key.
        recalibrate: measure every point again and replace the stored ones.
        directory: the cache (default :func:`cache_dir`).
        repeats: timed runs per point; the fastest counts.
    """
    from veriprint.models import model_device

    facts = speed_facts(model, x, generation, model_outputs=model_outputs, profile=profile)
    key = _key(facts)
    path = (directory or cache_dir()) / f"{key}.json"
    entry = None if recalibrate else _read(path, facts)
    stored: dict[str, dict[int, float]] = {op: {int(b): float(s) for b, s in p.items()}
                                           for op, p in (entry or {}).get("points", {}).items()}
    dev = model_device(model)
    want = {op: sorted({max(1, int(b)) for b in sizes}) for op, sizes in batches.items()}
    missing = {op: [b for b in sizes if b not in stored.get(op, {})] for op, sizes in want.items()}
    missing = {op: sizes for op, sizes in missing.items() if sizes}
    bytes_per_sample = int(entry["bytes_per_sample"]) if entry and "bytes_per_sample" in entry else 0
    t0 = time.perf_counter()
    if missing or not bytes_per_sample:
        runners = _runners(model, x.detach().float().to(dev), generation, model_outputs, served)
        for op, sizes in missing.items():
            for b in sizes:
                stored.setdefault(op, {})[b] = _fastest(runners[op], b, dev, repeats)
        if not bytes_per_sample:
            bytes_per_sample = _saved_bytes(model, x.detach().float().to(dev), model_outputs)
        _write(path, {"version": CACHE_VERSION, "facts": facts, "bytes_per_sample": bytes_per_sample,
                      "points": {op: {str(b): s for b, s in sorted(p.items())} for op, p in stored.items()},
                      "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    seconds = time.perf_counter() - t0
    return Speed({op: dict(p) for op, p in stored.items()}, bytes_per_sample, dev.type, key,
                 cached=not missing and entry is not None, seconds=seconds if missing else 0.0)


def _fill(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows of ``x``, repeated as needed."""
    return x[torch.arange(n, device=x.device) % len(x)]


def _fastest(run: Callable[[int], None], n: int, dev: torch.device, repeats: int) -> float:
    """The fastest of at least ``repeats`` timings of ``run`` on a batch of ``n`` (after a
    warm-up), repeated while they add up to less than :data:`MIN_TOTAL_S` (at most
    :data:`MAX_REPEATS`): on a busy machine a short pass is often held up for a whole
    time slice, and only some of many tries run undisturbed. On a GPU each timing waits
    for its kernels."""
    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    run(n)
    best, spent, tries = math.inf, 0.0, 0
    while tries < max(1, repeats) or (spent < MIN_TOTAL_S and tries < MAX_REPEATS):
        sync()
        t = time.perf_counter()
        run(n)
        sync()
        took = time.perf_counter() - t
        best, spent, tries = min(best, took), spent + took, tries + 1
    return best


def _runners(model: nn.Module, x: torch.Tensor, generation: Any, model_outputs: OutputKind,
             served: nn.Module | None) -> dict[str, Callable[[int], None]]:
    """One pass of each kind over a batch of ``n`` rows of ``x``."""
    from veriprint.pipeline.generate import _closed_form_layer, _objective
    from veriprint.pipeline.refinement import label_margin

    with torch.no_grad():
        labels = model(x).argmax(dim=1)
    last = _closed_form_layer(model, x, generation, model_outputs) if generation.steps else None

    def forward(n: int) -> None:
        with torch.inference_mode():
            model(_fill(x, n))

    def step(n: int) -> None:
        xr = _fill(x, n).clone().requires_grad_(True)
        with torch.enable_grad():
            v = _objective(model, xr, generation, model_outputs, last)
            torch.autograd.grad(v.sum(), xr)

    def backward(n: int) -> None:
        xr = _fill(x, n).clone().requires_grad_(True)
        with torch.enable_grad():
            m = label_margin(model, xr, _fill(labels, n), model_outputs)
            torch.autograd.grad(m.sum(), xr)

    def serve(n: int) -> None:
        if served is None:
            raise ValueError("expected the served model to time 'served' passes, got none")
        with torch.no_grad():
            served(_fill(x, n))

    return {"forward": forward, "step": step, "backward": backward, "served": serve}


def _saved_bytes(model: nn.Module, x: torch.Tensor, model_outputs: OutputKind) -> int:
    """Bytes of the tensors autograd keeps for one margin's backward pass, per sample."""
    from veriprint.pipeline.refinement import label_margin

    with torch.no_grad():
        labels = model(x).argmax(dim=1)
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    xr = x.clone().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m = label_margin(model, xr, labels, model_outputs)
    del m
    return max(1, saved[0] // len(x))
