"""What an LM API reveals and how each answer is compared with the intact model's.

==================  ======================================================================
``top1-token[:N]``  greedy decoding at temperature 0: the first ``N`` generated tokens
                    (default: all the fingerprint stores, 1 to 4), compared exactly
``logprobs:K``      the same tokens, and the top-``K`` logprobs of each (OpenAI format:
                    token strings and logprobs), equal within the logprob tolerance
``text``            the generated text, compared exactly
==================  ======================================================================

No comparison fails on float noise. A step whose expected top-1 vs top-2 margin is below
the noise floor accepts any token within the floor of the top one; the tokens after it
follow another prefix, so the comparison stops there and the sample is marked ambiguous.
For ``logprobs:K`` a token within the tolerance of the K-th place may or may not be listed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from veriprint.errors import ConfigError
from veriprint.noise import NoiseFloor

__all__ = ["LmComparison", "LmSpec", "parse_lm_spec"]

Kind = Literal["top1-token", "logprobs", "text"]
_PATTERN = re.compile(r"^(top1-token|logprobs|text)(?::(\d+))?$")
MAX_LOGPROBS = 9
"""Largest ``K`` of ``logprobs:K``: a fingerprint stores the top 10 per step, one more than K
so that the K-th place's boundary is known."""


@dataclass(frozen=True)
class LmComparison:
    """One sample's outcome.

    Attributes:
        mismatch: the answer cannot come from the intact model.
        ambiguous: a step within noise of a tie was met, so more than one answer was accepted.
        expected: the intact model's answer under the spec.
        observed: what came back under the spec.
        why: for a mismatch, the first difference.
    """

    mismatch: bool
    ambiguous: bool
    expected: Any
    observed: Any
    why: str = ""


@dataclass(frozen=True)
class ExpectedAnswer:
    """What the fingerprint holds for one prompt (see :class:`veriprint.lm.fingerprint.LmFingerprint`)."""

    tokens: list[str]
    text: str
    margins: list[float]
    top_tokens: list[list[str]]
    top_logprobs: list[list[float]]


@dataclass(frozen=True)
class LmSpec:
    """A parsed LM output spec. Build with :func:`parse_lm_spec`."""

    kind: Kind
    n: int | None = None

    def __str__(self) -> str:
        return self.kind if self.n is None else f"{self.kind}:{self.n}"

    @property
    def logprobs(self) -> int | None:
        """The ``logprobs`` to ask the API for (``None``: none)."""
        return self.n if self.kind == "logprobs" else None

    def tokens_compared(self, stored: int) -> int:
        """How many generated tokens are compared of the ``stored`` ones."""
        if self.kind == "top1-token" and self.n is not None:
            return min(self.n, stored)
        return stored

    def compare(self, exp: ExpectedAnswer, text: str, tokens: list[str], top_logprobs: list[dict[str, float]] | None,
                noise: NoiseFloor) -> LmComparison:
        """Compare one completion with the intact model's answer."""
        floor = noise.floor
        n = self.tokens_compared(len(exp.tokens))
        if self.kind == "text":
            if text == exp.text:
                return LmComparison(False, False, exp.text, text)
            undecided = [t for t in range(len(exp.tokens)) if exp.margins[t] < floor]
            if undecided and text.startswith("".join(exp.tokens[: undecided[0]])):
                return LmComparison(False, True, exp.text, text)
            return LmComparison(True, False, exp.text, text, f"text {text!r} is not {exp.text!r}")
        if not tokens and text:  # a server that gives no per-token detail: read the tokens off the text
            tokens = _tokens_from_text(text, exp.tokens[:n], whole=n == len(exp.tokens))
        ambiguous = False
        checked = 0
        for t in range(n):
            near = {s for s, lp in zip(exp.top_tokens[t], exp.top_logprobs[t], strict=True)
                    if exp.top_logprobs[t][0] - lp < floor}
            decided = exp.margins[t] >= floor
            got = tokens[t] if t < len(tokens) else None
            if got == exp.tokens[t]:
                checked = t + 1
                continue
            if not decided and (got is None or got in near):
                ambiguous = True
                break
            what = "no token" if got is None else repr(got)
            return LmComparison(True, False, exp.tokens[:n], tokens[:n], f"token {t}: {what}, expected {exp.tokens[t]!r}")
        if self.kind == "top1-token":
            return LmComparison(False, ambiguous, exp.tokens[:n], tokens[:n])
        assert self.n is not None
        if top_logprobs is None or len(top_logprobs) < checked:
            got_n = 0 if top_logprobs is None else len(top_logprobs)
            raise ValueError(f"expected top logprobs for {checked} tokens, got {got_n}")
        tol = noise.logit_tolerance
        for t in range(checked):
            why, amb = _logprobs_step(self.n, exp.top_tokens[t], exp.top_logprobs[t], top_logprobs[t], tol)
            if why:
                return LmComparison(True, False, _expected_tops(exp, self.n, checked), top_logprobs[:checked],
                                    f"token {t}: {why}")
            ambiguous = ambiguous or amb
        return LmComparison(False, ambiguous, _expected_tops(exp, self.n, checked), top_logprobs[:checked])


