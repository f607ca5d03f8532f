"""The ONNX operators the importer translates, each as a few torch operations.

:data:`SUPPORTED_OPS` lists them. Each implementation takes the module being evaluated,
the node (its attributes already parsed) and the values of its inputs, and returns its
outputs; :class:`veriprint.models.onnx_import.OnnxModule` runs them node by node.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from veriprint.errors import ModelError

if TYPE_CHECKING:
    from veriprint.models.onnx_import import OnnxModule

__all__ = ["OPS", "SUPPORTED_OPS", "Node", "OnnxImportError", "Value", "linear", "lookup", "sanitize"]


class OnnxImportError(ModelError):
    """An ONNX graph uses something the importer cannot translate."""


# ONNX TensorProto element types -> torch dtypes.
_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
    7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16,
}


@dataclass(frozen=True)
class Node:
    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]


Value = torch.Tensor | None
_Op = Callable[["OnnxModule", Node, list[Value]], Sequence[torch.Tensor]]


def sanitize(segment: str) -> str:
    s = re.sub(r"\W", "_", segment)
    return s or "_"


def _ints(t: torch.Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


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


def _pads(node: Node, x: torch.Tensor, kernel: list[int], strides: list[int],
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


def _conv(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
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
    def run(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
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
    def run(_m: OnnxModule, _n: Node, args: list[Value]) -> list[torch.Tensor]:
        x = _req(args, 0)
        dims = tuple(range(2, x.dim()))
        return [x.mean(dims, keepdim=True) if kind == "avg" else x.amax(dims, keepdim=True)]

    return run


def _batch_norm(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    if node.attrs.get("training_mode", 0):
        raise OnnxImportError("BatchNormalization: training_mode=1 is not supported")
    x, scale, bias, mean, var = (_req(args, i) for i in range(5))
    eps = float(node.attrs.get("epsilon", 1e-5))
    return [F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)]


def _layer_norm(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
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


def _gemm(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    a, b, c = _req(args, 0), _req(args, 1), _opt(args, 2)
    a = a.t() if node.attrs.get("transA", 0) else a
    b = b.t() if node.attrs.get("transB", 0) else b
    y = float(node.attrs.get("alpha", 1.0)) * (a @ b)
    if c is not None:
        y = y + float(node.attrs.get("beta", 1.0)) * c
    return [y]


def linear(m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    layer = m.get_submodule(node.attrs["module"])
    return [layer(_req(args, 0))]


def _flatten(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    axis = _axis(int(node.attrs.get("axis", 1)), x.dim())
    return [x.reshape(math.prod(x.shape[:axis]), -1)]


def _reshape(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    x, shape = _req(args, 0), _ints(_req(args, 1))
    if not node.attrs.get("allowzero", 0):
        shape = [int(x.shape[i]) if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _shape(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    dims = [int(d) for d in x.shape]
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    return [torch.tensor(dims[start:end], dtype=torch.int64, device=x.device)]


def _gather(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    x, idx = _req(args, 0), _req(args, 1).long()
    axis = _axis(int(node.attrs.get("axis", 0)), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return [out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))]


def _axes(node: Node, args: list[Value], i: int) -> list[int] | None:
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    t = _opt(args, i)
    return None if t is None else _ints(t)


def _unsqueeze(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    axes = _axes(node, args, 1) or []
    rank = x.dim() + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(a)
    return [x]


def _squeeze(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    axes = _axes(node, args, 1)
    if axes is None:
        return [x.squeeze()]
    return [x.squeeze(tuple(_axis(a, x.dim()) for a in axes))]


def _concat(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    parts = [a for a in args if a is not None]
    return [torch.cat(parts, dim=int(node.attrs["axis"]))]


def _transpose(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    perm = node.attrs.get("perm", list(reversed(range(x.dim()))))
    return [x.permute(*perm)]


def _softmax(log: bool) -> _Op:
    def run(m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
        x = _req(args, 0)
        fn = torch.log_softmax if log else torch.softmax
        if m.opset >= 13:
            return [fn(x, int(node.attrs.get("axis", -1)))]
        axis = _axis(int(node.attrs.get("axis", 1)), x.dim())
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return [fn(flat, 1).reshape(x.shape)]

    return run


def _reduce(kind: str) -> _Op:
    def run(m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
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


def _cast(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    to = int(node.attrs["to"])
    if to not in _DTYPES:
        raise OnnxImportError(f"Cast: unsupported element type {to}")
    dtype = _DTYPES[to]
    if dtype.is_floating_point and x.is_floating_point():
        return [x]  # keep the working precision (see the module docstring)
    return [x.to(dtype)]


def _clip(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    lo = _opt(args, 1) if "min" not in node.attrs else torch.tensor(node.attrs["min"])
    hi = _opt(args, 2) if "max" not in node.attrs else torch.tensor(node.attrs["max"])
    if lo is not None:
        x = torch.maximum(x, lo.to(x.dtype))
    if hi is not None:
        x = torch.minimum(x, hi.to(x.dtype))
    return [x]


def _slice(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
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
    backward: list[tuple[int, int, int, int]] = []
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        if st == 0:
            raise OnnxImportError("Slice: expected non-zero steps, got 0")
        if st > 0:
            index[_axis(a, x.dim())] = slice(s, e, st)
        else:
            backward.append((s, e, _axis(a, x.dim()), st))
    y = x[tuple(index)]
    for s, e, a, st in backward:  # ONNX's clamping for negative steps: start in [0, n-1], end in [-1, n-1]
        n = int(y.shape[a])
        s, e = s + n if s < 0 else s, e + n if e < 0 else e
        s, e = min(max(s, 0), n - 1), min(max(e, -1), n - 1)
        y = torch.index_select(y, a, torch.arange(s, e, st, dtype=torch.long, device=y.device))
    return [y]


def _expand(_m: OnnxModule, _n: Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(_req(args, 1))))
    return [x.expand(shape)]


def _constant_of_shape(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    value = node.attrs.get("value")
    fill = value if isinstance(value, torch.Tensor) else torch.zeros(1)
    shape = _ints(_req(args, 0))
    return [torch.full(shape, fill.reshape(-1)[0].item(), dtype=fill.dtype)]


def _range(_m: OnnxModule, _n: Node, args: list[Value]) -> list[torch.Tensor]:
    start, limit, delta = (_req(args, i) for i in range(3))
    return [torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)]


def _gelu(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    return [F.gelu(_req(args, 0), approximate=str(node.attrs.get("approximate", "none")))]


def _hard_sigmoid(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    """``max(0, min(1, alpha x + beta))``; ONNX's defaults are alpha 0.2, beta 0.5 (torch's
    ``hardsigmoid`` is the special case alpha 1/6, beta 1/2)."""
    alpha = float(node.attrs.get("alpha", 0.2))
    beta = float(node.attrs.get("beta", 0.5))
    return [(_req(args, 0) * alpha + beta).clamp(0.0, 1.0)]


def _hard_swish(_m: OnnxModule, _n: Node, args: list[Value]) -> list[torch.Tensor]:
    """``x * max(0, min(1, x / 6 + 1 / 2))`` (opset 14), which is torch's ``hardswish``."""
    return [F.hardswish(_req(args, 0))]


