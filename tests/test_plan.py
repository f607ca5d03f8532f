"""The plan stage: time and memory budgets (veriprint.pipeline.plan)."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from veriprint.errors import ConfigError
from veriprint.pipeline import FingerprintConfig, make_fingerprint
from veriprint.pipeline.generate import GenerationConfig
from veriprint.pipeline.plan import (
    BAG_FLOOR,
    BAG_KEEP,
    STEPS_FLOOR,
    apply_plan,
    parse_bytes,
    parse_duration,
    plan,
    predict,
    resolve,
)
from veriprint.pipeline.speed import Speed

#: A fake calibration: seconds per sample, no per-batch overhead.
PROBE = Speed.per_sample(forward_s=0.01, step_s=0.02, backward_s=0.03, bytes_per_sample=10 * 2**20)


def _plan(budget: float | None, **kw: object) -> object:
    args: dict[str, object] = dict(bag=500, steps=1000, select=8, n_data=10_000, boundary=True, refine=True,
                                   twins=True, budget_s=budget, memory_bytes=2**30, batch=500)
    args.update(kw)
    return plan(PROBE, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0), ("45", 45.0),
                                               (" 2 min ", 120.0), (30, 30.0), ("5min", 300.0), ("1d", 86400.0),
                                               ("500ms", 0.5), ("1.5H", 5400.0)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_none_and_auto() -> None:
    assert parse_duration("none") is None
    assert math.isnan(parse_duration("auto"))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "ten minutes", "-5s", "0", "5 days", "0ms", 0, -1.0, float("inf"), True])
def test_parse_duration_refuses(bad: object) -> None:
    with pytest.raises(ConfigError, match="time budget"):
        parse_duration(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "n"), [("512M", 512 * 2**20), ("2G", 2 * 2**30), ("2.5GB", int(2.5 * 2**30)),
                                         ("1000", 1000), ("64KiB", 64 * 2**10)])
def test_parse_bytes(text: str, n: int) -> None:
    assert parse_bytes(text) == n


@pytest.mark.parametrize("bad", ["", "lots", "-1G", "0", "2X", "1000ib"])
def test_parse_bytes_refuses(bad: str) -> None:
    with pytest.raises(ConfigError, match="memory budget"):
        parse_bytes(bad)


def test_config_refuses_bad_budgets_with_the_field_named() -> None:
    with pytest.raises(ConfigError, match=r"FingerprintConfig\.budget.*'soon'"):
        FingerprintConfig(budget="soon")
    with pytest.raises(ConfigError, match=r"FingerprintConfig\.max_memory"):
        FingerprintConfig(max_memory="much")
    with pytest.raises(ConfigError, match=r"FingerprintConfig\.pool"):
        FingerprintConfig(pool=-1)


def test_stored_configs_without_a_budget_had_none() -> None:
    d = FingerprintConfig().to_dict()
    del d["budget"]
    assert FingerprintConfig.from_dict(d).budget == "none"
    assert FingerprintConfig().budget == "auto"


def test_auto_budget_depends_on_the_device() -> None:
    assert resolve("auto", "1G", "cpu") == (600.0, 2**30)
    assert resolve("auto", "1G", "cuda")[0] == 60.0
    assert resolve("none", "1G", "cpu")[0] is None
    assert 0 < resolve("none", "auto", "cpu")[1] <= 1.0 * 2**30


def test_a_run_that_fits_is_unchanged() -> None:
    pl = _plan(budget=1e9)
    assert (pl.bag, pl.steps, pl.trimmed, pl.over) == (500, 1000, [], False)  # type: ignore[attr-defined]
    cfg = FingerprintConfig(max_memory="64G")
    pl2 = plan(PROBE, bag=cfg.bag, steps=cfg.generation.steps, select=8, n_data=10_000, boundary=True, refine=True,
               twins=True, budget_s=None, memory_bytes=64 * 2**30, batch=cfg.generation.batch_size)
    assert apply_plan(cfg, pl2) is cfg


def test_trim_order_bag_then_steps_then_pool_then_bag() -> None:
    def total(bag: int, steps: int, pool: int = 10_000) -> float:
        return sum(predict(PROBE, bag=bag, steps=steps, pool=pool, batch=102, boundary=True, refine=True,
                           twins=True, queries=8).values())

    # A budget that only the bag needs to give way for.
    pl = _plan(budget=(total(500, 1000) + total(BAG_KEEP, 1000)) / 2)
    assert BAG_KEEP < pl.bag < 500 and pl.steps == 1000 and pl.pool == 10_000  # type: ignore[attr-defined]
    # Tighter: the bag at BAG_KEEP, then the steps.
    pl = _plan(budget=(total(BAG_KEEP, 1000) + total(BAG_KEEP, STEPS_FLOOR)) / 2)
    assert pl.bag == BAG_KEEP and STEPS_FLOOR < pl.steps < 1000 and pl.pool == 10_000  # type: ignore[attr-defined]
    assert pl.total_s <= pl.budget_s  # type: ignore[attr-defined]
    # Tighter still: the pool, then the bag below BAG_KEEP.
    pl = _plan(budget=total(BAG_KEEP, STEPS_FLOOR) * 0.5)
    assert pl.steps == STEPS_FLOOR and BAG_FLOOR <= pl.bag < BAG_KEEP and pl.pool < 10_000  # type: ignore[attr-defined]
    assert pl.pool >= pl.bag and not pl.over  # type: ignore[attr-defined]
    assert [t.split()[0] for t in pl.trimmed] == ["bag", "steps", "pool"]  # type: ignore[attr-defined]
    assert pl.total_s <= pl.budget_s  # type: ignore[attr-defined]


def test_an_impossible_budget_keeps_the_smallest_plan_and_says_so() -> None:
    pl = _plan(budget=0.001)
    assert pl.over and pl.steps == 0 and pl.bag == max(BAG_FLOOR, 16)  # type: ignore[attr-defined]
    assert "still over" in pl.summary()  # type: ignore[attr-defined]
    # the ascent cut to nothing is never silent: one note, with the budget the floor needs
    floor_s = sum(predict(PROBE, bag=16, steps=STEPS_FLOOR, pool=64, batch=102, boundary=True, refine=True,
                          twins=True, queries=8).values())
    (note,) = pl.notes  # type: ignore[attr-defined]
    assert note.startswith("ascent cut from 1000 to 0 steps") and f"--budget {math.ceil(floor_s)}s" in note
    assert pl.to_dict()["notes"] == [note] and note in pl.summary()  # type: ignore[attr-defined]
    assert "notes" not in _plan(budget=1e9).to_dict()  # type: ignore[attr-defined]


def test_memory_caps_the_batch() -> None:
    pl = _plan(budget=None, memory_bytes=100 * 2**20)  # 10 MiB per sample
    assert pl.batch == 10  # type: ignore[attr-defined]
    assert _plan(budget=None).batch == 102  # type: ignore[attr-defined]


def test_budget_is_recorded_and_a_fitting_budget_changes_nothing(digits_model, digits_data) -> None:  # type: ignore[no-untyped-def]
    gen = GenerationConfig(steps=20, eps=2 / 16, lr=1e-2)
    fp_none, _, _ = make_fingerprint(digits_model, digits_data[1], FingerprintConfig(
        bag=40, select=4, budget="none", generation=gen), progress=False)
    fp_auto, _, _ = make_fingerprint(digits_model, digits_data[1], FingerprintConfig(
        bag=40, select=4, generation=gen), progress=False)
    assert torch.equal(fp_none.samples, fp_auto.samples)
    b = fp_auto.meta["plan"]
    assert b["budget_s"] == 600.0 and b["trimmed"] == [] and b["bag"] == 40 and b["steps"] == 20
    assert fp_none.meta["plan"]["budget_s"] is None
    assert "plan" in fp_auto.meta["stages"]


def test_a_small_budget_trims_a_real_run(digits_model, digits_data, caplog) -> None:  # type: ignore[no-untyped-def]
    cfg = FingerprintConfig(bag=300, select=4, budget="0.05s", generation=GenerationConfig(steps=400, eps=2 / 16))
    with caplog.at_level("WARNING"):
        fp, gen, _ = make_fingerprint(digits_model, digits_data[1], cfg, progress=False)
    b = fp.meta["plan"]
    if b["steps"] < STEPS_FLOOR:  # cut below the floor: said once on stderr and stored
        assert len(b["notes"]) == 1 and caplog.text.count(b["notes"][0]) == 1
    else:
        assert "notes" not in b
    assert b["trimmed"] and b["steps"] < 400 and len(gen) == b["bag"] < 300
    assert fp.meta["config"]["bag"] == b["bag"] and fp.meta["config"]["generation"]["steps"] == b["steps"]


def test_natural_views_stay_on_the_grid_and_come_in_groups() -> None:
    from veriprint.pipeline.seeds import natural_views

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 32, 32), generator=g).float() / 255
    v, names = natural_views(x, 30)
    assert names[0] == "original" and len(names) == 10 and len(v) == 30
    assert torch.equal(v[:3], x) and torch.equal(v[15:18], x.flip(3))  # the mirror follows the four shifts
    assert torch.equal((v * 255).round() / 255, v)
    assert torch.equal(v[3:6, :, :, 1:], x[:, :, :, :-1])  # shifted right by one pixel, edge repeated
    gray, names = natural_views(x[:, :1], 100)
    assert len(gray) == 15
    assert len(names) == 5 and not any("mirror" in n for n in names)
    few, names = natural_views(x, 7)
    assert len(few) == 9 and names == ["original", "shift right 1px", "shift left 1px"]
    flat, names = natural_views(x.flatten(1), 100)
    assert names == ["original"] and torch.equal(flat, x.flatten(1))


def test_a_small_data_set_gets_views_and_a_cut_bag(caplog, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from veriprint.data import Dataset
    from veriprint.zoo import tiny_imagenet_cnn

    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (6, 3, 64, 64), generator=g).float() / 255
    data = Dataset(x, torch.arange(6), name="six")
    model = tiny_imagenet_cnn(num_classes=10).eval()
    cfg = FingerprintConfig(bag=500, select=4, budget="none", generation=GenerationConfig(steps=2))
    with caplog.at_level("WARNING"):
        fp, gen, _ = make_fingerprint(model, data, cfg, progress=False)
    assert len(gen) == 60 and fp.meta["config"]["bag"] == 60
    assert fp.meta["data"]["size"] == 6 and len(fp.meta["data"]["views"]) == 10
    assert "cut from 500 to 60" in caplog.text
    from veriprint.cli.main import main

    fp.save(tmp_path / "six.vpf")
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "six.vpf")]) == 0
    shown = capsys.readouterr().out
    assert "plan: no time budget" in shown and "nothing trimmed" in shown
    assert "seeds: 6 inputs with natural views (original, shift right 2px" in shown
    one = Dataset(x[:1], None, name="one")
    with pytest.raises(ConfigError, match=r"at least 16 natural inputs for 8 queries, got 1 \(10 with their views"):
        make_fingerprint(model, one, FingerprintConfig(bag=500, select=8, budget="none"), progress=False)
    with pytest.raises(ConfigError, match=r"at least 16 natural inputs for 8 queries, got 1;"):
        make_fingerprint(model, one, FingerprintConfig(bag=500, select=8, views="none"), progress=False)


def test_view_names_match_the_views() -> None:
    from veriprint.pipeline.seeds import natural_views, view_names

    x = torch.rand(2, 3, 16, 16)
    for kind in ("auto", "shifts", "shifts+flips", "none"):
        _, names = natural_views(x, 10**6, kind)
        assert names == view_names(x, kind)
    with pytest.raises(ConfigError, match="expected views in"):
        view_names(x, "rotations")


def test_generation_stops_at_its_deadline(digits_model, digits_data) -> None:  # type: ignore[no-untyped-def]
    from veriprint.pipeline.generate import generate

    x = digits_data[1].x[:12]
    cfg = GenerationConfig(steps=50, eps=2 / 16, patience=0, batch_size=4)
    res = generate(digits_model, x, cfg, domain=digits_data[1].domain, progress=False, deadline=0.0)
    assert res.steps_run == 1 and len(res) == 12
    assert generate(digits_model, x, cfg, domain=digits_data[1].domain, progress=False).steps_run == 50


def test_a_speed_prices_batches_by_its_points() -> None:
    sp = Speed({"forward": {4: 0.5, 100: 2.5}, "step": {10: 1.0}}, bytes_per_sample=1)
    assert sp.batch_s("forward", 4) == 0.5 and sp.batch_s("forward", 100) == 2.5
    assert sp.batch_s("forward", 52) == pytest.approx(1.5)  # between the points: the straight line
    assert sp.batch_s("forward", 200) == pytest.approx(4.583333, rel=1e-5)  # beyond: the last segment's slope
    assert sp.batch_s("forward", 0) == 0.0 and sp.batch_s("step", 5) == pytest.approx(0.5)  # one point: pro rata
    # 250 items in batches of 100: two full batches and one of 50, twice
    assert sp.over("forward", 250, 100, passes=2.0) == pytest.approx(2 * (2 * 2.5 + sp.batch_s("forward", 50)))
    with pytest.raises(KeyError, match="'served'"):
        sp.batch_s("served", 3)


def test_the_plan_is_a_pure_function_of_the_counted_work_and_the_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    def no_clock() -> float:
        raise AssertionError("the plan read the clock")

    monkeypatch.setattr(time, "perf_counter", no_clock)
    monkeypatch.setattr(time, "time", no_clock)
    budget = 0.5 * sum(predict(PROBE, bag=500, steps=1000, pool=10_000, batch=102, boundary=True, refine=True,
                                twins=True, queries=8).values())
    a, b = _plan(budget=budget), _plan(budget=budget)
    assert a == b and a.trimmed  # type: ignore[attr-defined]
    slower = Speed.per_sample(forward_s=0.02, step_s=0.04, backward_s=0.06, bytes_per_sample=10 * 2**20)
    c = plan(slower, bag=500, steps=1000, select=8, n_data=10_000, boundary=True, refine=True, twins=True,
             budget_s=budget, memory_bytes=2**30, batch=500)
    assert (c.bag, c.steps) < (a.bag, a.steps)  # type: ignore[attr-defined]


def test_the_straddle_stage_is_predicted() -> None:
    kw: dict[str, object] = dict(bag=100, steps=10, pool=1000, batch=100, boundary=True, refine=True, twins=True)
    none = predict(PROBE, **kw)  # type: ignore[arg-type]
    plain = predict(PROBE, **kw, pairs=4)  # type: ignore[arg-type]
    tight = predict(PROBE, **kw, pairs=4, tighten=True)  # type: ignore[arg-type]
    assert "straddle" not in none and 0 < plain["straddle"] < tight["straddle"]
    assert tight["straddle"] == pytest.approx(4 * (7000 * 0.01 + 15 * 0.03))  # served rows, guide gradients
    # it counts against the budget like any stage: a budget that fits without it trims with it
    budget = sum(none.values()) * 1.01
    assert not plan(PROBE, select=8, n_data=1000, budget_s=budget, memory_bytes=2**30, bag=100, steps=10,
                    boundary=True, refine=True, twins=True, batch=100).trimmed
    assert plan(PROBE, select=8, n_data=1000, budget_s=budget, memory_bytes=2**30, bag=100, steps=10,
                boundary=True, refine=True, twins=True, batch=100, pairs=4, tighten=True).trimmed


def test_plan_line_shows_each_stage_predicted_against_measured() -> None:
    from veriprint.pipeline.plan import plan_line

    d = _plan(budget=None).to_dict()  # type: ignore[attr-defined]
    d["repriced"] = {"straddle": 9.0, "pairs": 5}
    stages = {"plan": {"seconds": 1.0}, "seeds": {"seconds": 0.5}, "generate": {"seconds": 30.0},
              "straddle": {"seconds": 8.0}}
    line = plan_line(d, took=40.0, stages=stages)
    assert f"seeds {d['predicted']['seeds']:.3g}/0.5" in line and "straddle 9/8" in line
    assert "generate" in line and "plan " not in line.split("(predicted/measured")[1]
    assert "speed calibrated in" in plan_line(d) or "speed from the cache" in plan_line(d)


def test_an_overrun_is_warned_about_never_cut() -> None:
    from veriprint.pipeline.plan import OVERRUN, overrun

    pl = _plan(budget=100.0)
    assert overrun(pl, OVERRUN * 100.0) is None and overrun(_plan(budget=None), 1e9) is None  # type: ignore[arg-type]
    text = overrun(pl, OVERRUN * 100.0 + 1)  # type: ignore[arg-type]
    assert text is not None and "nothing was cut" in text and "--recalibrate" in text


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 10)).eval()


def test_the_speed_is_calibrated_once_and_cached(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    from veriprint.pipeline.speed import calibrate_speed

    model, x, gen = _tiny_model(), torch.rand(8, 1, 8, 8), GenerationConfig(steps=5)
    fresh = calibrate_speed(model, x, gen, batches={"forward": [4, 32], "step": [32]}, directory=tmp_path)
    assert not fresh.cached and fresh.seconds > 0 and sorted(fresh.points["forward"]) == [4, 32]
    (path,) = tmp_path.glob("*.json")
    assert path.stem == fresh.key and fresh.bytes_per_sample > 0
    warm = calibrate_speed(model, x, gen, batches={"forward": [4, 32], "step": [32]}, directory=tmp_path)
    assert warm.cached and warm.seconds == 0 and warm.points == fresh.points
    # a batch size not stored yet is measured and added; the stored ones are kept as they were
    more = calibrate_speed(model, x, gen, batches={"forward": [4, 64]}, directory=tmp_path)
    assert not more.cached and more.points["forward"][4] == fresh.points["forward"][4] and 64 in more.points["forward"]
    again = calibrate_speed(model, x, gen, batches={"forward": [4]}, directory=tmp_path, recalibrate=True)
    assert not again.cached and sorted(again.points) == ["forward"] and sorted(again.points["forward"]) == [4]
    # another model shape, input shape or profile has its own entry
    wide = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    other = [calibrate_speed(wide.eval(), x, gen, batches={"forward": [4]}, directory=tmp_path).key,
             calibrate_speed(model, x, gen, batches={"forward": [4]}, directory=tmp_path, profile="cpu/bf16").key]
    assert len({fresh.key, *other}) == 3 and len(list(tmp_path.glob("*.json"))) == 3
    # an unreadable entry is measured again; a cache that cannot be written is warned about, not fatal
    path.write_text("{not json")
    assert not calibrate_speed(model, x, gen, batches={"forward": [4]}, directory=tmp_path).cached
    blocked = tmp_path / "file"
    blocked.write_text("")
    with caplog.at_level("WARNING"):
        sp = calibrate_speed(model, x, gen, batches={"forward": [4]}, directory=blocked / "sub")
    assert sp.points["forward"][4] > 0 and "could not store the calibrated speed" in caplog.text


def test_the_cache_directory_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from veriprint.pipeline.speed import cache_dir

    monkeypatch.delenv("VERIPRINT_SPEED_CACHE", raising=False)
    monkeypatch.delenv("VERIPRINT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "veriprint" / "speed"
    monkeypatch.setenv("VERIPRINT_CACHE", str(tmp_path / "vp"))
    assert cache_dir() == tmp_path / "vp" / "speed"
    monkeypatch.setenv("VERIPRINT_SPEED_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_a_profiled_plan_prices_its_straddle_stage(fashion_model, fashion_data) -> None:  # type: ignore[no-untyped-def]
    from veriprint.pipeline.plan import plan_fingerprint

    cfg = FingerprintConfig(bag=40, select=8, precision="bf16", generation=GenerationConfig(steps=20))
    pl = plan_fingerprint(fashion_model, fashion_data[1].x, cfg)
    assert pl.pairs == 4 and pl.predicted["straddle"] > 0 and "served" in pl.speed.points  # type: ignore[union-attr]
    assert plan_fingerprint(fashion_model, fashion_data[1].x, replace(cfg, precision="fp32")).pairs == 0


@contextmanager
def _busy(workers: int = 2) -> Iterator[None]:
    """Other processes spinning on the CPU for the duration."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(workers)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_the_same_command_and_seed_give_the_same_fingerprint_whatever_the_load(  # type: ignore[no-untyped-def]
        digits_model, digits_data, tmp_path, monkeypatch) -> None:
    from veriprint.pipeline.plan import plan_fingerprint

    data = digits_data[1]
    monkeypatch.setenv("VERIPRINT_SPEED_CACHE", str(tmp_path / "a"))
    cfg = FingerprintConfig(bag=40, select=4, ceiling_share=0.0, cover_classes=False,
                            generation=GenerationConfig(steps=20, eps=2 / 16, lr=1e-2))
    fresh, _, _ = make_fingerprint(digits_model, data, cfg, progress=False)  # an empty cache: calibrated now
    assert fresh.meta["plan"]["speed"]["cached"] is False and fresh.meta["plan"]["trimmed"] == []
    warm = plan_fingerprint(digits_model, data.x, cfg)
    assert warm.speed is not None and warm.speed.cached
    tight = replace(cfg, budget=f"{0.5 * warm.total_s:.6f}s")  # a budget the plan must trim to
    quiet, _, _ = make_fingerprint(digits_model, data, tight, progress=False)
    with _busy():
        loaded, _, _ = make_fingerprint(digits_model, data, cfg, progress=False)
        loaded_tight, _, _ = make_fingerprint(digits_model, data, tight, progress=False)
    assert loaded.meta["plan"]["speed"]["cached"]
    assert torch.equal(fresh.samples, loaded.samples)
    assert torch.equal(fresh.expected, loaded.expected)
    assert quiet.meta["plan"]["trimmed"] and quiet.meta["plan"]["trimmed"] == loaded_tight.meta["plan"]["trimmed"]
    assert torch.equal(quiet.samples, loaded_tight.samples)
