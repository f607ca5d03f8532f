"""Choosing the fingerprint from a bag: Maximum Active-Neuron Cover (Algorithm 2) and random.

MANC greedily picks the sample that activates the most neurons not yet covered. On small
heads one or two picks often cover every neuron any sample can activate; the paper's
algorithm then falls back to index order. Here, once coverage is full, selection moves on
to the next cover level (neurons covered once count as uncovered until covered twice,
and so on): a *multi-cover* that keeps spreading the picks over neurons. Ties are broken
by a score (by default the sample's sensitivity), then by index.

The activation matrix is bit-packed into 64-bit words (NumPy ``packbits``/``bitwise_count``):
10,000 samples by 100,000 neurons take 125 MB, and each pick is one pass over it, made in
blocks of rows that stay in cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from veriprint.models import OutputKind, split_last_layer
from veriprint.numerics import label_and_runner_up

__all__ = [
    "ACTIVATIONS",
    "Selection",
    "activations",
    "boundary_events",
    "event_cover",
    "manc",
    "random_selection",
    "reach_cover",
]

ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.ReLU6, nn.Softplus, nn.Mish)


@dataclass(frozen=True)
class Selection:
    """Chosen samples.

    Attributes:
        indices: positions in the bag, in pick order, shape ``(k,)``.
        coverage: fraction of coverable neurons (activated by some sample of the bag)
            covered after each pick, shape ``(k,)``.
        gains: neurons newly covered at the current cover level by each pick.
        levels: the cover level at which each pick was made (1 = plain MANC).
        neurons: number of neurons of interest.
        method: ``"manc"`` or ``"random"``.
    """

    indices: torch.Tensor
    coverage: torch.Tensor
    gains: torch.Tensor
    levels: torch.Tensor
    neurons: int
    method: str


def activations(
    model: nn.Module,
    x: torch.Tensor,
    *,
    layers: Literal["penultimate", "all"] = "penultimate",
    threshold: float = 0.0,
    model_outputs: OutputKind = "logits",
    batch_size: int = 500,
) -> torch.Tensor:
    """Which neurons each sample activates: bool ``(N, M)``.

    Args:
        model: the classifier.
        x: samples ``(N, ...)``.
        layers: ``"penultimate"`` (default: the units feeding the last layer, after their
            activation) or ``"all"`` (the outputs of every activation module).
        threshold: a neuron is active when its value is above this (default 0).
        model_outputs: what the model returns.
        batch_size: samples per forward pass.
    """
    rows = []
    if layers == "penultimate":
        last = split_last_layer(model, x[:4], model_outputs)
        with torch.no_grad():
            for chunk in torch.split(x, batch_size):
                h, _, _ = last.forward(chunk)
                rows.append(h.flatten(1) > threshold)
        return torch.cat(rows)
    if layers != "all":
        raise ValueError(f"expected layers 'penultimate' or 'all', got {layers!r}")
    mods = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
    if not mods:
        raise ValueError(f"no activation modules ({', '.join(a.__name__ for a in ACTIVATIONS)}) in the model")
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, o: seen.append(o.flatten(1) > threshold)) for m in mods]
    try:
        with torch.no_grad():
            for chunk in torch.split(x, batch_size):
                seen.clear()
                model(chunk)
                rows.append(torch.cat(seen, dim=1))
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(rows)


_BLOCK = 128  # rows per block: 128 x 1,563 words (100,000 neurons) = 1.6 MB


def _pack_rows(bits: np.ndarray) -> np.ndarray:
    """Bit-pack each row of a bool ``(N, M)`` array into zero-padded uint64 words, ``(N, ceil(M/64))``."""
    n, m = bits.shape
    nbytes = (m + 7) // 8
    out = np.zeros((n, (nbytes + 7) // 8 * 8), dtype=np.uint8)
    for start in range(0, n, 8 * _BLOCK):
        out[start:start + 8 * _BLOCK, :nbytes] = np.packbits(bits[start:start + 8 * _BLOCK], axis=1)
    return out.view(np.uint64)


def _unpack(words: np.ndarray, m: int) -> np.ndarray:
    """Inverse of :func:`_pack_rows` for one row: bool ``(m,)``."""
    return np.unpackbits(np.ascontiguousarray(words).view(np.uint8), count=m).astype(bool)


def _overlaps(words: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``popcount(words[i] & mask)`` per row, int64 ``(N,)``, in cache-sized blocks of rows."""
    n, w = words.shape
    out = np.empty(n, dtype=np.int64)
    block = min(_BLOCK, n)
    both = np.empty((block, w), dtype=np.uint64)
    counts = np.empty((block, w), dtype=np.uint8)
    for start in range(0, n, block):
        stop = min(start + block, n)
        b, c = both[: stop - start], counts[: stop - start]
        np.bitwise_and(words[start:stop], mask, out=b)
        np.bitwise_count(b, out=c)
        np.sum(c, axis=1, dtype=np.int64, out=out[start:stop])
    return out


