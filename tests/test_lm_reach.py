"""First-order reach of LM prompts per tensor, selection by reach, and the edit benchmark's report."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from veriprint.lm.builder import LmFingerprintConfig, make_lm_fingerprint, shipped_seeds
from veriprint.lm.model import next_token_logits, tiny_lm, weights_sha256
from veriprint.lm.reach import (
    REACH_SPECS,
    combine,
    fingerprint_reach,
    prompt_reach,
    select_by_reach,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def made() -> tuple[Any, Any]:
    lm = tiny_lm(1)
    cfg = LmFingerprintConfig(prompts=4, steps=2, candidates=8, top_k=4, budget="none")
    return lm, make_lm_fingerprint(lm, cfg, seeds=shipped_seeds()[:8])


def test_the_fingerprint_stores_its_reach_per_tensor(made: tuple[Any, Any]) -> None:
    lm, fp = made
    r = fp.meta["reach"]
    names = [n for n, p in lm.model.named_parameters()]
    assert r["tensors"] == names and r["deltas"] == [0.05, 0.01] and set(r["share"]) == set(REACH_SPECS)
    for spec in REACH_SPECS:
        five, one = r["share"][spec]
        assert all(0 <= b <= a <= 1 for a, b in zip(five, one, strict=True))  # a 1% change reveals less
        assert r["all"][spec][0] == pytest.approx(sum(five) / len(five), abs=1e-3)
    # every logprob step counts, the margins only of decided steps
    again = fingerprint_reach(lm, fp)
    assert again.share("top1-token")["all"] == pytest.approx(r["all"]["top1-token"][0], abs=1e-4)


def test_reach_is_the_first_order_change_of_a_margin(made: tuple[Any, Any]) -> None:
    """For the weight whose negative change lowers a prompt's first margin most (relative to
    it), a real 1% change lowers the margin by what the reach says, within a few percent."""
    lm, fp = made
    ids = fp.prompt_ids(0)
    answer = fp.tensors["expected_ids"][:1, :1].long()
    margin = fp.tensors["margins"][:1, :1]
    (row,) = prompt_reach(lm, [ids], answer, margin, floor=fp.noise.floor, tolerance=fp.noise.logit_tolerance, k=0,
                          per_tensor=1 << 30)
    col = int(row.down.argmax())
    assert math.isfinite(float(row.down[col])) and row.steps == 1
    t = int(row.tensor_of[col])
    offset = int((row.tensor_of < t).sum())
    weight = [p for _, p in lm.model.named_parameters()][t].data.view(-1)

    def first_margin() -> float:
        z = next_token_logits(lm.model, [ids])[0].double()
        top = fp.tensors["top_ids"][0, 0, :2].long()
        return float(z[top[0]] - z[top[1]])

    before, sha = first_margin(), weights_sha256(lm.model)
    orig = weight[col - offset].clone()
    try:
        weight[col - offset] = orig * (1 - 0.01)
        after = first_margin()
    finally:
        weight[col - offset] = orig
    assert weights_sha256(lm.model) == sha
    predicted = 0.01 * float(margin[0, 0]) * 10 ** float(row.down[col])
    assert before - after == pytest.approx(predicted, rel=0.05)


def test_select_by_reach_picks_what_adds_most_then_follows_the_order(made: tuple[Any, Any]) -> None:
    lm, fp = made
    ids = [fp.prompt_ids(i) for i in range(len(fp))]
    rows = prompt_reach(lm, ids, fp.tensors["expected_ids"].long(), fp.tensors["margins"],
                        floor=fp.noise.floor, tolerance=fp.noise.logit_tolerance, k=0)
    whole = combine(rows)
    assert torch.equal(whole.down, torch.stack([r.down for r in rows]).amax(0))
    picked = select_by_reach(rows, 2, range(len(rows)))
    assert len(picked) == len(set(picked)) == 2
    alone = [combine([r]).share("top1-token")["all"] for r in rows]  # the selection's own weighting
    assert alone[picked[0]] == pytest.approx(max(alone))
    pair = combine([rows[i] for i in picked]).share("top1-token")["all"]
    assert pair >= max(alone) - 1e-12
    # with nothing to gain, the order of preference decides
    blind = [type(r)(r.tensors, r.sizes, r.tensor_of, torch.full_like(r.down, -math.inf),
                     torch.full_like(r.up, -math.inf), r.logprob, r.k, 0) for r in rows]
    assert select_by_reach(blind, 3, [2, 0, 1, 3]) == [2, 0, 1]


def test_edit_benchmark_report() -> None:
    from benchmarks.studies.lm_edits import FAMILIES, family, render, summarise

    tensors = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"]
    assert [family(n) for n in tensors] == ["embedding", "attn q", "norms"] and "mlp down" in FAMILIES
    rows = []
    for t, name in enumerate(tensors):
        for j in range(4):
            rows.append({"tensor": name, "entry": j, "delta": 0.05, "natural_change": 1.0, "visible": j < 2 + t // 2,
                         "caught top1-token": j == 0, "caught logprobs:5": j < 2, "predicted top1-token": j == 0,
                         "predicted logprobs:5": j < 2})
    s = summarise(rows, tensors)
    assert s["per_tensor"][tensors[0]]["visible"] == 2 and s["pooled"]["edits"] == 12
    assert s["overall"]["top1-token"]["caught_share"] == pytest.approx(0.25)
    assert s["families"]["embedding"]["logprobs:5"]["coverage"] == pytest.approx(1.0)
    rep = {"summary": s, "fingerprint": {"prompts": 4, "roles": {"border": 4}, "max_tokens": 4, "floor": 1e-4,
                                         "logprob_tolerance": 1e-4},
           "machine": "test", "edits": 12, "delta": 0.05, "draws": 4, "seed": 0, "sweep_seconds": 1.0,
           "natural": 8, "natural_steps": 32, "visible_at": 2e-4, "tensors": tensors, "sizes": [10, 10, 4]}
    text = render(rep)
    assert "**all 3 tensors**" in text and "| embedding (1) |" in text and "model.norm.weight" in text
