"""What a verifier talks to: a black box that maps a batch of inputs to outputs.

A :class:`Target` receives each batch in two forms, the float32 samples and (when the
fingerprint is quantized) their exact 8-bit grid values, and sends whichever its API
takes. It returns a NumPy array in the form it declares:

* ``"logits"`` or ``"probs"``: float array ``(N, r)``;
* ``"labels"``: int array ``(N,)`` (top-1 labels);
* ``"topk"``: int array ``(N, K)`` (labels, best first);
* ``"top1-prob"``: float array ``(N, 2)``: the top-1 label and its probability.

Anything wrong (a timeout, a refused connection, an HTTP error, a body that does not
parse) raises :class:`TargetError` with what was expected and what came; the verifier
turns it into an INCONCLUSIVE verdict, never INTACT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from veriprint.errors import VeriprintError

__all__ = ["OutputForm", "QueryBatch", "Target", "TargetError"]

OutputForm = Literal["logits", "probs", "labels", "topk", "top1-prob"]
OUTPUT_FORMS: tuple[str, ...] = ("logits", "probs", "labels", "topk", "top1-prob")


class TargetError(VeriprintError, RuntimeError):
    """The target did not answer as expected (transport, status, shape, dtype, values)."""


@dataclass(frozen=True)
class QueryBatch:
    """One batch of queries.

    Attributes:
        x: float32 samples, shape ``(N, ...)``.
        grid: the same samples as integer grid values (uint8 for 8-bit data), or ``None``
            when the fingerprint has no grid.
    """

    x: np.ndarray
    grid: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])


class Target:
    """A model behind some interface.

    The base class owns what every target shares: :meth:`query` splits a batch into
    requests of at most :attr:`max_batch` samples, asks :meth:`_answer` for each (the one
    thing a subclass implements: move the samples there and the answer back), holds every
    answer to the output contract (:func:`veriprint.targets.contract.check_output`) and
    counts what was sent. A subclass may still override :meth:`query` itself (a wrapper
    such as the decoy mixer does); the verifier checks every answer against the contract
    again, so a target cannot opt out of it.

    Attributes:
        output: the form of what :meth:`query` returns.
        max_batch: most samples per request (``None``: no limit).
        classes: the model's number of classes, checked on every answer when known.
        description: a human-readable name for reports.
        requests_sent: requests made for queries (a remote target counts retries too).
        samples_sent: samples sent in them (the query cost).
    """

    output: OutputForm = "logits"
    max_batch: int | None = None
    classes: int | None = None
    description: str = "target"
    requests_sent: int = 0
    samples_sent: int = 0

    def query(self, batch: QueryBatch) -> np.ndarray:
        """Outputs for one batch, in the form named by :attr:`output`, checked."""
        from veriprint.targets.contract import check_output

        self._prepare()
        n = len(batch)
        step = self.max_batch if isinstance(self.max_batch, int) and self.max_batch >= 1 else max(n, 1)
        parts = []
        for lo in range(0, n, step):
            chunk = QueryBatch(batch.x[lo:lo + step], None if batch.grid is None else batch.grid[lo:lo + step])
            raw = self._answer(chunk)
            if not self._counts_itself:
                self.requests_sent += 1
                self.samples_sent += len(chunk)
            parts.append(check_output(raw, form=self.output, rows=len(chunk), classes=self.classes,
                                      where=self.description, keep_precision=self.keep_precision))
        if not parts:
            return np.zeros((0, self.classes or 0), np.float32)
        return np.concatenate(parts, axis=0)

    #: True for targets that count their own requests (retries included).
    _counts_itself: bool = False
    #: Keep float64 answers as float64 (local models); remote answers are float32 on the wire.
    keep_precision: bool = True

    def _prepare(self) -> None:
        """Called before each query (e.g. to read a remote model's metadata once)."""

    def _answer(self, batch: QueryBatch) -> object:
        """The raw answer for one request of at most :attr:`max_batch` samples."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _answer nor query")

    def close(self) -> None:
        """Release connections or sessions."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
