"""The monitor as a real process against real MLServer, with its history in a real PostgreSQL
server, alerts to a local webhook receiver, and SIGKILL crashes in the middle of checks."""

from __future__ import annotations

import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from testkit.servers.digits import digits_models
from testkit.servers.fake_oip import FakeOip, torch_model
from testkit.servers.mlserver import MLServer, ServedModel, require_mlserver
from testkit.servers.monitor_kit import MonitorProcess, Receiver, pool_files, run_once, write_config
from testkit.servers.postgres import Postgres, require_postgres
from testkit.servers.processes import free_port
from veriprint.monitor.db import Store

pytestmark = pytest.mark.slow  # a real MLServer and PostgreSQL, ~1 min


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    require_mlserver()
    onnx = digits_models().onnx
    server = MLServer(tmp_path_factory.mktemp("mlserver-monitor"),
                      [ServedModel(n, onnx[n]) for n in ("digits", "digits-tampered")])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    require_postgres()
    pg = Postgres().start()
    try:
        yield pg
    finally:
        pg.stop()


def wait_for(cond, timeout: float, what: str, proc: MonitorProcess | None = None) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{proc.tail()}" if proc else ""))


def in_flight(store: Store, endpoint: str, since: float) -> bool:
    """Whether a check of ``endpoint`` started after ``since`` is running (an attempt without a check)."""
    from sqlalchemy import select

    from veriprint.monitor.db import Attempt

    with store.read() as s:
        return s.scalar(select(Attempt.id).where(Attempt.endpoint == endpoint, Attempt.check_id.is_(None),
                                                 Attempt.started_at > since)) is not None


STORED = re.compile(r"stored check endpoint=(\S+) slot=(\d+) id=(\d+) verdict=(\w+)")


