"""Detection power through label APIs: settled margins, twins across the boundary, boundary
seeds, event-covering selection, and no false alarm from any of them."""

from __future__ import annotations

import copy

import pytest
import torch

from veriprint.data import Dataset
from veriprint.fingerprint import FingerprintConfig, make_fingerprint
from veriprint.noise import as_logits
from veriprint.pipeline.generate import GenerationConfig
from veriprint.pipeline.refinement import label_margin, refine_to_boundary
from veriprint.pipeline.twins import boundary_twins
from veriprint.selectors.algorithms import boundary_events, event_cover
from veriprint.targets import TorchTarget
from veriprint.verification.verify import verify

EPS = 8 / 255


def test_boundary_events_one_sided_and_two_sided() -> None:
    z = torch.tensor([[3.0, 2.9, 0.0], [0.0, 1.0, 1.2]])
    one = boundary_events(z, both_sides=False)
    assert one.shape == (2, 6)
    # sample 0: class 0 falling (event 0), class 1 rising (event 3)
    assert one[0].nonzero().flatten().tolist() == [0, 3]
    # sample 1: class 2 falling (event 4), class 1 rising (event 3)
    assert one[1].nonzero().flatten().tolist() == [3, 4]
    both = boundary_events(z, both_sides=True)
    assert both.tolist() == [[True, True, False], [False, True, True]]


def test_event_cover_prefers_new_classes_over_neurons() -> None:
    # three candidates: 0 and 1 share classes {0, 1}; 2 covers {2, 3}. Candidate 1 has
    # far more neurons, but once 0 or 1 is picked, 2 must come next.
    events = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    active = torch.zeros(3, 50, dtype=torch.bool)
    active[1, :40] = True
    active[2, :2] = True
    sel = event_cover(active, events, 2)
    assert sorted(sel.indices.tolist()) == [1, 2]
    with pytest.raises(ValueError, match="events for the 3 samples"):
        event_cover(active, events[:2], 2)


@pytest.fixture(scope="module")
def refined(fashion_model: torch.nn.Module, fashion_data: tuple[Dataset, Dataset]):  # type: ignore[no-untyped-def]
    """40 low-margin test images of the Fashion CNN, refined to a target margin of 2e-4."""
    test = fashion_data[1]
    with torch.inference_mode():
        z = fashion_model(test.x[:400])
    top2 = z.topk(2, dim=1).values
    seeds = test.x[:400][(top2[:, 0] - top2[:, 1]).argsort()[:40]].float()
    ref = refine_to_boundary(fashion_model, seeds, seeds, target=2e-4, eps=EPS, domain=test.domain)
    return seeds, ref, test.domain


def test_line_search_finds_the_bisections_prefix_in_fewer_passes(fashion_model: torch.nn.Module,
                                                                 fashion_data: tuple[Dataset, Dataset]) -> None:
    """The prefix between a sample above the target and one below: both searches keep the
    margin at or above the target and find the same prefix; the line search, from the
    first-order prediction, in fewer forward passes."""
    from veriprint.pipeline.cost import CostMeter
    from veriprint.pipeline.refinement import _prefix_search

    test = fashion_data[1]
    with torch.inference_mode():
        z = fashion_model(test.x[:200])
    top2 = z.topk(2, dim=1).values
    x = test.x[:200][(top2[:, 0] - top2[:, 1]).argsort()[:24]].float()
    labels = fashion_model(x).argmax(1)
    step = test.domain.step
    below = x.clone()
    for _ in range(6):  # signed-gradient steps down the margin until every sample is below tau
        xr = below.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(label_margin(fashion_model, xr, labels).sum(), xr)
        below = test.domain.snap((below - step * g.sign()).clamp(0, 1))
    with torch.no_grad():
        m_above, m_below = label_margin(fashion_model, x, labels), label_margin(fashion_model, below, labels)
    keep = m_below < 1e-4
    assert int(keep.sum()) >= 12
    a, b, lab = x[keep], below[keep], labels[keep]
    tau = torch.full((len(a),), 1e-4, dtype=torch.float64).clamp(max=m_above[keep] / 2)
    out, passes = {}, {}
    for method in ("bisect", "line"):
        meter = CostMeter(fashion_model)
        with meter.stage("prefix"):
            out[method] = _prefix_search(fashion_model, a, b, lab, tau, "logits", test.domain, method)
        meter.close()
        passes[method] = meter.report()["prefix"]["forward"]
        with torch.no_grad():
            assert (label_margin(fashion_model, out[method], lab) >= tau).all(), method
    assert torch.equal(out["line"], out["bisect"])  # the margin falls monotonically along these prefixes
    assert passes["line"] < passes["bisect"], passes


