"""``enroll``: one entry for a classifier's pool and a language model's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from veriprint.enrollment.classifier import enroll_classifier
from veriprint.enrollment.report import EnrollmentReport
from veriprint.enrollment.rounds import DEFAULT_BATCH_SIZES
from veriprint.targets import Target
from veriprint.verification.specs import OutputSpec

__all__ = ["enroll"]


def enroll(
    pool: Any,
    target: Target | nn.Module | Callable[..., Any] | str | Sequence[Any],
    *,
    spec: str | OutputSpec = "top1",
    rounds: int = 6,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    seed: int = 0,
    keep: int = 8,
    model: nn.Module | None = None,
    tolerance: float = 0.0,
    prob_tolerance: float = 0.0,
    interval: float = 0.0,
    **target_options: Any,
) -> EnrollmentReport:
    """Enroll a deployment: query it with a pool, keep the stable candidates, re-fingerprint.

    Args:
        pool: a fingerprint with many candidates (e.g. ``--select 48``).
        target: anything :func:`veriprint.targets.open_target` accepts, or a list of them
            (replicas of the deployment; the rounds go to them in turn).
        spec: what the API reveals, as for verification (default ``"top1"``).
        rounds: answers recorded per candidate (default 6; at least 2).
        batch_sizes: batch size of each round, cycled (``0``: the whole pool); the
            target's own ``max_batch`` still splits larger batches.
        seed: seed of each round's order.
        keep: queries kept (default 8; pairs count two).
        model: the local intact model: reselection by reach, and a check that it is the
            model the pool was made from.
        tolerance: logit noise the deployment may add beyond the pool's floor (bfloat16,
            float16, TF32 serving): answers within it are not disagreements.
        prob_tolerance: the same for probabilities.
        interval: seconds to wait between rounds (spread over time).
        **target_options: passed to :func:`open_target` for each target.

    Raises:
        EnrollmentError: the endpoint disagrees with the local fingerprint beyond the
            tolerance, failed to answer, or no candidate is stable and decided.
        ConfigError: bad arguments.
    """
    return enroll_classifier(pool, target, spec=spec, rounds=rounds, batch_sizes=batch_sizes, seed=seed, keep=keep,
                             model=model, tolerance=tolerance, prob_tolerance=prob_tolerance, interval=interval,
                             **target_options)
