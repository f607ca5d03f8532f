"""Writing the enrolled fingerprint: the kept subset, its expectation and floor, and ``meta["enrollment"]``.

``meta["enrollment"]`` records the target (redacted), spec, form, rounds, batch sizes,
replicas, the pool's hash and size, kept and dropped counts per reason, the declared
tolerance, the measured spread, the time, and which specs the file serves: every spec,
unless a tolerance had to grow beyond the pool's (``grown`` names it with both values);
then only the specs that do not compare with a grown tolerance, plus the one enrolled for,
since a check under another would be weaker than the pool's own
(:func:`veriprint.verification.verify.verify` refuses the others).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from veriprint.enrollment.floor import Enrolled
from veriprint.enrollment.subset import Choice
from veriprint.fingerprint import Fingerprint
from veriprint.noise import NoiseFloor
from veriprint.numerics import top2_margin_np

__all__ = ["TOLERANCES_USED", "enrolled_fingerprint", "grown_tolerances", "served_specs", "timestamp",
           "tolerance_of"]

#: The tolerances each kind of spec compares with (see :meth:`veriprint.verification.specs.OutputSpec.compare`).
TOLERANCES_USED: dict[str, set[str]] = {"top1": {"floor"}, "topk": {"floor"}, "top1-prob": {"floor", "prob"},
                                        "probs": {"prob"}, "logits": {"logit"}}


def tolerance_of(noise: NoiseFloor, which: str) -> float:
    """One tolerance of a floor: ``floor``, ``logit`` (``logprob`` on the LM side) or ``prob``."""
    values = {"floor": noise.floor, "logit": noise.logit_tolerance, "logprob": noise.logit_tolerance,
              "prob": noise.prob_tolerance}
    return float(values[which])


def grown_tolerances(base: NoiseFloor, new: NoiseFloor, which: Sequence[str]) -> list[str]:
    """The tolerances among ``which`` that grew from ``base`` to ``new``."""
    return [w for w in which if tolerance_of(new, w) > tolerance_of(base, w) * (1 + 1e-9)]


def served_specs(kind: str, grown: Sequence[str], used: Mapping[str, set[str]]) -> str | list[str]:
    """``"every spec"``, or the spec kinds that do not compare with a grown tolerance plus ``kind``."""
    serves = [k for k, uses in used.items() if k == kind or not uses & set(grown)]
    return "every spec" if len(serves) == len(used) else serves


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def enrolled_fingerprint(pool: Fingerprint, choice: Choice, enrolled: Enrolled, *, spec_kind: str,
                         info: dict[str, Any], model: nn.Module | None) -> tuple[Fingerprint, dict[str, Any]]:
    """The enrolled fingerprint and its ``meta["enrollment"]``.

    Args:
        pool: the pool.
        choice: the kept subset.
        enrolled: its expectation and floor.
        spec_kind: the kind of the spec enrolled for.
        info: what the rounds recorded (target, spec, form, rounds, ...), completed here.
        model: the local model (the subset's reach; none without it).
    """
    chosen = choice.chosen
    sub = pool.subset(chosen)
    base, new_noise = pool.noise, enrolled.noise
    grown = grown_tolerances(base, new_noise, ("floor", "logit", "prob"))
    info = {
        **info,
        "expected_from": "endpoint" if enrolled.numeric else "local model (labels agree)",
        "measured_spread": dict(enrolled.spread),
        "reselected_by": choice.reselected,
        # Every spec, unless a tolerance had to grow beyond the pool's: then only the spec
        # enrolled for (a check under another would be weaker than the pool's own).
        "serves": served_specs(spec_kind, grown, TOLERANCES_USED),
        "grown": {g: {"pool": tolerance_of(base, g), "enrolled": tolerance_of(new_noise, g)} for g in grown},
        "time": timestamp(),
    }
    z_new = enrolled.logits
    meta = dict(sub.meta)
    sel = dict(meta["selection"]) if isinstance(meta.get("selection"), dict) else {}
    sel.update(pairs=choice.pairs, method=f"enrolled ({choice.reselected})")
    cfg = meta.get("config")
    seed_of_reach = cfg.get("seed", 0) if isinstance(cfg, dict) and isinstance(cfg.get("seed", 0), int) else 0
    meta.update(selection=sel, labels=np.argmax(z_new[chosen], axis=1).tolist(), enrollment=info,
                reach=_reach(model, sub.samples, pool.model_outputs, seed_of_reach))
    fp = dataclasses.replace(sub, expected=torch.from_numpy(enrolled.expected[chosen]).float(), noise=new_noise,
                             meta=meta, margin=torch.from_numpy(top2_margin_np(z_new[chosen])).float())
    return fp, info


def _reach(model: nn.Module | None, samples: torch.Tensor, model_outputs: Any, seed: int) -> dict[str, Any]:
    """The enrolled samples' first-order coverage (empty without a local model)."""
    if model is None or not any(p.numel() for p in model.parameters()):
        return {}
    from veriprint.coverage.reach import parameter_reach
    from veriprint.pipeline.describe import reach_meta

    return reach_meta(parameter_reach(model, samples, model_outputs=model_outputs, seed=seed))
