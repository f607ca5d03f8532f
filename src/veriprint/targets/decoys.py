"""Decoys: hide the fingerprint's samples among natural inputs.

A server that could tell fingerprint queries apart could answer them with the original
model and everything else with a tampered one. :class:`DecoyTarget` mixes each query batch
with natural inputs (e.g. test images), shuffles the mix with a seeded generator, sends it
in batches of the wrapped target's ``max_batch``, and hands back only the answers for the
real samples, in their order. It counts real and decoy queries so that a report can state
the total cost: exactly ``real + decoys`` samples, never more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from veriprint.errors import ConfigError
from veriprint.targets.base import QueryBatch, Target, TargetError

if TYPE_CHECKING:
    from veriprint.data import Dataset

__all__ = ["DecoyCounts", "DecoyTarget"]


@dataclass(frozen=True)
class DecoyCounts:
    """Queries sent through a :class:`DecoyTarget` so far.

    Attributes:
        real: fingerprint samples.
        decoys: natural inputs mixed among them.
    """

    real: int
    decoys: int

    @property
    def total(self) -> int:
        return self.real + self.decoys


class DecoyTarget(Target):
    """Wrap a target so that every batch is shuffled among natural decoy inputs.

    Args:
        inner: the target that is really queried.
        natural: the pool of decoys, float32 ``(M, ...)`` with the samples' shape.
        natural_grid: the same inputs as 8-bit grid values, needed when the inner target
            sends grid values (e.g. a UINT8 server); default ``None``: the mixed batches
            carry no grid values.
        ratio: decoys per real sample (default 1.0; ``ceil(ratio * n)`` per batch of ``n``).
        seed: seeds the choice of decoys and the shuffle (default 0).

    Decoys are drawn without replacement while the pool lasts, then with replacement.
    """

    def __init__(self, inner: Target, natural: np.ndarray, *, natural_grid: np.ndarray | None = None,
                 ratio: float = 1.0, seed: int = 0) -> None:
        if not (math.isfinite(ratio) and ratio >= 0):
            raise ConfigError(f"expected ratio >= 0, got {ratio}")
        natural = np.asarray(natural, dtype=np.float32)
        if natural.ndim < 2 or natural.shape[0] == 0:
            raise ConfigError(f"expected a non-empty pool of decoys (M, ...), got shape {natural.shape}")
        if natural_grid is not None and np.shape(natural_grid) != natural.shape:
            raise ConfigError(f"expected natural_grid of shape {natural.shape}, got {np.shape(natural_grid)}")
        self.inner = inner
        self.natural = natural
        self.natural_grid = None if natural_grid is None else np.asarray(natural_grid)
        self.ratio = ratio
        self.output = inner.output
        self.max_batch = None  # the whole batch is mixed; the inner target's limit is kept here
        self.description = f"{inner.description} (+{ratio:g} decoys per sample)"
        self._rng = np.random.default_rng(seed)
        self._real = 0
        self._decoys = 0

    @classmethod
    def from_dataset(cls, inner: Target, data: Dataset, *, ratio: float = 1.0, seed: int = 0) -> DecoyTarget:
        """Decoys from a :class:`~veriprint.data.Dataset`, with grid values from its domain."""
        grid = None if data.domain.levels is None else data.domain.to_grid(data.x).numpy()
        return cls(inner, data.x.numpy(), natural_grid=grid, ratio=ratio, seed=seed)

    @property
    def counts(self) -> DecoyCounts:
        return DecoyCounts(self._real, self._decoys)

    @property
    def decoy_queries(self) -> int:
        """Decoys sent so far (what a verification report counts)."""
        return self._decoys

    def _draw(self, k: int) -> np.ndarray:
        m = self.natural.shape[0]
        return self._rng.choice(m, size=k, replace=k > m)

    def query(self, batch: QueryBatch) -> np.ndarray:
        n = len(batch)
        if batch.x.shape[1:] != self.natural.shape[1:]:
            raise ConfigError(f"expected decoys of the samples' shape {batch.x.shape[1:]}, "
                             f"the pool has {self.natural.shape[1:]}")
        k = math.ceil(self.ratio * n) if n else 0
        pick = self._draw(k)
        x = np.concatenate([np.asarray(batch.x, np.float32), self.natural[pick]])
        grid = None
        if batch.grid is not None and self.natural_grid is not None:
            grid = np.concatenate([np.asarray(batch.grid), self.natural_grid[pick].astype(
                np.asarray(batch.grid).dtype)])
        order = self._rng.permutation(n + k)  # position j of the mix holds item order[j]
        x, grid = x[order], None if grid is None else grid[order]
        step = self.inner.max_batch or max(n + k, 1)
        parts = []
        for s in range(0, n + k, step):
            sub = QueryBatch(x[s:s + step], None if grid is None else grid[s:s + step])
            self._real += int((order[s:s + step] < n).sum())
            self._decoys += int((order[s:s + step] >= n).sum())
            out = np.asarray(self.inner.query(sub))
            if out.shape[:1] != (len(sub),):
                raise TargetError(f"{self.inner.description}: expected {len(sub)} answers, "
                                  f"got shape {list(out.shape)}")
            parts.append(out)
        if not parts:
            return np.asarray(self.inner.query(batch))
        mixed = np.concatenate(parts)
        answers = np.empty_like(mixed)
        answers[order] = mixed
        return answers[:n]

    def close(self) -> None:
        self.inner.close()
