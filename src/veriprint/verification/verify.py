"""Verification: query a black-box target with the fingerprint and give a verdict.

* **INTACT**: every sample was queried, every answer was well formed, every answer is
  what the intact model gives (within the recorded noise floor), and at least one of
  them decided something (a sample whose expected answer sits within noise of a decision
  accepts either answer; a check made only of such samples proves nothing).
* **TAMPERED**: at least one well-formed answer cannot come from the intact model.
* **INCONCLUSIVE**: anything else: the target failed, timed out, or answered something
  malformed (wrong shape, dtype, count, NaN) before a mismatch was seen, or the spec
  needs more than the target reveals. Never INTACT by default.

The verifier sends each sample exactly once (split into batches of at most
``max_batch``, by the query loop of :mod:`veriprint.verification.send`, which enrollment
shares), so the number of queries is the fingerprint's size (plus decoys a target wrapper
may add).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from torch import nn

from veriprint._callable import callable_module
from veriprint.errors import ConfigError
from veriprint.fingerprint import Fingerprint
from veriprint.redact import redact
from veriprint.targets import Target, TargetError, open_target
from veriprint.verification.send import closing_if_opened, send_once
from veriprint.verification.specs import OutputSpec, parse_spec

if TYPE_CHECKING:
    from veriprint.lm.fingerprint import LmFingerprint
    from veriprint.lm.specs import LmSpec

__all__ = ["EXIT_CODES", "SampleResult", "Verdict", "VerificationReport", "check_enrolled_spec", "merge_reports",
           "merged_verdict", "verify"]

Verdict = Literal["INTACT", "TAMPERED", "INCONCLUSIVE"]
EXIT_CODES: dict[str, int] = {"INTACT": 0, "TAMPERED": 1, "INCONCLUSIVE": 2}


@dataclass(frozen=True)
class SampleResult:
    """One sample's comparison (``match`` is None when it was not compared)."""

    index: int
    expected: list[float]
    observed: list[float] | None
    match: bool | None
    ambiguous: bool = False


