"""The dashboard reads a fixed number of queries per page and never blocks its event loop."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from starlette.routing import Route
from starlette.testclient import TestClient

from veriprint.monitor.config import parse_config
from veriprint.monitor.db import Alert, AlertAttempt, Check, Store
from veriprint.monitor.web import create_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _config(tmp_path: Path, names: list[str]) -> Any:
    (tmp_path / "fp.vpf").write_bytes(b"x")
    return parse_config({"endpoints": [{"name": n, "target": f"http://127.0.0.1:1/v2/models/{n}",
                                        "fingerprint": "fp.vpf"} for n in names]}, base=tmp_path)


def _check(endpoint: str, i: int) -> Check:
    return Check(endpoint=endpoint, slot=i, attempt_id=0, scheduled_at=1000.0 + i, started_at=1000.0 + i,
                 finished_at=1001.0 + i, target="http://127.0.0.1:1", spec="top1", fingerprint_sha256="0" * 64,
                 signature="none", model_hash="", verdict="TAMPERED" if i % 3 == 0 else "INTACT", reason="r",
                 queries=4, decoys=0, compared=4, mismatches=1 if i % 3 == 0 else 0, ambiguous=0,
                 duration_s=0.1, target_s=0.1, pool_cycle=0, pool_start=0, pool_units=[], pool_checks_left=None,
                 sample_indices=[], samples=[], tolerance={}, warnings=[], consecutive_inconclusive=0,
                 alert_open=i % 3 == 0)


def _fill(store: Store, names: list[str], per_endpoint: int) -> None:
    with store.sessions.begin() as s:
        for n in names:
            for i in range(per_endpoint):
                c = _check(n, i)
                s.add(c)
                s.flush()
                if i % 3 == 0:
                    a = Alert(dedup_key=f"{n}-{i}", endpoint=n, check_id=c.id, kind="tampered", sink="hook",
                              status="sent", created_at=1001.0 + i, payload={}, attempts=1, next_attempt_at=0.0,
                              delivered_at=1002.0 + i, last_error="")
                    s.add(a)
                    s.flush()
                    s.add(AlertAttempt(alert_id=a.id, at=1002.0 + i, ok=True, status_code=200, error="", seconds=0.01))


def _count_queries(store: Store) -> list[str]:
    seen: list[str] = []
    event.listen(store.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *a: seen.append(statement))
    return seen


@pytest.mark.parametrize("page", ["/", "/alerts", "/api/endpoints"])
def test_a_page_reads_the_same_number_of_queries_for_2_or_12_endpoints(tmp_path: Path, page: str) -> None:
    counts = []
    for k in (2, 12):
        names = [f"m{i}" for i in range(k)]
        (tmp_path / str(k)).mkdir()
        store = Store(f"sqlite:///{tmp_path / f'{k}.db'}")
        _fill(store, names, per_endpoint=6)
        client = TestClient(create_app(store, _config(tmp_path / str(k), names), {}))
        seen = _count_queries(store)
        r = client.get(page)
        assert r.status_code == 200, r.text
        counts.append(len([q for q in seen if q.lstrip().upper().startswith(("SELECT", "WITH"))]))
        store.close()
    assert counts[0] == counts[1], f"{page}: {counts[0]} queries for 2 endpoints, {counts[1]} for 12"


def test_recent_returns_each_endpoints_newest_checks_newest_first(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    _fill(store, ["a", "b"], per_endpoint=7)
    recent = store.recent(3)
    assert sorted(recent) == ["a", "b"]
    for name, checks in recent.items():
        assert [c.slot for c in checks] == [6, 5, 4]
        assert [c.slot for c in checks] == [c.slot for c in store.checks(name, limit=3)]
    attempts = store.attempts_of([a.id for a in store.alerts(limit=100)])
    assert all(len(v) == 1 for v in attempts.values()) and len(attempts) == 6
    assert store.attempts_of([]) == {}
    store.close()


def test_handlers_are_plain_functions_so_a_slow_query_runs_off_the_event_loop(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    app = create_app(store, _config(tmp_path, ["a"]), {})
    routes = [r for r in app.routes if isinstance(r, Route)]
    assert routes and not [r.path for r in routes if inspect.iscoroutinefunction(r.endpoint)]
    # and really concurrent: /healthz answers while a page waits on a slow database read
    slow = store.latest

    def latest() -> dict[str, Check]:
        time.sleep(1.5)
        return slow()

    store.latest = latest  # type: ignore[method-assign]
    import threading
    client = TestClient(app)
    done: dict[str, float] = {}

    def index() -> None:
        client.get("/")
        done["index"] = time.monotonic()

    with client:
        t = threading.Thread(target=index)
        t.start()
        time.sleep(0.2)
        assert client.get("/healthz").status_code == 200
        done["health"] = time.monotonic()
        t.join()
    assert done["health"] < done["index"], "the health check waited for the slow page"
    store.close()
