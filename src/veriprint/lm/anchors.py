"""A statistical anchor beside the fingerprint: Logprob Tracking, re-implemented here.

**Logprob Tracking** (LT; T. Chauvin, E. Le Merrer, F. Taïani, G. Tredan, "Log Probability
Tracking of LLM APIs", ICLR 2026, arXiv:2512.03816) watches an LLM API for changes by
sending one fixed, very short prompt (the paper's is the single letter ``"x"``) many times,
asking each time for **one** output token with its top-``k`` logprobs. Logprobs served by a
real API are not deterministic (batching with other users' requests, hardware routing), so
each answer is treated as one draw from a distribution, and two samples (a reference and a
later one) are compared by a two-sample **permutation test** whose statistic is built on
the **average logprob of each token**. The paper reports that this detects a single step
of fine-tuning, and that it is more sensitive than earlier audits (Model Equality Testing,
benchmark accuracy) at about 1,000 times lower cost.

The test here, as the paper describes it:

1. *tokens*: the union of the tokens seen in any answer (reference or target) for the prompt;
2. *left-censoring*: a token missing from one answer's top-``k`` is given that answer's
   lowest listed logprob (its true logprob is at most that);
3. *statistic*: the mean over tokens of ``|mean_ref(token) - mean_target(token)|``, the
   average absolute difference of the two samples' average logprobs; with several prompts
   the mean of their statistics (each prompt its own tokens);
4. *p-value*: ``(1 + #{permuted >= observed}) / (1 + permutations)`` over random
   reassignments of the pooled answers to the two samples (within each prompt), which is
   a valid p-value when, under "unchanged", the answers are exchangeable;
5. *decision*: CHANGED when the p-value is at most ``alpha`` (default 0.05).

Exchangeability is the test's whole premise: it holds when the reference and the target
answers are independent draws from one distribution. A deployment whose honest noise is
distributed differently from the reference's (another batch size, another kernel) is a
change to this test, which is how the paper means it (infrastructure updates are among the
changes it tracks), but not a tamper to veriprint's fingerprint, which tolerates every
serving variant its noise floor measured (:mod:`veriprint.lm.noise`). ``benchmarks/studies/lm_anchor.py``
measures both on the same model, tampers and query budget.

The other anchor of the literature, **Model Equality Testing** (I. Gao, P. Liang,
C. Guestrin, ICLR 2025, arXiv:2410.20247), is an MMD two-sample test with a Hamming
kernel over sampled completions (a median power of 77.4% over its distortions with about
10 samples per prompt); it needs sampling at a temperature above 0 and many multi-token
completions, and is not re-implemented here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from veriprint.lm.target import CompletionsTarget
from veriprint.targets.base import TargetError

__all__ = ["LogprobTrackingResult", "Observation", "first_token_logprobs", "logprob_matrix",
           "logprob_tracking_test"]

Observation = Mapping[str, float]
"""One answer: the first generated token's top-``k`` alternatives, token -> logprob."""

Samples = Sequence[Observation] | Mapping[str, Sequence[Observation]]
"""The answers to one prompt, or per prompt (the same prompts in both samples)."""

_TIE = 1e-12  # permuted statistics within this of the observed one count as >= (float summation order)


@dataclass(frozen=True)
class LogprobTrackingResult:
    """The outcome of :func:`logprob_tracking_test`.

    Attributes:
        statistic: the observed statistic (mean absolute difference of average logprobs).
        p_value: the permutation p-value, in ``[1 / (permutations + 1), 1]``.
        alpha: the level the decision was taken at.
        changed: ``p_value <= alpha``.
        prompts: prompts compared.
        reference: reference answers (all prompts together).
        target: target answers (all prompts together).
        tokens: tokens compared (the union per prompt, summed over prompts).
        permutations: random reassignments drawn.
        largest_shift: the largest absolute difference of one token's average logprob.
    """

    statistic: float
    p_value: float
    alpha: float
    changed: bool
    prompts: int
    reference: int
    target: int
    tokens: int
    permutations: int
    largest_shift: float

    @property
    def verdict(self) -> str:
        """``"CHANGED"`` or ``"UNCHANGED"``."""
        return "CHANGED" if self.changed else "UNCHANGED"


