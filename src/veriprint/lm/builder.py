"""Making an LM fingerprint: seeds, a plan, searched prompts, greedy answers, noise floor, reach.

``make_lm_fingerprint(lm, LmFingerprintConfig(...))`` runs:

1. **seeds**: natural text (the shipped held-out fortunes by default), cut to at most
   ``seed_tokens`` tokens and kept when round-trip safe;
2. **plan**: the search's rounds, candidates and seeds fitted to the time budget at the
   machine's calibrated speed on the model (:mod:`veriprint.lm.plan`; nothing with
   ``budget="none"``);
3. **floor**: the noise floor measured on the seeds' greedy answers
   (:func:`veriprint.lm.noise.calibrate_lm_noise`), which sets how close to a tie a border
   prompt may go (``border_factor`` times the floor);
4. **search**: border prompts (a next-token near-tie, just above the floor) from one share
   of the seeds (all by default) and sensitive prompts (maximal log S, Eq. 6) from the
   others (:func:`veriprint.lm.prompts.search_prompts`);
5. **answers**: greedy decoding of every prompt for ``max_tokens`` tokens, with the top 10
   logprobs of every step; the floor again on the candidates, and the prompts that cannot
   decide anything (first step within the floor of a tie) or that end before
   ``max_tokens`` are dropped; at most ``prompts`` of the rest are kept, chosen by
   first-order reach (``select="reach"``) or in margin order;
6. **reach**: the kept prompts' first-order reach per tensor (:mod:`veriprint.lm.reach`),
   stored in ``meta["reach"]``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch

from veriprint.errors import ConfigError
from veriprint.lm.fingerprint import LmFingerprint
from veriprint.lm.model import ASSETS, LanguageModel
from veriprint.lm.noise import calibrate_lm_noise
from veriprint.lm.plan import REACH_K, plan_lm, resolve_budget
from veriprint.lm.prompts import PromptCandidate, SearchConfig, search_prompts, seed_prompts
from veriprint.lm.reach import lm_reach, prompt_reach, reach_meta, select_by_reach
from veriprint.lm.target import LocalCompletions, greedy
from veriprint.pipeline.speed import Speed

__all__ = ["LmFingerprintConfig", "make_lm_fingerprint", "shipped_seeds"]

log = logging.getLogger(__name__)

TOP = 10


def shipped_seeds() -> list[str]:
    """The shipped natural seeds: first lines of 200 fortunes held out of the model's training."""
    return [str(s) for s in json.loads((ASSETS / "seeds.json").read_text())]


@dataclass(frozen=True)
class LmFingerprintConfig:
    """How an LM fingerprint is made.

    Args:
        prompts: most prompts kept (default 32).
        border_share: share of the seeds searched for border prompts (default 1: every seed;
            sensitive prompts add nothing a border prompt does not, measured in
            ``docs/measurements/language-models.md``).
        max_tokens: generated tokens per prompt, 1 to 4 (default 4).
        seed_tokens: longest seed, in tokens (default 12).
        steps, candidates, top_k, max_edits: the substitution search (default 8, 96, 16, 3).
        patience: search rounds in a row that improve nothing before a prompt's search stops
            (default 8: every round runs, each drawing other swaps).
        border_factor: a border prompt's margin is kept above this times the floor (default 1.5).
        border_target: ... and pushed towards this times the floor (default 2).
        safety: factor on the measured noise (default 10).
        min_floor: smallest margin floor in logits (default 1e-4).
        tolerance: logprob tolerance declared for noisier deployments (default 0).
        chat: answers as a chat API gives them (the tokenizer's chat template; default False).
        seed: seed of the search (default 0).
        pool: seeds searched (default 0: one and a half times ``prompts``, at most the seeds
            given).
        select: how the prompts kept are chosen among the decisive candidates: ``"reach"``
            (default: greedily, the candidate that adds most to the first-order
            ``top1-token`` coverage of ±5% single-weight changes, :mod:`veriprint.lm.reach`;
            once none adds anything, in margin order) or ``"margin"`` (border prompts in
            margin order, then sensitive ones by log S).
        budget: time budget of the run (``"auto"``, default: 10 minutes, the LM pipeline
            runs on the CPU; ``"90s"``, ``"5min"``; ``"none"``: nothing timed): the search's
            rounds, candidates and seeds are ceilings the plan trims to fit
            (:mod:`veriprint.lm.plan`); a run that fits is unchanged.
        version: config version (1).
    """

    prompts: int = 32
    border_share: float = 1.0
    max_tokens: int = 4
    seed_tokens: int = 12
    steps: int = 8
    candidates: int = 96
    top_k: int = 16
    max_edits: int = 3
    patience: int = 8
    border_factor: float = 1.5
    border_target: float = 2.0
    safety: float = 10.0
    min_floor: float = 1e-4
    tolerance: float = 0.0
    chat: bool = False
    seed: int = 0
    pool: int = 0
    select: str = "reach"
    budget: str = "auto"
    version: int = 1

    def __post_init__(self) -> None:
        def need(ok: bool, what: str, value: object) -> None:
            if not ok:
                raise ValueError(f"expected {what}, got {value!r}")

        need(isinstance(self.prompts, int) and 1 <= self.prompts <= 256, "1 <= prompts <= 256", self.prompts)
        need(0.0 <= self.border_share <= 1.0, "0 <= border_share <= 1", self.border_share)
        need(isinstance(self.max_tokens, int) and 1 <= self.max_tokens <= 4, "1 <= max_tokens <= 4", self.max_tokens)
        need(isinstance(self.seed_tokens, int) and self.seed_tokens >= 2, "seed_tokens >= 2", self.seed_tokens)
        need(1 <= self.border_factor <= self.border_target, "1 <= border_factor <= border_target",
             (self.border_factor, self.border_target))
        need(self.safety >= 1, "safety >= 1", self.safety)
        need(self.min_floor > 0, "min_floor > 0", self.min_floor)
        need(self.tolerance >= 0, "tolerance >= 0", self.tolerance)
        need(isinstance(self.pool, int) and not isinstance(self.pool, bool) and self.pool >= 0, "pool >= 0",
             self.pool)
        try:
            resolve_budget(self.budget)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        need(self.select in ("margin", "reach"), "select 'margin' or 'reach'", self.select)
        need(self.version == 1, "version 1", self.version)


