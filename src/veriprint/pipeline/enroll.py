"""Enrollment (trust on deploy): learn what *this* deployment answers, then fingerprint that.

Right after the owner deploys a model (the moment they trust the deployment), a *pool*
fingerprint (made with many more samples than it will keep) is sent to the live endpoint
in several rounds: each round in a seeded order, in batches of a different size, so every
candidate is seen at different positions of different batches (and, given several
targets, on different replicas). Every answer goes through the output contract.

A candidate is **kept** only when

* its answers agree with the local fingerprint beyond the declared tolerance
  (otherwise the endpoint may not serve this model at all, and enrollment is refused);
* every repeat gave the same answer under the spec (labels for ``top1``/``topk``), and
  numeric answers (logits, probabilities) spread by no more than the declared tolerance;
* it is decided under the enrolled noise floor, and every answer seen during
  enrollment matches the enrolled fingerprint (so the fingerprint would have said
  INTACT on each round);
* for a twin pair, both members pass (pairs are kept whole).

The enrolled fingerprint stores, where the target reveals values (``logits`` or
``probs``), the endpoint's own answers (the element-wise median over rounds) as the
expected outputs, and a noise floor that covers the spread measured over the kept
candidates (the pool's safety factor applies on top). For label-only targets the local
expected logits stay (the labels agree with them by construction) and the declared
tolerance is carried in the floor. Reselection by reach among the kept candidates needs
the local model; without it the first kept pairs in pool order are taken.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from veriprint.errors import ConfigError, VeriprintError
from veriprint.fingerprint import Fingerprint
from veriprint.noise import MAX_LOGIT_NOISE, as_logits
from veriprint.numerics import softmax_np, top2_margin_np
from veriprint.redact import redact
from veriprint.targets import QueryBatch, Target, TargetError, open_target
from veriprint.targets.contract import check_output
from veriprint.verification.specs import OutputSpec, parse_spec

__all__ = ["CandidateStats", "EnrollmentError", "EnrollmentReport", "enroll"]

log = logging.getLogger(__name__)

#: Batch sizes cycled over the rounds; ``0`` stands for the whole pool in one batch.
DEFAULT_BATCH_SIZES = (1, 7, 0)


class EnrollmentError(VeriprintError, RuntimeError):
    """Enrollment refused: the endpoint disagrees with the local model, failed, or left
    no stable candidate. ``details`` holds the numbers behind the refusal."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


@dataclass(frozen=True)
class CandidateStats:
    """What enrollment saw of one pool candidate.

    Attributes:
        index: position in the pool.
        pair: the twin pair it belongs to (``None`` for a single sample).
        answers: how many answers were recorded (the rounds).
        labels: distinct top-1 labels answered.
        spread: largest range of a numeric answer over the rounds (logits or
            probabilities, in the target's units; 0 for label answers).
        stable: every repeat gave the same answer under the spec, within the tolerance.
        decided: decided (not within noise of a decision) under the enrolled floor.
        kept: in the enrolled fingerprint.
        why: ``"kept"`` or why not: ``"unstable"`` (the repeats differ), ``"inconsistent"``
            (an answer does not match the enrolled expectation), ``"undecided"`` (within
            the enrolled floor of a decision), ``"twin dropped"`` (its pair's other member
            was not kept), ``"not selected"`` (more candidates than ``keep``).
    """

    index: int
    pair: int | None
    answers: int
    labels: list[int]
    spread: float
    stable: bool
    decided: bool
    kept: bool
    why: str


