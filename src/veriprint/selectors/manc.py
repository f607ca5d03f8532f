"""``manc``: the paper's Maximum Active-Neuron Cover (Algorithm 2), boundary events first.

Without refinement it is the paper's rule, ties broken by ``log S``. With refinement, a
candidate's boundary events (which classes its top-1 vs top-2 boundary involves) come
before neurons (:func:`veriprint.selectors.algorithms.event_cover`); for pairs, the events are
(class, penultimate unit) pairs: a last-layer weight ``w[k, j]`` shows only in a pair whose
boundary involves class ``k`` while unit ``j`` is active.
"""

from __future__ import annotations

from veriprint.selectors.algorithms import Selection, event_cover, manc
from veriprint.selectors.base import SelectionContext, Selector, register

__all__ = ["MancSelector"]


@register("manc", "the paper's active-neuron cover (with refinement: boundary events first)")
class MancSelector(Selector):
    def singles(self, ctx: SelectionContext, k: int) -> Selection:
        gen = ctx.candidates.gen
        if ctx.cfg.refine:
            return event_cover(ctx.units(), ctx.events(False), k, score=-gen.margin, eligible=ctx.eligible)
        return manc(ctx.units(), k, score=gen.log_s_after, eligible=ctx.eligible)

    def pairs(self, ctx: SelectionContext, k: int) -> Selection:
        ev = ctx.events(True)
        units = ctx.units()
        joint = (ev[:, :, None] & units.bool()[:, None, :]).flatten(1) if ctx.cfg.neurons == "penultimate" else units
        return event_cover(joint, ev, k, score=-ctx.candidates.gen.margin, eligible=ctx.paired)
