"""``veriprint demo --lm``: the intact model and every tamper through the local completions API."""

from __future__ import annotations

import pytest

from veriprint.cli.main import main
from veriprint.lm import demo as lm_demo
from veriprint.lm.builder import LmFingerprintConfig
from veriprint.lm.model import load_lm

SMALL = LmFingerprintConfig(prompts=4, max_tokens=2, steps=1, candidates=8, top_k=4, budget="none")


@pytest.mark.slow  # a fingerprint and eight served models: a minute or two on 2 cores
def test_rows_cover_the_intact_model_and_every_tamper() -> None:
    lm = load_lm("fortunes-lm")
    fp = lm_demo.demo_fingerprint(lm, SMALL)
    seen: list[str] = []
    rows = lm_demo.verify_rows(fp, lm, progress=seen.append)
    assert [r.label for r in rows] == ["intact model", *(name for name, _ in lm_demo.TAMPERS)] == seen
    intact, *tampered = rows
    assert all(v[0] == "INTACT" and v[1] == 0 for v in intact.verdicts.values())
    assert all(r.verdicts["logprobs:5"][0] == "TAMPERED" for r in tampered)  # logprobs see every change
    table = lm_demo.render(rows)
    assert table.count("\n") == len(rows) + 1 and "false alarm" not in table


def test_the_classifier_flags_are_refused_with_lm(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--lm", "--regenerate"]) == 2
    err = capsys.readouterr().err
    assert "--regenerate is for the classifier demo" in err and "Traceback" not in err