@dataclass(frozen=True)
class EnrollmentReport:
    """The enrolled fingerprint and what enrollment measured.

    Attributes:
        fingerprint: the enrolled fingerprint (unsigned until saved with a key).
        target: the target(s), redacted.
        spec: the output spec enrolled for.
        rounds: rounds of queries.
        batch_sizes: the batch size of each round.
        pool: pool size, pairs in it, and its hash.
        kept: queries kept; ``kept_pairs``: twin pairs among them.
        candidates: per-candidate statistics.
        noise: measured noise (``logit``, ``prob``, ``margin`` spread over the kept
            candidates) and the enrolled tolerances.
        queries: samples sent in all.
        seconds: wall time.
    """

    fingerprint: Fingerprint
    target: str
    spec: str
    rounds: int
    batch_sizes: list[int]
    pool: dict[str, Any]
    kept: int
    kept_pairs: int
    candidates: list[CandidateStats] = field(default_factory=list)
    noise: dict[str, float] = field(default_factory=dict)
    queries: int = 0
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """How many candidates ended in each state (``kept``, ``unstable``, ...)."""
        out: dict[str, int] = {}
        for c in self.candidates:
            out[c.why] = out.get(c.why, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("fingerprint")
        d["counts"] = self.counts()
        return d

    def summary(self) -> str:
        """A short human summary (what the CLI prints)."""
        counts = ", ".join(f"{v} {k}" for k, v in sorted(self.counts().items()))
        n = self.noise
        return "\n".join([
            f"enrolled: {self.kept} queries kept ({self.kept_pairs} twin pairs) of a pool of "
            f"{self.pool['size']}; candidates: {counts}",
            f"target: {self.target}   spec: {self.spec}   rounds: {self.rounds} "
            f"(batch sizes {', '.join(map(str, self.batch_sizes))}), {self.queries} queries",
            f"measured spread over kept candidates: logits {n['logit']:.3g}, probs {n['prob']:.3g}, "
            f"margins {n['margin']:.3g}; enrolled floor {n['floor']:.3g}, logit tolerance "
            f"{n['logit_tolerance']:.3g}, prob tolerance {n['prob_tolerance']:.3g}",
        ])


def _check_int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"expected {name} to be a whole number >= {lo}, got {value!r}")
    return value


def _median_answers(answers: np.ndarray, form: str, model_outputs: str) -> np.ndarray:
    """The enrolled expected outputs from numeric answers ``(rounds, n, r)``."""
    med: np.ndarray = np.asarray(np.median(answers, axis=0), dtype=np.float64)
    out: np.ndarray = med
    if form == "logits" and model_outputs == "probs":  # a softmax model whose endpoint answers logits
        out = softmax_np(med)
    elif form == "probs" and model_outputs == "logits":  # stored as log p: the same softmax
        out = np.log(np.clip(med, 1e-30, 1.0))
    return out


