"""The provider policies: each routes what it claims to, and the provider answers each row
from the copy its policy picks."""

from __future__ import annotations

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
    routed_share,
    served_logits,
    softmax,
)
from veriprint.adversary.near_duplicate import nearest_linf
from veriprint.adversary.roc import roc, tpr_at
from veriprint.adversary.squeeze import median2x2, reduce_bits
from veriprint.errors import ConfigError
from veriprint.targets import QueryBatch


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    intact = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    served = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    served.load_state_dict(intact.state_dict())
    with torch.no_grad():
        served[1].bias += torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0])  # a visible change
    return intact.eval(), served.eval()


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 4, 4)).astype(np.float32)


class RouteEven(Policy):
    """Routes even rows (a test double)."""

    def route(self, x: np.ndarray, served: np.ndarray) -> np.ndarray:
        return np.arange(len(x)) % 2 == 0


def test_every_policy_is_registered_and_a_wrong_name_lists_them() -> None:
    names = {p.name for p in list_policies()}
    assert {"replay", "near-duplicate", "margin", "confidence", "squeeze", "learned", "partial"} <= names
    assert {p.name for p in list_policies() if p.stateful} >= {"replay", "near-duplicate", "partial"}
    assert isinstance(make_policy("margin", threshold=0.5), MarginPolicy)
    with pytest.raises(ConfigError, match=r"expected a provider policy among .*replay.*got 'bogus'"):
        make_policy("bogus")


def test_the_provider_answers_each_row_from_the_copy_its_policy_picks() -> None:
    intact, served = _pair()
    x = _x(6)
    zi, zs = served_logits(intact, x), served_logits(served, x)
    p = Provider(intact, served, RouteEven(), swapped=False)
    np.testing.assert_allclose(p.query(QueryBatch(x)), zi, rtol=1e-6)  # honest phase: all intact
    assert p.rows_routed == 0
    p.swap()
    got = p.query(QueryBatch(x))
    np.testing.assert_allclose(got[0::2], zi[0::2], rtol=1e-6)
    np.testing.assert_allclose(got[1::2], zs[1::2], rtol=1e-6)
    assert (p.rows, p.rows_routed, p.requests) == (12, 3, 2)
    plain = Provider(intact, served)
    np.testing.assert_allclose(plain.query(QueryBatch(x)), zs, rtol=1e-6)