def _by_prompt(samples: Samples, what: str) -> dict[str, list[Observation]]:
    if isinstance(samples, Mapping):
        if not samples:
            raise ValueError(f"expected {what} answers for at least one prompt, got none")
        out = {}
        for prompt, obs in samples.items():
            if not isinstance(prompt, str):
                raise ValueError(f"expected {what} prompts as strings, got {type(prompt).__name__}")
            out[prompt] = _checked(obs, f"{what} answers to {prompt!r}")
        return out
    return {"": _checked(samples, f"{what} answers")}


def _checked(obs: Any, what: str) -> list[Observation]:
    if isinstance(obs, str | bytes | Mapping) or not isinstance(obs, Sequence):
        raise ValueError(f"expected {what} as a sequence of token -> logprob mappings, got {type(obs).__name__}")
    if not obs:
        raise ValueError(f"expected at least one of the {what}, got none")
    for i, o in enumerate(obs):
        if not isinstance(o, Mapping) or not o:
            raise ValueError(f"expected {what} [{i}] as a non-empty token -> logprob mapping, got {o!r}")
        for tok, v in o.items():
            if not isinstance(tok, str) or isinstance(v, bool) or not isinstance(v, int | float) \
                    or not math.isfinite(v) or v > 1e-6:
                raise ValueError(f"expected {what} [{i}] to map token strings to finite logprobs <= 0, "
                                 f"got {tok!r}: {v!r}")
    return list(obs)


def logprob_matrix(observations: Sequence[Observation], tokens: Sequence[str]) -> np.ndarray:
    """``(answers, tokens)`` float64 logprobs, a token missing from an answer's top-``k`` set
    to that answer's lowest listed logprob (LT's left-censoring)."""
    out = np.empty((len(observations), len(tokens)), dtype=np.float64)
    for i, o in enumerate(observations):
        low = min(float(v) for v in o.values())
        out[i] = [float(o.get(t, low)) for t in tokens]
    return out


def _statistics(pooled: np.ndarray, first: np.ndarray, n_first: int) -> np.ndarray:
    """LT's statistic for each row of the 0/1 matrix ``first`` (which pooled answers are the reference)."""
    total = pooled.sum(0)
    a = first @ pooled
    mean_a = a / n_first
    mean_b = (total - a) / (pooled.shape[0] - n_first)
    out: np.ndarray = np.abs(mean_a - mean_b).mean(-1)
    return out


