"""Verifying an LM: send the fingerprint's prompts, compare the answers, give a verdict.

The verdict rules are :mod:`veriprint.verification.verify`'s:

* **INTACT**: every prompt was sent, every answer was well formed and is what the intact
  model gives (within the noise floor), and at least one decided something;
* **TAMPERED**: at least one well-formed answer cannot come from the intact model;
* **INCONCLUSIVE**: anything else (the target failed, answered malformed or too few
  completions before a mismatch was seen, or every prompt sat within noise of a tie).

One path for every target: anything with ``complete(prompts, max_tokens=, logprobs=)``
(:class:`veriprint.lm.target.LocalCompletions`, or the OpenAI-compatible targets of
``veriprint.targets.openai``), each prompt sent exactly once by :func:`complete_once`, the
query loop LM enrollment (:mod:`veriprint.enrollment.lm`) shares.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from veriprint.errors import ConfigError
from veriprint.lm.fingerprint import LmFingerprint
from veriprint.lm.specs import LmSpec, parse_lm_spec
from veriprint.lm.target import CompletionsTarget
from veriprint.redact import redact
from veriprint.targets.base import TargetError
from veriprint.verification.send import Failure
from veriprint.verification.verify import EXIT_CODES, Verdict, check_enrolled_spec, merged_verdict

__all__ = ["LmAnswer", "LmAnswers", "LmSampleResult", "LmVerificationReport", "complete_once", "merge_lm_reports",
           "open_lm_target", "verify_lm"]


@dataclass(frozen=True)
class LmSampleResult:
    """One prompt's comparison (``match`` is None when it was not compared)."""

    index: int
    prompt: str
    expected: Any
    observed: Any
    match: bool | None
    ambiguous: bool = False
    why: str = ""


@dataclass(frozen=True)
class LmVerificationReport:
    """The verdict and everything behind it (the fields of :class:`veriprint.verification.verify.VerificationReport`
    that apply to an LM)."""

    verdict: Verdict
    reason: str
    spec: str
    target: str
    queries: int
    compared: int
    mismatches: int
    ambiguous: int
    tolerance: dict[str, float]
    fingerprint: dict[str, Any]
    samples: list[LmSampleResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        first = next((s for s in self.samples if s.match is False), None)
        lines = [
            f"verdict: {self.verdict}  ({self.reason})",
            f"target: {self.target}   spec: {self.spec}",
            f"queries: {self.queries} prompts, compared {self.compared}, mismatches {self.mismatches}, "
            f"ambiguous {self.ambiguous}",
            f"tolerance: margin floor {self.tolerance['floor']:.3g}, logprobs {self.tolerance['logprob']:.3g}",
        ]
        if first is not None:
            lines.append(f"first mismatch: prompt {first.index} {first.prompt!r}: {first.why}")
        return "\n".join(lines)


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _checked_completion(c: Any, i: int, want_logprobs: bool) -> tuple[str, list[str], list[dict[str, float]] | None]:
    """A completion's parts, or :class:`TargetError` naming what is wrong with it."""
    text, tokens, tops = _field(c, "text"), _field(c, "tokens"), _field(c, "top_logprobs")
    if not isinstance(text, str):
        raise TargetError(f"completion {i}: expected text as a string, got {type(text).__name__}")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise TargetError(f"completion {i}: expected tokens as a list of strings, got {type(tokens).__name__}")
    if want_logprobs:
        if not isinstance(tops, list) or not all(isinstance(d, dict) for d in tops):
            raise TargetError(f"completion {i}: expected top logprobs per token (a list of objects), got "
                              f"{type(tops).__name__}")
        for d in tops:
            for k, v in d.items():
                if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int | float) \
                        or not math.isfinite(v):
                    raise TargetError(f"completion {i}: expected token -> finite logprob, got {k!r}: {v!r}")
    return text, tokens, tops


@dataclass(frozen=True)
class LmAnswer:
    """One completion, checked: its text, tokens and (when asked) top logprobs per token."""

    text: str
    tokens: list[str]
    top_logprobs: list[dict[str, float]] | None


@dataclass(frozen=True)
class LmAnswers:
    """What one pass over the prompts brought back.

    Attributes:
        answers: one per prompt, in the prompts' order (``None``: not answered).
        sent: prompts sent, the failed request included.
        failure: where the target failed (``None``: every request was answered).
    """

    answers: list[LmAnswer | None]
    sent: int
    failure: Failure | None = None


