"""One check of one endpoint: draw or make its queries, send them, store the result.

:class:`EndpointRuntime` holds what an endpoint needs between checks (its configuration,
the loaded fingerprint and its pool, or the source of fresh checks, the decoy data and the
owner's secret). :func:`run_check` does one check in a given slot:

1. it takes the check's queries: the next units of the pool, or a check made anew by the
   fresh source (its position stored with the attempt, so no position is used twice);
2. it records the attempt, then splits the queries into ``requests_per_check`` requests of
   keyed sizes, twin halves in different requests (:func:`veriprint.verification.queries.split.split_requests`),
   and mixes each request with natural decoys never sent before (unless ``repeat``);
3. it verifies each request (:func:`veriprint.verification.verify.verify`), merges the verdicts, and
   feeds each request's outcome to the endpoint's sequential test
   (:mod:`veriprint.monitor.sequential`);
4. it writes the check row with its alerts.

An endpoint whose fingerprint is a language model's (``cfg.kind == "lm"``) takes the same
steps with prompts for samples: its pool spends prompts, each request is checked by
:func:`veriprint.lm.verify.verify_lm` against the completions or chat API (or a local model)
and the requests' reports are merged by :func:`veriprint.lm.verify.merge_lm_reports`;
each stored sample holds its prompt and the expected and answered tokens (or text, or
top logprobs) instead of scores. Decoys and fresh checks are classifiers' only.

With a secret (``secret`` in the configuration) every draw of steps 1-2 comes from
``HMAC(secret, endpoint, slot)``: the owner can reproduce it, the provider cannot predict
it. Without one they come from the endpoint's name and slot, which anyone who knows the
algorithm can recompute (a warning says so at start). A check never raises for a target's
failure: that is an INCONCLUSIVE check like any other.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from veriprint.fingerprint import Fingerprint
from veriprint.monitor.config import EndpointConfig, MonitorConfig
from veriprint.monitor.db import Store, StoredCheck
from veriprint.monitor.pool import Draw, Pool, larger_pool_hint
from veriprint.monitor.sequential import SequentialParams, SequentialState, update
from veriprint.redact import redact
from veriprint.targets import QueryBatch, Target, open_target
from veriprint.verification.queries.keyed import keyed_permutation, keyed_rng
from veriprint.verification.queries.source import CheckSource
from veriprint.verification.queries.split import split_requests
from veriprint.verification.verify import VerificationReport, merge_reports, verify

if TYPE_CHECKING:
    from veriprint.lm.fingerprint import LmFingerprint
    from veriprint.lm.target import CompletionsTarget
    from veriprint.lm.verify import LmVerificationReport

__all__ = ["CheckOutcome", "EndpointRuntime", "TimedCompletions", "TimedTarget", "jitter_offset", "run_check",
           "slot_of"]

log = logging.getLogger(__name__)


def slot_of(t: float, interval: float) -> int:
    """The slot (start of the scheduling period, Unix ms) holding time ``t``."""
    ms = max(1, round(interval * 1000))
    return (int(t * 1000) // ms) * ms


def jitter_offset(endpoint: str, slot: int, jitter: float, secret: bytes | None = None) -> float:
    """Seconds after the slot's start that its check begins: fixed by endpoint and slot, and
    by the owner's secret when there is one (so the provider cannot tell when checks come)."""
    if jitter <= 0:
        return 0.0
    if secret is not None:
        from veriprint.verification.queries.keyed import keyed_int

        h = keyed_int(secret, "jitter", endpoint, slot)
    else:
        h = int.from_bytes(hashlib.sha256(f"{endpoint}/{slot}".encode()).digest()[:8], "big")
    return jitter * (h / 2**64)


class TimedTarget(Target):
    """A target wrapper that adds up the time spent waiting for the inner target's answers."""

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.output = inner.output
        self.max_batch = inner.max_batch
        self.description = inner.description
        self.seconds = 0.0

    def query(self, batch: QueryBatch) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return self.inner.query(batch)
        finally:
            self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        self.inner.close()


