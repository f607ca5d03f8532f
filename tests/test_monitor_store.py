"""The history database: migrations, one row per slot, alert rules, crash-safe pool spending."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from veriprint.monitor.db import Base, Store


def test_migrations_create_exactly_the_models(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    with store.engine.connect() as c:
        assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []
        assert MigrationContext.configure(c).get_current_revision() == "0002"
    assert set(inspect(store.engine).get_table_names()) >= {"checks", "attempts", "alerts", "alert_attempts"}
    Store(f"sqlite:///{tmp_path / 'm.db'}")  # upgrading an up-to-date database is a no-op


def row(slot: int, verdict: str, endpoint: str = "e") -> dict[str, Any]:
    return {"endpoint": endpoint, "slot": slot, "scheduled_at": slot / 1000, "started_at": slot / 1000,
            "finished_at": slot / 1000 + 1, "target": "http://x", "spec": "top1", "fingerprint_sha256": "f" * 64,
            "signature": "valid", "model_hash": "m", "verdict": verdict, "reason": verdict.lower(), "queries": 4,
            "decoys": 0, "compared": 4, "mismatches": int(verdict == "TAMPERED"), "ambiguous": 0, "duration_s": 0.1,
            "target_s": 0.05, "pool_cycle": 0, "pool_start": 0, "pool_units": [0, 1], "pool_checks_left": 5,
            "sample_indices": [0, 1, 2, 3], "samples": [], "tolerance": {"floor": 1e-3}, "warnings": []}


def store_all(store: Store, verdicts: str, after: int = 2) -> list[tuple[str, ...]]:
    kinds = []
    for i, v in enumerate(verdicts):
        verdict = {"I": "INTACT", "T": "TAMPERED", "?": "INCONCLUSIVE"}[v]
        slot = (i + 1) * 1000
        a = store.begin("e", slot, "f" * 64, 0, 2 * i, [2 * i, 2 * i + 1], 4)
        assert a is not None
        s = store.complete(a, row(slot, verdict), sinks=("hook", "slack"), inconclusive_after=after, payload={})
        assert s is not None
        kinds.append(s.alerts)
    return kinds


def test_alerts_fire_once_per_episode(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    kinds = store_all(store, "IITTT?I???I")
    assert kinds == [(), (), ("tampered",), (), (), (), ("resolved",), (), ("inconclusive",), (), ("resolved",)]
    alerts = store.alerts()
    assert len(alerts) == 2 * 4 and {a.sink for a in alerts} == {"hook", "slack"}
    assert len({a.dedup_key for a in alerts}) == 4
    assert store.latest()["e"].consecutive_inconclusive == 0
    assert store.checks("e")[1].consecutive_inconclusive == 3


def test_a_slot_is_stored_once_and_pool_spending_counts_interrupted_attempts(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    a = store.begin("e", 1000, "f" * 64, 0, 0, [0, 1], 4)
    assert a is not None
    # the process dies here: the attempt is recorded, the check is not
    assert store.pool_position("e", "f" * 64) == (0, 2)  # the pairs count as spent: the provider saw them
    assert store.interrupted() == {"e": 1}
    b = store.begin("e", 1000, "f" * 64, 0, 2, [2, 3], 4)  # the restarted monitor retries the slot
    assert b is not None and b != a
    assert store.complete(b, row(1000, "INTACT"), sinks=(), inconclusive_after=3, payload={}) is not None
    assert store.begin("e", 1000, "f" * 64, 0, 4, [4, 5], 4) is None  # the slot has its check
    assert store.complete(a, row(1000, "TAMPERED"), sinks=(), inconclusive_after=3, payload={}) is None
    assert len(store.checks("e")) == 1 and store.checks("e")[0].verdict == "INTACT"
    assert store.queries_since("e", 0) == 8
    assert store.pool_position("e", "0" * 64) == (0, 0)  # a new fingerprint starts a new pool