def complete_once(target: CompletionsTarget, prompts: Sequence[str], *, max_tokens: int, logprobs: int | None,
                  batch: int, order: Sequence[int] | None = None,
                  check: Callable[[int, LmAnswer], None] | None = None) -> LmAnswers:
    """Send every prompt once, in ``order`` and requests of ``batch``, and check each completion.

    The language-model side of :func:`veriprint.verification.send.send_once`: verification
    runs it once, enrollment once per round. Each completion is held to the completions
    format (text, tokens, finite top logprobs when asked); ``check`` then sees it in turn
    (verification compares it there), and a :class:`TargetError` or ``ValueError`` it raises
    fails the request like a malformed answer. The pass stops at the first request that
    fails; the answers before it are kept.
    """
    n = len(prompts)
    idx_all = list(range(n)) if order is None else [int(i) for i in order]
    out: list[LmAnswer | None] = [None] * n
    sent = 0
    for lo in range(0, n, batch):
        idx = idx_all[lo: lo + batch]
        sent += len(idx)
        try:
            got = list(target.complete([prompts[i] for i in idx], max_tokens=max_tokens, logprobs=logprobs))
            if len(got) != len(idx):
                raise TargetError(f"expected {len(idx)} completions, got {len(got)}")
            for i, a in zip(idx, got, strict=True):
                answer = LmAnswer(*_checked_completion(a, i, logprobs is not None))
                if check is not None:
                    try:
                        check(i, answer)
                    except ValueError as e:
                        raise TargetError(f"completion {i}: {e}") from None
                out[i] = answer
        except Exception as e:  # refused answers and a target's own bugs alike: the caller decides
            return LmAnswers(out, sent, Failure(lo, lo + len(idx) - 1, e))
    return LmAnswers(out, sent)


def verify_lm(fingerprint: LmFingerprint | str | os.PathLike[str], target: CompletionsTarget, *,
              spec: str | LmSpec = "top1-token", pubkey: str | os.PathLike[str] | None = None,
              max_batch: int | None = None) -> LmVerificationReport:
    """Check an LM target against an LM fingerprint.

    Args:
        fingerprint: an :class:`LmFingerprint` or the path of its ``.vpf`` file.
        target: anything with ``complete(prompts, max_tokens=, logprobs=)`` and a ``description``.
        spec: ``top1-token`` (default), ``top1-token:N``, ``logprobs:K`` or ``text``.
        pubkey: Ed25519 public key the file's signature must verify with.
        max_batch: most prompts per request (default: all at once).

    Returns:
        An :class:`LmVerificationReport`; errors of the target become INCONCLUSIVE.

    Raises:
        ConfigError: bad arguments, a ``logprobs:K`` with ``K`` not below the logprobs the file
            stores per token, or a spec an enrolled file does not serve.
    """
    start = time.perf_counter()
    out_spec = parse_lm_spec(spec)
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ConfigError(f"expected max_batch >= 1 (prompts per request) or None, got {max_batch!r}")
    fp = fingerprint if isinstance(fingerprint, LmFingerprint) else LmFingerprint.load(fingerprint, pubkey=pubkey)
    stored = int(fp.tensors["top_ids"].shape[2])
    if out_spec.logprobs is not None and out_spec.logprobs >= stored:
        raise ConfigError(f"expected logprobs:K with K below the {stored} logprobs per token this fingerprint "
                          f"stores (the K-th place's boundary needs one more), got {out_spec}")
    check_enrolled_spec(fp, out_spec)
    noise = fp.noise
    tolerance = {"floor": noise.floor, "logprob": noise.logit_tolerance}
    info = {"sha256": fp.sha256, "signature": fp.signature, "model_hash": fp.meta.get("model_hash", ""),
            "tokenizer_sha256": fp.meta.get("tokenizer_sha256", "")}
    name = str(getattr(target, "description", type(target).__name__))
    n = len(fp)
    prompts = fp.prompts
    results: list[LmSampleResult] = []
    counts = {"mismatch": 0, "ambiguous": 0}

    def compare(i: int, a: LmAnswer) -> None:
        cmp = out_spec.compare(fp.expected(i), a.text, a.tokens, a.top_logprobs, noise)
        counts["mismatch"] += cmp.mismatch
        counts["ambiguous"] += cmp.ambiguous
        results.append(LmSampleResult(i, prompts[i], cmp.expected, cmp.observed, not cmp.mismatch, cmp.ambiguous,
                                      cmp.why))

    got = complete_once(target, prompts, max_tokens=out_spec.tokens_compared(fp.max_tokens),
                        logprobs=out_spec.logprobs, batch=max_batch or n, check=compare)
    sent, mism, amb = got.sent, counts["mismatch"], counts["ambiguous"]
    error: str | None = None
    if got.failure is not None:
        f = got.failure
        error = (f"target failed on prompts {f.first}..{f.last}: {f.detail}" if f.own_bug
                 else f"target answer for prompts {f.first}..{f.last}: {f.detail}")
    compared = len(results)
    for i in range(compared, n):
        results.append(LmSampleResult(i, prompts[i], fp.meta["tokens"][i], None, None))

    def report(verdict: Verdict, reason: str) -> LmVerificationReport:
        return LmVerificationReport(verdict, redact(reason), str(out_spec), redact(name), sent, compared, mism, amb,
                                    tolerance, info, results, time.perf_counter() - start)

    if mism:
        why = f"{mism} of {compared} compared prompts differ from the intact model"
        return report("TAMPERED", why + (f" (and the target then failed: {error})" if error else ""))
    if error or compared < n:
        return report("INCONCLUSIVE", error or f"only {compared} of {n} prompts were compared")
    if amb == compared:
        return report("INCONCLUSIVE", f"every one of the {n} prompts sits within the noise floor ({noise.floor:.3g}) "
                      f"of a tie, so any answer matches: this fingerprint cannot tell under spec {out_spec}")
    within = f"; {amb} within noise of a tie, accepted either way" if amb else ""
    return report("INTACT", f"all {n} prompts match the intact model{within}")


