"""One check of one endpoint: draw from the pool, query the target, store the result.

:class:`EndpointRuntime` holds what an endpoint needs between checks (its configuration,
the loaded fingerprint, the pool and the decoy data). :func:`run_check` does one check in
a given slot: it records the attempt, builds the target (decoys mixed in with a seed fixed
by the endpoint and slot), calls :func:`veriprint.verify.verify` on the drawn subset, and
writes the check row with its alerts. It never raises for a target's failure: that is an
INCONCLUSIVE check like any other.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veriprint.fingerprint import Fingerprint
from veriprint.monitor.config import EndpointConfig, MonitorConfig
from veriprint.monitor.db import Store, StoredCheck
from veriprint.monitor.pool import LARGER_POOL_HINT, Draw, Pool
from veriprint.redact import redact
from veriprint.targets import QueryBatch, Target, open_target
from veriprint.verify import VerificationReport, verify

__all__ = ["CheckOutcome", "EndpointRuntime", "TimedTarget", "jitter_offset", "run_check", "slot_of"]

log = logging.getLogger(__name__)


def slot_of(t: float, interval: float) -> int:
    """The slot (start of the scheduling period, Unix ms) holding time ``t``."""
    ms = max(1, round(interval * 1000))
    return (int(t * 1000) // ms) * ms


def jitter_offset(endpoint: str, slot: int, jitter: float) -> float:
    """Seconds after the slot's start that its check begins: fixed by endpoint and slot."""
    if jitter <= 0:
        return 0.0
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


@dataclass
class EndpointRuntime:
    """An endpoint's configuration and what is loaded for it once, at start."""

    cfg: EndpointConfig
    fingerprint: Fingerprint
    pool: Pool
    decoy_data: Any = None  # a veriprint.data.Dataset, when decoys are configured
    in_flight: bool = False
    last_slot: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, cfg: EndpointConfig, key: str) -> EndpointRuntime:
        """Load and check the fingerprint (signature of the whole file) and decoy data.

        Raises:
            ValueError: naming ``key`` and what is wrong.
        """
        try:
            fp = Fingerprint.load(cfg.fingerprint, pubkey=cfg.pubkey)
        except Exception as e:
            raise ValueError(f"{key}.fingerprint: expected a valid fingerprint file, got {cfg.fingerprint}: {e}"
                             ) from None
        pool = Pool(fp, cfg.pairs_per_check, cfg.on_pool_exhausted)
        if not pool.rotates and cfg.pairs_per_check:
            log.warning("%s: the fingerprint has %d unit(s), not more than pairs_per_check=%d, so every check "
                        "sends the same queries; %s", cfg.name, pool.size, cfg.pairs_per_check, LARGER_POOL_HINT)
        data = None
        if cfg.decoys is not None:
            from veriprint.data import load_data

            try:
                data = load_data(cfg.decoys.data, split=cfg.decoys.split)
            except Exception as e:
                raise ValueError(f"{key}.decoys.data: expected natural inputs, got {cfg.decoys.data!r}: {e}"
                                 ) from None
            if tuple(data.x.shape[1:]) != tuple(fp.samples.shape[1:]):
                raise ValueError(f"{key}.decoys.data: expected inputs of the fingerprint's shape "
                                 f"{list(fp.samples.shape[1:])}, got {list(data.x.shape[1:])}")
        return cls(cfg, fp, pool, data)

    def planned_queries(self, draw: Draw) -> int:
        n = len(draw.indices)
        ratio = self.cfg.decoys.ratio if self.cfg.decoys is not None else 0.0
        return n + (math.ceil(ratio * n) if n else 0)


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


def _samples(report: VerificationReport, indices: tuple[int, ...], units: dict[int, int]) -> list[dict[str, Any]]:
    out = []
    for s in report.samples:
        i = indices[s.index] if s.index < len(indices) else s.index
        out.append({"index": i, "unit": units.get(i), "expected": _round(s.expected),
                    "observed": None if s.observed is None else _round(s.observed),
                    "match": s.match, "ambiguous": s.ambiguous})
    return out


