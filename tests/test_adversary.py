"""The provider as adversary: the policy registry, the provider's routing, counters and output
forms, and each policy against hand-computed or brute-force answers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from veriprint.adversary import (
    ConfidencePolicy,
    FeatureSqueezing,
    LearnedDetector,
    MarginPolicy,
    NearDuplicatePolicy,
    PartialRouting,
    Policy,
    Provider,
    ReplayPolicy,
    calibrate,
    list_policies,
    make_policy,
    margins,
    register_policy,
    routed_share,
    served_logits,
    softmax,
)
from veriprint.adversary.learned import FEATURES, features
from veriprint.adversary.near_duplicate import _coarse, nearest_linf
from veriprint.adversary.roc import roc, tpr_at
from veriprint.adversary.squeeze import median2x2, reduce_bits
from veriprint.errors import ConfigError
from veriprint.targets import QueryBatch

D, K = 24, 5


def pair(d: int = D, k: int = K) -> tuple[nn.Module, nn.Module]:
    """An intact linear model and a served copy whose logits differ from it by ~1 everywhere."""
    torch.manual_seed(1)
    intact = nn.Sequential(nn.Flatten(), nn.Linear(d, k)).eval()
    served = copy.deepcopy(intact)
    with torch.no_grad():
        served[1].bias.add_(torch.tensor([3.0, -2.0, 1.0, -1.5, 2.5][:k]))
    return intact, served


def inputs(n: int, d: int = D, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, d)).astype(np.float32)


def rows_from(out: np.ndarray, intact: np.ndarray, served: np.ndarray) -> np.ndarray:
    """Which copy answered each row: True where ``out`` is the intact copy's answer."""
    is_intact = np.isclose(out, intact, rtol=0, atol=1e-5).all(axis=1)
    is_served = np.isclose(out, served, rtol=0, atol=1e-5).all(axis=1)
    assert (is_intact ^ is_served).all(), "every row must come from exactly one copy"
    return is_intact


class FirstValue(Policy):
    """Routes rows whose first input is at least 0.5; records every observe() call."""

    def __init__(self) -> None:
        self.threshold = 0.5
        self.calls: list[tuple[int, bool]] = []

    def score(self, x: np.ndarray, served: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)[:, 0].astype(np.float64)

    def observe(self, x: np.ndarray, honest: bool) -> None:
        self.calls.append((len(x), honest))


# --- the registry --------------------------------------------------------------------------

def test_every_policy_module_is_registered_and_listed() -> None:
    infos = {p.name: p for p in list_policies()}
    expected = {"replay": (ReplayPolicy, True), "near-duplicate": (NearDuplicatePolicy, True),
                "margin": (MarginPolicy, False), "confidence": (ConfidencePolicy, False),
                "squeeze": (FeatureSqueezing, False), "learned": (LearnedDetector, False),
                "partial": (PartialRouting, True)}
    assert set(expected) <= set(infos)
    assert [p.name for p in list_policies()] == sorted(infos)
    for name, (cls, stateful) in expected.items():
        assert infos[name].cls is cls and cls.name == name
        assert infos[name].stateful is stateful and infos[name].summary
        p = make_policy(name)
        assert type(p) is cls and p.name == name
    nd = make_policy("near-duplicate", eps=0.25, scope="request")
    assert isinstance(nd, NearDuplicatePolicy) and (nd.eps, nd.scope) == (0.25, "request")


def test_unknown_policy_names_the_choices_and_duplicates_are_refused() -> None:
    with pytest.raises(ConfigError) as e:
        make_policy("no-such-policy")
    msg = str(e.value)
    assert "'no-such-policy'" in msg
    assert all(p.name in msg for p in list_policies())
    before = [p.cls for p in list_policies()]
    with pytest.raises(ValueError, match="already registered"):
        register_policy("replay", "again")(type("Again", (Policy,), {}))
    assert [p.cls for p in list_policies()] == before and ReplayPolicy.name == "replay"


# --- the provider --------------------------------------------------------------------------

def test_provider_answers_from_intact_before_the_swap_and_served_after() -> None:
    intact, served = pair()
    x = inputs(12)
    zi, zs = served_logits(intact, x), served_logits(served, x)
    assert np.abs(zi - zs).min() > 0.5  # the copies tell apart on every row and class
    p = Provider(intact, served, swapped=False)
    np.testing.assert_allclose(p.query(QueryBatch(x)), zi, rtol=0, atol=1e-5)
    p.swap()
    np.testing.assert_allclose(p.query(QueryBatch(x)), zs, rtol=0, atol=1e-5)
    assert (p.rows, p.rows_routed, p.requests) == (24, 0, 2)
    assert Provider(intact, served).swapped  # starts after the swap by default
    same = Provider(intact)  # no served copy: the intact one is served
    np.testing.assert_allclose(same.query(QueryBatch(x)), zi, rtol=0, atol=1e-5)


