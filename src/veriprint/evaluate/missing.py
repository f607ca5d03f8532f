"""Missing rates: the probability that a fingerprint of ``N_S`` samples misses a tampering.

A fingerprint detects a tampered model when at least one of its samples answers
differently (under the output spec). Given a pool of ``n`` candidate samples of which
``d`` detect the tampering:

* **random selection** (and natural samples): ``N_S`` distinct samples drawn uniformly
  from the pool all miss with the hypergeometric probability

  ``P(miss | N_S) = C(n - d, N_S) / C(n, N_S) = prod_{i < N_S} (n - d - i) / (n - i)``,

  computed exactly here instead of sampled (the paper repeats 10,000 draws). Drawing a
  bag first and then ``N_S`` from the bag gives the same law, so the pool stands for the
  paper's bag.
* **MANC** is a deterministic function of the bag, so its missing rate is averaged over
  bags drawn without replacement from the larger pool (:func:`manc_missing`), with the
  Monte Carlo standard error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "MancMissing",
    "hypergeom_curve",
    "hypergeom_miss",
    "manc_missing",
    "manc_picks",
    "miss_from_picks",
    "per_query",
    "reach_picks",
    "required_samples",
]


def hypergeom_miss(n: int, d: int, k: int) -> float:
    """``C(n - d, k) / C(n, k)``: all of ``k`` draws without replacement from ``n`` miss the ``d`` detecting ones.

    Args:
        n: pool size.
        d: detecting samples in the pool, ``0 <= d <= n``.
        k: samples drawn, ``0 <= k <= n``.

    Returns:
        The exact probability, rounded once to the nearest float.
    """
    if not 0 <= d <= n:
        raise ValueError(f"expected 0 <= d <= n, got d={d}, n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"expected 0 <= k <= n={n}, got k={k}")
    return float(Fraction(math.comb(n - d, k), math.comb(n, k)))


def hypergeom_curve(n: int, d: int, k_max: int, *, stop_below: float = 0.0) -> list[float]:
    """``[hypergeom_miss(n, d, k) for k in 1..k_max]``, cut short once a value is ``<= stop_below``.

    ``k_max`` is clipped to ``n``. Computed as a running product (each factor
    ``(n - d - i) / (n - i)``), which agrees with :func:`hypergeom_miss` to float
    rounding and costs ``O(k_max)``.
    """
    if not 0 <= d <= n:
        raise ValueError(f"expected 0 <= d <= n, got d={d}, n={n}")
    out: list[float] = []
    p = 1.0
    for i in range(min(k_max, n)):
        p *= max(n - d - i, 0) / (n - i)
        out.append(p)
        if p <= stop_below:
            break
    return out


def required_samples(curve: list[float] | np.ndarray, alpha: float) -> int | None:
    """Smallest ``N_S`` (1-based) whose missing rate is ``<= alpha``, or None if the curve never gets there.

    ``curve[k - 1]`` is the missing rate with ``k`` samples.
    """
    for k, p in enumerate(curve, start=1):
        if p <= alpha:
            return k
    return None


@dataclass(frozen=True)
class MancMissing:
    """MANC's missing rate estimated over bags.

    Attributes:
        miss: mean missing rate with ``k = 1..n_max`` samples, shape ``(n_max,)``.
        stderr: its Monte Carlo standard error per ``k``.
        bags: number of bags drawn.
        bag: samples per bag.
        first_pick_detects: fraction of bags whose first MANC pick detects.
    """

    miss: np.ndarray
    stderr: np.ndarray
    bags: int
    bag: int
    first_pick_detects: float


def manc_picks(
    active: np.ndarray,
    *,
    bag: int,
    bags: int,
    n_max: int,
    seed: int = 0,
    score: np.ndarray | None = None,
    multi_cover: bool = False,
) -> np.ndarray:
    """MANC's picks (pool indices, in pick order) in each of ``bags`` seeded bags, ``(bags, n_max)``.

    Each bag is ``bag`` distinct pool samples (clipped to the pool size); MANC
    (Algorithm 2) picks ``n_max`` of them (clipped to ``bag``). The picks depend on the
    intact model only, so one set of picks serves every attack and output spec.

    Args:
        active: bool ``(P, M)``: which neurons each pool sample activates.
        bag: samples per bag.
        bags: bags drawn.
        n_max: picks per bag.
        seed: seed of the bag draws.
        score: MANC's tie-break per sample (higher first), e.g. the sensitivity.
        multi_cover: MANC's multi-cover once coverage is full (False: the paper's).
    """
    from veriprint.selectors.algorithms import manc

    return _picks_in_bags(active.shape[0], bag=bag, bags=bags, n_max=n_max, seed=seed, score=score,
                          pick=lambda idx, k, tie: manc(active[idx], k, score=tie, multi_cover=multi_cover).indices)


def _picks_in_bags(
    p: int,
    *,
    bag: int,
    bags: int,
    n_max: int,
    seed: int,
    score: np.ndarray | None,
    pick: Callable[[np.ndarray, int, torch.Tensor | None], torch.Tensor],
) -> np.ndarray:
    """Draw ``bags`` seeded bags of ``bag`` of ``p`` candidates; ``pick(idx, k, tie)`` chooses
    ``k`` of the bag ``idx`` (positions within it, tie-break scores ``tie``). One bag when
    the bag is the whole pool: the picks are then the same in every bag."""
    import torch

    bag = min(bag, p)
    n_max = min(n_max, bag)
    rng = np.random.default_rng(seed)
    out = np.empty((bags, n_max), dtype=np.int64)
    for b in range(bags):
        idx = np.sort(rng.choice(p, size=bag, replace=False)) if bag < p else np.arange(p)
        if b and bag == p:
            out[b] = out[0]
            continue
        tie = None if score is None else torch.from_numpy(np.asarray(score[idx], dtype=np.float64))
        out[b] = idx[pick(idx, n_max, tie).numpy()]
    return out


def reach_picks(
    values: np.ndarray,
    weights: np.ndarray,
    *,
    bag: int,
    bags: int,
    n_max: int,
    seed: int = 0,
    score: np.ndarray | None = None,
) -> np.ndarray:
    """Selection by reach (:func:`veriprint.selectors.algorithms.reach_cover`) in each of ``bags`` seeded
    bags: pool indices in pick order, ``(bags, n_max)``; the counterpart of
    :func:`manc_picks` for candidates described by their reach ``values`` ``(P, Q)``."""
    import torch

    from veriprint.selectors.algorithms import reach_cover

    v, w = torch.from_numpy(values), torch.from_numpy(weights)
    return _picks_in_bags(values.shape[0], bag=bag, bags=bags, n_max=n_max, seed=seed, score=score,
                          pick=lambda idx, k, tie: reach_cover(v[torch.from_numpy(idx)], w, k, score=tie).indices)


def per_query(pair_curve: list[float] | np.ndarray, k_max: int, *, no_pair: float = 1.0) -> list[float]:
    """A curve over pairs (entry ``j - 1``: ``j`` pairs) as a curve over queries (entry
    ``k - 1``: ``k`` queries, ``k // 2`` pairs; ``no_pair`` below one pair: a certain miss
    for a missing rate, 0 for its standard error). A curve cut short continues at its
    last value."""
    c = list(pair_curve)
    out = []
    for k in range(1, k_max + 1):
        j = k // 2
        out.append(no_pair if j == 0 else (float(c[j - 1]) if j <= len(c) else (float(c[-1]) if c else no_pair)))
    return out


def miss_from_picks(picks: np.ndarray, detect: np.ndarray, *, bag: int = 0) -> MancMissing:
    """Missing rate per fingerprint size from per-bag picks: a bag misses at ``k`` when none
    of its first ``k`` picks detects (the greedy picks do not depend on ``k``)."""
    bags = picks.shape[0]
    misses = ~np.logical_or.accumulate(detect[picks], axis=1)
    miss = misses.mean(axis=0)
    stderr = misses.std(axis=0, ddof=1) / math.sqrt(bags) if bags > 1 else np.zeros(picks.shape[1])
    return MancMissing(miss, stderr, bags, bag, float(1 - miss[0]))


def manc_missing(
    active: np.ndarray,
    detect: np.ndarray,
    *,
    bag: int,
    bags: int,
    n_max: int,
    seed: int = 0,
    score: np.ndarray | None = None,
    multi_cover: bool = False,
) -> MancMissing:
    """Missing rate of MANC over ``bags`` bags drawn from a pool (see :func:`manc_picks`).

    Args:
        active: bool ``(P, M)`` activations of the pool.
        detect: bool ``(P,)``: which pool samples detect the tampering.
        bag, bags, n_max, seed, score, multi_cover: as in :func:`manc_picks`.
    """
    p = active.shape[0]
    if detect.shape != (p,):
        raise ValueError(f"expected detect of shape ({p},), got {detect.shape}")
    picks = manc_picks(active, bag=bag, bags=bags, n_max=n_max, seed=seed, score=score, multi_cover=multi_cover)
    return miss_from_picks(picks, detect, bag=min(bag, p))
