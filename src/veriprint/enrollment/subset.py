"""Choosing the enrolled subset among the candidates the deployment answered stably.

A twin pair is kept only whole (both members stable, consistent and decided), and pairs
come first: ``keep // 2`` of them at most, then singles up to ``keep`` queries. Among more
candidates than that, the local model (when given) picks by reach, the greedy cover of
every parameter tensor as ``veriprint fingerprint`` does; without it the first ones in
pool order are taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from veriprint.enrollment.floor import Enrolled, Stability
from veriprint.enrollment.report import CandidateStats, EnrollmentError, count_states
from veriprint.fingerprint import Fingerprint

__all__ = ["Choice", "candidate_stats", "choose", "refuse_empty"]


@dataclass(frozen=True)
class Choice:
    """The enrolled subset.

    Attributes:
        chosen: pool positions kept, pairs first.
        pairs: twin pairs among them.
        good_pairs: pairs whose both members passed; ``good_singles``: singles that passed.
        reselected: ``"reach"`` or ``"pool order"``.
    """

    chosen: list[int]
    pairs: int
    good_pairs: int
    good_singles: int
    reselected: str


def choose(pool: Fingerprint, ok: np.ndarray, keep: int, model: nn.Module | None) -> Choice:
    """``keep`` queries among the candidates ``ok`` marks, whole pairs first."""
    good_units = [u for u in pool.units() if all(ok[i] for i in u)]
    pair_units = [u for u in good_units if len(u) == 2]
    single_units = [u for u in good_units if len(u) == 1]
    n_pairs = min(keep // 2, len(pair_units))
    n_singles = min(keep - 2 * n_pairs, len(single_units))
    chosen_units = _pick(model, pool, pair_units, n_pairs) + _pick(model, pool, single_units, n_singles)
    reselected = "reach" if model is not None and len(pair_units) + len(single_units) > n_pairs + n_singles \
        else "pool order"
    return Choice([i for u in chosen_units for i in u], n_pairs, len(pair_units), len(single_units), reselected)


def candidate_stats(pool: Fingerprint, choice: Choice, stab: Stability, enrolled: Enrolled,
                    rounds: int) -> list[CandidateStats]:
    """What enrollment saw of every candidate, and why it was kept or not."""
    units = pool.units()
    chosen = choice.chosen
    ok = enrolled.ok

    def state(i: int) -> str:
        if i in chosen:
            return "kept"
        if not stab.stable[i]:
            return "unstable"
        if not enrolled.consistent[i]:
            return "inconsistent"
        if not enrolled.decided[i]:
            return "undecided"
        if not ok[i] or not all(ok[j] for u in units if i in u for j in u):
            return "twin dropped"
        return "not selected"

    pair_of = {i: p for p, u in enumerate(units) if len(u) == 2 for i in u}
    return [CandidateStats(index=i, pair=pair_of.get(i), answers=rounds,
                           labels=sorted({int(v) for v in stab.labels[:, i, 0]}), spread=float(stab.spread[i]),
                           stable=bool(stab.stable[i]), decided=bool(enrolled.decided[i]),
                           kept=i in chosen, why=state(i)) for i in range(len(pool))]


def refuse_empty(choice: Choice, stats: list[CandidateStats], keep: int, target: str) -> None:
    """Refuse (:class:`EnrollmentError`) an enrollment that kept nothing, saying why."""
    if choice.chosen:
        return
    n = len(stats)
    counts = count_states(stats)
    if choice.good_pairs + choice.good_singles and keep < 2 and not choice.good_singles:
        raise EnrollmentError(
            f"keep {keep} cannot hold a twin pair (a pair counts two queries and is kept only whole), and "
            f"every one of the {choice.good_pairs} stable, decided candidates of this pool is half of a pair; "
            f"keep 2 or more (--keep 2)",
            {"pool": n, "counts": counts, "target": target, "keep": keep, "good_pairs": choice.good_pairs})
    raise EnrollmentError(
        f"no candidate of the pool of {n} is stable and decided on this endpoint "
        f"({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); a larger pool, more margin "
        f"or a smaller declared tolerance may help", {"pool": n, "counts": counts, "target": target})


def _pick(model: nn.Module | None, pool: Fingerprint, units: Sequence[tuple[int, ...]],
          k: int) -> list[tuple[int, ...]]:
    """``k`` of ``units`` by reach cover (a pair reveals what either member reveals)."""
    if k <= 0:
        return []
    if model is None or k >= len(units) or not any(p.numel() for p in model.parameters()):
        return list(units[:k])
    from veriprint.coverage.reach import parameter_reach
    from veriprint.selectors.algorithms import reach_cover

    members = sorted({i for u in units for i in u})
    pos = {i: j for j, i in enumerate(members)}
    reach = parameter_reach(model, pool.samples[members], model_outputs=pool.model_outputs)
    d = reach.directed()
    rows = torch.stack([torch.stack([d[pos[i]] for i in u]).max(0).values for u in units])
    score = -torch.tensor([float(min(pool.margin[i] for i in u)) for u in units])
    sel = reach_cover(rows, reach.directed_weights, k, score=score)
    return [units[int(j)] for j in sel.indices]
