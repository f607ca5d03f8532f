"""First-order reach of samples over parameters, the selection by reach, and the
coverage a fingerprint reports about itself."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from veriprint.coverage.reach import ParameterReach, parameter_reach, reach_coverage
from veriprint.data import Dataset
from veriprint.selectors.algorithms import reach_cover


def _linear() -> nn.Linear:
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.5, 1.0, -1.0, 2.0], [-1.0, 0.5, 1.5, 1.0]]))
        lin.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return lin


def test_reach_of_a_linear_model_is_the_closed_form() -> None:
    lin = _linear()
    x = torch.tensor([[1.0, 0.5, 0.25, 0.125], [0.0, 1.0, 1.0, 0.0]])
    r = parameter_reach(lin, x)
    assert r.tensors == ["weight", "bias"] and r.sizes == [12, 3]
    z = lin(x).detach().double()
    for i in range(2):
        top = z[i].topk(2).indices
        c, k = int(top[0]), int(top[1])
        m = float(z[i, c] - z[i, k])
        # d(z_c - z_k)/dW[c, j] = x_j, /dW[k, j] = -x_j; /db[c] = 1, /db[k] = -1
        g_w = torch.zeros(3, 4, dtype=torch.float64)
        g_w[c], g_w[k] = x[i].double(), -x[i].double()
        g_b = torch.zeros(3, dtype=torch.float64)
        g_b[c], g_b[k] = 1.0, -1.0
        tg = torch.cat([(lin.weight.detach().double() * g_w).flatten(), lin.bias.detach().double() * g_b])
        expect = torch.log10(tg.abs() / m)
        finite = torch.isfinite(expect)
        assert torch.allclose(r.log_reach[i][finite].double(), expect[finite], atol=1e-5)
        assert torch.isinf(r.log_reach[i][~finite]).all()
        assert torch.equal(r.sign[i], torch.sign(tg).to(torch.int8))
    assert all(p.requires_grad for p in lin.parameters())  # flags restored


def test_reach_predicts_which_edits_flip_the_label() -> None:
    lin = _linear()
    x = torch.tensor([[1.0, 0.5, 0.25, 0.125]])
    r = parameter_reach(lin, x)
    base = int(lin(x).argmax())
    col = 0
    for t, p in enumerate(lin.parameters()):
        for j in range(p.numel()):
            lr, s = float(r.log_reach[0, col]), int(r.sign[0, col])
            col += 1
            if not math.isfinite(lr) or s == 0:
                continue
            need = 10 ** (-lr)  # the relative change that brings the margin to 0
            for factor, flips in ((0.9, False), (1.1, True)):
                moved = copy.deepcopy(lin)
                with torch.no_grad():
                    list(moved.parameters())[t].view(-1)[j] *= 1 - s * need * factor
                assert (int(moved(x).argmax()) != base) == flips, (p.shape, j, factor)


def test_directed_reach_and_coverage() -> None:
    # two parameters in one tensor, one in another; sample 0 reveals a negative change of
    # parameter 0 at 5% (reach 1.5) and sample 1 a positive one at 50% (reach 0.3).
    r = ParameterReach(
        log_reach=torch.tensor([[1.5, 2.0, -1.0], [0.3, 0.0, 3.0]]),
        sign=torch.tensor([[1, -1, 1], [-1, 0, -1]], dtype=torch.int8),
        weights=torch.tensor([0.5, 0.5, 1.0]), tensors=["a", "b"], tensor_of=torch.tensor([0, 0, 1]), sizes=[2, 1],
    )
    d = r.directed()
    assert d.shape == (2, 6)
    assert d[0, 0] == 1.5 and d[0, 3] == -math.inf and d[1, 3] == pytest.approx(0.3) and d[1, 1] == -math.inf
    cov = reach_coverage(r, 0.05)  # needs reach >= log10(20) = 1.30
    assert cov["a"] == pytest.approx((0.5 + 0.5) / 2)  # param 0 one direction, param 1 one direction
    assert cov["b"] == pytest.approx(0.5)
    assert cov["all"] == pytest.approx(0.5)
    assert reach_coverage(r, 0.6)["a"] == pytest.approx(0.75)  # now 0.3 >= log10(1/0.6) too
    assert reach_coverage(r.rows(torch.tensor([1])), 0.05) == {"a": 0.0, "b": 0.5, "all": 0.25}
    with pytest.raises(ValueError, match="delta > 0"):
        reach_coverage(r, 0.0)


def test_reach_cover_is_greedy_facility_location() -> None:
    v = torch.tensor([
        [2.0, 0.0, 0.0, 0.0],
        [2.0, 0.0, 0.0, 0.0],  # duplicate of 0: never worth a second pick
        [0.0, 1.2, 1.2, 0.0],
        [0.0, 0.0, 0.0, 5.0],  # capped at 3
        [-math.inf, 0.5, 0.5, 0.5],
    ])
    w = torch.ones(4)
    sel = reach_cover(v, w, 3, score=torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0]))
    assert sel.indices.tolist() == [3, 2, 1]  # 3 (gain 3), 2 (2.4), then the tie 0/1 goes to the higher score
    assert sel.gains.tolist() == pytest.approx([3.0, 2.4, 2.0])
    assert sel.coverage.tolist() == pytest.approx([0.25, 0.75, 1.0])
    assert sel.method == "reach"
    assert reach_cover(v, w, 1, eligible=torch.tensor([1, 1, 1, 0, 1])).indices.tolist() == [2]
    with pytest.raises(ValueError, match="eligible samples"):
        reach_cover(v, w, 6)
    with pytest.raises(ValueError, match="weights"):
        reach_cover(v, torch.ones(3), 1)


def test_fingerprint_reports_its_reach_and_it_matches_real_edits(
    digits_model: nn.Module, digits_data: tuple[Dataset, Dataset], digits_fingerprint,  # type: ignore[no-untyped-def]
) -> None:
    """The share of single-parameter edits of +-5% that flip a query, measured over real
    edits of every tensor, is what the fingerprint's first-order reach says, give or take."""
    fp = digits_fingerprint
    reach = fp.meta["reach"]
    assert reach["deltas"] == [0.05, 0.01] and reach["first_order"]
    names = [n for n, _ in digits_model.named_parameters()]
    assert reach["tensors"] == names
    assert all(a >= b for a, b in zip(reach["share"][0], reach["share"][1], strict=True))  # 5% reveals more than 1%
    assert fp.meta["selection"]["method"] == "reach"
    labels = fp.expected.argmax(1)
    g = torch.Generator().manual_seed(1)
    work = copy.deepcopy(digits_model)
    measured = []
    for p, w in zip(digits_model.parameters(), work.parameters(), strict=True):
        draws = min(p.numel(), 60)
        idx = torch.randperm(p.numel(), generator=g)[:draws]
        caught = 0.0
        for j in idx.tolist():
            for sign in (-1.0, 1.0):  # both signs: the expected share over a random sign
                with torch.no_grad():
                    w.view(-1)[j] = p.reshape(-1)[j] * (1 + sign * 0.05)
                    caught += 0.5 * bool((work(fp.samples).argmax(1) != labels).any())
                    w.view(-1)[j] = p.reshape(-1)[j]
        measured.append(caught / draws)
    predicted = reach["share"][0]
    mean_gap = sum(abs(a - b) for a, b in zip(measured, predicted, strict=True)) / len(names)
    assert mean_gap < 0.1, list(zip(names, measured, predicted, strict=True))
    assert abs(sum(measured) / len(names) - reach["all"][0]) < 0.05


