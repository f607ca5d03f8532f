"""Coverage measured by real edits (veriprint.coverage.edits) and the query budget of a
fingerprint (veriprint.selectors.budget, --queries, --coverage, class coverage)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from veriprint.coverage.edits import _leaf_chain, edit_sweep
from veriprint.coverage.reach import parameter_reach, reach_coverage
from veriprint.data import Dataset
from veriprint.errors import ConfigError
from veriprint.pipeline import FingerprintConfig, make_fingerprint
from veriprint.pipeline.generate import GenerationConfig
from veriprint.selectors.budget import Budget, prefix_coverage


def _brute(model: nn.Module, probes: torch.Tensor, natural: torch.Tensor, visible_at: float,
           edits: list[tuple[int, int, float]]) -> tuple[list[bool], list[list[bool]]]:
    """Each edit made on a fresh copy and the whole model run: the reference."""
    with torch.no_grad():
        z0n, z0p = model(natural), model(probes)
    top2 = z0n.topk(2, dim=1).indices
    ar = torch.arange(natural.shape[0])
    vis, flips = [], []
    for t, j, d in edits:
        m = copy.deepcopy(model)
        p = [q for q in m.parameters()][t]
        with torch.no_grad():
            p.view(-1)[j] *= 1 + d
            zn, zp = m(natural), m(probes)
        dm = ((zn[ar, top2[:, 0]] - zn[ar, top2[:, 1]]) - (z0n[ar, top2[:, 0]] - z0n[ar, top2[:, 1]])).abs()
        vis.append(bool((torch.maximum((zn - z0n).abs().amax(1), dm) > visible_at).any()))
        flips.append((zp.argmax(1) != z0p.argmax(1)).tolist())
    return vis, flips


class _Residual(nn.Module):
    """Not a chain: the output adds the input of the last layer to a skip path."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)) + x)


def test_a_linear_edit_is_seen_exactly_where_the_closed_form_says() -> None:
    lin = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        lin[0].weight.copy_(torch.eye(2))
        lin[0].bias.zero_()
    probes = torch.tensor([[1.0, 0.99], [0.5, 1.0]])  # label 0 at margin 0.01; label 1 at margin 0.5
    natural = torch.tensor([[1.0, 0.0]])
    sw = edit_sweep(lin, {"q": probes}, natural, visible_at=0.02, draws=4, deltas=(0.05,))
    assert len(sw) == 4 * 2 + 2 * 2 and sw.tensors == ["0.weight", "0.bias"]
    for e in range(len(sw)):
        t, j, d = int(sw.tensor_of[e]), int(sw.entry[e]), float(sw.delta[e])
        # the first probe (z = (1, 0.99)) flips when W[0, 0] falls 5% (0.95 < 0.99) or W[1, 1]
        # rises 5% (1.0395 > 1); the second (z = (0.5, 1)) never does
        flips = t == 0 and ((j == 0 and d < 0) or (j == 3 and d > 0))
        assert sw.flips["q"][e].tolist() == [flips, False], (t, j, d)
        # the natural input moves only through W[0, 0] (x_1 = 0), by 0.05 > 0.02; biases are 0
        assert bool(sw.visible[e]) == (t == 0 and j == 0), (t, j, d)
    caught = sw.caught("q")
    among_visible = sw.per_tensor(caught, 0.05, of_visible=True)
    assert among_visible[0] == 0.5 and math.isnan(among_visible[1])  # no bias edit is visible
    assert sw.per_tensor(caught, 0.05, of_visible=False) == [2 / 8, 0.0]
    # every tensor weighs the same: caught-and-visible (1/8 + 0) over visible (2/8 + 0); of all (2/8 + 0) / 2
    assert sw.overall(caught, 0.05, of_visible=True) == pytest.approx(0.5)
    assert sw.overall(caught, 0.05, of_visible=False) == pytest.approx(1 / 8)
    assert sw.caught("q", upto=0).sum() == 0 and torch.equal(sw.caught("q", upto=1), caught)