def test_provider_routes_flagged_rows_to_the_intact_copy_and_counts() -> None:
    intact, served = pair()
    x = inputs(10, seed=3)
    flag = x[:, 0] >= 0.5
    assert 0 < flag.sum() < len(x)
    pol = FirstValue()
    p = Provider(intact, served, pol, max_batch=4, swapped=False)
    assert pol.model is served  # bound to the served copy
    p.query(QueryBatch(x))
    assert (p.rows, p.rows_routed, p.requests) == (10, 0, 3)  # honest rows are not "routed"
    assert pol.calls == [(4, True), (4, True), (2, True)]
    p.swap()
    out = p.query(QueryBatch(x))
    np.testing.assert_array_equal(rows_from(out, served_logits(intact, x), served_logits(served, x)), flag)
    assert (p.rows, p.rows_routed, p.requests) == (20, int(flag.sum()), 6)
    assert (p.requests_sent, p.samples_sent) == (6, 20)
    # observe() says honest only for a request whose every row the intact copy answered
    assert pol.calls[3:] == [(4, bool(flag[lo:lo + 4].all())) for lo in (0, 4)] + [(2, bool(flag[8:].all()))]
    everything = x.copy()
    everything[:, 0] = 0.9
    p.max_batch = None
    p.query(QueryBatch(everything))
    assert pol.calls[-1] == (10, True) and p.rows_routed == int(flag.sum()) + 10


def test_provider_output_forms_and_bad_settings() -> None:
    intact, served = pair()
    x = inputs(7, seed=5)
    z = served_logits(served, x)
    logits = Provider(intact, served).query(QueryBatch(x))
    probs = Provider(intact, served, output="probs").query(QueryBatch(x))
    labels = Provider(intact, served, output="labels").query(QueryBatch(x))
    assert logits.shape == probs.shape == (7, K) and labels.shape == (7,)
    np.testing.assert_allclose(probs, softmax(z), rtol=0, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(labels, z.argmax(axis=1))
    assert len(set(labels.tolist())) > 1  # not a constant answer
    with pytest.raises(ConfigError, match="logits, probs, labels"):
        Provider(intact, served, output="topk")  # type: ignore[arg-type]

    class Short(Policy):
        def route(self, x: np.ndarray, served: np.ndarray) -> np.ndarray:
            return np.ones(len(x) - 1, bool)

    with pytest.raises(ConfigError, match="expected 7 routing flags"):
        Provider(intact, served, Short()).query(QueryBatch(x))


def test_softmax_and_margins_by_hand() -> None:
    z = np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 0.0], [0.0, 0.0, -1.0]])
    np.testing.assert_allclose(margins(z), [1.0, 0.0, 0.0])
    assert np.isinf(margins(np.zeros((3, 1)))).all()
    np.testing.assert_allclose(softmax(np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]])),
                               [[0.25, 0.75], [0.5, 0.5]])


# --- replay --------------------------------------------------------------------------------

def test_replay_answers_inputs_seen_while_honest_as_then() -> None:
    intact, served = pair()
    seen = inputs(6, seed=1)
    pol = ReplayPolicy()
    p = Provider(intact, served, pol, swapped=False)
    honest = p.query(QueryBatch(seen))
    p.swap()
    new = inputs(2, seed=2)
    nudged = np.nextafter(seen[4], np.float32(2))  # one ulp away: other bytes, same "image"
    x = np.stack([seen[2], new[0], nudged, seen[0], new[1]])
    out = p.query(QueryBatch(x))
    np.testing.assert_array_equal(rows_from(out, served_logits(intact, x), served_logits(served, x)),
                                  [True, False, False, True, False])
    np.testing.assert_allclose(out[[0, 3]], honest[[2, 0]], rtol=0, atol=1e-6)  # the answers given then
    assert p.rows_routed == 2
    # inputs first answered after the swap are not remembered (their answer was the served one)
    again = p.query(QueryBatch(new))
    assert not rows_from(again, served_logits(intact, new), served_logits(served, new)).any()
    late = ReplayPolicy(remember_after_swap=True)
    late.observe(new, honest=False)
    assert late.route(new, served_logits(served, new)).all()
    pol.reset()
    assert not pol.route(seen, served_logits(served, seen)).any()


