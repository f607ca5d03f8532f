"""Stage 0, plan: fit a fingerprint's work to a time budget and its batches to a memory budget.

The configured ``bag`` and ``generation.steps`` are ceilings. Before any work,
:func:`probe` times one batch of the model (inference, and one ascent step with its
gradient to the input) and measures the memory its backward pass keeps per sample;
:func:`plan` then predicts each stage's seconds from those costs and the passes each
stage makes per candidate (counted by :class:`~veriprint.pipeline.cost.CostMeter` on real
runs), and, when the prediction is over the budget, trims the work in the order that
costs detection least (measured, see ``docs/guide/imagenet.md``: a bag of 50 caught as much as
one of 200 on three small models, and on EfficientNet-Lite2 50 ascent steps bought a few
points of coverage over 0 or 10, where halving the bag cost one):

1. the bag, down to :data:`BAG_KEEP`;
2. ascent steps, down to :data:`STEPS_FLOOR`;
3. the seed pool examined for boundary seeds, down to :data:`POOL_PER_SEED` per seed;
4. the bag, down to :data:`BAG_FLOOR` (or twice the samples kept, whichever is larger);
5. ascent steps, down to 0.

A configuration that fits is left exactly as it was. Batches are capped so that the
tensors kept for one backward pass stay within the memory budget; on a small model the
cap is above every configured batch and changes nothing.

The plan, the prediction and what was trimmed are stored in ``meta["plan"]``, next to
the measured ``meta["stages"]``.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from veriprint.errors import ConfigError
from veriprint.models import OutputKind

__all__ = [
    "BAG_FLOOR",
    "BAG_KEEP",
    "POOL_PER_SEED",
    "STEPS_FLOOR",
    "Plan",
    "Probe",
    "apply_plan",
    "batches_until",
    "deadlines",
    "parse_bytes",
    "parse_duration",
    "plan",
    "plan_line",
    "probe",
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
#: ``benchmarks/prefix_search.py``), rounded up; calibration counts its float64 pass as
#: three. The prediction's unit costs are the probe's.
PASSES = {
    "calibrate": (6.0, 0.0),
    "refine": (20.0, 15.0),
    "twins": (12.0, 14.0),
    "select": (0.0, 2.0),
}
#: An ascent step costs this much more than the probe's objective and gradient (Adam, the
#: projection, the history), and each sample is described with about this many forward
#: passes before and after (measured on the scaling benchmark's models).
STEP_OVERHEAD = 1.3
DESCRIBE_FORWARD = 4.0

_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_BYTES = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_duration(text: str | float | int) -> float | None:
    """Seconds of ``"90s"``, ``"10m"``, ``"1.5h"`` or a plain number; ``None`` for ``"none"``;
    ``"auto"`` is returned as ``nan`` (the machine decides).

    Raises:
        ConfigError: anything else.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text > 0 and math.isfinite(text):
            return float(text)
        raise ConfigError(f"expected a time budget above 0 seconds, got {text!r}")
    s = str(text).strip().lower()
    if s == "none":
        return None
    if s == "auto":
        return math.nan
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(s|m|min|h)?", s)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"expected a time budget such as 90s, 10m, 1.5h, auto or none, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def parse_bytes(text: str | int) -> int | None:
    """Bytes of ``"512M"``, ``"2G"``, ``"2.5GB"`` or a plain number; ``None`` for ``"auto"``.

    Raises:
        ConfigError: anything else.
    """
    s = str(text).strip().lower()
    if s == "auto":
        return None
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?", s)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"expected a memory budget such as 512M, 2G or auto, got {text!r}")
    return int(float(m.group(1)) * _BYTES[m.group(2)])


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


@dataclass(frozen=True)
class Probe:
    """Measured unit costs of a model, per sample.

    Attributes:
        batch: the batch the costs were measured at.
        forward_s: seconds of one inference pass.
        step_s: seconds of one ascent step (objective and its gradient to the input).
        backward_s: seconds of one margin gradient to the input (refinement, twins).
        bytes_per_sample: bytes of the tensors autograd keeps for one backward pass.
        device: where the model runs.
    """

    batch: int
    forward_s: float
    step_s: float
    backward_s: float
    bytes_per_sample: int
    device: str