def merge_lm_reports(parts: list[tuple[LmVerificationReport, list[int]]]) -> LmVerificationReport:
    """One report for a check sent as several requests, by the rules of one request (those of
    :func:`veriprint.verification.verify.merge_reports`).

    Args:
        parts: each request's report with the positions (in the whole check) of the prompts
            it carried, in the order of its ``samples``.

    TAMPERED when any request saw a mismatch; INCONCLUSIVE when any request could not
    compare all its prompts, or every prompt of the check was within noise of a tie; INTACT
    only when every prompt of every request was compared and matched.
    """
    if not parts:
        raise ConfigError("expected the reports of at least one request, got none")
    first = parts[0][0]
    n = sum(len(idx) for _, idx in parts)
    samples: list[LmSampleResult | None] = [None] * n
    for rep, idx in parts:
        if len(rep.samples) != len(idx):
            raise ConfigError(f"expected a report of {len(idx)} prompts, got {len(rep.samples)}")
        for s, i in zip(rep.samples, idx, strict=True):
            samples[i] = LmSampleResult(i, s.prompt, s.expected, s.observed, s.match, s.ambiguous, s.why)
    if any(s is None for s in samples):
        raise ConfigError("expected the requests' positions to cover the check once each")
    reps = [r for r, _ in parts]
    compared, mism, amb = (sum(getattr(r, f) for r in reps) for f in ("compared", "mismatches", "ambiguous"))
    verdict, reason = merged_verdict(reps, [len(idx) for _, idx in parts], floor=first.tolerance["floor"],
                                     spec=str(first.spec), unit="prompts", edge="tie")
    return LmVerificationReport(verdict, redact(reason), first.spec, first.target, sum(r.queries for r in reps),
                                compared, mism, amb, first.tolerance, first.fingerprint,
                                [s for s in samples if s is not None], sum(r.seconds for r in reps))


def open_lm_target(target: str | os.PathLike[str] | CompletionsTarget, *, api: str = "completions",
                   served_model: str | None = None, options: Any = None, system_prompt: str | None = None,
                   batch_size: int = 8) -> CompletionsTarget:
    """A completions target from a zoo name, a model folder or an ``http(s)://`` base URL.

    Args:
        target: the model (local) or the server's base URL (``http://host:port/v1``).
        api: ``"completions"`` (default) or ``"chat"``.
        served_model: the ``model`` name the server serves (default: the one model the server
            lists at ``GET /v1/models``; a server listing none or several needs it named).
        options: transport options for a URL (``HttpOptions``).
        system_prompt: a system message (local chat target only).
        batch_size: prompts per forward pass of a local model (default 8).

    Raises:
        ConfigError: an unknown api, or a URL while the OpenAI-compatible targets are not installed.
    """
    if api not in ("completions", "chat"):
        raise ConfigError(f"expected api 'completions' or 'chat', got {api!r}")
    if not isinstance(target, str | os.PathLike):
        return target
    text = os.fspath(target)
    if text.startswith(("http://", "https://")):
        try:
            from veriprint.targets import openai as remote
        except ImportError as e:
            raise ConfigError("an OpenAI-compatible URL needs veriprint.targets.openai, which this veriprint "
                              "lacks") from e
        cls = remote.OpenAIChat if api == "chat" else remote.OpenAICompletions
        if served_model:
            return cls(text, served_model, options=options)
        listed = cls(text, "?", options=options).models()  # GET /v1/models: the name the server uses
        if len(listed) != 1:
            raise ConfigError(f"expected --served-model: the server at {text} lists "
                              f"{len(listed)} models {listed[:8]}, so which one to check is not clear")
        return cls(text, listed[0], options=options)
    from veriprint.lm.model import load_lm
    from veriprint.lm.target import LocalCompletions

    return LocalCompletions(load_lm(text), chat=api == "chat", system_prompt=system_prompt, batch_size=batch_size)


def describe_prompts(fp: LmFingerprint, indices: Sequence[int] | None = None) -> list[str]:
    """One line per prompt: its role, margin of the first token, log S and the expected answer."""
    lines = []
    for i in range(len(fp)) if indices is None else indices:
        lines.append(f"{i:>3} {fp.meta['roles'][i]:<9} {float(fp.tensors['margins'][i, 0]):>9.3g} "
                     f"{float(fp.tensors['log_s'][i]):>8.3f}  {fp.prompts[i]!r} -> {fp.meta['text'][i]!r}")
    return lines