# --- near-duplicates -----------------------------------------------------------------------

def brute_nearest(x: np.ndarray, kept: np.ndarray) -> np.ndarray:
    a = x.reshape(len(x), 1, -1).astype(np.float64)
    b = kept.reshape(1, len(kept), -1).astype(np.float64)
    return np.abs(a - b).max(axis=2).min(axis=1)  # type: ignore[no-any-return]


@pytest.mark.parametrize("shape", [(1, 7, 9), (32,)], ids=["63-values-padded", "32-values"])
def test_nearest_linf_equals_brute_force(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(4)
    kept = rng.uniform(0, 1, (60, *shape)).astype(np.float32)
    x = rng.uniform(0, 1, (25, *shape)).astype(np.float32)
    x[:10] = np.clip(kept[rng.choice(60, 10, replace=False)] + rng.uniform(-0.05, 0.05, (10, *shape)), 0, 1)
    x[10] = kept[7]  # an exact duplicate
    exact = brute_nearest(x, kept)
    assert exact[10] == 0 and (exact[:10] <= 0.05 + 1e-6).all() and (exact[11:] > 0.3).all()
    np.testing.assert_allclose(nearest_linf(x, kept), exact, rtol=0, atol=1e-6)
    for within in (0.03, float(np.median(exact)), 0.5):  # the prefilter path
        got = nearest_linf(x, kept, _coarse(kept), within=within)
        near = exact <= within
        assert 0 < near.sum() < len(x) or within == 0.5
        np.testing.assert_allclose(got[near], exact[near], rtol=0, atol=1e-6)
        assert np.isinf(got[~near]).all()
    assert np.isinf(nearest_linf(x, kept[:0])).all() and nearest_linf(x[:0], kept).shape == (0,)


def test_near_duplicate_routes_within_eps_of_kept_traffic() -> None:
    intact, served = pair()
    eps = 0.05
    traffic = inputs(8, seed=6)
    pol = NearDuplicatePolicy(eps, whole_request=False)
    p = Provider(intact, served, pol, swapped=False)
    p.query(QueryBatch(traffic))
    p.swap()
    close = np.clip(traffic[3] + np.float32(0.04) * np.sign(0.5 - traffic[3]), 0, 1)
    far = np.clip(traffic[5] + np.float32(0.08) * np.sign(0.5 - traffic[5]), 0, 1)
    x = np.stack([close, far, inputs(1, seed=7)[0]])
    assert brute_nearest(x, traffic)[0] <= eps < brute_nearest(x, traffic)[1]
    np.testing.assert_allclose(-pol.score(x[:1], served_logits(served, x[:1])), brute_nearest(x[:1], traffic),
                               atol=1e-6)
    out = p.query(QueryBatch(x))
    np.testing.assert_array_equal(rows_from(out, served_logits(intact, x), served_logits(served, x)),
                                  [True, False, False])
    # traffic answered after the swap is kept too
    later = np.clip(x[2:] + np.float32(0.01), 0, 1)
    assert pol.route(later, served_logits(served, later)).all()
    # one flagged row sends its whole request to the intact copy
    whole = Provider(intact, served, NearDuplicatePolicy(eps), swapped=False)
    whole.query(QueryBatch(traffic))
    whole.swap()
    whole.query(QueryBatch(x))
    assert whole.rows_routed == 3
    pol.reset()
    assert not pol.route(x[:1], served_logits(served, x[:1])).any()


def test_near_duplicate_request_scope_looks_only_inside_the_request() -> None:
    _, served = pair()
    eps = 0.05
    a = inputs(4, seed=8)
    twin = np.clip(a[1] + np.float32(0.02), 0, 1)
    req = NearDuplicatePolicy(eps, scope="request", whole_request=False)
    traffic = NearDuplicatePolicy(eps, scope="traffic", whole_request=False)
    for pol in (req, traffic):
        pol.observe(a, honest=True)
    x = np.stack([a[0], twin, a[1], a[3] + np.float32(0.3)])
    z = served_logits(served, x)
    np.testing.assert_array_equal(req.route(x, z), [False, True, True, False])  # the pair in the request
    np.testing.assert_array_equal(traffic.route(x, z), [True, True, True, False])  # a[0] was sent before
    np.testing.assert_array_equal(req.route(x[:1], z[:1]), [False])
    assert traffic.route(x[:1], z[:1]).all()
    with pytest.raises(ConfigError, match="scope"):
        NearDuplicatePolicy(scope="everything")  # type: ignore[arg-type]


# --- margin and confidence -----------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
def test_calibrate_flags_the_rate_of_natural_inputs_with_the_smallest_margins(rate: float) -> None:
    _, served = pair()
    natural = inputs(1000, seed=9)
    z = served_logits(served, natural)
    pol = calibrate(MarginPolicy(), natural, served, rate)
    flagged = pol.route(natural, z)
    assert abs(flagged.mean() - rate) <= 1 / len(natural)
    m = margins(z)
    assert m[flagged].max() < m[~flagged].min()  # exactly the smallest margins
    assert abs(routed_share(pol, natural, served) - flagged.mean()) <= 2 / len(natural)
    conf = calibrate(ConfidencePolicy(), natural, served, rate)
    top = softmax(z).max(axis=1)
    cf = conf.route(natural, z)
    assert abs(cf.mean() - rate) <= 1 / len(natural) and top[cf].max() < top[~cf].min()


def test_calibrate_edges_and_a_fixed_margin_threshold() -> None:
    intact, served = pair()
    natural = inputs(200, seed=10)
    z = served_logits(served, natural)
    assert not calibrate(MarginPolicy(), natural, served, 0.0).route(natural, z).any()
    assert calibrate(MarginPolicy(), natural, served, 1.0).route(natural, z).all()
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        calibrate(MarginPolicy(), natural, served, 1.5)
    assert not MarginPolicy().route(natural, z).any()  # no threshold: routes nothing
    t = float(np.quantile(margins(z), 0.3))
    p = Provider(intact, served, MarginPolicy(t))
    out = p.query(QueryBatch(natural))
    small = margins(z) <= t
    np.testing.assert_array_equal(rows_from(out, served_logits(intact, natural), z), small)
    assert p.rows_routed == small.sum() and 0.25 < small.mean() < 0.35
    assert "margin <= " in MarginPolicy(t).describe()
    conf = ConfidencePolicy(0.6)
    np.testing.assert_array_equal(conf.route(natural, z), softmax(z).max(axis=1) <= 0.6)


# --- feature squeezing ---------------------------------------------------------------------

def test_reduce_bits_and_median_by_hand() -> None:
    x = np.array([-0.1, 0.0, 0.2, 0.5, 0.9, 1.0, 1.2], np.float32)
    np.testing.assert_allclose(reduce_bits(x, 1), [0, 0, 0, 0, 1, 1, 1])  # 0.5 rounds to even
    np.testing.assert_allclose(reduce_bits(x, 2), [0, 0, 1 / 3, 2 / 3, 1, 1, 1], atol=1e-7)
    np.testing.assert_allclose(reduce_bits(x, 8), np.round(np.clip(x, 0, 1) * 255) / 255, atol=1e-7)
    img = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32)  # N, C, H, W
    # edges repeated: windows (1,2,3,4), (2,2,4,4), (3,4,3,4), (4,4,4,4)
    np.testing.assert_array_equal(median2x2(img), [[[[2.5, 3.0], [3.5, 4.0]]]])
    big = np.array([[[0, 9, 0], [9, 0, 9], [0, 0, 0]]], np.float32)  # N, H, W
    np.testing.assert_array_equal(median2x2(big), [[[4.5, 4.5, 4.5], [0, 0, 4.5], [0, 0, 0]]])
    assert median2x2(img).dtype == np.float32
    flat = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert median2x2(flat) is flat  # no image axes: unchanged