@dataclass(frozen=True)
class VerificationReport:
    """The verdict and everything behind it.

    Attributes:
        verdict: ``"INTACT"``, ``"TAMPERED"`` or ``"INCONCLUSIVE"``.
        reason: one sentence saying why.
        spec: the output specification compared.
        target: description of the target.
        queries: fingerprint samples sent.
        decoys: decoy queries sent alongside (by a decoy wrapper), if any.
        compared: samples whose answer was compared.
        mismatches: samples whose answer cannot come from the intact model.
        ambiguous: compared samples within noise of a decision (both answers accepted).
        tolerance: the tolerances used (margin floor, logit and probability tolerances).
        fingerprint: file hash, signature status, model hash of the fingerprint.
        samples: per-sample results.
        seconds: wall time.
    """

    verdict: Verdict
    reason: str
    spec: str
    target: str
    queries: int
    decoys: int
    compared: int
    mismatches: int
    ambiguous: int
    tolerance: dict[str, float]
    fingerprint: dict[str, Any]
    samples: list[SampleResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        """A short human summary (what the CLI prints)."""
        lines = [
            f"verdict: {self.verdict}  ({self.reason})",
            f"target: {self.target}   spec: {self.spec}",
            f"queries: {self.queries} fingerprint" + (f" + {self.decoys} decoys" if self.decoys else "")
            + f", compared {self.compared}, mismatches {self.mismatches}, ambiguous {self.ambiguous}",
            f"tolerance: margin floor {self.tolerance['floor']:.3g}, logits {self.tolerance['logit']:.3g}, "
            f"probs {self.tolerance['prob']:.3g}",
        ]
        return "\n".join(lines)


def check_enrolled_spec(fp: Fingerprint | LmFingerprint, spec: OutputSpec | LmSpec) -> None:
    """Refuse a spec an enrolled fingerprint (a classifier's or a language model's) does not serve.

    An enrollment whose measured spread went beyond the pool's tolerances widened them;
    the file then serves only the spec it was enrolled for (``meta["enrollment"]["serves"]``),
    since under another spec it would check less than the pool it came from.
    """
    info = fp.info.enrollment if isinstance(fp, Fingerprint) else fp.meta.get("enrollment")
    serves = info.get("serves") if isinstance(info, Mapping) else None
    if not isinstance(serves, list) or spec.kind in serves:
        return
    assert info is not None
    grown = info.get("grown")
    names = {"floor": "margin floor", "logit": "logit tolerance", "logprob": "logprob tolerance",
             "prob": "probability tolerance"}
    what = "its tolerances"
    if isinstance(grown, dict) and grown:
        what = ", ".join(f"the {names.get(str(k), str(k))} from {v.get('pool', 0):.3g} to {v.get('enrolled', 0):.3g}"
                         if isinstance(v, dict) else str(k) for k, v in grown.items())
    raise ConfigError(
        f"expected a spec this enrolled fingerprint serves ({', '.join(map(str, serves))}), got {spec}: "
        f"enrollment widened {what} beyond the pool's (the deployment's answers spread more than the pool "
        f"allows), so under {spec} it would check less than the pool does; verify with --spec "
        f"{info.get('spec', serves[0])}, or enroll again with --spec {spec}")


def verify(
    fingerprint: Fingerprint | str | os.PathLike[str],
    target: Target | nn.Module | Callable[..., Any] | str | os.PathLike[str],
    *,
    spec: str | OutputSpec = "top1",
    pubkey: str | os.PathLike[str] | None = None,
    max_batch: int | None = None,
    **target_options: Any,
) -> VerificationReport:
    """Check a target against a fingerprint.

    Args:
        fingerprint: a :class:`Fingerprint` or the path of a ``.vpf`` file.
        target: anything :func:`veriprint.targets.open_target` accepts (a Target, a
            module, a callable, a model file or factory, a server URL).
        spec: what the API reveals (default ``"top1"``); see :mod:`veriprint.verification.specs`.
        pubkey: Ed25519 public key the file's signature must verify with.
        max_batch: most samples per query batch (default: the target's own limit).
        **target_options: passed to :func:`open_target` (``output=``, ``weights=``, ...).

    Returns:
        A :class:`VerificationReport`, its strings free of known secrets. Errors of the
        fingerprint file or of the arguments raise (:class:`~veriprint.errors.VeriprintError`);
        errors of the target become an INCONCLUSIVE verdict.
    """
    start = time.perf_counter()
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int)
                                  or max_batch < 1):
        raise ConfigError(f"expected max_batch >= 1 (samples per request) or None, got {max_batch!r}")
    out_spec = parse_spec(spec)
    fp = fingerprint if isinstance(fingerprint, Fingerprint) else Fingerprint.load(fingerprint, pubkey=pubkey)
    if len(fp) == 0:
        raise ConfigError("expected a fingerprint with at least one sample, got 0: nothing to compare")
    if not torch.isfinite(fp.expected).all():
        raise ConfigError("expected finite expected outputs in the fingerprint, got NaN or infinity")
    check_enrolled_spec(fp, out_spec)
    noise = fp.noise
    tolerance = {"floor": noise.floor, "logit": noise.logit_tolerance, "prob": noise.prob_tolerance}
    info = {"sha256": fp.sha256, "signature": fp.signature, "model_hash": fp.info.model_hash or ""}
    z = fp.expected_logits.numpy()
    n, r = z.shape
    if out_spec.kind == "topk" and out_spec.k > r:
        raise ConfigError(f"spec {out_spec} asks for more labels than the model's {r} classes")
    if out_spec.kind == "logits" and fp.model_outputs == "probs":
        raise ConfigError("spec logits needs a fingerprint of a logit model; this one returns probabilities")

    def report(verdict: Verdict, reason: str, compared: int = 0, mismatches: int = 0, ambiguous: int = 0,
               samples: list[SampleResult] | None = None, tgt: str = "?", decoys: int = 0,
               queries: int = 0) -> VerificationReport:
        return VerificationReport(verdict, redact(reason), str(out_spec), redact(tgt), queries, decoys,
                                  compared, mismatches, ambiguous, tolerance, info, samples or [],
                                  time.perf_counter() - start)

    try:
        tgt = open_target(target, **target_options)
    except Exception as e:  # whatever a loader raises, the answer is "could not check"
        return report("INCONCLUSIVE", f"could not open the target: {type(e).__name__}: {e}")
    with closing_if_opened(tgt, target):
        name = tgt.description
        if not out_spec.accepts(tgt.output):
            return report("INCONCLUSIVE", f"spec {out_spec} needs more than this target's {tgt.output!r} answers",
                          tgt=name)
        limit = min(b for b in (max_batch, tgt.max_batch, n)
                    if isinstance(b, int) and not isinstance(b, bool) and b >= 1)
        got = send_once(tgt, fp.samples.numpy(), None if fp.grid is None else fp.grid.numpy(), classes=r,
                        batch=limit)
        sent = got.sent
        error: str | None = None
        if got.failure is not None:
            f = got.failure
            error = (f"target failed on samples {f.first}..{f.last}: {f.detail}" if f.own_bug
                     else f"target answer for samples {f.first}..{f.last}: {f.detail}")
        decoys = int(getattr(tgt, "decoy_queries", 0))
        done = got.done
        results: list[SampleResult] = []
        mism = amb = 0
        if done:
            assert got.values is not None
            try:
                cmp = out_spec.compare(z[:done], got.values[:done], tgt.output, noise)
            except TargetError as e:
                error = error or f"target answer: {e}"
                cmp = None
            if cmp is not None:
                mism, amb = int(cmp.mismatch.sum()), int(cmp.ambiguous.sum())
                for i in range(done):
                    results.append(SampleResult(i, cmp.expected[i], cmp.observed[i], not bool(cmp.mismatch[i]),
                                                bool(cmp.ambiguous[i])))
        compared = len(results)
        for i in range(compared, n):
            results.append(SampleResult(i, z[i].tolist(), None, None))
        if mism:
            why = f"{mism} of {compared} compared samples differ from the intact model"
            if error:
                why += f" (and the target then failed: {error})"
            return report("TAMPERED", why, compared, mism, amb, results, name, decoys, sent)
        if error or compared < n:
            return report("INCONCLUSIVE", error or f"only {compared} of {n} samples were compared",
                          compared, 0, amb, results, name, decoys, sent)
        if amb == compared:
            return report("INCONCLUSIVE", f"every one of the {n} samples sits within the noise floor "
                          f"({noise.floor:.3g}) of a decision, so any answer matches: this fingerprint "
                          f"cannot tell under spec {out_spec}", compared, 0, amb, results, name, decoys, sent)
        within = f"; {amb} within noise of a decision, accepted either way" if amb else ""
        return report("INTACT", f"all {n} samples match the intact model{within}", compared, 0, amb, results,
                      name, decoys, sent)


