"""The provider as adversary: a server that answers from a tampered copy and routes around checks.

A :class:`Provider` holds two copies of a model, the intact one the owner shipped and the one
it would rather serve (tampered, quantized, pruned), and a :class:`Policy` that decides, for
each row of each request, which copy answers. Before :meth:`Provider.swap` every row is
answered by the intact copy (the honest phase, in which a policy may remember what it saw);
after it, rows the policy flags go to the intact copy and the rest to the served one.

A policy sees exactly what a provider sees: the request's inputs (as floats), the served
copy's own outputs for them, and everything it kept from earlier requests. It never sees
which rows are the owner's queries. What it costs the provider is the share of *natural*
traffic it must answer from the intact copy (:func:`routed_share`): a policy that flags
every check and 0.1% of users is cheap; one that flags 10% of users gives away most of what
the swap saved.

Policies are registered like attacks (:func:`register_policy`, :func:`list_policies`,
:func:`make_policy`), one module each in this package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from veriprint.errors import ConfigError
from veriprint.targets.base import OutputForm, QueryBatch, Target

__all__ = ["Policy", "PolicyInfo", "Provider", "calibrate", "list_policies", "make_policy", "margins",
           "register_policy", "routed_share", "served_logits", "softmax"]


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float logits, in float64."""
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def margins(z: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit of each row (what a margin router reads off its own copy)."""
    z = np.asarray(z, np.float64)
    if z.shape[1] < 2:
        return np.full(len(z), np.inf)
    part = np.partition(z, -2, axis=1)
    return part[:, -1] - part[:, -2]


class Policy:
    """How a provider decides which rows the intact copy answers.

    Subclasses set :attr:`name` and implement :meth:`score` (stateless detectors: higher is
    more suspicious; rows at or above :attr:`threshold` are routed to the intact copy) or
    override :meth:`route` (policies with memory: replay, near-duplicates over all traffic,
    partial routing). :meth:`observe` is called after every request with what was sent, in
    the honest phase and after the swap alike.

    Attributes:
        threshold: the score at or above which a row is answered by the intact copy
            (set by hand or by :func:`calibrate` to a flag rate on natural traffic).
    """

    name: ClassVar[str] = "policy"
    threshold: float = float("inf")
    model: nn.Module | None = None

    def bind(self, model: nn.Module) -> Policy:
        """Give the policy the provider's served copy (detectors that run it again need it)."""
        self.model = model
        return self

    def score(self, x: np.ndarray, served: np.ndarray) -> np.ndarray:
        """Suspicion of each row (float ``(N,)``); ``served`` is the served copy's logits."""
        raise NotImplementedError(f"{type(self).__name__} has no per-row score")

    def route(self, x: np.ndarray, served: np.ndarray) -> np.ndarray:
        """Rows (bool ``(N,)``) to answer from the intact copy."""
        return self.score(x, served) >= self.threshold

    def observe(self, x: np.ndarray, honest: bool) -> None:
        """After a request: ``x`` was answered (``honest``: every row by the intact copy)."""

    def reset(self) -> None:
        """Forget everything kept from earlier requests."""

    def describe(self) -> str:
        t = "" if not np.isfinite(self.threshold) else f" (threshold {self.threshold:.4g})"
        return f"{self.name}{t}"


@dataclass(frozen=True)
class PolicyInfo:
    """A registered policy: its name, class, one-line summary and whether it keeps state."""

    name: str
    cls: type[Policy]
    summary: str
    stateful: bool


_POLICIES: dict[str, PolicyInfo] = {}
P = TypeVar("P", bound=type[Policy])


def register_policy(name: str, summary: str, *, stateful: bool = False) -> Callable[[P], P]:
    """Register a :class:`Policy` subclass under ``name``."""

    def deco(cls: P) -> P:
        if name in _POLICIES:
            raise ValueError(f"policy {name!r} is already registered")
        cls.name = name
        _POLICIES[name] = PolicyInfo(name, cls, summary, stateful)
        return cls

    return deco


def list_policies() -> list[PolicyInfo]:
    """Every registered policy, by name."""
    from veriprint import adversary  # noqa: F401  (registers the built-in policies)

    return [_POLICIES[k] for k in sorted(_POLICIES)]


def make_policy(name: str, **options: Any) -> Policy:
    """A new policy of the registered ``name`` with ``options``."""
    infos = {p.name: p for p in list_policies()}
    if name not in infos:
        raise ConfigError(f"expected a provider policy among {', '.join(infos)}, got {name!r}")
    return infos[name].cls(**options)


def served_logits(model: nn.Module, x: np.ndarray, batch: int = 512) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for lo in range(0, len(x), batch):
            out.append(model(torch.from_numpy(np.ascontiguousarray(x[lo:lo + batch], np.float32))).double())
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


class Provider(Target):
    """A model server that may serve a tampered copy and route suspicious rows to the intact one.

    Args:
        intact: the model the owner shipped.
        served: the copy the provider would rather serve (``None``: the intact one).
        policy: which rows go to the intact copy after the swap (``None``: none).
        output: the API's form: ``"logits"`` (default), ``"probs"`` or ``"labels"``.
        max_batch: most rows per request (the verifier splits batches into requests).
        swapped: start after the swap (default True); ``False`` starts the honest phase.

    Attributes:
        rows: rows answered so far; ``rows_routed``: of them, rows answered from the intact
            copy after the swap; ``requests``: requests answered.
    """

    def __init__(self, intact: nn.Module, served: nn.Module | None = None, policy: Policy | None = None, *,
                 output: OutputForm = "logits", max_batch: int | None = None, swapped: bool = True) -> None:
        if output not in ("logits", "probs", "labels"):
            raise ConfigError(f"expected a provider output among logits, probs, labels, got {output!r}")
        self.intact = intact.eval()
        self.served = (served if served is not None else intact).eval()
        self.policy = None if policy is None else policy.bind(self.served)
        self.output = output
        self.max_batch = max_batch
        self.swapped = swapped
        self.description = f"provider ({policy.describe() if policy else 'no policy'})"
        self.rows = 0
        self.rows_routed = 0
        self.requests = 0

    def swap(self) -> None:
        """From now on, answer from the served copy except where the policy routes."""
        self.swapped = True

    def _answer(self, batch: QueryBatch) -> np.ndarray:
        x = np.asarray(batch.x, np.float32)
        intact = served_logits(self.intact, x)
        if not self.swapped:
            z, honest = intact, True
        else:
            served = served_logits(self.served, x)
            mask = np.zeros(len(x), bool) if self.policy is None else np.asarray(self.policy.route(x, served), bool)
            if mask.shape != (len(x),):
                raise ConfigError(f"policy {self.policy}: expected {len(x)} routing flags, got {mask.shape}")
            self.rows_routed += int(mask.sum())
            z = np.where(mask[:, None], intact, served)
            honest = bool(mask.all())
        if self.policy is not None:
            self.policy.observe(x, honest)
        self.rows += len(x)
        self.requests += 1
        if self.output == "labels":
            return z.argmax(axis=1)  # type: ignore[no-any-return]
        return (softmax(z) if self.output == "probs" else z).astype(np.float32)


def routed_share(policy: Policy, natural: np.ndarray, served: nn.Module, *, request: int = 32) -> float:
    """The share of natural traffic ``policy`` answers from the intact copy after the swap.

    The natural inputs are sent as requests of ``request`` rows, in order, through a fresh
    provider whose served copy is ``served``; the policy keeps whatever state it has.
    """
    p = Provider(served, served, policy, swapped=True, max_batch=request)
    p.query(QueryBatch(np.asarray(natural, np.float32)))
    return p.rows_routed / max(p.rows, 1)


def calibrate(policy: Policy, natural: np.ndarray, served: nn.Module, rate: float) -> Policy:
    """Set a score policy's threshold so that it flags ``rate`` of ``natural`` (served copy's scores)."""
    if not 0 <= rate <= 1:
        raise ConfigError(f"expected a flag rate in [0, 1], got {rate}")
    policy.bind(served)
    s = policy.score(np.asarray(natural, np.float32), served_logits(served, np.asarray(natural, np.float32)))
    policy.threshold = float("inf") if rate == 0 else float(np.quantile(s, 1 - rate, method="higher"))
    return policy