def test_feature_squeezing_score_is_the_largest_l1_change() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).eval()
    rng = np.random.default_rng(11)
    x = rng.uniform(0, 1, (6, 1, 4, 4)).astype(np.float32)
    z = served_logits(model, x)
    sq = FeatureSqueezing(bits=3)
    with pytest.raises(ConfigError, match="bind"):
        sq.score(x, z)
    sq.bind(model)
    p = softmax(z)
    bits = np.abs(softmax(served_logits(model, reduce_bits(x, 3))) - p).sum(axis=1)
    med = np.abs(softmax(served_logits(model, median2x2(x))) - p).sum(axis=1)
    np.testing.assert_allclose(sq.score(x, z), np.maximum(bits, med), rtol=1e-6)
    assert (bits != med).any()
    np.testing.assert_allclose(FeatureSqueezing(bits=3, median=False).bind(model).score(x, z), bits, rtol=1e-6)
    flat = np.full((2, 1, 4, 4), 2 / 7, np.float32)  # on the 3-bit grid and constant: nothing moves
    assert np.allclose(sq.score(flat, served_logits(model, flat)), 0, atol=1e-9)
    for bad in (0, 9):
        with pytest.raises(ConfigError, match="bits"):
            FeatureSqueezing(bits=bad)


# --- the learned detector ------------------------------------------------------------------

