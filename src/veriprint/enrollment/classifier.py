"""Enrolling a classifier deployment: the stages of :mod:`veriprint.enrollment` in order.

1. the query rounds (:mod:`~veriprint.enrollment.rounds`), through the verifier's query loop;
2. the check that the answers agree with the local fingerprint within the declared
   tolerance (:mod:`~veriprint.enrollment.agreement`), else a refusal;
3. which candidates the deployment answers stably, and the enrolled expectation and
   noise floor over them (:mod:`~veriprint.enrollment.floor`);
4. the subset, whole pairs first (:mod:`~veriprint.enrollment.subset`);
5. the enrolled fingerprint and ``meta["enrollment"]`` (:mod:`~veriprint.enrollment.describe`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from torch import nn

from veriprint.enrollment.agreement import check_agreement, declared_noise
from veriprint.enrollment.arguments import check_int, check_number, target_list
from veriprint.enrollment.describe import enrolled_fingerprint
from veriprint.enrollment.floor import enrolled_floor, stability
from veriprint.enrollment.report import EnrollmentReport, count_states
from veriprint.enrollment.rounds import DEFAULT_BATCH_SIZES, query_rounds
from veriprint.enrollment.subset import candidate_stats, choose, refuse_empty
from veriprint.errors import ConfigError
from veriprint.fingerprint import Fingerprint
from veriprint.noise import MAX_LOGIT_NOISE
from veriprint.redact import redact
from veriprint.targets import Target, open_target
from veriprint.verification.send import closing_if_opened
from veriprint.verification.specs import OutputSpec, parse_spec

__all__ = ["enroll_classifier"]


def enroll_classifier(
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
    """Enroll a classifier deployment (see :func:`veriprint.enrollment.enroll` for the arguments)."""
    start = time.perf_counter()
    out_spec = parse_spec(spec)
    rounds = check_int("rounds", rounds, 2)
    keep = check_int("keep", keep, 1)
    sizes = [check_int("a batch size", b, 0) for b in batch_sizes]
    if not sizes:
        raise ConfigError("expected at least one batch size, got none")
    check_number("tolerance", tolerance, MAX_LOGIT_NOISE)
    check_number("prob_tolerance", prob_tolerance, 1.0)
    check_number("interval", interval, 3600.0)
    if not isinstance(pool, Fingerprint):
        raise ConfigError(f"expected the pool as a Fingerprint, got {type(pool).__name__}")
    n = len(pool)
    r = int(pool.expected.shape[1])
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

    raw_targets = target_list(target)
    with ExitStack() as opened:
        targets = [opened.enter_context(closing_if_opened(open_target(t, **target_options), t)) for t in raw_targets]
        forms = {t.output for t in targets}
        if len(forms) != 1:
            raise ConfigError(f"expected every replica to answer in the same form, got {sorted(forms)}")
        form = targets[0].output
        if not out_spec.accepts(form):
            raise ConfigError(f"spec {out_spec} needs more than this target's {form!r} answers")
        names = redact(", ".join(t.description for t in targets))
        got = query_rounds(pool, targets, rounds=rounds, sizes=sizes, seed=seed, interval=interval)

    declared = declared_noise(pool, tolerance, prob_tolerance)
    check_agreement(pool, got.answers, out_spec, form, declared, names)
    stab = stability(got.stack, out_spec, form, declared)
    enrolled = enrolled_floor(pool, got.answers, out_spec, form, declared, stab.stable, rounds)
    choice = choose(pool, enrolled.ok, keep, model)
    stats = candidate_stats(pool, choice, stab, enrolled, rounds)
    refuse_empty(choice, stats, keep, names)

    pool_info: dict[str, Any] = {"sha256": pool.sha256, "size": n, "pairs": sum(len(u) == 2 for u in pool.units())}
    chosen = choice.chosen
    fp, _ = enrolled_fingerprint(pool, choice, enrolled, spec_kind=out_spec.kind, model=model, info={
        "target": names, "spec": str(out_spec), "form": form, "rounds": rounds, "batch_sizes": got.batch_sizes,
        "replicas": len(targets), "interval_s": float(interval), "seed": seed, "pool": pool_info,
        "kept": len(chosen), "kept_pairs": choice.pairs, "dropped": n - len(chosen), "counts": count_states(stats),
        "tolerance": {"logit": float(tolerance), "prob": float(prob_tolerance)}})
    noise = enrolled.noise
    return EnrollmentReport(
        fingerprint=fp, target=names, spec=str(out_spec), rounds=rounds, batch_sizes=got.batch_sizes,
        pool=pool_info, kept=len(chosen), kept_pairs=choice.pairs, candidates=stats,
        noise={**enrolled.spread, "floor": noise.floor, "logit_tolerance": noise.logit_tolerance,
               "prob_tolerance": noise.prob_tolerance},
        queries=got.sent, seconds=time.perf_counter() - start)
