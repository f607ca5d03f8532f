"""Stage 0, plan: fit a fingerprint's work to a time budget and its batches to a memory budget.

The configured ``bag`` and ``generation.steps`` are ceilings. Before any work, the plan
counts the work each stage will do (passes through the model per candidate, rows, the
batches they run in; :data:`PASSES`, :data:`STRADDLE_PASSES`, counted by
:class:`~veriprint.pipeline.cost.CostMeter` on real runs) and converts it to seconds
with the machine's speed on the model (:mod:`.speed`: calibrated once per machine and
model shape, at the run's batch sizes, the fastest of repeated timings, kept in a
per-user cache). :func:`predict` and :func:`plan` are pure functions of that work and
that speed, so a run with a stored speed gets the same plan however busy the machine
is. When the prediction is over the budget, the plan trims the work in the order that
costs detection least (measured, see ``docs/guide/imagenet.md``: a bag of 50 caught as much as
one of 200 on three small models, and on EfficientNet-Lite2 50 ascent steps bought a few
points of coverage over 0 or 10, where halving the bag cost one):

1. the bag, down to :data:`BAG_KEEP`;
2. ascent steps, down to :data:`STEPS_FLOOR`;
3. the seed pool examined for boundary seeds, down to :data:`POOL_PER_SEED` per seed;
4. the bag, down to :data:`BAG_FLOOR` (or twice the samples kept, whichever is larger);
5. ascent steps, below :data:`STEPS_FLOOR` and down to 0, said in a warning and in
   ``meta["plan"]["notes"]`` with the budget the floor needs.

A configuration that fits is left exactly as it was. Batches are capped so that the
tensors kept for one backward pass stay within the memory budget; on a small model the
cap is above every configured batch and changes nothing. The stages then run the
planned work to the end: none stops on the clock (with ``budget="none"`` no pass is timed
and nothing is predicted: there is nothing to fit). A run that takes more than
:data:`OVERRUN` times its budget is warned about (:func:`overrun`), never cut.

The plan, the prediction per stage and what was trimmed are stored in ``meta["plan"]``,
next to the measured ``meta["stages"]``; ``docs/design/planner.md`` has the details.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from veriprint import units
from veriprint.models import OutputKind
from veriprint.pipeline.speed import Speed, calibrate_speed

__all__ = [
    "BAG_FLOOR",
    "BAG_KEEP",
    "ORDER",
    "OVERRUN",
    "POOL_PER_SEED",
    "STEPS_FLOOR",
    "Plan",
    "apply_plan",
    "overrun",
    "parse_bytes",
    "parse_duration",
    "plan",
    "plan_fingerprint",
    "plan_line",
    "predict",
    "stored_plan",
]

#: Seeds kept before ascent steps are trimmed.
BAG_KEEP = 64
#: Ascent steps kept before the bag goes below :data:`BAG_KEEP`.
STEPS_FLOOR = 10
#: Seed-pool candidates examined per seed, at least, when the pool is trimmed.
POOL_PER_SEED = 4
#: Smallest bag the planner trims to.
BAG_FLOOR = 16
#: Default time budgets in seconds: on a CPU, and on an accelerator.
AUTO_BUDGET_CPU = 600.0
AUTO_BUDGET_ACCELERATOR = 60.0
#: Default memory budget for the tensors one backward pass keeps (bytes), at most this
#: share of the machine's memory. The process's peak is about 1.5 times it plus the model
#: and the runtime (EfficientNet-Lite2: 4.7 GB at 2.5 GiB, 5.4 GB before the selection ran in batches too).
AUTO_MEMORY = 1.0 * 2**30
AUTO_MEMORY_SHARE = 0.4

#: Passes through the model per candidate (forward, forward+backward), counted by the
#: cost meter on real runs (EfficientNet-Lite2 at 260x260: refine 19.5 and 10.6 with the
#: line search of the prefix, 29.2 and 10.6 with bisection alone, twins 10 and 8; the
#: Fashion-MNIST CNN: refine 17.3 and 14.6, 23.1 and 14.6 with bisection, twins 14 and 13;
#: ``benchmarks/speed/prefix_search.py``), rounded up; calibration counts its float64 pass as
#: three. Each is priced at the calibrated speed of its kind of pass and batch.
PASSES = {
    "calibrate": (6.0, 0.0),
    "refine": (20.0, 15.0),
    "twins": (12.0, 14.0),
    "select": (0.0, 2.0),
}
#: An ascent step costs this much more than the calibrated objective and gradient (Adam, the
#: projection, the history), and each sample is described with about this many forward
#: passes before and after (measured on the scaling benchmark's models).
STEP_OVERHEAD = 1.3
DESCRIBE_FORWARD = 4.0
#: The straddle stage's passes per twin pair: rows through the served model (the device
#: profile's copy) and margin gradients of the float32 model, with the tightening of
#: 16-bit profiles (``"tighten"``) and without (``"straddle"``). Counted on the
#: Fashion-MNIST CNN (bag 40, 9 pairs: 55,160 and 61,820 served rows under autocast-bf16
#: and bf16, 131 and 133 gradient rows), rounded up; without tightening, the bound of
#: :func:`veriprint.pipeline.straddle.straddle`'s walks (36 grid steps each way at eps 8/255).
STRADDLE_PASSES = {"tighten": (7000.0, 15.0), "straddle": (100.0, 40.0)}
#: Passes per query of the describe stage (forward, forward+backward): the expected
#: outputs and margins, and the first-order reach (a gradient to the parameters each).
DESCRIBE_PASSES = (4.0, 2.0)
#: Moves per end that one tightening round tries (:func:`veriprint.pipeline.straddle.tighten`).
TIGHTEN_MOVES = 48

def parse_duration(text: str | float | int) -> float | None:
    """Seconds of a time budget: a duration of more than 0 seconds in the project's one
    grammar (:mod:`veriprint.units`: ``"90s"``, ``"10m"``, ``"1.5h"``, ``"1d"``, a plain
    number), ``None`` for ``"none"``; ``"auto"`` is returned as ``nan`` (the machine decides).

    Raises:
        ConfigError: anything else.
    """
    out = units.parse_duration(text, what="a time budget", words=("auto", "none"), positive=True)
    if out == "none":
        return None
    if out == "auto":
        return math.nan
    assert isinstance(out, float)
    return out


def parse_bytes(text: str | int) -> int | None:
    """Bytes of a memory budget in the project's one grammar (:mod:`veriprint.units`:
    ``"512M"``, ``"2G"``, ``"2.5GB"``, a plain number); ``None`` for ``"auto"``.

    Raises:
        ConfigError: anything else.
    """
    out = units.parse_bytes(text, what="a memory budget", words=("auto",))
    return None if out == "auto" else int(out)


def _machine_memory(device: str = "cpu") -> int | None:
    """Bytes of memory where the model runs: the machine's, or the GPU's for a CUDA device."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None