def _pad(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    """``Pad`` (opset 11 and later: pads, constant value and axes as inputs) in the modes
    ``constant``, ``reflect`` and ``edge``; reflect and edge pad at most the last three axes."""
    x = _req(args, 0)
    mode = str(node.attrs.get("mode", "constant"))
    if "pads" in node.attrs:  # opset < 11
        pads, value = list(node.attrs["pads"]), float(node.attrs.get("value", 0.0))
        axes = list(range(x.dim()))
    else:
        pads = _ints(_req(args, 1))
        fill = _opt(args, 2)
        value = 0.0 if fill is None or fill.numel() == 0 else float(fill.detach().reshape(-1)[0])
        given = _opt(args, 3)
        axes = [_axis(a, x.dim()) for a in _ints(given)] if given is not None else list(range(x.dim()))
    if len(pads) != 2 * len(axes):
        raise OnnxImportError(f"Pad: expected {2 * len(axes)} pads for {len(axes)} axes, got {len(pads)}")
    begin, end = [0] * x.dim(), [0] * x.dim()
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[i + len(axes)]
    padded = [a for a in range(x.dim()) if begin[a] or end[a]]
    if not padded:
        return [x]
    first = padded[0]
    flat = _torch_pad(begin[first:], end[first:])
    if mode == "constant":
        return [F.pad(x, flat, value=value)]
    if mode not in ("reflect", "edge"):
        raise OnnxImportError(f"Pad: expected mode constant, reflect or edge, got {mode!r}")
    k = x.dim() - first
    if k > 3 or any(p < 0 for p in pads):
        raise OnnxImportError(f"Pad: {mode} padding supports the last 3 axes and no cropping, got pads {pads}")
    lead = x.shape[:first]
    y = F.pad(x.reshape(-1, 1, *x.shape[first:]), flat, mode="reflect" if mode == "reflect" else "replicate")
    return [y.reshape(*lead, *y.shape[2:])]


def _lstm(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    """``LSTM`` with the default activations (sigmoid, tanh, tanh), forward, reverse or
    bidirectional, time-major (``layout`` 0, as onnxruntime), without peepholes, clipping or
    coupled gates, and with every sequence at full length. ONNX orders the gates input,
    output, forget, cell."""
    a = node.attrs
    acts = [str(v).lower() for v in a.get("activations", ["Sigmoid", "Tanh", "Tanh"] * 2)]
    if any(acts[i::3] != [("sigmoid", "tanh", "tanh")[i]] * len(acts[i::3]) for i in range(3)):
        raise OnnxImportError(f"LSTM: expected the activations Sigmoid, Tanh, Tanh, got {a.get('activations')}")
    if a.get("clip") is not None or a.get("input_forget", 0):
        raise OnnxImportError("LSTM: clip and input_forget are not supported")
    if _opt(args, 7) is not None:
        raise OnnxImportError("LSTM: peepholes (input P) are not supported")
    direction = str(a.get("direction", "forward"))
    if int(a.get("layout", 0)):
        raise OnnxImportError("LSTM: expected layout 0 (time-major), got 1")
    x, w, r = _req(args, 0), _req(args, 1), _req(args, 2)
    steps, batch = int(x.shape[0]), int(x.shape[1])
    hidden = int(a.get("hidden_size", r.shape[-1]))
    lens = _opt(args, 4)
    if lens is not None and bool((lens != steps).any()):
        raise OnnxImportError(f"LSTM: expected every sequence at its full length {steps}, got {lens.tolist()}")
    dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}.get(direction)
    if dirs is None or len(dirs) != w.shape[0]:
        raise OnnxImportError(f"LSTM: direction {direction!r} does not fit weights for {w.shape[0]} directions")
    b, h0, c0 = _opt(args, 3), _opt(args, 5), _opt(args, 6)
    ys, hs, cs = [], [], []
    for d, backward in enumerate(dirs):
        bias = 0.0 if b is None else b[d, :4 * hidden] + b[d, 4 * hidden:]
        h = x.new_zeros(batch, hidden) if h0 is None else h0[d]
        c = x.new_zeros(batch, hidden) if c0 is None else c0[d]
        outs: list[torch.Tensor] = []
        for t in (reversed(range(steps)) if backward else range(steps)):
            gates = x[t] @ w[d].t() + h @ r[d].t() + bias
            i, o, f, g = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        if backward:
            outs.reverse()
        ys.append(torch.stack(outs))
        hs.append(h)
        cs.append(c)
    y, yh, yc = torch.stack(ys, 1), torch.stack(hs), torch.stack(cs)  # (seq, dirs, batch, H), (dirs, batch, H)
    return [y, yh, yc][: len(node.outputs)]


def _identity(_m: OnnxModule, _n: Node, args: list[Value]) -> list[torch.Tensor]:
    return [_req(args, 0)]


def _dropout(_m: OnnxModule, node: Node, args: list[Value]) -> list[torch.Tensor]:
    x = _req(args, 0)
    return [x, torch.ones_like(x, dtype=torch.bool)][: len(node.outputs)]


def _constant(m: OnnxModule, node: Node, _a: list[Value]) -> list[torch.Tensor]:
    return [lookup(m, node.attrs["buffer"])]


OPS: dict[str, _Op] = {
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
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish,
    "Identity": _identity,
    "LayerNormalization": _layer_norm,
    "LSTM": _lstm,
    "LeakyRelu": lambda _m, n, a: [F.leaky_relu(_req(a, 0), float(n.attrs.get("alpha", 0.01)))],
    "Log": _unary(torch.log),
    "LogSoftmax": _softmax(log=True),
    "MatMul": _binary(torch.matmul),
    "Max": lambda _m, _n, a: [_fold(torch.maximum, a)],
    "MaxPool": _pool("max"),
    "Min": lambda _m, _n, a: [_fold(torch.minimum, a)],
    "Mul": _binary(torch.mul),
    "Neg": _unary(torch.neg),
    "Pad": _pad,
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
SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(OPS))


def _fold(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], args: list[Value]) -> torch.Tensor:
    parts = [a for a in args if a is not None]
    out = parts[0]
    for p in parts[1:]:
        out = fn(out, p)
    return out


def lookup(module: nn.Module, path: str) -> torch.Tensor:
    *parents, leaf = path.split(".")
    for s in parents:
        module = getattr(module, s)
    value = getattr(module, leaf)
    assert isinstance(value, torch.Tensor)
    return value