class TimedCompletions:
    """A language model's target (``complete``) that adds up the time spent waiting for its answers."""

    def __init__(self, inner: CompletionsTarget) -> None:
        self.inner = inner
        self.description = inner.description
        self.seconds = 0.0

    def complete(self, prompts: Sequence[str], *, max_tokens: int, logprobs: int | None = None) -> Sequence[Any]:
        t0 = time.perf_counter()
        try:
            return self.inner.complete(prompts, max_tokens=max_tokens, logprobs=logprobs)
        finally:
            self.seconds += time.perf_counter() - t0


#: Stands in for a secret when none is configured: draws are then predictable (see the module).
_UNKEYED = b"veriprint-unkeyed-draws-predictable"


@dataclass
class EndpointRuntime:
    """An endpoint's configuration and what is loaded for it once, at start.

    Exactly one of ``pool`` (a fingerprint's rotation) and ``source`` (fresh checks) is set.
    ``fingerprint`` is an :class:`~veriprint.lm.fingerprint.LmFingerprint` when ``cfg.kind``
    is ``"lm"``.
    """

    cfg: EndpointConfig
    fingerprint: Fingerprint | LmFingerprint | None
    pool: Pool | None
    decoy_data: Any = None  # a veriprint.data.Dataset, when decoys are configured
    source: CheckSource | None = None
    secret: bytes | None = None
    in_flight: bool = False
    last_slot: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    local_lm: Any = None  # a local language model's target, loaded at its first check and kept

    @classmethod
    def load(cls, cfg: EndpointConfig, key: str) -> EndpointRuntime:
        """Load and check the fingerprint (signature of the whole file) or the fresh source,
        the secret and the decoy data.

        Raises:
            ValueError: naming ``key`` and what is wrong.
        """
        secret = None
        if cfg.secret is not None:
            from veriprint.verification.queries.keyed import load_secret

            try:
                secret = load_secret(cfg.secret)
            except Exception as e:
                raise ValueError(f"{cfg.secret_key or key + '.secret'}: {e}") from None
        fp: Fingerprint | LmFingerprint | None = None
        pool: Pool | None = None
        source: CheckSource | None = None
        shape: tuple[int, ...] = ()
        if cfg.fresh is not None:
            source = _fresh_source(cfg, key, secret)
            shape = tuple(source.data.x.shape[1:])  # type: ignore[attr-defined]
        else:
            try:
                if cfg.kind == "lm":
                    from veriprint.lm.fingerprint import LmFingerprint

                    fp = LmFingerprint.load(str(cfg.fingerprint), pubkey=cfg.pubkey)
                else:
                    fp = Fingerprint.load(str(cfg.fingerprint), pubkey=cfg.pubkey)
            except Exception as e:
                raise ValueError(f"{key}.fingerprint: expected a valid fingerprint file, got {cfg.fingerprint}: {e}"
                                 ) from None
            pool = Pool(fp, cfg.pairs_per_check, cfg.on_pool_exhausted, secret=secret)
            if not pool.rotates and cfg.pairs_per_check:
                log.warning("%s: the fingerprint has %d unit(s), not more than pairs_per_check=%d, so every check "
                            "sends the same queries; %s", cfg.name, pool.size, cfg.pairs_per_check,
                            larger_pool_hint(cfg.kind))
            if isinstance(fp, Fingerprint):
                shape = tuple(fp.samples.shape[1:])
        if cfg.decoys is not None and cfg.kind == "lm":  # the file refuses this; a configuration built in Python might not
            raise ValueError(f"{key}.decoys: expected no decoys for a language model's fingerprint, got a decoys table")
        data = None
        if cfg.decoys is not None:
            from veriprint.data import load_data

            try:
                data = load_data(cfg.decoys.data, split=cfg.decoys.split)
            except Exception as e:
                raise ValueError(f"{key}.decoys.data: expected natural inputs, got {cfg.decoys.data!r}: {e}"
                                 ) from None
            if tuple(data.x.shape[1:]) != shape:
                raise ValueError(f"{key}.decoys.data: expected inputs of the queries' shape "
                                 f"{list(shape)}, got {list(data.x.shape[1:])}")
        if secret is None:
            log.warning("%s: no secret is configured, so which queries, decoys and request splits each check "
                        "uses can be recomputed by anyone who knows the endpoint's name; set secret = FILE "
                        "(e.g. `head -c 32 /dev/urandom > FILE`)", cfg.name)
        return cls(cfg, fp, pool, data, source, secret)

    @property
    def key(self) -> bytes:
        return self.secret if self.secret is not None else _UNKEYED

    @property
    def source_id(self) -> str:
        """What the attempts' ``fingerprint_sha256`` column holds: the file's hash, or one
        naming the fresh source (so its positions are counted apart from any pool's)."""
        if self.fingerprint is not None:
            return self.fingerprint.sha256
        f = self.cfg.fresh
        assert f is not None
        text = f"fresh/{self.cfg.name}/{f.model}/{f.weights}/{f.data}/{f.split}/{f.kind}/{f.per_check}"
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def decoy_block(self) -> int:
        """The most decoys one check of this endpoint sends (each attempt reserves as many)."""
        if self.pool is not None:
            n = self.pool.per_check * max((len(u) for u in self.pool.units), default=1)
        else:
            n = int(getattr(getattr(self.source, "cfg", None), "per_check", 16))
        return self.planned_queries(n, self.cfg.requests_per_check) - n

    def planned_queries(self, n: int, requests: int) -> int:
        """Queries a check of ``n`` samples sends as ``requests`` requests, decoys included
        (at most: every request rounds its decoys up)."""
        ratio = self.cfg.decoys.ratio if self.cfg.decoys is not None else 0.0
        return n + (math.ceil(ratio * n) + min(requests, n) if n and ratio else 0)


