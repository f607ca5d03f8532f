"""``make_fingerprint``: the owner-side pipeline, stage by stage.

0. plan (:mod:`.plan`: fit the counted work to the time and memory budgets at the machine's
calibrated speed, :mod:`.speed`), 1. seeds (:mod:`.seeds`), 2. generate (:func:`veriprint.pipeline.generate.generate`),
3. calibrate (:mod:`.calibrate`), 4. refine (:mod:`.refinement`): :func:`.build_candidates`;
5. twins (:mod:`.twins`); 6. select (:mod:`veriprint.selectors`), then, with a device
profile, straddle (:mod:`.straddle`); 7. describe
(:mod:`.describe`). Each stage is callable on its own.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from veriprint.data import Dataset, InputDomain
from veriprint.deployments.profiles import check_device, tf32
from veriprint.errors import ConfigError
from veriprint.fingerprint import Fingerprint
from veriprint.models import OutputKind, model_device
from veriprint.pipeline.candidates import Candidates, build_candidates, eligible
from veriprint.pipeline.config import FingerprintConfig
from veriprint.pipeline.cost import CostMeter
from veriprint.pipeline.describe import describe
from veriprint.pipeline.generate import GenerationResult
from veriprint.pipeline.plan import Plan, apply_plan, overrun, plan_fingerprint, predict
from veriprint.pipeline.seeds import view_names, with_views
from veriprint.pipeline.straddle import straddle_pairs
from veriprint.pipeline.twins import Twins, make_twins, wants_twins
from veriprint.selectors.algorithms import Selection, event_cover

__all__ = ["make_fingerprint"]

if TYPE_CHECKING:  # the selectors build on the pipeline's lower stages, and this module calls them
    from veriprint.selectors import SelectionContext, Selector
    from veriprint.selectors.budget import Budget

log = logging.getLogger(__name__)


def make_fingerprint(
    model: nn.Module,
    data: Dataset | torch.Tensor,
    config: FingerprintConfig | None = None,
    *,
    domain: InputDomain | None = None,
    model_outputs: OutputKind = "logits",
    progress: bool = True,
    source: str | None = None,
    recalibrate: bool = False,
) -> tuple[Fingerprint, GenerationResult, Selection]:
    """Fingerprint a model.

    Args:
        model: the intact classifier (eval mode).
        data: natural inputs to draw seeds from (a :class:`Dataset` or a tensor).
        config: :class:`FingerprintConfig` (default: bag 500, 8 samples as 4 twin pairs,
            refinement and selection by reach).
        domain: input range and grid (default: the data set's, else ``[0, 1]`` 8-bit).
        model_outputs: ``"logits"`` (default) or ``"probs"``.
        progress: show progress bars.
        source: a description of the model stored in the metadata.
        recalibrate: measure the machine's speed on the model again for the plan, instead
            of the calibration cache's (:mod:`veriprint.pipeline.speed`).

    Where it runs: every stage runs on the device of the model's parameters. With
    ``config.device`` a CUDA device, the model is copied there first (the caller's model
    is not moved), so generation, calibration, refinement, twins, selection and the
    expected outputs all run on the GPU, in the numerics of ``config.precision`` for its
    TF32 flags (``fp32``: TF32 off; ``tf32``: on). The data stays in host memory; the
    seed pool and the bag are moved to the device batch by batch. Random draws (the bag,
    the reach subsets, random selection) are made on the CPU and moved, and bookkeeping
    over the bag (which candidates reached their target, are eligible, have a twin; the
    indices chosen) stays on the CPU. The fingerprint and the returned
    :class:`GenerationResult` are on the CPU, in the same format whatever the device.

    Returns:
        The :class:`Fingerprint`, the full :class:`GenerationResult` of the bag (after
        refinement) and the :class:`Selection`.
    """
    cfg = config or FingerprintConfig()
    dev = check_device(cfg.device)  # refuse a missing GPU before minutes of generation
    if dev.type != "cpu" and model_device(model) != dev:
        model = copy.deepcopy(model).to(dev)
    with tf32(model_device(model), cfg.precision == "tf32"):
        fp, gen, sel = _make(model, data, cfg, domain, model_outputs, progress, source, recalibrate)
    return fp, _on_cpu(gen), sel


def _on_cpu(gen: GenerationResult) -> GenerationResult:
    """``gen`` with every tensor on the CPU (itself when they are already there)."""
    if gen.samples.device.type == "cpu":
        return gen
    moved = {f.name: getattr(gen, f.name).cpu() for f in dataclasses.fields(gen)
             if isinstance(getattr(gen, f.name), torch.Tensor)}
    return replace(gen, **moved)


def _make(model: nn.Module, data: Dataset | torch.Tensor, cfg: FingerprintConfig, domain: InputDomain | None,
          model_outputs: OutputKind, progress: bool, source: str | None,
          recalibrate: bool = False) -> tuple[Fingerprint, GenerationResult, Selection]:
    domain = domain or (data.domain if isinstance(data, Dataset) else InputDomain())
    start = time.perf_counter()
    x0 = data.x if isinstance(data, Dataset) else data
    n_inputs = len(x0)
    groups = view_names(x0, cfg.views) if cfg.bag > n_inputs else ["original"]
    n_seeds = n_inputs * len(groups)
    if cfg.bag > n_seeds:
        need = 2 * cfg.select if wants_twins(cfg) else cfg.select
        if n_seeds < need:
            raise ConfigError(f"expected at least {need} natural inputs for {cfg.select} queries, got {n_inputs}"
                              + (f" ({n_seeds} with their views: {', '.join(groups)})" if n_seeds > n_inputs else "")
                              + "; give more data or ask for fewer queries (--select)")
        log.warning("the data has %d inputs (%d with their views); the bag is cut from %d to %d",
                    n_inputs, n_seeds, cfg.bag, n_seeds)
        cfg = replace(cfg, bag=n_seeds)
    meter = CostMeter(model)
    try:
        with meter.stage("plan"):
            # the pool: the inputs, not views
            pl = plan_fingerprint(model, x0, cfg, model_outputs=model_outputs, recalibrate=recalibrate)
        if pl.trimmed or pl.over:  # one line, with the notes (an ascent cut below its floor)
            log.warning("%s", pl.summary())
        cfg = apply_plan(cfg, pl)
        data, views = with_views(data, cfg.bag, cfg.views)  # only the views the planned bag needs
        extra: dict[str, object] = {}
        fp, gen, sel = _run(model, data, cfg, domain, model_outputs, progress, source, start, meter, pl, extra)
    finally:
        meter.close()
    fp.meta["stages"] = meter.report()
    fp.meta["plan"] = {**pl.to_dict(), **extra}
    took = sum(float(v["seconds"]) for v in fp.meta["stages"].values())
    late = overrun(pl, took)
    if late:  # the safety net: loud, never a cut (the samples are what the plan said)
        log.warning("%s", late)
        fp.meta["plan"]["overrun"] = late
    if isinstance(data, Dataset):  # where the seeds came from (e.g. imagenet-samples:260: crops and flips)
        fp.meta["data"] = {"name": data.name, "size": n_inputs}
    if len(views) > 1:  # natural views added to a small data set (pipeline.seeds.natural_views)
        fp.meta.setdefault("data", {"size": n_inputs})["views"] = views
    return fp, gen, sel


def _run(model: nn.Module, data: Dataset | torch.Tensor, cfg: FingerprintConfig, domain: InputDomain,
         model_outputs: OutputKind, progress: bool, source: str | None, start: float,
         meter: CostMeter, pl: Plan,
         extra: dict[str, object]) -> tuple[Fingerprint, GenerationResult, Selection]:
    cands = build_candidates(model, data, cfg, domain=domain, model_outputs=model_outputs, progress=progress,
                             meter=meter)
    ok = eligible(cands, cfg, cfg.select)
    twins: Twins | None = None
    pairs = 0
    if wants_twins(cfg):
        with meter.stage("twins"):
            twins = make_twins(model, cands, cfg, model_outputs=model_outputs)
        if int((ok & twins.ok).sum()) >= cfg.select // 2:
            pairs = cfg.select // 2
        else:
            log.warning("only %d samples have a twin across the boundary; storing single samples",
                        int((ok & twins.ok).sum()))
    # Reach differentiates through parameters; a model without any (weights held as
    # buffers or constants) is selected by the boundary-event rule instead.
    name = cfg.selector
    if name == "reach" and not any(p.numel() for p in model.parameters()):
        name = "manc"
    from veriprint.selectors import SelectionContext, get_selector

    ctx = SelectionContext(model, cands, ok, twins if pairs else None, cfg, model_outputs, progress)
    selector = get_selector(name)
    samples = cands.samples
    with meter.stage("select"):
        sel, idx, chosen, budget = _select(ctx, selector, cfg, cands, twins, ok, pairs, samples)
    if pairs:
        pairs = len(sel.indices)
    straddled: dict[str, int | float | None] | None = None
    if pairs and not cfg.profile.is_default:
        if pl.speed is not None and pl.predicted and pairs != pl.pairs:  # selection chose more pairs than the plan priced
            extra["repriced"] = {"straddle": round(predict(
                pl.speed, bag=0, steps=0, pool=0, batch=1, boundary=False, refine=False, twins=False, pairs=pairs,
                tighten=cfg.profile.half)["straddle"], 3), "pairs": pairs}
        with meter.stage("straddle"):
            chosen, straddled = straddle_pairs(model, cands, cfg, idx, chosen, pairs, model_outputs)
    with meter.stage("describe"):
        fp = describe(model, cands, cfg, idx=idx, chosen=chosen, selection=sel, eligible=int(ok.sum()),
                      pairs=pairs, model_outputs=model_outputs, source=source, started=start,
                      budget=budget.to_dict())
    if straddled is not None:
        fp.meta["straddle"] = straddled
    return fp, cands.gen, sel


def _select(ctx: SelectionContext, selector: Selector, cfg: FingerprintConfig, cands: Candidates,
            twins: Twins | None, ok: torch.Tensor, pairs: int,
            samples: torch.Tensor) -> tuple[Selection, torch.Tensor, torch.Tensor, Budget]:
    from veriprint.selectors.budget import choose

    if pairs:
        assert twins is not None
        sel, budget = choose(ctx, selector, pairs, paired=True)
        anchors = sel.indices
        extra = torch.empty(0, dtype=torch.long, device="cpu")
        if cfg.select % 2:  # an odd size: one single sample after the pairs
            rest = ok.clone()
            rest[anchors] = False
            extra = event_cover(ctx.units(), ctx.events(False), 1, score=-cands.gen.margin, eligible=rest).indices
        chosen = torch.cat([torch.stack([samples[anchors], twins.samples[anchors]], dim=1).flatten(0, 1),
                            samples[extra]])
        idx = torch.cat([anchors.repeat_interleave(2), extra])
        if extra.numel():
            budget = dataclasses.replace(budget, queries=budget.queries + int(extra.numel()))
    else:
        sel, budget = choose(ctx, selector, cfg.select, paired=False)
        idx = sel.indices
        chosen = samples[idx]
    return sel, idx, chosen, budget
