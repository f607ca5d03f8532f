"""Output specifications (Section 3.4, Table 4): what an API reveals and how it is compared.

====================  =====================================================================
``logits``            the raw logit vector; equal within the logit tolerance
``probs``             the full probability vector; equal within the probability tolerance
``probs:N``           probabilities rounded to ``N`` decimals; equal after rounding
``topk:K``            the ``K`` best labels in order
``top1``              the top-1 label (the paper's hardest case)
``top1-prob:N``       the top-1 label and its probability rounded to ``N`` decimals
====================  =====================================================================

No comparison is allowed to fail on float noise. Where the expected value sits within the
noise floor of a decision (two labels nearly tied, a probability within tolerance of a
rounding boundary), both outcomes are accepted and the sample is marked ambiguous.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from veriprint.errors import ConfigError
from veriprint.noise import NoiseFloor
from veriprint.numerics import softmax_np as _softmax
from veriprint.targets.base import OutputForm, TargetError

__all__ = ["Comparison", "OutputSpec", "parse_spec"]

Kind = Literal["logits", "probs", "topk", "top1", "top1-prob"]
_PATTERN = re.compile(r"^(logits|probs|top1|topk|top1-prob)(?::(\d+))?$")


@dataclass(frozen=True)
class Comparison:
    """Per-sample outcome of comparing expected and observed outputs.

    Attributes:
        mismatch: bool ``(N,)``: the observation cannot come from the intact model.
        ambiguous: bool ``(N,)``: the expected value sits within noise of a decision,
            so more than one observation was accepted.
        expected: what the intact model's answer looks like under the spec, per sample.
        observed: what came back, per sample, under the spec.
    """

    mismatch: Any
    ambiguous: Any
    expected: list[Any]
    observed: list[Any]


def _rounded_match(obs: np.ndarray, exp: np.ndarray, decimals: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Whether rounded ``obs`` is what the intact ``exp`` rounds to, allowing for noise."""
    lo = np.round(exp - tol, decimals)
    hi = np.round(exp + tol, decimals)
    unit = 10.0 ** -decimals
    ok = (np.abs(obs - lo) < unit * 1e-3) | (np.abs(obs - hi) < unit * 1e-3)
    return ok, lo != hi