def manc(
    active: torch.Tensor | np.ndarray,
    k: int,
    *,
    score: torch.Tensor | None = None,
    eligible: torch.Tensor | None = None,
    multi_cover: bool = True,
) -> Selection:
    """Greedy maximum active-neuron cover (Algorithm 2), with multi-cover once full.

    Args:
        active: bool ``(N, M)``: sample ``i`` activates neuron ``j``.
        k: number of samples to pick.
        score: tie-break per sample, higher first (default: none, lowest index first).
        eligible: bool ``(N,)``: only these may be picked (default: all).
        multi_cover: after full coverage, go on at the next cover level (default True);
            False reproduces the paper (index order among zero-gain samples).

    Returns:
        A :class:`Selection`.
    """
    a = np.asarray(active.cpu() if isinstance(active, torch.Tensor) else active, dtype=bool)
    if a.ndim != 2:
        raise ValueError(f"expected active of shape (N, M), got {a.shape}")
    n, m = a.shape
    ok = np.ones(n, dtype=bool) if eligible is None else np.asarray(
        eligible.cpu() if isinstance(eligible, torch.Tensor) else eligible, dtype=bool)
    if ok.shape != (n,):
        raise ValueError(f"expected eligible of shape ({n},), got {ok.shape}")
    if not 0 < k <= int(ok.sum()):
        raise ValueError(f"expected 0 < k <= {int(ok.sum())} eligible samples, got k={k}")
    words = _pack_rows(a)  # (N, ceil(M/64)) uint64
    coverable = _unpack(np.bitwise_or.reduce(words if ok.all() else words[ok], axis=0), m)
    n_coverable = max(int(coverable.sum()), 1)
    counts = np.zeros(m, dtype=np.int64)
    if score is None:
        rank = -np.arange(n, dtype=np.float64)  # ties go to the lowest index
    else:
        s = np.asarray(score.detach().cpu() if isinstance(score, torch.Tensor) else score, dtype=np.float64)
        rank = np.argsort(np.lexsort((-np.arange(n), np.nan_to_num(s, nan=-np.inf)))).astype(np.float64)
    available = ok.copy()
    picked: list[int] = []
    gains: list[int] = []
    levels: list[int] = []
    coverage: list[float] = []
    level = 1
    while len(picked) < k:
        while True:
            uncovered = coverable & (counts < level)
            gain = _overlaps(words, _pack_rows(uncovered[None, :])[0])
            gain = np.where(available, gain, -1)
            if not multi_cover or gain.max() > 0 or level > len(picked):
                break
            level += 1
        candidates = np.flatnonzero(gain == gain.max())
        choice = int(candidates[np.argmax(rank[candidates])])
        picked.append(choice)
        gains.append(int(gain[choice]))
        levels.append(level)
        available[choice] = False
        counts += a[choice]
        coverage.append(float((coverable & (counts > 0)).sum()) / n_coverable)
    return Selection(
        indices=torch.tensor(picked, dtype=torch.long, device="cpu"),
        coverage=torch.tensor(coverage, device="cpu"),
        gains=torch.tensor(gains, device="cpu"),
        levels=torch.tensor(levels, device="cpu"),
        neurons=m,
        method="manc",
    )