@pytest.mark.slow
def test_settled_margins_sit_just_above_the_target(fashion_model, refined) -> None:  # type: ignore[no-untyped-def]
    seeds, ref, domain = refined
    assert int(ref.reached.sum()) >= 30
    m = ref.margin[ref.reached]
    assert (m >= 2e-4).all()
    # before settling, one pixel step moved margins by ~10x the target; now most are within 10%
    assert float((m <= 2.2e-4).double().mean()) >= 0.6, m
    assert domain.on_grid(ref.samples)
    assert float((ref.samples - seeds).abs().max()) <= EPS + 1e-6
    labels = fashion_model(seeds).argmax(1)
    assert torch.equal(fashion_model(ref.samples).argmax(1), labels)


@pytest.mark.slow
def test_twins_cross_the_boundary_and_detect_either_direction(fashion_model, refined) -> None:  # type: ignore[no-untyped-def]
    seeds, ref, domain = refined
    x = ref.samples[ref.reached]
    s = seeds[ref.reached]
    twins, ok = boundary_twins(fashion_model, x, s, target=2e-4, eps=EPS, domain=domain)
    assert int(ok.sum()) >= 0.7 * len(x)
    with torch.no_grad():
        za, zt = fashion_model(x[ok]), fashion_model(twins[ok])
    la, lt = za.argmax(1), zt.argmax(1)
    assert (la != lt).all()
    # the twin's label is the anchor's runner-up and the anchor's label the twin's runner-up
    assert torch.equal(za.topk(2, 1).indices[:, 1], lt) and torch.equal(zt.topk(2, 1).indices[:, 1], la)
    assert (label_margin(fashion_model, twins[ok], lt) >= 1e-4).all()
    assert domain.on_grid(twins) and float((twins - s).abs().max()) <= EPS + 1e-6
    # shifting the anchor's logit up or down by 1e-3 flips exactly one of each pair
    for sign in (1.0, -1.0):
        def shifted(xx: torch.Tensor, sign: float = sign, lab: torch.Tensor = la) -> torch.Tensor:
            z = fashion_model(xx)
            return z + sign * 1e-3 * torch.nn.functional.one_hot(lab, z.shape[1])
        with torch.no_grad():
            flip_a = shifted(x[ok]).argmax(1) != la
            flip_t = shifted(twins[ok]).argmax(1) != lt
        assert (flip_a ^ flip_t).all()


@pytest.fixture(scope="module")
def default_fp(fashion_model: torch.nn.Module, fashion_data: tuple[Dataset, Dataset]):  # type: ignore[no-untyped-def]
    cfg = FingerprintConfig(bag=100, generation=GenerationConfig(steps=60))
    return make_fingerprint(fashion_model, fashion_data[1], cfg, progress=False)


def _variants(model: torch.nn.Module) -> dict[str, object]:
    """Functionally identical deployments: batch sizes, one thread, float64, onnxruntime."""
    from veriprint.models.onnx_import import export_onnx
    from veriprint.targets import OnnxTarget

    m64 = copy.deepcopy(model).double()
    out: dict[str, object] = {
        "batch 1": TorchTarget(model, max_batch=1),
        "batch 64": TorchTarget(model, max_batch=64),
        "1 thread": TorchTarget(model, threads=1),
        "float64": lambda x: m64(torch.as_tensor(x).double()).float().detach().numpy(),
    }
    import tempfile
    from pathlib import Path

    path = export_onnx(model, torch.zeros(2, 1, 28, 28), Path(tempfile.mkdtemp()) / "m.onnx")
    out["onnxruntime"] = OnnxTarget(path)
    return out


