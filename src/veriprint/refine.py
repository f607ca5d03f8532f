"""Boundary refinement: move each sample, on the 8-bit grid and inside its ball, until its
top-1 vs top-2 margin sits just above the noise floor.

A top-1 API only shows a weight change when a label flips. A Sensitive-Sample from
Algorithm 1 has outputs that move with the weights, but usually far from any decision
boundary, so small changes flip nothing. Refinement keeps the sample's label and brings
its margin down to a target ``tau`` (a small multiple of the calibrated noise floor): any
change that lowers this margin by more than ``tau`` now flips the label, while float noise
(at most ``floor / safety``) cannot. This is the "edge point" idea of AID (DAC 2021) and
SDBF (CVPR 2025), applied to Sensitive-Samples.

Method, batched over samples:

1. descend the margin ``z_c - max_{j != c} z_j`` (``c`` the sample's label) with signed
   gradient steps of one grid step, projected into the ball and onto the grid, keeping
   the last iterate still above ``tau`` (``A``) and the first below it (``B``);
2. between ``A`` and ``B`` (a few grid steps apart), change the differing coordinates one
   at a time, most helpful first, and search the longest prefix that keeps the margin at
   or above ``tau`` (regula falsi on the first-order predicted margin after ``k`` changes,
   then bisection of what is left: a few forward passes where bisection alone took
   ``log2`` of the changes). The result differs from a sample below ``tau`` by one grid
   step of one pixel;
3. one grid step of one pixel can still move the margin by ten times ``tau`` or more, so
   :func:`settle_margin` then moves pixels by one grid step, each time the pixels whose
   predicted margin changes together use up most of the remaining slack without crossing
   ``tau`` (one pixel on a small input, up to thousands on a large one), checking every
   move exactly. Margins end within a few percent of ``tau``.

Every loop runs the model only on the samples still moving, so a batch costs what its
slowest sample needs, and the number of model evaluations does not grow with the size
of the input.

:func:`boundary_twins` uses the same moves to cross the boundary on purpose: from a
sample with label ``c`` at margin ``tau`` it finds, a pixel or two away, a sample whose
label is the runner-up ``r`` at margin about ``tau``. A change that moves ``z_c - z_r``
by more than ``tau`` in *either* direction flips one of the two, where a lone sample
sees only one direction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from veriprint.data import InputDomain
from veriprint.generate import Norm, snap_to_ball
from veriprint.models import OutputKind
from veriprint.noise import as_logits
from veriprint.numerics import top2_margin

__all__ = ["RefineResult", "Straddle", "Tightened", "boundary_twins", "flip_shift", "flip_shifts", "label_margin", "output_bias",
           "refine_to_boundary", "settle_margin", "straddle", "tighten"]


@dataclass(frozen=True)
class RefineResult:
    """Refined samples.

    Attributes:
        samples: float32 samples on the grid, inside their balls.
        margin: margin of each sample's original label over the runner-up (logits).
        reached: whether the margin was brought within one pixel step of the target.
        steps: descent steps taken.
    """

    samples: torch.Tensor
    margin: torch.Tensor
    reached: torch.Tensor
    steps: int


def label_margin(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, model_outputs: OutputKind = "logits"
) -> torch.Tensor:
    """``z_c - max_{j != c} z_j`` per sample, for given labels ``c`` (float64 logits)."""
    z = as_logits(model(x), model_outputs)
    own = z.gather(1, labels.view(-1, 1)).squeeze(1)
    other = z.scatter(1, labels.view(-1, 1), float("-inf")).amax(dim=1)
    return own - other


def _margin_and_grad(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, model_outputs: OutputKind) -> tuple[torch.Tensor, torch.Tensor]:
    xr = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        m = label_margin(model, xr, labels, model_outputs)
        (g,) = torch.autograd.grad(m.sum(), xr)
    return m.detach(), g


def refine_to_boundary(
    model: nn.Module,
    x: torch.Tensor,
    seeds: torch.Tensor,
    *,
    target: float | torch.Tensor,
    eps: float,
    norm: Norm = "linf",
    domain: InputDomain | None = None,
    model_outputs: OutputKind = "logits",
    max_steps: int | None = None,
    settle_steps: int = 24,
) -> RefineResult:
    """Bring each sample's margin down to ``target`` without changing its label.

    Args:
        model: the classifier.
        x: samples on the grid, ``(N, ...)``, inside their balls around ``seeds``.
        seeds: the natural inputs the balls are centred on.
        target: margin to reach (logits), scalar or per sample.
        eps: ball radius; norm: ``"linf"`` or ``"l2"``.
        domain: input range and grid (default ``[0, 1]``, 8-bit).
        model_outputs: what the model returns.
        max_steps: descent steps (default ``2 * eps / step + 20``).
        settle_steps: single-pixel moves of :func:`settle_margin` after the prefix search
            (default 24; 0 keeps the prefix search's result).

    Returns:
        A :class:`RefineResult`. Samples already at or below ``target`` are returned unchanged.
    """
    domain = domain or InputDomain()
    step = domain.step or (eps / 16 if eps > 0 else 0.0)
    n = x.shape[0]
    tau = torch.as_tensor(target, dtype=torch.float64, device=x.device).expand(n).clone()
    with torch.no_grad():
        labels = as_logits(model(x), model_outputs).argmax(dim=1)
    if eps == 0 or step == 0:
        with torch.no_grad():
            m = label_margin(model, x, labels, model_outputs)
        return RefineResult(x.clone(), m, m <= tau, 0)
    steps = max_steps if max_steps is not None else math.ceil(2 * eps / step) + 20
    above = x.detach().clone()
    below = x.detach().clone()
    m, g = _margin_and_grad(model, x, labels, model_outputs)
    active = m > tau
    crossed = torch.zeros(n, dtype=torch.bool, device=x.device)
    best_m = m.clone()
    cur = x.detach().clone()
    taken = 0
    for _ in range(steps):
        rows = active.nonzero().flatten()  # only samples still above the target are moved
        if len(rows) == 0:
            break
        taken += 1
        nxt = snap_to_ball(cur[rows] - step * _direction(g[rows], norm), seeds[rows], eps, norm, domain)
        m_new, g_new = _margin_and_grad(model, nxt, labels[rows], model_outputs)
        went = m_new < tau[rows]
        # Keep the smallest margin still above the target.
        better = ~went & (m_new < best_m[rows])
        above[rows[better]] = nxt[better]
        best_m[rows[better]] = m_new[better]
        below[rows[went]] = nxt[went]
        crossed[rows[went]] = True
        active[rows[went]] = False
        cur[rows] = nxt
        g[rows] = g_new
    samples = above.clone()
    if crossed.any():
        samples[crossed] = _prefix_search(model, above[crossed], below[crossed], labels[crossed],
                                          tau[crossed], model_outputs, domain)
        if settle_steps > 0 and domain.levels is not None:
            samples[crossed] = settle_margin(model, samples[crossed], seeds[crossed], labels[crossed],
                                             tau[crossed], eps=eps, norm=norm, domain=domain,
                                             model_outputs=model_outputs, steps=settle_steps)
    with torch.no_grad():
        final = label_margin(model, samples, labels, model_outputs)
    return RefineResult(samples, final, crossed | (final <= tau), taken)


def _in_ball(x: torch.Tensor, seeds: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    d = (x.double() - seeds.double()).flatten(1)
    if norm == "linf":
        inside: torch.Tensor = d.abs().amax(dim=1) <= eps * (1 + 1e-6) + 1e-12
        return inside
    inside = d.norm(dim=1) <= eps * (1 + 1e-6)
    return inside


def settle_margin(
    model: nn.Module,
    x: torch.Tensor,
    seeds: torch.Tensor,
    labels: torch.Tensor,
    target: torch.Tensor | float,
    *,
    eps: float,
    norm: Norm = "linf",
    domain: InputDomain | None = None,
    model_outputs: OutputKind = "logits",
    steps: int = 24,
    tolerance: float = 0.05,
    max_pixels: int = 4096,
) -> torch.Tensor:
    """Lower each sample's margin (for ``labels``) towards ``target`` in grid steps of pixels.

    Each step predicts, from the margin's gradient, the change every single-pixel grid
    step would make, and moves the pixels of largest predicted decrease whose sum stays
    below the remaining slack ``margin - target`` (a shrinking share of it after a
    rejected move): one pixel where a single pixel uses the slack up, as on small inputs,
    up to ``max_pixels`` where each pixel moves the margin by a sliver of it, as on large
    ones, so the number of model evaluations does not grow with the input's size. A move
    is kept only if the exact margin stays at or above ``target``. Samples stop
    once their slack is below ``tolerance * |target|``. Every sample stays on the grid and
    inside its ball; a sample's margin never goes below ``target``.

    Args:
        model, x, seeds, labels: the classifier, samples on the grid, ball centres, labels.
        target: the margin to approach from above (scalar or per sample, may be negative).
        eps, norm, domain: the ball and the grid (a grid is required).
        model_outputs: what the model returns.
        steps: moves tried per sample (each one gradient and one forward pass).
        tolerance: relative slack at which a sample is done.
        max_pixels: most pixels moved in one step.

    Returns:
        The settled samples.
    """
    domain = domain or InputDomain()
    if domain.levels is None:
        raise ValueError("expected a domain with a grid (levels), got levels=None")
    step = domain.step
    n = x.shape[0]
    tau = torch.as_tensor(target, dtype=torch.float64, device=x.device).expand(n).clone()
    cur = x.detach().clone()
    share = torch.full((n,), 0.9, dtype=torch.float64, device=x.device)
    done = torch.zeros(n, dtype=torch.bool, device=x.device)
    for _ in range(steps):
        # Only samples still settling go through the model: a batch costs what its slowest
        # sample needs, not that times the batch.
        rows = (~done).nonzero().flatten()
        if len(rows) == 0:
            break
        m, g = _margin_and_grad(model, cur[rows], labels[rows], model_outputs)
        slack = m - tau[rows]
        active = (slack > tolerance * tau[rows].abs().clamp_min(1e-12)) & (share[rows] > 1e-3)
        done[rows[~active]] = True
        if not bool(active.any()):
            break
        rows, slack, g = rows[active], slack[active], g[active]
        flat, g0 = cur[rows].flatten(1).double(), g.flatten(1).double()
        s0 = seeds[rows].flatten(1).double()
        # Each coordinate's helpful direction (against its gradient) and that move's
        # predicted margin decrease; infeasible moves (off the box or the ball) gain nothing.
        direction = -torch.sign(g0)
        moved = flat + direction * step
        ok = (direction != 0) & (moved >= domain.lo - 1e-9) & (moved <= domain.hi + 1e-9)
        if norm == "linf":
            ok &= (moved - s0).abs() <= eps + 1e-9
        gain = torch.where(ok, g0.abs() * step, torch.zeros_like(g0))
        budget = (share[rows] * slack).view(-1, 1)
        gain = torch.where(gain <= budget, gain, torch.zeros_like(gain))
        # Move every pixel of the largest-gain prefix whose predicted total stays within
        # the budget: one pixel when a single one uses up the slack, many when each moves
        # the margin by a small share of it (a large input).
        top, idx = gain.topk(min(gain.shape[1], max_pixels), dim=1)
        within = (top.cumsum(dim=1) <= budget) & (top > 0)
        movable = within[:, 0]
        share[rows[~movable]] *= 0.5
        if not bool(movable.any()):
            continue
        rows, flat, idx, within, direction = rows[movable], flat[movable], idx[movable], within[movable], direction[movable]
        picked = torch.where(within, idx, idx[:, :1])  # repeats of the first pixel change nothing
        cand = flat.clone()
        cand.scatter_(1, picked, flat.gather(1, picked) + direction.gather(1, picked) * step)
        cand = domain.snap(cand.view(-1, *cur.shape[1:]).float())
        with torch.no_grad():
            m_new = label_margin(model, cand, labels[rows], model_outputs)
        keep = (m_new >= tau[rows]) & _in_ball(cand, seeds[rows], eps, norm)
        cur[rows[keep]] = cand[keep]
        share[rows[~keep]] *= 0.5
    return cur


def boundary_twins(
    model: nn.Module,
    x: torch.Tensor,
    seeds: torch.Tensor,
    *,
    target: float | torch.Tensor,
    eps: float,
    norm: Norm = "linf",
    domain: InputDomain | None = None,
    model_outputs: OutputKind = "logits",
    steps: int = 24,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For samples at margin about ``target`` (label ``c``, runner-up ``r``), find twins a
    few pixels away on the other side of the boundary, label ``r`` at margin about
    ``target``.

    Returns:
        ``(twins, ok)``: the twins, and whether each crossed to a new label with a margin of
        at least ``target / 2`` over every other class (those that did not are unusable).
    """
    domain = domain or InputDomain()
    n = x.shape[0]
    tau = torch.as_tensor(target, dtype=torch.float64, device=x.device).expand(n).clone()
    with torch.no_grad():
        labels = as_logits(model(x), model_outputs).argmax(dim=1)
    twins = settle_margin(model, x, seeds, labels, -tau, eps=eps, norm=norm, domain=domain,
                          model_outputs=model_outputs, steps=steps)
    with torch.no_grad():
        z = as_logits(model(twins), model_outputs)
    new = z.argmax(dim=1)
    ok = (new != labels) & (top2_margin(z) >= tau / 2)
    return twins, ok


def _prefix_search(
    model: nn.Module, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor,
    tau: torch.Tensor, model_outputs: OutputKind, domain: InputDomain, method: str | None = None,
) -> torch.Tensor:
    """Largest prefix of the coordinate changes from ``a`` to ``b`` keeping margin >= tau.

    The changes are ranked by their predicted margin change (gradient at ``a`` times the
    change), most helpful first. ``method="bisect"`` bisects the prefix length (about
    ``log2`` of the coordinates that differ, in forward passes); ``"line"`` (the default,
    :data:`PREFIX_SEARCH`) first narrows the bracket by up to :data:`LINE_ROUNDS` guesses
    from the predicted margin after ``k`` changes (:func:`_line_bracket`), then bisects
    what is left. Both keep the same invariant (the prefix kept is at or above ``tau``,
    one more change is below), so the result differs from a sample below ``tau`` by one
    coordinate either way, and both run the model only on the samples whose bracket is
    still open.
    """
    path = _Path(model, a, b, labels, model_outputs)
    lo = torch.zeros(len(a), dtype=torch.long, device=a.device)
    hi = path.length.clone()
    if (method or PREFIX_SEARCH) == "line":
        lo, hi = _line_bracket(model, path.af, path.bf, path.gain.gather(1, path.order), path.rank, path.m_a, lo,
                               hi, labels, tau, model_outputs, a.shape)

    def keeps(k: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return label_margin(model, path.at(k, rows), labels[rows], model_outputs) >= tau[rows]

    lo, _ = _bisect(lo, hi, keeps)
    out = path.at(lo)
    return domain.snap(out) if domain.levels is not None else out


class _Path:
    """The coordinate changes from ``a`` to ``b``, ranked by ``model``'s predicted margin
    change of ``labels`` (gradient at ``a`` times the change), most helpful first; ``at(k)``
    is ``a`` with the first ``k`` of them made."""

    def __init__(self, model: nn.Module, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor,
                 model_outputs: OutputKind) -> None:
        self.shape = a.shape
        self.af, self.bf = a.flatten(1), b.flatten(1)
        d = self.bf - self.af
        self.m_a, g = _margin_and_grad(model, a, labels, model_outputs)
        gain = (g.flatten(1) * d).double()  # predicted margin change per coordinate
        self.gain = torch.where(d != 0, gain, torch.full_like(gain, float("inf")))
        self.order = self.gain.argsort(dim=1)
        self.rank = torch.empty_like(self.order)
        self.rank.scatter_(1, self.order, torch.arange(self.order.shape[1], device=a.device).expand_as(self.order))
        self.length = (d != 0).sum(dim=1)

    def at(self, k: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The inputs after the first ``k[i]`` changes (of rows ``rows``, default all)."""
        if rows is None:
            return torch.where(self.rank < k.view(-1, 1), self.bf, self.af).view(self.shape)
        return torch.where(self.rank[rows] < k.view(-1, 1), self.bf[rows], self.af[rows]).view(-1, *self.shape[1:])


def _bisect(lo: torch.Tensor, hi: torch.Tensor,
            keeps: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Bisect each bracket of prefix lengths, ``keeps(k, rows)`` true at ``lo`` and false at
    ``hi``, until they are adjacent; the model runs only on the rows still open."""
    lo, hi = lo.clone(), hi.clone()
    while True:
        rows = (hi - lo > 1).nonzero().flatten()
        if len(rows) == 0:
            return lo, hi
        mid = (lo[rows] + hi[rows]) // 2
        ok = keeps(mid, rows)
        lo[rows] = torch.where(ok, mid, lo[rows])
        hi[rows] = torch.where(ok, hi[rows], mid)


def _direction(g: torch.Tensor, norm: Norm) -> torch.Tensor:
    """One grid step's direction from a gradient: its sign (linf), or scaled to the norm
    of a step of every coordinate (l2)."""
    if norm == "linf":
        return g.sign()
    shape = (-1,) + (1,) * (g.dim() - 1)
    scaled: torch.Tensor = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape) * math.sqrt(g[0].numel())
    return scaled


#: How :func:`_prefix_search` finds the prefix by default: ``"line"`` or ``"bisect"``.
PREFIX_SEARCH = "line"
#: Guesses of the line search before it bisects what is left.
LINE_ROUNDS = 6


def _line_bracket(
    model: nn.Module, af: torch.Tensor, bf: torch.Tensor, sorted_gain: torch.Tensor, rank: torch.Tensor,
    m_a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, labels: torch.Tensor, tau: torch.Tensor,
    model_outputs: OutputKind, shape: torch.Size,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Narrow each bracket ``[lo, hi]`` of prefix lengths (``lo`` at or above ``tau``, ``hi``
    below) by regula falsi on the predicted margin change ``P(k)`` (the sum of the first
    ``k`` ranked gains).

    Each round predicts the margin inside the bracket by the line through its two measured
    ends in ``(P, margin)`` (before ``hi`` is measured: first order from ``lo``, slope 1),
    guesses the last length still at or above ``tau``, and measures that length and the
    next one in one batched pass; the bracket's ends move to what was measured. A guess
    within one length of the crossing closes the bracket.
    """
    n = len(af)
    dev = af.device
    change = torch.cat([torch.zeros(n, 1, dtype=torch.float64, device=dev),
                        torch.where(torch.isfinite(sorted_gain), sorted_gain, 0.0).cumsum(dim=1)], dim=1)
    k_all = torch.arange(change.shape[1], device=dev)
    m_lo = m_a.double().clone()
    m_hi = torch.full((n,), math.nan, dtype=torch.float64, device=dev)  # not measured yet
    for _ in range(LINE_ROUNDS):
        rows = (hi - lo > 1).nonzero().flatten()
        if len(rows) == 0:
            break
        r_lo, r_hi, r_tau = lo[rows], hi[rows], tau[rows].double()
        c = change[rows]
        p_lo = c.gather(1, r_lo.view(-1, 1)).squeeze(1)
        p_hi = c.gather(1, r_hi.view(-1, 1)).squeeze(1)
        slope = (m_hi[rows] - m_lo[rows]) / (p_hi - p_lo)
        slope = torch.where(torch.isfinite(slope) & (slope > 0), slope, torch.ones_like(slope))
        pred = m_lo[rows].view(-1, 1) + slope.view(-1, 1) * (c - p_lo.view(-1, 1))
        inside = (k_all > r_lo.view(-1, 1)) & (k_all < r_hi.view(-1, 1))
        drops = inside & (pred < r_tau.view(-1, 1))
        first = torch.where(drops.any(dim=1), drops.int().argmax(dim=1), r_hi)  # first length predicted below
        guess = torch.minimum(torch.maximum(first - 1, r_lo + 1), r_hi - 1)
        nxt = guess + 1
        two = nxt < r_hi  # the next length's margin is known (below) when it is hi itself
        ks = torch.cat([guess, nxt[two]])
        pick = torch.cat([rows, rows[two]])
        cand = torch.where(rank[pick] < ks.view(-1, 1), bf[pick], af[pick]).view(-1, *shape[1:])
        with torch.no_grad():
            m = label_margin(model, cand, labels[pick], model_outputs)
        m_g = m[: len(rows)]
        m_n = torch.full_like(m_g, math.nan)
        m_n[two] = m[len(rows):]
        ok_g = m_g >= r_tau
        ok_n = m_n >= r_tau  # False where not measured (nxt is hi)
        # next above: [next, hi]; else guess above: [guess, next]; else: [lo, guess]
        lo[rows] = torch.where(ok_n, nxt, torch.where(ok_g, guess, r_lo))
        m_lo[rows] = torch.where(ok_n, m_n, torch.where(ok_g, m_g, m_lo[rows]))
        hi[rows] = torch.where(ok_n, r_hi, torch.where(ok_g, nxt, guess))
        m_hi[rows] = torch.where(ok_n, m_hi[rows], torch.where(ok_g, torch.where(two, m_n, m_hi[rows]), m_g))
    return lo, hi


@dataclass(frozen=True)
class Straddle:
    """Pairs moved onto another model's decision boundary (:func:`straddle`).

    Attributes:
        first, second: the pairs, on the grid and inside their balls; where ``ok``, the
            served model labels them differently, each with a margin of at least the target.
        ok: which pairs straddle the served boundary (the others are returned unchanged).
        moved: which of those had to be moved (the rest straddled it already).
    """

    first: torch.Tensor
    second: torch.Tensor
    ok: torch.Tensor
    moved: torch.Tensor


def straddle(
    served: nn.Module,
    guide: nn.Module,
    a: torch.Tensor,
    b: torch.Tensor,
    seeds: torch.Tensor,
    *,
    target: float,
    eps: float,
    norm: Norm = "linf",
    domain: InputDomain | None = None,
    model_outputs: OutputKind = "logits",
    steps: int | None = None,
) -> Straddle:
    """Move twin pairs made on ``guide``'s boundary onto ``served``'s.

    A deployment in other numerics (bfloat16 or float16 weights, autocast, TF32) rounds
    its logits in steps of up to a few hundredths: a pair made in float32 at margins of a
    few times the floor then usually gets the same label from it on both sides, or a tie
    (no label at all), and a weight change must move that deployment's margin by a whole
    rounding step before a label flips. This finds two inputs close together that
    ``served`` labels differently, each with a margin of at least ``target``, so the pair
    sits on the boundary the deployment answers with.

    Method, batched over pairs (``c`` is ``guide``'s label of ``a``):

    1. an inside end: ``a`` if ``served`` gives it ``c`` at margin ``>= target``, else
       signed-gradient steps of one grid step *up* ``guide``'s margin of ``c`` from ``a``
       (smooth where the served model's rounding is not) until it does;
    2. an outside end: ``b`` if ``served`` gives it another label at margin ``>= target``,
       else steps *down* that margin from ``b`` until it does (each walk projected into the
       ball and onto the grid, at most ``steps``, default ``2 * eps / step + 20``);
    3. between the two ends the coordinate changes are ranked by ``guide``'s predicted
       margin change; bisecting the prefix length finds the last input still inside, and
       a second bisection beyond it the first input outside. Rounded logits can tie, so
       the two may be a few coordinate changes apart rather than one (a tie between them).

    Returns:
        A :class:`Straddle`; pairs whose ends could not be found keep their inputs.
    """
    domain = domain or InputDomain()
    step = domain.step or (eps / 16 if eps > 0 else 0.0)
    n = a.shape[0]
    tau = torch.full((n,), float(target), dtype=torch.float64, device=a.device)
    with torch.no_grad():
        c = as_logits(guide(a), model_outputs).argmax(dim=1)

    def inside(x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            z = as_logits(served(x), model_outputs).to(a.device)
        clear = top2_margin(z).double() >= tau[rows]
        own = z.argmax(dim=1) == c[rows]
        return own & clear, ~own & clear  # inside, outside (neither: a tie or below target)

    every = torch.arange(n, device=a.device)
    in_a, _ = inside(a, every)
    _, out_b = inside(b, every)
    already = in_a & out_b
    if eps > 0 and step > 0:
        walk = steps if steps is not None else math.ceil(2 * eps / step) + 20
        inner, in_ok = _walk(inside, guide, a, seeds, c, in_a, +1.0, 0, walk, eps, norm, domain, step, model_outputs)
        outer, out_ok = _walk(inside, guide, b, seeds, c, out_b, -1.0, 1, walk, eps, norm, domain, step,
                              model_outputs)
    else:
        inner, in_ok, outer, out_ok = a, in_a, b, out_b
    first, second = a.clone(), b.clone()
    rows = (in_ok & out_ok & ~already).nonzero().flatten()
    ok = already.clone()
    if len(rows):
        first[rows], second[rows] = _label_bracket(inside, guide, inner[rows], outer[rows], c[rows], rows,
                                                   model_outputs)
        ok[rows] = True
    if domain.levels is not None:
        first, second = domain.snap(first), domain.snap(second)
    return Straddle(first, second, ok.cpu(), (ok & ~already).cpu())


def _walk(
    side: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]], guide: nn.Module,
    x: torch.Tensor, seeds: torch.Tensor, labels: torch.Tensor, done: torch.Tensor, sign: float, which: int,
    steps: int, eps: float, norm: Norm, domain: InputDomain, step: float, model_outputs: OutputKind,
) -> tuple[torch.Tensor, torch.Tensor]:
    """From ``x``, one grid step at a time up (``sign`` +1) or down ``guide``'s margin of
    ``labels``, until ``side`` says the point is on side ``which`` (0 inside, 1 outside)."""
    cur, found, todo = x.detach().clone(), done.clone(), ~done
    for _ in range(steps):
        rows = todo.nonzero().flatten()
        if len(rows) == 0:
            break
        _, g = _margin_and_grad(guide, cur[rows], labels[rows], model_outputs)
        nxt = snap_to_ball(cur[rows] + sign * step * _direction(g, norm), seeds[rows], eps, norm, domain)
        stuck = (nxt == cur[rows]).flatten(1).all(dim=1)
        cur[rows] = nxt
        there = side(nxt, rows)[which]
        found[rows[there]] = True
        todo[rows[there | stuck]] = False
    return cur, found


def _label_bracket(
    side: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]], guide: nn.Module,
    a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, model_outputs: OutputKind,
) -> tuple[torch.Tensor, torch.Tensor]:
    """On the path of coordinate changes from ``a`` (inside) to ``b`` (outside), ranked by
    ``guide``'s predicted margin change: the last input inside and, beyond it, the first
    outside (two bisections of the prefix length; each keeps its ends on their sides)."""
    path = _Path(guide, a, b, labels, model_outputs)
    zero = torch.zeros(len(a), dtype=torch.long, device=a.device)
    # inside at last_in, not at last_in + 1; then outside at first_out, not just before
    last_in, _ = _bisect(zero, path.length, lambda k, r: side(path.at(k, r), rows[r])[0])
    _, first_out = _bisect(last_in, path.length, lambda k, r: ~side(path.at(k, r), rows[r])[1])
    return path.at(last_in), path.at(first_out)


@dataclass(frozen=True)
class Tightened:
    """Samples moved to where a small shift of one logit flips the served label, either
    way (:func:`tighten`).

    Attributes:
        samples: on the grid and inside their balls; the served label of each is unchanged.
        before, after: the shift, on the shift grid, that flips each sample's served label
            whichever of the label's and the runner-up's logits moves (the larger of the two
            ways' shifts of :func:`flip_shifts`; ``inf``: one way flips at no shift up to
            the grid's largest).
        rounds: the rounds run.
        stopped: the deadline ended it before its rounds or a round without improvement.
    """

    samples: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor
    rounds: int = 0
    stopped: bool = False


def output_bias(model: nn.Module, x: torch.Tensor, model_outputs: OutputKind = "logits") -> torch.Tensor | None:
    """The bias of ``model``'s output layer: a parameter whose entry ``k`` moves logit ``k``
    and no other (checked on ``x``), or None when the model has none."""
    with torch.no_grad():
        z0 = as_logits(model(x), model_outputs)
    for name, p in reversed(list(model.named_parameters())):
        if not name.endswith("bias") or p.dim() != 1 or p.numel() != z0.shape[1]:
            continue
        orig = p.data[0].clone()
        try:
            p.data[0] = orig + 1.0
            with torch.no_grad():
                dz = (as_logits(model(x), model_outputs) - z0).abs()
        finally:
            p.data[0] = orig
        if bool((dz[:, 0] > 0.5).all()) and bool((dz[:, 1:] == 0).all()):
            return p
    return None


def _top2(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's label and runner-up in logits ``z``."""
    lab = z.argmax(dim=1)
    return lab, z.scatter(1, lab.view(-1, 1), float("-inf")).argmax(dim=1)


def _label_runner(model: nn.Module, x: torch.Tensor, model_outputs: OutputKind) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's label and runner-up under ``model``, on the CPU."""
    with torch.no_grad():
        return _top2(as_logits(model(x), model_outputs).cpu())


def flip_shifts(model: nn.Module, bias: torch.Tensor, x: torch.Tensor, low: float, *, levels: int = 14,
                model_outputs: OutputKind = "logits", below: torch.Tensor | None = None) -> torch.Tensor:
    """The smallest shift ``low * 2**k / 2`` (``k < levels``) of one logit that flips each
    row's label, each way: column 0 the runner-up's logit raised, column 1 the label's
    lowered, through the output bias ``bias`` of ``model`` (restored after); ``inf`` where
    none does (or, with ``below``, none up to that row's value: the search stops there).

    A shift is what a change of the output layer's bias does to one logit, and about what
    any small change does near the query: the smaller it may be, the less of a change the
    sample misses. Through rounded logits (bfloat16) it is not the served margin but how
    close the unrounded logits sit to the rounding that flips the label, and the two ways
    differ: a rounded tie goes to the lower class index, so a label can flip when the
    runner-up's logit is rounded up to it, or only when it is rounded past it.

    Returns:
        float64 ``(n, 2)``, on the CPU.
    """
    lab, run = _label_runner(model, x, model_outputs)  # bookkeeping on the CPU, the inputs where they are
    out = torch.full((len(x), 2), math.inf, dtype=torch.float64)
    cap = below if below is not None else torch.full((len(x),), math.inf, dtype=torch.float64)
    for way, cls, sign in ((0, run, 1.0), (1, lab, -1.0)):
        for k in range(levels):
            d = low * 2.0 ** (k - 1)
            active = (out[:, way] == math.inf) & (cap >= d)  # not flipped yet, and d still below the cap
            if not bool(active.any()):
                break
            shift = torch.full_like(cap, math.inf)
            shift[active] = d
            out[_flips_at(model, bias, x, lab, cls, shift, sign, model_outputs), way] = d
    return out


def flip_shift(model: nn.Module, bias: torch.Tensor, x: torch.Tensor, low: float, *, levels: int = 14,
               model_outputs: OutputKind = "logits", below: torch.Tensor | None = None) -> torch.Tensor:
    """The smaller of the two ways' shifts of :func:`flip_shifts`: the smallest shift of
    one logit, the runner-up's raised or the label's lowered, that flips each row's label
    (float64 ``(n,)``; ``below`` as there)."""
    return flip_shifts(model, bias, x, low, levels=levels, model_outputs=model_outputs, below=below).min(dim=1).values


def _either_way(shifts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From :func:`flip_shifts`' ``(n, 2)``: the larger of the two ways (the shift that
    flips the label whichever of its two logits moves), and a key that orders rows by it,
    then by the smaller (the grid's levels are a factor 2 apart, so the smaller adds less
    than a level)."""
    hi, lo = shifts.max(dim=1).values, shifts.min(dim=1).values
    return hi, hi + 1e-3 * torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))


def _flips_at(model: nn.Module, bias: torch.Tensor, x: torch.Tensor, lab: torch.Tensor, cls: torch.Tensor,
              shift: torch.Tensor, sign: float, model_outputs: OutputKind) -> torch.Tensor:
    """Whether each row's label ``lab`` changes when logit ``cls`` of that row is moved by
    ``sign * shift`` through the output bias ``bias`` (one pass per class and shift, over
    the rows that have them; restored after). Rows with an infinite shift are not tried."""
    out = torch.zeros(len(x), dtype=torch.bool)
    tried = torch.isfinite(shift)
    for c in cls[tried].unique().tolist():
        orig = bias.data[c].clone()
        try:
            for d in shift[tried & (cls == c)].unique().tolist():
                rows = (tried & (cls == c) & (shift == d)).nonzero().flatten()
                bias.data[c] = orig + sign * d
                with torch.no_grad():
                    z = as_logits(model(x[rows.to(x.device)]), model_outputs).cpu()
                out[rows] = z.argmax(dim=1) != lab[rows]
        finally:
            bias.data[c] = orig
    return out


def tighten(
    served: nn.Module,
    guide: nn.Module,
    x: torch.Tensor,
    seeds: torch.Tensor,
    *,
    low: float,
    eps: float,
    norm: Norm = "linf",
    domain: InputDomain | None = None,
    model_outputs: OutputKind = "logits",
    rounds: int = 6,
    moves: int = 24,
    seed: int = 0,
    deadline: float | None = None,
) -> Tightened | None:
    """Move each sample, one grid step of one pixel at a time, to where the shift of one
    logit that flips ``served``'s label, whichever of the label's and the runner-up's
    logits moves, is as small as it can be while staying at least ``low``.

    Behind rounded logits (bfloat16 weights or autocast), a pair that straddles the served
    boundary (:func:`straddle`) has served margins of a whole rounding step (0.01-0.06),
    and a change smaller than that flips its label only when the unrounded logits sit
    close to the rounding that decides it. The served margin cannot show how close; the
    shifts that flip the label can (:func:`flip_shifts`, through the output layer's bias).
    Both ways count: a change that lowers the label's logit and one that raises the
    runner-up's are different changes (one output weight or bias each), and a sample
    tightened one way only can miss the other by a whole rounding step. The objective is
    the larger of the two ways' shifts, then the smaller.

    Each round tries, up and down, ``moves`` pixels among the ``4 moves`` with the largest
    gradient of ``guide``'s margin that can take one grid step that way inside the ball
    (drawn with ``seed``), and keeps the best move that keeps the served label, a served
    margin of at least ``low``, and both ways' shifts at least ``low`` (a sample that a
    shift of ``low / 2`` flips could flip from the deployment's own noise). No round starts
    after ``deadline`` (a ``time.perf_counter()`` value), so a large model stays within
    a fingerprint's time budget.

    Returns:
        A :class:`Tightened`, or None when ``served`` has no output bias to shift with.
    """
    domain = domain or InputDomain()
    step = domain.step or (eps / 16 if eps > 0 else 0.0)
    bias = output_bias(served, x[: min(4, len(x))], model_outputs)
    if bias is None:
        return None
    before, key = _either_way(flip_shifts(served, bias, x, low, model_outputs=model_outputs))
    cur, best = x.detach().clone(), before.clone()
    if eps == 0 or step == 0:
        return Tightened(cur, before, best)
    lab, run = _label_runner(served, x, model_outputs)
    lab_x, run_x = lab.to(x.device), run.to(x.device)
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    done, stopped = 0, False
    for _ in range(rounds):
        if deadline is not None and time.perf_counter() > deadline:
            stopped = True
            break
        done += 1
        xr = cur.clone().requires_grad_(True)
        with torch.enable_grad():
            zg = as_logits(guide(xr), model_outputs)
            m = zg.gather(1, lab_x.view(-1, 1)).sum() - zg.gather(1, run_x.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(m, xr)
        flat, base = grad.flatten(1).abs(), cur.flatten(1)
        cols, signs = [], []
        for sign in (1.0, -1.0):  # the pixels that can move one grid step this way inside the ball
            moved = snap_to_ball((base + sign * step).view_as(cur), seeds, eps, norm, domain).flatten(1)
            score = torch.where(moved != base, flat, torch.full_like(flat, -1.0))
            top = score.topk(min(4 * moves, score.shape[1]), dim=1).indices
            cols.append(top[:, torch.randperm(top.shape[1], generator=g)[:moves].to(top.device)])
            signs.append(torch.full_like(cols[-1], int(sign)))
        pick, sg = torch.cat(cols, dim=1), torch.cat(signs, dim=1).to(base.dtype)
        cand = base.unsqueeze(1).repeat(1, pick.shape[1], 1)  # (n, 2 moves, d)
        cand.scatter_add_(2, pick.unsqueeze(2), (sg * step).unsqueeze(2))
        k = cand.shape[1]
        flat_c = cand.reshape(n * k, *x.shape[1:])
        flat_c = snap_to_ball(flat_c, seeds.repeat_interleave(k, dim=0), eps, norm, domain)
        with torch.no_grad():
            zc = as_logits(served(flat_c), model_outputs).cpu()
        keep = (zc.argmax(dim=1) == lab.repeat_interleave(k)) & (top2_margin(zc).double() >= low)
        shifts = torch.full((n * k, 2), math.inf, dtype=torch.float64)
        rows = keep.nonzero().flatten()
        cap = best.repeat_interleave(k)
        screen = rows[torch.isfinite(cap[rows])]
        if len(screen):  # a move can only be kept if both ways flip at the end's current shift: one pass each
            lab_s, run_s = _top2(zc[screen])
            xs = flat_c[screen.to(flat_c.device)]
            both = (_flips_at(served, bias, xs, lab_s, run_s, cap[screen], 1.0, model_outputs)
                    & _flips_at(served, bias, xs, lab_s, lab_s, cap[screen], -1.0, model_outputs))
            rows = torch.cat([rows[~torch.isfinite(cap[rows])], screen[both]]).sort().values
        if len(rows):
            shifts[rows] = flip_shifts(served, bias, flat_c[rows.to(flat_c.device)], low, model_outputs=model_outputs,
                                       below=cap[rows])  # only what could improve
        # flipped by the smallest shift either way: too close to the deployment's noise
        shifts[(shifts < low).any(dim=1)] = math.inf
        hi, cand_key = _either_way(shifts)
        val, arg = cand_key.view(n, k).min(dim=1)
        better = val < key
        if not bool(better.any()):
            break
        rows_b = better.nonzero().flatten()
        on = rows_b.to(cur.device)
        cur[on] = flat_c.view(n, k, *x.shape[1:])[on, arg[rows_b].to(cur.device)]
        best[rows_b] = hi.view(n, k)[rows_b, arg[rows_b]]
        key[rows_b] = val[rows_b]
    return Tightened(cur, before, best, done, stopped)