def test_monitor_watches_real_servers_survives_sigkill_and_alerts_once(
        tmp_path: Path, mlserver: MLServer, postgres: Postgres) -> None:
    path, pub, _ = pool_files()
    m = digits_models()
    fake = FakeOip({"digits": torch_model(m.model)}, (1, 8, 8))
    slow = FakeOip({"slow": torch_model(m.model)}, (1, 8, 8))
    slow.delay["slow"] = 0.4  # checks that take a while, so that the kills land inside some
    hook = Receiver()
    cfg = write_config(
        tmp_path / "monitor.toml", database=postgres.url, concurrency=4,
        defaults={"fingerprint": path, "pubkey": pub, "interval": 1, "jitter": 0, "pairs_per_check": 1,
                  "inconclusive_alert_after": 3, "spec": "probs", "options": {"timeout": "5s", "retries": 0}},
        alerts=[{"name": "hook", "url": hook.url, "backoff": "200ms"}],
        endpoints=[{"name": "intact", "target": mlserver.url("digits"), "options": {"classes": 10}},
                   {"name": "tampered", "target": mlserver.url("digits-tampered")},
                   {"name": "stopping", "target": fake.url("digits")},
                   {"name": "slow", "target": slow.url("slow")}])
    log = tmp_path / "monitor.log"
    proc = MonitorProcess(cfg, free_port(), log).start()
    store = Store(postgres.url, migrate=False)
    try:
        wait_for(lambda: len(store.checks("intact")) >= 3 and store.checks("stopping"), 60, "first checks", proc)
        fake.close()  # the "stopping" endpoint goes away
        rng = random.Random(0)
        for _ in range(3):  # crash while a check of "slow" is waiting for its answer, restart
            time.sleep(rng.random())
            since = time.time()
            wait_for(lambda t=since: in_flight(store, "slow", t), 20, "a check in flight", proc)
            proc.kill()
            proc.start()
        wait_for(lambda: (store.latest().get("stopping") is not None
                          and store.latest()["stopping"].consecutive_inconclusive >= 4), 60, "INCONCLUSIVE streak",
                 proc)
        metrics = proc.get("/metrics")
        page = proc.get("/")
        time.sleep(1.5)
    finally:
        code = proc.stop()
        slow.close()
        hook_kinds = Counter((b["endpoint"], b["kind"]) for b in hook.bodies)
        hook.close()
    assert code == 0, proc.tail()
    intact, tampered = store.checks("intact"), store.checks("tampered")
    assert len(intact) >= 6 and {c.verdict for c in intact} == {"INTACT"}, [c.reason for c in intact]
    assert {c.verdict for c in tampered} == {"TAMPERED"}
    stopping = sorted(store.checks("stopping"), key=lambda c: c.slot)
    first_bad = next(i for i, c in enumerate(stopping) if c.verdict != "INTACT")
    assert first_bad >= 1 and {c.verdict for c in stopping[first_bad:]} == {"INCONCLUSIVE"}
    assert "Connection refused" in stopping[-1].reason or "connection failed" in stopping[-1].reason
    # one alert for the tampered endpoint, one after 3 INCONCLUSIVE checks in a row, none for the intact one
    assert hook_kinds[("tampered", "tampered")] == 1
    assert hook_kinds[("stopping", "inconclusive")] == 1
    assert not [k for k in hook_kinds if k[0] in ("intact", "slow")]
    inc_alert = next(a for a in store.alerts(endpoint="stopping") if a.kind == "inconclusive")
    assert store.check(inc_alert.check_id).consecutive_inconclusive == 3  # type: ignore[union-attr]
    # every check the monitor reported stored is in the database exactly once, whole
    logged = [STORED.search(line) for line in log.read_text().splitlines()]
    reported = Counter((g[1], int(g[2])) for g in logged if g)
    assert reported and max(reported.values()) == 1
    rows = {(c.endpoint, c.slot): c for name in ("intact", "tampered", "stopping", "slow") for c in store.checks(name)}
    assert set(reported) <= set(rows)
    assert store.interrupted().get("slow", 0) >= 3  # the killed checks: attempts without a check
    for c in rows.values():
        assert c.verdict in ("INTACT", "TAMPERED", "INCONCLUSIVE") and c.finished_at >= c.started_at
        if c.queries:
            assert len(c.samples) == c.queries == len(c.sample_indices)
    # pool spending covers the interrupted attempts: no two attempts of an endpoint spent the same pair
    # within a pass
    from sqlalchemy import select

    from veriprint.monitor.db import Attempt

    with store.read() as s:
        attempts = list(s.scalars(select(Attempt).where(Attempt.endpoint == "slow").order_by(Attempt.id)))
    starts = [(a.pool_cycle, a.pool_start) for a in attempts if a.pool_units]
    assert len(starts) == len(set(starts))
    assert len(attempts) > len(store.checks("slow"))
    assert 'veriprint_monitor_endpoint_verdict{endpoint="tampered",verdict="TAMPERED"} 1.0' in metrics
    assert 'data-endpoint="intact" data-verdict="INTACT"' in page
    store.close()


def test_once_for_cron_with_postgres(tmp_path: Path, mlserver: MLServer, postgres: Postgres) -> None:
    path, pub, _ = pool_files()
    cfg = write_config(
        tmp_path / "monitor.toml", database=postgres.url,
        defaults={"fingerprint": path, "pubkey": pub, "interval": "1h", "spec": "top1"},
        endpoints=[{"name": "intact", "target": mlserver.url("digits")}])
    r = run_once(cfg)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("intact: INTACT (all 8 samples match")
    r = run_once(cfg)  # a second run in the same slot (a CronJob may start a job twice) checks nothing
    assert r.returncode == 0 and "already checked in this slot" in r.stdout
    assert len(Store(postgres.url, migrate=False).checks("intact")) == 1
    cfg = write_config(
        tmp_path / "monitor.toml", database=postgres.url,
        defaults={"fingerprint": path, "pubkey": pub, "interval": "1h", "spec": "probs"},
        endpoints=[{"name": "intact", "target": mlserver.url("digits")},
                   {"name": "tampered", "target": mlserver.url("digits-tampered")}])
    r = run_once(cfg)
    assert r.returncode == 1 and "tampered: TAMPERED" in r.stdout, r.stdout + r.stderr
