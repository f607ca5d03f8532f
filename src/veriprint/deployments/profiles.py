"""Device profiles: the device and precision a model is served with.

A fingerprint stores the outputs the intact model gives and the noise around them. When
the deployment runs other numerics than the machine that made the fingerprint (a GPU with
TF32, half-precision weights, bfloat16 autocast), its answers sit systematically away from
float32 CPU outputs (``docs/measurements/deployment-noise.md``: up to 0.07 in logits). A profile makes
the fingerprint describe the serving numerics instead: :func:`served` wraps the model so
that it runs on that device, in that precision, and answers float32 on the CPU; the
expected outputs and the noise floor are then computed through the wrapper.

Precisions (each a separate name; they give different numbers):

* ``fp32``: float32 weights and inputs (TF32 explicitly off on CUDA); the default.
* ``tf32``: float32 weights and inputs with TF32 matmuls and convolutions (CUDA only).
* ``fp16`` / ``bf16``: the weights and inputs cast to float16 / bfloat16
  (``model.half()``, ``model.to(torch.bfloat16)``), as a server that stores them so does.
* ``autocast-fp16`` / ``autocast-bf16``: float32 weights, run under ``torch.autocast``
  with that dtype (matmuls and convolutions in reduced precision, the rest float32).
* ``fp64``: the model and inputs in float64.

The default profile (``cpu``, ``fp32``) returns the model itself, so fingerprints made
with it are bit-identical to those made before profiles existed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from veriprint.errors import ConfigError

__all__ = ["DEFAULT_PROFILE", "PRECISIONS", "DeviceProfile", "Precision", "check_device", "served", "tf32"]

Precision = Literal["fp32", "tf32", "fp16", "bf16", "autocast-fp16", "autocast-bf16", "fp64"]
#: Every precision a profile may name.
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16", "autocast-fp16", "autocast-bf16", "fp64")

_DEVICE = re.compile(r"^(cpu|cuda(:\d{1,3})?)$")
_CAST = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
_AUTOCAST = {"autocast-fp16": torch.float16, "autocast-bf16": torch.bfloat16}


@dataclass(frozen=True)
class DeviceProfile:
    """Where and in what precision the deployment runs the model.

    Args:
        device: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``.
        precision: one of :data:`PRECISIONS` (default ``"fp32"``); ``tf32`` needs CUDA.

    Raises:
        ConfigError: an unknown device or precision, or TF32 on the CPU.
    """

    device: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise ConfigError(f"expected device cpu, cuda or cuda:N, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"expected precision one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "tf32" and self.device == "cpu":
            raise ConfigError("expected precision tf32 with a cuda device (TF32 is a GPU mode), got device cpu")

    @property
    def is_default(self) -> bool:
        """Whether this is float32 on the CPU, the numerics fingerprints always had."""
        return self.device == "cpu" and self.precision == "fp32"

    @property
    def resolution(self) -> float:
        """Relative spacing of the logits this deployment answers with (machine epsilon).

        float32 (also for ``fp64``: the fingerprint stores float32), 2**-10 for TF32 (its
        mantissa), and the epsilon of float16 / bfloat16 for the half precisions, with or
        without autocast (an autocast linear layer answers in the reduced dtype). Another
        kernel rounding the last bit the other way moves a logit by this much times its
        magnitude, which no measurement on one machine can show.
        """
        if self.precision == "tf32":
            return 2.0**-10
        dtype = {"fp16": torch.float16, "autocast-fp16": torch.float16, "bf16": torch.bfloat16,
                 "autocast-bf16": torch.bfloat16}.get(self.precision, torch.float32)
        return float(torch.finfo(dtype).eps)

    @property
    def half(self) -> bool:
        """Whether this deployment answers in a 16-bit float (float16 or bfloat16 weights, or
        autocast): logits rounded in steps of 0.01-0.06 at their usual sizes."""
        return self.precision in ("fp16", "bf16", *_AUTOCAST)

    @property
    def name(self) -> str:
        return f"{self.device}/{self.precision}"

    def to_dict(self) -> dict[str, Any]:
        """What a fingerprint records (``meta["profile"]``): the profile and the machine."""
        d: dict[str, Any] = {"device": self.device, "precision": self.precision, "torch": torch.__version__}
        if self.device.startswith("cuda") and torch.cuda.is_available():
            dev = torch.device(self.device)
            d["device_name"] = torch.cuda.get_device_name(dev)
            d["cuda"] = torch.version.cuda
            d["cudnn"] = torch.backends.cudnn.version()
        return d


#: float32 on the CPU.
DEFAULT_PROFILE = DeviceProfile()


def check_device(device: str) -> torch.device:
    """``device`` as a :class:`torch.device`, refusing a CUDA device this machine lacks.

    Raises:
        ConfigError: CUDA asked for but unavailable (CPU-only torch, no GPU), or an index
            beyond the GPUs present.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"expected a CUDA device for --device {device}, got none: torch "
                              f"{torch.__version__} sees no GPU here; make the fingerprint on the serving "
                              "hardware, or use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"expected --device cuda:N with N < {count} (GPUs present), got {device}")
    return dev


@contextmanager
def tf32(device: torch.device, on: bool) -> Iterator[None]:
    """TF32 set as asked for the duration (CUDA only), the previous flags restored after."""
    if device.type != "cuda":
        yield
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


class Served(nn.Module):
    """The model as a deployment with a given profile runs it; answers are float32, on the CPU.

    Build with :func:`served`. The wrapped copy is moved and cast once; every call moves
    its inputs there, runs under the profile's autocast and TF32 settings, and brings the
    outputs back as float32 (float64 for ``fp64``, so nothing is rounded away).
    """

    def __init__(self, model: nn.Module, profile: DeviceProfile) -> None:
        super().__init__()
        self.profile = profile
        self.device = check_device(profile.device)
        inner = copy.deepcopy(model).to(self.device)
        self.dtype = _CAST.get(profile.precision, torch.float32)
        self.model = inner.to(self.dtype).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.profile.precision
        x = x.to(self.device, self.dtype)
        with tf32(self.device, p == "tf32"):
            if p in _AUTOCAST:
                with torch.autocast(self.device.type, dtype=_AUTOCAST[p]):
                    out = self.model(x)
            else:
                out = self.model(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"expected the model to return a tensor, got {type(out).__name__}")
        return out.to("cpu", torch.float64 if p == "fp64" else torch.float32)


def served(model: nn.Module, profile: DeviceProfile | None = None) -> nn.Module:
    """``model`` as a deployment with ``profile`` runs it (the model itself for the default).

    Raises:
        ConfigError: the profile names a CUDA device this machine does not have.
    """
    profile = profile or DEFAULT_PROFILE
    if profile.is_default:
        return model
    return Served(model, profile)
