"""What a selector predicts of its picks: the share of parameter changes they reveal.

A selector that can predict coverage (``Selector.predicts_coverage``; today ``reach``)
leaves a :class:`CoveragePrediction` in ``SelectionContext.prediction`` when it picks: for
every candidate it examined (``indices``, positions in the bag), its log10 reach per
directed parameter column (``values``) and each column's weight. The query budget
(:mod:`veriprint.selectors.budget`) grows or trims a selection by it, whichever selector made
it, and never looks inside a selector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["COVERAGE_DELTA", "CoveragePrediction", "prefix_coverage"]

#: The relative change of one parameter a ``coverage`` target is about.
COVERAGE_DELTA = 0.05


def prefix_coverage(values: torch.Tensor, weights: torch.Tensor, order: torch.Tensor,
                    delta: float = COVERAGE_DELTA) -> torch.Tensor:
    """Weighted share of columns revealed by a change of ``delta`` after each of ``order``'s
    picks: ``values`` as in :func:`veriprint.selectors.algorithms.reach_cover` (log10 reach per row and
    directed column), a column counting once some picked row reaches ``log10(1 / delta)``."""
    if not delta > 0:
        raise ValueError(f"expected delta > 0, got {delta}")
    hit = values[order] >= math.log10(1.0 / delta)
    if order.numel() == 0:
        return torch.zeros(0, dtype=torch.float64, device=values.device)
    seen = hit.cummax(0).values.double()
    w = weights.double()
    return (seen * w).sum(1) / max(float(w.sum()), 1e-300)


@dataclass
class CoveragePrediction:
    """A selector's first-order prediction for the candidates it examined.

    Attributes:
        indices: bag positions of the examined candidates, ``(M,)``.
        values: log10 reach per examined candidate and directed column, ``(M, C)``.
        weights: each column's weight, ``(C,)`` (every tensor weighs the same in total).
    """

    indices: torch.Tensor
    values: torch.Tensor
    weights: torch.Tensor
    _ceiling: float | None = field(default=None, repr=False)

    def rows(self, bag_indices: torch.Tensor) -> torch.Tensor:
        """Rows of :attr:`values` for these bag positions (each must have been examined)."""
        pos = {int(b): i for i, b in enumerate(self.indices.tolist())}
        missing = [int(i) for i in bag_indices if int(i) not in pos]
        if missing:
            raise ValueError(f"expected candidates the selector examined, got bag positions {missing[:5]}")
        return torch.tensor([pos[int(i)] for i in bag_indices], dtype=torch.long, device=self.values.device)

    def trace(self, bag_indices: torch.Tensor, delta: float = COVERAGE_DELTA) -> torch.Tensor:
        """The predicted share revealed after each of these picks, in order."""
        return prefix_coverage(self.values, self.weights, self.rows(bag_indices), delta=delta)

    def ceiling(self) -> float:
        """What every examined candidate together reveals (computed once)."""
        if self._ceiling is None:
            order = torch.arange(self.values.shape[0], device=self.values.device)
            self._ceiling = float(prefix_coverage(self.values, self.weights, order)[-1])
        return self._ceiling
