"""Fitting an LM fingerprint's work to a time budget, with this machine's speed on the model.

The classifier's planner (:mod:`veriprint.pipeline.plan`) for the LM pipeline. Before any
work, :func:`plan_lm` counts the passes each stage of
:func:`~veriprint.lm.builder.make_lm_fingerprint` makes (:func:`predict_lm`) and prices them
with the machine's speed on the model (:func:`calibrate_lm_speed`: each kind of pass timed
once, the fastest of repeated timings, kept in the same per-user cache as the classifier's,
:func:`veriprint.pipeline.speed.cache_dir`), so a run with a stored speed gets the same plan
however busy the machine is, and the same command and seed give the same fingerprint.

The counted work, with ``P`` seeds searched, ``T`` generated tokens, ``R`` search rounds,
``C`` candidates per round and ``K`` prompts kept:

==========  ===========================================================================
floor       the seeds' greedy answers (``T`` steps in batches of 32) and the noise floor's
            seven variants on them: batches of 1, 7 and 32, left padding, one thread,
            SDPA attention (batches of 32) and KV-cache decoding (one prompt at a time)
search      per seed: one evaluation, then per round one gradient to the input embeddings,
            the round-trip checks of ``C`` swaps (counted 1.25 times: some fail) and one
            evaluation of the ``C`` swaps (in batches of 64)
answers     the candidates' greedy answers and the noise floor again, on the ``P`` candidates
reach       per kept prompt, one forward pass and ``T x (1 + 5)`` gradients to the weights
==========  ===========================================================================

The search rounds are counted in full (a prompt's search may stop earlier when rounds
improve nothing, so the prediction is an upper bound). When the prediction is over the
budget, the plan trims, in this order (on the shipped model, measured by first-order reach,
``docs/measurements/language-models.md``: the rounds after the first that improves nothing
bought about one point of ``top1-token`` coverage, 96 candidates per round instead of 48
about eight, 96 seeds for 32 prompts instead of 48 about six; with as many seeds as
prompts, a seed whose prompt cannot decide anything leaves the fingerprint a prompt short):

1. search rounds, down to :data:`ROUNDS_KEEP`;
2. candidates per round, down to :data:`CANDIDATES_FLOOR`;
3. the seeds searched, down to the prompts kept;
4. search rounds, down to 1.

Nothing is cut to zero: when even that smallest plan is over the budget, :func:`plan_lm`
refuses with the budget it needs. The noise floor is never trimmed (it decides false
alarms). What was trimmed is logged as a warning and stored in ``meta["plan"]``; with
``budget="none"`` nothing is timed or predicted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from veriprint.errors import ConfigError
from veriprint.lm.model import LanguageModel
from veriprint.pipeline.plan import AUTO_BUDGET_CPU, parse_duration, stored_plan
from veriprint.pipeline.speed import Speed, cache_dir

__all__ = ["CANDIDATES_FLOOR", "LM_OPS", "ROUNDS_KEEP", "LmPlan", "calibrate_lm_speed", "lm_plan_line",
           "lm_speed_facts", "plan_lm", "predict_lm"]

log = logging.getLogger(__name__)

#: The kinds of pass an LM speed holds: ``forward`` (next-token logits of a batch),
#: ``single`` (the same on one thread, the noise floor's ``threads=1``), ``gradient`` (the
#: search's gradient to one prompt's input embeddings), ``kv`` (one prompt decoded ``T``
#: steps with a KV cache), ``reach`` (one prompt's gradients to the weights, per step the
#: margin and 5 logprobs), ``roundtrip`` (one swap's encode/decode check).
LM_OPS = ("forward", "single", "gradient", "kv", "reach", "roundtrip")
#: The predicted stages, in the order they run.
STAGES = ("floor", "search", "answers", "reach")
#: Search rounds kept before the candidates per round are trimmed.
ROUNDS_KEEP = 4
#: Fewest candidates per round the plan trims to.
CANDIDATES_FLOOR = 16
#: Greedy and noise-floor batch; the search evaluates swaps in batches of this many.
GREEDY_BATCH = 32
EVAL_BATCH = 64
#: The noise floor's batch sizes (:data:`veriprint.lm.noise.LM_VARIANTS`).
NOISE_BATCHES = (1, 7, 32)
#: Round-trip checks per candidate kept (some swaps fail the check and are drawn again).
ROUNDTRIP_PER_CANDIDATE = 1.25
#: Logprobs per step whose gradients the reach stage takes.
REACH_K = 5
#: Timed runs per point, and seconds they should add up to (at most MAX_REPEATS runs).
REPEATS = 5
MIN_TOTAL_S = 0.5
MAX_REPEATS = 100
#: Cache format version.
CACHE_VERSION = 1


def lm_speed_facts(lm: LanguageModel, length: int, steps: int) -> dict[str, Any]:
    """What an LM speed depends on: the machine (processor, CPUs, threads), torch, the
    model's class and parameter shapes, and the sequence lengths timed. Two runs with the
    same facts share one cache file."""
    shapes = [(n, tuple(t.shape), str(t.dtype)) for n, t in lm.model.named_parameters()]
    arch = hashlib.sha256(repr((type(lm.model).__qualname__, shapes,
                                getattr(lm.model.config, "_attn_implementation", ""))).encode()).hexdigest()[:16]
    return {
        "kind": "lm",
        "machine": platform.machine(),
        "processor": _processor(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": f"{type(lm.model).__module__}.{type(lm.model).__qualname__}",
        "architecture": arch,
        "parameters": sum(p.numel() for p in lm.model.parameters()),
        "vocab": lm.vocab_size,
        "length": length,
        "steps": steps,
    }


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fastest(run: Callable[[int], None], n: int, repeats: int) -> float:
    """The fastest of at least ``repeats`` timings after a warm-up (more while they add up
    to under :data:`MIN_TOTAL_S`): a load only ever slows a timing down."""
    run(n)
    best, spent, tries = math.inf, 0.0, 0
    while tries < max(1, repeats) or (spent < MIN_TOTAL_S and tries < MAX_REPEATS):
        t = time.perf_counter()
        run(n)
        took = time.perf_counter() - t
        best, spent, tries = min(best, took), spent + took, tries + 1
    return best


def _sample_ids(lm: LanguageModel, length: int) -> list[int]:
    """``length`` token ids of natural text (the shipped seeds, repeated as needed)."""
    from veriprint.lm.builder import shipped_seeds

    ids: list[int] = []
    for text in shipped_seeds():
        ids += lm.encode(text + " ")
        if len(ids) >= length:
            break
    while len(ids) < length:
        ids += ids or [int(lm.tokenizer.bos_token_id or 1)]
    return ids[:length]


def _runners(lm: LanguageModel, length: int, steps: int) -> dict[str, Callable[[int], None]]:
    from veriprint.lm.model import next_token_logits
    from veriprint.lm.prompts import SearchConfig, _gradient
    from veriprint.lm.reach import lm_reach
    from veriprint.lm.target import _cached_logits

    seq = _sample_ids(lm, length)
    prompt = seq[: max(1, length - steps)]
    answer = torch.tensor([seq[len(prompt):][:steps] + [-1] * (steps - len(seq[len(prompt):][:steps]))])
    pad = int(lm.tokenizer.pad_token_id or 0)

    def forward(n: int) -> None:
        next_token_logits(lm.model, [seq] * n, pad_id=pad, batch_size=n)

    def single(n: int) -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            forward(n)
        finally:
            torch.set_num_threads(before)

    def gradient(n: int) -> None:
        for _ in range(n):
            _gradient(lm, prompt, "border", SearchConfig())

    def kv(n: int) -> None:
        _cached_logits(lm, [list(prompt)] * n, steps, None)

    def reach(n: int) -> None:
        for _ in range(n):
            lm_reach(lm, [prompt], answer, torch.ones(1, steps), floor=1e-4, tolerance=1e-4, k=REACH_K,
                     per_tensor=1)

    def roundtrip(n: int) -> None:
        for _ in range(n):
            lm.round_trips(prompt)

    return {"forward": forward, "single": single, "gradient": gradient, "kv": kv, "reach": reach,
            "roundtrip": roundtrip}


def calibrate_lm_speed(lm: LanguageModel, batches: Mapping[str, Iterable[int]], *, length: int, steps: int,
                       recalibrate: bool = False, directory: Path | None = None, repeats: int = REPEATS) -> Speed:
    """The machine's :class:`~veriprint.pipeline.speed.Speed` on ``lm`` at the batch sizes
    ``batches`` asks for (``{op: sizes}``, ops of :data:`LM_OPS`), on sequences of
    ``length`` tokens decoded ``steps`` steps: from the cache where it holds them, else
    timed and stored; ``recalibrate`` times every point again."""
    facts = lm_speed_facts(lm, length, steps)
    key = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]
    path = (directory or cache_dir()) / f"lm-{key}.json"
    entry: dict[str, Any] | None = None
    if not recalibrate:
        try:
            d = json.loads(path.read_text())
            if isinstance(d, dict) and d.get("version") == CACHE_VERSION and d.get("facts") == json.loads(
                    json.dumps(facts)):
                entry = d
        except (OSError, ValueError):
            entry = None
    stored: dict[str, dict[int, float]] = {op: {int(b): float(s) for b, s in p.items()}
                                           for op, p in (entry or {}).get("points", {}).items()}
    unknown = sorted(set(batches) - set(LM_OPS))
    if unknown:
        raise ValueError(f"expected passes among {LM_OPS}, got {unknown}")
    missing = {op: [b for b in sorted({max(1, int(x)) for x in sizes}) if b not in stored.get(op, {})]
               for op, sizes in batches.items()}
    missing = {op: sizes for op, sizes in missing.items() if sizes}
    t0 = time.perf_counter()
    if missing:
        runners = _runners(lm, length, steps)
        with torch.inference_mode(False):
            for op, sizes in missing.items():
                for b in sizes:
                    stored.setdefault(op, {})[b] = _fastest(runners[op], b, repeats)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "facts": facts, "points": {
                op: {str(b): s for b, s in sorted(p.items())} for op, p in stored.items()},
                "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1, sort_keys=True))
            tmp.replace(path)
        except OSError as e:
            log.warning("could not store the calibrated LM speed in %s (%s); the next run measures again", path, e)
    seconds = time.perf_counter() - t0
    return Speed({op: dict(p) for op, p in stored.items()}, 0, "cpu", key, cached=not missing and entry is not None,
                 seconds=seconds if missing else 0.0)


def _greedy(sp: Speed, n: int, steps: int, batch: int, op: str = "forward") -> float:
    return sp.over(op, n, batch, steps)


def _noise(sp: Speed, n: int, steps: int) -> float:
    """The noise floor's seven variants on ``n`` prompts."""
    out = sum(_greedy(sp, n, steps, b) for b in NOISE_BATCHES)
    out += 2 * _greedy(sp, n, steps, GREEDY_BATCH)  # extra left padding, SDPA attention
    out += _greedy(sp, n, steps, GREEDY_BATCH, "single")
    return out + sp.over("kv", n, 1)


