"""What each stage of the pipeline costs: seconds, samples through the model, peak memory.

:class:`CostMeter` times the stages of one :func:`~veriprint.pipeline.make_fingerprint`
run and counts the samples that pass through the model's first layer, split into those
run with gradients (each followed by a backward pass, in practice) and those without.
Counting at the first layer catches every way a stage runs the model (whole, split into
body and head, through ``torch.func``), at the price of counting a vmapped batch once;
passes through a compiled module (``torch.compile``) are not counted.
Each stage also records the process's peak resident memory at its end (``peak_mb``, a
running maximum: the stage where it jumps is the one that needed it). The result is stored
in ``meta["stages"]`` and printed by ``veriprint fingerprint``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["CostMeter", "format_costs"]


class CostMeter:
    """Per-stage seconds and model passes of one pipeline run (see the module's docs)."""

    def __init__(self, model: nn.Module) -> None:
        self.stages: dict[str, dict[str, float]] = {}
        self._forward = 0
        self._backward = 0
        first = next((m for m in model.modules() if not list(m.children()) and any(
            True for _ in m.parameters(recurse=False))), None)
        self._hook = None if first is None else first.register_forward_hook(self._count)
        dev = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
        self._cuda = dev if dev.type == "cuda" else None
        if self._cuda is not None:
            torch.cuda.reset_peak_memory_stats(self._cuda)

    def _count(self, _m: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
        if torch.compiler.is_compiling():  # traced into a compiled module: a counter there recompiles every call
            return
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        n = int(x.shape[0]) if x is not None and x.dim() > 0 else 1
        if torch.is_grad_enabled():
            self._backward += n
        else:
            self._forward += n

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block and count its passes under ``name`` (added to earlier ones).

        On a GPU the block is timed to the end of its kernels, and the GPU's peak
        allocated memory so far is recorded too (``peak_gpu_mb``, a running maximum).
        """
        self._sync()
        start, f0, b0 = time.perf_counter(), self._forward, self._backward
        try:
            yield
        finally:
            self._sync()
            row = self.stages.setdefault(name, {"seconds": 0.0, "forward": 0, "forward_backward": 0})
            row["seconds"] = round(row["seconds"] + time.perf_counter() - start, 3)
            row["peak_mb"] = _peak_mb()
            if self._cuda is not None:
                row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self._cuda) / 2**20, 1)
            row["forward"] += self._forward - f0
            row["forward_backward"] += self._backward - b0

    def _sync(self) -> None:
        if self._cuda is not None:
            torch.cuda.synchronize(self._cuda)

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def report(self) -> dict[str, dict[str, float]]:
        return {k: dict(v) for k, v in self.stages.items()}


def _peak_mb() -> float:
    """The process's peak resident memory so far, in MiB (0 where the platform cannot say)."""
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return round(kb / 1024, 1)
    except (ImportError, OSError):  # pragma: no cover
        return 0.0


def format_costs(stages: dict[str, dict[str, float]]) -> str:
    """A small table of ``meta["stages"]``: seconds and samples through the model per stage."""
    if not stages:
        return ""
    total = sum(v["seconds"] for v in stages.values()) or 1.0
    gpu = any("peak_gpu_mb" in v for v in stages.values())
    lines = [f"{'stage':<10} {'seconds':>8} {'share':>6} {'forward':>9} {'fwd+bwd':>9} {'peak MB':>8}"
             + (f" {'GPU MB':>8}" if gpu else "")]
    for name, v in stages.items():
        lines.append(f"{name:<10} {v['seconds']:>8.2f} {v['seconds'] / total:>6.0%} {int(v['forward']):>9} "
                     f"{int(v['forward_backward']):>9} {v.get('peak_mb', 0):>8.0f}"
                     + (f" {v.get('peak_gpu_mb', 0):>8.0f}" if gpu else ""))
    return "\n".join(lines)
