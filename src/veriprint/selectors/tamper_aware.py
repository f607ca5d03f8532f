"""``tamper-aware``: cover the label flips of simulated small weight changes.

:func:`veriprint.selectors.algorithms.simulate_flips` applies 64 seeded random changes (0.5% of one
tensor's entries scaled by 1 +- 2%) and records which candidates change label; MANC then
covers those flips, ties broken by ``log S``. A pair flips when either member does (the
same simulated changes are applied to both).
"""

from __future__ import annotations

from veriprint.selectors.algorithms import Selection, manc, simulate_flips
from veriprint.selectors.base import SelectionContext, Selector, register

__all__ = ["TamperAwareSelector"]


@register("tamper-aware", "cover the label flips of simulated small weight changes")
class TamperAwareSelector(Selector):
    def singles(self, ctx: SelectionContext, k: int) -> Selection:
        flips = simulate_flips(ctx.model, ctx.candidates.samples, seed=ctx.cfg.seed)
        return manc(flips, k, score=ctx.candidates.gen.log_s_after, eligible=ctx.eligible)

    def pairs(self, ctx: SelectionContext, k: int) -> Selection:
        assert ctx.twins is not None
        flips = simulate_flips(ctx.model, ctx.candidates.samples, seed=ctx.cfg.seed)
        flips |= simulate_flips(ctx.model, ctx.twins.samples, seed=ctx.cfg.seed)
        return manc(flips, k, score=ctx.candidates.gen.log_s_after, eligible=ctx.paired)
