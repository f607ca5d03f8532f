"""A bounded load test: 100 endpoints checked concurrently on loopback, no check lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.speed.monitor_load import run, to_markdown

pytestmark = pytest.mark.slow  # ~40 s: 100 endpoints for 12 s, plus start and stop


def test_100_endpoints_no_check_lost(tmp_path: Path) -> None:
    r = run(endpoints=100, seconds=12, interval=1.0, concurrency=16, mlserver=False, workdir=tmp_path)
    assert r["exit_code"] == 0
    assert (r["lost"], r["duplicated"], r["open_attempts_after_stop"]) == (0, 0, 0), r
    assert r["verdicts"] == {"INTACT": r["checks"]}
    assert r["checks_per_s"] >= 20, r  # a floor far below what 2 cores do, for a busy CI machine
    assert "checks/s" in to_markdown(r)
