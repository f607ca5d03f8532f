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

from abc import ABC, abstractmethod
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


class Target(ABC):
    """A model behind some interface.

    Attributes:
        output: the form of what :meth:`query` returns.
        max_batch: most samples per call (``None``: no limit); the verifier splits.
        description: a human-readable name for reports.
    """

    output: OutputForm = "logits"
    max_batch: int | None = None
    description: str = "target"

    @abstractmethod
    def query(self, batch: QueryBatch) -> np.ndarray:
        """Outputs for one batch, in the form named by :attr:`output`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or sessions."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
