"""Replay: remember every input answered while honest, and answer it the same way after the swap.

The cheapest evasion of a verifier that asks the same questions twice. After the swap a row
whose exact bytes were seen in the honest phase is answered by the intact copy, which gives
the answer the provider stored; everything else comes from the served copy. It costs the
provider only the natural inputs users happen to send twice.
"""

from __future__ import annotations

import hashlib

import numpy as np

from veriprint.adversary.base import Policy, register_policy

__all__ = ["ReplayPolicy"]


def row_hashes(x: np.ndarray) -> list[bytes]:
    """SHA-256 of each row's float32 bytes."""
    x = np.ascontiguousarray(x, np.float32)
    return [hashlib.sha256(r.tobytes()).digest() for r in x.reshape(len(x), -1)]


@register_policy("replay", "answers any input seen in the honest phase as it did then", stateful=True)
class ReplayPolicy(Policy):
    """Replay answers to inputs seen while honest (exact bytes).

    Args:
        remember_after_swap: also remember inputs answered after the swap (default False:
            only the honest phase's answers are the intact model's).
    """

    def __init__(self, remember_after_swap: bool = False) -> None:
        self.remember_after_swap = remember_after_swap
        self.seen: set[bytes] = set()

    def route(self, x: np.ndarray, served: np.ndarray) -> np.ndarray:
        return np.array([h in self.seen for h in row_hashes(x)], bool)

    def observe(self, x: np.ndarray, honest: bool) -> None:
        if honest or self.remember_after_swap:
            self.seen.update(row_hashes(x))

    def reset(self) -> None:
        self.seen.clear()