def predict_lm(sp: Speed, *, pool: int, steps: int, rounds: int, candidates: int, prompts: int,
               reach: bool = True) -> dict[str, float]:
    """Predicted seconds per stage (``floor``, ``search``, ``answers``, ``reach``) of an LM
    fingerprint searching ``pool`` seeds for ``rounds`` rounds of ``candidates`` swaps,
    ``steps`` generated tokens per prompt, ``prompts`` kept. A pure function of its
    arguments (see the module's docs for what is counted)."""
    per_round = (sp.over("gradient", 1, 1) + sp.over("roundtrip", 1, 1, ROUNDTRIP_PER_CANDIDATE * candidates)
                 + sp.over("forward", candidates, EVAL_BATCH))
    out = {"floor": _greedy(sp, pool, steps, GREEDY_BATCH) + _noise(sp, pool, steps),
           "search": pool * (sp.over("forward", 1, 1) + rounds * per_round),
           "answers": _greedy(sp, pool, steps, GREEDY_BATCH) + _noise(sp, pool, steps)}
    if reach:
        out["reach"] = sp.over("reach", prompts, 1)
    return out


def _sizes(candidates: int) -> dict[str, list[int]]:
    return {"forward": sorted({1, *NOISE_BATCHES, GREEDY_BATCH, min(candidates, EVAL_BATCH)}),
            "single": [GREEDY_BATCH], "gradient": [1], "kv": [1], "reach": [1], "roundtrip": [1]}