def _fresh_source(cfg: EndpointConfig, key: str, secret: bytes | None) -> CheckSource:
    from veriprint.data import load_data
    from veriprint.models import load_model
    from veriprint.verification.queries.fresh import FreshConfig, FreshQueries

    f = cfg.fresh
    assert f is not None
    if secret is None:  # the configuration refuses this; a programmatic config might not
        raise ValueError(f"{key}.secret: expected a secret for fresh checks, got none")
    try:
        model = load_model(f.model, weights=f.weights)
    except Exception as e:
        raise ValueError(f"{key}.fresh.model: expected a loadable model, got {f.model!r}: {e}") from None
    try:
        data = load_data(f.data, split=f.split)
    except Exception as e:
        raise ValueError(f"{key}.fresh.data: expected natural inputs, got {f.data!r}: {e}") from None
    try:
        return FreshQueries(model, data, secret, FreshConfig(kind=f.kind, per_check=f.per_check,
                                                             horizon_checks=f.horizon_checks), name=cfg.name)
    except Exception as e:
        raise ValueError(f"{key}.fresh: {e}") from None


@dataclass(frozen=True)
class CheckOutcome:
    """What one check did (``stored`` is None when the slot was already checked)."""

    endpoint: str
    slot: int
    verdict: str
    reason: str
    stored: StoredCheck | None
    duration_s: float
    target_s: float
    queries: int
    decoys: int
    pool_checks_left: int | None
    warnings: tuple[str, ...]
    skipped: bool = False


@dataclass
class _Plan:
    """The queries of one check, before any is sent."""

    fp: Fingerprint | LmFingerprint | None  # the check's fingerprint (None: nothing to send)
    draw: Draw  # what the attempt records: pool units, or the fresh position as one unit
    indices: tuple[int, ...]  # the check's samples, as positions in the pool file (fresh: 0..n-1)
    units: list[tuple[int, ...]]  # the check's units, as positions in ``fp``
    refused: str = ""  # why nothing may be sent
    warnings: list[str] = field(default_factory=list)


