"""Partial routing: the tampered copy answers only a share of the requests.

A provider that swaps the model for some of its traffic (KBF, 2026, measures 5-10%) makes
each check a lottery: a check's request is answered by the tampered copy with probability
``share``. Verification then needs either several requests per check or evidence kept
across checks (the monitor's sequential test).
"""

from __future__ import annotations

import numpy as np

from veriprint.adversary.base import Policy, register_policy
from veriprint.errors import ConfigError

__all__ = ["PartialRouting"]


@register_policy("partial", "a share of requests goes to the tampered copy, the rest to the intact one",
                 stateful=True)
class PartialRouting(Policy):
    """Answer a random ``share`` of requests from the served copy, the rest from the intact one.

    Args:
        share: the share of requests the served (tampered) copy answers (default 0.1).
        seed: the provider's own random seed.
    """

    def __init__(self, share: float = 0.1, seed: int = 0) -> None:
        if not 0 <= share <= 1:
            raise ConfigError(f"expected a share in [0, 1], got {share}")
        self.share = share
        self._rng = np.random.default_rng(seed)

    def describe(self) -> str:
        return f"{self.name} ({self.share:.0%} of requests tampered)"

    def route(self, x: np.ndarray, served: np.ndarray) -> np.ndarray:
        tampered = self._rng.random() < self.share
        return np.full(len(x), not tampered)