@dataclass(frozen=True)
class OutputSpec:
    """A parsed output specification. Build with :func:`parse_spec`."""

    kind: Kind
    k: int = 1
    decimals: int | None = None

    def __str__(self) -> str:
        if self.kind == "topk":
            return f"topk:{self.k}"
        if self.decimals is not None:
            return f"{self.kind}:{self.decimals}"
        return self.kind

    def accepts(self, form: OutputForm) -> bool:
        """Whether a target answering in ``form`` reveals enough for this spec."""
        if form in ("logits",):
            return True
        if form == "probs":
            return self.kind != "logits"
        if form == "labels":
            return self.kind == "top1"
        if form == "topk":
            return self.kind == "top1" or self.kind == "topk"
        if form == "top1-prob":
            return self.kind in ("top1", "top1-prob")
        return False

    def compare(self, expected_logits: np.ndarray, observed: np.ndarray, form: OutputForm, noise: NoiseFloor) -> Comparison:
        """Compare a target's answers with the intact model's logits.

        Args:
            expected_logits: float64 ``(N, r)`` logits of the intact model (``log p`` for
                a softmax-ending model).
            observed: the target's answers, validated, in ``form``.
            form: the target's output form.
            noise: the fingerprint's noise floor.
        """
        if not self.accepts(form):
            raise ConfigError(f"spec {self} needs more than a target answering {form!r} reveals")
        z = np.asarray(expected_logits, dtype=np.float64)
        n, r = z.shape
        order = np.argsort(-z, axis=1, kind="stable")
        zs = np.take_along_axis(z, order, axis=1)
        gaps = zs[:, :-1] - zs[:, 1:] if r > 1 else np.full((n, 1), np.inf)
        floor = noise.floor
        p_exp = _softmax(z)
        if self.kind in ("top1", "topk"):
            k = 1 if self.kind == "top1" else self.k
            if form in ("labels",):
                obs = observed.reshape(n, 1).astype(np.int64)
            elif form == "topk":
                if observed.shape[1] < k:
                    raise TargetError(f"spec {self} needs {k} labels per sample, the target returned {observed.shape[1]}")
                obs = observed[:, :k].astype(np.int64)
            elif form == "top1-prob":
                obs = observed[:, :1].astype(np.int64)
            else:
                obs = np.argsort(-observed, axis=1, kind="stable")[:, :k]
            exp = order[:, :k]
            # Position i is decided when the gaps on both sides of it clear the floor.
            left = np.concatenate([np.full((n, 1), np.inf), gaps[:, : k - 1]], axis=1)
            right = gaps[:, :k] if gaps.shape[1] >= k else np.concatenate(
                [gaps, np.full((n, k - gaps.shape[1]), np.inf)], axis=1)
            decided = (left >= floor) & (right >= floor)
            mismatch = ((obs != exp) & decided).any(axis=1)
            ambiguous = ~decided.all(axis=1)
            return Comparison(mismatch, ambiguous, exp.tolist(), obs.tolist())
        if self.kind == "logits":
            obs = observed.astype(np.float64)
            diff = np.abs(obs - z).max(axis=1)
            return Comparison(diff > noise.logit_tolerance, np.zeros(n, dtype=bool), z.tolist(), obs.tolist())
        tol = noise.prob_tolerance
        if self.kind == "top1-prob":
            if form == "top1-prob":
                lab = observed[:, 0].astype(np.int64)
                prob = observed[:, 1].astype(np.float64)
            else:
                p_obs = observed if form == "probs" else _softmax(observed.astype(np.float64))
                lab = np.argmax(p_obs, axis=1)
                prob = p_obs[np.arange(n), lab]
                if self.decimals is not None:
                    prob = np.round(prob, self.decimals)
            lab_exp = order[:, 0]
            decided = gaps[:, 0] >= floor
            p_top = p_exp[np.arange(n), lab_exp]
            if self.decimals is None:
                ok_p, amb_p = np.abs(prob - p_top) <= tol, np.zeros(n, dtype=bool)
            else:
                ok_p, amb_p = _rounded_match(prob, p_top, self.decimals, tol)
            mismatch = ((lab != lab_exp) & decided) | ((lab == lab_exp) & ~ok_p)
            exp_rows = [[float(a), float(b)] for a, b in zip(lab_exp, p_top, strict=True)]
            obs_rows = [[float(a), float(b)] for a, b in zip(lab, prob, strict=True)]
            return Comparison(mismatch, ~decided | amb_p, exp_rows, obs_rows)
        # probs, probs:N
        p_obs = observed.astype(np.float64) if form == "probs" else _softmax(observed.astype(np.float64))
        if self.decimals is None:
            mismatch = (np.abs(p_obs - p_exp) > tol).any(axis=1)
            return Comparison(mismatch, np.zeros(n, dtype=bool), p_exp.tolist(), p_obs.tolist())
        if form != "probs":
            p_obs = np.round(p_obs, self.decimals)
        ok, amb = _rounded_match(p_obs, p_exp, self.decimals, tol)
        return Comparison(~ok.all(axis=1), amb.any(axis=1), np.round(p_exp, self.decimals).tolist(), p_obs.tolist())


def parse_spec(text: str | OutputSpec) -> OutputSpec:
    """Parse ``logits``, ``probs``, ``probs:N``, ``topk:K``, ``top1`` or ``top1-prob:N``."""
    if isinstance(text, OutputSpec):
        return text
    if not isinstance(text, str):
        raise ConfigError(f"expected an output spec such as 'top1', 'topk:3' or 'probs:4', "
                          f"got {type(text).__name__} {text!r}")
    m = _PATTERN.match(text.strip())
    if not m:
        raise ConfigError(
            f"unknown output spec {text!r}: expected one of logits, probs, probs:N, topk:K, top1 or top1-prob:N"
        )
    kind, num = m.group(1), m.group(2)
    if kind == "topk":
        if num is None or int(num) < 1:
            raise ConfigError(f"expected topk:K with K >= 1, got {text!r}")
        return OutputSpec("topk", k=int(num))
    if kind in ("logits", "top1") and num is not None:
        raise ConfigError(f"spec {kind} takes no number: expected {kind!r}, got {text!r}")
    if num is not None and not 0 <= int(num) <= 15:
        raise ConfigError(f"expected 0 <= decimals <= 15, got {text!r}")
    return OutputSpec(kind, decimals=None if num is None else int(num))  # type: ignore[arg-type]
