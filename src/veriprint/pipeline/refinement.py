"""Stage 4, refine: move each sample to just above the noise floor of its decision boundary.

Boundary refinement moves each sample, on the 8-bit grid and inside its ball, until its
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

:func:`refine` is the stage: every sample of the bag, in the memory budget's batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from veriprint.data import InputDomain
from veriprint.models import OutputKind
from veriprint.noise import NoiseFloor, as_logits
from veriprint.pipeline.config import FingerprintConfig
from veriprint.pipeline.generate import GenerationResult, Norm, result_for, snap_to_ball

__all__ = ["PrefixPath", "RefineResult", "bisect_prefix", "grid_direction", "label_margin", "margin_and_grad", "redescribe", "refine",
           "refine_to_boundary", "settle_margin"]


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


def margin_and_grad(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, model_outputs: OutputKind) -> tuple[torch.Tensor, torch.Tensor]:
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
    m, g = margin_and_grad(model, x, labels, model_outputs)
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
        nxt = snap_to_ball(cur[rows] - step * grid_direction(g[rows], norm), seeds[rows], eps, norm, domain)
        m_new, g_new = margin_and_grad(model, nxt, labels[rows], model_outputs)
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
        m, g = margin_and_grad(model, cur[rows], labels[rows], model_outputs)
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
    path = PrefixPath(model, a, b, labels, model_outputs)
    lo = torch.zeros(len(a), dtype=torch.long, device=a.device)
    hi = path.length.clone()
    if (method or PREFIX_SEARCH) == "line":
        lo, hi = _line_bracket(model, path.af, path.bf, path.gain.gather(1, path.order), path.rank, path.m_a, lo,
                               hi, labels, tau, model_outputs, a.shape)

    def keeps(k: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return label_margin(model, path.at(k, rows), labels[rows], model_outputs) >= tau[rows]

    lo, _ = bisect_prefix(lo, hi, keeps)
    out = path.at(lo)
    return domain.snap(out) if domain.levels is not None else out


class PrefixPath:
    """The coordinate changes from ``a`` to ``b``, ranked by ``model``'s predicted margin
    change of ``labels`` (gradient at ``a`` times the change), most helpful first; ``at(k)``
    is ``a`` with the first ``k`` of them made."""

    def __init__(self, model: nn.Module, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor,
                 model_outputs: OutputKind) -> None:
        self.shape = a.shape
        self.af, self.bf = a.flatten(1), b.flatten(1)
        d = self.bf - self.af
        self.m_a, g = margin_and_grad(model, a, labels, model_outputs)
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


def bisect_prefix(lo: torch.Tensor, hi: torch.Tensor,
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


def grid_direction(g: torch.Tensor, norm: Norm) -> torch.Tensor:
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


def refine(model: nn.Module, gen: GenerationResult, noise: NoiseFloor, cfg: FingerprintConfig, *,
           model_outputs: OutputKind = "logits") -> tuple[GenerationResult, torch.Tensor, int]:
    """Refined samples (re-described), which of them reached ``refine_factor x floor``, and
    how many were refined.

    See :func:`veriprint.pipeline.refinement.refine_to_boundary`; the samples stay in the ``eps`` ball
    around their seeds and on the input grid. Samples are refined in batches of
    ``cfg.generation.batch_size``, in bag order (the seeds closest to a boundary first),
    every one of them: the work is counted, never cut by the clock.
    """
    samples, reached = gen.samples.clone(), torch.zeros(len(gen), dtype=torch.bool, device="cpu")
    done = 0
    # the memory budget's batches (a whole small bag at once)
    for lo in range(0, len(gen), cfg.generation.batch_size):
        part = slice(lo, min(lo + cfg.generation.batch_size, len(gen)))
        ref = refine_to_boundary(model, gen.samples[part], gen.seeds[part], target=cfg.refine_factor * noise.floor,
                                 eps=cfg.generation.eps, norm=cfg.generation.norm, domain=gen.domain,
                                 model_outputs=model_outputs)
        samples[part], reached[part], done = ref.samples, ref.reached, part.stop
    return redescribe(model, gen, samples, model_outputs), reached, done


def redescribe(model: nn.Module, gen: GenerationResult, samples: torch.Tensor,
               model_outputs: OutputKind) -> GenerationResult:
    """``gen`` describing ``samples`` instead (margins, PSNR, grid), keeping its history."""
    return result_for(model, samples, gen.seeds, gen.config, domain=gen.domain, model_outputs=model_outputs,
                      history=gen.history, steps_run=gen.steps_run, seconds=gen.seconds,
                      log_s_before=gen.log_s_before)
