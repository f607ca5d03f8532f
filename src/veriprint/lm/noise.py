"""The LM noise floor: how much an intact model's next-token logprobs move between runs.

As :mod:`veriprint.noise` does for classifiers, the intact model is run along the same
tokens (the prompts and their greedy continuations, teacher-forced) under execution
variants a server may differ by: batch sizes, extra left padding (attention masks and
position ids keep it out of the result, up to float noise), one thread, PyTorch's SDPA
attention kernels instead of the eager ones, and incremental decoding with a KV cache,
as servers decode. The largest change of any recorded logprob and of any step's top-1 vs
top-2 margin is stored as a :class:`veriprint.noise.NoiseFloor` (its ``logit`` field holds
the logprob noise), and comparisons keep ``safety`` times clear of it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from veriprint.lm.model import LanguageModel
from veriprint.lm.target import Greedy, greedy
from veriprint.noise import NoiseFloor

__all__ = ["LM_VARIANTS", "calibrate_lm_noise"]

LM_VARIANTS = ("batch=1", "batch=7", "batch=32", "left-pad=5", "threads=1", "sdpa", "kv-cache")


def _sdpa(lm: LanguageModel) -> LanguageModel:
    model = copy.deepcopy(lm.model)
    model.set_attn_implementation("sdpa")
    return LanguageModel(model, lm.tokenizer, lm.source, lm.weights_sha256, lm.tokenizer_sha256)


def calibrate_lm_noise(lm: LanguageModel, prompts: Sequence[Sequence[int]], reference: Greedy, *,
                       variants: Sequence[str] = LM_VARIANTS, safety: float = 10.0, declared: float = 0.0,
                       min_floor: float = 1e-4) -> NoiseFloor:
    """Measure the noise of ``reference`` (``greedy(lm, prompts, T)``) across ``variants``.

    Args:
        lm: the intact model.
        prompts: the prompts' ids.
        reference: their greedy decoding (batch 32, eager attention, no cache).
        variants: among :data:`LM_VARIANTS` (default all).
        safety: factor on the measured noise (default 10).
        declared: a logprob tolerance declared for noisier deployments (default 0).
        min_floor: smallest margin floor in logits (default 1e-4).
    """
    unknown = [v for v in variants if v not in LM_VARIANTS]
    if unknown:
        raise ValueError(f"expected variants among {LM_VARIANTS}, got {unknown}")
    steps = reference.ids.shape[1]
    top = reference.top_ids.shape[2]
    follow = reference.ids
    runs: dict[str, Greedy] = {}
    for v in variants:
        if v.startswith("batch="):
            runs[v] = greedy(lm, prompts, steps, top=top, batch_size=int(v.split("=")[1]), follow=follow)
        elif v == "left-pad=5":
            runs[v] = greedy(lm, prompts, steps, top=top, extra_pad=5, follow=follow)
        elif v == "threads=1":
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                runs[v] = greedy(lm, prompts, steps, top=top, follow=follow)
            finally:
                torch.set_num_threads(before)
        elif v == "sdpa":
            runs[v] = greedy(_sdpa(lm), prompts, steps, top=top, follow=follow)
        else:
            runs[v] = greedy(lm, prompts, steps, top=top, cache=True, follow=follow)
    logit = prob = margin = 0.0
    live = reference.ids >= 0
    for g in runs.values():
        same = (g.top_ids == reference.top_ids).all(-1) & live
        d = (g.top_logprobs.double() - reference.top_logprobs.double()).abs().amax(-1)
        if same.any():
            logit = max(logit, float(d[same].max()))
            prob = max(prob, float((g.top_logprobs.double().exp() - reference.top_logprobs.double().exp())
                                   .abs().amax(-1)[same].max()))
        margin = max(margin, float((g.margins - reference.margins).abs()[live].max()))
    return NoiseFloor(logit=logit, prob=prob, margin=margin, variants=tuple(runs), safety=safety,
                      declared=declared, min_floor=min_floor)
