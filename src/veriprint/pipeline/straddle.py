"""Stage 6b, straddle: with a device profile, the chosen twin pairs moved onto the boundary
of the model as that deployment runs it.

Pairs are made on the float32 boundary, a few times the floor from it. A deployment in
reduced precision rounds its logits in steps of 0.01-0.06, so it mostly gives both ends
of such a pair one label, or a tie; :func:`veriprint.refine.straddle` finds two inputs
nearby that it labels differently (``docs/straddle.md``: top-1 detection behind bfloat16
autocast went from 25 to 42 of 69 tampered copies).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from veriprint.models import OutputKind
from veriprint.pipeline.candidates import Candidates
from veriprint.pipeline.config import FingerprintConfig
from veriprint.profiles import served
from veriprint.refine import straddle

__all__ = ["straddle_pairs", "straddle_summary"]

log = logging.getLogger(__name__)


def straddle_pairs(model: nn.Module, cands: Candidates, cfg: FingerprintConfig, idx: torch.Tensor,
                   chosen: torch.Tensor, pairs: int,
                   model_outputs: OutputKind) -> tuple[torch.Tensor, dict[str, int]]:
    """The chosen twin pairs (profiles other than float32 on the CPU), made on the float32
    boundary, moved onto the boundary of the model as the profile runs it
    (:func:`veriprint.refine.straddle`), so that each pair gets two labels from the
    deployment, each end at a margin of at least the floor (decided, as a twin must be).
    ``chosen`` starts with ``pairs`` pairs (sample, twin); the counts are
    stored as ``meta["straddle"]``."""
    first, second = chosen[0: 2 * pairs: 2], chosen[1: 2 * pairs: 2]
    res = straddle(served(model, cfg.profile), model, first, second, cands.seeds[idx[0: 2 * pairs: 2]],
                   target=cands.noise.floor, eps=cfg.generation.eps,
                   norm=cfg.generation.norm, domain=cands.gen.domain, model_outputs=model_outputs)
    out = chosen.clone()
    out[0: 2 * pairs: 2], out[1: 2 * pairs: 2] = res.first, res.second
    ok, moved = int(res.ok.sum()), int(res.moved.sum())
    if ok < pairs:
        log.warning("%d of %d pairs straddle the boundary of the model as %s runs it; the others keep "
                    "their float32 pair", ok, pairs, cfg.profile.name)
    return out, {"pairs": pairs, "straddling": ok, "moved": moved, "already": ok - moved}


def straddle_summary(st: dict[str, int]) -> str:
    """One line on ``meta["straddle"]``, as ``veriprint fingerprint`` and ``inspect`` print it."""
    return (f"straddle: {st.get('straddling')} of {st.get('pairs')} pairs labelled differently on both ends by the "
            f"profiled model ({st.get('moved')} moved onto its boundary, {st.get('already')} already there)")
