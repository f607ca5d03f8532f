"""Margin and confidence routing: an input the served copy is unsure of goes to the intact copy.

Sensitive samples sit next to a decision boundary, where the top-2 logit margin is tiny; the
provider computes that margin with the copy it already serves, at no extra cost. The score
is minus the margin (or minus the top probability), so a threshold set by :func:`calibrate`
to a flag rate on natural traffic is the provider's cost.
"""

from __future__ import annotations

import numpy as np

from veriprint.adversary.base import Policy, margins, register_policy, softmax

__all__ = ["ConfidencePolicy", "MarginPolicy"]


@register_policy("margin", "the served copy's top-2 logit margin below a threshold")
class MarginPolicy(Policy):
    """Route rows whose top-2 logit margin (on the served copy) is at most ``threshold``.

    Args:
        threshold: the largest margin routed, in logits (default: none routed until
            :func:`calibrate` or the caller sets it).
    """

    def __init__(self, threshold: float | None = None) -> None:
        if threshold is not None:
            self.threshold = -float(threshold)

    def describe(self) -> str:
        return f"{self.name} (margin <= {-self.threshold:.4g})" if np.isfinite(self.threshold) else self.name

    def score(self, x: np.ndarray, served: np.ndarray) -> np.ndarray:
        return -margins(served)


@register_policy("confidence", "the served copy's top probability below a threshold")
class ConfidencePolicy(Policy):
    """Route rows whose top probability (on the served copy) is at most ``threshold``."""

    def __init__(self, threshold: float | None = None) -> None:
        if threshold is not None:
            self.threshold = -float(threshold)

    def score(self, x: np.ndarray, served: np.ndarray) -> np.ndarray:
        return -softmax(served).max(axis=1)  # type: ignore[no-any-return]