@dataclass(frozen=True)
class LmPlan:
    """What an LM fingerprint run does, and what it was predicted to cost.

    Attributes:
        rounds, candidates, pool: search rounds, candidates per round and seeds searched.
        requested: the configured ``rounds``, ``candidates`` and ``pool``.
        budget_s: the time budget in seconds (``None``: none, nothing timed).
        predicted: predicted seconds per stage (empty without a budget).
        trimmed: what was trimmed, in order, e.g. ``["rounds 8 -> 4"]``.
        speed: the calibrated speed (``None`` without a budget).
    """

    rounds: int
    candidates: int
    pool: int
    requested: dict[str, int]
    budget_s: float | None
    predicted: dict[str, float]
    trimmed: list[str] = field(default_factory=list)
    speed: Speed | None = None

    @property
    def total_s(self) -> float:
        return float(sum(self.predicted.values()))

    def to_dict(self) -> dict[str, Any]:
        return stored_plan(self)

    def summary(self) -> str:
        return lm_plan_line(self.to_dict())


def lm_plan_line(d: Mapping[str, Any], stages: Mapping[str, Any] | None = None) -> str:
    """One line of a stored LM plan (``meta["plan"]``): the budget, the prediction, what was
    trimmed and, with ``stages`` (``meta["stages"]``, seconds per stage), each predicted
    stage's prediction against its measured seconds."""
    if d.get("budget_s") is None:
        return "no time budget: nothing timed or predicted; nothing trimmed"
    trimmed = ("trimmed " + ", ".join(d["trimmed"])) if d.get("trimmed") else "nothing trimmed"
    per = ""
    pred = d.get("predicted") or {}
    if stages:
        order = [k for k in STAGES if k in pred] + sorted(k for k in pred if k not in STAGES)
        rows = [f"{k} {pred[k]:.3g}/{float(stages[k]):.3g}" for k in order if k in stages]
        per = f" (predicted/measured s: {', '.join(rows)})" if rows else ""
    sp = d.get("speed")
    speed = ""
    if isinstance(sp, dict):
        speed = "; speed from the cache" if sp.get("cached") else f"; speed calibrated in {sp.get('seconds', 0):.1f} s"
    return (f"time budget {d['budget_s']:.0f} s: predicted {d.get('total_s', 0):.0f} s{per}; {trimmed} "
            f"(search rounds {d.get('rounds')}, candidates {d.get('candidates')}, seeds searched {d.get('pool')})"
            + speed)


