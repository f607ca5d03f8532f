"""Logprob Tracking (veriprint.lm.anchors): calibration, power, input checks, the local model,
and the side-by-side benchmark's report."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from veriprint.lm.anchors import first_token_logprobs, logprob_matrix, logprob_tracking_test
from veriprint.targets.base import TargetError

BASE = {"a": -0.4, "b": -1.6, "c": -2.9, "d": -4.0, "e": -5.0, "f": -5.05}


def draw(rng: np.random.Generator, n: int, *, shift: float = 0.0, noise: float = 1e-6, k: int = 5) -> list[dict[str, float]]:
    """``n`` answers: BASE with i.i.d. noise (``shift`` on token ``a``), its top ``k`` kept
    (``e`` and ``f`` trade places now and then, so the censoring is exercised)."""
    out = []
    for _ in range(n):
        vals = {t: v + (shift if t == "a" else 0.0) + rng.standard_normal() * (0.05 if t in "ef" else noise)
                for t, v in BASE.items()}
        out.append(dict(sorted(vals.items(), key=lambda kv: -kv[1])[:k]))
    return out


def test_identical_samples_are_unchanged() -> None:
    obs = draw(np.random.default_rng(0), 20)
    r = logprob_tracking_test(obs, obs)
    assert r.p_value == 1.0 and not r.changed and r.verdict == "UNCHANGED"
    assert r.statistic < 1e-12 and r.largest_shift == 0.0
    assert (r.reference, r.target, r.prompts, r.tokens, r.permutations) == (20, 20, 1, 6, 1000)


def test_p_values_are_calibrated_when_answers_are_exchangeable() -> None:
    rng = np.random.default_rng(1)
    ps = np.array([logprob_tracking_test(draw(rng, 48), draw(rng, 48), permutations=199, seed=s).p_value
                   for s in range(120)])
    assert 0.35 < ps.mean() < 0.65  # about uniform
    assert (ps <= 0.05).mean() <= 0.12  # about alpha (5%), binomial noise over 120 tests allowed
    assert (ps <= 0.5).mean() < 0.65


def test_a_clear_change_is_rejected_and_a_small_sample_keeps_its_level() -> None:
    rng = np.random.default_rng(2)
    r = logprob_tracking_test(draw(rng, 64), draw(rng, 64, shift=0.1), permutations=999)
    assert r.changed and r.p_value == pytest.approx(1 / 1000) and r.largest_shift > 0.05
    # one answer against one: the permutations cannot tell, whatever the difference
    one = logprob_tracking_test(draw(rng, 1), draw(rng, 1, shift=-1.0), permutations=99)
    assert not one.changed and one.p_value >= 0.5


def test_several_prompts_are_tested_together_each_with_its_own_tokens() -> None:
    rng = np.random.default_rng(3)
    ref = {"x": draw(rng, 32), "y": [{"q": -0.1, "r": -3.0}] * 32}
    same = {"x": draw(rng, 32), "y": [{"q": -0.1, "r": -3.0}] * 32}
    moved = {"x": draw(rng, 32), "y": [{"q": -0.1, "r": -3.1}] * 32}
    assert not logprob_tracking_test(ref, same).changed
    r = logprob_tracking_test(ref, moved)
    assert r.changed and r.prompts == 2 and r.tokens == 8


def test_missing_tokens_take_the_answers_lowest_logprob() -> None:
    m = logprob_matrix([{"a": -0.5, "b": -2.0}, {"a": -0.4, "c": -1.0}], ["a", "b", "c"])
    assert m.tolist() == [[-0.5, -2.0, -2.0], [-0.4, -1.0, -1.0]]


@pytest.mark.parametrize(("ref", "tgt", "kwargs", "match"), [
    ([], [{"a": -1.0}], {}, "at least one"),
    ([{"a": -1.0}], {"x": [{"a": -1.0}]}, {}, "same prompts"),
    ({"x": [{"a": -1.0}]}, {"y": [{"a": -1.0}]}, {}, "same prompts"),
    ({}, {}, {}, "at least one prompt"),
    ([{}], [{"a": -1.0}], {}, "non-empty"),
    (["a"], [{"a": -1.0}], {}, "non-empty"),
    ("abc", [{"a": -1.0}], {}, "sequence"),
    ({"a": -1.0}, [{"a": -1.0}], {}, "sequence"),
    ([{"a": float("nan")}], [{"a": -1.0}], {}, "finite"),
    ([{"a": 0.5}], [{"a": -1.0}], {}, "<= 0"),
    ([{"a": True}], [{"a": -1.0}], {}, "finite"),
    ([{1: -1.0}], [{"a": -1.0}], {}, "token strings"),
    ([{"a": -1.0}], [{"a": -1.0}], {"alpha": 0}, "alpha"),
    ([{"a": -1.0}], [{"a": -1.0}], {"alpha": 1.0}, "alpha"),
    ([{"a": -1.0}], [{"a": -1.0}], {"permutations": 0}, "permutations >= 1"),
    ([{"a": -1.0}], [{"a": -1.0}], {"permutations": 10}, "at least 19 permutations"),
], ids=lambda v: repr(v)[:30])
def test_bad_input_is_refused_clearly(ref: Any, tgt: Any, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        logprob_tracking_test(ref, tgt, **kwargs)


# --- on a model, through a completions target -----------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> Any:
    from veriprint.lm.model import tiny_lm

    return tiny_lm(0)


def test_the_intact_model_is_unchanged_and_float16_is_changed(tiny: Any) -> None:
    from veriprint.lm.tamper import LmCastConfig, tamper_lm
    from veriprint.lm.target import LocalCompletions

    ref = first_token_logprobs(LocalCompletions(tiny, batch_size=1), ["x"], 24)
    again = first_token_logprobs(LocalCompletions(tiny, batch_size=1), ["x"], 24, per_request=8)
    assert len(ref["x"]) == 24 and all(len(o) == 5 for o in ref["x"])
    assert not logprob_tracking_test(ref, again).changed
    half = LocalCompletions(tamper_lm(tiny, LmCastConfig("float16")).lm, batch_size=1)
    r = logprob_tracking_test(ref, first_token_logprobs(half, ["x"], 24))
    assert r.changed and r.p_value < 0.01


class _NoLogprobs:
    description = "no logprobs"

    def complete(self, prompts: Any, *, max_tokens: int, logprobs: int | None = None) -> list[dict[str, Any]]:
        return [{"text": "t", "tokens": ["t"], "top_logprobs": None} for _ in prompts]


def test_first_token_logprobs_refuses() -> None:
    with pytest.raises(TargetError, match="top logprobs"):
        first_token_logprobs(_NoLogprobs(), ["x"], 2)
    for kwargs, match in (({"repeats": 0}, "repeats"), ({"repeats": 2, "top_k": 21}, "top_k"),
                          ({"repeats": 2, "per_request": 0}, "per_request")):
        with pytest.raises(ValueError, match=match):
            first_token_logprobs(_NoLogprobs(), ["x"], **kwargs)
    with pytest.raises(ValueError, match="prompts"):
        first_token_logprobs(_NoLogprobs(), [""], 2)


# --- the benchmark ------------------------------------------------------------------------------


def test_shared_server_answers_as_the_model_does(tiny: Any) -> None:
    from benchmarks.studies.lm_anchor import SharedServer, other_users
    from veriprint.lm.target import LocalCompletions

    prompts = ["x", "The cat", "A fool and"]
    server = SharedServer(tiny, batch_size=4, seed=0, others=other_users())
    direct = LocalCompletions(tiny, batch_size=1).complete(prompts, max_tokens=2, logprobs=3)
    for _ in range(3):
        got = server.complete(prompts, max_tokens=2, logprobs=3)
        assert [g.tokens for g in got] == [d.tokens for d in direct]
        for g, d in zip(got, direct, strict=True):
            assert g.top_logprobs is not None and d.top_logprobs is not None
            assert list(g.top_logprobs[0]) == list(d.top_logprobs[0])
            assert max(abs(g.top_logprobs[0][t] - d.top_logprobs[0][t]) for t in d.top_logprobs[0]) < 1e-4


def test_anchor_report_renders_from_its_numbers() -> None:
    import json

    from benchmarks.studies.lm_anchor import render

    lt = {"changed": True, "p": 0.001, "statistic": 1e-3, "shift": 1e-2}
    ok = {"changed": False, "p": 0.6, "statistic": 1e-9, "shift": 1e-8}
    cells = {f"lt-{r}-{n}": lt for r in ("owner", "tracking") for n in (8, 2)}
    row = {"tamper": "t", "changed": 3, "total": 10, "top1-token": {"verdict": "TAMPERED", "mismatches": 1,
           "compared": 2}, "logprobs:5": {"verdict": "TAMPERED", "mismatches": 2, "compared": 2}, **cells}
    check = {"attention": "eager", "batch": 4, "repeat": 0, "top1-token": {"verdict": "INTACT"},
             "logprobs:5": {"verdict": "INTACT"}, **{k: ok for k in cells}, "lt-owner-8": lt}
    methods = ["top1-token", "logprobs:5", *cells]
    rep = {"machine": "m", "prompt": "x", "top_k": 5, "alpha": 0.05, "permutations": 999,
           "fingerprint": {"prompts": 2, "max_tokens": 4, "floor": 1e-4}, "budget": {"generated_tokens": 8,
           "completions": 2}, "owner_reference": {"answers": 12}, "methods": methods, "rows": [row],
           "checks": [check], "wall_seconds": 1.0, "seconds_per_check": {"a": 0.1}}
    text = render(json.loads(json.dumps(rep)))
    assert "| t | TAMPERED 1/2 | TAMPERED 2/2 | CHANGED (p 0.001) | CHANGED (p 0.001) |" in text
    assert "| batch 4 | 1 | 0 | 0 | 1 | 0 | 0 | 0 |" in text and "| **all** | 1 |" in text
    rep["budget"].update(fingerprint_prompt_tokens=20, lt_prompt_tokens=8)
    assert "2 completions, 8 generated tokens, 20 prompt tokens; Logprob Tracking 8 one-token" in render(rep)
