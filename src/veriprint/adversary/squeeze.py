"""Feature squeezing (Xu, Evans, Qi, NDSS 2018): an input whose prediction moves when squeezed.

Adversarial and boundary inputs change their output when their bit depth is reduced or a
2x2 median filter is applied; natural inputs mostly do not. The score is the largest L1
distance between the served copy's probabilities for the input and for each squeezed
version (the paper's joint detector). It needs the served copy (:meth:`Policy.bind`).
"""

from __future__ import annotations

import numpy as np

from veriprint.adversary.base import Policy, register_policy, served_logits, softmax
from veriprint.errors import ConfigError

__all__ = ["FeatureSqueezing", "median2x2", "reduce_bits"]


def reduce_bits(x: np.ndarray, bits: int) -> np.ndarray:
    """``x`` in ``[0, 1]`` rounded to ``2**bits`` levels."""
    levels = 2**bits - 1
    return np.round(np.clip(x, 0, 1) * levels) / levels  # type: ignore[no-any-return]


def median2x2(x: np.ndarray) -> np.ndarray:
    """A 2x2 median filter over the last two axes (edges repeated), the paper's smoothing."""
    if x.ndim < 3:
        return x
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, 1), (0, 1)], mode="edge")
    win = np.stack([p[..., :-1, :-1], p[..., 1:, :-1], p[..., :-1, 1:], p[..., 1:, 1:]])
    return np.median(win, axis=0).astype(x.dtype)  # type: ignore[no-any-return]


@register_policy("squeeze", "feature squeezing: the prediction moves under bit reduction or a median filter")
class FeatureSqueezing(Policy):
    """Xu et al.'s joint squeezing detector.

    Args:
        bits: bit depth of the reduced copy (default 4).
        median: also apply the 2x2 median filter to image inputs (default True).
    """

    def __init__(self, bits: int = 4, median: bool = True, threshold: float | None = None) -> None:
        if not 1 <= bits <= 8:
            raise ConfigError(f"expected bits in 1..8, got {bits}")
        self.bits = bits
        self.median = median
        if threshold is not None:
            self.threshold = float(threshold)

    def score(self, x: np.ndarray, served: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise ConfigError("feature squeezing needs the served copy: bind(model) first")
        p = softmax(served)
        x = np.asarray(x, np.float32)
        best = np.abs(softmax(served_logits(self.model, reduce_bits(x, self.bits))) - p).sum(axis=1)
        if self.median and x.ndim >= 4:
            best = np.maximum(best, np.abs(softmax(served_logits(self.model, median2x2(x))) - p).sum(axis=1))
        return best  # type: ignore[no-any-return]
