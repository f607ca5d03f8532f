"""Enrolling a language-model deployment: its own greedy answers, logprobs and noise floor.

The stages of the classifier side (:mod:`veriprint.enrollment`), on prompts:

1. **Rounds.** The pool's prompts are sent ``rounds`` times through the LM query loop that
   verification uses (:func:`veriprint.lm.verify.complete_once`), each round in a seeded
   order and requests of another size (:func:`veriprint.enrollment.rounds.schedule`), to
   the replicas in turn. Under ``logprobs:K`` each round asks for ``K + 1`` logprobs per
   token: the ``K``-th place's boundary is part of what verification compares.
2. **Agreement.** Every answer is compared with the local fingerprint under the spec, the
   pool's floor widened by the declared ``tolerance`` (logprobs; the margin floor becomes
   at least twice it): greedy tokens must match wherever the local margin clears that
   floor, and under ``logprobs:K`` every listed logprob must lie within the tolerance of
   the local one. Any disagreement refuses the enrollment, naming the prompts and what
   differed.
3. **Stability.** A prompt is stable when every round gave the same text and tokens and,
   under ``logprobs:K``, listed the same ``K + 1`` tokens at every step, each logprob
   spreading by no more than the tolerance. One whose answers list fewer tokens, or one
   the pool does not know, is ``incomplete``; one that took another path at a near tie is
   ``inconsistent``.
4. **The enrolled expectation and floor.** Under ``logprobs:K`` the expected logprobs
   (and from them each step's margin) are the deployment's own, the median over the
   rounds, and the file stores the ``K + 1`` tokens it listed. The noise floor stays the
   pool's where the spread measured over the kept prompts fits inside the pool's
   tolerances; only one the spread exceeds grows. Under ``top1-token`` and ``text`` the
   answers reveal no values: the local logprobs and margins stay (the kept tokens agree
   with them) and the declared tolerance is carried in the floor. A prompt is kept when it
   is stable, every answer matches the enrolled expectation under the enrolled floor, and
   its first token's margin clears that floor; the first ``keep`` in pool order are written.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from veriprint.enrollment.arguments import check_int, check_number, target_list
from veriprint.enrollment.describe import grown_tolerances, served_specs, timestamp, tolerance_of
from veriprint.enrollment.report import (
    EnrollmentError,
    LmCandidateStats,
    LmEnrollmentReport,
    count_states,
)
from veriprint.enrollment.rounds import DEFAULT_BATCH_SIZES, schedule
from veriprint.errors import ConfigError
from veriprint.lm.fingerprint import LmFingerprint
from veriprint.lm.specs import ExpectedAnswer, LmSpec, parse_lm_spec
from veriprint.lm.target import CompletionsTarget
from veriprint.lm.verify import LmAnswer, complete_once, open_lm_target
from veriprint.noise import MAX_LOGIT_NOISE, NoiseFloor
from veriprint.redact import redact

__all__ = ["LM_TOLERANCES_USED", "enroll_lm"]

#: The tolerances each kind of LM spec compares with (see :meth:`veriprint.lm.specs.LmSpec.compare`).
LM_TOLERANCES_USED: dict[str, set[str]] = {"top1-token": {"floor"}, "logprobs": {"floor", "logprob"},
                                           "text": {"floor"}}
#: Per-prompt lists of an LM fingerprint's metadata (a subset keeps their kept entries).
_PER_PROMPT = ("prompts", "seed_texts", "edits", "roles", "tokens", "text", "top_tokens")


def enroll_lm(
    pool: LmFingerprint,
    target: CompletionsTarget | str | Sequence[Any],
    *,
    spec: str | LmSpec = "top1-token",
    rounds: int = 6,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    seed: int = 0,
    keep: int = 8,
    tolerance: float = 0.0,
    interval: float = 0.0,
    max_batch: int | None = None,
    api: str | None = None,
    served_model: str | None = None,
    options: Any = None,
) -> LmEnrollmentReport:
    """Enroll a language-model deployment (see the module docstring).

    Args:
        pool: an LM fingerprint with more prompts than kept.
        target: a completions target, a zoo name, a model folder or an ``http(s)://`` base
            URL (:func:`veriprint.lm.verify.open_lm_target`), or a list of them (replicas).
        spec: ``top1-token`` (default), ``top1-token:N``, ``logprobs:K`` or ``text``.
        rounds: answers recorded per prompt (default 6; at least 2).
        batch_sizes: prompts per request of each round, cycled (``0``: the whole pool).
        seed: seed of each round's order.
        keep: prompts kept (default 8).
        tolerance: logprob noise the deployment may add (bfloat16, float16 serving): logprobs
            within it, and greedy tokens where the local margin is within twice it, are not
            disagreements.
        interval: seconds to wait between rounds.
        max_batch: most prompts per request, whatever the round's size (default: none).
        api: ``"completions"`` or ``"chat"`` (default: the pool's).
        served_model: the model name a server serves (default: the one it lists).
        options: transport options for a URL.

    Raises:
        EnrollmentError: the deployment disagrees with the local fingerprint beyond the
            tolerance, failed to answer, or no prompt is stable and decided.
        ConfigError: bad arguments.
    """
    start = time.perf_counter()
    out_spec = parse_lm_spec(spec)
    rounds = check_int("rounds", rounds, 2)
    keep = check_int("keep", keep, 1)
    sizes = [check_int("a batch size", b, 0) for b in batch_sizes]
    if not sizes:
        raise ConfigError("expected at least one batch size, got none")
    check_number("tolerance", tolerance, MAX_LOGIT_NOISE)
    check_number("interval", interval, 3600.0)
    if max_batch is not None:
        check_int("max_batch", max_batch, 1)
    if not isinstance(pool, LmFingerprint):
        raise ConfigError(f"expected the pool as an LmFingerprint, got {type(pool).__name__}")
    width = int(pool.tensors["top_ids"].shape[2])
    ask = None if out_spec.logprobs is None else out_spec.logprobs + 1
    if ask is not None and ask > width:
        raise ConfigError(f"expected logprobs:K with K below the {width} logprobs per token the pool stores, "
                          f"got {out_spec}")
    n = len(pool)
    raw = target_list(target)
    targets = [open_lm_target(t, api=api or str(pool.meta.get("api", "completions")), served_model=served_model,
                              options=options) for t in raw]
    names = redact(", ".join(str(getattr(t, "description", type(t).__name__)) for t in targets))
    try:
        answers, used, sent = _query_rounds(pool, targets, out_spec, ask, rounds, sizes, seed, interval, max_batch)
    finally:
        for t, r in zip(targets, raw, strict=True):
            close = getattr(t, "close", None)
            if t is not r and callable(close):  # opened here from a name or URL
                close()

    declared = dataclasses.replace(pool.noise, declared=max(pool.noise.declared, float(tolerance)))
    _check_agreement(pool, answers, out_spec, declared, names)
    stable, complete, spread = _stability(pool, answers, out_spec, ask, declared)
    ok, consistent, decided, enrolled, new_noise, measured = _enrolled(pool, answers, out_spec, ask, declared,
                                                                      stable & complete, rounds)
    chosen = [i for i in range(n) if ok[i]][:keep]

    def state(i: int) -> str:
        if i in chosen:
            return "kept"
        for why, flag in (("unstable", stable), ("incomplete", complete), ("inconsistent", consistent),
                          ("undecided", decided)):
            if not flag[i]:
                return why
        return "not selected"

    prompts = pool.prompts
    stats = [LmCandidateStats(index=i, prompt=prompts[i], answers=rounds,
                              texts=sorted({a[i].text for a in answers}), spread=float(spread[i]),
                              stable=bool(stable[i]), decided=bool(decided[i]), kept=i in chosen, why=state(i))
             for i in range(n)]
    counts = count_states(stats)
    if not chosen:
        raise EnrollmentError(
            f"no prompt of the pool of {n} is stable and decided on this deployment "
            f"({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); a larger pool, more margin "
            f"or a smaller declared tolerance may help", {"pool": n, "counts": counts, "target": names})

    base = pool.noise
    grown = grown_tolerances(base, new_noise, ("floor", "logprob"))
    pool_info: dict[str, Any] = {"sha256": pool.sha256, "size": n}
    info: dict[str, Any] = {
        "target": names,
        "spec": str(out_spec),
        "api": api or pool.meta.get("api", "completions"),
        "rounds": rounds,
        "batch_sizes": used,
        "replicas": len(targets),
        "interval_s": float(interval),
        "seed": seed,
        "pool": pool_info,
        "kept": len(chosen),
        "dropped": n - len(chosen),
        "counts": counts,
        "expected_from": "endpoint" if ask is not None else "local model (tokens agree)",
        "logprobs_stored": ask if ask is not None else width,
        "tolerance": {"logprob": float(tolerance)},
        "measured_spread": measured,
        "reselected_by": "pool order",
        "serves": served_specs(out_spec.kind, grown, LM_TOLERANCES_USED),
        "grown": {g: {"pool": tolerance_of(base, g), "enrolled": tolerance_of(new_noise, g)} for g in grown},
        "time": timestamp(),
    }
    fp = _subset(pool, chosen, enrolled if ask is not None else None, new_noise, info)
    return LmEnrollmentReport(
        fingerprint=fp, target=names, spec=str(out_spec), rounds=rounds, batch_sizes=used, pool=pool_info,
        kept=len(chosen), candidates=stats,
        noise={**measured, "floor": new_noise.floor, "logprob_tolerance": new_noise.logit_tolerance},
        queries=sent, seconds=time.perf_counter() - start)


def _query_rounds(pool: LmFingerprint, targets: list[CompletionsTarget], spec: LmSpec, ask: int | None, rounds: int,
                  sizes: Sequence[int], seed: int, interval: float,
                  max_batch: int | None) -> tuple[list[list[LmAnswer]], list[int], int]:
    """Every round's answers, per prompt in pool order; the request size of each round; prompts sent."""
    prompts = pool.prompts
    steps = spec.tokens_compared(pool.max_tokens)
    out: list[list[LmAnswer]] = []
    used: list[int] = []
    sent = 0
    for rnd in schedule(len(prompts), rounds, sizes, seed=seed, replicas=len(targets), interval=interval):
        tgt = targets[rnd.replica]
        size = min(rnd.size, max_batch) if max_batch else rnd.size
        used.append(size)
        got = complete_once(tgt, prompts, max_tokens=steps, logprobs=ask, batch=size, order=rnd.order.tolist())
        sent += got.sent
        if got.failure is not None:
            f = got.failure
            where = (f"round {rnd.number + 1} of {rounds} ({getattr(tgt, 'description', type(tgt).__name__)}), "
                     f"batch of {f.size}")
            raise EnrollmentError(redact(f"the target failed in {where}: {f.detail}")) from f.error
        answers = [a for a in got.answers if a is not None]
        assert len(answers) == len(prompts)
        for i, a in enumerate(answers):
            for d in a.top_logprobs or []:
                if any(v > 1e-4 for v in d.values()):  # a server's rounding of log(1) at most
                    raise EnrollmentError(redact(f"the target answered a logprob above 0 for prompt {i} in round "
                                                 f"{rnd.number + 1}: {json.dumps(d)[:200]}"))
        out.append(answers)
    return out, used, sent


def _step(a: LmAnswer, t: int) -> dict[str, float]:
    """Step ``t``'s listed logprobs (none when the answer lists none there)."""
    tops = a.top_logprobs or []
    return tops[t] if t < len(tops) else {}


def _top(d: dict[str, float] | None, k: int) -> dict[str, float]:
    """The ``k`` best of one step's listed logprobs (best first)."""
    return dict(sorted((d or {}).items(), key=lambda kv: -kv[1])[:k])


def _as_spec(a: LmAnswer, spec: LmSpec) -> tuple[str, list[str], list[dict[str, float]] | None]:
    """An answer as the spec compares it: under ``logprobs:K`` the top ``K`` of the ``K + 1`` asked."""
    tops = None
    if spec.logprobs is not None and a.top_logprobs is not None:
        tops = [_top(d, spec.logprobs) for d in a.top_logprobs]
    return a.text, a.tokens, tops


def _check_agreement(pool: LmFingerprint, answers: list[list[LmAnswer]], spec: LmSpec, declared: NoiseFloor,
                     target: str) -> None:
    """Refuse (:class:`EnrollmentError`) unless every answer agrees with the pool within the tolerance."""
    n = len(pool)
    bad: dict[int, str] = {}
    for rnd, round_answers in enumerate(answers):
        for i, a in enumerate(round_answers):
            try:
                cmp = spec.compare(pool.expected(i), *_as_spec(a, spec), declared)
            except ValueError as e:  # e.g. no logprobs where the spec needs them
                raise EnrollmentError(redact(f"the target's answers cannot be compared under spec {spec}: "
                                             f"prompt {i}: {e}")) from e
            if cmp.mismatch and i not in bad:
                bad[i] = f"#{i} {pool.prompts[i]!r} (round {rnd + 1}): {cmp.why}"
    if not bad:
        return
    what = {"top1-token": "greedy tokens differ where the local margin clears the floor",
            "logprobs": "greedy tokens or logprobs differ beyond the tolerance",
            "text": "the text differs where the local margin clears the floor"}[spec.kind]
    examples = "; ".join(bad[i] for i in sorted(bad)[:3])
    raise EnrollmentError(
        f"the deployment disagrees with the local fingerprint beyond the declared tolerance (margin floor "
        f"{declared.floor:.3g}, logprobs {declared.logit_tolerance:.3g}) on {len(bad)} of {n} prompts under spec "
        f"{spec}: {what}; it may not serve this model (examples {examples})",
        {"disagreeing": sorted(bad), "pool": n, "spec": str(spec), "target": target})


def _stability(pool: LmFingerprint, answers: list[list[LmAnswer]], spec: LmSpec, ask: int | None,
               declared: NoiseFloor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per prompt: stable, complete (every listed token known, as many as asked), logprob spread."""
    n = len(pool)
    steps = spec.tokens_compared(pool.max_tokens)
    stable = np.ones(n, dtype=bool)
    complete = np.ones(n, dtype=bool)
    spread = np.zeros(n)
    for i in range(n):
        seen = [(a[i].text, tuple(a[i].tokens[:steps])) for a in answers]
        stable[i] = all(s == seen[0] for s in seen)
        if ask is None:
            continue
        known = pool.meta["top_tokens"][i]
        for t in range(steps):
            rows = [_step(a[i], t) for a in answers]
            if any(len(d) < ask for d in rows) or any(s not in known[t] for d in rows for s in d):
                complete[i] = False
                continue
            if any(set(d) != set(rows[0]) for d in rows):
                stable[i] = False
                continue
            spread[i] = max(spread[i], max(max(d[s] for d in rows) - min(d[s] for d in rows) for s in rows[0]))
    stable &= spread <= declared.logit_tolerance
    return stable, complete, spread


@dataclass(frozen=True)
class _Expected:
    """One prompt's enrolled logprobs: per step the tokens listed (best first), their ids,
    the median logprobs, and the per-round top-2 margins and probabilities seen."""

    tokens: list[list[str]]
    ids: list[list[int]]
    logprobs: list[list[float]]
    margins: list[float]
    round_margins: np.ndarray  # (rounds, steps)
    round_values: np.ndarray  # (rounds, steps, ask) in the order of ``tokens``


def _deployment_expected(pool: LmFingerprint, answers: list[list[LmAnswer]], i: int, steps: int) -> _Expected:
    """The deployment's own logprobs for prompt ``i`` (a complete, stable prompt)."""
    toks, ids, lps, margins, vals = [], [], [], [], []
    known, known_ids = pool.meta["top_tokens"][i], pool.tensors["top_ids"][i]
    for t in range(steps):
        rows = [_step(a[i], t) for a in answers]
        first = list(rows[0])
        med = {s: float(np.float32(min(0.0, float(np.median([d[s] for d in rows]))))) for s in first}
        order = sorted(first, key=lambda s: (-med[s], first.index(s)))
        toks.append(order)
        ids.append([int(known_ids[t, known[t].index(s)]) for s in order])
        lps.append([med[s] for s in order])
        margins.append(float(np.float64(med[order[0]]) - np.float64(med[order[1]])))
        vals.append([[d[s] for s in order] for d in rows])
    v = np.asarray(vals, dtype=np.float64).transpose(1, 0, 2)  # (rounds, steps, ask)
    srt = -np.sort(-v, axis=2)
    return _Expected(toks, ids, lps, margins, srt[:, :, 0] - srt[:, :, 1], v)


def _expected_answer(pool: LmFingerprint, i: int, e: _Expected | None) -> ExpectedAnswer:
    local = pool.expected(i)
    if e is None:
        return local
    k = len(local.tokens)
    return ExpectedAnswer(tokens=local.tokens, text=local.text, margins=e.margins[:max(k, 1)],
                          top_tokens=e.tokens, top_logprobs=e.logprobs[:max(k, 1)])


def _enrolled(pool: LmFingerprint, answers: list[list[LmAnswer]], spec: LmSpec, ask: int | None,
              declared: NoiseFloor, usable: np.ndarray, rounds: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, _Expected], NoiseFloor, dict[str, float]]:
    """Which prompts are kept, and the enrolled expectation and floor (see the module docstring).

    Returns ``ok``, ``consistent``, ``decided``, the deployment's own logprobs per usable
    prompt (under ``logprobs:K``), the enrolled floor and the spread measured over the kept.
    """
    n = len(pool)
    steps = spec.tokens_compared(pool.max_tokens)
    numeric = ask is not None
    own = {i: _deployment_expected(pool, answers, i, steps) for i in range(n) if numeric and usable[i]}

    def measured(ok: np.ndarray) -> dict[str, float]:
        lg = pr = mg = 0.0
        for i in np.flatnonzero(ok):
            e = own.get(int(i))
            if e is None:
                continue
            lg = max(lg, float((e.round_values.max(0) - e.round_values.min(0)).max()))
            p = np.exp(e.round_values)
            pr = max(pr, float((p.max(0) - p.min(0)).max()))
            mg = max(mg, float((e.round_margins.max(0) - e.round_margins.min(0)).max()))
        return {"logprob": lg, "prob": pr, "margin": mg}

    base = pool.noise
    ok = usable.copy()
    consistent = np.ones(n, dtype=bool)
    decided = np.ones(n, dtype=bool)
    spread = measured(ok)
    new_noise = base
    for attempt in range(3):
        spread = measured(ok)
        lg, pr, mg = spread["logprob"], spread["prob"], spread["margin"]
        if max(lg, mg) > MAX_LOGIT_NOISE:
            raise EnrollmentError(f"the deployment's logprobs spread by {max(lg, mg):.3g} over the rounds: more "
                                  f"than any floor can hold ({MAX_LOGIT_NOISE:g})")
        # As on the classifier side: a spread inside the pool's tolerances leaves them as they are.
        new_noise = dataclasses.replace(
            base, logit=base.logit if lg <= base.logit_tolerance else max(base.logit, lg),
            prob=base.prob if pr <= base.prob_tolerance else min(1.0, max(base.prob, pr)),
            margin=base.margin if mg <= base.floor else max(base.margin, mg),
            variants=(*base.variants, f"enrolled:{rounds} rounds"),
            declared=base.declared if numeric else declared.declared)
        for i in range(n):
            if not usable[i]:
                consistent[i] = decided[i] = False
                continue
            exp = _expected_answer(pool, i, own.get(i))
            cmps = [spec.compare(exp, *_as_spec(a[i], spec), new_noise) for a in answers]
            consistent[i] = not any(c.mismatch or c.ambiguous for c in cmps) and \
                (not numeric or all(tt[0] == tok for tt, tok in zip(exp.top_tokens, exp.tokens, strict=False)))
            decided[i] = exp.margins[0] >= new_noise.floor
        nxt = usable & consistent & decided
        if np.array_equal(nxt, ok):
            break
        ok = nxt & ok if attempt == 2 else nxt
    ok = ok & usable & consistent & decided
    return ok, consistent, decided, own, new_noise, spread


def _subset(pool: LmFingerprint, chosen: list[int], own: dict[int, _Expected] | None, noise: NoiseFloor,
            info: dict[str, Any]) -> LmFingerprint:
    """The enrolled fingerprint: the kept prompts, under ``logprobs:K`` with the deployment's own logprobs."""
    idx = torch.tensor(chosen, dtype=torch.long)
    tensors = {k: v[idx].clone() for k, v in pool.tensors.items()}
    meta = dict(pool.meta)
    n = len(pool)
    for key in _PER_PROMPT:
        if isinstance(meta.get(key), list) and len(meta[key]) == n:
            meta[key] = [meta[key][i] for i in chosen]
    if own is not None:
        steps = pool.max_tokens
        es = [own[i] for i in chosen]
        tensors["top_ids"] = torch.tensor([e.ids for e in es], dtype=torch.int32).reshape(len(es), steps, -1)
        tensors["top_logprobs"] = torch.tensor([e.logprobs for e in es], dtype=torch.float32).reshape(
            len(es), steps, -1)
        tensors["margins"] = torch.tensor([e.margins for e in es], dtype=torch.float64)
        meta["top_tokens"] = [e.tokens for e in es]
    meta["subset_of"] = {"sha256": pool.sha256, "size": n, "indices": list(chosen)}
    meta["enrollment"] = info
    return LmFingerprint(tensors, noise, meta)