@pytest.mark.slow
def test_default_fingerprint_is_pairs_and_never_false_alarms(fashion_model, fashion_data, default_fp) -> None:  # type: ignore[no-untyped-def]
    fp, _, _ = default_fp
    # 4 pairs, then pairs until every class labels a query (a class the bag lacks stays listed as blind)
    assert 2 * fp.meta["selection"]["pairs"] == len(fp) >= 8 and fp.meta["selection"]["seeds"] == "boundary"
    labels = fp.expected.argmax(1)
    assert sorted(set(labels.tolist()) | set(fp.meta["budget"]["blind"])) == list(range(10))
    assert (labels[0::2] != labels[1::2]).all()  # each pair straddles a boundary
    # chosen by reach: they reveal a 5% change of more parameters than the previous rule's picks
    # (boundary events: new classes first) from the same bag
    assert fp.meta["selection"]["method"] == "reach"
    events, _, _ = make_fingerprint(fashion_model, fashion_data[1], FingerprintConfig(
        bag=100, selector="manc", generation=GenerationConfig(steps=60)), progress=False)
    assert fp.meta["reach"]["all"][0] > events.meta["reach"]["all"][0], (fp.meta["reach"], events.meta["reach"])
    assert len(set(labels.tolist())) >= 6
    assert (fp.margin > fp.noise.floor).all()
    assert fp.domain.on_grid(fp.samples) and float(fp.psnr.min()) > 30
    for name, target in _variants(fashion_model).items():
        for spec in ("top1", "topk:3", "probs", "probs:2", "top1-prob:2", "logits"):
            report = verify(fp, target, spec=spec)  # type: ignore[arg-type]
            assert report.verdict == "INTACT" and report.compared == len(fp), (name, spec, report.reason)


@pytest.mark.slow
def test_no_candidate_of_the_bag_changes_label_on_any_intact_variant(fashion_model, default_fp) -> None:  # type: ignore[no-untyped-def]
    """Over all samples, not only the 8 picked: any could have been in a fingerprint."""
    fp, gen, _ = default_fp
    x = gen.samples[gen.margin > fp.noise.floor]
    twins, ok = boundary_twins(fashion_model, x, gen.seeds[gen.margin > fp.noise.floor],
                               target=2 * fp.noise.floor, eps=EPS, domain=fp.domain)
    pool = torch.cat([x, twins[ok]])
    with torch.inference_mode():
        base = as_logits(fashion_model(pool), "logits").argmax(1)
    from veriprint.targets import QueryBatch

    for name, target in _variants(fashion_model).items():
        if hasattr(target, "query"):
            out = target.query(QueryBatch(pool.numpy()))  # type: ignore[union-attr]
            got = torch.as_tensor(out).argmax(1)
        else:
            with torch.inference_mode():
                got = torch.as_tensor(target(pool.numpy())).argmax(1)  # type: ignore[operator]
        assert torch.equal(got, base), (name, int((got != base).sum()))


@pytest.mark.slow
def test_default_fingerprint_catches_what_top1_hides_from_the_paper(fashion_model, default_fp) -> None:  # type: ignore[no-untyped-def]
    fp, _, _ = default_fp

    def edited(fn) -> torch.nn.Module:  # type: ignore[no-untyped-def]
        m = copy.deepcopy(fashion_model)
        with torch.no_grad():
            fn(m)
        return m

    def fp16(m: torch.nn.Module) -> None:
        for p in m.parameters():
            p.copy_(p.half().float())

    def first_weight(m: torch.nn.Module) -> None:
        w = m[0].weight
        w.view(-1)[int(w.abs().argmax())] *= 1.05

    for fn in (fp16, first_weight):
        report = verify(fp, edited(fn), spec="top1")
        assert report.verdict == "TAMPERED", (fn.__name__, report.reason)