def stored_plan(plan: Any) -> dict[str, Any]:
    """A plan (a dataclass with ``predicted``, ``total_s`` and ``speed``) as ``meta["plan"]``
    stores it: its fields, the predictions rounded, their total, the speed as a dict. The
    classifier's :class:`Plan` and the language model's plan both store theirs so."""
    d = asdict(replace(plan, speed=None))
    d["predicted"] = {k: round(v, 3) for k, v in plan.predicted.items()}
    d["total_s"] = round(plan.total_s, 3)
    d["speed"] = None if plan.speed is None else plan.speed.to_dict()
    return d

@dataclass(frozen=True)
class Plan:
    """What a fingerprint run will do, and what it was predicted to cost.

    Attributes:
        bag, steps, pool: seeds, ascent steps and seed-pool size used.
        batch: samples per batch with gradients (generation, refinement, twins).
        requested: the configured ``bag``, ``steps`` and ``pool``.
        budget_s: the time budget in seconds (``None``: none).
        memory_bytes: the memory budget for one backward pass's tensors.
        predicted: predicted seconds per stage (:data:`ORDER`), the straddle stage
            included when the run has one.
        trimmed: what was trimmed, in order, e.g. ``["steps 1000 -> 10", "bag 500 -> 48"]``.
        over: the plan is still predicted to exceed the budget (it is the smallest allowed).
        notes: what the user must hear, in the plan's line (:meth:`summary`, logged as a
            warning by :func:`~veriprint.pipeline.make_fingerprint`), e.g. that the ascent was
            cut to no steps at all.
        pairs: the twin pairs the straddle stage was priced for (0: no straddle stage).
        speed: the calibrated speed the prediction was made with.
    """

    bag: int
    steps: int
    pool: int
    batch: int
    requested: dict[str, int]
    budget_s: float | None
    memory_bytes: int
    predicted: dict[str, float]
    trimmed: list[str] = field(default_factory=list)
    over: bool = False
    notes: list[str] = field(default_factory=list)
    pairs: int = 0
    speed: Speed | None = None

    @property
    def total_s(self) -> float:
        return float(sum(self.predicted.values()))

    def to_dict(self) -> dict[str, Any]:
        d = stored_plan(self)
        if not self.notes:
            del d["notes"]
        return d

    def summary(self) -> str:
        """One line: the budget, the prediction and what was trimmed (:func:`plan_line`)."""
        return plan_line(self.to_dict())


