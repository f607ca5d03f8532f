"""The monitor in-process against fake OIP servers on 127.0.0.1: schedules, alerts, metrics, pages."""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))
from testkit.servers.digits import digits_models, tampered_copy
from testkit.servers.fake_oip import FakeOip, torch_model
from testkit.servers.monitor_kit import Receiver, pool_files, write_config
from veriprint.monitor.config import load_config
from veriprint.monitor.db import Store
from veriprint.monitor.service import Monitor
from veriprint.monitor.web import create_app


def test_service_checks_alerts_and_serves_metrics(tmp_path: Path) -> None:
    path, pub, _ = pool_files()
    m = digits_models()
    fake = FakeOip({"good": torch_model(m.model), "bad": torch_model(tampered_copy(m.model, 4)),
                    "hang": torch_model(m.model)}, (1, 8, 8))
    fake.faults["hang"] = "hang"
    hook, slack = Receiver(fail=2), Receiver()
    cfg_path = write_config(
        tmp_path / "monitor.toml", database=f"sqlite:///{tmp_path / 'm.db'}",
        defaults={"fingerprint": path, "pubkey": pub, "interval": 1, "jitter": 0, "pairs_per_check": 2,
                  "pool_warn_checks": 2, "on_pool_exhausted": "wrap", "inconclusive_alert_after": 2, "spec": "probs",
                  "options": {"timeout": "5s", "retries": 0}},
        alerts=[{"name": "hook", "url": hook.url, "backoff": "100ms"},
                {"name": "slack", "url": slack.url, "format": "slack", "backoff": "100ms"}],
        endpoints=[{"name": "good", "target": fake.url("good")}, {"name": "bad", "target": fake.url("bad")},
                   {"name": "down", "target": "http://127.0.0.1:9/v2/models/x"},
                   {"name": "hang", "target": fake.url("hang"), "check_timeout": "1.5s"},
                   {"name": "decoyed", "target": fake.url("good"), "decoys": {"data": "digits", "ratio": 2.0}}])
    config = load_config(cfg_path)
    store = Store(config.database_url())
    mon = Monitor(config, store)
    mon.start()
    try:
        time.sleep(6.5)
    finally:
        mon.stop(grace=5)
        fake.close()
    good = store.checks("good")
    assert len(good) >= 5 and {c.verdict for c in good} == {"INTACT"}
    assert len({c.slot for c in good}) == len(good)
    ordered = sorted(good, key=lambda c: c.slot)
    for a, b in itertools.pairwise(ordered):
        assert not set(a.sample_indices) & set(b.sample_indices), "consecutive checks repeated a query"
        # slots are whole intervals apart; on a loaded machine a slot that could not start in time is skipped,
        # never run twice or late into the next one
        assert b.slot > a.slot and (b.slot - a.slot) % 1000 == 0
    assert any(c.warnings for c in good)  # the 12-pair pool runs low and wraps within these checks
    assert {c.verdict for c in store.checks("bad")} == {"TAMPERED"}
    assert {c.verdict for c in store.checks("down")} == {"INCONCLUSIVE"}
    hung = store.checks("hang")
    assert hung and all(c.verdict == "INCONCLUSIVE" and "check_timeout = 1.5 s" in c.reason for c in hung)
    # the hung endpoint did not hold back the others
    assert len(store.checks("bad")) >= 5
    dec = store.checks("decoyed")
    assert dec and all(c.verdict == "INTACT" and c.decoys == 2 * c.queries for c in dec)
    # one alert per episode and sink; failed deliveries were retried and recorded
    texts = sorted(b["text"].splitlines()[0] for b in slack.bodies)
    assert len(texts) == 3 and sum("is TAMPERED" in t for t in texts) == 1
    assert sum("cannot be checked" in t for t in texts) == 2
    assert sorted(hook.kinds()) == ["inconclusive", "inconclusive", "tampered"]
    assert all(b["dedup_key"] and b["check_id"] for b in hook.bodies)
    assert all("text" in b and "veriprint:" in b["text"] for b in slack.bodies)
    attempts = [t for a in store.alerts() for t in store.alert_attempts(a.id)]
    assert sum(not t.ok for t in attempts) == 2 and sum(t.ok for t in attempts) == 6
    assert all(a.status == "delivered" for a in store.alerts())
    client = TestClient(create_app(store, config, {mon.runtimes["good"].fingerprint.sha256:
                                                   mon.runtimes["good"].fingerprint}, mon.metrics.registry))
    text = client.get("/metrics").text
    assert 'veriprint_monitor_endpoint_verdict{endpoint="bad",verdict="TAMPERED"} 1.0' in text
    assert 'veriprint_monitor_endpoint_verdict{endpoint="good",verdict="INTACT"} 1.0' in text
    assert f'veriprint_monitor_checks_total{{endpoint="good",verdict="INTACT"}} {len(good)}.0' in text
    assert 'veriprint_monitor_consecutive_inconclusive{endpoint="down"}' in text
    assert 'veriprint_monitor_check_duration_seconds_bucket{endpoint="good",le="0.5"}' in text
    assert 'veriprint_monitor_queries_total{endpoint="decoyed",kind="decoy"}' in text
    assert 'veriprint_monitor_check_timeouts_total{endpoint="hang"}' in text
    assert 'veriprint_monitor_last_conclusive_timestamp_seconds{endpoint="good"}' in text
    assert "veriprint_monitor_pool_checks_left" in text
    assert client.get("/").status_code == 200 and "TAMPERED" in client.get("/").text
    assert client.get("/endpoints/good").status_code == 200
    assert client.get("/endpoints/nope").status_code == 404
    page = client.get(f"/checks/{store.checks('bad')[0].id}").text
    assert "flipped" in page and ".png" in page
    png = client.get(f"/fingerprints/{mon.runtimes['good'].fingerprint.sha256}/0/seed.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert client.get("/api/endpoints").json()[0]["name"] == "good"
    hook.close()
    slack.close()


def test_the_dashboard_serves_fresh_endpoints_beside_pool_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import uvicorn

    from veriprint.cli.monitor import _serve

    path, _, _ = pool_files()
    cfg = write_config(tmp_path / "monitor.toml", database=f"sqlite:///{tmp_path / 'm.db'}",
                       endpoints=[{"name": "pool", "target": "http://127.0.0.1:9/v2/models/x", "fingerprint": path}])
    mon = Monitor(load_config(cfg))
    pool = mon.runtimes["pool"]
    # a fresh endpoint's runtime holds a source of checks and no fingerprint file
    mon.runtimes["fresh"] = dataclasses.replace(pool, fingerprint=None, pool=None)
    served: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: served.append(self.config.app))
    assert _serve(mon, checks=False) == 0
    assert len(served) == 1
