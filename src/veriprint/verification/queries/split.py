"""A check's samples split into several requests of keyed sizes, twin halves kept apart.

A provider that sees a check arrive as one request of a fixed size, holding two inputs a
grey level apart, can route that request. :func:`split_requests` sends the same samples
as ``k`` requests whose sizes and contents come from the owner's secret and the check's
slot: the sizes are random (every request holds at least one sample), the order inside
each request is random, and the two halves of a twin pair go to different requests
whenever there are two requests or more. Natural decoys are then mixed into each request
on its own (:class:`veriprint.targets.decoys.DecoyTarget`), so neither the size of a
request nor where a twin sits in it says which rows are the owner's.
"""

from __future__ import annotations

import numpy as np

from veriprint.errors import ConfigError

__all__ = ["split_requests"]


def split_requests(rng: np.random.Generator, units: list[tuple[int, ...]], k: int) -> list[list[int]]:
    """Sample indices of each of ``min(k, samples)`` requests.

    Args:
        rng: the keyed generator of this check (:func:`veriprint.verification.queries.keyed.keyed_rng`).
        units: the check's units, each a twin pair ``(a, b)`` or a single ``(a,)``.
        k: requests wanted (at least 1).

    Returns:
        One list per request, none empty; together they hold every index once. The halves
        of a pair are in different requests whenever there are two requests or more.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"expected at least 1 request per check, got {k!r}")
    n = sum(len(u) for u in units)
    if n == 0:
        return []
    k = min(k, n)
    if k == 1:
        return [[int(i) for i in rng.permutation([i for u in units for i in u])]]
    pairs = [u for u in units if len(u) == 2]
    singles = [i for u in units if len(u) != 2 for i in u]
    cap = len(pairs) + len(singles)  # one half of each pair at most per request
    sizes = np.ones(k, dtype=int)
    for _ in range(n - k):
        room = np.flatnonzero(sizes < cap)
        sizes[int(rng.choice(room))] += 1
    left = sizes.copy()
    requests: list[list[int]] = [[] for _ in range(k)]
    for p in rng.permutation(len(pairs)):
        # the two requests with the most room left (ties broken at random) take one half each
        order = np.lexsort((rng.random(k), -left))
        halves = pairs[int(p)] if rng.random() < 0.5 else pairs[int(p)][::-1]
        for half, r in zip(halves, order[:2], strict=True):
            requests[int(r)].append(half)
            left[r] -= 1
    rest = np.repeat(np.arange(k), np.maximum(left, 0))
    for i, r in zip(rng.permutation(singles), rest, strict=True):
        requests[int(r)].append(int(i))
    for q in requests:
        rng.shuffle(q)
    return requests
