"""The adversary benchmark in its quick mode: it runs, and its measurements say what they must."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quick_adversary_benchmark(tmp_path: Path) -> None:
    from benchmarks.studies import adversary

    out = tmp_path / "adversary.md"
    assert adversary.main(["--models", "digits-mlp", "--quick", "--honest", "3", "--after", "4",
                           "--json", str(tmp_path), "--out", str(out)]) == 0
    res = json.loads((tmp_path / "digits-mlp.json").read_text())
    text = out.read_text()
    assert "## digits-mlp" in text and (tmp_path / "adversary-digits-mlp.png").exists()
    rows = {(r["policy"], r["way"], r["tamper"]): r for r in res["rows"]}
    tampers = res["tampers"]
    assert len(tampers) == 5  # no BatchNorm in the MLP: no recalibration
    for t in tampers:
        # a provider that looks at nothing is caught by every way of checking
        assert all(rows[("none", w, t)]["tampered"] > 0 for w in ("default", "fresh boundary", "fresh natural (probs)"))
        # replaying the honest phase's answers defeats a fingerprint sent again, not fresh checks
        assert rows[("replay", "default", t)]["tampered"] == 0
        assert rows[("replay", "fresh boundary", t)]["tampered"] == rows[("none", "fresh boundary", t)]["tampered"]
        # natural checks under probs: the margin router cannot single them out
        assert rows[("margin @1%", "fresh natural (probs)", t)]["tampered"] > 0
    assert sum(v["tampered"] for v in res["false_alarms"].values()) == 0
    roc = res["roc"]
    assert roc["margin"]["fresh boundary"]["tpr_at_1pct"] > 0.9  # boundary queries have tiny margins
    assert roc["margin"]["fresh natural (probs)"]["tpr_at_1pct"] < 0.2  # natural ones do not
    for t in tampers:
        p = res["partial"][t]["fresh natural (probs)"]
        assert p["0.05"] <= p["0.1"] <= p["0.2"]
