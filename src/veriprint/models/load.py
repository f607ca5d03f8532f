"""Loading models and locating their last layer.

A model is any PyTorch classifier mapping a batch of inputs to a batch of ``r`` outputs
(logits by default, or probabilities when its last op is a softmax). It can be given as
an ``nn.Module``, a factory ``package.module:callable`` or ``path/to/file.py:callable``
with optional weights (``.safetensors`` or a state-dict ``.pt``), a ``torch.export``
archive (``.pt2``), a TorchScript file, or an ONNX file (imported as a differentiable
module by :mod:`veriprint.models.onnx_import`).

The closed-form objective needs the penultimate features ``h`` and the logits ``z`` of
the final linear layer ``z = W h + b``. :func:`split_last_layer` finds them without
asking the user to restructure the model: forward hooks on ordinary modules, a graph
rewrite for ``torch.fx`` graphs (exported programs).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import logging
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.fx as fx
from torch import nn

from veriprint.errors import ModelError
from veriprint.numerics import freeze

__all__ = [
    "LastLayer",
    "ModelError",
    "OutputKind",
    "load_model",
    "model_device",
    "model_hash",
    "save_weights",
    "split_last_layer",
]

log = logging.getLogger(__name__)

OutputKind = Literal["logits", "probs"]


def _import_factory(spec: str) -> Callable[[], nn.Module]:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ModelError(f"expected a factory 'package.module:callable', got {spec!r}")
    if target.endswith(".py"):
        path = Path(target)
        if not path.exists():
            raise FileNotFoundError(f"factory file not found: {path}")
        mod_spec = importlib.util.spec_from_file_location(f"_veriprint_user_{path.stem}", path)
        if mod_spec is None or mod_spec.loader is None:
            raise ModelError(f"cannot import {path}")
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ModelError(f"cannot import module {target!r} for factory {spec!r}: {e}") from e
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ModelError(f"{target!r} has no callable {attr!r}")
    return fn  # type: ignore[no-any-return]


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"{path}: not a readable state dict ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def load_model(
    source: str | os.PathLike[str] | nn.Module,
    *,
    weights: str | os.PathLike[str] | None = None,
) -> nn.Module:
    """Load a classifier in evaluation mode.

    Args:
        source: an ``nn.Module`` (copied, never mutated), a factory
            ``package.module:callable`` or ``file.py:callable``, or a path to a
            ``.pt2`` (``torch.export``), TorchScript (``.pt``/``.ts``/``.torchscript``)
            or ``.onnx`` file.
        weights: optional ``.safetensors`` or state-dict ``.pt`` file loaded into the
            module (strictly: every key must match).

    Returns:
        An ``nn.Module`` in eval mode with gradients disabled for its parameters.
    """
    if isinstance(source, nn.Module):
        model = copy.deepcopy(source)
    else:
        spec = os.fspath(source)
        path = Path(spec)
        if ":" in spec and not path.exists():
            model = _import_factory(spec)()
            if not isinstance(model, nn.Module):
                raise ModelError(f"factory {spec!r} returned {type(model).__name__}, not nn.Module")
        elif not path.exists():
            raise FileNotFoundError(
                f"no model at {spec!r}: expected a file (.pt2, TorchScript, .onnx) or a "
                "factory 'package.module:callable'"
            )
        elif path.suffix == ".pt2":
            model = torch.export.load(str(path)).module()
            # The graph fixed its train/eval behaviour at export time and torch makes
            # train()/eval() raise on it; restore the ordinary flag-only methods.
            for attr in ("train", "eval"):
                model.__dict__.pop(attr, None)
        elif path.suffix == ".onnx":
            from veriprint.models.onnx_import import import_onnx

            model = import_onnx(path)
        elif _is_torchscript(path):
            model = torch.jit.load(str(path), map_location="cpu")
        else:
            raise ModelError(
                f"{path}: not a model archive (a state dict needs a factory: "
                "--model package.module:callable --weights FILE)"
            )
    if weights is not None:
        state = _load_state_dict(Path(weights))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ModelError(f"{weights}: weights do not fit the model: {e}") from e
    return freeze(model)


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write the model's state dict as ``.safetensors`` (contiguous copies)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, os.fspath(path))


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` runs: the device of its first parameter (else buffer), the CPU without either."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def model_hash(model: nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes and bytes, sorted by name)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class LastLayer:
    """The final linear layer ``z = W h + b`` of a classifier.

    Attributes:
        weight: name of ``W`` among ``model.named_parameters()``.
        bias: name of ``b``, or ``None`` for a layer without bias.
        forward: maps a batch ``x`` to ``(h, z, out)``: penultimate features
            ``(N, d)``, logits ``(N, r)`` and the model's own output ``(N, r)``.
    """

    weight: str
    bias: str | None
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

    @property
    def names(self) -> list[str]:
        return [self.weight] if self.bias is None else [self.weight, self.bias]


def _split_by_hooks(model: nn.Module, x: torch.Tensor) -> LastLayer | None:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, _o, n=n: order.append(n)) for n, m in linears
    ]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    if not order:
        return None
    name = order[-1]
    layer = dict(linears)[name]
    prefix = f"{name}." if name else ""

    def forward(inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen: dict[str, torch.Tensor] = {}

        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            seen["h"], seen["z"] = args[0], out

        handle = layer.register_forward_hook(hook)
        try:
            out = model(inp)
        finally:
            handle.remove()
        return seen["h"], seen["z"], out

    return LastLayer(prefix + "weight", prefix + "bias" if layer.bias is not None else None, forward)


_LINEAR_TARGETS = (torch.ops.aten.linear.default, torch.nn.functional.linear)


def _split_fx(model: fx.GraphModule) -> LastLayer | None:
    graph = copy.deepcopy(model.graph)
    linears = [n for n in graph.nodes if n.op == "call_function" and n.target in _LINEAR_TARGETS]
    if not linears:
        return None
    lin = linears[-1]
    args = list(lin.args) + [lin.kwargs.get("bias")] * (3 - len(lin.args))
    h_node, w_node, b_node = args[0], args[1], args[2]
    if not isinstance(w_node, fx.Node) or w_node.op != "get_attr":
        return None
    w_name = str(w_node.target)
    b_name = str(b_node.target) if isinstance(b_node, fx.Node) and b_node.op == "get_attr" else None
    params = dict(model.named_parameters())
    if w_name not in params or (b_name is not None and b_name not in params):
        return None
    out_node = next(n for n in graph.nodes if n.op == "output")
    result = out_node.args[0]
    while isinstance(result, tuple | list) and len(result) == 1:
        result = result[0]
    graph.erase_node(out_node)
    for n in list(graph.nodes):
        # Shape guards of exported programs: the split graph serves any batch size.
        if n.op == "call_module" and str(n.target).startswith("_guards"):
            graph.erase_node(n)
    graph.output((h_node, lin, result))
    graph._codegen = fx.graph.CodeGen()
    split = fx.GraphModule(model, graph)

    def forward(inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, z, out = split(inp)
        return h.flatten(1) if h.dim() > 2 else h, z, out

    return LastLayer(w_name, b_name, forward)


def split_last_layer(model: nn.Module, x: torch.Tensor, outputs: OutputKind = "logits") -> LastLayer:
    """Find the final linear layer and check that the model's output is computed from it.

    Args:
        model: the classifier.
        x: a small example batch (one sample is used for discovery, the whole batch to check).
        outputs: ``"logits"`` (the output is ``z`` itself) or ``"probs"`` (the output is
            ``softmax(z)``).

    Returns:
        A :class:`LastLayer`.

    Raises:
        ModelError: when no linear layer is found or the output is not ``z``/``softmax(z)``.
    """
    last = _split_fx(model) if isinstance(model, fx.GraphModule) else None
    if last is None and not isinstance(model, torch.jit.ScriptModule):
        last = _split_by_hooks(model, x)
    if last is None:
        raise ModelError(
            f"no final linear layer found in {type(model).__name__}: the closed form needs "
            "z = W h + b as the last layer; use params='all' or parameter names instead"
        )
    with torch.no_grad():
        h, z, out = last.forward(x[:4])
    expected = z if outputs == "logits" else torch.softmax(z, dim=-1)
    if h.dim() != 2 or out.shape != expected.shape or not torch.allclose(out, expected, rtol=1e-4, atol=1e-6):
        raise ModelError(
            f"the model's output is not the {outputs} of its last linear layer "
            f"({last.weight}); declare outputs='probs' if it ends in a softmax, or use "
            "params='all' or parameter names"
        )
    return last