def test_learned_detector_tells_its_samples_from_natural_inputs() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    rng = np.random.default_rng(12)

    def natural(n: int) -> np.ndarray:  # smooth images: a gradient and a little noise, inside (0, 1)
        ramp = np.linspace(0.2, 0.8, 8, dtype=np.float32)
        base = rng.uniform(0.8, 1.2, (n, 1, 1, 1)).astype(np.float32) * ramp[None, None, :, None]
        return np.clip(base + rng.normal(0, 0.01, (n, 1, 8, 8)), 0.05, 0.95).astype(np.float32)

    def samples(n: int) -> np.ndarray:  # the "veriprint samples": saturated, high-frequency
        return rng.integers(0, 2, (n, 1, 8, 8)).astype(np.float32)

    det = LearnedDetector()
    with pytest.raises(ConfigError, match="bind"):
        det.fit(samples(10), natural(10))
    with pytest.raises(ConfigError, match="not trained"):
        det.score(samples(2), served_logits(model, samples(2)))
    det.bind(model).fit(samples(80), natural(80))
    f = features(samples(3), served_logits(model, samples(3)), det.squeeze)
    assert f.shape == (3, len(FEATURES)) and np.isfinite(f).all()
    pos, neg = samples(100), natural(300)
    s_pos, s_neg = det.score(pos, served_logits(model, pos)), det.score(neg, served_logits(model, neg))
    assert roc(s_pos, s_neg).auc > 0.99 and tpr_at(s_pos, s_neg, 0.01) > 0.95
    calibrate(det, neg, model, 0.05)
    assert abs(det.route(neg, served_logits(model, neg)).mean() - 0.05) <= 1 / 300
    assert det.route(pos, served_logits(model, pos)).mean() > 0.95


# --- partial routing -----------------------------------------------------------------------

def test_partial_routing_tampers_the_share_of_requests_with_its_seed() -> None:
    intact, served = pair()
    x = inputs(2000, seed=13)
    zi, zs = served_logits(intact, x), served_logits(served, x)

    def run(share: float, seed: int) -> tuple[np.ndarray, Provider]:
        p = Provider(intact, served, PartialRouting(share, seed=seed), max_batch=2)
        return rows_from(p.query(QueryBatch(x)), zi, zs), p

    routed, p = run(0.3, 1)
    per_request = routed.reshape(-1, 2)
    assert (per_request[:, 0] == per_request[:, 1]).all()  # whole requests, never single rows
    tampered = 1 - per_request[:, 0].mean()
    assert abs(tampered - 0.3) < 0.04  # 1,000 requests: sd 0.015
    assert p.requests == 1000 and p.rows_routed == routed.sum()
    np.testing.assert_array_equal(run(0.3, 1)[0], routed)  # the same seed, the same lottery
    assert (run(0.3, 2)[0] != routed).any()
    assert run(0.0, 1)[0].all() and not run(1.0, 1)[0].any()
    with pytest.raises(ConfigError, match="share"):
        PartialRouting(1.2)


# --- ROC ------------------------------------------------------------------------------------

def test_roc_and_tpr_at_by_hand() -> None:
    assert roc(np.array([0.9, 0.4]), np.array([0.1, 0.5])).auc == pytest.approx(0.75)  # 3 of 4 pairs
    r = roc(np.array([2.0, 3.0, 4.0]), np.array([0.0, 1.0]))
    assert r.auc == 1.0 and r.tpr[-1] == 1.0 and r.fpr[0] == 0.0
    assert roc(np.array([0.0, 1.0]), np.array([2.0, 3.0])).auc == 0.0
    same = np.linspace(0, 1, 50)
    assert roc(same, same).auc == pytest.approx(0.5)
    rng = np.random.default_rng(14)
    assert abs(roc(rng.normal(size=2000), rng.normal(size=2000)).auc - 0.5) < 0.04
    assert roc(np.array([np.inf, 5.0]), np.array([-np.inf, np.nan])).auc == 1.0
    natural = np.arange(100.0)  # 1% of it is at or above 99
    assert tpr_at(np.array([50.0, 99.0, 100.0, 200.0]), natural, 0.01) == 0.75
    assert tpr_at(np.array([94.0, 95.0]), natural, 0.05) == 0.5
    ties = np.zeros(100)  # the threshold moves above the tie, not onto it
    assert tpr_at(np.array([0.0, 1.0]), ties, 0.01) == 0.5
