"""Output specifications: parsing and noise-aware comparisons on exact values."""

from __future__ import annotations

import numpy as np
import pytest

from veriprint.noise import NoiseFloor
from veriprint.verification.specs import OutputSpec, parse_spec

NOISE = NoiseFloor(logit=1e-6, prob=1e-7, margin=1e-6, variants=("test",))  # floor 1e-4, prob tol 1e-6
Z = np.array([[2.0, 1.0, 0.0], [0.0, 0.5, 0.50005]])  # sample 1: top-2 nearly tied (gap 5e-5 < floor)


@pytest.mark.parametrize(("text", "expected"), [
    ("top1", OutputSpec("top1")),
    ("topk:3", OutputSpec("topk", k=3)),
    ("probs", OutputSpec("probs")),
    ("probs:2", OutputSpec("probs", decimals=2)),
    ("top1-prob:3", OutputSpec("top1-prob", decimals=3)),
    ("logits", OutputSpec("logits")),
])
def test_parse(text: str, expected: OutputSpec) -> None:
    assert parse_spec(text) == expected
    assert str(parse_spec(text)) == text


@pytest.mark.parametrize("bad", ["top2", "topk", "topk:0", "probs:x", "top1:3", "probs:99", ""])
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_spec(bad)


def test_top1_flags_flips_but_not_ties() -> None:
    spec = parse_spec("top1")
    same = spec.compare(Z, Z, "logits", NOISE)
    assert not same.mismatch.any()
    assert same.ambiguous.tolist() == [False, True]
    # Sample 1 is within noise of a tie: either label is accepted.
    flipped_tie = spec.compare(Z, np.array([0, 1]), "labels", NOISE)
    assert not flipped_tie.mismatch.any()
    flipped = spec.compare(Z, np.array([1, 2]), "labels", NOISE)
    assert flipped.mismatch.tolist() == [True, False]


def test_topk_order_matters() -> None:
    spec = parse_spec("topk:2")
    z = np.array([[3.0, 2.0, 0.0]])
    assert not spec.compare(z, np.array([[0, 1]]), "topk", NOISE).mismatch.any()
    assert spec.compare(z, np.array([[1, 0]]), "topk", NOISE).mismatch.all()
    assert spec.compare(z, np.array([[0, 2]]), "topk", NOISE).mismatch.all()


def test_probs_tolerance() -> None:
    spec = parse_spec("probs")
    p = np.exp(Z[:1]) / np.exp(Z[:1]).sum()
    assert not spec.compare(Z[:1], p + 5e-7, "probs", NOISE).mismatch.any()
    assert spec.compare(Z[:1], p + np.array([[3e-6, -3e-6, 0]]), "probs", NOISE).mismatch.all()


def test_rounded_probs_accept_both_sides_of_a_boundary() -> None:
    spec = parse_spec("probs:2")
    # Logits giving p = (0.125, 0.875) exactly: 0.125 sits on a rounding boundary.
    z = np.log(np.array([[0.125, 0.875]]))
    for obs in ([0.12, 0.88], [0.13, 0.87], [0.12, 0.87]):
        cmp = spec.compare(z, np.array([obs]), "probs", NOISE)
        assert not cmp.mismatch.any() and cmp.ambiguous.all()
    assert spec.compare(z, np.array([[0.14, 0.86]]), "probs", NOISE).mismatch.all()


def test_top1_prob() -> None:
    spec = parse_spec("top1-prob:2")
    z = np.log(np.array([[0.2, 0.8]]))
    assert not spec.compare(z, np.array([[1, 0.8]]), "top1-prob", NOISE).mismatch.any()
    assert spec.compare(z, np.array([[1, 0.79]]), "top1-prob", NOISE).mismatch.all()
    assert spec.compare(z, np.array([[0, 0.8]]), "top1-prob", NOISE).mismatch.all()
    # Computed from a logits target.
    assert not spec.compare(z, z, "logits", NOISE).mismatch.any()


def test_spec_needs_enough_information() -> None:
    assert not parse_spec("probs").accepts("labels")
    assert not parse_spec("logits").accepts("probs")
    assert parse_spec("top1").accepts("topk")
    with pytest.raises(ValueError, match="needs more"):
        parse_spec("probs").compare(Z, np.array([0, 1]), "labels", NOISE)