def enroll(
    pool: Fingerprint,
    target: Target | nn.Module | Callable[..., Any] | str | Sequence[Any],
    *,
    spec: str | OutputSpec = "top1",
    rounds: int = 6,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    seed: int = 0,
    keep: int = 8,
    model: nn.Module | None = None,
    tolerance: float = 0.0,
    prob_tolerance: float = 0.0,
    interval: float = 0.0,
    **target_options: Any,
) -> EnrollmentReport:
    """Enroll a deployment: query it with a pool, keep the stable candidates, re-fingerprint.

    Args:
        pool: a fingerprint with many candidates (e.g. ``--select 48``).
        target: anything :func:`veriprint.targets.open_target` accepts, or a list of them
            (replicas of the deployment; the rounds go to them in turn).
        spec: what the API reveals, as for verification (default ``"top1"``).
        rounds: answers recorded per candidate (default 6; at least 2).
        batch_sizes: batch size of each round, cycled (``0``: the whole pool); the
            target's own ``max_batch`` still splits larger batches.
        seed: seed of each round's order.
        keep: queries kept (default 8; pairs count two).
        model: the local intact model: reselection by reach, and a check that it is the
            model the pool was made from.
        tolerance: logit noise the deployment may add beyond the pool's floor (bfloat16,
            float16, TF32 serving): answers within it are not disagreements.
        prob_tolerance: the same for probabilities.
        interval: seconds to wait between rounds (spread over time).
        **target_options: passed to :func:`open_target` for each target.

    Raises:
        EnrollmentError: the endpoint disagrees with the local fingerprint beyond the
            tolerance, failed to answer, or no candidate is stable and decided.
        ConfigError: bad arguments.
    """
    start = time.perf_counter()
    out_spec = parse_spec(spec)
    rounds = _check_int("rounds", rounds, 2)
    keep = _check_int("keep", keep, 1)
    sizes = [_check_int("a batch size", b, 0) for b in batch_sizes]
    if not sizes:
        raise ConfigError("expected at least one batch size, got none")
    for name, v, hi in (("tolerance", tolerance, MAX_LOGIT_NOISE), ("prob_tolerance", prob_tolerance, 1.0),
                        ("interval", interval, 3600.0)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 <= v <= hi:
            raise ConfigError(f"expected {name} in [0, {hi:g}], got {v!r}")
    if not isinstance(pool, Fingerprint):
        raise ConfigError(f"expected the pool as a Fingerprint, got {type(pool).__name__}")
    units = pool.units()
    n = len(pool)
    z_local = pool.expected_logits.numpy()
    r = z_local.shape[1]
    if out_spec.kind == "topk" and out_spec.k > r:
        raise ConfigError(f"spec {out_spec} asks for more labels than the model's {r} classes")
    if out_spec.kind == "logits" and pool.model_outputs == "probs":
        raise ConfigError("spec logits needs a fingerprint of a logit model; this one returns probabilities")
    if model is not None:
        from veriprint.models import model_hash

        want = pool.meta.get("model_hash")
        if want and model_hash(model) != want:
            raise ConfigError(f"expected the local model the pool was made from (model hash {str(want)[:16]}...), "
                              f"got a model with hash {model_hash(model)[:16]}...")

    raw_targets: list[Any] = list(target) if isinstance(target, list | tuple) else [target]
    if not raw_targets:
        raise ConfigError("expected at least one target, got none")
    targets = [open_target(t, **target_options) for t in raw_targets]
    forms = {t.output for t in targets}
    if len(forms) != 1:
        raise ConfigError(f"expected every replica to answer in the same form, got {sorted(forms)}")
    form = targets[0].output
    if not out_spec.accepts(form):
        raise ConfigError(f"spec {out_spec} needs more than this target's {form!r} answers")
    names = redact(", ".join(t.description for t in targets))

    # --- query: every round a seeded order and another batch size ------------------------
    x = pool.samples.numpy()
    grid = None if pool.grid is None else pool.grid.numpy()
    rng = np.random.default_rng(seed)
    answers: list[np.ndarray] = []
    used_sizes: list[int] = []
    sent = 0
    for rnd in range(rounds):
        if rnd and interval:
            time.sleep(interval)
        tgt = targets[rnd % len(targets)]
        size = sizes[rnd % len(sizes)] or n
        used_sizes.append(size)
        order = rng.permutation(n)
        got: np.ndarray | None = None
        for lo in range(0, n, size):
            idx = order[lo: lo + size]
            batch = QueryBatch(x[idx], None if grid is None else grid[idx])
            sent += len(idx)
            where = f"round {rnd + 1} of {rounds} ({tgt.description}), batch of {len(idx)}"
            try:
                ans = check_output(tgt.query(batch), form=form, rows=len(idx), classes=r, where=where,
                                   keep_precision=True)
            except TargetError as e:
                raise EnrollmentError(redact(f"the target failed in {where}: {e}")) from e
            except Exception as e:  # a target's own bug: enrollment cannot trust what it saw
                raise EnrollmentError(redact(f"the target failed in {where}: {type(e).__name__}: {e}")) from e
            ans = np.asarray(ans, dtype=np.float64)
            if got is None:
                got = np.zeros((n, *ans.shape[1:]), dtype=np.float64)
            got[idx] = ans
        assert got is not None
        answers.append(got)
    stack = np.stack(answers)  # (rounds, n, ...)

    # --- disagreement with the local fingerprint -----------------------------------------
    declared = dataclasses.replace(pool.noise, declared=max(pool.noise.declared, float(tolerance)),
                                   declared_prob=max(pool.noise.declared_prob, float(prob_tolerance)))
    try:
        local_cmp = [out_spec.compare(z_local, a, form, declared) for a in answers]
    except TargetError as e:  # e.g. fewer labels per answer than the spec needs
        raise EnrollmentError(redact(f"the target's answers cannot be compared under spec {out_spec}: {e}")) from e
    disagrees = np.any([c.mismatch for c in local_cmp], axis=0)
    if form in ("logits", "probs"):
        # Answers that reveal values are compared whole (every class), so that a model
        # swap shows even where every label sits within the tolerance of a decision.
        if form == "logits" and pool.model_outputs == "logits":
            far = np.abs(stack - z_local[None]).max(axis=2) > declared.logit_tolerance
        else:
            p_local = softmax_np(z_local)
            if form == "probs":
                p_obs = stack / stack.sum(axis=2, keepdims=True)
            else:
                p_obs = softmax_np(stack.reshape(-1, r)).reshape(stack.shape)
            far = np.abs(p_obs - p_local[None]).max(axis=2) > declared.prob_tolerance
        disagrees |= far.any(axis=0)
    elif local_cmp[0].ambiguous.all():
        raise EnrollmentError(
            f"cannot check that the endpoint serves this model: every one of the {n} candidates sits "
            f"within the tolerance (margin floor {declared.floor:.3g}) of a decision under spec {out_spec}, "
            f"and its {form!r} answers reveal no values; lower the tolerance or use a pool with larger margins",
            {"pool": n, "spec": str(out_spec), "target": names})
    if disagrees.any():
        bad = np.flatnonzero(disagrees)
        def example(i: int) -> str:
            rnd = next((k for k, c in enumerate(local_cmp) if c.mismatch[i]), 0)
            text = (f"#{i}: expected {_short(local_cmp[rnd].expected[i])}, answered "
                    f"{_short(local_cmp[rnd].observed[i])}")
            if form == "logits" and pool.model_outputs == "logits":
                text += f" (largest logit difference {float(np.abs(stack[:, i] - z_local[i]).max()):.3g})"
            return text

        examples = "; ".join(example(int(i)) for i in bad[:3])
        raise EnrollmentError(
            f"the endpoint disagrees with the local fingerprint beyond the declared tolerance (margin "
            f"floor {declared.floor:.3g}, logits {declared.logit_tolerance:.3g}, probs "
            f"{declared.prob_tolerance:.3g}) on {len(bad)} of {n} candidates under spec {out_spec}; "
            f"it may not serve this model (examples {examples})",
            {"disagreeing": bad.tolist(), "pool": n, "spec": str(out_spec), "target": names})

    # --- stability ---------------------------------------------------------------------
    numeric = form in ("logits", "probs")
    if numeric:
        labels = np.argsort(-stack, axis=2, kind="stable")
        spread = (stack.max(axis=0) - stack.min(axis=0)).max(axis=1)
        limit = declared.logit_tolerance if form == "logits" else declared.prob_tolerance
    else:
        labels = stack.astype(np.int64).reshape(rounds, n, -1)
        spread = np.zeros(n)
        limit = math.inf
    stable = spread <= limit
    if out_spec.kind in ("top1", "topk", "top1-prob"):
        k_lab = out_spec.k if out_spec.kind == "topk" else 1
        stable &= (labels[:, :, :k_lab] == labels[:1, :, :k_lab]).all(axis=(0, 2))

    # --- the enrolled expectation and noise floor --------------------------------------
    if numeric:
        # as stored (float32), so that every check below sees what verification will
        expected = _median_answers(stack, form, pool.model_outputs).astype(np.float32).astype(np.float64)
        z_new = as_logits(torch.from_numpy(expected), pool.model_outputs).numpy()
    else:
        expected = pool.expected.double().numpy()
        z_new = z_local

    def measured(ok: np.ndarray) -> tuple[float, float, float]:
        if not numeric or not ok.any():
            return 0.0, 0.0, 0.0
        s = stack[:, ok]
        z_r = as_logits(torch.from_numpy(s.reshape(-1, r)), "probs" if form == "probs" else "logits").numpy()
        z_r = z_r.reshape(rounds, -1, r)
        p_r = softmax_np(z_r.reshape(-1, r)).reshape(z_r.shape)
        m_r = top2_margin_np(z_r.reshape(-1, r)).reshape(z_r.shape[:2])
        lg = float((z_r.max(0) - z_r.min(0)).max()) if form == "logits" else 0.0
        return lg, float((p_r.max(0) - p_r.min(0)).max()), float((m_r.max(0) - m_r.min(0)).max())

    # The floor depends on the kept set and the kept set on the floor: a few passes, the
    # last one only removing candidates (the floor then covers a superset of the kept).
    ok = stable.copy()
    new_noise = pool.noise
    decided_new = np.ones(n, dtype=bool)
    lg = pr = mg = 0.0
    for attempt in range(3):
        lg, pr, mg = measured(ok)
        if max(lg, mg) > MAX_LOGIT_NOISE:
            raise EnrollmentError(f"the endpoint's answers spread by {max(lg, mg):.3g} logits over the "
                                  f"rounds: more than any floor can hold ({MAX_LOGIT_NOISE:g})")
        base = pool.noise
        # What the pool's floor already holds stays as it is: a spread measured inside the
        # pool's own tolerances is noise the pool was made to absorb, and multiplying it by
        # the safety factor would widen the floor beyond anything measured (and weaken every
        # label check). Only a spread beyond the pool's tolerance moves the floor.
        new_noise = dataclasses.replace(
            base, logit=base.logit if lg <= base.logit_tolerance else max(base.logit, lg),
            prob=base.prob if pr <= base.prob_tolerance else min(1.0, max(base.prob, pr)),
            margin=base.margin if mg <= base.floor else max(base.margin, mg),
            variants=(*base.variants, f"enrolled:{rounds} rounds"),
            declared=base.declared if numeric else declared.declared,
            declared_prob=base.declared_prob if numeric else declared.declared_prob)
        cmps = [out_spec.compare(z_new, a, form, new_noise) for a in answers]
        consistent = ~np.any([c.mismatch for c in cmps], axis=0)
        decided_new = ~cmps[0].ambiguous
        nxt = stable & consistent & decided_new
        if np.array_equal(nxt, ok):
            break
        ok = nxt & ok if attempt == 2 else nxt
    ok = ok & stable & consistent & decided_new

    # --- reselection: whole pairs first, then singles ------------------------------------
    good_units = [u for u in units if all(ok[i] for i in u)]
    pair_units = [u for u in good_units if len(u) == 2]
    single_units = [u for u in good_units if len(u) == 1]
    n_pairs = min(keep // 2, len(pair_units))
    n_singles = min(keep - 2 * n_pairs, len(single_units))
    chosen_units = _pick(model, pool, pair_units, n_pairs) + _pick(model, pool, single_units, n_singles)
    chosen = [i for u in chosen_units for i in u]

    def state(i: int) -> str:
        if i in chosen:
            return "kept"
        if not stable[i]:
            return "unstable"
        if not consistent[i]:
            return "inconsistent"
        if not decided_new[i]:
            return "undecided"
        if not ok[i] or not all(ok[j] for u in units if i in u for j in u):
            return "twin dropped"
        return "not selected"

    pair_of = {i: p for p, u in enumerate(units) if len(u) == 2 for i in u}
    stats = [CandidateStats(index=i, pair=pair_of.get(i), answers=rounds,
                            labels=sorted({int(v) for v in labels[:, i, 0]}), spread=float(spread[i]),
                            stable=bool(stable[i]), decided=bool(decided_new[i]),
                            kept=i in chosen, why=state(i)) for i in range(n)]
    counts: dict[str, int] = {}
    for c in stats:
        counts[c.why] = counts.get(c.why, 0) + 1
    if not chosen and good_units and keep < 2 and not single_units:
        raise EnrollmentError(
            f"keep {keep} cannot hold a twin pair (a pair counts two queries and is kept only whole), and "
            f"every one of the {len(pair_units)} stable, decided candidates of this pool is half of a pair; "
            f"keep 2 or more (--keep 2)",
            {"pool": n, "counts": counts, "target": names, "keep": keep, "good_pairs": len(pair_units)})
    if not chosen:
        raise EnrollmentError(
            f"no candidate of the pool of {n} is stable and decided on this endpoint "
            f"({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); a larger pool, more margin "
            f"or a smaller declared tolerance may help", {"pool": n, "counts": counts, "target": names})

    # --- the enrolled fingerprint ------------------------------------------------------
    sub = pool.subset(chosen)
    base = pool.noise
    grown = [what for what, new, old in (("floor", new_noise.floor, base.floor),
                                         ("logit", new_noise.logit_tolerance, base.logit_tolerance),
                                         ("prob", new_noise.prob_tolerance, base.prob_tolerance))
             if new > old * (1 + 1e-9)]
    serves = [kind for kind, uses in _TOLERANCES_USED.items() if kind == out_spec.kind or not uses & set(grown)]
    kept_spread = {"logit": lg, "prob": pr, "margin": mg}
    pool_info: dict[str, Any] = {"sha256": pool.sha256, "size": n, "pairs": sum(len(u) == 2 for u in units)}
    reselected = "reach" if model is not None and len(pair_units) + len(single_units) > n_pairs + n_singles \
        else "pool order"
    info: dict[str, Any] = {
        "target": names,
        "spec": str(out_spec),
        "form": form,
        "rounds": rounds,
        "batch_sizes": used_sizes,
        "replicas": len(targets),
        "interval_s": float(interval),
        "seed": seed,
        "pool": pool_info,
        "kept": len(chosen),
        "kept_pairs": n_pairs,
        "dropped": n - len(chosen),
        "counts": counts,
        "expected_from": "endpoint" if numeric else "local model (labels agree)",
        "tolerance": {"logit": float(tolerance), "prob": float(prob_tolerance)},
        "measured_spread": kept_spread,
        "reselected_by": reselected,
        # Every spec, unless a tolerance had to grow beyond the pool's: then only the spec
        # enrolled for (a check under another would be weaker than the pool's own).
        "serves": "every spec" if len(serves) == len(_TOLERANCES_USED) else serves,
        "grown": {g: {"pool": _tol(base, g), "enrolled": _tol(new_noise, g)} for g in grown},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta = dict(sub.meta)
    sel = dict(meta["selection"]) if isinstance(meta.get("selection"), dict) else {}
    sel.update(pairs=n_pairs, method=f"enrolled ({reselected})")
    cfg = meta.get("config")
    seed_of_reach = cfg.get("seed", 0) if isinstance(cfg, dict) and isinstance(cfg.get("seed", 0), int) else 0
    meta.update(selection=sel, labels=np.argmax(z_new[chosen], axis=1).tolist(), enrollment=info,
                reach=_reach(model, sub.samples, pool.model_outputs, seed_of_reach))
    fp = dataclasses.replace(sub, expected=torch.from_numpy(expected[chosen]).float(), noise=new_noise, meta=meta,
                             margin=torch.from_numpy(top2_margin_np(z_new[chosen])).float())
    return EnrollmentReport(
        fingerprint=fp, target=names, spec=str(out_spec), rounds=rounds, batch_sizes=used_sizes,
        pool=pool_info, kept=len(chosen), kept_pairs=n_pairs, candidates=stats,
        noise={**kept_spread, "floor": new_noise.floor, "logit_tolerance": new_noise.logit_tolerance,
               "prob_tolerance": new_noise.prob_tolerance},
        queries=sent, seconds=time.perf_counter() - start)


#: The tolerances each kind of spec compares with (see :meth:`veriprint.verification.specs.OutputSpec.compare`).
_TOLERANCES_USED: dict[str, set[str]] = {"top1": {"floor"}, "topk": {"floor"}, "top1-prob": {"floor", "prob"},
                                         "probs": {"prob"}, "logits": {"logit"}}


def _tol(noise: Any, which: str) -> float:
    return float({"floor": noise.floor, "logit": noise.logit_tolerance, "prob": noise.prob_tolerance}[which])


def _short(v: Any) -> str:
    if isinstance(v, list) and len(v) > 3:
        return "[" + ", ".join(f"{float(a):.4g}" for a in v[:3]) + ", ...]"
    if isinstance(v, list):
        return "[" + ", ".join(f"{float(a):.4g}" for a in v) + "]"
    return str(v)


def _pick(model: nn.Module | None, pool: Fingerprint, units: Sequence[tuple[int, ...]],
          k: int) -> list[tuple[int, ...]]:
    """``k`` of ``units`` by reach cover (a pair reveals what either member reveals)."""
    if k <= 0:
        return []
    if model is None or k >= len(units) or not any(p.numel() for p in model.parameters()):
        return list(units[:k])
    from veriprint.coverage.reach import parameter_reach
    from veriprint.selectors.algorithms import reach_cover

    members = sorted({i for u in units for i in u})
    pos = {i: j for j, i in enumerate(members)}
    reach = parameter_reach(model, pool.samples[members], model_outputs=pool.model_outputs)
    d = reach.directed()
    rows = torch.stack([torch.stack([d[pos[i]] for i in u]).max(0).values for u in units])
    score = -torch.tensor([float(min(pool.margin[i] for i in u)) for u in units])
    sel = reach_cover(rows, reach.directed_weights, k, score=score)
    return [units[int(j)] for j in sel.indices]


def _reach(model: nn.Module | None, samples: torch.Tensor, model_outputs: Any, seed: int) -> dict[str, Any]:
    """The enrolled samples' first-order coverage (empty without a local model)."""
    if model is None or not any(p.numel() for p in model.parameters()):
        return {}
    from veriprint.coverage.reach import parameter_reach
    from veriprint.pipeline.describe import reach_meta

    return reach_meta(parameter_reach(model, samples, model_outputs=model_outputs, seed=seed))