def _plan_pool(rt: EndpointRuntime, store: Store, before: tuple[int, int] | None = None) -> _Plan:
    """The next draw of the pool, or (``before``: an attempt's cycle and start) that attempt's."""
    cfg, fp, pool = rt.cfg, rt.fingerprint, rt.pool
    assert fp is not None and pool is not None
    warnings: list[str] = []
    hint = larger_pool_hint(cfg.kind)
    cycle, position = before if before is not None else store.pool_position(cfg.name, fp.sha256)
    draw = pool.draw(cycle, position)
    if draw.refused:
        return _Plan(None, draw, (), [], refused=(
            f"query pool exhausted and on_pool_exhausted = 'refuse': no check was sent; {hint}"))
    warn_below = cfg.warn_below(pool.checks_per_cycle)
    if draw.cycle > 0 and pool.rotates:
        msg = (f"query pool spent: all {pool.size} units were sent; pass {draw.cycle} repeats queries the "
               f"provider has answered (on_pool_exhausted = 'wrap'), so a provider that replays answers goes "
               f"unseen; {hint}" + (", or use fresh checks" if cfg.kind != "lm" else ""))
        log.warning("%s: %s", cfg.name, msg)
        warnings.append(msg)
    elif draw.checks_left is not None and draw.checks_left < warn_below:
        msg = f"query pool low: {draw.checks_left} check(s) left before the pool is spent; {hint}"
        log.warning("%s: %s", cfg.name, msg)
        warnings.append(msg)
    pos = {i: j for j, i in enumerate(draw.indices)}
    units = [tuple(pos[i] for i in pool.units[u]) for u in draw.units]
    return _Plan(fp.subset(draw.indices), draw, draw.indices, units, warnings=warnings)


def _plan_fresh(rt: EndpointRuntime, store: Store) -> tuple[Draw, str]:
    """The fresh position this check takes, or why none is left."""
    src = rt.source
    assert src is not None
    _, position = store.pool_position(rt.cfg.name, rt.source_id)
    left = None if src.checks_available is None else src.checks_available - position - 1
    if left is not None and left < 0:
        return Draw(0, position, (), (), checks_left=0, refused=True), (
            f"fresh checks exhausted: all {src.checks_available} slices of natural seeds were used, and no "
            "query is ever repeated; give more natural inputs (fresh.data) or a new secret")
    return Draw(0, position, (position,), (), checks_left=left), ""


def _samples(report: VerificationReport | LmVerificationReport, indices: tuple[int, ...],
             units: dict[int, int]) -> list[dict[str, Any]]:
    out = []
    for s in report.samples:
        i = indices[s.index] if s.index < len(indices) else s.index
        if isinstance(report, VerificationReport):
            out.append({"index": i, "unit": units.get(i), "expected": _round(s.expected),
                        "observed": None if s.observed is None else _round(s.observed),
                        "match": s.match, "ambiguous": s.ambiguous})
        else:  # a language model's prompt: the answers as the spec compares them (tokens, text or top logprobs)
            out.append({"index": i, "unit": units.get(i), "prompt": _answer(getattr(s, "prompt", "")),
                        "expected": _answer(s.expected), "observed": _answer(s.observed),
                        "match": s.match, "ambiguous": s.ambiguous, "why": _answer(getattr(s, "why", ""))})
    return out


def _round(v: list[float]) -> list[float]:
    return [float(f"{x:.6g}") if math.isfinite(x) else float("nan") for x in v]


#: Longest string and list kept of a language model's answer (a server may answer at length).
_KEEP = 400


def _answer(v: Any) -> Any:
    """A language model's answer as stored: strings and lists cut to :data:`_KEEP`, numbers to 6 digits."""
    if isinstance(v, str):
        return v if len(v) <= _KEEP else v[:_KEEP] + "..."
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int | float):
        return float(f"{v:.6g}") if math.isfinite(v) else None
    if isinstance(v, dict):
        return {_answer(str(k)): _answer(x) for k, x in list(v.items())[:_KEEP]}
    if isinstance(v, list | tuple):
        return [_answer(x) for x in list(v)[:_KEEP]]
    return _answer(str(v))