def plan_line(d: dict[str, Any], took: float | None = None, stages: dict[str, Any] | None = None) -> str:
    """One line of a stored plan (``meta["plan"]``): the budget, the prediction, the seconds
    ``took`` when given, what was trimmed, the loud notes, the batch, and with ``stages``
    (``meta["stages"]``) each predicted stage's prediction against its measured seconds.
    Files made when stages stopped on deadlines also say what the deadlines stopped."""
    limit = "no time budget" if d.get("budget_s") is None else f"time budget {d['budget_s']:.0f} s"
    spent = "" if took is None else f", took {took:.0f} s"
    trimmed = ("trimmed " + ", ".join(d["trimmed"])) if d.get("trimmed") else "nothing trimmed"
    stopped = ", ".join(f"{k} {d[k]}" for k in ("steps_run", "refined", "twinned") if k in d)
    per = ""
    if stages:
        pred = {**d.get("predicted", {}), **d.get("repriced", {})}
        rows = [f"{k} {pred[k]:.3g}/{stages[k]['seconds']:.3g}" for k in ORDER if k in pred and k in stages]
        per = f" (predicted/measured s: {', '.join(rows)})" if rows else ""
    sp = d.get("speed")
    speed = ""
    if isinstance(sp, dict) and d.get("predicted"):
        speed = "; speed from the cache" if sp.get("cached") else f"; speed calibrated in {sp.get('seconds', 0):.1f} s"
    notes = "".join(f"; {n}" for n in d.get("notes", []))
    over = d.get("overrun")
    said = f"predicted {d.get('total_s', 0):.0f} s" if d.get("predicted") else "nothing timed or predicted"
    return (f"{limit}: {said}{spent}{per}; {trimmed}"
            + (f"; stopped by deadlines: {stopped}" if stopped else "") + notes + f"; batch {d.get('batch')}"
            + speed + (" (still over budget: the smallest plan allowed)" if d.get("over") else "")
            + (f"; {over}" if over else ""))


def default_pool(bag: int, n_data: int) -> int:
    """Candidates examined for boundary seeds: ``max(20 bag, min(data, 20000))``, at most the data."""
    return min(n_data, max(20 * bag, min(n_data, 20000)))


def seed_batch(batch: int) -> int:
    """Batch of the seed pool's margins (:func:`veriprint.pipeline.candidates.seed_batch`)."""
    return min(500, batch)


def served_batch(pairs: int) -> int:
    """Rows the straddle stage's tightening sends the served model at once: each of the
    ``2 pairs`` ends with its :data:`TIGHTEN_MOVES` moves."""
    return max(1, 2 * pairs * TIGHTEN_MOVES)