def logprob_tracking_test(reference: Samples, target: Samples, *, alpha: float = 0.05, permutations: int = 1000,
                          seed: int = 0) -> LogprobTrackingResult:
    """Logprob Tracking's two-sample permutation test (see the module's docstring).

    Args:
        reference: the reference answers: a sequence of :data:`Observation` (one prompt) or a
            mapping prompt -> such a sequence.
        target: the answers to test, in the same shape (the same prompts).
        alpha: the level (default 0.05): CHANGED when the p-value is at most it.
        permutations: random reassignments (default 1000); at least ``1 / alpha - 1`` so
            that the test can reject at all.
        seed: seeds the permutations (default 0).

    Raises:
        ValueError: an empty sample, an answer that is not a token -> logprob mapping (or
            holds a non-finite or positive logprob), other prompts in the two samples, an
            ``alpha`` outside (0, 1), or too few permutations to reach it.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise ValueError(f"expected 0 < alpha < 1, got {alpha!r}")
    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 1:
        raise ValueError(f"expected permutations >= 1, got {permutations!r}")
    if 1 / (permutations + 1) > alpha:
        raise ValueError(f"expected at least {math.ceil(1 / alpha) - 1} permutations: with {permutations} the "
                         f"smallest p-value is {1 / (permutations + 1):.3g}, above alpha {alpha}")
    ref, tgt = _by_prompt(reference, "reference"), _by_prompt(target, "target")
    if set(ref) != set(tgt):
        raise ValueError(f"expected the same prompts in both samples, got reference {sorted(ref)} and target "
                         f"{sorted(tgt)}")
    rng = np.random.default_rng(seed)
    observed = np.zeros(1)
    permuted = np.zeros(permutations)
    n_tokens = 0
    shift = 0.0
    for prompt in sorted(ref):
        r, t = ref[prompt], tgt[prompt]
        tokens = sorted({tok for o in (*r, *t) for tok in o})
        n_tokens += len(tokens)
        pooled = np.vstack([logprob_matrix(r, tokens), logprob_matrix(t, tokens)])
        n = pooled.shape[0]
        identity = np.zeros((1, n))
        identity[0, : len(r)] = 1.0
        observed += _statistics(pooled, identity, len(r))
        shift = max(shift, float(np.abs(pooled[: len(r)].mean(0) - pooled[len(r):].mean(0)).max()))
        order = np.argsort(rng.random((permutations, n)), axis=1)
        first = np.zeros((permutations, n))
        np.put_along_axis(first, order[:, : len(r)], 1.0, axis=1)
        permuted += _statistics(pooled, first, len(r))
    stat = float(observed[0]) / len(ref)
    permuted /= len(ref)
    p = (1 + int((permuted >= stat - _TIE).sum())) / (permutations + 1)
    return LogprobTrackingResult(stat, p, float(alpha), p <= alpha, len(ref), sum(map(len, ref.values())),
                                 sum(map(len, tgt.values())), n_tokens, permutations, shift)


def first_token_logprobs(target: CompletionsTarget, prompts: Sequence[str], repeats: int, *, top_k: int = 5,
                         per_request: int = 1) -> dict[str, list[dict[str, float]]]:
    """LT's queries: each prompt sent ``repeats`` times for one token with its top-``top_k``
    logprobs; ``len(prompts) * repeats`` generated tokens in all.

    Args:
        target: anything with ``complete(prompts, max_tokens=, logprobs=)`` (the local target
            or an OpenAI-compatible one).
        prompts: the fixed prompts (LT's is ``"x"``).
        repeats: answers per prompt.
        top_k: logprobs asked per answer (default 5, what ``logprobs:5`` asks).
        per_request: copies of a prompt per request (default 1: every answer its own request,
            so that each meets the server's batching afresh).

    Returns:
        prompt -> its answers, each the first token's top-``top_k`` as token -> logprob.

    Raises:
        ValueError: no prompts, ``repeats`` or ``per_request`` below 1, ``top_k`` outside 1-20.
        TargetError: a completion without logprobs for its first token.
    """
    if not prompts or any(not isinstance(p, str) or not p for p in prompts):
        raise ValueError(f"expected one or more non-empty prompts, got {prompts!r}")
    for name, v, lo, hi in (("repeats", repeats, 1, None), ("per_request", per_request, 1, None),
                            ("top_k", top_k, 1, 20)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise ValueError(f"expected {name} >= {lo}" + (f" and <= {hi}" if hi else "") + f", got {v!r}")
    out: dict[str, list[dict[str, float]]] = {p: [] for p in prompts}
    for prompt in prompts:
        while len(out[prompt]) < repeats:
            n = min(per_request, repeats - len(out[prompt]))
            answers = list(target.complete([prompt] * n, max_tokens=1, logprobs=top_k))
            if len(answers) != n:
                raise TargetError(f"expected {n} completions, got {len(answers)}")
            for a in answers:
                tops = a.get("top_logprobs") if isinstance(a, dict) else getattr(a, "top_logprobs", None)
                if not isinstance(tops, list) or not tops or not isinstance(tops[0], dict) or not tops[0]:
                    raise TargetError(f"expected the first token's top logprobs for {prompt!r}, got {tops!r}")
                out[prompt].append({str(k): float(v) for k, v in tops[0].items()})
    return out