def boundary_events(logits: torch.Tensor, *, both_sides: bool) -> torch.Tensor:
    """Which single-logit changes a sample at a decision boundary reveals: bool ``(N, E)``.

    A sample with label ``c`` and runner-up ``r`` at a small margin flips when ``z_c``
    falls or ``z_r`` rises (events ``(c, down)`` and ``(r, up)``, ``E = 2 * classes``).
    With ``both_sides`` (a sample and its twin across the boundary) it reveals a change of
    either logit in either direction (events ``c`` and ``r``, ``E = classes``). A change of
    a single last-layer weight or bias moves one logit, so covering these events is what
    catches it; with two-class boundaries ``k`` queries cover at most ``2k`` of the
    ``2 * classes`` events.
    """
    z = logits.detach().double()
    n, r = z.shape
    top2 = torch.stack(label_and_runner_up(z), dim=1)
    rows = torch.arange(n, device=z.device)
    if both_sides:
        ev = torch.zeros(n, r, dtype=torch.bool, device=z.device)
        ev[rows, top2[:, 0]] = True
        ev[rows, top2[:, 1]] = True
        return ev
    ev = torch.zeros(n, 2 * r, dtype=torch.bool, device=z.device)
    ev[rows, 2 * top2[:, 0]] = True  # top class falling
    ev[rows, 2 * top2[:, 1] + 1] = True  # runner-up rising
    return ev


def event_cover(
    active: torch.Tensor,
    events: torch.Tensor,
    k: int,
    *,
    score: torch.Tensor | None = None,
    eligible: torch.Tensor | None = None,
) -> Selection:
    """MANC in which boundary events come first: greedy cover of ``events`` (see
    :func:`boundary_events`), neurons of ``active`` breaking ties, then ``score``.

    Each event column is repeated ``M + 1`` times, so one new event outweighs any number of
    new neurons; multi-cover applies to both once everything is covered.
    """
    a = torch.as_tensor(active).bool()
    e = torch.as_tensor(events).bool().to(a.device)
    if a.shape[0] != e.shape[0]:
        raise ValueError(f"expected events for the {a.shape[0]} samples, got {e.shape[0]} rows")
    combined = torch.cat([e.repeat_interleave(a.shape[1] + 1, dim=1), a], dim=1)
    sel = manc(combined, k, score=score, eligible=eligible)
    return Selection(sel.indices, sel.coverage, sel.gains, sel.levels, sel.neurons, "manc+boundary")


def reach_cover(
    values: torch.Tensor,
    weights: torch.Tensor,
    k: int,
    *,
    cap: float = 3.0,
    score: torch.Tensor | None = None,
    eligible: torch.Tensor | None = None,
) -> Selection:
    """Greedy cover of parameter changes by reach: pick ``k`` candidates maximizing
    ``sum_q weights[q] * clip(max_{i in S} values[i, q], 0, cap)``.

    ``values`` is usually :meth:`veriprint.coverage.reach.ParameterReach.directed` (both directions
    of a change of each parameter), per sample or, for a sample and its twin, the
    maximum of the two rows. A column earns one unit per decade by which the set's best
    candidate beats a 100% change (1 at 10%, 2 at 1%, up to ``cap``); with
    :attr:`~veriprint.coverage.reach.ParameterReach.directed_weights` every parameter tensor weighs
    the same. The objective is a facility-location function (monotone, submodular), so
    greedy picks are within ``1 - 1/e`` of the best set. Ties go to the higher ``score``,
    then the lower index.

    ``coverage`` holds, after each pick, the weighted share of columns at or above 1
    (a 10% change flips a chosen candidate).
    """
    v = values.double().clamp(0.0, cap)
    n = v.shape[0]
    w = weights.double()
    if v.dim() != 2 or w.shape != (v.shape[1],):
        raise ValueError(f"expected values (N, Q) and weights (Q,), got {tuple(values.shape)} and {tuple(weights.shape)}")
    ok = torch.ones(n, dtype=torch.bool, device=v.device) if eligible is None else eligible.bool().to(v.device, copy=True)
    if ok.shape != (n,):
        raise ValueError(f"expected eligible of shape ({n},), got {tuple(ok.shape)}")
    if not 0 < k <= int(ok.sum()):
        raise ValueError(f"expected 0 < k <= {int(ok.sum())} eligible samples, got k={k}")
    tie = (torch.zeros(n, dtype=torch.float64, device=v.device) if score is None
           else score.double().nan_to_num(nan=-math.inf).to(v.device))
    cur = torch.zeros(v.shape[1], dtype=torch.float64, device=v.device)
    picked: list[int] = []
    gains: list[float] = []
    coverage: list[float] = []
    total = max(float(w.sum()), 1e-300)
    for _ in range(k):
        gain = ((torch.maximum(v, cur) - cur) * w).sum(1)
        gain = torch.where(ok, gain, torch.full_like(gain, -1.0))
        best = float(gain.max())
        cands = torch.nonzero(gain >= best - 1e-12 * max(best, 1.0)).flatten()
        choice = int(cands[tie[cands].argmax()])
        picked.append(choice)
        gains.append(best)
        ok[choice] = False
        cur = torch.maximum(cur, v[choice])
        coverage.append(float((w * (cur >= 1.0)).sum()) / total)
    return Selection(
        indices=torch.tensor(picked, dtype=torch.long, device="cpu"),
        coverage=torch.tensor(coverage, device="cpu"),
        gains=torch.tensor(gains, device="cpu"),
        levels=torch.ones(k, dtype=torch.long, device="cpu"),
        neurons=int(v.shape[1]),
        method="reach",
    )