def resolve_budget(budget: str | float) -> float | None:
    """Seconds of a time budget (``"auto"``: :data:`~veriprint.pipeline.plan.AUTO_BUDGET_CPU`,
    the LM pipeline runs on the CPU), ``None`` for ``"none"``."""
    b = parse_duration(budget)
    if b is not None and math.isnan(b):
        b = AUTO_BUDGET_CPU
    return b


def plan_lm(lm: LanguageModel | None, *, budget: str | float, pool: int, prompts: int, steps: int, rounds: int,
            candidates: int, length: int, speed: Speed | None = None, recalibrate: bool = False) -> LmPlan:
    """Fit the search to ``budget`` (see the module's docs).

    Args:
        lm: the model (for the speed; may be None when ``speed`` is given).
        budget: ``"auto"``, ``"none"``, a duration such as ``"5min"`` or seconds.
        pool: seeds the run would search.
        prompts: prompts it keeps (the seeds searched are never trimmed below it).
        steps: generated tokens per prompt.
        rounds, candidates: the search's rounds and candidates per round.
        length: the longest prompt, in tokens (the calibration's sequence length is it plus ``steps``).
        speed: a speed to price with instead of the calibrated one (for tests and what-ifs).
        recalibrate: time the machine's speed again.

    Raises:
        ConfigError: a malformed budget, or one below what the smallest plan needs (named).
    """
    budget_s = resolve_budget(budget)
    requested = {"rounds": rounds, "candidates": candidates, "pool": pool}
    if budget_s is None:
        return LmPlan(rounds, candidates, pool, requested, None, {})
    if speed is None:
        if lm is None:
            raise ValueError("expected a model or a speed to plan with, got neither")
        speed = calibrate_lm_speed(lm, _sizes(candidates), length=length + steps, steps=steps,
                                   recalibrate=recalibrate)
    sp = speed
    cur = dict(requested)

    def total() -> float:
        return sum(predict_lm(sp, pool=cur["pool"], steps=steps, rounds=cur["rounds"], candidates=cur["candidates"],
                              prompts=prompts).values())

    floors = {"rounds": min(rounds, ROUNDS_KEEP), "candidates": min(candidates, CANDIDATES_FLOOR),
              "pool": min(pool, max(prompts, 2))}
    if total() > budget_s:
        for key, low in (("rounds", floors["rounds"]), ("candidates", floors["candidates"]),
                         ("pool", floors["pool"]), ("rounds", min(rounds, 1))):
            def set_(v: int, k: str = key) -> None:
                cur[k] = v

            cur[key] = _fit(cur[key], low, set_, total, budget_s)
            if total() <= budget_s:
                break
    pred = predict_lm(sp, pool=cur["pool"], steps=steps, rounds=cur["rounds"], candidates=cur["candidates"],
                      prompts=prompts)
    need = sum(pred.values())
    if need > budget_s:
        raise ConfigError(
            f"the time budget {budget_s:.3g} s is below the {math.ceil(need)} s the smallest language-model "
            f"fingerprint of {prompts} prompts needs on this machine ({cur['rounds']} search round(s) of "
            f"{cur['candidates']} candidates over {cur['pool']} seeds, and the noise floor, which is never trimmed): "
            f"give --budget {math.ceil(need)}s or more, fewer --prompts, or --budget none")
    trimmed = [f"{k} {requested[k]} -> {cur[k]}" for k in ("rounds", "candidates", "pool") if cur[k] != requested[k]]
    return LmPlan(cur["rounds"], cur["candidates"], cur["pool"], requested, budget_s, pred, trimmed, sp)


def _fit(start: int, floor: int, set_: Callable[[int], None], total: Callable[[], float], budget: float) -> int:
    """The largest value in ``[floor, start]`` whose total fits ``budget`` (``floor`` if none
    does), by bisection; the value is left applied."""
    set_(start)
    if total() <= budget:
        return start
    set_(floor)
    if total() > budget:
        return floor
    lo, hi = floor, start
    while hi - lo > 1:
        mid = (lo + hi) // 2
        set_(mid)
        if total() <= budget:
            lo = mid
        else:
            hi = mid
    set_(lo)
    return lo