@pytest.mark.parametrize("chain", [True, False], ids=["chain", "not-a-chain"])
def test_the_sweep_matches_editing_a_fresh_copy(chain: bool) -> None:
    torch.manual_seed(3)
    model = (nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(), nn.Unflatten(1, (2, 3)), nn.Flatten(),
                           nn.Linear(6, 3)) if chain else _Residual()).eval()
    assert (_leaf_chain(model, torch.rand(8, 4), "logits") is not None) == chain
    probes, natural = torch.rand(30, 4), torch.rand(20, 4)
    before = [p.clone() for p in model.parameters()]
    sw = edit_sweep(model, {"a": probes[:10], "b": probes[10:]}, natural, visible_at=1e-3, draws=5,
                    deltas=(0.05, 0.01), seed=2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # not changed
    edits = [(int(t), int(j), float(d)) for t, j, d in zip(sw.tensor_of, sw.entry, sw.delta, strict=True)]
    vis, flips = _brute(model, probes, natural, 1e-3, edits)
    assert sw.visible.tolist() == vis
    assert torch.cat([sw.flips["a"], sw.flips["b"]], 1).tolist() == flips
    assert 0 < sum(vis) < len(vis)  # the threshold separates edits here (the test can fail either way)
    assert int(sw.edits(0.01).sum()) == int(sw.edits(0.05).sum()) == len(sw) // 2


def test_a_sweep_of_some_tensors_makes_the_full_sweeps_edits_of_them() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3)).eval()
    probes, natural = torch.rand(12, 4), torch.rand(9, 4)
    full = edit_sweep(model, {"q": probes}, natural, visible_at=1e-3, draws=3, deltas=(0.05,), seed=5)
    part = edit_sweep(model, {"q": probes}, natural, visible_at=1e-3, draws=3, deltas=(0.05,), seed=5,
                      tensors=["2.weight"])
    keep = full.tensor_of == full.tensors.index("2.weight")
    assert part.tensors == full.tensors and len(part) == int(keep.sum()) == 6
    assert torch.equal(part.entry, full.entry[keep]) and torch.equal(part.visible, full.visible[keep])
    assert torch.equal(part.flips["q"], full.flips["q"][keep])
    shares = part.per_tensor(part.caught("q"), 0.05, of_visible=False)
    assert math.isnan(shares[0]) and not math.isnan(shares[2])  # unedited tensors have no share
    assert part.overall(part.caught("q"), 0.05, of_visible=False) == shares[2]
    with pytest.raises(ConfigError, match="expected tensors of the model"):
        edit_sweep(model, {"q": probes}, natural, visible_at=1e-3, tensors=["9.weight"])


def test_sweep_refuses_bad_input() -> None:
    lin = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="natural input"):
        edit_sweep(lin, {"q": torch.rand(2, 2)}, torch.rand(0, 2), visible_at=0.1)
    with pytest.raises(ConfigError, match="deltas in"):
        edit_sweep(lin, {"q": torch.rand(2, 2)}, torch.rand(3, 2), visible_at=0.1, deltas=(1.5,))
    with pytest.raises(ConfigError, match="visible_at > 0"):
        edit_sweep(lin, {"q": torch.rand(2, 2)}, torch.rand(3, 2), visible_at=0.0)


# --- the query budget ----------------------------------------------------------------------------

def test_queries_is_the_name_of_select_and_the_new_fields_are_checked() -> None:
    assert FingerprintConfig.from_dict({"queries": 12}).select == 12
    with pytest.raises(ConfigError, match="same setting"):
        FingerprintConfig.from_dict({"queries": 12, "select": 8})
    with pytest.raises(ConfigError, match="coverage"):
        FingerprintConfig(coverage=1.5)
    with pytest.raises(ConfigError, match="needs selector 'reach'"):
        FingerprintConfig(coverage=0.9, selector="manc")
    with pytest.raises(ConfigError, match="max_queries"):
        FingerprintConfig(max_queries=0)
    # a file written before class coverage kept exactly its ``select``
    assert FingerprintConfig.from_dict({"select": 8}).cover_classes is False
    assert FingerprintConfig().cover_classes is True


def test_prefix_coverage_is_reach_coverage_of_the_first_picks(digits_model: nn.Module,
                                                              digits_data: tuple[Dataset, Dataset]) -> None:
    x = digits_data[1].x[:12]
    r = parameter_reach(digits_model, x)
    trace = prefix_coverage(r.directed(), r.directed_weights, torch.arange(12), delta=0.05)
    for n in (1, 5, 12):
        assert float(trace[n - 1]) == pytest.approx(reach_coverage(r.rows(torch.arange(n)), 0.05)["all"], abs=1e-9)
    assert bool((trace[1:] >= trace[:-1]).all())


