"""A torch function mode that finds tensors the pipeline makes without saying where.

On a machine without a GPU every tensor lives on the CPU, so a ``torch.zeros(n)`` in a
hot loop works here and breaks (or copies to the host and back) on ``--device cuda``.
:class:`DeviceAudit` records every call made *from veriprint's own source files* that

* creates a tensor (``torch.zeros``, ``arange``, ``full``, ``randperm``, ``tensor``, ...)
  without an explicit ``device=`` (the ``*_like`` factories follow their input and are
  fine; a random draw that must stay reproducible passes ``device="cpu"`` and moves the
  result), or
* brings a tensor to the host (``Tensor.cpu``, ``Tensor.numpy``) inside one of the
  modules named in ``hot`` (the stages' inner loops).

Calls made by torch itself (an optimizer's step counter, a functional transform) are not
the pipeline's and are not recorded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

import veriprint

SOURCE = Path(veriprint.__file__).resolve().parent

FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.linspace, torch.eye,
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.tensor, torch.as_tensor,
}
HOST = {torch.Tensor.cpu, torch.Tensor.numpy}


@dataclass
class Finding:
    kind: str  # "factory" or "host"
    func: str
    where: str  # path relative to src/veriprint, and line

    def __str__(self) -> str:
        return f"{self.where}: {self.func} ({self.kind})"


class DeviceAudit(TorchFunctionMode):
    """Records :class:`Finding` s while active (see the module's docs).

    Args:
        hot: module paths relative to ``src/veriprint`` (``"refine.py"``) where a host
            transfer counts as a finding.
    """

    def __init__(self, hot: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.hot = hot
        self.findings: list[Finding] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        frame = sys._getframe(1)
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(SOURCE):
            rel = path.relative_to(SOURCE).as_posix()
            name = getattr(func, "__name__", str(func))
            if func in FACTORIES and "device" not in kwargs:
                tensor_data = func is torch.as_tensor and args and isinstance(args[0], torch.Tensor)
                if not tensor_data:
                    self.findings.append(Finding("factory", name, f"{rel}:{frame.f_lineno}"))
            elif func in HOST and rel in self.hot:
                self.findings.append(Finding("host", name, f"{rel}:{frame.f_lineno}"))
        return func(*args, **kwargs)

    def report(self) -> str:
        """Each distinct finding once, with how many times it happened."""
        counts: dict[str, int] = {}
        for f in self.findings:
            counts[str(f)] = counts.get(str(f), 0) + 1
        return "\n".join(f"{k} x{v}" for k, v in sorted(counts.items()))
