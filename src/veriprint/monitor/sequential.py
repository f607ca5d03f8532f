"""A sequential test over an endpoint's checks: is it answering from the intact model?

Each check goes out as several requests (``requests_per_check``); a request *mismatches*
when any fingerprint sample it carried got an answer the intact model cannot give. A
provider that routes a share of its requests to a different model shows up as a steady
trickle of mismatching requests among matching ones, which no single check may make
obvious. This module accumulates that evidence over the endpoint's whole history.

**The hypothesis.** H0: the endpoint answers from the intact model, under which each
request mismatches with probability at most ``p0`` (``false_mismatch_rate``, default
1e-3), independently of earlier requests. ``p0`` is an assumption: the noise floor is
calibrated so that the intact model's own answers (other hardware, other batch sizes)
stay within it, and ``p0`` bounds how often that calibration may still be beaten.

**The test.** A betting e-process: for each bet ``lambda_j`` of a fixed grid in
``(0, 1/p0)``, the wealth ``prod_t (1 + lambda_j (X_t - p0))`` over the requests ``X_t``
(1: mismatched) is a nonnegative supermartingale under H0 (each factor has mean at most 1
when ``P(X_t = 1) <= p0``), and so is their average ``W_t``. Ville's inequality gives
``P(sup_t W_t >= 1/alpha) <= alpha`` under H0, at every time at once: the test may be
looked at after every check, forever, and alarms when ``W >= 1/alpha`` (``alpha``, default
1e-3). The grid covers routed shares from 1% to 50% (a bet ``c / p0`` grows fastest when a
share ``c`` of the requests mismatches).

**The share.** After the first mismatching request, the requests that follow are a fair
sample of the endpoint's behaviour (the first mismatch is a stopping time, so it is left
out); ``k`` mismatches among those ``n`` give the estimate ``k / n`` and a one-sided
Clopper-Pearson 95% lower bound on the share of requests answered by a different model
(a lower bound also because a routed request mismatches only when one of its samples
reveals the difference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["BET_FRACTIONS", "SequentialParams", "SequentialState", "clopper_pearson_lower", "update"]

#: The bets, as fractions ``c`` of ``1/p0`` (``lambda = c / p0``).
BET_FRACTIONS = (0.5, 0.25, 0.1, 0.05, 0.025, 0.01)


@dataclass(frozen=True)
class SequentialParams:
    """The test's assumptions: ``p0`` bounds a request's mismatch rate under H0, ``alpha``
    the chance of ever alarming under H0."""

    p0: float = 1e-3
    alpha: float = 1e-3

    def __post_init__(self) -> None:
        if not 0 < self.p0 < 1 or not 0 < self.alpha < 1:
            raise ValueError(f"expected p0 and alpha in (0, 1), got p0={self.p0}, alpha={self.alpha}")

    @property
    def lambdas(self) -> tuple[float, ...]:
        return tuple(c / self.p0 for c in BET_FRACTIONS)

    @property
    def threshold(self) -> float:
        return 1.0 / self.alpha


@dataclass(frozen=True)
class SequentialState:
    """The test after some requests (stored with each check as a JSON object).

    Attributes:
        p0, alpha: the parameters it ran under.
        log_wealth: ``log`` of each bet's wealth.
        requests, mismatched: requests seen and those that mismatched.
        window_requests, window_mismatched: the same, counted after the first mismatch.
        first_mismatch: whether a mismatch was seen (the window is open).
        alarm: the test crossed ``1/alpha`` (it stays crossed).
        alarm_slot: the slot of the check where it crossed.
    """

    p0: float
    alpha: float
    log_wealth: list[float] = field(default_factory=list)
    requests: int = 0
    mismatched: int = 0
    window_requests: int = 0
    window_mismatched: int = 0
    first_mismatch: bool = False
    alarm: bool = False
    alarm_slot: int | None = None

    @classmethod
    def start(cls, params: SequentialParams) -> SequentialState:
        return cls(params.p0, params.alpha, [0.0] * len(params.lambdas))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, params: SequentialParams) -> SequentialState:
        """The stored state, or a new one when none was stored or its parameters differ."""
        if not d or d.get("p0") != params.p0 or d.get("alpha") != params.alpha \
                or len(d.get("log_wealth") or ()) != len(params.lambdas):
            return cls.start(params)
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def evidence(self) -> float:
        """``W``: the average wealth of the bets (1 before any request)."""
        if not self.log_wealth:
            return 1.0
        top = max(self.log_wealth)
        log_mean = top + math.log(sum(math.exp(w - top) for w in self.log_wealth) / len(self.log_wealth))
        return math.exp(min(log_mean, 690.0))

    @property
    def share(self) -> float | None:
        """Share of the window's requests that mismatched (None before the window opens)."""
        return self.window_mismatched / self.window_requests if self.window_requests else None

    @property
    def share_lower(self) -> float:
        """One-sided 95% Clopper-Pearson lower bound on that share (0 with no data)."""
        return clopper_pearson_lower(self.window_mismatched, self.window_requests)


def update(state: SequentialState | None, outcomes: Sequence[bool], params: SequentialParams,
           slot: int | None = None) -> tuple[SequentialState, bool]:
    """The state after one check's request outcomes (True: mismatched), and whether the test
    crossed ``1/alpha`` in this check (for the first time)."""
    s = state if state is not None else SequentialState.start(params)
    lambdas = params.lambdas
    logs = list(s.log_wealth)
    up = [math.log1p(lam * (1 - params.p0)) for lam in lambdas]
    down = [math.log1p(-lam * params.p0) for lam in lambdas]
    mism = s.mismatched
    wn, wk, opened = s.window_requests, s.window_mismatched, s.first_mismatch
    for x in outcomes:
        for j in range(len(logs)):
            logs[j] += up[j] if x else down[j]
        mism += bool(x)
        if opened:
            wn += 1
            wk += bool(x)
        elif x:
            opened = True
    new = replace(s, log_wealth=logs, requests=s.requests + len(outcomes), mismatched=mism, window_requests=wn,
                  window_mismatched=wk, first_mismatch=opened)
    crossed = not s.alarm and new.evidence >= params.threshold
    if crossed:
        new = replace(new, alarm=True, alarm_slot=slot)
    return new, crossed


def _binom_sf(k: int, n: int, p: float) -> float:
    """``P(Bin(n, p) >= k)``."""
    if k <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    lp, lq, lnf = math.log(p), math.log1p(-p), math.lgamma(n + 1)

    def pmf(i: int) -> float:
        return math.exp(lnf - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)

    if k <= n - k:  # the shorter sum: 1 - P(X < k)
        return min(max(1.0 - sum(pmf(i) for i in range(k)), 0.0), 1.0)
    return min(sum(pmf(i) for i in range(k, n + 1)), 1.0)


def clopper_pearson_lower(k: int, n: int, confidence: float = 0.95) -> float:
    """The one-sided Clopper-Pearson lower bound on a binomial proportion from ``k`` of ``n``:
    the ``p`` with ``P(Bin(n, p) >= k) = 1 - confidence`` (0 when ``k == 0``), by bisection."""
    if n <= 0 or k <= 0:
        return 0.0
    k = min(k, n)
    target = 1.0 - confidence
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if _binom_sf(k, n, mid) < target:
            lo = mid
        else:
            hi = mid
    return lo