def _decoy_pool(rt: EndpointRuntime, store: Store, need: int, warnings: list[str], attempt: int) -> Any:
    """The natural inputs this check mixes in (a :class:`~veriprint.data.Dataset`, or None).

    The decoy data is put in a keyed order once, and the endpoint's ``k``-th attempt owns the
    ``k``-th block of it, as many as its largest check can send: no decoy goes out twice, not
    even after a check that timed out with its decoys perhaps sent (its block stays used).
    """
    from veriprint.data import Dataset

    d, dc = rt.decoy_data, rt.cfg.decoys
    if d is None or dc is None or need <= 0:
        return None
    m = len(d.x)
    block = max(rt.decoy_block, need)
    order = keyed_permutation(rt.key, m, "decoy-order", rt.cfg.name)
    start = store.attempt_number(rt.cfg.name, attempt) * block
    if start + need > m and not dc.repeat:
        if start >= m:
            msg = (f"decoys spent: every one of the {m} natural decoys was used once; this check sends none "
                   "(decoys.repeat = true sends them again)")
            log.warning("%s: %s", rt.cfg.name, msg)
            warnings.append(msg)
            return None
        need = m - start
    take = order[(start + np.arange(need)) % m]
    return Dataset(d.x[take], None, d.domain, d.name)


