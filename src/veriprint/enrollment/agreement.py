"""Is it your model? The deployment's answers against the local fingerprint, within the declared tolerance.

Every round's answers are compared with the pool's expected outputs under the spec, with
the pool's noise floor widened by the declared tolerances (``tolerance`` in logits,
``prob_tolerance`` in probabilities). Where the target reveals values (``logits`` or
``probs``) the whole vector is compared too, every class within the tolerance, so that a
swapped model shows even where every label sits within the tolerance of a decision. Any
disagreement refuses the enrollment; so does a label-only target whose every candidate
sits within the tolerance of a decision (nothing could disagree).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from veriprint.enrollment.report import EnrollmentError
from veriprint.fingerprint import Fingerprint
from veriprint.noise import NoiseFloor
from veriprint.numerics import softmax_np
from veriprint.redact import redact
from veriprint.targets import TargetError
from veriprint.targets.base import OutputForm
from veriprint.verification.specs import OutputSpec

__all__ = ["check_agreement", "declared_noise", "short"]


def declared_noise(pool: Fingerprint, tolerance: float, prob_tolerance: float) -> NoiseFloor:
    """The pool's noise floor widened by the declared tolerances."""
    return dataclasses.replace(pool.noise, declared=max(pool.noise.declared, float(tolerance)),
                               declared_prob=max(pool.noise.declared_prob, float(prob_tolerance)))


def short(v: Any) -> str:
    """A value for a message: a long list shortened to its first three numbers."""
    if isinstance(v, list) and len(v) > 3:
        return "[" + ", ".join(f"{float(a):.4g}" for a in v[:3]) + ", ...]"
    if isinstance(v, list):
        return "[" + ", ".join(f"{float(a):.4g}" for a in v) + "]"
    return str(v)


def check_agreement(pool: Fingerprint, answers: list[np.ndarray], spec: OutputSpec, form: OutputForm,
                    declared: NoiseFloor, target: str) -> None:
    """Refuse (:class:`EnrollmentError`) unless every round's answers agree with the pool.

    Args:
        pool: the pool fingerprint.
        answers: per round, the answers in pool order.
        spec: the spec enrolled for.
        form: the form the target answers in.
        declared: the pool's floor widened by the declared tolerances (:func:`declared_noise`).
        target: the target(s), redacted, for the refusal's details.
    """
    z_local = pool.expected_logits.numpy()
    n, r = z_local.shape
    stack = np.stack(answers)
    try:
        local_cmp = [spec.compare(z_local, a, form, declared) for a in answers]
    except TargetError as e:  # e.g. fewer labels per answer than the spec needs
        raise EnrollmentError(redact(f"the target's answers cannot be compared under spec {spec}: {e}")) from e
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
            f"within the tolerance (margin floor {declared.floor:.3g}) of a decision under spec {spec}, "
            f"and its {form!r} answers reveal no values; lower the tolerance or use a pool with larger margins",
            {"pool": n, "spec": str(spec), "target": target})
    if not disagrees.any():
        return
    bad = np.flatnonzero(disagrees)

    def example(i: int) -> str:
        rnd = next((k for k, c in enumerate(local_cmp) if c.mismatch[i]), 0)
        text = f"#{i}: expected {short(local_cmp[rnd].expected[i])}, answered {short(local_cmp[rnd].observed[i])}"
        if form == "logits" and pool.model_outputs == "logits":
            text += f" (largest logit difference {float(np.abs(stack[:, i] - z_local[i]).max()):.3g})"
        return text

    examples = "; ".join(example(int(i)) for i in bad[:3])
    raise EnrollmentError(
        f"the endpoint disagrees with the local fingerprint beyond the declared tolerance (margin "
        f"floor {declared.floor:.3g}, logits {declared.logit_tolerance:.3g}, probs "
        f"{declared.prob_tolerance:.3g}) on {len(bad)} of {n} candidates under spec {spec}; "
        f"it may not serve this model (examples {examples})",
        {"disagreeing": bad.tolist(), "pool": n, "spec": str(spec), "target": target})
