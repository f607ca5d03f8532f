"""Timing for the speed benchmarks: interleaved pairs, results, the reference models.

Timings on a shared machine are noisy, so every figure that matters is a ratio of two
things measured alternately in the same run (``a, b, b, a, a, b, ...``): the median of
the per-pair ratios, together with the medians of each side.

On a GPU, kernels run asynchronously: :func:`clock` waits for the device
(``torch.cuda.synchronize``) before reading the clock at both ends whenever CUDA is in
use in the process, so a timed call is charged for the device work it queued.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from veriprint.zoo import fashion_cnn

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Context:
    """How a benchmark run is done.

    Attributes:
        quick: small sizes and few repetitions (the CI mode).
        threads: torch intra-op threads for every timed call (on ``"cuda"``: for the
            work that stays on the CPU).
        seed: seed for models and data.
        device: ``"cpu"`` (default) or ``"cuda"``: where models and tensors live.
    """

    quick: bool = False
    threads: int = 1
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"expected device in {DEVICES}, got {self.device!r}")
        if self.threads < 1:
            raise ValueError(f"expected threads >= 1, got {self.threads}")

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def log(self, msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Goal:
    """A goal from the task and what was measured against it."""

    name: str
    measured: str
    target: str
    met: bool | None


@dataclass(frozen=True)
class Check:
    """A correctness check; a failed check fails the whole run."""

    name: str
    passed: bool
    detail: str


@dataclass
class Section:
    """One benchmark family's results, rendered as one Markdown section."""

    key: str
    title: str
    text: str
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Paired:
    """Medians of two alternately timed calls and of their per-pair ratio ``a / b``."""

    a: float
    b: float
    ratio: float
    reps: int


def sync() -> None:
    """Wait for queued GPU work when CUDA is in use in this process (a no-op on the CPU)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def clock(fn: Callable[[], object]) -> float:
    """Wall time of ``fn()``, including the GPU work it queues."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full float32 precision for matmuls and cuDNN convolutions inside the block.

    TF32 (on by default for cuDNN convolutions on Ampere and later GPUs) keeps 10
    mantissa bits; correctness checks in float32 run without it. A no-op on the CPU.
    """
    # Only flags that are on are switched (off, then on again): a flag is never written
    # needlessly, so the state torch's newer fp32_precision API reports round-trips.
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if matmul:
        torch.backends.cuda.matmul.allow_tf32 = False
    if cudnn:
        torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        if matmul:
            torch.backends.cuda.matmul.allow_tf32 = True
        if cudnn:
            torch.backends.cudnn.allow_tf32 = True


def paired(a: Callable[[], object], b: Callable[[], object], reps: int, *, warmup: int = 1,
           scale_a: float = 1.0, scale_b: float = 1.0) -> Paired:
    """Time ``a`` and ``b`` alternately ``reps`` times each (after ``warmup`` calls of each).

    ``scale_a``/``scale_b`` divide each side's time (e.g. by its number of samples), so
    the ratio compares per-sample costs.
    """
    for _ in range(warmup):
        a()
        b()
    ta, tb, ratios = [], [], []
    for i in range(reps):
        if i % 2:
            sb = clock(b) / scale_b
            sa = clock(a) / scale_a
        else:
            sa = clock(a) / scale_a
            sb = clock(b) / scale_b
        ta.append(sa)
        tb.append(sb)
        ratios.append(sa / sb)
    return Paired(statistics.median(ta), statistics.median(tb), statistics.median(ratios), reps)


def median_time(fn: Callable[[], object], reps: int, *, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(clock(fn) for _ in range(reps))


def cnn(classes: int, seed: int = 0, *, frozen: bool = True, device: str = "cpu") -> nn.Module:
    """The default Fashion-MNIST CNN (:func:`veriprint.zoo.fashion_cnn`) with ``classes``
    outputs (a wider last layer), seeded, in eval mode, on ``device``; parameters frozen as
    :func:`veriprint.models.load_model` leaves them unless ``frozen=False``. The weights
    are drawn on the CPU, so they are the same on every device."""
    torch.manual_seed(seed)
    model = fashion_cnn(num_classes=classes).eval()
    for p in model.parameters():
        p.requires_grad_(not frozen)
    return model.to(device)


def inputs(n: int, seed: int = 0, shape: tuple[int, ...] = (1, 28, 28), device: str = "cpu") -> torch.Tensor:
    """``n`` uniform inputs in [0, 1), drawn on the CPU (the same on every device), on ``device``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g).to(device)


def unit_step(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One plain forward and backward pass to the input: ``d sum(model(x)) / dx``."""

    def run() -> torch.Tensor:
        xx = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xx).sum(), xx)
        return g

    return run


def fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def fmt_x(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.0f}x"
