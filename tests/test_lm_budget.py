"""The LM fingerprint's time budget: counted work, the cached speed, trimming, refusal, determinism."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from veriprint.errors import ConfigError
from veriprint.lm.builder import LmFingerprintConfig, make_lm_fingerprint, shipped_seeds
from veriprint.lm.model import tiny_lm
from veriprint.lm.plan import (
    CANDIDATES_FLOOR,
    LM_OPS,
    ROUNDS_KEEP,
    calibrate_lm_speed,
    lm_plan_line,
    plan_lm,
    predict_lm,
)
from veriprint.pipeline.speed import Speed

SMALL = LmFingerprintConfig(prompts=4, steps=2, candidates=8, top_k=4)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: a tiny model gains nothing from more, and on a shared machine a
    second thread waiting on a busy core makes every pass many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_lm(0)


def speed(per: float = 1e-3) -> Speed:
    """A speed proportional to the batch: every kind of pass costs ``per`` seconds per item."""
    return Speed({op: {1: per} for op in LM_OPS}, 0)


def test_prediction_counts_every_stage_and_grows_with_the_work() -> None:
    sp = speed()
    base = predict_lm(sp, pool=48, steps=4, rounds=8, candidates=48, prompts=32)
    assert set(base) == {"floor", "search", "answers", "reach"} and all(v > 0 for v in base.values())
    assert predict_lm(sp, pool=48, steps=4, rounds=4, candidates=48, prompts=32)["search"] < base["search"]
    assert predict_lm(sp, pool=48, steps=4, rounds=8, candidates=16, prompts=32)["search"] < base["search"]
    fewer = predict_lm(sp, pool=32, steps=4, rounds=8, candidates=48, prompts=32)
    assert fewer["floor"] < base["floor"] and fewer["search"] < base["search"]
    # the noise floor: 7 variants plus the reference, T steps each, KV cache one prompt at a time
    assert base["floor"] == pytest.approx(1e-3 * 48 * (4 * 7 + 1))


def test_a_plan_that_fits_changes_nothing_and_none_times_nothing() -> None:
    kw: dict[str, Any] = {"pool": 48, "prompts": 32, "steps": 4, "rounds": 8, "candidates": 48, "length": 12}
    pl = plan_lm(None, budget="1h", speed=speed(), **kw)
    assert (pl.rounds, pl.candidates, pl.pool) == (8, 48, 48) and not pl.trimmed
    assert pl.total_s == pytest.approx(sum(predict_lm(speed(), pool=48, steps=4, rounds=8, candidates=48,
                                                      prompts=32).values()))
    none = plan_lm(None, budget="none", **kw)  # no model, no speed: nothing may be timed
    assert none.budget_s is None and none.predicted == {} and none.speed is None
    assert "nothing timed" in lm_plan_line(none.to_dict())


def test_trimming_order_rounds_then_candidates_then_seeds() -> None:
    sp = speed()
    kw: dict[str, Any] = {"pool": 48, "prompts": 32, "steps": 4, "rounds": 8, "candidates": 48, "length": 12,
                          "speed": sp}

    def cost(rounds: int, candidates: int, pool: int) -> float:
        return sum(predict_lm(sp, pool=pool, steps=4, rounds=rounds, candidates=candidates, prompts=32).values())

    # just over the plan with ROUNDS_KEEP rounds: only rounds are trimmed
    pl = plan_lm(None, budget=cost(6, 48, 48) + 1e-9, **kw)
    assert (pl.rounds, pl.candidates, pl.pool) == (6, 48, 48) and pl.trimmed == ["rounds 8 -> 6"]
    assert pl.total_s <= pl.budget_s  # type: ignore[operator]
    # below it: rounds at ROUNDS_KEEP, then candidates
    pl = plan_lm(None, budget=cost(ROUNDS_KEEP, 30, 48) + 1e-9, **kw)
    assert (pl.rounds, pl.candidates, pl.pool) == (ROUNDS_KEEP, 30, 48)
    # below the candidates' floor: the seeds searched, never below the prompts kept
    pl = plan_lm(None, budget=cost(ROUNDS_KEEP, CANDIDATES_FLOOR, 40) + 1e-9, **kw)
    assert (pl.rounds, pl.candidates, pl.pool) == (ROUNDS_KEEP, CANDIDATES_FLOOR, 40)
    assert pl.trimmed == ["rounds 8 -> 4", "candidates 48 -> 16", "pool 48 -> 40"]
    # then rounds, down to one
    pl = plan_lm(None, budget=cost(2, CANDIDATES_FLOOR, 32) + 1e-9, **kw)
    assert (pl.rounds, pl.candidates, pl.pool) == (2, CANDIDATES_FLOOR, 32)
    assert "time budget" in pl.summary() and "trimmed rounds 8 -> 2" in pl.summary()


def test_a_budget_below_the_smallest_plan_is_refused_with_what_it_needs() -> None:
    sp = speed()
    least = sum(predict_lm(sp, pool=32, steps=4, rounds=1, candidates=CANDIDATES_FLOOR, prompts=32).values())
    with pytest.raises(ConfigError, match=rf"give --budget {math.ceil(least)}s or more"):
        plan_lm(None, budget=least / 2, pool=48, prompts=32, steps=4, rounds=8, candidates=48, length=12, speed=sp)
    for bad in ("soon", "-5s", "0"):
        with pytest.raises(ValueError, match="time budget"):
            LmFingerprintConfig(budget=bad)


def test_speed_is_calibrated_once_and_cached(tiny: Any, tmp_path: Path) -> None:
    sizes = {"forward": [1, 4], "gradient": [1]}
    first = calibrate_lm_speed(tiny, sizes, length=8, steps=2, directory=tmp_path, repeats=1)
    assert not first.cached and first.seconds > 0 and set(first.points) == {"forward", "gradient"}
    files = list(tmp_path.glob("lm-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["facts"]["kind"] == "lm"
    again = calibrate_lm_speed(tiny, sizes, length=8, steps=2, directory=tmp_path, repeats=1)
    assert again.cached and again.seconds == 0 and again.points == first.points
    more = calibrate_lm_speed(tiny, {"forward": [1, 4, 7]}, length=8, steps=2, directory=tmp_path, repeats=1)
    assert not more.cached and more.points["forward"][4] == first.points["forward"][4] and 7 in more.points["forward"]
    other = calibrate_lm_speed(tiny, sizes, length=9, steps=2, directory=tmp_path, repeats=1)
    assert not other.cached and len(list(tmp_path.glob("lm-*.json"))) == 2
    with pytest.raises(ValueError, match="expected passes"):
        calibrate_lm_speed(tiny, {"sideways": [1]}, length=8, steps=2, directory=tmp_path)


def test_budget_none_times_nothing_and_the_plan_is_stored(tiny: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERIPRINT_SPEED_CACHE", str(tmp_path / "cache"))
    fp = make_lm_fingerprint(tiny, LmFingerprintConfig(prompts=4, steps=2, candidates=8, top_k=4, budget="none"),
                             seeds=shipped_seeds()[:8])
    assert not (tmp_path / "cache").exists()  # no pass was timed
    assert fp.meta["plan"]["budget_s"] is None and fp.meta["plan"]["predicted"] == {}
    saved = fp.save(tmp_path / "x.vpf")
    from veriprint.lm.fingerprint import LmFingerprint

    assert LmFingerprint.load(tmp_path / "x.vpf").meta["plan"] == saved.meta["plan"]


def _same(a: Any, b: Any) -> None:
    assert a.prompts == b.prompts
    for name, t in a.tensors.items():
        assert torch.equal(t, b.tensors[name]), name


def test_same_command_and_seed_give_the_same_fingerprint(tiny: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With a fresh cache, a budget that trims: the first run calibrates, the second reads
    the stored speed; both plan alike and make the same fingerprint."""
    monkeypatch.setenv("VERIPRINT_SPEED_CACHE", str(tmp_path / "cache"))
    seeds = shipped_seeds()[:10]
    cfg = LmFingerprintConfig(prompts=4, steps=6, candidates=12, top_k=4, patience=6, seed=3)
    free = make_lm_fingerprint(tiny, cfg, seeds=seeds)  # auto: 10 minutes, nothing trimmed
    assert free.meta["plan"]["trimmed"] == [] and free.meta["plan"]["speed"]["cached"] is False
    pred = free.meta["plan"]["predicted"]
    sp = Speed({op: {int(b): s for b, s in p.items()} for op, p in free.meta["plan"]["speed"]["points"].items()}, 0)
    least = sum(predict_lm(sp, pool=4, steps=cfg.max_tokens, rounds=1, candidates=cfg.candidates,
                           prompts=4).values())
    budget = f"{(least + sum(pred.values())) / 2:.6f}"  # between the smallest plan and the full one: trims
    cfg_b = dataclasses.replace(cfg, budget=budget)
    one = make_lm_fingerprint(tiny, cfg_b, seeds=seeds)
    two = make_lm_fingerprint(tiny, cfg_b, seeds=seeds)
    assert one.meta["plan"]["trimmed"] and one.meta["plan"]["trimmed"] == two.meta["plan"]["trimmed"]
    assert two.meta["plan"]["speed"]["cached"] is True
    assert {k: one.meta["plan"][k] for k in ("rounds", "candidates", "pool")} == \
        {k: two.meta["plan"][k] for k in ("rounds", "candidates", "pool")}
    _same(one, two)
    _same(free, make_lm_fingerprint(tiny, cfg, seeds=seeds))
    assert os.listdir(tmp_path / "cache")


def test_cli_budget_and_inspect_show_the_plan(tiny: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from veriprint.cli.main import main

    folder = tmp_path / "tiny"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("\n".join(shipped_seeds()[:8]))
    out = tmp_path / "t.vpf"
    common = ["fingerprint", "--model", str(folder), "--seed-texts", str(seeds), "--prompts", "3",
              "--search-steps", "1"]
    assert main([*common, "--out", str(out), "--budget", "none"]) == 0
    text = capsys.readouterr().out
    assert "no time budget: nothing timed or predicted" in text and "reach (first order)" in text
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "plan: no time budget" in text and "top1-token +-5%" in text and "model.embed_tokens.weight" in text
    assert main([*common, "--out", str(out), "--budget", "5min"]) == 0
    assert "time budget 300 s: predicted" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    assert "plan: time budget 300 s" in capsys.readouterr().out
    assert main([*common, "--out", str(tmp_path / "no.vpf"), "--budget", "0.001"]) == 2
    assert "give --budget" in capsys.readouterr().err and not (tmp_path / "no.vpf").exists()
