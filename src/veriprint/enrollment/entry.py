"""``enroll``: one entry for a classifier's pool and a language model's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, overload

from torch import nn

from veriprint.enrollment.classifier import enroll_classifier
from veriprint.enrollment.report import EnrollmentReport
from veriprint.enrollment.rounds import DEFAULT_BATCH_SIZES
from veriprint.errors import ConfigError
from veriprint.fingerprint import Fingerprint
from veriprint.targets import Target
from veriprint.verification.specs import OutputSpec

if TYPE_CHECKING:  # the LM side is imported when an LM pool comes
    from veriprint.enrollment.report import LmEnrollmentReport
    from veriprint.lm.fingerprint import LmFingerprint
    from veriprint.lm.specs import LmSpec

__all__ = ["enroll"]

#: What :func:`enroll` passes on to :func:`veriprint.enrollment.lm.enroll_lm` besides the shared arguments.
_LM_OPTIONS = ("max_batch", "api", "served_model", "options")


@overload
def enroll(pool: Fingerprint, target: Target | nn.Module | Callable[..., Any] | str | Sequence[Any], *,
           spec: str | OutputSpec | None = ..., rounds: int = ..., batch_sizes: Sequence[int] = ..., seed: int = ...,
           keep: int = ..., model: nn.Module | None = ..., tolerance: float = ..., prob_tolerance: float = ...,
           interval: float = ..., **target_options: Any) -> EnrollmentReport: ...


@overload
def enroll(pool: LmFingerprint, target: Any, *, spec: str | LmSpec | None = ..., rounds: int = ...,
           batch_sizes: Sequence[int] = ..., seed: int = ..., keep: int = ..., model: None = ...,
           tolerance: float = ..., prob_tolerance: float = ..., interval: float = ...,
           **target_options: Any) -> LmEnrollmentReport: ...


def enroll(
    pool: Fingerprint | LmFingerprint,
    target: Any,
    *,
    spec: str | OutputSpec | LmSpec | None = None,
    rounds: int = 6,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    seed: int = 0,
    keep: int = 8,
    model: nn.Module | None = None,
    tolerance: float = 0.0,
    prob_tolerance: float = 0.0,
    interval: float = 0.0,
    **target_options: Any,
) -> EnrollmentReport | LmEnrollmentReport:
    """Enroll a deployment: query it with a pool, keep the stable candidates, re-fingerprint.

    A classifier's pool (a :class:`Fingerprint`) goes to
    :func:`veriprint.enrollment.classifier.enroll_classifier`, a language model's (an
    :class:`~veriprint.lm.fingerprint.LmFingerprint`) to :func:`veriprint.enrollment.lm.enroll_lm`.

    Args:
        pool: a fingerprint with many candidates (e.g. ``--select 48``, or an LM fingerprint
            with more prompts than kept).
        target: anything :func:`veriprint.targets.open_target` accepts (for an LM pool:
            :func:`veriprint.lm.verify.open_lm_target`), or a list of them (replicas of the
            deployment; the rounds go to them in turn).
        spec: what the API reveals, as for verification (default ``"top1"``; for an LM pool
            ``"top1-token"``).
        rounds: answers recorded per candidate (default 6; at least 2).
        batch_sizes: batch size of each round, cycled (``0``: the whole pool); the
            target's own ``max_batch`` still splits larger batches.
        seed: seed of each round's order.
        keep: queries kept (default 8; pairs count two).
        model: the local intact model: reselection by reach, and a check that it is the
            model the pool was made from (classifiers only).
        tolerance: logit noise the deployment may add beyond the pool's floor (bfloat16,
            float16, TF32 serving): answers within it are not disagreements (for an LM
            pool: logprob noise).
        prob_tolerance: the same for probabilities (classifiers only).
        interval: seconds to wait between rounds (spread over time).
        **target_options: passed to :func:`open_target` for each target (for an LM pool:
            ``max_batch``, ``api``, ``served_model``, ``options``).

    Raises:
        EnrollmentError: the endpoint disagrees with the local fingerprint beyond the
            tolerance, failed to answer, or no candidate is stable and decided.
        ConfigError: bad arguments.
    """
    if isinstance(pool, Fingerprint):
        return enroll_classifier(pool, target, spec="top1" if spec is None else spec,  # type: ignore[arg-type]
                                 rounds=rounds, batch_sizes=batch_sizes, seed=seed, keep=keep, model=model,
                                 tolerance=tolerance, prob_tolerance=prob_tolerance, interval=interval,
                                 **target_options)
    from veriprint.lm.fingerprint import LmFingerprint

    if not isinstance(pool, LmFingerprint):
        raise ConfigError(f"expected the pool as a Fingerprint or an LmFingerprint, got {type(pool).__name__}")
    from veriprint.enrollment.lm import enroll_lm

    if model is not None:
        raise ConfigError("expected no local model for a language-model pool (it reselects in pool order)")
    if prob_tolerance:
        raise ConfigError("expected no prob_tolerance for a language-model pool; its tolerance is in logprobs")
    unknown = sorted(set(target_options) - set(_LM_OPTIONS))
    if unknown:
        raise ConfigError(f"expected target options among {list(_LM_OPTIONS)} for a language-model pool, "
                          f"got {unknown}")
    return enroll_lm(pool, target, spec="top1-token" if spec is None else spec,  # type: ignore[arg-type]
                     rounds=rounds, batch_sizes=batch_sizes, seed=seed, keep=keep, tolerance=tolerance,
                     interval=interval, **target_options)