def _fingerprint(model: nn.Module, data: Dataset, **kw: object):  # type: ignore[no-untyped-def]
    kw.setdefault("ceiling_share", 0.0)  # exactly ``select`` unless a test asks for growth
    cfg = FingerprintConfig(bag=60, generation=GenerationConfig(steps=30, eps=2 / 16, lr=1e-2), **kw)  # type: ignore[arg-type]
    return make_fingerprint(model, data, cfg, progress=False)


def test_class_coverage_adds_queries_after_the_same_first_eight(digits_model: nn.Module,
                                                                digits_data: tuple[Dataset, Dataset]) -> None:
    plain, _, _ = _fingerprint(digits_model, digits_data[1], cover_classes=False)
    full, _, _ = _fingerprint(digits_model, digits_data[1])
    assert len(plain) == 8 and plain.meta["budget"]["added_for_classes"] == 0
    labels = set(plain.expected.argmax(1).tolist())
    assert len(labels) < 10  # measured: 8 queries leave classes blind on this model
    assert plain.meta["budget"]["blind"] == [c for c in range(10) if c not in labels]
    # the same first 8 queries, then as few as needed until every class labels one
    assert torch.equal(full.samples[:8], plain.samples[:8])
    b = full.meta["budget"]
    assert set(full.expected.argmax(1).tolist()) == set(range(10)) and b["blind"] == []
    assert b["queries"] == len(full) and 8 < len(full) <= 8 + 10 - len(labels)
    assert b["added_for_classes"] == len(full) - 8
    # the budget's prediction is the reach the file records
    assert b["predicted"] == pytest.approx(full.meta["reach"]["all"][0], abs=1e-3)


def test_coverage_target_grows_the_fingerprint_until_it_is_met(digits_model: nn.Module,
                                                               digits_data: tuple[Dataset, Dataset]) -> None:
    base, _, _ = _fingerprint(digits_model, digits_data[1], cover_classes=False)
    target = base.meta["reach"]["all"][0] + 0.05  # above what 8 queries reach
    fp, _, _ = _fingerprint(digits_model, digits_data[1], cover_classes=False, coverage=target)
    b = fp.meta["budget"]
    assert b["stopped"] == "target" and b["predicted"] >= target and len(fp) > 8
    assert fp.meta["reach"]["all"][0] >= target - 1e-3
    # one query fewer would not have reached it: the shortest prefix is kept
    r = parameter_reach(digits_model, fp.samples[:-1])
    assert reach_coverage(r, 0.05)["all"] < target
    assert torch.equal(fp.samples[:8], base.samples)
    # an unreachable target stops at the cap or the bag's ceiling, and says which
    capped, _, _ = _fingerprint(digits_model, digits_data[1], cover_classes=False, coverage=1.0, max_queries=12)
    cb = capped.meta["budget"]
    assert len(capped) == 12 and cb["stopped"] == "cap" and "cap" in Budget.from_dict({**cb, "later": 1}).summary()
    with pytest.raises(ConfigError, match="expected meta budget fields queries"):
        Budget.from_dict({k: v for k, v in cb.items() if k != "queries"})


def test_ceiling_share_grows_the_queries_until_that_share_of_the_bag_is_revealed(
        digits_model: nn.Module, digits_data: tuple[Dataset, Dataset]) -> None:
    base, _, _ = _fingerprint(digits_model, digits_data[1], cover_classes=False)
    fp, _, _ = _fingerprint(digits_model, digits_data[1], cover_classes=False, ceiling_share=0.95)
    b = fp.meta["budget"]
    assert b["share"] == 0.95 and b["target"] == pytest.approx(0.95 * b["ceiling"], abs=1e-4)
    assert torch.equal(fp.samples[:8], base.samples)  # the same first 8, then more
    assert b["stopped"] in ("target", "cap") and 8 <= len(fp) <= 64
    if b["stopped"] == "target":
        assert b["predicted"] >= b["target"] - 1e-4
        if len(fp) > 8:  # the shortest prefix: one query fewer falls short
            r = parameter_reach(digits_model, fp.samples[:-1])
            assert reach_coverage(r, 0.05)["all"] < b["target"]
    assert len(fp) > 8  # measured: 8 queries reveal less than 95% of this bag's ceiling
    assert f"95% of the whole bag's {b['ceiling']:.1%}" in Budget.from_dict(b).summary()
    # a file from before the share reads as none, and its config keeps exactly ``select``
    old = {k: v for k, v in b.items() if k != "share"}
    assert Budget.from_dict(old).share is None
    cfg = FingerprintConfig.from_dict({"bag": 60})
    assert cfg.ceiling_share == 0.0 and cfg.max_queries == 64
    assert FingerprintConfig().ceiling_share == 0.97 and FingerprintConfig().max_queries == 64
    with pytest.raises(ConfigError, match="ceiling_share"):
        FingerprintConfig(ceiling_share=1.5)