def run_check(rt: EndpointRuntime, slot: int, store: Store, monitor: MonitorConfig, *,
              deadline: threading.Event | None = None, scheduled_at: float | None = None) -> CheckOutcome:
    """Run and store one check of ``rt`` in ``slot``.

    Args:
        rt: the endpoint.
        slot: its scheduling slot (Unix ms).
        store: the database.
        monitor: the whole configuration (alert sinks, dashboard address).
        deadline: set by the scheduler when the check ran past ``check_timeout`` and was
            recorded INCONCLUSIVE in its place; this check's late result is then dropped.
        scheduled_at: when the check was due (default: now).
    """
    cfg = rt.cfg
    started = time.time()
    t0 = time.perf_counter()
    if store.has_check(cfg.name, slot):
        return CheckOutcome(cfg.name, slot, "", "already checked in this slot", None, 0.0, 0.0, 0, 0, None, (),
                            skipped=True)
    if rt.source is not None:
        draw, refused = _plan_fresh(rt, store)
        n_planned = 0 if refused else int(getattr(getattr(rt.source, "cfg", None), "per_check", 16))
        plan = _Plan(None, draw, (), [], refused=refused)
    else:
        plan = _plan_pool(rt, store)
        draw, n_planned = plan.draw, len(plan.indices)
    warnings = plan.warnings
    planned = rt.planned_queries(n_planned, cfg.requests_per_check)
    budget_note = ""
    if cfg.queries_per_day and not plan.refused:
        spent = store.queries_since(cfg.name, started - 86400)
        if spent + planned > cfg.queries_per_day:
            budget_note = (f"query budget spent: {spent} of {cfg.queries_per_day} queries in the last 24 h, "
                           f"this check needs {planned}")
    sending = not (plan.refused or budget_note)
    sent_units = list(draw.units) if sending else []
    attempt = store.begin(cfg.name, slot, rt.source_id, draw.cycle, draw.start, sent_units,
                          planned if sending else 0)
    if attempt is None:
        return CheckOutcome(cfg.name, slot, "", "already checked in this slot", None, 0.0, 0.0, 0, 0,
                            draw.checks_left, (), skipped=True)
    report: VerificationReport | LmVerificationReport | None = None
    requests: list[dict[str, Any]] = []
    outcomes: list[bool] = []
    target_s = 0.0
    if plan.refused:
        reason = plan.refused
        log.error("%s: %s", cfg.name, reason)
    elif budget_note:
        reason = budget_note
        log.warning("%s: %s", cfg.name, reason)
    else:
        timed: TimedTarget | None = None
        timed_lm: TimedCompletions | None = None
        try:
            if rt.source is not None:
                try:
                    fresh = rt.source.make(draw.start)
                except Exception as e:
                    raise _NotMade(f"could not make fresh check {draw.start}: {type(e).__name__}: {e}") from None
                plan = _Plan(fresh, draw, tuple(range(len(fresh))), fresh.units(), warnings=warnings)
            assert plan.fp is not None
            rng = keyed_rng(rt.key, "check", cfg.name, slot)
            split = split_requests(rng, plan.units, cfg.requests_per_check)
            if cfg.kind == "lm":
                timed_lm = TimedCompletions(_lm_target(rt))
                report = _check_lm(rt, plan.fp, split, timed_lm, requests, outcomes)
            else:
                assert isinstance(plan.fp, Fingerprint)
                decoys = _decoy_pool(rt, store, rt.planned_queries(len(plan.indices), len(split)) - len(plan.indices),
                                     warnings, attempt)
                timed = TimedTarget(open_target(cfg.target, **cfg.target_options()))
                parts: list[tuple[VerificationReport, list[int]]] = []
                used = 0
                for req in split:
                    target: Target = timed
                    if decoys is not None and cfg.decoys is not None and used < len(decoys.x):
                        from veriprint.data import Dataset
                        from veriprint.targets.decoys import DecoyTarget

                        k = min(math.ceil(cfg.decoys.ratio * len(req)), len(decoys.x) - used)
                        if k > 0:
                            mine = Dataset(decoys.x[used: used + k], None, decoys.domain, decoys.name)
                            used += k
                            # ceil(ratio * len(req)) == k exactly, so each decoy is sent once
                            target = DecoyTarget.from_dataset(timed, mine, ratio=(k - 0.5) / len(req),
                                                              seed=int(rng.integers(2**63)))
                    rep = verify(plan.fp.subset(req), target, spec=cfg.spec, max_batch=cfg.max_batch)
                    parts.append((rep, req))
                    requests.append({"size": len(req), "decoys": rep.decoys, "verdict": rep.verdict,
                                     "mismatches": rep.mismatches})
                    if rep.verdict == "TAMPERED" or (rep.verdict == "INTACT" and rep.compared == len(req)):
                        outcomes.append(rep.verdict == "TAMPERED")
                report = merge_reports(parts)
            reason = report.reason
        except _NotMade as e:
            reason = str(e)
            log.warning("%s: %s", cfg.name, reason)
        except Exception as e:  # a bad option or a target's own bug: could not check
            reason = f"could not check: {type(e).__name__}: {e}"
            log.warning("%s: %s", cfg.name, reason)
        finally:
            if timed_lm is not None:
                target_s = timed_lm.seconds
            if timed is not None:
                target_s = timed.seconds
                try:
                    timed.close()
                except Exception:
                    log.debug("closing the target of %s failed", cfg.name, exc_info=True)
    duration = time.perf_counter() - t0
    verdict = report.verdict if report is not None else "INCONCLUSIVE"
    if deadline is not None and deadline.is_set():
        log.info("%s: check of slot %d finished after its timeout; its result (%s) is dropped",
                 cfg.name, slot, verdict)
        return CheckOutcome(cfg.name, slot, verdict, reason, None, duration, target_s, 0, 0, draw.checks_left,
                            tuple(warnings), skipped=True)
    seq = _sequential(rt, store, outcomes, slot, warnings)
    unit_of = ({i: u for u in draw.units for i in rt.pool.units[u]} if rt.pool is not None
               else {i: j for j, unit in enumerate(plan.units) for i in unit})
    row = _row(rt, slot, scheduled_at or started, started, report, verdict, reason, duration, target_s, draw,
               sent_units, plan, unit_of, warnings, requests, seq)
    stored = store.complete(attempt, row, sinks=tuple(s.name for s in monitor.alerts),
                            inconclusive_after=cfg.inconclusive_alert_after,
                            payload=alert_payload(rt, row, monitor))
    if stored is not None:
        log.info("stored check endpoint=%s slot=%d id=%d verdict=%s queries=%d decoys=%d requests=%d seconds=%.3f",
                 cfg.name, slot, stored.id, verdict, row["queries"], row["decoys"], len(requests), duration)
    return CheckOutcome(cfg.name, slot, verdict, reason, stored, duration, target_s, row["queries"], row["decoys"],
                        row["pool_checks_left"], tuple(warnings))


class _NotMade(Exception):
    """The fresh source could not make the check's queries."""


