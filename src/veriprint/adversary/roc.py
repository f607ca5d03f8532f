"""ROC curves of a detector on the owner's queries against natural inputs.

The number that matters is the true-positive rate at the threshold that flags 1% of natural
traffic (:func:`tpr_at`): what share of the owner's queries a provider can single out while
answering 99% of its users from the tampered copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Roc", "roc", "tpr_at"]


@dataclass(frozen=True)
class Roc:
    """False- and true-positive rates at every threshold, and the area under the curve."""

    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


def roc(queries: np.ndarray, natural: np.ndarray) -> Roc:
    """The ROC of scores (higher: more suspicious) of the queries (positives) against natural inputs."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.r_[np.ones(len(queries)), np.zeros(len(natural))]
    s = np.r_[np.asarray(queries, np.float64), np.asarray(natural, np.float64)]
    s = np.nan_to_num(s, nan=0.0, posinf=1e300, neginf=-1e300)
    fpr, tpr, _ = roc_curve(y, s)
    return Roc(fpr, tpr, float(roc_auc_score(y, s)))


def tpr_at(queries: np.ndarray, natural: np.ndarray, fpr: float = 0.01) -> float:
    """Share of queries scored at or above the threshold that flags ``fpr`` of natural inputs."""
    natural = np.nan_to_num(np.asarray(natural, np.float64), nan=0.0, posinf=1e300, neginf=-1e300)
    queries = np.nan_to_num(np.asarray(queries, np.float64), nan=0.0, posinf=1e300, neginf=-1e300)
    t = float(np.quantile(natural, 1 - fpr, method="higher"))
    if (natural >= t).mean() > fpr * 1.5 + 1 / max(len(natural), 1):  # ties at the threshold
        t = np.nextafter(t, np.inf)
    return float((queries >= t).mean())
