"""The deployments benchmark's quick mode runs and its counts hold what the library promises."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.lib import ROOT

sys.path.insert(0, str(Path(__file__).parent))


@pytest.mark.slow
def test_quick_deployments_benchmark_counts_false_alarms_and_detection(tmp_path: Path) -> None:
    out, raw, png = tmp_path / "d.md", tmp_path / "d.json", tmp_path / "d.png"
    old = ["exact CPU", "2 threads", "onnxruntime, optimized", "onnxruntime, plain", "autocast-bf16", "bf16 weights",
           "float64"]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.studies.deployments", "--quick", "--checks", "30",
                           "--deployments", *old, "--out", str(out), "--json", str(raw), "--plot", str(png)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| exact CPU | fixed floor |" in out.read_text() and png.stat().st_size > 10_000
    rows = {(r["deployment"], r["kind"]): r for r in json.loads(raw.read_text())["rows"]}
    deployments = {d for d, _ in rows}
    assert set(old) == deployments
    for (d, kind), r in rows.items():
        if not r["tally"]:
            continue
        assert sum(r["tally"]["top1"].values()) == 30
        if kind in ("profile", "enrolled") or d == "exact CPU":  # made for these numerics: never an alarm
            assert r["tally"]["top1"]["alarms"] == 0 and r["tally"]["logits"]["alarms"] == 0, (d, kind, r)
    # a float32 fingerprint's logits are not what bfloat16 serving answers: every logits check alarms
    assert rows[("bf16 weights", "fixed floor")]["tally"]["logits"]["alarms"] == 30
    exact = rows[("exact CPU", "fixed floor")]
    assert exact["cases"] >= 6 and exact["caught"]["logits"] == exact["cases"]  # the quick suite: casts, 8-bit, pruning, noise, edits
    again = tmp_path / "again.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.studies.deployments", "--render", str(raw), "--out", str(again)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert table == [line for line in again.read_text().splitlines() if line.startswith("| ")]


def test_tampered_copies_behind_real_servers_are_caught_as_in_process(tmp_path: Path) -> None:
    """The quick mode through a real MLServer and TorchServe (every tampered copy of the quick
    suite served by the server) and a child process with ATen's default kernels."""
    from testkit.servers.mlserver import require_mlserver
    from testkit.servers.torchserve import require_torchserve

    require_mlserver()
    require_torchserve()
    out, raw = tmp_path / "d.md", tmp_path / "d.json"
    deps = ["exact CPU", "onnxruntime, optimized", "MLServer", "TorchServe", "ATen default"]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.studies.deployments", "--quick", "--checks", "5",
                           "--deployments", *deps, "--out", str(out), "--json", str(raw)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["deployment"], r["kind"]): r for r in json.loads(raw.read_text())["rows"]}
    assert {d for d, _ in rows} == set(deps)
    for (d, kind), r in rows.items():
        if not r["tally"]:
            continue
        assert all(t["alarms"] == 0 and sum(t.values()) == 5 for t in r["tally"].values()), (d, kind, r)
        assert 0 <= r["max_dz"] < r["floor"], (d, kind, r["max_dz"])
        ref = rows[("onnxruntime, optimized" if d in ("MLServer", "TorchServe") else "exact CPU", kind)]
        assert r["cases"] >= 6 and r["caught_cases"] == ref["caught_cases"], (d, kind)
    assert len(rows[("TorchServe", "fixed floor")]["caught_cases"]["logits"]) == rows[("TorchServe", "fixed floor")]["cases"]
    assert "Every one caught exactly the cases its reference caught." in out.read_text()


def _refuse(constant: str) -> None:
    raise ValueError(f"non-standard JSON constant {constant}")


def test_rows_not_measured_are_written_as_null_and_read_back_as_nan() -> None:
    from benchmarks.lib.deployments import Row, Tally, _row_dict, _row_from, _strict

    row = Row(model="m", deployment="bf16 weights", kind="enrolled", samples=0, floor=math.nan,
              ambiguous={}, tally={"top1": Tally()}, note="refused")
    text = json.dumps(_strict({"rows": [_row_dict(row)]}), allow_nan=False)
    raw = json.loads(text, parse_constant=_refuse)  # a strict parser reads it
    assert raw["rows"][0]["floor"] is None and raw["rows"][0]["max_dz"] is None
    back = _row_from(raw["rows"][0])
    assert math.isnan(back.floor) and math.isnan(back.max_dz) and back.note == "refused"
    for path in (ROOT / "docs" / "measurements" / "deployments-runs").glob("*.json"):  # the stored runs are standard JSON too
        json.loads(path.read_text(), parse_constant=_refuse)