def random_selection(n: int, k: int, *, seed: int = 0, eligible: torch.Tensor | None = None) -> Selection:
    """``k`` distinct samples drawn uniformly (seeded) among the eligible ones."""
    ok = torch.ones(n, dtype=torch.bool, device="cpu") if eligible is None else eligible.bool().cpu()
    pool = torch.nonzero(ok).flatten()
    if not 0 < k <= pool.numel():
        raise ValueError(f"expected 0 < k <= {pool.numel()} eligible samples, got k={k}")
    g = torch.Generator().manual_seed(seed)
    idx = pool[torch.randperm(pool.numel(), generator=g, device="cpu")[:k]]
    empty = torch.zeros(k, device="cpu")
    return Selection(idx, empty, empty.long(), torch.ones(k, dtype=torch.long, device="cpu"), 0, "random")


def simulate_flips(
    model: nn.Module,
    x: torch.Tensor,
    *,
    count: int = 64,
    fraction: float = 0.005,
    scale: float = 0.02,
    seed: int = 0,
    batch_size: int = 500,
) -> torch.Tensor:
    """Which samples change label under simulated small tampering: bool ``(N, count)``.

    Each simulated change picks one parameter tensor at random (weighted by nothing: every
    tensor equally likely, so small layers are not drowned by big ones) and multiplies a
    random ``fraction`` of its entries (at least one) by ``1 ± scale`` with random signs.
    This family is deliberately unlike the tampering the evaluation measures (casts,
    quantization, pruning, Gaussian noise, single-weight edits, fine-tuning, trojans,
    poisoning), so that detection of those stays a held-out result.

    Args:
        model: the intact classifier (not modified).
        x: candidate samples.
        count: number of simulated changes (default 64).
        fraction: share of a tensor's entries changed (default 0.5%).
        scale: relative size of each change (default 2%).
        seed: seed of the simulation.
        batch_size: samples per forward pass.
    """
    if count < 1 or not 0 < fraction <= 1 or scale <= 0:
        raise ValueError(f"expected count >= 1, 0 < fraction <= 1, scale > 0, got {count}, {fraction}, {scale}")
    import copy

    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.numel() > 0]
    with torch.inference_mode():
        base = torch.cat([model(c).argmax(-1) for c in torch.split(x, batch_size)])
    work = copy.deepcopy(model)
    work_params = [p for p in work.parameters() if p.numel() > 0]
    flips = torch.zeros(x.shape[0], count, dtype=torch.bool, device=x.device)
    for t in range(count):  # drawn on the CPU (the same changes on every device), applied where the model is
        i = int(torch.randint(len(params), (1,), generator=g, device="cpu"))
        p, w = params[i], work_params[i]
        n = max(1, round(fraction * p.numel()))
        idx = torch.randperm(p.numel(), generator=g, device="cpu")[:n].to(p.device)
        sign = (torch.randint(0, 2, (n,), generator=g, device="cpu").float() * 2 - 1).to(p.device)
        with torch.no_grad():
            w.view(-1)[idx] = p.reshape(-1)[idx] * (1 + scale * sign)
        with torch.inference_mode():
            labels = torch.cat([work(c).argmax(-1) for c in torch.split(x, batch_size)])
        flips[:, t] = labels != base
        with torch.no_grad():
            w.copy_(p)
    return flips
