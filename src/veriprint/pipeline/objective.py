"""The sensitivity objective (Eq. 6 of He, Zhang, Lee, CVPR 2019) and the IBSF alternative.

``S(x) = sum_i ||d f_i(W, x) / dW||^2`` over all ``r`` outputs ``f_i`` (probabilities or
logits) and the parameters of interest ``W``.

Three exact evaluations and one estimate, all batched over samples:

* **closed form** (``params="last"``, the paper's choice): for ``z = W h + b`` and
  ``p = softmax(z)``, ``S = (||h||^2 + 1) * sum_i p_i^2 ||e_i - p||^2`` (``r (||h||^2+1)``
  for logits). It is evaluated in log space as
  ``log S = log(||h||^2+1) + logsumexp_i [2 log p_i + log((sum_{j!=i} p_j)^2 + sum_{j!=i} p_j^2)]``
  where the sums over the *other* classes are taken directly (never as ``1 - p_i``), so
  the value stays exact on saturated softmax outputs where ``S`` underflows float64.
* **jacobian** (any ``W``): the logit Jacobian ``J = dz/dW`` per sample via
  ``torch.func.vmap(jacrev(...))``; with ``q^(i)`` the softmax over the classes other than
  ``i``, ``dp_i/dW = p_i (sum_{j!=i} p_j) (J_i - sum_k q^(i)_k J_k)``, again free of
  cancellation.
* **loop**: the paper's Algorithm 1 literally, one autograd pass per output and sample;
  slow, used as the reference and for TorchScript modules.
* **probe** (any ``W``, large ``r``): Hutchinson's estimator ``E_u ||A^T u||^2`` with
  Rademacher ``u`` and ``A`` the Jacobian of the outputs; unbiased for ``S``, variance
  ``2 (||A A^T||_F^2 - sum_i (A A^T)_ii^2) / probes``. One vector-Jacobian product per probe.

The IBSF objective (ICML 2024) is the entropy of the renormalized top-``k`` probabilities.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vjp, vmap
from torch.overrides import TorchFunctionMode

from veriprint.models import LastLayer, ModelError, OutputKind, split_last_layer

__all__ = [
    "Method",
    "ParamSpec",
    "entropy_topk",
    "log_sensitivity",
    "resolve_params",
    "sensitivity",
    "sensitivity_loop",
]

ParamSpec = str | Sequence[str]
Method = Literal["auto", "closed", "jacobian", "probe", "loop"]


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(a))`` for ``a < 0``, accurate on both sides of ``-log 2``."""
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def _log_others(logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class ``i``: ``log sum_{j!=i} p_j`` and ``log sum_{j!=i} p_j^2``, shape ``(N, r)``.

    For the top class both sums are taken over the other entries directly; for every
    other class ``p_i <= 1/2`` so ``log(1 - p_i)`` and ``log(sum p^2 - p_i^2)`` are
    well conditioned.
    """
    top = logp.argmax(dim=-1, keepdim=True)
    is_top = torch.arange(logp.shape[-1], device=logp.device) == top
    masked = logp.masked_fill(is_top, float("-inf"))
    lo_top = torch.logsumexp(masked, dim=-1, keepdim=True)
    lo2_top = torch.logsumexp(2 * masked, dim=-1, keepdim=True)
    total2 = torch.logsumexp(2 * logp, dim=-1, keepdim=True)
    safe = torch.where(is_top, torch.full_like(logp, -1.0), logp)
    safe2 = torch.where(is_top, torch.full_like(logp, -1.0), (2 * logp - total2).clamp(max=-math.log(2.0)))
    lo = torch.where(is_top, lo_top.expand_as(logp), _log1mexp(safe))
    lo2 = torch.where(is_top, lo2_top.expand_as(logp), total2 + _log1mexp(safe2))
    return lo, lo2


def _log_closed_form(h: torch.Tensor, z: torch.Tensor, outputs: OutputKind, has_bias: bool) -> torch.Tensor:
    hh = h.flatten(1).pow(2).sum(dim=1)
    log_h = torch.log1p(hh) if has_bias else torch.log(hh)
    if outputs == "logits":
        return log_h + math.log(z.shape[-1])
    logp = torch.log_softmax(z, dim=-1)
    return log_h + torch.logsumexp(_log_jacobian_rows(logp), dim=-1)


def _log_jacobian_rows(logp: torch.Tensor) -> torch.Tensor:
    """``log ||d p_i / d z||^2`` per class, shape ``(N, r)``.

    ``||d p_i / d z||^2 = p_i^2 ((1 - p_i)^2 + sum_{j != i} p_j^2) = p_i^2 (1 - 2 p_i + sum_j p_j^2)``.
    Every class but the top one has ``p_i <= 1/2``, so the last factor is at least 1/4 and
    is computed directly (few elementwise passes: this runs at every generation step). For
    the top class both sums run over the other classes in log space, which stays exact when
    the softmax saturates.
    """
    p = logp.exp()
    q = p.pow(2).sum(dim=-1, keepdim=True)
    top = logp.argmax(dim=-1, keepdim=True)
    rest = torch.log((1 - 2 * p + q).clamp_min(1e-30))  # the top entry is replaced below
    masked = logp.scatter(-1, top, float("-inf"))
    top_rest = torch.logaddexp(2 * torch.logsumexp(masked, dim=-1, keepdim=True),
                               torch.logsumexp(2 * masked, dim=-1, keepdim=True))
    return 2 * logp + rest.scatter(-1, top, top_rest)


def resolve_params(model: nn.Module, params: ParamSpec, x: torch.Tensor | None = None) -> list[str]:
    """Names of the parameters of interest.

    Args:
        model: the classifier.
        params: ``"last"`` (weight and bias of the final linear layer), ``"all"``, or a
            list of names / glob patterns (``"features.0.*"``).
        x: example batch, needed to locate the last layer.
    """
    names = [n for n, _ in model.named_parameters()]
    if params == "last":
        if x is None:
            raise ValueError("params='last' needs an example batch to locate the last layer")
        try:
            return split_last_layer(model, x, "logits").names
        except ModelError:
            return split_last_layer(model, x, "probs").names
    if params == "all":
        return names
    patterns = [params] if isinstance(params, str) else list(params)
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    missing = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if missing:
        raise ValueError(f"parameter patterns {missing} match none of {names}")
    return chosen


_LAYER_NORMS = (F.layer_norm, torch.layer_norm, torch.ops.aten.layer_norm.default)


def _layer_norm(x: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, eps: float = 1e-5, *_: Any) -> torch.Tensor:
    dims = tuple(range(-len(normalized_shape), 0))
    centered = x - x.mean(dims, keepdim=True)
    y = centered * torch.rsqrt(centered.pow(2).mean(dims, keepdim=True) + eps)
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


class _DecomposedLayerNorm(TorchFunctionMode):
    """Evaluates layer norm with elementary ops inside the ``torch.func`` transforms.

    Under ``vmap`` the fused layer-norm backward gives a wrong gradient with respect to
    the input when the Jacobian is taken with respect to the layer-norm parameters
    (torch 2.13; the batching rule of ``native_layer_norm_backward``), so ``d log S/dx``
    of the jacobian and probe methods was silently wrong for such parameters. The
    decomposition computes the same function and differentiates correctly.
    """

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _LAYER_NORMS:
            kwargs = {("x" if k == "input" else k): v for k, v in kwargs.items() if k != "cudnn_enable"}
            return _layer_norm(*args, **kwargs)
        return func(*args, **kwargs)


def _logits_fn(model: nn.Module, model_outputs: OutputKind, names: list[str]):  # type: ignore[no-untyped-def]
    frozen = {k: v.detach() for k, v in model.named_parameters() if k not in names}
    frozen.update(dict(model.named_buffers()))

    def logits(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        with _DecomposedLayerNorm():
            out = functional_call(model, {**frozen, **p}, (xi.unsqueeze(0),)).squeeze(0)
        # For a softmax-ending model, log p is a valid logit vector (same softmax).
        return torch.log(out.clamp_min(1e-45)) if model_outputs == "probs" else out

    return logits


def _log_jacobian(
    model: nn.Module, x: torch.Tensor, names: list[str], outputs: OutputKind,
    model_outputs: OutputKind, chunk: int | None,
) -> torch.Tensor:
    params = {k: v.detach() for k, v in model.named_parameters() if k in names}
    logits = _logits_fn(model, model_outputs, names)

    def per_sample(xi: torch.Tensor) -> torch.Tensor:
        jac = jacrev(logits)(params, xi)  # name -> (r, *shape)
        z = logits(params, xi)
        J = torch.cat([j.flatten(1) for j in jac.values()], dim=1)  # (r, P)
        if outputs == "logits":
            return torch.log(J.pow(2).sum())
        r = z.shape[0]
        eye = torch.eye(r, dtype=torch.bool, device=z.device)
        q = torch.softmax(z.unsqueeze(0).masked_fill(eye, float("-inf")), dim=-1)  # (r, r)
        D = J - q @ J
        logp = torch.log_softmax(z, dim=-1)
        lo, _ = _log_others(logp.unsqueeze(0))
        return torch.logsumexp(2 * logp + 2 * lo.squeeze(0) + torch.log(D.pow(2).sum(1)), dim=0)

    return vmap(per_sample, chunk_size=chunk)(x)


def _log_probe(
    model: nn.Module, x: torch.Tensor, names: list[str], outputs: OutputKind,
    model_outputs: OutputKind, probes: int, generator: torch.Generator | None,
) -> torch.Tensor:
    params = {k: v.detach() for k, v in model.named_parameters() if k in names}
    logits = _logits_fn(model, model_outputs, names)
    with torch.no_grad():
        r = int(model(x[:1]).shape[-1])
    draw = generator.device if generator is not None else "cpu"  # drawn where the generator is, then moved
    u = torch.randint(0, 2, (probes, x.shape[0], r), generator=generator, device=draw).to(device=x.device,
                                                                                           dtype=x.dtype) * 2 - 1

    def per_sample(xi: torch.Tensor, ui: torch.Tensor) -> torch.Tensor:
        z, pullback = vjp(lambda p: logits(p, xi), params)  # type: ignore[misc]
        if outputs == "logits":
            c, log_scale = ui, torch.zeros((), dtype=z.dtype, device=z.device)
        else:
            logp = torch.log_softmax(z, dim=-1)
            lo, _ = _log_others(logp.unsqueeze(0))
            log_w = logp + lo.squeeze(0)  # w_i = p_i sum_{j!=i} p_j
            log_scale = log_w.max()
            uw = ui * torch.exp(log_w - log_scale)
            eye = torch.eye(r, dtype=torch.bool, device=z.device)
            q = torch.softmax(z.unsqueeze(0).masked_fill(eye, float("-inf")), dim=-1)
            c = uw - q.T @ uw
        g = pullback(c)[0]
        sq = sum(t.pow(2).sum() for t in g.values())
        return torch.log(sq) + 2 * log_scale

    vals = torch.stack([vmap(per_sample)(x, u[k]) for k in range(probes)])  # (probes, N)
    return torch.logsumexp(vals, dim=0) - math.log(probes)


def sensitivity_loop(
    model: nn.Module, x: torch.Tensor, names: list[str], outputs: OutputKind = "probs",
    model_outputs: OutputKind = "logits",
) -> torch.Tensor:
    """The paper's Algorithm 1 literally: per sample, one autograd pass per output.

    Returns ``S`` (not its log), shape ``(N,)``, in the dtype of ``x``. Slow: the reference.
    """
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    flags = [p.requires_grad for p in chosen]
    for p in chosen:
        p.requires_grad_(True)
    try:
        values = []
        for xi in x:
            out = model(xi.unsqueeze(0)).squeeze(0)
            if outputs == "probs" and model_outputs == "logits":
                out = torch.softmax(out, dim=-1)
            elif outputs == "logits" and model_outputs == "probs":
                raise ValueError("outputs='logits' needs a model that returns logits")
            s = out.new_zeros(())
            for i in range(out.shape[0]):
                grads = torch.autograd.grad(out[i], chosen, retain_graph=True, allow_unused=True)
                s = s + sum(g.pow(2).sum() for g in grads if g is not None)
            values.append(s)
        return torch.stack(values)
    finally:
        for p, f in zip(chosen, flags, strict=True):
            p.requires_grad_(f)


def log_sensitivity(
    model: nn.Module,
    x: torch.Tensor,
    *,
    params: ParamSpec = "last",
    outputs: OutputKind = "probs",
    model_outputs: OutputKind = "logits",
    method: Method = "auto",
    probes: int = 16,
    chunk: int | None = 64,
    generator: torch.Generator | None = None,
    last: LastLayer | None = None,
) -> torch.Tensor:
    """``log S`` per sample, differentiable with respect to ``x``.

    Args:
        model: the classifier, in eval mode.
        x: inputs, shape ``(N, ...)``.
        params: parameters of interest: ``"last"`` (default), ``"all"`` or names/globs.
        outputs: what ``f`` in Eq. 6 is: ``"probs"`` (default) or ``"logits"``.
        model_outputs: what the model returns: ``"logits"`` (default) or ``"probs"``.
        method: ``"auto"`` (closed form for ``"last"``, else jacobian), ``"closed"``,
            ``"jacobian"``, ``"probe"`` or ``"loop"``.
        probes: number of Rademacher probes for ``method="probe"`` (default 16).
        chunk: samples per vectorized chunk for the jacobian method (default 64).
        generator: random generator for the probes.
        last: for the closed form, the model's last layer as found by
            :func:`~veriprint.models.split_last_layer` (default: found on each call, which
            costs two small forward passes; a caller evaluating many batches passes it once).

    Returns:
        Tensor of shape ``(N,)``.
    """
    if outputs == "logits" and model_outputs == "probs":
        raise ValueError("outputs='logits' needs a model that returns logits, got a probs model")
    if outputs not in ("probs", "logits"):
        raise ValueError(f"expected outputs 'probs' or 'logits', got {outputs!r}")
    if model_outputs not in ("probs", "logits"):
        raise ValueError(f"expected model_outputs 'probs' or 'logits', got {model_outputs!r}")
    is_script = isinstance(model, torch.jit.ScriptModule)
    if method == "auto":
        method = "loop" if is_script else ("closed" if params == "last" else "jacobian")
    if method == "closed":
        if params != "last":
            raise ValueError(f"the closed form needs params='last', got {params!r}")
        if last is None:
            last = split_last_layer(model, x, model_outputs)
        h, z, _ = last.forward(x)
        return _log_closed_form(h, z, outputs, last.bias is not None)
    names = resolve_params(model, params, x)
    if method == "jacobian":
        return _log_jacobian(model, x, names, outputs, model_outputs, chunk)
    if method == "probe":
        if probes < 1:
            raise ValueError(f"expected probes >= 1, got {probes}")
        return _log_probe(model, x, names, outputs, model_outputs, probes, generator)
    if method == "loop":
        return torch.log(sensitivity_loop(model, x, names, outputs, model_outputs))
    raise ValueError(f"unknown method {method!r}: expected auto, closed, jacobian, probe or loop")


def sensitivity(
    model: nn.Module,
    x: torch.Tensor,
    params: ParamSpec = "last",
    outputs: OutputKind = "probs",
    **kwargs: object,
) -> torch.Tensor:
    """``S = sum_i ||d f_i(W, x)/dW||^2`` per sample (Eq. 6), shape ``(N,)``, float64.

    Computed as ``exp(log S)`` in float64; on saturated models ``S`` may underflow to
    0 even in float64, where :func:`log_sensitivity` stays exact. Keyword arguments are
    those of :func:`log_sensitivity`.
    """
    return torch.exp(log_sensitivity(model, x, params=params, outputs=outputs, **kwargs).double())  # type: ignore[arg-type]


def entropy_topk(model: nn.Module, x: torch.Tensor, *, k: int = 10, model_outputs: OutputKind = "logits") -> torch.Tensor:
    """IBSF objective: entropy of the renormalized top-``k`` probabilities, shape ``(N,)``.

    Computed from log-probabilities, so it never turns NaN when a probability underflows.
    """
    if model_outputs not in ("probs", "logits"):
        raise ValueError(f"expected model_outputs 'probs' or 'logits', got {model_outputs!r}")
    out = model(x)
    z = torch.log(out.clamp_min(1e-45)) if model_outputs == "probs" else out
    k = min(k, z.shape[-1])
    if k < 2:
        raise ValueError(f"expected k >= 2 and at least 2 classes, got k={k}")
    top = z.topk(k, dim=-1).values
    logq = torch.log_softmax(top, dim=-1)
    return -(logq.exp() * logq).sum(dim=-1)
