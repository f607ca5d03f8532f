"""The query rounds: the pool sent to the deployment several times, each time differently.

Each round sends every candidate once, in a seeded random order and in batches of another
size (cycled through the batch sizes; ``0`` stands for the whole pool in one batch), to
the next replica in turn, waiting ``interval`` seconds between rounds; so every candidate
is seen at different positions of different batches (and, given several targets, on
different replicas). :func:`schedule` lays the rounds out (the language-model side uses it
too); :func:`query_rounds` sends a classifier pool through the verifier's query loop
(:func:`veriprint.verification.send.send_once`), every answer held to the output contract.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from veriprint.enrollment.report import EnrollmentError
from veriprint.fingerprint import Fingerprint
from veriprint.redact import redact
from veriprint.targets import Target
from veriprint.verification.send import send_once

__all__ = ["DEFAULT_BATCH_SIZES", "Round", "Rounds", "query_rounds", "schedule"]

#: Batch sizes cycled over the rounds; ``0`` stands for the whole pool in one batch.
DEFAULT_BATCH_SIZES = (1, 7, 0)


@dataclass(frozen=True)
class Round:
    """One round: its number (from 0), the replica it goes to, its batch size and order."""

    number: int
    replica: int
    size: int
    order: np.ndarray


def schedule(n: int, rounds: int, sizes: Sequence[int], *, seed: int, replicas: int = 1,
             interval: float = 0.0) -> Iterator[Round]:
    """The rounds over ``n`` candidates, each yielded when it is due (after ``interval``)."""
    rng = np.random.default_rng(seed)
    for rnd in range(rounds):
        if rnd and interval:
            time.sleep(interval)
        yield Round(rnd, rnd % replicas, sizes[rnd % len(sizes)] or n, rng.permutation(n))


@dataclass(frozen=True)
class Rounds:
    """Every round's answers.

    Attributes:
        answers: per round, the answers ``(n, ...)`` in pool order (float64).
        batch_sizes: the batch size of each round.
        sent: samples sent in all.
    """

    answers: list[np.ndarray]
    batch_sizes: list[int]
    sent: int

    @property
    def stack(self) -> np.ndarray:
        """The answers as one array ``(rounds, n, ...)``."""
        return np.stack(self.answers)


def query_rounds(pool: Fingerprint, targets: Sequence[Target], *, rounds: int, sizes: Sequence[int], seed: int,
                 interval: float) -> Rounds:
    """Send ``pool`` to ``targets`` for ``rounds`` rounds (see the module docstring).

    Raises:
        EnrollmentError: a target failed or answered something the contract refuses.
    """
    n = len(pool)
    x = pool.samples.numpy()
    grid = None if pool.grid is None else pool.grid.numpy()
    classes = int(pool.expected.shape[1])
    answers: list[np.ndarray] = []
    used: list[int] = []
    sent = 0
    for rnd in schedule(n, rounds, sizes, seed=seed, replicas=len(targets), interval=interval):
        tgt = targets[rnd.replica]
        used.append(rnd.size)

        def where(size: int, rnd: Round = rnd, tgt: Target = tgt) -> str:
            return f"round {rnd.number + 1} of {rounds} ({tgt.description}), batch of {size}"

        got = send_once(tgt, x, grid, classes=classes, batch=rnd.size, order=rnd.order, where=where)
        sent += got.sent
        if got.failure is not None:  # enrollment cannot trust what it saw
            f = got.failure
            raise EnrollmentError(redact(f"the target failed in {where(f.size)}: {f.detail}")) from f.error
        assert got.values is not None
        answers.append(np.asarray(got.values, dtype=np.float64))
    return Rounds(answers, used, sent)
