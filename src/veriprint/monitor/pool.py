"""Query rotation: a large fingerprint is a pool that checks spend a few pairs at a time.

A provider that sees the same few queries every hour can learn to answer just those
honestly. So the monitor does not send the whole fingerprint each time: each check takes
the next ``pairs_per_check`` unspent *units* of the pool. A unit is a twin pair (two
samples on either side of a decision boundary, stored next to each other: samples
``2i`` and ``2i + 1`` for ``i < meta["selection"]["pairs"]``), or a single sample of a
fingerprint stored without twins. Consecutive checks thus never repeat a query until the
pool is spent.

The first pass goes through the units in file order (the selector put the most revealing
first); when the pool runs out, ``"refuse"`` (the default) stops checking (INCONCLUSIVE)
until a larger pool is given, and ``"wrap"`` starts a new cycle in an order shuffled by the
owner's secret (or, without one, the fingerprint's hash) and the cycle number, so repeats
come in new combinations, with a warning on every check of a repeated pass: a provider
that remembers its answers replays them from then on (``docs/design/adversary.md``). Fresh
checks (``[endpoints.fresh]``) never repeat a query at all. Make a larger pool with ``veriprint fingerprint --select 64`` (32 pairs: 8 checks
of 4 pairs) or more.

A language model's fingerprint (:class:`~veriprint.lm.fingerprint.LmFingerprint`) is a pool
the same way, with one prompt per unit (it stores no twin pairs): ``pairs_per_check`` is then
the prompts each check spends.

The signature covers the whole file: it is checked when the file is loaded, and a check
then queries a :meth:`~veriprint.fingerprint.Fingerprint.subset` of the loaded fingerprint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from veriprint.verification.queries.keyed import keyed_permutation

__all__ = ["Draw", "Pool", "Pooled", "larger_pool_hint"]

LARGER_POOL_HINT = ("make a larger pool: `veriprint fingerprint ... --select 64` stores 32 twin pairs "
                    "(8 checks of 4 pairs)")
LM_LARGER_POOL_HINT = ("make a larger pool: `veriprint fingerprint --model ... --prompts 64` stores 64 prompts "
                       "(16 checks of 4)")


def larger_pool_hint(kind: str) -> str:
    """How to make a larger pool, for a classifier's fingerprint or a language model's (``"lm"``)."""
    return LM_LARGER_POOL_HINT if kind == "lm" else LARGER_POOL_HINT


class Pooled(Protocol):
    """What a pool rotates over: a classifier's or a language model's fingerprint."""

    @property
    def sha256(self) -> str: ...

    def units(self) -> list[tuple[int, ...]]: ...


@dataclass(frozen=True)
class Draw:
    """The units one check spends.

    Attributes:
        cycle: pass over the pool (0 first; more after wrapping).
        start: position in that pass of the first unit taken.
        units: unit numbers taken (positions in :meth:`Fingerprint.units`).
        indices: their sample indices, in the order sent.
        checks_left: whole checks left in this pass after this one (None: no rotation).
        wrapped: this draw started a new pass.
        refused: the pool is spent and the endpoint refuses to repeat queries.
    """

    cycle: int
    start: int
    units: tuple[int, ...]
    indices: tuple[int, ...]
    checks_left: int | None
    wrapped: bool = False
    refused: bool = False

    @property
    def end(self) -> int:
        return self.start + len(self.units)


class Pool:
    """The rotation over one fingerprint.

    Args:
        fp: the loaded (and signature-checked) fingerprint.
        per_check: units per check; 0 or at least the pool's size: every check takes all.
        on_exhausted: ``"refuse"`` (default) or ``"wrap"``.
        secret: the owner's secret, keying the order of repeated passes (default: the
            fingerprint's hash, which a provider holding the file could recompute).
    """

    def __init__(self, fp: Pooled, per_check: int, on_exhausted: str = "refuse", *,
                 secret: bytes | None = None) -> None:
        self.fp = fp
        self.units = fp.units()
        self.size = len(self.units)
        self.per_check = self.size if per_check <= 0 or per_check >= self.size else per_check
        self.on_exhausted = on_exhausted
        self.secret = secret
        self._orders: list[list[int]] = [list(range(self.size))]

    @property
    def rotates(self) -> bool:
        return self.per_check < self.size

    @property
    def checks_per_cycle(self) -> int:
        return self.size // self.per_check

    def order(self, cycle: int) -> list[int]:
        """Unit numbers in the order of pass ``cycle``.

        A new pass is shuffled, then the units of the previous pass's last check are moved
        to its end, so that the checks either side of a wrap share no query.
        """
        while len(self._orders) <= cycle:
            c = len(self._orders)
            if self.secret is not None:
                perm = keyed_permutation(self.secret, self.size, "pool-pass", self.fp.sha256, c)
            else:
                seed = int.from_bytes(hashlib.sha256(f"{self.fp.sha256}/{c}".encode()).digest()[:8], "big")
                perm = np.random.default_rng(seed).permutation(self.size)
            shuffled = [int(i) for i in perm]
            prev = self._orders[c - 1]
            last = (self.checks_per_cycle - 1) * self.per_check
            spent = set(prev[last: last + self.per_check])
            self._orders.append([u for u in shuffled if u not in spent] + [u for u in shuffled if u in spent])
        return self._orders[cycle]

    def draw(self, cycle: int, position: int) -> Draw:
        """The next units after ``position`` units of pass ``cycle`` were spent."""
        if not self.rotates:
            units = tuple(range(self.size))
            return Draw(cycle, 0, units, self._indices(units), checks_left=None)
        wrapped = False
        if position + self.per_check > self.size:
            if self.on_exhausted == "refuse":
                return Draw(cycle, position, (), (), checks_left=0, refused=True)
            cycle, position, wrapped = cycle + 1, 0, True
        order = self.order(cycle)
        units = tuple(order[position: position + self.per_check])
        left = (self.size - position - self.per_check) // self.per_check
        return Draw(cycle, position, units, self._indices(units), checks_left=left, wrapped=wrapped)

    def _indices(self, units: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(i for u in units for i in self.units[u])