def _weights_as_buffers(model: nn.Module) -> nn.Module:
    """The same network with every parameter turned into a buffer (as some exporters do)."""
    out = copy.deepcopy(model)
    for mod in out.modules():
        for name, p in list(mod.named_parameters(recurse=False)):
            del mod._parameters[name]
            mod.register_buffer(name, p.detach().clone())
    return out


def test_a_model_without_parameters_falls_back_to_boundary_events(
    digits_model: nn.Module, digits_data: tuple[Dataset, Dataset],
) -> None:
    from veriprint.fingerprint import FingerprintConfig, make_fingerprint
    from veriprint.pipeline.generate import GenerationConfig

    model = _weights_as_buffers(digits_model).eval()
    assert not list(model.parameters())
    # the entropy objective (IBSF) needs no parameters either
    cfg = FingerprintConfig(bag=60, select=8, generation=GenerationConfig(
        steps=20, eps=2 / 16, lr=1e-2, objective="entropy"))
    fp, _, sel = make_fingerprint(model, digits_data[1], cfg, progress=False)
    assert sel.method == "manc+boundary" and fp.meta["reach"] == {}
    # class coverage works without reach (ties by margin); the budget predicts nothing
    budget = fp.meta["budget"]
    assert len(fp) == budget["queries"] == 8 + budget["added_for_classes"] and budget["predicted"] is None
    with pytest.raises(ValueError, match="expected a model with parameters"):
        parameter_reach(model, digits_data[1].x[:2].float())
