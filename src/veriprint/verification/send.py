"""The query loop: send every sample once through a target and collect the answers per sample.

Verification (:func:`veriprint.verification.verify.verify`) runs it once; enrollment
(:mod:`veriprint.enrollment`) runs it once per round, in another order and batch size
each time. Both hold every answer to the output contract here, the same way:

* :func:`closing_if_opened` closes, on leaving its ``with`` block, a target opened from what
  a user named (:func:`veriprint.targets.open_target`); a target passed in as a
  :class:`Target` stays the caller's to close;
* :func:`send_once` sends the samples in the given order, in batches of the given size
  (the target's own ``max_batch`` still splits each batch into requests), holds each
  batch's answer to :func:`veriprint.targets.contract.check_output` and counts what was sent.
  It stops at the first batch that fails and says which (a :class:`Failure`); the answers
  before it are kept, so a caller can still compare them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from veriprint.redact import redact
from veriprint.targets import QueryBatch, Target, TargetError
from veriprint.targets.contract import check_output

__all__ = ["Answers", "Failure", "close_target", "closing_if_opened", "send_once"]

log = logging.getLogger(__name__)


def close_target(tgt: Target) -> None:
    """Release a target (a gRPC channel, a session); a failure to close is logged, never
    turned into a verdict or a refusal."""
    try:
        tgt.close()
    except Exception as e:
        log.warning("could not close %s: %s", redact(tgt.description), redact(f"{type(e).__name__}: {e}"))


@contextmanager
def closing_if_opened(tgt: Target, named: object) -> Iterator[Target]:
    """``tgt`` for a ``with`` block, closed on leaving it when it was opened from ``named``
    (a URL, path, module or callable); a :class:`Target` passed in as ``named`` stays the
    caller's to close."""
    try:
        yield tgt
    finally:
        if tgt is not named:
            close_target(tgt)


@dataclass(frozen=True)
class Failure:
    """The batch at which a target failed.

    Attributes:
        first: position (in the order sent) of the batch's first sample.
        last: position of its last sample.
        error: what was raised.
    """

    first: int
    last: int
    error: Exception

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    @property
    def own_bug(self) -> bool:
        """Not a :class:`TargetError`: a bug of the target itself, not a refused answer."""
        return not isinstance(self.error, TargetError)

    @property
    def detail(self) -> str:
        """The error as reports write it (a target's own bug with its type)."""
        return f"{type(self.error).__name__}: {self.error}" if self.own_bug else str(self.error)


@dataclass(frozen=True)
class Answers:
    """What one pass over the samples brought back.

    Attributes:
        values: the answers, one row per sample in the samples' order, as the contract
            returned them (``None`` when nothing was answered); rows of samples not
            answered are zero.
        answered: which samples were answered (``(n,)`` booleans).
        sent: samples sent, the failed batch included.
        failure: where the target failed (``None``: every batch was answered).
    """

    values: np.ndarray | None
    answered: np.ndarray
    sent: int
    failure: Failure | None = None

    @property
    def done(self) -> int:
        """Samples answered."""
        return int(self.answered.sum())


def send_once(
    tgt: Target,
    samples: np.ndarray,
    grid: np.ndarray | None,
    *,
    classes: int,
    batch: int,
    order: np.ndarray | None = None,
    where: Callable[[int], str] | None = None,
) -> Answers:
    """Send every sample once, in ``order`` and batches of ``batch``, and check each answer.

    Args:
        tgt: an open target.
        samples: the float32 samples ``(n, ...)``.
        grid: their grid values, or ``None``.
        classes: the model's classes (each answer is checked to have them).
        batch: samples per batch (at least 1).
        order: the order to send them in (default: as given).
        where: names a batch of the given size in an error (default: the target's description).
    """
    n = len(samples)
    idx_all = np.arange(n) if order is None else np.asarray(order)
    parts: list[np.ndarray] = []
    done: list[np.ndarray] = []
    sent = 0
    failure: Failure | None = None
    for lo in range(0, n, batch):
        idx = idx_all[lo: lo + batch]
        sent += len(idx)
        try:
            raw = tgt.query(QueryBatch(samples[idx], None if grid is None else grid[idx]))
            parts.append(check_output(raw, form=tgt.output, rows=len(idx), classes=classes,
                                      where=where(len(idx)) if where else tgt.description, keep_precision=True))
        except Exception as e:  # refused answers and a target's own bugs alike: the caller decides
            failure = Failure(lo, lo + len(idx) - 1, e)
            break
        done.append(idx)
    answered = np.zeros(n, dtype=bool)
    values = None
    if parts:
        got = np.concatenate(parts)
        rows = np.concatenate(done)
        values = np.zeros((n, *got.shape[1:]), dtype=got.dtype)
        values[rows] = got
        answered[rows] = True
    return Answers(values, answered, sent, failure)