def _tokens_from_text(text: str, expected: list[str], *, whole: bool) -> list[str]:
    """The expected tokens that ``text`` starts with, in order, then the rest of the text as one
    token (``whole``: the text must end with the last expected token)."""
    out: list[str] = []
    pos = 0
    for tok in expected:
        if not text.startswith(tok, pos):
            break
        out.append(tok)
        pos += len(tok)
    if pos < len(text) and (len(out) < len(expected) or whole):
        if len(out) == len(expected):
            out[-1] = out[-1] + text[pos:]
        else:
            out.append(text[pos:])
    return out


def _expected_tops(exp: ExpectedAnswer, k: int, steps: int) -> list[dict[str, float]]:
    out = []
    for t in range(steps):
        d: dict[str, float] = {}
        for s, lp in zip(exp.top_tokens[t][:k], exp.top_logprobs[t][:k], strict=True):
            d.setdefault(s, lp)
        out.append(d)
    return out


def _logprobs_step(k: int, tokens: list[str], logprobs: list[float], observed: dict[str, float],
                   tol: float) -> tuple[str, bool]:
    """The first difference of one step's top-K logprobs ("" when none). A token within the
    tolerance of the K-th place may or may not be listed; a listed one must match its logprob.
    The second value is reserved (always False): such a step still decides the rest."""
    best: dict[str, float] = {}
    for s, lp in zip(tokens, logprobs, strict=True):
        best.setdefault(s, lp)
    bound = logprobs[k] if k < len(logprobs) else -math.inf  # the best logprob outside the top K
    last = logprobs[-1]
    for s, lp in best.items():
        if lp - bound > tol and s not in observed:  # clearly inside the top K: must be listed
            return f"{s!r} (logprob {lp:.6g}) is missing from the top {k}", False
    for s, v in observed.items():
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v > 1e-9:
            return f"{s!r} has logprob {v!r}, expected a finite number <= 0", False
        if s in best:
            if abs(v - best[s]) > tol:
                return f"{s!r} has logprob {v:.6g}, expected {best[s]:.6g} (tolerance {tol:.3g})", False
        elif v > last + tol:
            return f"{s!r} (logprob {v:.6g}) is not among the intact model's top {len(tokens)}", False
    if len(observed) > k:
        return f"expected at most {k} alternatives, got {len(observed)}", False
    return "", False


def parse_lm_spec(text: str | LmSpec) -> LmSpec:
    """Parse ``top1-token``, ``top1-token:N`` (1-4), ``logprobs:K`` (1-9) or ``text``."""
    if isinstance(text, LmSpec):
        return text
    if not isinstance(text, str):
        raise ConfigError(f"expected an LM output spec such as 'top1-token', 'logprobs:5' or 'text', got "
                          f"{type(text).__name__} {text!r}")
    m = _PATTERN.match(text.strip())
    if not m:
        raise ConfigError(f"unknown LM output spec {text!r}: expected top1-token, top1-token:N, logprobs:K or text")
    kind, num = m.group(1), m.group(2)
    if kind == "text":
        if num is not None:
            raise ConfigError(f"spec text takes no number: expected 'text', got {text!r}")
        return LmSpec("text")
    if kind == "logprobs":
        if num is None or not 1 <= int(num) <= MAX_LOGPROBS:
            raise ConfigError(f"expected logprobs:K with 1 <= K <= {MAX_LOGPROBS}, got {text!r}")
        return LmSpec("logprobs", int(num))
    if num is not None and not 1 <= int(num) <= 4:
        raise ConfigError(f"expected top1-token:N with 1 <= N <= 4, got {text!r}")
    return LmSpec("top1-token", None if num is None else int(num))