def predict(sp: Speed, *, bag: int, steps: int, pool: int, batch: int, boundary: bool, refine: bool, twins: bool,
            pairs: int = 0, tighten: bool = False, queries: int = 0) -> dict[str, float]:
    """Predicted seconds per stage of a run of that size: the counted passes of each stage
    (:data:`PASSES`, :data:`STRADDLE_PASSES`), in the batches the stage runs, priced at
    the calibrated speed ``sp``. A pure function of its arguments.

    Args:
        sp: the calibrated :class:`~veriprint.pipeline.speed.Speed`.
        bag, steps, pool: the run's seeds, ascent steps and seed pool.
        batch: the gradient batch (generation, calibration, refinement, twins, selection).
        boundary, refine, twins: whether those stages run.
        pairs: twin pairs the straddle stage moves (0: no straddle stage).
        tighten: whether the straddle stage tightens the pairs (16-bit profiles).
        queries: the queries the fingerprint keeps, at least (0: the describe stage is not
            priced); each is described with :data:`DESCRIBE_PASSES`.
    """
    def passes(stage: str) -> float:
        fwd, fb = PASSES[stage]
        return sp.over("forward", bag, batch, fwd) + sp.over("backward", bag, batch, fb)

    out = {"seeds": sp.over("forward", pool, seed_batch(batch)) if boundary else 0.0,
           "generate": (sp.over("step", bag, batch, steps * STEP_OVERHEAD)
                        + sp.over("forward", bag, batch, DESCRIBE_FORWARD)),
           "calibrate": passes("calibrate")}
    if refine:
        out["refine"] = passes("refine")
        if twins:
            out["twins"] = passes("twins")
    out["select"] = passes("select")
    if pairs:
        served_rows, guide_rows = STRADDLE_PASSES["tighten" if tighten else "straddle"]
        rows = served_batch(pairs)
        out["straddle"] = (sp.over("served", rows, rows, pairs * served_rows / rows)
                           + sp.over("backward", 2 * pairs, 2 * pairs, guide_rows / 2))
    if queries:
        fwd, fb = DESCRIBE_PASSES
        out["describe"] = sp.over("forward", queries, queries, fwd) + sp.over("backward", queries, queries, fb)
    return out


