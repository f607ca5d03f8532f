"""ONNX graphs as differentiable PyTorch modules (the export is in :mod:`veriprint.models.onnx_export`).

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

:func:`veriprint.models.onnx_export.export_onnx` (re-exported here) writes the self-contained file
this project reads and serves.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from veriprint.models.onnx_export import OPSET, export_onnx
from veriprint.models.onnx_ops import (
    OPS,
    SUPPORTED_OPS,
    Node,
    OnnxImportError,
    Value,
    linear,
    lookup,
    sanitize,
)

if TYPE_CHECKING:
    import onnx

__all__ = ["SUPPORTED_OPS", "OnnxImportError", "OnnxModule", "constants_as_initializers", "export_onnx",
           "import_onnx", "logits_before_softmax"]

log = logging.getLogger(__name__)


class _Scope(nn.Module):
    """A container mirroring one segment of dotted initializer names."""


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
        segs = [sanitize(s) for s in name.split(".")]
        if self._is_free(segs):
            return ".".join(segs)
        flat, k = sanitize(name.replace(".", "_")), 1
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

    def _make_linears(self, nodes: list[Node], inits: dict[str, torch.Tensor],
                      uses: dict[str, int]) -> list[Node]:
        """Turn Gemm / MatMul(+Add) with constant weights into ``nn.Linear`` submodules."""

        def const(name: str, rank: int) -> bool:
            t = inits.get(name)
            return t is not None and t.is_floating_point() and t.dim() == rank and uses.get(name) == 1

        consumers: dict[str, list[int]] = {}
        for i, n in enumerate(nodes):
            for name in n.inputs:
                consumers.setdefault(name, []).append(i)
        out: list[Node] = []
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
            out.append(Node("Linear", n.name, (n.inputs[0],), outputs, {"module": path}))
        return out

    # -- evaluation

    def _fetch(self, name: str) -> torch.Tensor:
        # Plain attribute lookup: torch.func.functional_call swaps in plain tensors.
        return lookup(self, self._sources[name][1])

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
                results = (linear if node.op == "Linear" else OPS[node.op])(self, node, args)
            except OnnxImportError as e:
                raise OnnxImportError(f"node {node.name!r} ({node.op}): {e}") from e
            for name, value in zip(node.outputs, results, strict=False):
                if name:
                    env[name] = value
        outs = tuple(env[n] if n in env else self._fetch(n) for n in self.output_names)
        return outs[0] if len(outs) == 1 else outs

    def extra_repr(self) -> str:
        return f"opset={self.opset}, nodes={len(self._nodes)}, inputs={list(self.input_names)}"


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


def _parse_node(node: onnx.NodeProto, index: int) -> Node:
    if node.domain not in ("", "ai.onnx"):
        raise OnnxImportError(
            f"node {node.name or index!r}: operator {node.domain}::{node.op_type} is outside the "
            f"default ONNX domain; supported operators: {', '.join(SUPPORTED_OPS)}"
        )
    attrs = {a.name: _attr_value(a) for a in node.attribute} if node.op_type in OPS else {}
    return Node(node.op_type, node.name or f"{node.op_type}_{index}", tuple(node.input),
                 tuple(node.output), attrs)


def _check_supported(nodes: list[Node]) -> None:
    missing = sorted({n.op for n in nodes if n.op not in OPS})
    if missing:
        raise OnnxImportError(
            f"unsupported ONNX operator(s) {', '.join(missing)}; supported operators: "
            f"{', '.join(SUPPORTED_OPS)}"
        )


def _constant_value(node: Node) -> torch.Tensor:
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


# ---------------------------------------------------------------- rewriting a graph before import


def constants_as_initializers(proto: onnx.ModelProto, *, min_size: int = 2) -> onnx.ModelProto:
    """A copy of ``proto`` whose floating-point ``Constant`` nodes of at least ``min_size``
    elements are initializers, named after the value each node produced.

    Some exporters (PaddlePaddle's among them) write every weight as a ``Constant`` node;
    :func:`import_onnx` keeps those as fixed buffers, so the model would have no
    parameters to fingerprint. After this rewrite they become parameters
    (batch-norm statistics still become buffers). Scalars (``min_size=2`` by default:
    the 3 and 6 of a hard swish, a clip's bounds) and integer constants (shapes, indices)
    stay constants. The function is unchanged: onnxruntime gives the same outputs.

    Args:
        proto: the loaded model; it is not modified.
        min_size: the fewest elements a constant needs to become an initializer
            (default 2).

    Returns:
        The rewritten copy.

    Raises:
        ValueError: when ``min_size`` is below 1.
    """
    import onnx
    from onnx import numpy_helper

    if min_size < 1:
        raise ValueError(f"expected min_size >= 1, got {min_size}")
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    kept, moved = [], []
    for node in out.graph.node:
        attrs = list(node.attribute)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(attrs) == 1 \
                and attrs[0].name == "value" and len(node.output) == 1:
            value = numpy_helper.to_array(attrs[0].t)
            if value.dtype.kind == "f" and value.size >= min_size:
                moved.append(numpy_helper.from_array(value, node.output[0]))
                continue
        kept.append(node)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    out.graph.initializer.extend(moved)
    return out


def logits_before_softmax(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` that outputs the logits its final ``Softmax`` turns into
    probabilities.

    A classifier exported for serving often ends in ``Softmax`` (and ``Identity``
    renamings after it); the objective and :func:`veriprint.models.split_last_layer` want
    the logits. The graph's only output is traced back through ``Identity`` nodes to a
    ``Softmax`` over the last axis, which is removed with those nodes; the output keeps its
    shape under the name of the softmax's input.

    Raises:
        OnnxImportError: when the graph has several outputs, or its output is not
            produced by a softmax over the last axis that nothing else reads.
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    if len(graph.output) != 1:
        raise OnnxImportError(f"expected a graph with one output, got {len(graph.output)}")
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    drop: list[onnx.NodeProto] = []
    name = graph.output[0].name
    node = producer.get(name)
    while node is not None and node.op_type == "Identity":
        drop.append(node)
        name = node.input[0]
        if readers.get(name, 0) != 1:
            raise OnnxImportError(f"expected nothing but the output to read {name!r}")
        node = producer.get(name)
    if node is None or node.op_type != "Softmax":
        raise OnnxImportError(f"expected the output {graph.output[0].name!r} to come from a Softmax, "
                              f"got {'a graph input or initializer' if node is None else node.op_type}")
    opset = next((int(o.version) for o in out.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    axis = next((int(onnx.helper.get_attribute_value(a)) for a in node.attribute if a.name == "axis"),
                -1 if opset >= 13 else 1)
    tensor = graph.output[0].type.tensor_type
    rank = len(tensor.shape.dim) if tensor.HasField("shape") else None
    if axis != -1 and axis != (rank or 0) - 1:
        raise OnnxImportError(f"expected a Softmax over the last axis, got axis={axis} of an output of rank {rank}")
    drop.append(node)
    kept = [n for n in graph.node if all(n is not d for d in drop)]
    logits = onnx.ValueInfoProto()
    logits.CopyFrom(graph.output[0])
    logits.name = node.input[0]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.output[:]
    graph.output.append(logits)
    return out
