"""What enrollment returns or raises: the report, each candidate's fate, the refusal (for a
classifier's pool and a language model's)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from veriprint.errors import VeriprintError
from veriprint.fingerprint import Fingerprint
from veriprint.lm.fingerprint import LmFingerprint

__all__ = ["CandidateStats", "EnrollmentError", "EnrollmentReport", "LmCandidateStats", "LmEnrollmentReport",
           "count_states"]


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


def count_states(candidates: list[Any]) -> dict[str, int]:
    """How many candidates ended in each state (``kept``, ``unstable``, ...)."""
    out: dict[str, int] = {}
    for c in candidates:
        out[c.why] = out.get(c.why, 0) + 1
    return out


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
        return count_states(self.candidates)

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


@dataclass(frozen=True)
class LmCandidateStats:
    """What enrollment saw of one pool prompt.

    Attributes:
        index: position in the pool.
        prompt: the prompt.
        answers: answers recorded (the rounds).
        texts: distinct texts answered.
        spread: largest range of a logprob over the rounds (0 without logprobs).
        stable: every repeat gave the same answer, within the tolerance.
        decided: its first token's margin clears the enrolled floor.
        kept: in the enrolled fingerprint.
        why: ``"kept"`` or why not: ``"unstable"`` (the repeats differ), ``"incomplete"``
            (fewer logprobs listed than asked, or a token the pool does not know),
            ``"inconsistent"`` (an answer does not match the enrolled expectation, e.g.
            another token at a near tie), ``"undecided"`` (within the enrolled floor of a
            tie), ``"not selected"`` (more prompts than ``keep``).
    """

    index: int
    prompt: str
    answers: int
    texts: list[str]
    spread: float
    stable: bool
    decided: bool
    kept: bool
    why: str


@dataclass(frozen=True)
class LmEnrollmentReport:
    """The enrolled LM fingerprint and what enrollment measured.

    Attributes:
        fingerprint: the enrolled fingerprint (unsigned until saved with a key).
        target: the target(s), redacted.
        spec: the LM spec enrolled for.
        rounds: rounds of queries.
        batch_sizes: the request size of each round.
        pool: pool size and its hash.
        kept: prompts kept.
        candidates: per-prompt statistics.
        noise: measured spread over the kept prompts (``logprob``, ``prob``, ``margin``)
            and the enrolled ``floor`` and ``logprob_tolerance``.
        queries: prompts sent in all.
        seconds: wall time.
    """

    fingerprint: LmFingerprint
    target: str
    spec: str
    rounds: int
    batch_sizes: list[int]
    pool: dict[str, Any]
    kept: int
    candidates: list[LmCandidateStats] = field(default_factory=list)
    noise: dict[str, float] = field(default_factory=dict)
    queries: int = 0
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """How many prompts ended in each state (``kept``, ``unstable``, ...)."""
        return count_states(self.candidates)

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
            f"enrolled: {self.kept} prompts kept of a pool of {self.pool['size']}; prompts: {counts}",
            f"target: {self.target}   spec: {self.spec}   rounds: {self.rounds} "
            f"(batch sizes {', '.join(map(str, self.batch_sizes))}), {self.queries} queries",
            f"measured spread over kept prompts: logprobs {n['logprob']:.3g}, probs {n['prob']:.3g}, "
            f"margins {n['margin']:.3g}; enrolled floor {n['floor']:.3g}, logprob tolerance "
            f"{n['logprob_tolerance']:.3g}",
        ])
