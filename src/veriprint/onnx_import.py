"""ONNX graphs as differentiable PyTorch modules (the export is in :mod:`veriprint.onnx_export`).

:func:`import_onnx` turns an ONNX classifier into an ``nn.Module`` that evaluates the
graph node by node with torch ops, so that the objective (``torch.func`` transforms,
double backward) and :func:`veriprint.models.split_last_layer` work on it as on any
PyTorch model:

* every floating-point initializer becomes an ``nn.Parameter`` (batch-norm running
  statistics and integer initializers become buffers); names follow the initializer
  names, split on ``"."`` into submodules and sanitized per segment, so an export of
  ``nn.Sequential`` keeps keys such as ``"9.weight"``;
* a ``Gemm`` (or ``MatMul`` + ``Add``) with a constant weight becomes an ``nn.Linear``
  submodule, so the last layer is found by forward hooks; for ``transB=0`` and
  ``MatMul`` the stored weight is the transpose of the initializer;
* ``Constant`` node values become non-persistent buffers, so ``.double()`` and ``.to()``
  convert them with the rest of the module;
* shape arithmetic (``Shape``/``Gather``/``Unsqueeze``/``Concat``/``Reshape``) is
  evaluated on the actual input, so any batch size works, also under ``vmap``.

The graph is evaluated in inference mode (``BatchNormalization`` uses its running
statistics, ``Dropout`` is the identity). Floating-point ``Cast`` nodes keep the working
precision of the input, so a module converted with ``.double()`` computes in float64.

:func:`veriprint.onnx_export.export_onnx` (re-exported here) writes the self-contained file
this project reads and serves.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from veriprint.errors import ModelError
from veriprint.onnx_export import OPSET, export_onnx

if TYPE_CHECKING:
    import onnx

__all__ = ["SUPPORTED_OPS", "OnnxImportError", "OnnxModule", "export_onnx", "import_onnx"]

log = logging.getLogger(__name__)



class OnnxImportError(ModelError):
    """An ONNX graph uses something the importer cannot translate."""


# ONNX TensorProto element types -> torch dtypes.
_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
    7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16,
}


@dataclass(frozen=True)
class _Node:
    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]


class _Scope(nn.Module):
    """A container mirroring one segment of dotted initializer names."""


Value = torch.Tensor | None
_Op = Callable[["OnnxModule", _Node, list[Value]], Sequence[torch.Tensor]]


def _sanitize(segment: str) -> str:
    s = re.sub(r"\W", "_", segment)
    return s or "_"


def _ints(t: torch.Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ---------------------------------------------------------------- op implementations


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> _Op:
    return lambda _m, _n, a: [fn(_req(a, 0))]


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> _Op:
    return lambda _m, _n, a: [fn(_req(a, 0), _req(a, 1))]


def _req(args: list[Value], i: int) -> torch.Tensor:
    if i >= len(args) or args[i] is None:
        raise OnnxImportError(f"missing required input #{i}")
    return args[i]  # type: ignore[return-value]


def _opt(args: list[Value], i: int) -> torch.Tensor | None:
    return args[i] if i < len(args) else None


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _pow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.pow(a, b).to(a.dtype)


def _pads(node: _Node, x: torch.Tensor, kernel: list[int], strides: list[int],
          dilations: list[int]) -> tuple[list[int], list[int]]:
    """Begin and end paddings of the spatial dims, resolving ``auto_pad``."""
    k = len(kernel)
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto == "NOTSET":
        pads = list(node.attrs.get("pads", [0] * (2 * k)))
        return pads[:k], pads[k:]
    if auto == "VALID":
        return [0] * k, [0] * k
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise OnnxImportError(f"{node.op}: unknown auto_pad {auto!r}")
    begin, end = [], []
    for size, kk, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True):
        out = -(-int(size) // s)
        total = max((out - 1) * s + (kk - 1) * d + 1 - int(size), 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return begin, end


def _torch_pad(begin: list[int], end: list[int]) -> list[int]:
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        out += [b, e]
    return out


def _conv(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    x, w, b = _req(args, 0), _req(args, 1), _opt(args, 2)
    k = w.dim() - 2
    if k not in (1, 2, 3):
        raise OnnxImportError(f"Conv: expected 1-3 spatial dims, got {k}")
    kernel = list(node.attrs.get("kernel_shape", w.shape[2:]))
    strides = list(node.attrs.get("strides", [1] * k))
    dilations = list(node.attrs.get("dilations", [1] * k))
    begin, end = _pads(node, x, kernel, strides, dilations)
    padding: list[int] = begin
    if begin != end:
        x, padding = F.pad(x, _torch_pad(begin, end)), [0] * k
    conv = (F.conv1d, F.conv2d, F.conv3d)[k - 1]
    return [conv(x, w, b, strides, padding, dilations, int(node.attrs.get("group", 1)))]


def _pool(kind: str) -> _Op:
    def run(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
        if len(node.outputs) > 1 and node.outputs[1]:
            raise OnnxImportError(f"{node.op}: the indices output is not supported")
        x = _req(args, 0)
        kernel = list(node.attrs["kernel_shape"])
        k = len(kernel)
        strides = list(node.attrs.get("strides", [1] * k))
        dilations = list(node.attrs.get("dilations", [1] * k))
        ceil = bool(node.attrs.get("ceil_mode", 0))
        begin, end = _pads(node, x, kernel, strides, dilations)
        symmetric = begin == end and all(p <= kk // 2 for p, kk in zip(begin, kernel, strict=True))
        if kind == "max":
            if not symmetric:
                x = F.pad(x, _torch_pad(begin, end), value=float("-inf"))
                begin = [0] * k
            fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[k - 1]
            return [fn(x, kernel, strides, begin, dilations, ceil_mode=ceil)]
        if any(d != 1 for d in dilations):
            raise OnnxImportError("AveragePool: dilations are not supported")
        include = bool(node.attrs.get("count_include_pad", 0))
        if not symmetric:
            if not include and any(begin + end):
                raise OnnxImportError("AveragePool: asymmetric padding needs count_include_pad=1")
            x = F.pad(x, _torch_pad(begin, end))
            begin = [0] * k
        afn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[k - 1]
        return [afn(x, kernel, strides, begin, ceil, include)]

    return run


def _global_pool(kind: str) -> _Op:
    def run(_m: OnnxModule, _n: _Node, args: list[Value]) -> list[torch.Tensor]:
        x = _req(args, 0)
        dims = tuple(range(2, x.dim()))
        return [x.mean(dims, keepdim=True) if kind == "avg" else x.amax(dims, keepdim=True)]

    return run


def _batch_norm(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    if node.attrs.get("training_mode", 0):
        raise OnnxImportError("BatchNormalization: training_mode=1 is not supported")
    x, scale, bias, mean, var = (_req(args, i) for i in range(5))
    eps = float(node.attrs.get("epsilon", 1e-5))
    return [F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)]


def _layer_norm(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    x, scale, bias = _req(args, 0), _req(args, 1), _opt(args, 2)
    axis = _axis(int(node.attrs.get("axis", -1)), x.dim())
    eps = float(node.attrs.get("epsilon", 1e-5))
    shape = tuple(x.shape[axis:])
    if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
        return [F.layer_norm(x, shape, scale, bias, eps)]
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = (x - mean).pow(2).mean(dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * scale
    return [y if bias is None else y + bias]


def _gemm(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    a, b, c = _req(args, 0), _req(args, 1), _opt(args, 2)
    a = a.t() if node.attrs.get("transA", 0) else a
    b = b.t() if node.attrs.get("transB", 0) else b
    y = float(node.attrs.get("alpha", 1.0)) * (a @ b)
    if c is not None:
        y = y + float(node.attrs.get("beta", 1.0)) * c
    return [y]


def _linear(m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    layer = m.get_submodule(node.attrs["module"])
    return [layer(_req(args, 0))]


def _flatten(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    axis = _axis(int(node.attrs.get("axis", 1)), x.dim())
    return [x.reshape(math.prod(x.shape[:axis]), -1)]


def _reshape(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    x, shape = _req(args, 0), _ints(_req(args, 1))
    if not node.attrs.get("allowzero", 0):
        shape = [int(x.shape[i]) if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _shape(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    dims = [int(d) for d in x.shape]
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    return [torch.tensor(dims[start:end], dtype=torch.int64, device=x.device)]


def _gather(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    x, idx = _req(args, 0), _req(args, 1).long()
    axis = _axis(int(node.attrs.get("axis", 0)), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return [out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))]


def _axes(node: _Node, args: list[Value], i: int) -> list[int] | None:
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    t = _opt(args, i)
    return None if t is None else _ints(t)


def _unsqueeze(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    axes = _axes(node, args, 1) or []
    rank = x.dim() + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(a)
    return [x]


def _squeeze(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    axes = _axes(node, args, 1)
    if axes is None:
        return [x.squeeze()]
    return [x.squeeze(tuple(_axis(a, x.dim()) for a in axes))]


def _concat(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    parts = [a for a in args if a is not None]
    return [torch.cat(parts, dim=int(node.attrs["axis"]))]


def _transpose(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    perm = node.attrs.get("perm", list(reversed(range(x.dim()))))
    return [x.permute(*perm)]


def _softmax(log: bool) -> _Op:
    def run(m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
        x = _req(args, 0)
        fn = torch.log_softmax if log else torch.softmax
        if m.opset >= 13:
            return [fn(x, int(node.attrs.get("axis", -1)))]
        axis = _axis(int(node.attrs.get("axis", 1)), x.dim())
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return [fn(flat, 1).reshape(x.shape)]

    return run


def _reduce(kind: str) -> _Op:
    def run(m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
        x = _req(args, 0)
        keep = bool(node.attrs.get("keepdims", 1))
        axes = _axes(node, args, 1)
        if not axes:
            if node.attrs.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        dims = tuple(_axis(a, x.dim()) for a in axes)
        if kind == "mean":
            return [x.mean(dims, keepdim=keep)]
        if kind == "sum":
            return [x.sum(dims, keepdim=keep)]
        return [x.amax(dims, keepdim=keep) if kind == "max" else x.amin(dims, keepdim=keep)]

    return run


def _cast(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    to = int(node.attrs["to"])
    if to not in _DTYPES:
        raise OnnxImportError(f"Cast: unsupported element type {to}")
    dtype = _DTYPES[to]
    if dtype.is_floating_point and x.is_floating_point():
        return [x]  # keep the working precision (see the module docstring)
    return [x.to(dtype)]


def _clip(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    lo = _opt(args, 1) if "min" not in node.attrs else torch.tensor(node.attrs["min"])
    hi = _opt(args, 2) if "max" not in node.attrs else torch.tensor(node.attrs["max"])
    if lo is not None:
        x = torch.maximum(x, lo.to(x.dtype))
    if hi is not None:
        x = torch.minimum(x, hi.to(x.dtype))
    return [x]


def _slice(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    if "starts" in node.attrs:  # opset < 10
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes = list(node.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(_req(args, 1)), _ints(_req(args, 2))
        axes = _ints(_opt(args, 3)) or list(range(len(starts)))
        steps = _ints(_opt(args, 4)) or [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        if st <= 0:
            raise OnnxImportError(f"Slice: expected positive steps, got {st}")
        index[_axis(a, x.dim())] = slice(s, e, st)
    return [x[tuple(index)]]


def _expand(_m: OnnxModule, _n: _Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(_req(args, 1))))
    return [x.expand(shape)]


def _constant_of_shape(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    value = node.attrs.get("value")
    fill = value if isinstance(value, torch.Tensor) else torch.zeros(1)
    shape = _ints(_req(args, 0))
    return [torch.full(shape, fill.reshape(-1)[0].item(), dtype=fill.dtype)]


def _range(_m: OnnxModule, _n: _Node, args: list[Value]) -> list[torch.Tensor]:
    start, limit, delta = (_req(args, i) for i in range(3))
    return [torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)]


def _gelu(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    return [F.gelu(_req(args, 0), approximate=str(node.attrs.get("approximate", "none")))]


def _identity(_m: OnnxModule, _n: _Node, args: list[Value]) -> list[torch.Tensor]:
    return [_req(args, 0)]


def _dropout(_m: OnnxModule, node: _Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    return [x, torch.ones_like(x, dtype=torch.bool)][: len(node.outputs)]


def _constant(m: OnnxModule, node: _Node, _a: list[Value]) -> list[torch.Tensor]:
    return [_lookup(m, node.attrs["buffer"])]


_OPS: dict[str, _Op] = {
    "Abs": _unary(torch.abs),
    "Add": _binary(torch.add),
    "AveragePool": _pool("avg"),
    "BatchNormalization": _batch_norm,
    "Cast": _cast,
    "Clip": _clip,
    "Concat": _concat,
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Conv": _conv,
    "Div": _binary(_div),
    "Dropout": _dropout,
    "Elu": lambda _m, n, a: [F.elu(_req(a, 0), float(n.attrs.get("alpha", 1.0)))],
    "Equal": _binary(torch.eq),
    "Erf": _unary(torch.erf),
    "Exp": _unary(torch.exp),
    "Expand": _expand,
    "Flatten": _flatten,
    "Gather": _gather,
    "Gelu": _gelu,
    "Gemm": _gemm,
    "GlobalAveragePool": _global_pool("avg"),
    "GlobalMaxPool": _global_pool("max"),
    "Identity": _identity,
    "LayerNormalization": _layer_norm,
    "LeakyRelu": lambda _m, n, a: [F.leaky_relu(_req(a, 0), float(n.attrs.get("alpha", 0.01)))],
    "Log": _unary(torch.log),
    "LogSoftmax": _softmax(log=True),
    "MatMul": _binary(torch.matmul),
    "Max": lambda _m, _n, a: [_fold(torch.maximum, a)],
    "MaxPool": _pool("max"),
    "Min": lambda _m, _n, a: [_fold(torch.minimum, a)],
    "Mul": _binary(torch.mul),
    "Neg": _unary(torch.neg),
    "Pow": _binary(_pow),
    "Range": _range,
    "Reciprocal": _unary(torch.reciprocal),
    "ReduceMax": _reduce("max"),
    "ReduceMean": _reduce("mean"),
    "ReduceMin": _reduce("min"),
    "ReduceSum": _reduce("sum"),
    "Relu": _unary(torch.relu),
    "Reshape": _reshape,
    "Shape": _shape,
    "Sigmoid": _unary(torch.sigmoid),
    "Slice": _slice,
    "Softmax": _softmax(log=False),
    "Softplus": _unary(F.softplus),
    "Sqrt": _unary(torch.sqrt),
    "Squeeze": _squeeze,
    "Sub": _binary(torch.sub),
    "Tanh": _unary(torch.tanh),
    "Transpose": _transpose,
    "Unsqueeze": _unsqueeze,
    "Where": lambda _m, _n, a: [torch.where(_req(a, 0), _req(a, 1), _req(a, 2))],
}

#: The ONNX operators (default domain) the importer translates.
SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(_OPS))


def _fold(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], args: list[Value]) -> torch.Tensor:
    parts = [a for a in args if a is not None]
    out = parts[0]
    for p in parts[1:]:
        out = fn(out, p)
    return out


# ---------------------------------------------------------------- the module


class OnnxModule(nn.Module):
    """An ONNX graph evaluated node by node with torch ops (see the module docstring).

    Build it with :func:`import_onnx`. ``forward`` takes the graph inputs positionally and
    returns one tensor, or a tuple when the graph has several outputs.
    """

    def __init__(self, proto: onnx.ModelProto) -> None:
        super().__init__()
        from onnx import numpy_helper

        graph = proto.graph
        self.opset = next(
            (int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), OPSET
        )
        nodes = [_parse_node(n, i) for i, n in enumerate(graph.node)]
        _check_supported(nodes)
        if len(graph.sparse_initializer):
            raise OnnxImportError("sparse initializers are not supported")
        inits = {
            t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer
        }
        self.input_names = tuple(i.name for i in graph.input if i.name not in inits)
        self.output_names = tuple(o.name for o in graph.output)
        uses: dict[str, int] = {}
        for n in nodes:
            for name in n.inputs:
                uses[name] = uses.get(name, 0) + 1
        for name in self.output_names:
            uses[name] = uses.get(name, 0) + 1

        self._sources: dict[str, tuple[str, str]] = {}  # value name -> (kind, path)
        nodes = self._make_linears(nodes, inits, uses)
        stats = {n.inputs[i] for n in nodes if n.op == "BatchNormalization" for i in (3, 4) if i < len(n.inputs)}
        for name, t in inits.items():
            if name in self._sources:
                continue
            if t.is_floating_point() and name not in stats:
                path = self._claim(name)
                self._register(path, nn.Parameter(t), persistent=True)
                self._sources[name] = ("param", path)
            else:
                path = self._claim(name)
                self._register(path, t, persistent=True)
                self._sources[name] = ("buffer", path)
        consts = _Scope()
        self.add_module("_onnx_constants", consts)
        for i, n in enumerate(nodes):
            if n.op == "Constant":
                key = f"c{i}"
                consts.register_buffer(key, _constant_value(n), persistent=False)
                nodes[i] = replace(n, attrs={"buffer": f"_onnx_constants.{key}"})
        self._nodes = nodes

    # -- construction helpers

    def _claim(self, name: str) -> str:
        """A free dotted path for ``name``: its segments, sanitized, else a flat name."""
        segs = [_sanitize(s) for s in name.split(".")]
        if self._is_free(segs):
            return ".".join(segs)
        flat, k = _sanitize(name.replace(".", "_")), 1
        candidate = flat
        while hasattr(self, candidate):
            candidate, k = f"{flat}_{k}", k + 1
        return candidate

    def _is_free(self, segs: list[str]) -> bool:
        cur: nn.Module = self
        for s in segs[:-1]:
            if not hasattr(cur, s):
                return True
            sub = getattr(cur, s)
            if not isinstance(sub, _Scope):
                return False
            cur = sub
        return not hasattr(cur, segs[-1])

    def _scope(self, path: str) -> tuple[nn.Module, str]:
        *parents, leaf = path.split(".")
        cur: nn.Module = self
        for s in parents:
            if not hasattr(cur, s):
                cur.add_module(s, _Scope())
            cur = getattr(cur, s)
        return cur, leaf

    def _register(self, path: str, value: torch.Tensor | nn.Module, persistent: bool) -> None:
        owner, leaf = self._scope(path)
        if isinstance(value, nn.Parameter):
            owner.register_parameter(leaf, value)
        elif isinstance(value, nn.Module):
            owner.add_module(leaf, value)
        else:
            owner.register_buffer(leaf, value, persistent=persistent)

    def _make_linears(self, nodes: list[_Node], inits: dict[str, torch.Tensor],
                      uses: dict[str, int]) -> list[_Node]:
        """Turn Gemm / MatMul(+Add) with constant weights into ``nn.Linear`` submodules."""

        def const(name: str, rank: int) -> bool:
            t = inits.get(name)
            return t is not None and t.is_floating_point() and t.dim() == rank and uses.get(name) == 1

        consumers: dict[str, list[int]] = {}
        for i, n in enumerate(nodes):
            for name in n.inputs:
                consumers.setdefault(name, []).append(i)
        out: list[_Node] = []
        skip: set[int] = set()
        for i, n in enumerate(nodes):
            if i in skip:
                continue
            weight = bias = None
            outputs = n.outputs
            if n.op == "Gemm" and len(n.inputs) >= 2 and const(n.inputs[1], 2) \
                    and not n.attrs.get("transA", 0) and float(n.attrs.get("alpha", 1.0)) == 1.0:
                w = inits[n.inputs[1]]
                weight = w if n.attrs.get("transB", 0) else w.t()
                c = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] else None
                if c is not None:
                    if not (const(c, 1) and float(n.attrs.get("beta", 1.0)) == 1.0
                            and inits[c].shape[0] == weight.shape[0]):
                        out.append(n)
                        continue
                    bias = c
            elif n.op == "MatMul" and const(n.inputs[1], 2) and n.inputs[0] not in inits:
                weight = inits[n.inputs[1]].t()
                nxt = consumers.get(n.outputs[0], [])
                if len(nxt) == 1 and n.outputs[0] not in self.output_names:
                    add = nodes[nxt[0]]
                    other = [s for s in add.inputs if s != n.outputs[0]]
                    if add.op == "Add" and len(other) == 1 and const(other[0], 1) \
                            and inits[other[0]].shape[0] == weight.shape[0]:
                        bias, outputs = other[0], add.outputs
                        skip.add(nxt[0])
            if weight is None:
                out.append(n)
                continue
            wname = n.inputs[1]
            prefix = wname[: -len(".weight")] if wname.endswith(".weight") else None
            if prefix is None or (bias is not None and bias != f"{prefix}.bias"):
                prefix = wname
            path = self._claim(prefix)
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                              dtype=weight.dtype)
            with torch.no_grad():
                layer.weight.copy_(weight)
                if bias is not None:
                    layer.bias.copy_(inits[bias])
            self._register(path, layer, persistent=True)
            self._sources[wname] = ("param", f"{path}.weight")
            if bias is not None:
                self._sources[bias] = ("param", f"{path}.bias")
            out.append(_Node("Linear", n.name, (n.inputs[0],), outputs, {"module": path}))
        return out

    # -- evaluation

    def _fetch(self, name: str) -> torch.Tensor:
        # Plain attribute lookup: torch.func.functional_call swaps in plain tensors.
        return _lookup(self, self._sources[name][1])

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise TypeError(f"expected {len(self.input_names)} inputs {list(self.input_names)}, "
                            f"got {len(inputs)}")
        env: dict[str, torch.Tensor] = dict(zip(self.input_names, inputs, strict=True))
        for node in self._nodes:
            args: list[Value] = []
            for name in node.inputs:
                if not name:
                    args.append(None)
                elif name in env:
                    args.append(env[name])
                else:
                    args.append(self._fetch(name))
            try:
                results = (_linear if node.op == "Linear" else _OPS[node.op])(self, node, args)
            except OnnxImportError as e:
                raise OnnxImportError(f"node {node.name!r} ({node.op}): {e}") from e
            for name, value in zip(node.outputs, results, strict=False):
                if name:
                    env[name] = value
        outs = tuple(env[n] if n in env else self._fetch(n) for n in self.output_names)
        return outs[0] if len(outs) == 1 else outs

    def extra_repr(self) -> str:
        return f"opset={self.opset}, nodes={len(self._nodes)}, inputs={list(self.input_names)}"


def _lookup(module: nn.Module, path: str) -> torch.Tensor:
    *parents, leaf = path.split(".")
    for s in parents:
        module = getattr(module, s)
    value = getattr(module, leaf)
    assert isinstance(value, torch.Tensor)
    return value


def _attr_value(attr: onnx.AttributeProto) -> Any:
    from onnx import helper, numpy_helper

    if attr.type in (attr.GRAPH, attr.GRAPHS):
        raise OnnxImportError(f"attribute {attr.name!r}: subgraphs are not supported")
    value = helper.get_attribute_value(attr)
    if attr.type == attr.TENSOR:
        return torch.from_numpy(numpy_helper.to_array(value).copy())
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


def _parse_node(node: onnx.NodeProto, index: int) -> _Node:
    if node.domain not in ("", "ai.onnx"):
        raise OnnxImportError(
            f"node {node.name or index!r}: operator {node.domain}::{node.op_type} is outside the "
            f"default ONNX domain; supported operators: {', '.join(SUPPORTED_OPS)}"
        )
    attrs = {a.name: _attr_value(a) for a in node.attribute} if node.op_type in _OPS else {}
    return _Node(node.op_type, node.name or f"{node.op_type}_{index}", tuple(node.input),
                 tuple(node.output), attrs)


def _check_supported(nodes: list[_Node]) -> None:
    missing = sorted({n.op for n in nodes if n.op not in _OPS})
    if missing:
        raise OnnxImportError(
            f"unsupported ONNX operator(s) {', '.join(missing)}; supported operators: "
            f"{', '.join(SUPPORTED_OPS)}"
        )


def _constant_value(node: _Node) -> torch.Tensor:
    a = node.attrs
    if "value" in a:
        return a["value"]  # type: ignore[no-any-return]
    if "value_float" in a:
        return torch.tensor(a["value_float"], dtype=torch.float32)
    if "value_floats" in a:
        return torch.tensor(a["value_floats"], dtype=torch.float32)
    if "value_int" in a:
        return torch.tensor(a["value_int"], dtype=torch.int64)
    if "value_ints" in a:
        return torch.tensor(a["value_ints"], dtype=torch.int64)
    raise OnnxImportError(f"Constant {node.name!r}: unsupported value kind {sorted(a)}")


def import_onnx(source: str | os.PathLike[str] | onnx.ModelProto) -> OnnxModule:
    """Convert an ONNX model into a differentiable PyTorch module.

    Args:
        source: path to an ``.onnx`` file (external data next to it is read too) or a
            loaded ``onnx.ModelProto``.

    Returns:
        An :class:`OnnxModule` in eval mode whose parameters are the graph's
        floating-point initializers.

    Raises:
        FileNotFoundError: when the file does not exist.
        OnnxImportError: when the graph uses an operator outside :data:`SUPPORTED_OPS`,
            another operator domain, subgraphs or sparse initializers.
    """
    import onnx

    if isinstance(source, onnx.ModelProto):
        proto = source
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        try:
            proto = onnx.load(str(path))
        except Exception as e:  # onnx raises DecodeError and friends
            raise OnnxImportError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    module = OnnxModule(proto)
    log.debug("imported ONNX graph: %d nodes, %d parameters", len(module._nodes),
              sum(p.numel() for p in module.parameters()))
    return module.eval()