def make_lm_fingerprint(lm: LanguageModel, cfg: LmFingerprintConfig = LmFingerprintConfig(), *,
                        seeds: Sequence[str] | None = None, source: str | None = None, recalibrate: bool = False,
                        speed: Speed | None = None) -> LmFingerprint:
    """Make an LM fingerprint (see the module docstring); write it with ``.save(path)``.

    Args:
        lm: the intact model.
        cfg: the settings.
        seeds: natural seed texts (default :func:`shipped_seeds`).
        source: how to name the model in the metadata (default ``lm.source``).
        recalibrate: time the machine's speed on the model again for the budget's plan,
            instead of the cached one.
        speed: a speed to plan with instead of the calibrated one (tests, what-ifs).

    Raises:
        ValueError: too few usable seeds, or no prompt decides anything.
        ConfigError: the time budget is below what the smallest plan needs (named).
    """
    import veriprint

    start = time.perf_counter()
    stages: dict[str, float] = {}
    texts = list(shipped_seeds() if seeds is None else seeds)
    pool = seed_prompts(lm, texts, max_tokens=cfg.seed_tokens)
    want = min(len(pool), max(cfg.pool or cfg.prompts + cfg.prompts // 2, 2))
    if len(pool) < 2:
        raise ValueError(f"expected at least 2 usable seed texts (4+ tokens, round-trip safe), got {len(pool)}")
    pool = pool[:want]
    local = LocalCompletions(lm, chat=cfg.chat)
    stages["seeds"] = time.perf_counter() - start

    t0 = time.perf_counter()
    pl = plan_lm(lm, budget=cfg.budget, pool=len(pool), prompts=cfg.prompts, steps=cfg.max_tokens, rounds=cfg.steps,
                 candidates=cfg.candidates, length=max(len(_model_ids(local, lm, p)) for p in pool), speed=speed,
                 recalibrate=recalibrate)
    if pl.trimmed:
        log.warning("language-model fingerprint: %s", pl.summary())
    pool = pool[: pl.pool]
    stages["plan"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    seed_ref = greedy(lm, [_model_ids(local, lm, p) for p in pool], cfg.max_tokens, top=TOP)
    floor0 = calibrate_lm_noise(lm, [_model_ids(local, lm, p) for p in pool], seed_ref, safety=cfg.safety,
                                declared=cfg.tolerance, min_floor=cfg.min_floor).floor
    stages["floor"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_border = round(len(pool) * cfg.border_share)
    search = SearchConfig(steps=pl.rounds, candidates=pl.candidates, top_k=cfg.top_k, max_edits=cfg.max_edits,
                          seed=cfg.seed, patience=cfg.patience)
    found: list[PromptCandidate] = []
    if len(pool) - n_border:
        found += search_prompts(lm, pool[n_border:], search)
    if n_border:
        found += search_prompts(lm, pool[:n_border], replace(
            search, objective="border", target=cfg.border_target * floor0, lowest=cfg.border_factor * floor0))
    stages["search"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    unique: dict[str, PromptCandidate] = {}
    for c in found:
        unique.setdefault(c.text, c)
    cands = list(unique.values())
    ids = [_model_ids(local, lm, c) for c in cands]
    ref = greedy(lm, ids, cfg.max_tokens, top=TOP)
    noise = calibrate_lm_noise(lm, ids, ref, safety=cfg.safety, declared=cfg.tolerance, min_floor=cfg.min_floor)
    floor = noise.floor
    eos = lm.tokenizer.eos_token_id
    keep: list[int] = []
    for i, _c in enumerate(cands):
        full = int(ref.lengths[i]) == cfg.max_tokens and not (ref.ids[i] == eos).any()
        if full and float(ref.margins[i, 0]) >= floor:
            keep.append(i)
    sensitive = sorted((i for i in keep if cands[i].objective == "sensitive"), key=lambda i: -cands[i].log_s)
    border = sorted((i for i in keep if cands[i].objective == "border"), key=lambda i: float(ref.margins[i, 0]))
    n_b = min(len(border), round(cfg.prompts * cfg.border_share))
    chosen = border[:n_b] + sensitive[: cfg.prompts - n_b]
    if len(chosen) < cfg.prompts:
        chosen += border[n_b:][: cfg.prompts - len(chosen)]
    if cfg.select == "reach" and chosen:
        order = border + sensitive
        rows = prompt_reach(lm, [ids[i] for i in order], ref.ids[torch.tensor(order)],
                            ref.margins[torch.tensor(order)], floor=floor, tolerance=noise.logit_tolerance, k=0,
                            seed=cfg.seed)
        chosen = [order[j] for j in select_by_reach(rows, cfg.prompts, range(len(order)))]
    if not chosen:
        raise ValueError("no prompt decides anything: every candidate's first token is within the noise floor "
                         f"({floor:.3g}) of a tie, or its answer ends early")
    stages["answers"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reach = lm_reach(lm, [ids[i] for i in chosen], ref.ids[torch.tensor(chosen)], ref.margins[torch.tensor(chosen)],
                     floor=floor, tolerance=noise.logit_tolerance, k=REACH_K, seed=cfg.seed)
    stages["reach"] = time.perf_counter() - t0
    fp = _describe(lm, cands, chosen, ref, noise, cfg, source or lm.source, local)
    meta = {**fp.meta, "tool": "veriprint", "tool_version": veriprint.__version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - start, 2), "stages": {k: round(v, 2) for k, v in stages.items()},
            "search": {"seeds": len(pool), "candidates": len(cands), "decisive": len(keep),
                       "border_floor0": floor0},
            "plan": pl.to_dict(), "reach": reach_meta(reach)}
    return replace(fp, meta=meta)


def _model_ids(local: LocalCompletions, lm: LanguageModel, p: PromptCandidate | Sequence[int]) -> list[int]:
    """The ids the model sees for a prompt (templated when the fingerprint is for a chat API)."""
    ids = list(p.ids) if isinstance(p, PromptCandidate) else list(p)
    return local.prompt_ids(lm.decode(ids)) if local.chat else ids


def _describe(lm: LanguageModel, cands: list[PromptCandidate], chosen: list[int], ref, noise, cfg: LmFingerprintConfig,  # type: ignore[no-untyped-def]
              source: str, local: LocalCompletions) -> LmFingerprint:
    k = len(chosen)
    idx = torch.tensor(chosen)
    prompt_ids = [list(cands[i].ids) for i in chosen]
    width = max(len(p) for p in prompt_ids)
    pid = torch.full((k, width), -1, dtype=torch.int32)
    for r, p in enumerate(prompt_ids):
        pid[r, : len(p)] = torch.tensor(p, dtype=torch.int32)
    exp_ids = ref.ids[idx]
    tensors = {
        "prompt_ids": pid,
        "prompt_lengths": torch.tensor([len(p) for p in prompt_ids], dtype=torch.int32),
        "expected_ids": exp_ids.to(torch.int32),
        "lengths": ref.lengths[idx].to(torch.int32),
        "top_ids": ref.top_ids[idx].to(torch.int32),
        "top_logprobs": ref.top_logprobs[idx].float(),
        "margins": ref.margins[idx].double(),
        "log_s": torch.tensor([cands[i].log_s for i in chosen], dtype=torch.float64),
    }
    tokens = [lm.token_strings(exp_ids[r].tolist()) for r in range(k)]
    meta = {
        "kind": "lm",
        "model_source": source,
        "model_hash": lm.weights_sha256,
        "tokenizer_sha256": lm.tokenizer_sha256,
        "model_class": type(lm.model).__name__,
        "vocab_size": lm.vocab_size,
        "api": "chat" if cfg.chat else "completions",
        "max_tokens": cfg.max_tokens,
        "prompts": [cands[i].text for i in chosen],
        "seed_texts": [cands[i].seed_text for i in chosen],
        "edits": [cands[i].edits for i in chosen],
        "roles": [cands[i].objective for i in chosen],
        "tokens": tokens,
        "text": [lm.decode(exp_ids[r].tolist()) for r in range(k)],
        "top_tokens": [[lm.token_strings(ref.top_ids[i, t].tolist()) for t in range(cfg.max_tokens)] for i in chosen],
        "config": asdict(cfg),
    }
    return LmFingerprint(tensors, noise, meta)