def plan(sp: Speed, *, bag: int, steps: int, select: int, n_data: int, boundary: bool, refine: bool,
         twins: bool, budget_s: float | None, memory_bytes: int, batch: int,
         pool: int | None = None, pairs: int = 0, tighten: bool = False) -> Plan:
    """Trim ``bag``, ``steps`` and the seed pool to fit ``budget_s`` (see the module's docs),
    with the costs of :func:`predict` at the calibrated speed ``sp``: a pure function of
    the counted work and the speed, so a stored speed gives the same plan every time."""
    pool0 = pool if pool else default_pool(bag, n_data)
    requested = {"bag": bag, "steps": steps, "pool": pool0}
    cap = max(1, memory_bytes // max(1, sp.bytes_per_sample))
    batch = min(batch, cap)

    def cost(b: int, s: int, q: int) -> dict[str, float]:
        return predict(sp, bag=b, steps=s, pool=q, batch=batch, boundary=boundary, refine=refine, twins=twins,
                       pairs=pairs, tighten=tighten, queries=select)

    cur = {"bag": bag, "steps": steps, "pool": pool0}
    trimmed: list[str] = []
    notes: list[str] = []

    def total() -> float:
        return sum(cost(cur["bag"], cur["steps"], cur["pool"]).values())

    if budget_s is not None and total() > budget_s:
        bag_floor = min(bag, max(BAG_FLOOR, 2 * select))
        # 1. the bag, down to BAG_KEEP: the largest that fits, by bisection.
        cur["bag"] = _fit(cur["bag"], min(bag, max(BAG_KEEP, bag_floor)), lambda b: _with(cur, "bag", b), total,
                          budget_s)
        # 2. steps, down to the floor.
        cur["steps"] = _fit(cur["steps"], min(steps, STEPS_FLOOR), lambda s: _with(cur, "steps", s), total,
                            budget_s)
        # 3. the seed pool, then 4. the bag (the pool follows the bag while it shrinks).
        if total() > budget_s and boundary:
            cur["pool"] = _fit(cur["pool"], min(pool0, max(cur["bag"], POOL_PER_SEED * cur["bag"])),
                               lambda q: _with(cur, "pool", q), total, budget_s)
        if total() > budget_s:
            pool_cap = cur["pool"]

            def set_bag(b: int) -> None:
                cur["bag"] = b
                if boundary:
                    cur["pool"] = min(pool_cap, max(b, POOL_PER_SEED * b))
            cur["bag"] = _fit(cur["bag"], bag_floor, set_bag, total, budget_s)
            set_bag(cur["bag"])
        # 5. steps, to zero, said out loud with the budget that would have kept the floor.
        if total() > budget_s:
            floor_s = total()
            cur["steps"] = _fit(cur["steps"], 0, lambda s: _with(cur, "steps", s), total, budget_s)
            if cur["steps"] < min(steps, STEPS_FLOOR):
                notes.append(f"ascent cut from {steps} to {cur['steps']} steps: the time budget "
                             f"{budget_s:.0f} s is below the {math.ceil(floor_s)} s the smallest plan with "
                             f"{min(steps, STEPS_FLOOR)} steps needs (give --budget {math.ceil(floor_s)}s or more)")
        for k in ("bag", "steps", "pool"):
            if cur[k] != requested[k]:
                trimmed.append(f"{k} {requested[k]} -> {cur[k]}")
    # without a budget and without timings (``budget="none"`` times nothing) nothing is predicted
    pred = cost(cur["bag"], cur["steps"], cur["pool"]) if budget_s is not None or sp.points else {}
    over = budget_s is not None and sum(pred.values()) > budget_s
    return Plan(bag=cur["bag"], steps=cur["steps"], pool=cur["pool"], batch=batch, requested=requested,
                budget_s=budget_s, memory_bytes=memory_bytes, predicted=pred, trimmed=trimmed, over=over,
                notes=notes, pairs=pairs, speed=sp)


def _with(cur: dict[str, int], key: str, value: int) -> None:
    cur[key] = value


def _fit(start: int, floor: int, set_: Any, total: Any, budget: float) -> int:
    """The largest value in ``[floor, start]`` whose total fits ``budget`` (``floor`` if none
    does), found by bisection on integers; ``set_`` applies a value, ``total`` prices it."""
    set_(start)
    if total() <= budget:
        return start
    set_(floor)
    if total() > budget:
        return floor
    lo, hi = floor, start  # lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        set_(mid)
        if total() <= budget:
            lo = mid
        else:
            hi = mid
    set_(lo)
    return lo


def resolve(budget: str, max_memory: str, device: str) -> tuple[float | None, int]:
    """The time budget (seconds or ``None``) and memory budget (bytes) a config asks for.

    ``device`` is where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:N"``). ``auto``
    memory is :data:`AUTO_MEMORY` on the CPU (at most :data:`AUTO_MEMORY_SHARE` of the
    machine), and :data:`AUTO_MEMORY_SHARE` of the GPU's memory on a CUDA device, so that
    the batches fill the device.
    """
    b = parse_duration(budget)
    if b is not None and math.isnan(b):
        b = AUTO_BUDGET_CPU if device == "cpu" else AUTO_BUDGET_ACCELERATOR
    mem = parse_bytes(max_memory)
    if mem is None:
        machine = _machine_memory(device)
        if device.startswith("cuda") and machine:
            mem = int(AUTO_MEMORY_SHARE * machine)
        else:
            mem = int(min(AUTO_MEMORY, AUTO_MEMORY_SHARE * machine)) if machine else int(AUTO_MEMORY)
    return b, mem


def planned_pairs(cfg: Any) -> int:
    """Twin pairs the straddle stage will move, at least: ``select // 2`` when the config
    stores pairs under a device profile other than the default, else 0 (selection may
    add pairs; the run prices the stage again with the pairs it chose, ``meta["plan"]["repriced"]``)."""
    from veriprint.pipeline.twins import wants_twins

    return cfg.select // 2 if wants_twins(cfg) and not cfg.profile.is_default else 0


def plan_fingerprint(model: nn.Module, x: torch.Tensor, cfg: Any, *, model_outputs: OutputKind = "logits",
                     example: int = 4, n_data: int | None = None, recalibrate: bool = False) -> Plan:
    """The :class:`Plan` of a :class:`~veriprint.pipeline.config.FingerprintConfig` on data
    ``x`` (``n_data`` inputs to draw from, default ``len(x)``; more with natural views).

    The machine's speed on the model comes from the calibration cache, measured there
    once (:func:`~veriprint.pipeline.speed.calibrate_speed`) at the batch sizes this run
    uses, on the first inputs of ``x``; ``recalibrate`` measures it again. ``example`` is
    the smallest batch timed, which with the run's own batch gives each kind of pass a
    per-batch overhead and a cost per sample."""
    from veriprint.deployments.profiles import served
    from veriprint.models import model_device

    dev = model_device(model)
    budget_s, memory = resolve(cfg.budget, cfg.max_memory, "cpu" if dev.type == "cpu" else str(dev))
    gen = cfg.generation
    sample = x[: max(1, min(max(example, 16), len(x)))].float()
    profile = f"{cfg.profile.device}/{cfg.profile.precision}"
    base = calibrate_speed(model, sample, gen, batches={}, model_outputs=model_outputs, profile=profile,
                           recalibrate=recalibrate)  # the memory per sample first: it caps the batch
    batch = max(1, min(gen.batch_size, memory // max(1, base.bytes_per_sample), cfg.bag))
    small = max(1, min(example, batch))
    pairs = planned_pairs(cfg)
    sizes: dict[str, list[int]] = {"forward": [small, batch], "backward": [small, batch]}
    if cfg.seeds == "boundary" and cfg.refine:
        sizes["forward"].append(min(seed_batch(batch), n_data or len(x)))
    if gen.steps and gen.eps > 0:
        sizes["step"] = [small, batch]
    deployment = None
    if pairs:
        sizes["served"] = [small, served_batch(pairs)]
        sizes["backward"].append(2 * pairs)
        deployment = served(model, cfg.profile)
    if budget_s is None:  # nothing to fit: no pass is timed, the plan predicts nothing
        sp = base
    else:
        sp = calibrate_speed(model, sample, gen, batches=sizes, model_outputs=model_outputs, served=deployment,
                             profile=profile, recalibrate=False)
        sp = replace(sp, seconds=sp.seconds + base.seconds, cached=sp.cached and base.cached)
    boundary = cfg.seeds == "boundary" and cfg.refine
    refine = cfg.refine and gen.eps > 0
    twins = refine and cfg.twins and cfg.select >= 2
    return plan(sp, bag=cfg.bag, steps=gen.steps if gen.eps > 0 else 0, select=cfg.select,
                n_data=len(x) if n_data is None else n_data, boundary=boundary, refine=refine, twins=twins,
                budget_s=budget_s, memory_bytes=memory, batch=gen.batch_size, pool=cfg.pool or None, pairs=pairs,
                tighten=cfg.profile.half)


#: The stages in the order they run, as :func:`predict` names them (the straddle stage,
#: with a device profile, runs after selection). The plan stage itself is the calibration
#: (nothing once the speed is cached) and is not predicted.
ORDER = ("seeds", "generate", "calibrate", "refine", "twins", "select", "straddle", "describe")

#: A run is warned about when it takes more than this many times its time budget.
OVERRUN = 2.0


def overrun(pl: Plan, took: float) -> str | None:
    """The warning for a run that took ``took`` seconds, when that is more than
    :data:`OVERRUN` times its time budget (None otherwise). Nothing is cut: the stages
    run the planned work whatever the clock says, so the output does not depend on the
    machine's load; the warning says the prediction was wrong."""
    if pl.budget_s is None or took <= OVERRUN * pl.budget_s:
        return None
    return (f"the run took {took:.0f} s, more than {OVERRUN:g} times its time budget of {pl.budget_s:.0f} s "
            f"(predicted {pl.total_s:.0f} s); nothing was cut: the machine was busier than when its speed was "
            "calibrated, or the calibration is stale (veriprint fingerprint --recalibrate)")


def apply_plan(cfg: Any, pl: Plan) -> Any:
    """``cfg`` (a :class:`~veriprint.pipeline.config.FingerprintConfig`) as the plan runs it;
    ``cfg`` itself when the plan changes nothing."""
    if not pl.trimmed and pl.batch == cfg.generation.batch_size:
        return cfg
    gen = replace(cfg.generation, steps=pl.steps, batch_size=pl.batch)
    return replace(cfg, bag=pl.bag, pool=pl.pool if pl.trimmed else cfg.pool, generation=gen)
