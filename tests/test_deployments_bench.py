"""The deployments benchmark's quick mode runs and its counts hold what the library promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_deployments_benchmark_counts_false_alarms_and_detection(tmp_path: Path) -> None:
    out, raw, png = tmp_path / "d.md", tmp_path / "d.json", tmp_path / "d.png"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.deployments", "--quick", "--no-mlserver", "--checks",
                           "30", "--out", str(out), "--json", str(raw), "--plot", str(png)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| exact CPU | fixed floor |" in out.read_text() and png.stat().st_size > 10_000
    rows = {(r["deployment"], r["kind"]): r for r in json.loads(raw.read_text())["rows"]}
    deployments = {d for d, _ in rows}
    assert {"exact CPU", "2 threads", "onnxruntime, optimized", "onnxruntime, plain", "autocast-bf16",
            "bf16 weights", "float64"} <= deployments
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
    proc = subprocess.run([sys.executable, "-m", "benchmarks.deployments", "--render", str(raw), "--out", str(again)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert table == [line for line in again.read_text().splitlines() if line.startswith("| ")]
