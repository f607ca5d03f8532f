"""Stage 6b, straddle: with a device profile, the chosen twin pairs moved onto the boundary
of the model as that deployment runs it.

Pairs are made on the float32 boundary, a few times the floor from it. A deployment in
reduced precision rounds its logits in steps of 0.01-0.06, so it mostly gives both ends
of such a pair one label, or a tie; :func:`veriprint.refine.straddle` finds two inputs
nearby that it labels differently (``docs/measurements/straddle.md``: top-1 detection behind bfloat16
autocast went from 25 to 42 of 69 tampered copies). Both ends are then tightened
(:func:`veriprint.refine.tighten`): moved a pixel at a time to where a shift of one
logit as small as the floor allows flips the deployment's label, whichever of the label's
and the runner-up's logits moves, since a rounded margin of one whole step says nothing
of how close the unrounded logits are.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from veriprint.models import OutputKind
from veriprint.pipeline.candidates import Candidates
from veriprint.pipeline.config import FingerprintConfig
from veriprint.profiles import served
from veriprint.refine import straddle, tighten

__all__ = ["straddle_pairs", "straddle_summary"]

log = logging.getLogger(__name__)


def straddle_pairs(model: nn.Module, cands: Candidates, cfg: FingerprintConfig, idx: torch.Tensor,
                   chosen: torch.Tensor, pairs: int,
                   model_outputs: OutputKind) -> tuple[torch.Tensor, dict[str, int | float | None]]:
    """The chosen twin pairs (profiles other than float32 on the CPU), made on the float32
    boundary, moved onto the boundary of the model as the profile runs it
    (:func:`veriprint.refine.straddle`), so that each pair gets two labels from the
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
