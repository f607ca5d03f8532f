"""What the deployment answers stably, and the enrolled expectation and noise floor.

A candidate is **stable** when every repeat gave the same answer under the spec (labels
for ``top1``/``topk``) and its numeric answers (logits, probabilities) spread by no more
than the declared tolerance. Where the target reveals values, the enrolled expected
outputs are the endpoint's own (the element-wise median over the rounds; probabilities
of a logit model stored as log p); for label-only targets the local expected logits stay
(the labels agree with them by construction).

The enrolled noise floor stays the pool's where the spread measured over the kept
candidates fits inside the pool's own tolerances (each of the logit tolerance, the margin
floor and the probability tolerance on its own): that is noise the pool was made to
absorb, and multiplying it by the safety factor would widen the floor beyond anything
measured (and weaken every label check). Only a tolerance the measured spread exceeds
grows. For label-only targets the declared tolerance is carried in the floor.

A candidate is then **consistent** when every answer seen matches the enrolled
expectation under the enrolled floor (the enrolled fingerprint would have said INTACT on
each round) and **decided** when it is outside the enrolled floor of a decision. The
floor depends on the kept set and the kept set on the floor: :func:`enrolled_floor` makes
a few passes, the last one only removing candidates (the floor then covers a superset of
the kept).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from veriprint.enrollment.report import EnrollmentError
from veriprint.fingerprint import Fingerprint
from veriprint.noise import MAX_LOGIT_NOISE, NoiseFloor, as_logits
from veriprint.numerics import softmax_np, top2_margin_np
from veriprint.targets.base import OutputForm
from veriprint.verification.specs import OutputSpec

__all__ = ["Enrolled", "Stability", "enrolled_floor", "stability"]


@dataclass(frozen=True)
class Stability:
    """How each candidate's repeats agree.

    Attributes:
        stable: ``(n,)`` every repeat gave the same answer, within the tolerance.
        spread: ``(n,)`` largest range of a numeric answer over the rounds (0 for labels).
        labels: ``(rounds, n, k)`` the labels answered, best first.
    """

    stable: np.ndarray
    spread: np.ndarray
    labels: np.ndarray


def stability(stack: np.ndarray, spec: OutputSpec, form: OutputForm, declared: NoiseFloor) -> Stability:
    """Which candidates the deployment answered the same way every round (``stack``:
    ``(rounds, n, ...)``)."""
    rounds, n = stack.shape[:2]
    if form in ("logits", "probs"):
        labels = np.argsort(-stack, axis=2, kind="stable")
        spread = (stack.max(axis=0) - stack.min(axis=0)).max(axis=1)
        limit = declared.logit_tolerance if form == "logits" else declared.prob_tolerance
    else:
        labels = stack.astype(np.int64).reshape(rounds, n, -1)
        spread = np.zeros(n)
        limit = math.inf
    stable = spread <= limit
    if spec.kind in ("top1", "topk", "top1-prob"):
        k_lab = spec.k if spec.kind == "topk" else 1
        stable &= (labels[:, :, :k_lab] == labels[:1, :, :k_lab]).all(axis=(0, 2))
    return Stability(stable, spread, labels)


@dataclass(frozen=True)
class Enrolled:
    """The enrolled expectation and floor, and which candidates they keep.

    Attributes:
        expected: ``(n, r)`` the enrolled expected outputs of every candidate (float64 of
            the float32 values stored).
        logits: ``(n, r)`` the same as logits.
        noise: the enrolled noise floor.
        consistent: ``(n,)`` every answer matches the enrolled expectation.
        decided: ``(n,)`` outside the enrolled floor of a decision.
        ok: ``(n,)`` stable, consistent and decided.
        spread: the spread measured over the kept candidates (``logit``, ``prob``, ``margin``).
        numeric: the target revealed values (the expectation is the endpoint's own).
    """

    expected: np.ndarray
    logits: np.ndarray
    noise: NoiseFloor
    consistent: np.ndarray
    decided: np.ndarray
    ok: np.ndarray
    spread: dict[str, float]
    numeric: bool


def _median_answers(answers: np.ndarray, form: str, model_outputs: str) -> np.ndarray:
    """The enrolled expected outputs from numeric answers ``(rounds, n, r)``."""
    med: np.ndarray = np.asarray(np.median(answers, axis=0), dtype=np.float64)
    out: np.ndarray = med
    if form == "logits" and model_outputs == "probs":  # a softmax model whose endpoint answers logits
        out = softmax_np(med)
    elif form == "probs" and model_outputs == "logits":  # stored as log p: the same softmax
        out = np.log(np.clip(med, 1e-30, 1.0))
    return out


def enrolled_floor(pool: Fingerprint, answers: list[np.ndarray], spec: OutputSpec, form: OutputForm,
                   declared: NoiseFloor, stable: np.ndarray, rounds: int) -> Enrolled:
    """The enrolled expectation, the floor over the kept candidates, and which are kept.

    Raises:
        EnrollmentError: the answers spread by more than any floor can hold.
    """
    stack = np.stack(answers)
    r = int(pool.expected.shape[1])
    numeric = form in ("logits", "probs")
    if numeric:
        # as stored (float32), so that every check below sees what verification will
        expected = _median_answers(stack, form, pool.model_outputs).astype(np.float32).astype(np.float64)
        z_new = as_logits(torch.from_numpy(expected), pool.model_outputs).numpy()
    else:
        expected = pool.expected.double().numpy()
        z_new = pool.expected_logits.numpy()

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

    n = len(stable)
    ok = stable.copy()
    new_noise = pool.noise
    decided = np.ones(n, dtype=bool)
    consistent = np.ones(n, dtype=bool)
    lg = pr = mg = 0.0
    for attempt in range(3):
        lg, pr, mg = measured(ok)
        if max(lg, mg) > MAX_LOGIT_NOISE:
            raise EnrollmentError(f"the endpoint's answers spread by {max(lg, mg):.3g} logits over the "
                                  f"rounds: more than any floor can hold ({MAX_LOGIT_NOISE:g})")
        base = pool.noise
        # What the pool's floor already holds stays as it is (see the module docstring):
        # only a spread beyond the pool's tolerance moves the floor.
        new_noise = dataclasses.replace(
            base, logit=base.logit if lg <= base.logit_tolerance else max(base.logit, lg),
            prob=base.prob if pr <= base.prob_tolerance else min(1.0, max(base.prob, pr)),
            margin=base.margin if mg <= base.floor else max(base.margin, mg),
            variants=(*base.variants, f"enrolled:{rounds} rounds"),
            declared=base.declared if numeric else declared.declared,
            declared_prob=base.declared_prob if numeric else declared.declared_prob)
        cmps = [spec.compare(z_new, a, form, new_noise) for a in answers]
        consistent = ~np.any([c.mismatch for c in cmps], axis=0)
        decided = ~cmps[0].ambiguous
        nxt = stable & consistent & decided
        if np.array_equal(nxt, ok):
            break
        ok = nxt & ok if attempt == 2 else nxt
    ok = ok & stable & consistent & decided
    return Enrolled(expected, z_new, new_noise, consistent, decided, ok, {"logit": lg, "prob": pr, "margin": mg},
                    numeric)
