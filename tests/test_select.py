"""MANC (Algorithm 2) on hand-computed examples, multi-cover, eligibility, random selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veriprint.selectors.algorithms import activations, manc, random_selection

# Four samples, five neurons.
A = torch.tensor(
    [[1, 1, 0, 0, 0],
     [0, 0, 1, 1, 1],
     [1, 0, 1, 0, 0],
     [0, 1, 0, 0, 1]], dtype=torch.bool)


def test_manc_hand_computed() -> None:
    s = manc(A, 2)
    # Sample 1 covers 3 new neurons; then sample 0 covers the 2 remaining.
    assert s.indices.tolist() == [1, 0]
    assert s.gains.tolist() == [3, 2]
    assert s.coverage.tolist() == pytest.approx([0.6, 1.0])


def test_multi_cover_after_full_coverage() -> None:
    s = manc(A, 4)
    # Level 2: samples 2 and 3 each cover 2 neurons a second time; tie -> lower index.
    assert s.indices.tolist() == [1, 0, 2, 3]
    assert s.levels.tolist() == [1, 1, 2, 2]
    paper = manc(A, 4, multi_cover=False)
    assert paper.indices.tolist() == [1, 0, 2, 3]
    assert paper.gains.tolist() == [3, 2, 0, 0]


def test_ties_broken_by_score() -> None:
    s = manc(A, 2, score=torch.tensor([0.0, 0.0, 5.0, 1.0]))
    assert s.indices.tolist() == [1, 0]
    t = manc(A[[0, 2, 3]], 1, score=torch.tensor([0.0, 1.0, 3.0]))
    assert t.indices.tolist() == [2]


def test_eligibility_is_respected() -> None:
    s = manc(A, 2, eligible=torch.tensor([True, False, True, True]))
    assert 1 not in s.indices.tolist()
    assert s.indices.tolist() == [0, 2]
    with pytest.raises(ValueError, match="eligible"):
        manc(A, 3, eligible=torch.tensor([True, False, False, True]))


def test_matches_a_plain_greedy_on_random_data() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((200, 77)) < 0.1
    s = manc(a, 6, multi_cover=False)
    covered = np.zeros(77, dtype=bool)
    expected = []
    for _ in range(6):
        gain = (a & ~covered).sum(1)
        gain[expected] = -1
        i = int(np.argmax(gain))
        expected.append(i)
        covered |= a[i]
    assert s.indices.tolist() == expected


def test_random_selection_is_seeded_and_distinct() -> None:
    a = random_selection(50, 8, seed=3)
    b = random_selection(50, 8, seed=3)
    assert torch.equal(a.indices, b.indices) and len(set(a.indices.tolist())) == 8
    ok = torch.zeros(50, dtype=torch.bool)
    ok[:10] = True
    assert set(random_selection(50, 8, seed=1, eligible=ok).indices.tolist()) <= set(range(10))


def test_activations_of_penultimate_and_all_layers(digits_model: torch.nn.Module, digits_data) -> None:  # type: ignore[no-untyped-def]
    x = digits_data[1].x[:20]
    pen = activations(digits_model, x)
    assert pen.shape == (20, 32) and pen.dtype == torch.bool
    every = activations(digits_model, x, layers="all")
    assert every.shape == (20, 64 + 32)
    assert torch.equal(every[:, 64:], pen)


def test_simulate_flips_is_seeded_and_leaves_the_model_alone(digits_model: torch.nn.Module, digits_data) -> None:  # type: ignore[no-untyped-def]
    import copy

    from veriprint.selectors.algorithms import simulate_flips

    x = digits_data[1].x[:50]
    before = copy.deepcopy(digits_model.state_dict())
    a = simulate_flips(digits_model, x, count=16, fraction=0.5, scale=0.5, seed=3)
    b = simulate_flips(digits_model, x, count=16, fraction=0.5, scale=0.5, seed=3)
    assert a.shape == (50, 16) and a.dtype == torch.bool
    assert torch.equal(a, b)
    assert a.any()  # changing half a tensor's entries by 50% flips some labels
    for k, v in digits_model.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(ValueError, match="count"):
        simulate_flips(digits_model, x, count=0)
