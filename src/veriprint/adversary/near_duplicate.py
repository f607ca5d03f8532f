"""Near-duplicates: an input within ``eps`` (L-inf) of another one is treated as a test.

Twin pairs are 1-2 grey levels apart and natural images almost never come within 100 of
each other, so a provider that keeps its traffic can flag, at no cost, any input close to
another: in the same request (``scope="request"``) or to anything it kept
(``scope="traffic"``: every input it has answered, in the honest phase and after).
A request holding a flagged row goes to the intact copy whole.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from veriprint.adversary.base import Policy, register_policy
from veriprint.errors import ConfigError

__all__ = ["NearDuplicatePolicy", "nearest_linf"]


def _coarse(x: np.ndarray) -> np.ndarray:
    """Means of blocks of 16 consecutive values: their L-inf distance bounds the full one from below."""
    flat = x.reshape(len(x), -1).astype(np.float32)
    d = flat.shape[1]
    pad = (-d) % 16
    if pad:
        flat = np.concatenate([flat, np.repeat(flat[:, -1:], pad, axis=1)], axis=1)
    return flat.reshape(len(x), -1, 16).mean(axis=2)  # type: ignore[no-any-return]


def nearest_linf(x: np.ndarray, kept: np.ndarray, kept_coarse: np.ndarray | None = None,
                 within: float = np.inf) -> np.ndarray:
    """For each row of ``x``, its L-inf distance to the nearest row of ``kept`` (``inf``
    when none is within ``within``; exact below it)."""
    out = np.full(len(x), np.inf)
    if len(kept) == 0 or len(x) == 0:
        return out
    flat_k = kept.reshape(len(kept), -1)
    ck = _coarse(kept) if kept_coarse is None else kept_coarse
    cx = _coarse(x)
    flat_x = x.reshape(len(x), -1)
    for i in range(len(x)):
        lower = np.abs(ck - cx[i]).max(axis=1)  # a lower bound of the exact distance
        cand = np.flatnonzero(lower <= within) if np.isfinite(within) else np.arange(len(kept))
        if cand.size:
            d = np.abs(flat_k[cand] - flat_x[i]).max(axis=1)
            best = float(d.min())
            if best <= within:
                out[i] = best
    return out


@register_policy("near-duplicate", "an input within eps (L-inf) of another in the request or in kept traffic",
                 stateful=True)
class NearDuplicatePolicy(Policy):
    """Flag inputs close to another input.

    Args:
        eps: L-inf distance on the ``[0, 1]`` scale (default 16/255).
        scope: ``"traffic"`` (default: the request and everything kept) or ``"request"``.
        whole_request: route the whole request when one row is flagged (default True).
    """

    def __init__(self, eps: float = 16 / 255, scope: Literal["traffic", "request"] = "traffic",
                 whole_request: bool = True) -> None:
        if scope not in ("traffic", "request"):
            raise ConfigError(f"expected scope 'traffic' or 'request', got {scope!r}")
        self.eps = float(eps)
        self.scope = scope
        self.whole_request = whole_request
        self._kept: list[np.ndarray] = []
        self._kept_coarse: list[np.ndarray] = []

    def describe(self) -> str:
        return f"{self.name} (eps {self.eps * 255:.3g}/255, {self.scope})"

    def score(self, x: np.ndarray, served: np.ndarray) -> np.ndarray:
        """Minus the distance to the nearest other input (request and, with traffic, kept)."""
        x = np.asarray(x, np.float32)
        flat = x.reshape(len(x), -1)
        d = np.full(len(x), np.inf)
        for i in range(len(x)):
            if len(x) > 1:
                others = np.abs(np.delete(flat, i, axis=0) - flat[i]).max(axis=1)
                d[i] = float(others.min())
        if self.scope == "traffic" and self._kept:
            kept = np.concatenate(self._kept)
            d = np.minimum(d, nearest_linf(x, kept, np.concatenate(self._kept_coarse), within=self.eps))
        return -d

    def route(self, x: np.ndarray, served: np.ndarray) -> np.ndarray:
        flagged = -self.score(x, served) <= self.eps
        if self.whole_request and flagged.any():
            return np.ones(len(x), bool)
        return flagged

    def observe(self, x: np.ndarray, honest: bool) -> None:
        if self.scope == "traffic":
            x = np.asarray(x, np.float32)
            self._kept.append(x.copy())
            self._kept_coarse.append(_coarse(x))

    def reset(self) -> None:
        self._kept.clear()
        self._kept_coarse.clear()