def _check_lm(rt: EndpointRuntime, fp: Any, split: list[list[int]], timed: TimedCompletions,
              requests: list[dict[str, Any]], outcomes: list[bool]) -> LmVerificationReport:
    """Verify a language model's check, request by request, and merge the requests' reports."""
    from veriprint.lm.verify import merge_lm_reports, verify_lm

    cfg = rt.cfg
    max_batch = cfg.max_batch or cfg.options.get("max_batch")
    parts: list[tuple[LmVerificationReport, list[int]]] = []
    for req in split:
        rep = verify_lm(fp.subset(req), timed, spec=cfg.spec, max_batch=max_batch)
        parts.append((rep, req))
        requests.append({"size": len(req), "decoys": 0, "verdict": rep.verdict, "mismatches": rep.mismatches})
        if rep.verdict == "TAMPERED" or (rep.verdict == "INTACT" and rep.compared == len(req)):
            outcomes.append(rep.verdict == "TAMPERED")
    return merge_lm_reports(parts)


#: Held while a local language model loads (one at a time, whatever the endpoints in flight).
_LOADING = threading.Lock()


def _lm_target(rt: EndpointRuntime) -> CompletionsTarget:
    """The endpoint's language model: an OpenAI-compatible server (opened for each check, with
    the endpoint's transport options) or a local model (a zoo name or folder, loaded once)."""
    from veriprint.lm.verify import open_lm_target
    from veriprint.targets.transport import TransportOptions

    cfg = rt.cfg
    api = cfg.api or str((rt.fingerprint.meta if rt.fingerprint is not None else {}).get("api", "completions"))
    if "://" not in cfg.target:
        with _LOADING:  # transformers' loading is not thread-safe (its meta-device setup is global)
            if rt.local_lm is None:
                rt.local_lm = open_lm_target(cfg.target, api=api)
        target: CompletionsTarget = rt.local_lm
        return target
    options = {k: v for k, v in cfg.target_options().items() if k in TransportOptions.__dataclass_fields__}
    return open_lm_target(cfg.target, api=api, served_model=cfg.served_model, options=TransportOptions(**options))


def _sequential(rt: EndpointRuntime, store: Store, outcomes: list[bool], slot: int,
                warnings: list[str]) -> dict[str, Any]:
    """The sequential test after this check's requests (stored with the check)."""
    params = SequentialParams(rt.cfg.false_mismatch_rate, rt.cfg.alpha)
    state = SequentialState.from_dict(store.sequential_state(rt.cfg.name), params)
    state, crossed = update(state, outcomes, params, slot=slot)
    if crossed:
        share = state.share
        msg = (f"sequential test: evidence {state.evidence:.3g} >= 1/alpha = {params.threshold:g} after "
               f"{state.mismatched} mismatching of {state.requests} requests: the endpoint is not answering "
               f"from the intact model (false alarm chance <= {params.alpha:g} over all checks, if an intact "
               f"request mismatches at most {params.p0:g} of the time)"
               + (f"; share of requests answered otherwise: {share:.1%} (>= {state.share_lower:.1%} at 95%)"
                  if share is not None else ""))
        log.error("%s: %s", rt.cfg.name, msg)
        warnings.append(msg)
    return state.to_dict() | {"evidence": state.evidence, "share": state.share, "share_lower": state.share_lower}


def record_timeout(rt: EndpointRuntime, slot: int, store: Store, monitor: MonitorConfig, attempt_started: float,
                   scheduled_at: float) -> StoredCheck | None:
    """Store an INCONCLUSIVE check for a check that ran past its ``check_timeout``."""
    from sqlalchemy import select

    from veriprint.monitor.db import Attempt

    cfg = rt.cfg
    with store.read() as s:
        a = s.scalars(select(Attempt).where(Attempt.endpoint == cfg.name, Attempt.slot == slot)
                      .order_by(Attempt.id.desc()).limit(1)).first()
    if a is None:
        return None
    units = list(a.pool_units)
    indices = (tuple(i for u in units for i in rt.pool.units[u]) if units and rt.pool is not None else ())
    warnings: list[str] = []
    if rt.pool is not None:  # the pool's state after this attempt, and its warnings, as a check would say
        plan = _plan_pool(rt, store, before=(a.pool_cycle, a.pool_start))
        draw, warnings = plan.draw, plan.warnings
    else:
        src = rt.source
        left = None if src is None or src.checks_available is None else src.checks_available - a.pool_start - 1
        draw = Draw(a.pool_cycle, a.pool_start, tuple(units), indices, checks_left=left)
    plan = _Plan(None, draw, indices, [])
    reason = f"the check took longer than check_timeout = {cfg.check_timeout:g} s"
    if a.planned_queries:
        warnings.append(f"up to {a.planned_queries} queries may have been sent before the timeout; the query "
                        "budget counts them, the queries metric does not")
    row = _row(rt, slot, scheduled_at, attempt_started, None, "INCONCLUSIVE", reason,
               time.time() - attempt_started, 0.0, draw, units, plan, {}, warnings, [], None)
    return store.complete(a.id, row, sinks=tuple(s.name for s in monitor.alerts),
                          inconclusive_after=cfg.inconclusive_alert_after, payload=alert_payload(rt, row, monitor))


