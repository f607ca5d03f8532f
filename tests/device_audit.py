"""Torch function modes that find, without a GPU, what would go wrong on one.

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

:class:`DeviceSimulation` runs the pipeline as if the model were on a GPU and records every
operation CUDA would refuse for mixing devices.
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
        hot: module paths relative to ``src/veriprint`` (``"pipeline/refinement.py"``) where a host
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


# -- a simulated GPU ---------------------------------------------------------------------------------------------

_DEVICE_ATTR = torch._C.TensorBase.device
_DATA_ATTR = torch._C.TensorBase.data
_CUDA = torch.device("cuda")
ON_HOST, ON_DEVICE = "host", "device"
_BASIC = (int, slice, type(None), type(Ellipsis))


def _is_cuda(d: Any) -> bool:
    return (isinstance(d, torch.device) and d.type == "cuda") or (isinstance(d, str) and d.startswith("cuda"))


class DeviceSimulation(TorchFunctionMode):
    """Runs CPU code as if some tensors lived on a GPU, and records what CUDA would refuse.

    Every tensor is *host*, *device* or not seen (made by autograd or before the mode, say:
    it takes the side of the tensors it meets). :meth:`on_device` marks tensors (a model's
    parameters and buffers) as device tensors; ``x.device`` of a device tensor reads
    ``cuda``; a factory or ``.to()`` given a CUDA device makes a device tensor (on the CPU,
    underneath), ``.cpu()`` / ``.to("cpu")`` of one a host copy, a factory without a device
    a host tensor; any other result is on the side of its inputs. A call that mixes a host tensor of one or more dimensions with a
    device tensor is recorded in :attr:`mixed` (as CUDA raises "expected all tensors to be
    on the same device"), except what CUDA allows: a device tensor indexed by host indices,
    a copy across, a host 0-dim scalar. ``.numpy()`` of a device tensor is recorded too.
    """

    def __init__(self) -> None:
        super().__init__()
        self.side: dict[int, tuple[Any, str]] = {}  # id -> (weakref, side)
        self.mixed: list[str] = []

    # the side of a tensor
    def _get(self, t: torch.Tensor) -> str | None:
        got = self.side.get(id(t))
        return got[1] if got is not None and got[0]() is t else None

    def _set(self, t: torch.Tensor, side: str) -> None:
        import weakref

        self.side[id(t)] = (weakref.ref(t), side)

    def on_device(self, tensors: Any) -> None:
        for t in tensors:
            self._set(t, ON_DEVICE)

    def on_host(self, tensors: Any) -> None:
        for t in tensors:
            self._set(t, ON_HOST)

    def _where(self) -> str:
        frame = sys._getframe(2)
        while frame is not None and not Path(frame.f_code.co_filename).is_relative_to(SOURCE):
            frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return "?"
        return f"{Path(frame.f_code.co_filename).relative_to(SOURCE).as_posix()}:{frame.f_lineno}"

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: dict[str, Any] | None = None) -> Any:
        from torch.utils._pytree import tree_flatten

        kwargs = dict(kwargs or {})
        if getattr(func, "__self__", None) is _DEVICE_ATTR:  # x.device
            return _CUDA if self._get(args[0]) == ON_DEVICE else torch.device("cpu")
        if getattr(func, "__self__", None) is _DATA_ATTR and getattr(func, "__name__", "") == "__set__":
            side = self._get(args[1])  # p.data = moved (nn.Module.to): p is where its data went
            if side is not None:
                self._set(args[0], side)
            return func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        sides = [self._get(t) for t in tensors]
        target: str | None = None  # where a factory or a move puts its result
        if _is_cuda(kwargs.get("device")):
            kwargs["device"], target = "cpu", ON_DEVICE
        elif "device" in kwargs and kwargs["device"] is not None:
            target = ON_HOST
        if func is torch.Tensor.to:
            rest = []
            for a in args[1:]:
                if _is_cuda(a):
                    target = ON_DEVICE
                    a = "cpu"
                elif isinstance(a, (str, torch.device)):
                    target = ON_HOST
                rest.append(a)
            args = (args[0], *rest)
        if func is torch.Tensor.cpu:
            target = ON_HOST
        if func is torch.Tensor.numpy and sides and sides[0] == ON_DEVICE:
            self.mixed.append(f"{self._where()}: numpy() of a device tensor")
        if target is None and func not in (torch.Tensor.copy_,):
            self._check(func, name, args, tensors, sides)
        out = func(*args, **kwargs)
        if func in (torch.Tensor.to, torch.Tensor.cpu) and target is not None and out is args[0]:
            src = self._get(args[0])
            if src is not None and src != target:
                out = out.clone()  # a move makes a copy
        side = target
        if side is None:
            known = [s for s in sides if s is not None]
            # made from no tensor (a factory without a device): on the host, as torch's default
            side = ON_DEVICE if ON_DEVICE in known else ON_HOST if known or not tensors else None
            if func is torch.Tensor.__getitem__ and sides and sides[0] is not None:
                side = sides[0]  # indexing keeps the indexed tensor's side
        if side is not None and name not in ("__setitem__",):
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and (self._get(t) is None or not any(t is x for x in tensors)):
                    self._set(t, side)
        return out

    def _check(self, func: Any, name: str, args: Any, tensors: list[torch.Tensor], sides: list[str | None]) -> None:
        if ON_DEVICE not in sides or ON_HOST not in sides:
            return
        if func is torch.Tensor.__getitem__:
            if sides[0] == ON_DEVICE:
                return  # a device tensor indexed by host indices: CUDA allows it
        elif func is torch.Tensor.__setitem__:
            key, value = args[1], args[2] if len(args) > 2 else None
            basic = isinstance(key, _BASIC) or (isinstance(key, tuple) and all(isinstance(k, _BASIC) for k in key))
            own = self._get(args[0])
            value_side = self._get(value) if isinstance(value, torch.Tensor) else None
            if basic:
                return  # a copy into a slice crosses devices
            if own == ON_DEVICE and value_side != ON_HOST:
                return  # host indices into a device tensor
            if own == ON_DEVICE and isinstance(value, torch.Tensor) and value.dim() == 0:
                return
        host = [t for t, s in zip(tensors, sides, strict=True) if s == ON_HOST and t.dim() > 0]
        if host:
            self.mixed.append(f"{self._where()}: {name or func} mixes a host tensor {tuple(host[0].shape)} "
                              "with device tensors")

    def report(self) -> str:
        counts: dict[str, int] = {}
        for m in self.mixed:
            counts[m] = counts.get(m, 0) + 1
        return "\n".join(f"{k} x{v}" for k, v in sorted(counts.items()))
