"""Fast tests of the tampering suite on a tiny MLP trained on 8x8 digits."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from torch import nn

import veriprint.tamper as vt
from veriprint.data import Dataset, load_data
from veriprint.models import load_model, model_hash, save_weights
from veriprint.models.train import TrainConfig, train_
from veriprint.tamper import (
    AdversarialFineTuneConfig,
    BadNetsConfig,
    CastConfig,
    ClassDegradeConfig,
    CleanLabelConfig,
    DistillConfig,
    FinePruneConfig,
    FineTuneConfig,
    FreezeTuneConfig,
    PoisonConfig,
    PruneConfig,
    QuantizeConfig,
    RetrainLastConfig,
    TransferConfig,
    TrojanConfig,
    UnlearnConfig,
    WeightEditConfig,
    WeightNoiseConfig,
    list_attacks,
    tamper,
)
from veriprint.tamper.precision import quantize_tensor
from veriprint.tamper.pruning import magnitude_masks
from veriprint.tamper.trojan import select_neurons
from veriprint.zoo import digits_mlp

FACTORY = "veriprint.zoo:digits_mlp"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny CPU models run fastest (and identically) on one thread when cores are shared.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset]:
    return load_data("digits", split="train"), load_data("digits", split="test")


@pytest.fixture(scope="module")
def model(digits: tuple[Dataset, Dataset]) -> nn.Module:
    torch.manual_seed(0)
    m = digits_mlp()
    train_(m, digits[0], TrainConfig(epochs=15, batch_size=32, seed=0), progress=False)
    return m


def _run(model: nn.Module, config: object, digits: tuple[Dataset, Dataset]) -> vt.TamperResult:
    return tamper(model, config, data=digits[0], eval_data=digits[1], progress=False)


class Case(NamedTuple):
    name: str
    config: object

    def __repr__(self) -> str:
        return self.name


FAST = dict(steps=30, batch_size=32)
CASES = [
    Case("cast", CastConfig()),
    Case("quantize", QuantizeConfig(bits=4, granularity="channel", recover_steps=10)),
    Case("prune", PruneConfig(amount=0.3, recover_steps=10)),
    Case("weight-edit", WeightEditConfig(n=3, mode="add", amount=0.5)),
    Case("poison", PoisonConfig(target=3, to_class=8, **FAST)),
    Case("trojan", TrojanConfig(size=3, trigger_steps=20, **FAST)),
    Case("adversarial-finetune", AdversarialFineTuneConfig(
        attack=PoisonConfig(target=3, **FAST), samples=8, gen_steps=5, steps=10, batch_size=32)),
    Case("finetune", FineTuneConfig(**FAST)),
    Case("freeze-tune", FreezeTuneConfig(freeze_steps=10, tune_steps=10, batch_size=32)),
    Case("retrain-last", RetrainLastConfig(**FAST)),
    Case("distill", DistillConfig(**FAST)),
    Case("fine-prune", FinePruneConfig(**FAST)),
    Case("transfer", TransferConfig(out_steps=10, back_steps=10, batch_size=32)),
    Case("unlearn", UnlearnConfig(forget=2, **FAST)),
    Case("class-degrade", ClassDegradeConfig(target=2, **FAST)),
    Case("clean-label", CleanLabelConfig(size=3, eps=0.125, pgd_steps=3, **FAST)),
    Case("badnets", BadNetsConfig(size=3, **FAST)),
    Case("weight-noise", WeightNoiseConfig(relative=1e-3)),
]


def test_every_attack_has_a_case() -> None:
    # bn-recalibrate needs BatchNorm layers, which the digits MLP lacks: tests/test_queries.py runs it
    assert sorted([*(c.name for c in CASES), "bn-recalibrate"]) == sorted(a.name for a in list_attacks())
    assert [a.family for a in list_attacks()][:7] == ["paper"] * 7


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_attack_runs_reports_and_leaves_input_alone(
    case: Case, model: nn.Module, digits: tuple[Dataset, Dataset]
) -> None:
    before = model_hash(model)
    result = _run(model, case.config, digits)
    assert model_hash(model) == before, "the input model must not change"
    assert result.model is not model
    assert not result.model.training
    assert all(not p.requires_grad for p in result.model.parameters())
    r = result.report
    assert r.attack == case.name
    assert r.changed_params > 0 and r.l2_change > 0 and r.max_abs_change > 0
    assert 0 <= r.clean_accuracy_after <= 1 and r.clean_accuracy_before > 0.85
    assert r.total_params == sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    assert r.seconds >= 0 and 0 <= r.flip_rate <= 1
    assert r.success_name
    json.dumps(r.to_dict(), allow_nan=False)
    assert r.to_dict()["config"] == vt.config_to_dict(case.config)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_same_seed_same_weights(case: Case, model: nn.Module, digits: tuple[Dataset, Dataset]) -> None:
    a = _run(model, case.config, digits).model.state_dict()
    b = _run(model, case.config, digits).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "config",
    [FineTuneConfig(**FAST), PoisonConfig(target=3, **FAST), WeightEditConfig(), TrojanConfig(size=3, **FAST)],
    ids=lambda c: type(c).__name__,
)
def test_other_seed_other_weights(config: Any, model: nn.Module, digits: tuple[Dataset, Dataset]) -> None:
    a = _run(model, config, digits).model.state_dict()
    b = _run(model, dataclasses.replace(config, seed=config.seed + 1), digits).model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (QuantizeConfig, {"bits": 1}, "expected 2 <= bits <= 16, got 1"),
        (QuantizeConfig, {"granularity": "row"}, "granularity"),
        (CastConfig, {"dtype": "float8"}, "dtype"),
        (PruneConfig, {"amount": 1.0}, "expected 0 < amount < 1, got 1.0"),
        (WeightEditConfig, {"n": 0}, "expected n >= 1, got 0"),
        (WeightEditConfig, {"mode": "add", "amount": 0.0}, "amount != 0"),
        (PoisonConfig, {"target": 2, "to_class": 2}, "to_class different from target"),
        (PoisonConfig, {"fraction": 0.0}, "0 < fraction <= 1"),
        (TrojanConfig, {"retrain": "some"}, "retrain"),
        (TrojanConfig, {"lr": -1.0}, "expected lr > 0, got -1.0"),
        (ClassDegradeConfig, {"mode": "specific"}, "to_class for mode 'specific'"),
        (FineTuneConfig, {"steps": -1}, "expected steps >= 0, got -1"),
        (DistillConfig, {"temperature": 0.0}, "temperature > 0"),
        (CleanLabelConfig, {"eps": -0.1}, "eps >= 0"),
        (AdversarialFineTuneConfig, {"attack": "nope"}, "expected an attack among"),
        (AdversarialFineTuneConfig, {"attack": 3}, "registered attack config, got int"),
        (AdversarialFineTuneConfig, {"divergence": "l1"}, "divergence"),
    ],
)
def test_configs_are_validated(cls: type, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cls(**kwargs)


def test_adaptive_accepts_an_attack_name() -> None:
    assert AdversarialFineTuneConfig(attack="trojan").attack == TrojanConfig()


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PoisonConfig().target = 3  # type: ignore[misc]


def test_unregistered_config_is_rejected(model: nn.Module, digits: tuple[Dataset, Dataset]) -> None:
    @dataclasses.dataclass(frozen=True)
    class Other:
        x: int = 0

    with pytest.raises(ValueError, match="registered attack config, got Other"):
        _run(model, Other(), digits)


def test_package_is_callable(model: nn.Module, digits: tuple[Dataset, Dataset]) -> None:
    result = vt(model, CastConfig(), data=digits[0], eval_data=digits[1], progress=False)
    assert result.report.attack == "cast"


def test_quantize_tensor_exact() -> None:
    w = torch.tensor([[1.0, -0.5, 0.26], [0.1, 0.0, -0.2]])
    # per tensor, 3 bits: qmax 3, scale 1/3
    expected = torch.tensor([[3.0, -2.0, 1.0], [0.0, 0.0, -1.0]]) / 3
    assert torch.allclose(quantize_tensor(w, 3, per_channel=False), expected)
    # per channel: second row has its own scale 0.2/3
    q = quantize_tensor(w, 3, per_channel=True)
    assert torch.allclose(q[1], torch.tensor([0.2 / 3 * 2, 0.0, -0.2]))
    assert torch.equal(quantize_tensor(torch.zeros(2, 2), 8, per_channel=True), torch.zeros(2, 2))


def test_quantize_8bit_is_4x_on_a_grid(model: nn.Module, digits: tuple[Dataset, Dataset]) -> None:
    r = _run(model, QuantizeConfig(bits=8), digits)
    assert r.report.success is not None and 3.5 < r.report.success <= 4.0
    assert r.report.size_saving is not None and 0.7 < r.report.size_saving < 0.75
    assert abs(r.report.clean_accuracy_after - r.report.clean_accuracy_before) <= 0.01
    for name, p in r.model.named_parameters():
        if p.dim() >= 2:
            assert torch.unique(p).numel() <= 255, name


def test_cast_float16_exact(model: nn.Module, digits: tuple[Dataset, Dataset]) -> None:
    r = _run(model, CastConfig(dtype="float16"), digits)
    orig = model.state_dict()
    for k, v in r.model.state_dict().items():
        assert torch.equal(v, orig[k].half().float()), k


@pytest.mark.parametrize(
    ("mode", "amount", "expect"),
    [("scale", 0.1, lambda w: w * 1.1), ("add", 0.5, lambda w: w + 0.5), ("sign", 0.1, lambda w: -w),
     ("set", 3.0, lambda w: torch.full_like(w, 3.0))],
)
def test_weight_edit_changes_exactly_one_weight(
    model: nn.Module, digits: tuple[Dataset, Dataset], mode: str, amount: float, expect: Any
) -> None:
    r = _run(model, WeightEditConfig(n=1, layer="7.weight", mode=mode, amount=amount), digits)  # type: ignore[arg-type]
    assert r.report.changed_params == 1
    before, after = model.state_dict(), r.model.state_dict()
    diff = [k for k in before if not torch.equal(before[k], after[k])]
    assert diff == ["7.weight"]
    i = (before["7.weight"] != after["7.weight"]).nonzero()[0]
    w0, w1 = before["7.weight"][tuple(i)], after["7.weight"][tuple(i)]
    assert torch.allclose(w1, expect(w0))
    assert r.report.max_abs_change == pytest.approx(float((w1 - w0).abs()), rel=1e-6)


def test_weight_edit_largest_and_module_layer(model: nn.Module, digits: tuple[Dataset, Dataset]) -> None:
    r = _run(model, WeightEditConfig(n=2, layer="7", mode="sign", select="largest"), digits)
    w = model.state_dict()["7.weight"]
    after = r.model.state_dict()["7.weight"]
    top2 = torch.argsort(w.abs().flatten(), descending=True)[:2]
    assert torch.equal(after.flatten()[top2], -w.flatten()[top2])
    assert r.report.changed_params == 2
    with pytest.raises(ValueError, match="parameter or module name"):
        _run(model, WeightEditConfig(layer="nope"), digits)


def test_magnitude_masks_keep_largest() -> None:
    w = {"a": torch.tensor([3.0, -1.0, 0.5, 2.0]), "b": torch.tensor([[0.1, -4.0]])}
    g = magnitude_masks(w, 0.5, "global")
    assert torch.equal(g["a"], torch.tensor([1.0, 0.0, 0.0, 1.0])) and torch.equal(g["b"], torch.tensor([[0.0, 1.0]]))
    lay = magnitude_masks(w, 0.5, "layer")
    assert torch.equal(lay["a"], torch.tensor([1.0, 0.0, 0.0, 1.0])) and torch.equal(lay["b"], torch.tensor([[0.0, 1.0]]))


def test_prune_sparsity_kept_through_recovery(model: nn.Module, digits: tuple[Dataset, Dataset]) -> None:
    r = _run(model, PruneConfig(amount=0.4, recover_steps=20), digits)
    weights = [p for p in r.model.parameters() if p.dim() >= 2]
    zeros = sum(int((p == 0).sum()) for p in weights)
    total = sum(p.numel() for p in weights)
    assert zeros == round(0.4 * total)
    assert r.report.metrics["sparsity"] == pytest.approx(zeros / total)


def test_fine_prune_removes_units(model: nn.Module, digits: tuple[Dataset, Dataset]) -> None:
    r = _run(model, FinePruneConfig(amount=0.25, **FAST), digits)
    w = r.model.state_dict()["7.weight"]
    assert int((w.abs().sum(0) == 0).sum()) == 8  # 25% of 32 units
    assert r.report.metrics["pruned_units"] == 8


def test_select_neurons_by_outgoing_weight() -> None:
    w = torch.tensor([[0.1, -2.0, 0.0, 1.0], [0.1, 1.0, 0.5, -1.5]])
    assert select_neurons(w, 2).tolist() == [1, 3]
    with pytest.raises(ValueError, match="neurons"):
        select_neurons(w, 5)


@pytest.mark.parametrize(
    ("config", "changed"),
    [
        (TrojanConfig(size=3, trigger_steps=5, **FAST), {"7.weight", "7.bias"}),
        (RetrainLastConfig(**FAST), {"7.weight", "7.bias"}),
        (FineTuneConfig(last=1, **FAST), {"7.weight", "7.bias"}),
        (FineTuneConfig(last=2, **FAST), {"5.weight", "5.bias", "7.weight", "7.bias"}),
    ],
    ids=lambda v: ",".join(sorted(v)) if isinstance(v, set) else repr(v),  # the same ids in every process
)
def test_layer_restricted_attacks_touch_only_their_layers(
    config: Any, changed: set[str], model: nn.Module, digits: tuple[Dataset, Dataset]
) -> None:
    before, after = model.state_dict(), _run(model, config, digits).model.state_dict()
    assert {k for k in before if not torch.equal(before[k], after[k])} == changed


def test_error_specific_poisoning_moves_the_target_class(model: nn.Module, digits: tuple[Dataset, Dataset]) -> None:
    r = _run(model, PoisonConfig(target=3, to_class=8, steps=150, batch_size=32), digits)
    assert r.report.success_name == "target_label_rate"
    assert r.report.success is not None and r.report.success > 0.8
    assert r.report.metrics["other_classes_accuracy"] > 0.85


def test_adaptive_needs_a_training_objective(model: nn.Module, digits: tuple[Dataset, Dataset]) -> None:
    with pytest.raises(ValueError, match="no training objective"):
        _run(model, AdversarialFineTuneConfig(attack=WeightEditConfig(), samples=4, gen_steps=2), digits)
    with pytest.raises(ValueError, match="other than adversarial-finetune"):
        AdversarialFineTuneConfig(attack=AdversarialFineTuneConfig())


def test_adaptive_reports_its_own_samples(model: nn.Module, digits: tuple[Dataset, Dataset]) -> None:
    cfg = AdversarialFineTuneConfig(attack=PoisonConfig(target=3, **FAST), samples=16, gen_steps=10, steps=40,
                                    weight=10.0, batch_size=32)
    m = _run(model, cfg, digits).report.metrics
    assert m["samples"] == 16
    assert m["own_samples_divergence_after_af"] < m["own_samples_divergence_before_af"]


def test_exported_model_can_be_tampered(model: nn.Module, digits: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    x = digits[1].x[:2]
    path = tmp_path / "m.pt2"
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, str(path))
    exported = load_model(path)
    for cfg in (QuantizeConfig(), FineTuneConfig(last=1, **FAST), TrojanConfig(size=3, trigger_steps=5, **FAST)):
        r = _run(exported, cfg, digits)
        assert r.report.changed_params > 0
        assert r.report.clean_accuracy_before == pytest.approx(_run(model, CastConfig(), digits).report.clean_accuracy_before)


# --- the CLI -------------------------------------------------------------------


def test_cli_list_shows_every_attack_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from veriprint.cli.main import main

    assert main(["tamper", "--list"]) == 0
    out = capsys.readouterr().out
    for info in list_attacks():
        assert f"  {info.name} " in out
    assert "bits=8" in out and "attack=poison" in out


def test_cli_param_parsing() -> None:
    from veriprint.cli.tamper import build_config

    cfg = build_config("poison", ["target=2", "to_class=7", "fraction=0.5"])
    assert cfg == PoisonConfig(target=2, to_class=7, fraction=0.5)
    assert build_config("poison", ["to_class=none"]) == PoisonConfig(to_class=None)
    assert build_config("clean-label", ["eps=8/255"]) == CleanLabelConfig(eps=8 / 255)
    assert build_config("weight-edit", ["layer=7", "mode=sign"]) == WeightEditConfig(layer="7", mode="sign")
    assert build_config("cast", ["buffers=false"]) == CastConfig(buffers=False)
    af = build_config("adversarial-finetune", ["attack=poison", "attack.to_class=4", "samples=7"])
    assert af == AdversarialFineTuneConfig(attack=PoisonConfig(to_class=4), samples=7)
    assert build_config("adversarial-finetune", ["attack.steps=5"]) == AdversarialFineTuneConfig(
        attack=PoisonConfig(steps=5))
    for bad, msg in [(["nope=1"], "no parameter 'nope'"), (["target"], "NAME=VALUE"),
                     (["target=x"], "expected an integer"), (["to_class=x"], "expected an integer")]:
        with pytest.raises(ValueError, match=msg):
            build_config("poison", bad)
    with pytest.raises(ValueError, match="expected one of"):
        build_config("quantize", ["granularity=row"])
    with pytest.raises(ValueError, match="expected an attack among"):
        build_config("nope", [])


def test_cli_factory_model_writes_weights_and_report(
    model: nn.Module, digits: tuple[Dataset, Dataset], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from veriprint.cli.main import main

    weights = tmp_path / "w.safetensors"
    save_weights(model, weights)
    out, report = tmp_path / "t.safetensors", tmp_path / "r.json"
    code = main(["tamper", "--model", FACTORY, "--weights", str(weights), "--attack", "weight-edit",
                 "--param", "n=2", "--param", "mode=sign", "--data", "digits", "--out", str(out),
                 "--report", str(report), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "weight-edit" in text and f"--weights {out}" in text
    tampered = load_model(FACTORY, weights=out)
    rep = json.loads(report.read_text())
    assert rep["changed_params"] == 2 and rep["config"]["n"] == 2
    assert rep["clean_accuracy_before"] == pytest.approx(_run(model, CastConfig(), digits).report.clean_accuracy_before)
    diff = sum(int((a != b).sum()) for a, b in zip(model.state_dict().values(), tampered.state_dict().values(),
                                                    strict=True))
    assert diff == 2


def test_cli_pt2_in_pt2_out(model: nn.Module, digits: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    from veriprint.cli.main import main

    src = tmp_path / "m.pt2"
    program = torch.export.export(model, (digits[1].x[:2],), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, str(src))
    out = tmp_path / "q.pt2"
    assert main(["tamper", "--model", str(src), "--attack", "quantize", "--param", "bits=4", "--data", "digits",
                 "--limit", "300", "--out", str(out), "--no-progress"]) == 0
    tampered = load_model(out)
    expected = _run(model, QuantizeConfig(bits=4), digits).model
    x = digits[1].x[:50]
    assert torch.allclose(tampered(x), expected(x), atol=1e-5)


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from veriprint.cli.main import main

    assert main(["tamper", "--attack", "cast"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["tamper", "--model", FACTORY, "--attack", "cast", "--data", "digits",
                 "--out", str(tmp_path / "x.pt2"), "--param", "dtype=float8"]) == 2
    assert "dtype" in capsys.readouterr().err
