"""Deployment noise: the variants (flags, precisions, batch sizes) a model is run under."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


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