def test_output_forms() -> None:
    intact, served = _pair()
    x = _x(4)
    z = served_logits(served, x)
    probs = Provider(intact, served, output="probs").query(QueryBatch(x))
    np.testing.assert_allclose(probs, softmax(z), rtol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    labels = Provider(intact, served, output="labels").query(QueryBatch(x))
    assert labels.shape == (4,) and (labels == z.argmax(axis=1)).all()
    with pytest.raises(ConfigError, match="expected a provider output"):
        Provider(intact, served, output="text")  # type: ignore[arg-type]


def test_replay_answers_what_it_saw_while_honest_and_nothing_else() -> None:
    intact, served = _pair()
    seen, new = _x(3, seed=1), _x(3, seed=2)
    p = Provider(intact, served, ReplayPolicy(), swapped=False)
    p.query(QueryBatch(seen))
    p.swap()
    np.testing.assert_allclose(p.query(QueryBatch(seen)), served_logits(intact, seen), rtol=1e-6)
    np.testing.assert_allclose(p.query(QueryBatch(new)), served_logits(served, new), rtol=1e-6)
    nudged = seen.copy()
    nudged[0, 0, 0, 0] += 1 / 255  # one grey level: not the same input any more
    assert not ReplayPolicy().route(nudged, served_logits(served, nudged)).any()


def test_nearest_linf_matches_brute_force_with_and_without_the_prefilter() -> None:
    rng = np.random.default_rng(3)
    kept = rng.random((60, 1, 8, 8)).astype(np.float32)
    x = np.concatenate([kept[:5] + rng.uniform(-0.03, 0.03, (5, 1, 8, 8)).astype(np.float32),
                        rng.random((5, 1, 8, 8)).astype(np.float32)])
    brute = np.abs(x.reshape(10, 1, -1) - kept.reshape(1, 60, -1)).max(axis=2).min(axis=1)
    np.testing.assert_allclose(nearest_linf(x, kept), brute, rtol=1e-6)
    within = nearest_linf(x, kept, within=0.05)
    np.testing.assert_allclose(within[brute <= 0.05], brute[brute <= 0.05], rtol=1e-6)
    assert np.isinf(within[brute > 0.05]).all()
    assert np.isinf(nearest_linf(x, kept[:0])).all()


def test_near_duplicates_within_eps_are_routed_in_the_request_or_over_traffic() -> None:
    intact, served = _pair()
    base = _x(4, seed=4)
    twin = base[:1] + 2 / 255
    far = base[:1] + 40 / 255
    req = NearDuplicatePolicy(scope="request", whole_request=False)
    z = served_logits(served, np.concatenate([base, twin]))
    flags = req.route(np.concatenate([base, twin]), z)
    assert flags[0] and flags[-1] and not flags[1:4].any()
    # over traffic: an input within eps of one answered earlier is routed, one farther is not
    pol = NearDuplicatePolicy(scope="traffic", whole_request=False)
    p = Provider(intact, served, pol, swapped=False)
    p.query(QueryBatch(base))
    p.swap()
    assert pol.route(twin, served_logits(served, twin)).all()
    assert not pol.route(far, served_logits(served, far)).any()
    assert not req.route(twin, served_logits(served, twin)).any()  # request scope keeps nothing
    whole = NearDuplicatePolicy(scope="request")
    assert whole.route(np.concatenate([base, twin]), z).all()  # one pair routes the whole request


def test_calibrated_margin_and_confidence_flag_their_rate_and_the_small_margins() -> None:
    _intact, served = _pair()
    natural = _x(2000, seed=5)
    pol = calibrate(MarginPolicy(), natural, served, 0.05)
    m = margins(served_logits(served, natural))
    flagged = pol.route(natural, served_logits(served, natural))
    assert 0.04 <= flagged.mean() <= 0.06
    assert m[flagged].max() <= m[~flagged].min()  # exactly the smallest margins
    conf = calibrate(ConfidencePolicy(), natural, served, 0.05)
    assert 0.04 <= conf.route(natural, served_logits(served, natural)).mean() <= 0.06
    assert routed_share(pol, natural, served) == pytest.approx(flagged.mean())
    never = calibrate(MarginPolicy(), natural, served, 0.0)
    assert not never.route(natural, served_logits(served, natural)).any()


def test_squeezing_helpers_by_hand() -> None:
    x = np.array([0.0, 0.1, 0.49, 0.5, 0.97, 1.2, -0.1], np.float32)
    np.testing.assert_allclose(reduce_bits(x, 1), [0, 0, 0, 0, 1, 1, 0])
    np.testing.assert_allclose(reduce_bits(x, 2), np.round(np.clip(x, 0, 1) * 3) / 3)
    img = np.array([[[[0, 1, 0], [1, 1, 0], [0, 0, 0]]]], np.float32)
    out = median2x2(img)
    # each pixel: median of itself, right, below and below-right (edges repeated)
    expect = np.array([[[[1, 0.5, 0], [0.5, 0, 0], [0, 0, 0]]]], np.float32)
    np.testing.assert_allclose(out, expect)
    _intact, served = _pair()
    pol = FeatureSqueezing().bind(served)
    assert pol.score(_x(8), served_logits(served, _x(8))).shape == (8,)


def test_the_learned_detector_separates_what_it_was_trained_to() -> None:
    _intact, served = _pair()
    natural = _x(300, seed=6)
    rng = np.random.default_rng(7)
    samples = np.clip(natural[:150] + rng.choice([-0.3, 0.3], natural[:150].shape), 0, 1).astype(np.float32)
    det = LearnedDetector().bind(served).fit(samples, natural[150:])
    s_q = det.score(samples, served_logits(served, samples))
    s_n = det.score(natural[150:], served_logits(served, natural[150:]))
    assert roc(s_q, s_n).auc > 0.9


def test_partial_routing_routes_its_share_of_whole_requests_and_is_seeded() -> None:
    _intact, served = _pair()
    x = _x(3)
    z = served_logits(served, x)
    pol = PartialRouting(share=0.2, seed=1)
    routes = [pol.route(x, z) for _ in range(2000)]
    assert all(r.all() or not r.any() for r in routes)  # whole requests
    tampered = np.mean([not r.any() for r in routes])
    assert 0.17 < tampered < 0.23
    again = PartialRouting(share=0.2, seed=1)
    assert [bool(again.route(x, z)[0]) for _ in range(50)] == [bool(r[0]) for r in routes[:50]]
    with pytest.raises(ConfigError, match="share in"):
        PartialRouting(share=1.5)


def test_roc_and_the_true_positive_rate_at_a_false_positive_rate() -> None:
    perfect = roc(np.array([2.0, 3.0]), np.array([0.0, 1.0]))
    assert perfect.auc == 1.0
    rng = np.random.default_rng(8)
    same = roc(rng.random(4000), rng.random(4000))
    assert abs(same.auc - 0.5) < 0.03
    natural = np.arange(100, dtype=float)  # the top 1% is the value 99
    assert tpr_at(np.array([99.0, 98.0, 150.0, -1.0]), natural, 0.01) == 0.5
    assert tpr_at(np.array([0.0]), np.zeros(100), 0.01) == 0.0  # ties cannot flag everything