def test_cli_queries_and_coverage(tmp_path: Path, digits_model: nn.Module, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    from veriprint.cli.main import main

    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in digits_model.state_dict().items()}, str(weights))
    common = ["fingerprint", "--model", "veriprint.zoo:digits_mlp", "--weights", str(weights), "--data", "digits",
              "--bag", "60", "--steps", "30", "--eps", "0.125", "--quiet"]
    (tmp_path / "c.toml").write_text("queries = 6\ncover_classes = false\n")
    assert main([*common, "--out", str(tmp_path / "a.vpf"), "--config", str(tmp_path / "c.toml")]) == 0
    from veriprint.fingerprint import Fingerprint

    assert len(Fingerprint.load(tmp_path / "a.vpf")) == 6  # queries asked for: exactly those
    assert main([*common, "--out", str(tmp_path / "d.vpf"), "--no-cover-classes"]) == 0
    d = Fingerprint.load(tmp_path / "d.vpf")  # the default grows to 97% of the bag's ceiling
    assert d.meta["budget"]["share"] == 0.97 and 8 <= len(d) <= 64
    assert main([*common, "--out", str(tmp_path / "e.vpf"), "--queries", "8", "--ceiling-share", "0.97",
                 "--no-cover-classes"]) == 0
    assert len(Fingerprint.load(tmp_path / "e.vpf")) == len(d)
    assert main([*common, "--out", str(tmp_path / "b.vpf"), "--queries", "4", "--coverage", "0.99",
                 "--max-queries", "10", "--no-cover-classes"]) == 0
    b = Fingerprint.load(tmp_path / "b.vpf")
    assert len(b) == 10 and b.meta["budget"]["target"] == 0.99 and b.meta["budget"]["requested"] == 4
    assert "query budget: 10 queries" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "b.vpf")]) == 0
    shown = capsys.readouterr().out
    labelled = sorted(set(b.expected.argmax(1).tolist()))
    assert f"classes: {len(labelled)} of 10 label a query" in shown and "target 99.0%" in shown
    for name, share in zip(b.meta["reach"]["tensors"], b.meta["reach"]["share"][0], strict=True):
        assert f"{name} " in shown and f"{share:.1%}" in shown  # the per-tensor predicted coverage


def test_class_list_ranges() -> None:
    from veriprint.cli.inspect import _ranges

    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8" and _ranges([]) == "" and _ranges([3]) == "3"


def test_pairs_grow_by_pairs(fashion_model: nn.Module, fashion_data: tuple[Dataset, Dataset]) -> None:
    cfg = FingerprintConfig(bag=24, select=4, coverage=0.99, max_queries=10,
                            generation=GenerationConfig(steps=20, patience=0))
    fp, _, _ = make_fingerprint(fashion_model, fashion_data[1], cfg, progress=False)
    b = fp.meta["budget"]
    assert fp.meta["selection"]["pairs"] * 2 == len(fp) == b["queries"] and len(fp) % 2 == 0
    labels = fp.expected.argmax(1)
    assert bool((labels[0::2] != labels[1::2]).all())  # every kept unit is a pair across a boundary
    assert len(fp) > 4 and b["stopped"] in ("cap", "ceiling", "bag") and b["predicted"] <= b["ceiling"] + 1e-9
    assert b["predicted"] == pytest.approx(fp.meta["reach"]["all"][0], abs=1e-3)
