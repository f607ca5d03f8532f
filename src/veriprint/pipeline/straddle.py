"""Stage 6b, straddle: with a device profile, the chosen twin pairs moved onto the boundary
of the model as that deployment runs it.

Pairs are made on the float32 boundary, a few times the floor from it. A deployment in
reduced precision rounds its logits in steps of 0.01-0.06, so it mostly gives both ends
of such a pair one label, or a tie; :func:`veriprint.pipeline.straddle.straddle` finds two inputs
nearby that it labels differently (``docs/measurements/straddle.md``: top-1 detection behind bfloat16
autocast went from 25 to 42 of 69 tampered copies). Both ends are then tightened
(:func:`veriprint.pipeline.straddle.tighten`): moved a pixel at a time to where a shift of one
logit as small as the floor allows flips the deployment's label, whichever of the label's
and the runner-up's logits moves, since a rounded margin of one whole step says nothing
of how close the unrounded logits are.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from veriprint.data import InputDomain
from veriprint.deployments.profiles import served
from veriprint.models import OutputKind
from veriprint.noise import as_logits
from veriprint.numerics import label_and_runner_up, top2_margin
from veriprint.pipeline.candidates import Candidates
from veriprint.pipeline.config import FingerprintConfig
from veriprint.pipeline.generate import Norm, snap_to_ball
from veriprint.pipeline.refinement import PrefixPath, bisect_prefix, grid_direction, margin_and_grad

__all__ = ["Straddle", "Tightened", "flip_shift", "flip_shifts", "output_bias", "straddle", "straddle_pairs",
           "straddle_summary", "tighten"]

log = logging.getLogger(__name__)


def straddle_pairs(model: nn.Module, cands: Candidates, cfg: FingerprintConfig, idx: torch.Tensor,
                   chosen: torch.Tensor, pairs: int,
                   model_outputs: OutputKind) -> tuple[torch.Tensor, dict[str, int | float | None]]:
    """The chosen twin pairs (profiles other than float32 on the CPU), made on the float32
    boundary, moved onto the boundary of the model as the profile runs it
    (:func:`veriprint.pipeline.straddle.straddle`), so that each pair gets two labels from the
    deployment, each end at a margin of at least the floor (decided, as a twin must be).
    ``chosen`` starts with ``pairs`` pairs (sample, twin); the counts are
    stored as ``meta["straddle"]``. Tightening runs all its rounds (or stops at the first
    that improves nothing): the plan prices the stage (:data:`veriprint.pipeline.plan.STRADDLE_PASSES`),
    the clock does not cut it."""
    first, second = chosen[0: 2 * pairs: 2], chosen[1: 2 * pairs: 2]
    deployment = served(model, cfg.profile)  # one copy in the profile's numerics for both steps
    res = straddle(deployment, model, first, second, cands.seeds[idx[0: 2 * pairs: 2]],
                   target=cands.noise.floor, eps=cfg.generation.eps,
                   norm=cfg.generation.norm, domain=cands.gen.domain, model_outputs=model_outputs)
    out = chosen.clone()
    out[0: 2 * pairs: 2], out[1: 2 * pairs: 2] = res.first, res.second
    ok, moved = int(res.ok.sum()), int(res.moved.sum())
    if ok < pairs:
        log.warning("%d of %d pairs straddle the boundary of the model as %s runs it; the others keep "
                    "their float32 pair", ok, pairs, cfg.profile.name)
    counts: dict[str, int | float | None] = {"pairs": pairs, "straddling": ok, "moved": moved, "already": ok - moved}
    ends = torch.arange(2 * pairs)
    ends = ends[res.ok.repeat_interleave(2)]  # both ends of every straddling pair
    # 16-bit answers only: float64 and TF32 answer finely enough that the straddled margin
    # already says how small a change flips a label
    if len(ends) and cfg.profile.half:
        seeds = cands.seeds[idx[ends].to(cands.seeds.device)]
        t = tighten(deployment, model, out[ends.to(out.device)], seeds, low=cfg.refine_factor * cands.noise.floor,
                    eps=cfg.generation.eps, norm=cfg.generation.norm, domain=cands.gen.domain,
                    model_outputs=model_outputs, seed=cfg.seed)
        if t is not None:
            out[ends.to(out.device)] = t.samples
            counts.update(tightened=int((t.after < t.before).sum()), shift_before=_median(t.before),
                          shift_after=_median(t.after))
    return out, counts


def _median(x: torch.Tensor) -> float | None:
    """The median of the finite values (None when there are none)."""
    f = x[torch.isfinite(x)]
    return float(f.median()) if len(f) else None


def straddle_summary(st: dict[str, int | float | None]) -> str:
    """One line on ``meta["straddle"]``, as ``veriprint fingerprint`` and ``inspect`` print it."""
    line = (f"straddle: {st.get('straddling')} of {st.get('pairs')} pairs labelled differently on both ends by the "
            f"profiled model ({st.get('moved')} moved onto its boundary, {st.get('already')} already there)")
    if "tightened" in st:
        def fmt(v: int | float | None) -> str:
            return "none" if v is None else f"{v:.2g}"

        if "tighten_rounds" in st:
            line += f"; the time budget stopped tightening after {st['tighten_rounds']} rounds"
        line += (f"; {st['tightened']} ends tightened, the logit shift that flips one either way {fmt(st['shift_before'])} -> "
                 f"{fmt(st['shift_after'])} (median)")
    return line


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
        _, g = margin_and_grad(guide, cur[rows], labels[rows], model_outputs)
        nxt = snap_to_ball(cur[rows] + sign * step * grid_direction(g, norm), seeds[rows], eps, norm, domain)
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
    path = PrefixPath(guide, a, b, labels, model_outputs)
    zero = torch.zeros(len(a), dtype=torch.long, device=a.device)
    # inside at last_in, not at last_in + 1; then outside at first_out, not just before
    last_in, _ = bisect_prefix(zero, path.length, lambda k, r: side(path.at(k, r), rows[r])[0])
    _, first_out = bisect_prefix(last_in, path.length, lambda k, r: ~side(path.at(k, r), rows[r])[1])
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
        moved = p.detach().clone()
        moved[0] = p.detach()[0] + 1.0
        with torch.no_grad():
            dz = (as_logits(functional_call(model, {name: moved}, (x,)), model_outputs) - z0).abs()
        if bool((dz[:, 0] > 0.5).all()) and bool((dz[:, 1:] == 0).all()):
            return p
    return None


def _name_of(model: nn.Module, param: torch.Tensor) -> str:
    """The name under which ``model`` holds the parameter ``param``."""
    for name, p in model.named_parameters():
        if p is param:
            return name
    raise ValueError("expected a parameter of the model, got another tensor")


def _label_runner(model: nn.Module, x: torch.Tensor, model_outputs: OutputKind) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's label and runner-up under ``model``, on the CPU."""
    with torch.no_grad():
        return label_and_runner_up(as_logits(model(x), model_outputs).cpu())


