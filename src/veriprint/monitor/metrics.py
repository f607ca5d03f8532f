"""Prometheus metrics, with the official client library.

State that must survive a restart is read from the database on each scrape (cached for
two seconds), so that a restarted monitor, or a dashboard-only process in front of a
database filled by ``--once`` runs, exposes the same series:

* ``veriprint_monitor_endpoint_verdict{endpoint, verdict}``: 1 for the last check's verdict;
* ``veriprint_monitor_last_check_timestamp_seconds{endpoint}`` and
  ``veriprint_monitor_last_conclusive_timestamp_seconds{endpoint}``;
* ``veriprint_monitor_consecutive_inconclusive{endpoint}``;
* ``veriprint_monitor_checks_total{endpoint, verdict}``;
* ``veriprint_monitor_queries_total{endpoint, kind}`` (``fingerprint`` or ``decoy``);
* ``veriprint_monitor_pool_checks_left{endpoint}`` (checks before queries repeat; -1 when
  the endpoint does not rotate) and ``veriprint_monitor_budget_queries_left{endpoint}``;
* ``veriprint_monitor_interrupted_checks{endpoint}`` (attempts that never completed);
* ``veriprint_monitor_alerts{sink, kind, status}``.

Measured in this process: ``veriprint_monitor_check_duration_seconds{endpoint}`` and
``veriprint_monitor_target_wait_seconds{endpoint}`` (histograms: the whole check, and the
part spent waiting for the target), ``veriprint_monitor_checks_in_flight``,
``veriprint_monitor_check_timeouts_total{endpoint}``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from veriprint.monitor.config import MonitorConfig
from veriprint.monitor.db import VERDICTS, Store

__all__ = ["Metrics"]

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _StateCollector(Collector):
    def __init__(self, store: Store, config: MonitorConfig, cache_s: float = 2.0) -> None:
        self.store = store
        self.config = config
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: tuple[float, list[GaugeMetricFamily | CounterMetricFamily]] = (0.0, [])

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with self._lock:
            at, families = self._cached
            if time.monotonic() - at > self.cache_s:
                families = self._families()
                self._cached = (time.monotonic(), families)
        yield from families

    def _families(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        names = [e.name for e in self.config.endpoints]
        latest = self.store.latest()
        conclusive = self.store.last_conclusive()
        verdict = GaugeMetricFamily("veriprint_monitor_endpoint_verdict",
                                    "1 for the verdict of the endpoint's last check", labels=["endpoint", "verdict"])
        last = GaugeMetricFamily("veriprint_monitor_last_check_timestamp_seconds",
                                 "when the endpoint's last check finished", labels=["endpoint"])
        last_ok = GaugeMetricFamily("veriprint_monitor_last_conclusive_timestamp_seconds",
                                    "when the endpoint's last INTACT or TAMPERED check finished", labels=["endpoint"])
        streak = GaugeMetricFamily("veriprint_monitor_consecutive_inconclusive",
                                   "INCONCLUSIVE checks in a row, up to the last one", labels=["endpoint"])
        pool = GaugeMetricFamily("veriprint_monitor_pool_checks_left",
                                 "checks left before queries repeat (-1: the endpoint does not rotate)",
                                 labels=["endpoint"])
        budget = GaugeMetricFamily("veriprint_monitor_budget_queries_left",
                                   "queries left in the last 24 hours' budget (-1: no budget)", labels=["endpoint"])
        evidence = GaugeMetricFamily("veriprint_monitor_sequential_evidence",
                                     "the sequential test's evidence against the intact model over all requests "
                                     "(alarm at 1/alpha)", labels=["endpoint"])
        share = GaugeMetricFamily("veriprint_monitor_routed_share_lower",
                                  "95% lower bound on the share of requests answered by another model",
                                  labels=["endpoint"])
        for name in names:
            c = latest.get(name)
            if c is not None and c.sequential:
                evidence.add_metric([name], float(c.sequential.get("evidence") or 1.0))
                share.add_metric([name], float(c.sequential.get("share_lower") or 0.0))
            for v in VERDICTS:
                verdict.add_metric([name, v], 1.0 if c is not None and c.verdict == v else 0.0)
            if c is not None:
                last.add_metric([name], c.finished_at)
                streak.add_metric([name], c.consecutive_inconclusive)
                pool.add_metric([name], -1 if c.pool_checks_left is None else c.pool_checks_left)
            if name in conclusive:
                last_ok.add_metric([name], conclusive[name])
            cap = self.config.endpoint(name).queries_per_day
            left = cap - self.store.queries_since(name, time.time() - 86400) if cap else -1
            budget.add_metric([name], max(left, 0) if cap else -1)
        checks = CounterMetricFamily("veriprint_monitor_checks", "checks stored, by verdict",
                                     labels=["endpoint", "verdict"])
        queries = CounterMetricFamily("veriprint_monitor_queries", "queries sent by stored checks",
                                      labels=["endpoint", "kind"])
        seen: dict[str, tuple[int, int]] = {}
        counted: set[tuple[str, str]] = set()
        for endpoint, v, n, q, d in self.store.totals():
            checks.add_metric([endpoint, v], n)
            counted.add((endpoint, v))
            fq, dq = seen.get(endpoint, (0, 0))
            seen[endpoint] = (fq + q, dq + d)
        for name in names:
            for v in VERDICTS:
                if (name, v) not in counted:
                    checks.add_metric([name, v], 0)
        for endpoint, (q, d) in seen.items():
            queries.add_metric([endpoint, "fingerprint"], q)
            queries.add_metric([endpoint, "decoy"], d)
        interrupted = GaugeMetricFamily("veriprint_monitor_interrupted_checks",
                                        "attempts that never completed (killed, or still running)",
                                        labels=["endpoint"])
        for endpoint, n in self.store.interrupted().items():
            interrupted.add_metric([endpoint], n)
        alerts = GaugeMetricFamily("veriprint_monitor_alerts", "alerts by sink, kind and delivery status",
                                   labels=["sink", "kind", "status"])
        for sink, kind, status, n in self.store.alert_counts():
            alerts.add_metric([sink, kind, status], n)
        return [verdict, last, last_ok, streak, pool, budget, evidence, share, checks, queries, interrupted, alerts]


class Metrics:
    """The monitor's registry: database-derived state plus this process's measurements."""

    def __init__(self, store: Store, config: MonitorConfig) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(store, config))
        self.duration = Histogram("veriprint_monitor_check_duration_seconds", "wall time of a whole check",
                                  ["endpoint"], buckets=BUCKETS, registry=self.registry)
        self.target_wait = Histogram("veriprint_monitor_target_wait_seconds",
                                     "time a check spent waiting for the target's answers", ["endpoint"],
                                     buckets=BUCKETS, registry=self.registry)
        self.in_flight = Gauge("veriprint_monitor_checks_in_flight", "checks running now", registry=self.registry)
        self.timeouts = Counter("veriprint_monitor_check_timeouts", "checks recorded INCONCLUSIVE after check_timeout",
                                ["endpoint"], registry=self.registry)
        self.deliveries = Counter("veriprint_monitor_alert_deliveries", "webhook delivery attempts",
                                  ["sink", "outcome"], registry=self.registry)

    def observe(self, endpoint: str, duration: float, target_wait: float) -> None:
        self.duration.labels(endpoint).observe(duration)
        self.target_wait.labels(endpoint).observe(target_wait)
