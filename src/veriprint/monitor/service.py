"""The scheduler: every endpoint on its own schedule, bounded concurrency, per-check timeouts.

Time is cut into slots of each endpoint's ``interval``; the check of a slot starts at a
jittered offset fixed by the endpoint and slot (so restarts keep the same times and many
endpoints do not fire together). At most one check per endpoint runs at a time, and at
most ``concurrency`` over all endpoints; each runs in its own thread. A check still
running after ``check_timeout`` is recorded INCONCLUSIVE and its thread is left to end
(requests carry their own timeouts), so a slow or dead endpoint holds no slot of the
others. A restarted monitor runs the current slot of every endpoint that has no stored
check for it, and never backfills older ones.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from veriprint.monitor.alerts import Dispatcher
from veriprint.monitor.checks import (
    CheckOutcome,
    EndpointRuntime,
    jitter_offset,
    record_timeout,
    run_check,
    slot_of,
)
from veriprint.monitor.config import MonitorConfig
from veriprint.monitor.db import Store
from veriprint.monitor.metrics import Metrics

__all__ = ["Monitor"]

log = logging.getLogger(__name__)


@dataclass
class _Running:
    rt: EndpointRuntime
    slot: int
    started: float
    scheduled: float
    deadline: float
    timed_out: threading.Event
    done: threading.Event
    released: bool = False


class Monitor:
    """Checks, stores, measures and alerts.

    Args:
        config: the checked configuration.
        store: the database (default: opened from the configuration).
    """

    def __init__(self, config: MonitorConfig, store: Store | None = None) -> None:
        self.config = config
        self.store = store or Store(config.database_url())
        self.runtimes: dict[str, EndpointRuntime] = {}
        for i, e in enumerate(config.endpoints):
            self.runtimes[e.name] = EndpointRuntime.load(e, f"endpoints[{i}]")
        self.metrics = Metrics(self.store, config)
        self.dispatcher = Dispatcher(self.store, config,
                                     on_attempt=lambda sink, ok: self.metrics.deliveries.labels(
                                         sink, "ok" if ok else "failed").inc())
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.outcomes: list[CheckOutcome] = []  # of this process, newest last (bounded)
        self.started_at = time.time()
        self.heartbeat = time.time()
        self.abandoned = 0

    # --- one check -------------------------------------------------------------------------

    def _run(self, run: _Running) -> None:
        try:
            out = run_check(run.rt, run.slot, self.store, self.config, deadline=run.timed_out,
                            scheduled_at=run.scheduled)
            if not out.skipped:
                self.metrics.observe(out.endpoint, out.duration_s, out.target_s)
            with self._lock:
                self.outcomes.append(out)
                del self.outcomes[:-1000]
            if out.stored is not None and out.stored.alerts:
                self.dispatcher.wake()
        except Exception:
            log.exception("check of %s in slot %d failed", run.rt.cfg.name, run.slot)
        finally:
            run.done.set()
            self._release(run)

    def _release(self, run: _Running) -> None:
        with self._lock:
            if run.released:
                return
            run.released = True
            run.rt.in_flight = False
            run.rt.last_slot = run.slot
            self._running.pop(run.rt.cfg.name, None)
            self.metrics.in_flight.set(len(self._running))
        self._slots.release()

    def _start(self, rt: EndpointRuntime, slot: int, scheduled: float) -> _Running:
        now = time.time()
        run = _Running(rt, slot, now, scheduled, now + rt.cfg.check_timeout, threading.Event(), threading.Event())
        with self._lock:
            rt.in_flight = True
            self._running[rt.cfg.name] = run
            self.metrics.in_flight.set(len(self._running))
        threading.Thread(target=self._run, args=(run,), name=f"check-{rt.cfg.name}", daemon=True).start()
        return run

    def _reap_timeouts(self) -> None:
        now = time.time()
        with self._lock:
            late = [r for r in self._running.values() if now > r.deadline and not r.done.is_set()]
        for run in late:
            run.timed_out.set()
            self.abandoned += 1
            self.metrics.timeouts.labels(run.rt.cfg.name).inc()
            log.warning("%s: check of slot %d passed check_timeout = %g s; recording INCONCLUSIVE",
                        run.rt.cfg.name, run.slot, run.rt.cfg.check_timeout)
            try:
                stored = record_timeout(run.rt, run.slot, self.store, self.config, run.started, run.scheduled)
                if stored is not None and stored.alerts:
                    self.dispatcher.wake()
            except Exception:
                log.exception("could not record the timeout of %s", run.rt.cfg.name)
            self._release(run)

    # --- schedules ---------------------------------------------------------------------------

    def next_due(self, rt: EndpointRuntime, now: float) -> tuple[int, float]:
        """``(slot, due time)`` of the endpoint's next check."""
        cfg = rt.cfg
        slot = slot_of(now, cfg.interval)
        if rt.last_slot is not None and slot <= rt.last_slot:
            slot = rt.last_slot + max(1, round(cfg.interval * 1000))
        return slot, slot / 1000 + jitter_offset(cfg.name, slot, cfg.jitter_s, rt.secret)

    def _tick(self) -> float:
        """Start what is due; seconds until the next check is due."""
        now = time.time()
        due: list[tuple[float, int, EndpointRuntime]] = []
        soonest = 1.0
        for rt in self.runtimes.values():
            if rt.in_flight:
                continue
            slot, at = self.next_due(rt, now)
            if at <= now:
                due.append((at, slot, rt))
            else:
                soonest = min(soonest, at - now)
        for at, slot, rt in sorted(due, key=lambda d: d[0]):
            if not self._slots.acquire(timeout=0.05):
                return 0.05
            self._start(rt, slot, at)
        return max(0.01, soonest)

    def _loop(self) -> None:
        for name, slot in self.store.last_slots().items():
            if name in self.runtimes:
                self.runtimes[name].last_slot = slot
        while not self._stop.is_set():
            self.heartbeat = time.time()
            try:
                self._reap_timeouts()
                wait = self._tick()
            except Exception:
                log.exception("scheduler tick failed")
                wait = 1.0
            self._stop.wait(min(wait, 0.5))

    def start(self) -> None:
        """Start the scheduler and alert delivery threads."""
        self.dispatcher.start()
        self._thread = threading.Thread(target=self._loop, name="veriprint-scheduler", daemon=True)
        self._thread.start()
        log.info("monitoring %d endpoint(s), at most %d check(s) at once, history in %s",
                 len(self.runtimes), self.config.concurrency, _shown(self.config.database_url()))

    def stop(self, grace: float = 10.0) -> None:
        """Stop scheduling; wait up to ``grace`` seconds for running checks, then stop alerts.

        Alert delivery stops at once (pending alerts stay queued in the database for the next
        start), so a webhook that never answers cannot hold the shutdown.
        """
        self._stop.set()
        self.dispatcher.stop()
        if self._thread is not None:
            self._thread.join(5)
        end = time.monotonic() + grace
        while time.monotonic() < end:
            with self._lock:
                if not self._running:
                    break
            self._reap_timeouts()
            time.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and time.time() - self.heartbeat < 30

    # --- once ------------------------------------------------------------------------------

    def run_once(self, alert_timeout: float = 30.0) -> list[CheckOutcome]:
        """Check every endpoint whose current slot has no stored check, then deliver alerts."""
        now = time.time()
        runs: list[_Running] = []
        for rt in self.runtimes.values():
            slot = slot_of(now, rt.cfg.interval)
            while not self._slots.acquire(timeout=0.2):
                self._reap_timeouts()
            runs.append(self._start(rt, slot, now))
        for run in runs:
            while not run.done.wait(0.2):
                self._reap_timeouts()
                if run.released:
                    break
        self.dispatcher.drain(alert_timeout)
        return list(self.outcomes)


def _shown(url: str) -> str:
    from veriprint.monitor.db import shown_url

    return shown_url(url)