def flip_shifts(model: nn.Module, bias: torch.Tensor, x: torch.Tensor, low: float, *, levels: int = 14,
                model_outputs: OutputKind = "logits", below: torch.Tensor | None = None) -> torch.Tensor:
    """The smallest shift ``low * 2**k / 2`` (``k < levels``) of one logit that flips each
    row's label, each way: column 0 the runner-up's logit raised, column 1 the label's
    lowered, through the output bias ``bias`` of ``model`` (a moved copy passed to each call:
    the model itself is never written); ``inf`` where
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
    the rows that have them, each with a moved copy of the bias: ``model`` is never written). Rows with an infinite shift are not tried."""
    out = torch.zeros(len(x), dtype=torch.bool)
    tried = torch.isfinite(shift)
    name = _name_of(model, bias)
    for c in cls[tried].unique().tolist():
        orig = bias.detach()[c].clone()
        for d in shift[tried & (cls == c)].unique().tolist():
            rows = (tried & (cls == c) & (shift == d)).nonzero().flatten()
            moved = bias.detach().clone()
            moved[c] = orig + sign * d
            with torch.no_grad():
                z = as_logits(functional_call(model, {name: moved}, (x[rows.to(x.device)],)), model_outputs).cpu()
            out[rows] = z.argmax(dim=1) != lab[rows]
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
            lab_s, run_s = label_and_runner_up(zc[screen])
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
