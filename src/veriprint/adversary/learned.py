"""A detector the provider trains on veriprint's own samples (Kerckhoffs: it knows the algorithm).

The provider runs the published pipeline on the copy it serves, from natural inputs of its
own, and fits a logistic regression that tells those samples from natural traffic, on
features it can compute for every request: the served copy's top-2 margin and entropy, the
feature-squeezing score, and input statistics (high-frequency energy, the share of values
at the ends of the range). It does not know the owner's key, seeds or schedule. The score is
the regression's decision function; :func:`~veriprint.adversary.base.calibrate` sets the
flag rate on natural traffic.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from veriprint.adversary.base import Policy, margins, register_policy, served_logits, softmax
from veriprint.adversary.squeeze import FeatureSqueezing
from veriprint.errors import ConfigError

__all__ = ["LearnedDetector", "features"]

FEATURES = ("log margin", "entropy", "squeeze L1", "high-frequency energy", "share at range ends")


def _high_frequency(x: np.ndarray) -> np.ndarray:
    if x.ndim >= 4:
        dx = np.abs(np.diff(x, axis=-1)).mean(axis=(-3, -2, -1))
        dy = np.abs(np.diff(x, axis=-2)).mean(axis=(-3, -2, -1))
        return dx + dy  # type: ignore[no-any-return]
    flat = x.reshape(len(x), -1)
    return np.abs(np.diff(flat, axis=1)).mean(axis=1)  # type: ignore[no-any-return]


def features(x: np.ndarray, served: np.ndarray, squeeze: FeatureSqueezing) -> np.ndarray:
    """The detector's features of each row (columns in :data:`FEATURES` order)."""
    x = np.asarray(x, np.float32)
    p = softmax(served)
    ent = -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)
    flat = x.reshape(len(x), -1)
    ends = ((flat <= 1e-6) | (flat >= 1 - 1e-6)).mean(axis=1)
    return np.column_stack([np.log(margins(served) + 1e-9), ent, squeeze.score(x, served),
                            _high_frequency(x), ends])


@register_policy("learned", "logistic regression on margin, entropy, squeezing and input statistics, "
                            "trained on the attacker's own veriprint samples")
class LearnedDetector(Policy):
    """A logistic regression trained to tell veriprint samples from natural inputs.

    Call :meth:`fit` with the provider's own samples and natural inputs (after :meth:`bind`).
    """

    def __init__(self, threshold: float | None = None, seed: int = 0) -> None:
        self.squeeze = FeatureSqueezing()
        self.seed = seed
        self._clf: object | None = None
        if threshold is not None:
            self.threshold = float(threshold)

    def bind(self, model: nn.Module) -> LearnedDetector:
        super().bind(model)
        self.squeeze.bind(model)
        return self

    def fit(self, samples: np.ndarray, natural: np.ndarray) -> LearnedDetector:
        """Train on ``samples`` (positives) against ``natural`` (negatives), balanced classes."""
        if self.model is None:
            raise ConfigError("the learned detector needs the served copy: bind(model) first")
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        pos = features(samples, served_logits(self.model, samples), self.squeeze)
        neg = features(natural, served_logits(self.model, natural), self.squeeze)
        clf = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=1000,
                                                                 random_state=self.seed))
        clf.fit(np.vstack([pos, neg]), np.r_[np.ones(len(pos)), np.zeros(len(neg))])
        self._clf = clf
        return self

    def score(self, x: np.ndarray, served: np.ndarray) -> np.ndarray:
        if self._clf is None:
            raise ConfigError("the learned detector is not trained: call fit(samples, natural) first")
        return self._clf.decision_function(features(x, served, self.squeeze))  # type: ignore[attr-defined, no-any-return]
