"""The zoo detection benchmark's table, from rows made by hand."""

from __future__ import annotations

from typing import Any

from benchmarks.studies.zoo_detection import EDITS, render


def _row(attack: str, verdict: str, dz: float, flipped: bool) -> dict[str, Any]:
    return {"model": "m", "queries": 4, "intact": "INTACT", "attack": attack, "verdict": verdict, "mismatches": 1,
            "flipped": flipped, "max_dz": dz, "flip_rate": 0.0}


def test_the_table_counts_verdicts_changes_and_flips() -> None:
    rows = [_row(f"weight-edit seed {s}", "TAMPERED" if s < 3 else "INTACT", 0.0 if s >= 15 else 1e-3, s < 4)
            for s in range(EDITS)]
    rows += [_row("cast float16", "TAMPERED", 1.0, True), _row("quantize 8 bits", "INCONCLUSIVE", 1.0, True)]
    line = next(x for x in render(rows).splitlines() if x.startswith("| `m` |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["`m`", "INTACT", f"3 / 0 / {EDITS - 3}", "15", "4", "0.001", "TAMPERED (1 of 4)",
                     "INCONCLUSIVE (1 of 4)"]