def _round(v: list[float]) -> list[float]:
    return [float(f"{x:.6g}") if math.isfinite(x) else float("nan") for x in v]


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
    fp = rt.fingerprint
    warnings: list[str] = []
    if store.has_check(cfg.name, slot):
        return CheckOutcome(cfg.name, slot, "", "already checked in this slot", None, 0.0, 0.0, 0, 0, None, (),
                            skipped=True)
    cycle, position = store.pool_position(cfg.name, fp.sha256)
    draw = rt.pool.draw(cycle, position)
    if draw.wrapped:
        msg = (f"query pool spent: all {rt.pool.size} units were sent; starting pass {draw.cycle} in a new "
               f"order, so the provider sees queries again; {LARGER_POOL_HINT}")
        log.warning("%s: %s", cfg.name, msg)
        warnings.append(msg)
    elif draw.checks_left is not None and draw.checks_left < cfg.pool_warn_checks and not draw.refused:
        msg = f"query pool low: {draw.checks_left} check(s) left before queries repeat; {LARGER_POOL_HINT}"
        log.warning("%s: %s", cfg.name, msg)
        warnings.append(msg)
    planned = rt.planned_queries(draw)
    budget_note = None
    if cfg.queries_per_day and not draw.refused:
        spent = store.queries_since(cfg.name, started - 86400)
        if spent + planned > cfg.queries_per_day:
            budget_note = (f"query budget spent: {spent} of {cfg.queries_per_day} queries in the last 24 h, "
                           f"this check needs {planned}")
    sent_units = [] if (draw.refused or budget_note) else list(draw.units)
    attempt = store.begin(cfg.name, slot, fp.sha256, draw.cycle, draw.start if sent_units else position,
                          sent_units, planned if sent_units else 0)
    if attempt is None:
        return CheckOutcome(cfg.name, slot, "", "already checked in this slot", None, 0.0, 0.0, 0, 0,
                            draw.checks_left, (), skipped=True)
    report: VerificationReport | None = None
    target_s = 0.0
    if draw.refused:
        reason = f"query pool exhausted and on_pool_exhausted = 'refuse': no check was sent; {LARGER_POOL_HINT}"
        log.error("%s: %s", cfg.name, reason)
    elif budget_note:
        reason = budget_note
        log.warning("%s: %s", cfg.name, reason)
    else:
        timed: TimedTarget | None = None
        try:
            inner = open_target(cfg.target, **cfg.target_options())
            timed = TimedTarget(inner)
            target: Target = timed
            if cfg.decoys is not None and rt.decoy_data is not None:
                from veriprint.targets.decoys import DecoyTarget

                seed = int.from_bytes(hashlib.sha256(f"decoys/{cfg.name}/{slot}".encode()).digest()[:8], "big")
                target = DecoyTarget.from_dataset(timed, rt.decoy_data, ratio=cfg.decoys.ratio, seed=seed)
            report = verify(fp.subset(draw.indices), target, spec=cfg.spec, max_batch=cfg.max_batch)
            reason = report.reason
        except Exception as e:  # a bad option or a target's own bug: could not check
            reason = f"could not check: {type(e).__name__}: {e}"
            log.warning("%s: %s", cfg.name, reason)
        finally:
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
    unit_of = {i: u for u in draw.units for i in rt.pool.units[u]}
    row = _row(rt, slot, scheduled_at or started, started, report, verdict, reason, duration, target_s, draw,
               sent_units, unit_of, warnings)
    stored = store.complete(attempt, row, sinks=tuple(s.name for s in monitor.alerts),
                            inconclusive_after=cfg.inconclusive_alert_after,
                            payload=alert_payload(rt, row, monitor))
    if stored is not None:
        log.info("stored check endpoint=%s slot=%d id=%d verdict=%s queries=%d decoys=%d seconds=%.3f",
                 cfg.name, slot, stored.id, verdict, row["queries"], row["decoys"], duration)
    return CheckOutcome(cfg.name, slot, verdict, reason, stored, duration, target_s, row["queries"], row["decoys"],
                        row["pool_checks_left"], tuple(warnings))


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
    indices = tuple(i for u in units for i in rt.pool.units[u]) if units else ()
    draw = Draw(a.pool_cycle, a.pool_start, tuple(units), indices, checks_left=None)
    reason = f"the check took longer than check_timeout = {cfg.check_timeout:g} s"
    row = _row(rt, slot, scheduled_at, attempt_started, None, "INCONCLUSIVE", reason,
               time.time() - attempt_started, 0.0, draw, units, {}, [])
    row["queries"] = a.planned_queries  # what may have been sent
    return store.complete(a.id, row, sinks=tuple(s.name for s in monitor.alerts),
                          inconclusive_after=cfg.inconclusive_alert_after, payload=alert_payload(rt, row, monitor))


def _row(rt: EndpointRuntime, slot: int, scheduled_at: float, started: float, report: VerificationReport | None,
         verdict: str, reason: str, duration: float, target_s: float, draw: Draw, units: list[int],
         unit_of: dict[int, int], warnings: list[str]) -> dict[str, Any]:
    fp = rt.fingerprint
    noise = fp.noise
    return {
        "endpoint": rt.cfg.name, "slot": slot, "scheduled_at": scheduled_at, "started_at": started,
        "finished_at": time.time(), "target": rt.cfg.shown_target, "spec": rt.cfg.spec,
        "fingerprint_sha256": fp.sha256, "signature": fp.signature,
        "model_hash": str(fp.meta.get("model_hash", ""))[:128], "verdict": verdict, "reason": redact(reason)[:4000],
        "queries": report.queries if report else 0, "decoys": report.decoys if report else 0,
        "compared": report.compared if report else 0, "mismatches": report.mismatches if report else 0,
        "ambiguous": report.ambiguous if report else 0, "duration_s": duration, "target_s": target_s,
        "pool_cycle": draw.cycle, "pool_start": draw.start, "pool_units": units,
        "pool_checks_left": draw.checks_left if units else (0 if draw.refused else draw.checks_left),
        "sample_indices": list(draw.indices) if units else [],
        "samples": _samples(report, draw.indices, unit_of) if report else [],
        "tolerance": dict(report.tolerance) if report else
        {"floor": noise.floor, "logit": noise.logit_tolerance, "prob": noise.prob_tolerance},
        "warnings": warnings,
    }


def alert_payload(rt: EndpointRuntime, row: dict[str, Any], monitor: MonitorConfig) -> dict[str, Any]:
    """The fields every alert about this check carries (no secrets: the target is redacted)."""
    base = monitor.public_url.rstrip("/")
    return {
        "source": "veriprint", "endpoint": rt.cfg.name, "target": row["target"], "verdict": row["verdict"],
        "reason": row["reason"], "slot": row["slot"], "time": row["finished_at"],
        "fingerprint_sha256": row["fingerprint_sha256"], "signature": row["signature"], "spec": row["spec"],
        "mismatches": row["mismatches"], "compared": row["compared"],
        "dashboard": f"{base}/endpoints/{rt.cfg.name}" if base else "",
    }
