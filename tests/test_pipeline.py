"""The pipeline's stages on their own, the selector registry, and configs that flow one way."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from veriprint.configs import (
    add_dataclass_arguments,
    check_version,
    from_mapping,
    load_toml,
    set_values,
)
from veriprint.data import Dataset
from veriprint.errors import ConfigError
from veriprint.noise import calibrate_noise
from veriprint.pipeline import (
    SELECTOR_NAMES,
    FingerprintConfig,
    build_candidates,
    eligible,
    make_fingerprint,
    make_twins,
    wants_twins,
)
from veriprint.pipeline.generate import GenerationConfig
from veriprint.selectors import SelectionContext, get_selector, list_selectors
from veriprint.selectors.algorithms import Selection

FAST = GenerationConfig(steps=15)


def test_every_selector_a_config_names_is_registered() -> None:
    assert sorted(s.name for s in list_selectors()) == sorted(SELECTOR_NAMES)
    for s in list_selectors():
        assert s.summary and type(s).__module__ == f"veriprint.selectors.{s.name.replace('-', '_')}"
    with pytest.raises(ConfigError, match="expected a selector among"):
        get_selector("best")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"bag": 0}, "bag"), ({"select": 9, "bag": 8}, "select"), ({"selector": "best"}, "selector"),
    ({"safety": 0.5}, "safety"), ({"min_floor": 0.0}, "min_floor"), ({"tolerance": -1.0}, "tolerance"),
    ({"seeds": "middle"}, "seeds"), ({"refine_factor": 0.5}, "refine_factor"),
])
def test_fingerprint_config_is_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"FingerprintConfig.{field}"):
        FingerprintConfig(**kwargs)  # type: ignore[arg-type]


def test_old_files_migrate_and_newer_ones_are_refused() -> None:
    old = FingerprintConfig().to_dict()
    del old["seeds"], old["twins"]
    cfg = FingerprintConfig.from_dict(old)
    assert cfg.seeds == "random" and cfg.twins is False  # what files before these options did
    assert FingerprintConfig.from_dict(FingerprintConfig().to_dict()) == FingerprintConfig()
    with pytest.raises(ConfigError, match="reads versions up to 1, got 2"):
        FingerprintConfig.from_dict({**FingerprintConfig().to_dict(), "version": 2})
    with pytest.raises(ConfigError, match="unknown setting bagg"):
        FingerprintConfig.from_dict({"bagg": 3})
    with pytest.raises(ConfigError, match="expected a whole number >= 1"):
        check_version(FingerprintConfig, {"version": "1"})


def test_flags_come_from_the_dataclass_and_only_set_ones_flow(tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    dests = add_dataclass_arguments(p, GenerationConfig)
    assert "steps" in dests and "version" not in dests
    assert "(default: 1000)" in p.format_help()  # the dataclass's default, not a copy of it
    args = p.parse_args(["--steps", "20", "--no-log-space"])
    given = set_values(args, dests)
    assert given == {"steps": 20, "log_space": False}
    assert from_mapping(GenerationConfig, given) == GenerationConfig(steps=20, log_space=False)
    (tmp_path / "c.toml").write_text("[generation]\nsteps = 7\nlr = 0.01\n")
    assert from_mapping(GenerationConfig, load_toml(tmp_path / "c.toml", "generation")).steps == 7
    (tmp_path / "bad.toml").write_text("steps = \n")
    with pytest.raises(ConfigError, match="expected TOML"):
        load_toml(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="no such file"):
        load_toml(tmp_path / "missing.toml")


def test_calibrate_noise_on_its_own(digits_model: torch.nn.Module, digits_data: tuple[Dataset, Dataset]) -> None:
    x = digits_data[1].x[:40]
    floor = calibrate_noise(digits_model, x)
    assert 0 <= floor.logit < 1e-4 and 0 <= floor.margin < 1e-4 and floor.floor == 1e-4  # min floor
    assert {"batch=1", "batch=7", "float64"} <= set(floor.variants)
    declared = calibrate_noise(digits_model, x, declared=0.01, safety=2.0)
    assert declared.floor == pytest.approx(0.02) and declared.logit_tolerance == pytest.approx(0.01)
    with pytest.raises(ValueError, match="safety >= 1"):
        calibrate_noise(digits_model, x, safety=0.5)


def test_stages_compose_to_make_fingerprint(fashion_model: torch.nn.Module,
                                            fashion_data: tuple[Dataset, Dataset]) -> None:
    cfg = FingerprintConfig(bag=24, select=6, cover_classes=False, ceiling_share=0.0, generation=FAST)
    test = fashion_data[1]
    torch.manual_seed(0)
    fp, gen, sel = make_fingerprint(fashion_model, test, cfg, progress=False)
    torch.manual_seed(0)
    c = build_candidates(fashion_model, test, cfg, domain=test.domain, progress=False)
    ok = eligible(c, cfg, cfg.select)
    assert wants_twins(cfg)
    tw = make_twins(fashion_model, c, cfg)
    ctx = SelectionContext(fashion_model, c, ok, tw, cfg)
    again = get_selector("reach").pairs(ctx, cfg.select // 2)
    assert torch.equal(again.indices, sel.indices)
    assert torch.equal(c.samples, gen.samples)
    assert fp.meta["selection"]["pairs"] == 3
    with pytest.raises(ConfigError, match="need 25"):
        eligible(c, cfg, 25)


@pytest.mark.parametrize("selector", SELECTOR_NAMES)
@pytest.mark.parametrize("twins", [True, False])
def test_every_selector_with_and_without_twins(fashion_model: torch.nn.Module,
                                               fashion_data: tuple[Dataset, Dataset], selector: str,
                                               twins: bool) -> None:
    cfg = FingerprintConfig(bag=20, select=4, selector=selector, twins=twins, cover_classes=False,  # type: ignore[arg-type]
                            ceiling_share=0.0, generation=FAST)
    fp, _, sel = make_fingerprint(fashion_model, fashion_data[1], cfg, progress=False)
    assert len(fp) == 4 and len(set(sel.indices.tolist())) == len(sel.indices)
    pairs = fp.meta["selection"]["pairs"]
    assert pairs == (2 if twins else 0)
    if pairs:  # each pair: a sample and its twin on either side of a boundary
        labels = fp.expected.argmax(1)
        assert all(labels[2 * i] != labels[2 * i + 1] for i in range(pairs))
    method = {"reach": "reach", "manc": "manc+boundary", "random": "random", "tamper-aware": "manc"}[selector]
    assert sel.method == method


def test_subset_keeps_what_it_needs(digits_fingerprint) -> None:  # type: ignore[no-untyped-def]
    sub = digits_fingerprint.subset([3, 1])
    assert len(sub) == 2 and torch.equal(sub.samples[0], digits_fingerprint.samples[3])
    assert sub.meta["subset_of"]["indices"] == [3, 1] and sub.meta["labels"] == [
        digits_fingerprint.meta["labels"][3], digits_fingerprint.meta["labels"][1]]
    for bad in ([], [99]):
        with pytest.raises(ConfigError):
            digits_fingerprint.subset(bad)


def test_the_budget_grows_any_selector_that_predicts_coverage_and_no_other(
        fashion_model: torch.nn.Module, fashion_data: tuple[Dataset, Dataset]) -> None:
    """The query budget reads ``ctx.prediction``, never a selector's name or private state: a
    selector of another name that predicts coverage is grown to the ceiling share like reach,
    one that predicts nothing keeps exactly ``select``."""
    from veriprint.selectors.base import Selector
    from veriprint.selectors.budget import choose
    from veriprint.selectors.prediction import CoveragePrediction

    cfg = FingerprintConfig(bag=24, select=2, cover_classes=False, ceiling_share=0.97, max_queries=16,
                            twins=False, generation=FAST)
    torch.manual_seed(0)
    c = build_candidates(fashion_model, fashion_data[1], cfg, domain=fashion_data[1].domain, progress=False)
    ok = eligible(c, cfg, cfg.select)
    reach = get_selector("reach")

    class Copycat(Selector):  # reach's picks under another name, not registered
        name = "copycat"
        predicts_coverage = True

        def singles(self, ctx: SelectionContext, k: int) -> Selection:
            return reach.singles(ctx, k)

    class Silent(Copycat):  # the same picks, but it claims no prediction
        predicts_coverage = False

        def singles(self, ctx: SelectionContext, k: int) -> Selection:
            sel = reach.singles(ctx, k)
            ctx.prediction = None
            return sel

    grown, budget = choose(SelectionContext(fashion_model, c, ok, None, cfg), Copycat(), 2, paired=False)
    by_reach, budget_reach = choose(SelectionContext(fashion_model, c, ok, None, cfg), reach, 2, paired=False)
    assert torch.equal(grown.indices, by_reach.indices) and budget == budget_reach
    assert budget.queries > 2 and budget.predicted is not None and budget.ceiling is not None
    ctx = SelectionContext(fashion_model, c, ok, None, cfg)
    exact, budget_silent = choose(ctx, Silent(), 2, paired=False)
    assert len(exact.indices) == 2
    assert budget_silent.queries == 2 and budget_silent.stopped == "budget" and budget_silent.predicted is None
    pred = CoveragePrediction(torch.tensor([3, 5]), torch.zeros(2, 4), torch.ones(4))
    with pytest.raises(ValueError, match="examined"):
        pred.trace(torch.tensor([4]))
