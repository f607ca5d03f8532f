"""``random``: uniformly among the eligible candidates (seeded by the config's ``seed``)."""

from __future__ import annotations

from veriprint.selectors.algorithms import Selection, random_selection
from veriprint.selectors.base import SelectionContext, Selector, register

__all__ = ["RandomSelector"]


@register("random", "uniformly among the eligible candidates (seeded)")
class RandomSelector(Selector):
    def singles(self, ctx: SelectionContext, k: int) -> Selection:
        return random_selection(len(ctx.candidates), k, seed=ctx.cfg.seed, eligible=ctx.eligible)

    def pairs(self, ctx: SelectionContext, k: int) -> Selection:
        return random_selection(len(ctx.candidates), k, seed=ctx.cfg.seed, eligible=ctx.paired)
