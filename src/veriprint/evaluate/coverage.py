"""The plan's coverage cell: the share of visible single-parameter edits a fingerprint sees.

For each model the plan names in ``coverage_models``, one sweep of real edits
(:func:`veriprint.coverage.edits.edit_sweep`: ``coverage_draws`` entries of every tensor, ±5%
and ±1%, up and down) is run over every candidate of every method's pool, with natural
test inputs deciding which edits are *visible* (some margin or logit moves by more than
twice the pool's noise floor). For every method with picks (MANC, or reach for pairs) and
every fingerprint size of the plan up to ``n_max`` queries (pairs count two), the row holds
the coverage (caught / visible) averaged over the plan's bags, the share caught of all
edits, and the pool's ceiling (caught by some candidate). A regression in generation,
refinement, twins or selection shows as a lower number here.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from veriprint.evaluate.cells import (
    ModelArtifact,
    Pool,
    _data,
    _pool_params,
    _threads,
    build_module,
    cell_key,
)
from veriprint.evaluate.plan import ModelSpec, Plan

__all__ = ["COVERAGE_NATURAL", "coverage_cell", "coverage_key"]

#: Natural test inputs that decide which edits are visible.
COVERAGE_NATURAL = 128

_DELTAS = (0.05, 0.01)


def coverage_key(plan: Plan, model_spec: ModelSpec) -> str:
    return cell_key("coverage", _pool_params(plan), model_spec, [m for m in plan.methods],
                    {"draws": plan.coverage_draws, "natural": COVERAGE_NATURAL})


def _queries(plan: Plan, pairs: bool) -> list[int]:
    per = 2 if pairs else 1
    return sorted({n for n in (*plan.ns, plan.n_max) if n % per == 0 and n // per <= plan.n_max // per and n >= per})


def coverage_cell(plan: Plan, model_spec: ModelSpec, model: ModelArtifact, *pools: Pool) -> dict[str, Any]:
    """Coverage of every method's fingerprints on ``model_spec`` (``pools`` in plan order)."""
    from veriprint.coverage.edits import edit_sweep

    start = time.perf_counter()
    with _threads(plan.threads):
        net = build_module(model_spec, model.state)
        test = _data(model_spec.data, "test", model_spec.test_limit)
        g = torch.Generator().manual_seed(plan.seed)
        natural = test.x[torch.randperm(len(test), generator=g)[:COVERAGE_NATURAL]].float()
        floor = max(p.fingerprint.noise.floor for p in pools)
        probes = {m.name: p.fingerprint.samples for m, p in zip(plan.methods, pools, strict=True)
                  if len(p) and p.picks is not None}
        sw = edit_sweep(net, probes, natural, visible_at=2 * floor, draws=plan.coverage_draws, deltas=_DELTAS,
                        seed=plan.seed)
    row: dict[str, Any] = {
        "kind": "coverage", "key": coverage_key(plan, model_spec), "model": model_spec.name,
        "draws": plan.coverage_draws, "natural": int(natural.shape[0]), "edits": len(sw), "visible_at": 2 * floor,
        "visible": {f"{d:g}": sw.overall(sw.visible, d, of_visible=False) for d in _DELTAS}, "methods": {},
    }
    for method, pool in zip(plan.methods, pools, strict=True):
        if not len(pool) or pool.picks is None:
            continue
        flips = sw.flips[method.name]
        if pool.pairs:  # candidate i is samples 2i and 2i + 1
            flips = flips[:, 0::2] | flips[:, 1::2]
        every = flips.any(1)
        res: dict[str, Any] = {"unit": "pair" if pool.pairs else "sample", "candidates": len(pool),
                               "ceiling": {}, "coverage": {}, "caught": {}}
        for d in _DELTAS:
            key = f"{d:g}"
            res["ceiling"][key] = sw.overall(every, d, of_visible=True)
            res["coverage"][key], res["caught"][key] = {}, {}
            for n in _queries(plan, pool.pairs):
                k = n // (2 if pool.pairs else 1)
                picks = torch.as_tensor(pool.picks[:, :k], dtype=torch.long)
                cov, allc = [], []
                for bag in picks:
                    hit = flips[:, bag[bag >= 0]].any(1)
                    cov.append(sw.overall(hit, d, of_visible=True))
                    allc.append(sw.overall(hit, d, of_visible=False))
                res["coverage"][key][str(n)] = sum(cov) / len(cov)
                res["caught"][key][str(n)] = sum(allc) / len(allc)
        row["methods"][method.name] = res
    row["seconds"] = time.perf_counter() - start
    return row