def probe(model: nn.Module, example: torch.Tensor, generation: Any, *, model_outputs: OutputKind = "logits",
          repeats: int = 2) -> Probe:
    """Time ``model`` on ``example`` (a few inputs) and measure its backward memory per sample.

    Each cost is the fastest of ``repeats`` timed runs after one warm-up run; on a GPU each
    run is timed to the end of its kernels (``torch.cuda.synchronize``), not to their launch.
    """
    from veriprint.generate import _closed_form_layer, _objective
    from veriprint.models import model_device
    from veriprint.refine import label_margin

    dev = model_device(model)
    x = example.detach().float().to(dev)
    n = len(x)
    device = dev.type

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def timed(fn: Any) -> float:
        fn()
        best = math.inf
        for _ in range(repeats):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t)
        return best / n

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    last = _closed_form_layer(model, x, generation, model_outputs) if generation.steps else None

    def step() -> None:
        xr = x.clone().requires_grad_(True)
        with torch.enable_grad():
            v = _objective(model, xr, generation, model_outputs, last)
            torch.autograd.grad(v.sum(), xr)

    with torch.no_grad():
        labels = model(x).argmax(dim=1)
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    def backward() -> None:
        xr = x.clone().requires_grad_(True)
        with torch.enable_grad():
            m = label_margin(model, xr, labels, model_outputs)
            torch.autograd.grad(m.sum(), xr)

    f = timed(forward)
    s = timed(step) if generation.steps else 0.0
    b = timed(backward)
    xr = x.clone().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m = label_margin(model, xr, labels, model_outputs)
    del m
    return Probe(batch=n, forward_s=f, step_s=s, backward_s=b, bytes_per_sample=max(1, saved[0] // n),
                 device=device)


@dataclass(frozen=True)
class Plan:
    """What a fingerprint run will do, and what it was predicted to cost.

    Attributes:
        bag, steps, pool: seeds, ascent steps and seed-pool size used.
        batch: samples per batch with gradients (generation, refinement, twins).
        requested: the configured ``bag``, ``steps`` and ``pool``.
        budget_s: the time budget in seconds (``None``: none).
        memory_bytes: the memory budget for one backward pass's tensors.
        predicted: predicted seconds per stage.
        trimmed: what was trimmed, in order, e.g. ``["steps 1000 -> 10", "bag 500 -> 48"]``.
        over: the plan is still predicted to exceed the budget (it is the smallest allowed).
        probe: the measured unit costs.
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
    probe: Probe | None = None
    probe_s: float | None = None

    @property
    def total_s(self) -> float:
        return float(sum(self.predicted.values()))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["predicted"] = {k: round(v, 3) for k, v in self.predicted.items()}
        d["total_s"] = round(self.total_s, 3)
        return d

    def summary(self) -> str:
        """One line: the budget, the prediction and what was trimmed (:func:`plan_line`)."""
        return plan_line(self.to_dict())


def plan_line(d: dict[str, Any], took: float | None = None) -> str:
    """One line of a stored plan (``meta["plan"]``): the budget, the prediction, the seconds
    ``took`` when given, what was trimmed, what deadlines stopped, the batch."""
    limit = "no time budget" if d.get("budget_s") is None else f"time budget {d['budget_s']:.0f} s"
    spent = "" if took is None else f", took {took:.0f} s"
    trimmed = ("trimmed " + ", ".join(d["trimmed"])) if d.get("trimmed") else "nothing trimmed"
    stopped = ", ".join(f"{k} {d[k]}" for k in ("steps_run", "refined", "twinned") if k in d)
    return (f"{limit}: predicted {d.get('total_s', 0):.0f} s{spent}; {trimmed}"
            + (f"; stopped by deadlines: {stopped}" if stopped else "") + f"; batch {d.get('batch')}"
            + (" (still over budget: the smallest plan allowed)" if d.get("over") else ""))


def default_pool(bag: int, n_data: int) -> int:
    """Candidates examined for boundary seeds: ``max(20 bag, min(data, 20000))``, at most the data."""
    return min(n_data, max(20 * bag, min(n_data, 20000)))


def predict(p: Probe, *, bag: int, steps: int, pool: int, boundary: bool, refine: bool, twins: bool,
            ) -> dict[str, float]:
    """Predicted seconds per stage for a run of that size."""
    def passes(stage: str) -> float:
        fwd, fb = PASSES[stage]
        return bag * (fwd * p.forward_s + fb * p.backward_s)

    out = {"seeds": pool * p.forward_s if boundary else 0.0,
           "generate": bag * (steps * STEP_OVERHEAD * p.step_s + DESCRIBE_FORWARD * p.forward_s),
           "calibrate": passes("calibrate")}
    if refine:
        out["refine"] = passes("refine")
        if twins:
            out["twins"] = passes("twins")
    out["select"] = passes("select")
    return out


def plan(p: Probe, *, bag: int, steps: int, select: int, n_data: int, boundary: bool, refine: bool,
         twins: bool, budget_s: float | None, memory_bytes: int, batch: int,
         pool: int | None = None) -> Plan:
    """Trim ``bag``, ``steps`` and the seed pool to fit ``budget_s`` (see the module's docs)."""
    pool0 = pool if pool else default_pool(bag, n_data)
    requested = {"bag": bag, "steps": steps, "pool": pool0}
    cap = max(1, memory_bytes // max(1, p.bytes_per_sample))
    batch = min(batch, cap)

    def cost(b: int, s: int, q: int) -> dict[str, float]:
        return predict(p, bag=b, steps=s, pool=q, boundary=boundary, refine=refine, twins=twins)

    cur = {"bag": bag, "steps": steps, "pool": pool0}
    trimmed: list[str] = []

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
        # 5. steps, to zero.
        if total() > budget_s:
            cur["steps"] = _fit(cur["steps"], 0, lambda s: _with(cur, "steps", s), total, budget_s)
        for k in ("bag", "steps", "pool"):
            if cur[k] != requested[k]:
                trimmed.append(f"{k} {requested[k]} -> {cur[k]}")
    pred = cost(cur["bag"], cur["steps"], cur["pool"])
    over = budget_s is not None and sum(pred.values()) > budget_s
    return Plan(bag=cur["bag"], steps=cur["steps"], pool=cur["pool"], batch=batch, requested=requested,
                budget_s=budget_s, memory_bytes=memory_bytes, predicted=pred, trimmed=trimmed, over=over,
                probe=p)


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


def plan_fingerprint(model: nn.Module, x: torch.Tensor, cfg: Any, *, model_outputs: OutputKind = "logits",
                     example: int = 4, n_data: int | None = None) -> Plan:
    """The :class:`Plan` of a :class:`~veriprint.pipeline.config.FingerprintConfig` on data
    ``x`` (``n_data`` inputs to draw from, default ``len(x)``; more with natural views):
    probe the model on ``example`` inputs, then trim to the config's budgets."""
    from veriprint.models import model_device

    dev = model_device(model)
    budget_s, memory = resolve(cfg.budget, cfg.max_memory, "cpu" if dev.type == "cpu" else str(dev))
    t0 = time.perf_counter()
    pr = probe(model, x[: max(1, min(example, len(x)))].float(), cfg.generation, model_outputs=model_outputs)
    probe_s = time.perf_counter() - t0
    boundary = cfg.seeds == "boundary" and cfg.refine
    refine = cfg.refine and cfg.generation.eps > 0
    twins = refine and cfg.twins and cfg.select >= 2
    pl = plan(pr, bag=cfg.bag, steps=cfg.generation.steps if cfg.generation.eps > 0 else 0, select=cfg.select,
              n_data=len(x) if n_data is None else n_data, boundary=boundary, refine=refine, twins=twins,
              budget_s=budget_s, memory_bytes=memory, batch=cfg.generation.batch_size, pool=cfg.pool or None)
    return replace(pl, probe_s=probe_s)


#: The stages in the order they run, as :func:`predict` names them.
ORDER = ("seeds", "generate", "calibrate", "refine", "twins", "select")


def deadlines(pl: Plan, now: float) -> dict[str, float]:
    """When each stage should be done (``time.perf_counter()`` values), starting ``now``:
    the budget left after the probe, shared out in proportion to the prediction. Refinement
    and twins stop at theirs (after a minimum of samples), so a prediction that was too low
    costs candidates, not the budget. The straddle stage, which runs only with a device
    profile and is not predicted, has the end of the budget: its tightening starts no round
    after it. Empty without a time budget."""
    if pl.budget_s is None or pl.total_s <= 0:
        return {}
    left = max(0.0, pl.budget_s - (pl.probe_s or 0.0))
    out, done = {}, 0.0
    for stage in ORDER:
        done += pl.predicted.get(stage, 0.0)
        out[stage] = now + left * done / pl.total_s
    out["straddle"] = now + left
    return out


def batches_until(n: int, size: int, deadline: float | None = None, at_least: int = 0) -> Iterator[slice]:
    """Batches of ``size`` over ``range(n)``, in order, ending early once
    ``time.perf_counter()`` has passed ``deadline`` and ``at_least`` items are done."""
    for lo in range(0, n, size):
        if deadline is not None and lo >= at_least and time.perf_counter() > deadline:
            return
        yield slice(lo, min(lo + size, n))


def apply_plan(cfg: Any, pl: Plan) -> Any:
    """``cfg`` (a :class:`~veriprint.pipeline.config.FingerprintConfig`) as the plan runs it;
    ``cfg`` itself when the plan changes nothing."""
    if not pl.trimmed and pl.batch == cfg.generation.batch_size:
        return cfg
    gen = replace(cfg.generation, steps=pl.steps, batch_size=pl.batch)
    return replace(cfg, bag=pl.bag, pool=pl.pool if pl.trimmed else cfg.pool, generation=gen)