def merge_reports(parts: list[tuple[VerificationReport, list[int]]]) -> VerificationReport:
    """One report for a check sent as several requests, by the same rules as one request.

    Args:
        parts: each request's report with the positions (in the whole check) of the
            samples it carried, in the order of its ``samples``.

    TAMPERED when any request saw a mismatch; INCONCLUSIVE when any request could not
    compare all its samples, or every sample of the check was within noise of a decision;
    INTACT only when every sample of every request was compared and matched.
    """
    if not parts:
        raise ConfigError("expected the reports of at least one request, got none")
    first = parts[0][0]
    n = sum(len(idx) for _, idx in parts)
    samples: list[SampleResult | None] = [None] * n
    for rep, idx in parts:
        if len(rep.samples) != len(idx):
            raise ConfigError(f"expected a report of {len(idx)} samples, got {len(rep.samples)}")
        for s, i in zip(rep.samples, idx, strict=True):
            samples[i] = SampleResult(i, s.expected, s.observed, s.match, s.ambiguous)
    if any(s is None for s in samples):
        raise ConfigError("expected the requests' positions to cover the check once each")
    reps = [r for r, _ in parts]
    compared, mism, amb = (sum(getattr(r, f) for r in reps) for f in ("compared", "mismatches", "ambiguous"))
    verdict, reason = merged_verdict(reps, [len(idx) for _, idx in parts], floor=first.tolerance["floor"],
                                     spec=str(first.spec), unit="samples", edge="decision")
    return VerificationReport(verdict, redact(reason), first.spec, first.target, sum(r.queries for r in reps),
                              sum(r.decoys for r in reps), compared, mism, amb, first.tolerance, first.fingerprint,
                              [s for s in samples if s is not None], sum(r.seconds for r in reps))


callable_module(__name__, "verify")  # ``veriprint.verification.verify`` is this module and this function alike


class _Part(Protocol):
    """What :func:`merged_verdict` reads of a request's report (either kind)."""

    @property
    def verdict(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def compared(self) -> int: ...
    @property
    def mismatches(self) -> int: ...
    @property
    def ambiguous(self) -> int: ...


def merged_verdict(reps: Sequence[_Part], sizes: Sequence[int], *, floor: float, spec: str, unit: str,
                   edge: str) -> tuple[Verdict, str]:
    """The verdict and reason of one check sent as several requests (``reps``, of ``sizes``
    samples each), by the module's verdict rules: TAMPERED when any compared sample differs
    (a failed request said too), INCONCLUSIVE when a request failed before comparing all of
    its samples or when every sample sits within the floor of a ``edge``, else INTACT. The
    one rule for a classifier's check (``unit`` samples) and a language model's (prompts)."""
    n, k = sum(sizes), len(reps)
    compared = sum(r.compared for r in reps)
    mism = sum(r.mismatches for r in reps)
    amb = sum(r.ambiguous for r in reps)
    where = f" over {k} requests" if k > 1 else ""
    failed = [f"request {j + 1}: {r.reason}" for j, r in enumerate(reps)
              if r.verdict == "INCONCLUSIVE" and r.compared < sizes[j]]
    if mism:
        hit = sum(r.mismatches > 0 for r in reps)
        reason = f"{mism} of {compared} compared {unit} differ from the intact model" + (
            f" ({hit} of {k} requests)" if k > 1 else "")
        if failed:
            reason += f" (and {failed[0]})"
        return "TAMPERED", reason
    if failed:
        return "INCONCLUSIVE", f"only {compared} of {n} {unit} were compared{where}; {failed[0]}"
    if amb == compared:
        return "INCONCLUSIVE", (f"every one of the {n} {unit} sits within the noise floor ({floor:.3g}) of a "
                                f"{edge}, so any answer matches: this check cannot tell under spec {spec}")
    within = f"; {amb} within noise of a {edge}, accepted either way" if amb else ""
    return "INTACT", f"all {n} {unit} match the intact model{where}{within}"
