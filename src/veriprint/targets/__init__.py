"""Targets: where a fingerprint is checked. See :mod:`veriprint.targets.base`."""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from typing import Any

from torch import nn

from veriprint.errors import ConfigError, UnknownOptionError
from veriprint.redact import refuse_url_credentials
from veriprint.targets.base import OUTPUT_FORMS, OutputForm, QueryBatch, Target, TargetError
from veriprint.targets.local import CallableTarget, OnnxTarget, TorchTarget

__all__ = [
    "REMOTE_SCHEMES",
    "CallableTarget",
    "OnnxTarget",
    "OutputForm",
    "QueryBatch",
    "Target",
    "TargetError",
    "TorchTarget",
    "open_target",
]

# URL prefix -> "module:factory"; each factory takes (url, **options) and returns a Target.
REMOTE_SCHEMES: dict[str, str] = {
    "http://": "veriprint.targets.oip:OipTarget",
    "https://": "veriprint.targets.oip:OipTarget",
    "torchserve+http://": "veriprint.targets.torchserve:TorchServeTarget",
    "torchserve+https://": "veriprint.targets.torchserve:TorchServeTarget",
    "tfserving+http://": "veriprint.targets.tfserving:TfServingTarget",
    "tfserving+https://": "veriprint.targets.tfserving:TfServingTarget",
    "grpc://": "veriprint.targets.oip_grpc:GrpcOipTarget",
    "grpcs://": "veriprint.targets.oip_grpc:GrpcOipTarget",
}


def open_target(
    spec: str | os.PathLike[str] | nn.Module | Target | Callable[..., Any],
    *,
    weights: str | os.PathLike[str] | None = None,
    output: OutputForm | None = None,
    **options: Any,
) -> Target:
    """Make a :class:`Target` from what a user names.

    Args:
        spec: a :class:`Target`; an ``nn.Module``; a callable (NumPy batch to outputs);
            a remote URL whose scheme is in :data:`REMOTE_SCHEMES`; an ``.onnx`` file (run
            by onnxruntime); or any model source :func:`veriprint.models.load_model` takes.
        weights: weights for a factory model source.
        output: the form of the target's outputs (default ``"logits"``).
        **options: passed to the target's constructor (``max_batch``, ``threads``, ...).
    """
    if output is not None and output not in OUTPUT_FORMS:
        raise ConfigError(f"expected output in {OUTPUT_FORMS}, got {output!r}")
    if isinstance(spec, Target):
        return spec
    kw: dict[str, Any] = dict(options)
    if output is not None:
        kw["output"] = output
    if isinstance(spec, nn.Module):
        return _make(TorchTarget, spec.eval(), kw)
    if callable(spec) and not isinstance(spec, str | os.PathLike):
        return _make(CallableTarget, spec, kw)
    if not isinstance(spec, str | os.PathLike):
        raise ConfigError(f"expected a target (a Target, module, callable, model file or URL), "
                          f"got {type(spec).__name__}")
    text = os.fspath(spec)
    if not text:
        raise ConfigError("expected a target (a model file or factory, or a server URL), got ''")
    for prefix, factory in REMOTE_SCHEMES.items():
        if text.startswith(prefix):
            refuse_url_credentials(text)
            module, _, name = factory.partition(":")
            return _make(getattr(importlib.import_module(module), name), text, kw)
    _make_check(OnnxTarget if text.endswith(".onnx") else TorchTarget, kw)
    if text.endswith(".onnx"):
        return OnnxTarget(text, **kw)
    from veriprint.models import load_model

    return TorchTarget(load_model(text, weights=weights), **kw)


def _make_check(cls: type, options: dict[str, Any]) -> None:
    """Refuse options that ``cls`` does not take, naming the ones it does."""
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # it checks its own (remote targets: transport options)
    known = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UnknownOptionError(
            f"option{'s' * (len(unknown) > 1)} {', '.join(unknown)} not taken by "
            f"{cls.__name__} targets; they take {', '.join(known) or 'no options'}")


def _make(cls: type, first: Any, options: dict[str, Any]) -> Target:
    _make_check(cls, options)
    target: Target = cls(first, **options)
    return target
