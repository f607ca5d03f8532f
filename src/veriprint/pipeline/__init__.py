"""The owner-side pipeline that makes a fingerprint, as small stages.

=============  ====================================  ======================================
stage          module                                what it does
=============  ====================================  ======================================
0 plan         :mod:`veriprint.pipeline.plan`        fit the counted work to the budgets
1 seeds        :mod:`veriprint.pipeline.seeds`       draw the bag of natural inputs
2 generate     :mod:`veriprint.pipeline.generate`             Sensitive-Sample ascent (Algorithm 1)
3 calibrate    :mod:`veriprint.pipeline.calibrate`   measure the noise floor
4 refine       :mod:`veriprint.pipeline.refinement`  move samples to just above the floor
5 twins        :mod:`veriprint.pipeline.twins`       a twin across each boundary
6 select       :mod:`veriprint.selectors`            choose the samples (a registry)
6b straddle    :mod:`veriprint.pipeline.straddle`    with a device profile: pairs on its boundary
7 describe     :mod:`veriprint.pipeline.describe`    expected outputs, reach, metadata
=============  ====================================  ======================================

:func:`build_candidates` runs stages 1-4 (the evaluation harness starts from there);
:func:`make_fingerprint` runs them all.
"""

from __future__ import annotations

from veriprint.pipeline.calibrate import calibrate
from veriprint.pipeline.candidates import Candidates, build_candidates, eligible
from veriprint.pipeline.config import SELECTOR_NAMES, FingerprintConfig
from veriprint.pipeline.describe import REACH_DELTAS, base_meta, describe, reach_meta
from veriprint.pipeline.make import make_fingerprint
from veriprint.pipeline.plan import Plan, plan_fingerprint
from veriprint.pipeline.refinement import redescribe, refine
from veriprint.pipeline.seeds import draw_seeds
from veriprint.pipeline.straddle import straddle_pairs
from veriprint.pipeline.twins import Twins, make_twins, wants_twins

__all__ = [
    "REACH_DELTAS",
    "SELECTOR_NAMES",
    "Candidates",
    "FingerprintConfig",
    "Plan",
    "Twins",
    "base_meta",
    "build_candidates",
    "calibrate",
    "describe",
    "draw_seeds",
    "eligible",
    "make_fingerprint",
    "make_twins",
    "plan_fingerprint",
    "reach_meta",
    "redescribe",
    "refine",
    "straddle_pairs",
    "wants_twins",
]