def _row(rt: EndpointRuntime, slot: int, scheduled_at: float, started: float,
         report: VerificationReport | LmVerificationReport | None,
         verdict: str, reason: str, duration: float, target_s: float, draw: Draw, units: list[int], plan: _Plan,
         unit_of: dict[int, int], warnings: list[str], requests: list[dict[str, Any]],
         sequential: dict[str, Any] | None) -> dict[str, Any]:
    fp = plan.fp if plan.fp is not None else rt.fingerprint
    noise = fp.noise if fp is not None else None
    fresh = rt.source is not None
    if noise is None:
        tolerance: dict[str, float] = {}
    elif rt.cfg.kind == "lm":
        tolerance = {"floor": noise.floor, "logprob": noise.logit_tolerance}
    else:
        tolerance = {"floor": noise.floor, "logit": noise.logit_tolerance, "prob": noise.prob_tolerance}
    return {
        "endpoint": rt.cfg.name, "slot": slot, "scheduled_at": scheduled_at, "started_at": started,
        "finished_at": time.time(), "target": rt.cfg.shown_target, "spec": rt.cfg.spec,
        "fingerprint_sha256": rt.source_id if fresh or fp is None else fp.sha256,
        "signature": "" if fresh or fp is None else fp.signature,
        "model_hash": "" if fp is None else str(fp.meta.get("model_hash", ""))[:128], "verdict": verdict,
        "reason": redact(reason)[:4000],
        "queries": report.queries if report else 0,
        "decoys": report.decoys if isinstance(report, VerificationReport) else 0,
        "compared": report.compared if report else 0, "mismatches": report.mismatches if report else 0,
        "ambiguous": report.ambiguous if report else 0, "duration_s": duration, "target_s": target_s,
        "pool_cycle": draw.cycle, "pool_start": draw.start, "pool_units": units,
        "pool_checks_left": draw.checks_left if units else (0 if draw.refused else draw.checks_left),
        "sample_indices": list(plan.indices) if units else [],
        "samples": _samples(report, plan.indices, unit_of) if report else [],
        "tolerance": dict(report.tolerance) if report else tolerance,
        "warnings": warnings, "source": "fresh" if fresh else "pool", "requests": requests,
        "sequential": sequential,
    }


def alert_payload(rt: EndpointRuntime, row: dict[str, Any], monitor: MonitorConfig) -> dict[str, Any]:
    """The fields every alert about this check carries (no secrets: the target is redacted)."""
    base = monitor.public_url.rstrip("/")
    return {
        "source": "veriprint", "endpoint": rt.cfg.name, "target": row["target"], "verdict": row["verdict"],
        "reason": row["reason"], "slot": row["slot"], "time": row["finished_at"],
        "fingerprint_sha256": row["fingerprint_sha256"], "signature": row["signature"], "spec": row["spec"],
        "mismatches": row["mismatches"], "compared": row["compared"],
        "evidence": (row.get("sequential") or {}).get("evidence"),
        "routed_share_lower": (row.get("sequential") or {}).get("share_lower"),
        "dashboard": f"{base}/endpoints/{rt.cfg.name}" if base else "",
    }
