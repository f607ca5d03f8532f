"""``reach`` (the default): greedy cover of every parameter tensor by first-order reach.

A candidate reveals a relative change ``delta`` of parameter ``theta_k`` when
``|delta theta_k g_k|`` exceeds its margin (:mod:`veriprint.coverage.reach`); a pair reveals it when
either member does. :func:`veriprint.selectors.algorithms.reach_cover` picks the set that maximizes the
share of each tensor revealed, every tensor weighing the same; ties go to the smaller margin.
The reach matrix is its coverage prediction (``ctx.prediction``), which
:mod:`veriprint.selectors.budget` grows the selection by.
"""

from __future__ import annotations

import torch

from veriprint.coverage.reach import parameter_reach
from veriprint.selectors.algorithms import Selection, reach_cover
from veriprint.selectors.base import SelectionContext, Selector, register
from veriprint.selectors.prediction import CoveragePrediction

__all__ = ["ReachSelector"]


def _in_bag(sub: Selection, idx: torch.Tensor) -> Selection:
    return Selection(idx[sub.indices], sub.coverage, sub.gains, sub.levels, sub.neurons, sub.method)


@register("reach", "greedy cover of every parameter tensor by first-order reach (default)")
class ReachSelector(Selector):
    predicts_coverage = True

    def singles(self, ctx: SelectionContext, k: int) -> Selection:
        c = ctx.candidates
        idx = ctx.eligible.nonzero().flatten()
        r = parameter_reach(ctx.model, c.samples[idx], model_outputs=ctx.model_outputs, seed=ctx.cfg.seed,
                            progress=ctx.progress)
        values = r.directed()
        ctx.prediction = CoveragePrediction(idx, values, r.directed_weights)
        return _in_bag(reach_cover(values, r.directed_weights, k, score=-c.gen.margin[idx]), idx)

    def pairs(self, ctx: SelectionContext, k: int) -> Selection:
        assert ctx.twins is not None
        c = ctx.candidates
        idx = ctx.paired.nonzero().flatten()
        opts = {"model_outputs": ctx.model_outputs, "seed": ctx.cfg.seed, "progress": ctx.progress}
        ra = parameter_reach(ctx.model, c.samples[idx], **opts)  # type: ignore[arg-type]
        rb = parameter_reach(ctx.model, ctx.twins.samples[idx], **opts)  # type: ignore[arg-type]
        both = torch.maximum(ra.directed(), rb.directed())
        ctx.prediction = CoveragePrediction(idx, both, ra.directed_weights)
        return _in_bag(reach_cover(both, ra.directed_weights, k, score=-c.gen.margin[idx]), idx)
