"""Sensitive prompts: Eq. 6 on the next-token distribution, searched over token substitutions.

For the next-token distribution ``p = softmax(W h)`` of a causal LM, with ``h`` the last
position's final hidden state and ``W`` the output layer (the paper's ``params="last"``),
Eq. 6 has the closed form

    ``S(x) = sum_i ||d p_i / d W||^2 = ||h||^2 * sum_i p_i^2 ((1 - p_i)^2 + sum_{j != i} p_j^2)``,

evaluated here in float64 and in log space. Tokens are discrete, so the search is over
substitutions, as HotFlip (Ebrahimi et al., 2018) and GCG (Zou et al., 2023) do: the
gradient of the objective with respect to the one-hot input ranks, for every position,
the tokens whose swap should help most (``grad_e . (E_j - E_cur)``); a batch of the best
swaps is evaluated exactly and the best kept. A prompt stays within ``max_edits``
substitutions of its natural seed, and only prompts that survive the round trip
``encode(decode(ids)) == ids`` are kept, so a server that takes text sees exactly them.

Two objectives:

* ``"sensitive"``: maximise ``log S``;
* ``"border"``: bring the top-1 vs top-2 logit margin of the next token down towards
  ``target`` without going below ``lowest`` (the LM counterpart of the classifier's
  refined samples and twins: a greedy token that any small weight change can flip).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from veriprint.lm.model import LanguageModel, pad_left

__all__ = ["PromptCandidate", "SearchConfig", "log_sensitivity", "margins", "search_prompts", "seed_prompts"]

log = logging.getLogger(__name__)

Objective = Literal["sensitive", "border"]


@dataclass(frozen=True)
class SearchConfig:
    """The substitution search.

    Args:
        objective: ``"sensitive"`` (maximise log S, default) or ``"border"``.
        steps: substitution rounds per prompt (default 8).
        candidates: swaps evaluated exactly per round (default 48).
        top_k: best tokens per position the gradient proposes (default 16).
        max_edits: most positions that may differ from the seed (default 3).
        target: the border objective's margin to approach from above, in logits (default 1e-3).
        lowest: the smallest margin a border prompt may keep (default 5e-4; the builder
            sets it from the noise floor).
        seed: seed of the candidates' draw (default 0).
        patience: rounds in a row that improve nothing before a prompt's search stops
            (default 1: the first such round stops it); each round draws other swaps.
    """

    objective: Objective = "sensitive"
    steps: int = 8
    candidates: int = 48
    top_k: int = 16
    max_edits: int = 3
    target: float = 1e-3
    lowest: float = 5e-4
    seed: int = 0
    patience: int = 1

    def __post_init__(self) -> None:
        if self.objective not in ("sensitive", "border"):
            raise ValueError(f"expected objective 'sensitive' or 'border', got {self.objective!r}")
        for name in ("steps", "candidates", "top_k", "max_edits", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name in ("steps", "max_edits") else 1):
                raise ValueError(f"expected {name} to be a {'non-negative' if name in ('steps', 'max_edits') else 'positive'} "
                                 f"integer, got {v!r}")
        if not (0 < self.lowest <= self.target):
            raise ValueError(f"expected 0 < lowest <= target, got {self.lowest!r} and {self.target!r}")


@dataclass(frozen=True)
class PromptCandidate:
    """A searched prompt.

    Attributes:
        ids: its token ids (round-trip safe).
        text: ``decode(ids)``.
        seed_text: the natural text it started from.
        edits: positions that differ from the seed.
        log_s: ``log S`` of its next-token distribution (Eq. 6, output layer).
        margin: top-1 vs top-2 logit margin of its next token.
        objective: what it was searched for.
    """

    ids: tuple[int, ...]
    text: str
    seed_text: str
    edits: int
    log_s: float
    margin: float
    objective: str


def seed_prompts(lm: LanguageModel, texts: Sequence[str], *, min_tokens: int = 4, max_tokens: int = 12) -> list[list[int]]:
    """Natural seeds as token ids: each text cut to at most ``max_tokens`` tokens, kept when
    at least ``min_tokens`` long and round-trip safe (in the text's order, duplicates dropped)."""
    out: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    for t in texts:
        ids = lm.encode(t)[:max_tokens]
        while ids and not lm.round_trips(ids):
            ids = ids[:-1]
        if len(ids) >= min_tokens and tuple(ids) not in seen:
            seen.add(tuple(ids))
            out.append(ids)
    return out


def _last_hidden(lm: LanguageModel, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    out = lm.model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False)
    return out.last_hidden_state[:, -1, :]  # type: ignore[no-any-return]


def _log_s_from(h: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Closed-form log S (float64) from the last hidden state and the next-token logits."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    sq = (p * p).sum(-1, keepdim=True)
    inner = (1 - p).pow(2) + (sq - p * p)
    return torch.log(h.double().pow(2).sum(-1)) + torch.logsumexp(2 * logp + torch.log(inner), dim=-1)


def _margin(logits: torch.Tensor) -> torch.Tensor:
    top = logits.double().topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def _evaluate(lm: LanguageModel, seqs: Sequence[Sequence[int]], batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """log S and margin of each sequence's next token."""
    emb = lm.model.get_input_embeddings()
    out_layer = lm.model.get_output_embeddings()
    pad = int(lm.tokenizer.pad_token_id or 0)
    ls, ms = [], []
    with torch.inference_mode():
        for lo in range(0, len(seqs), batch):
            ids, mask = pad_left(seqs[lo: lo + batch], pad)
            h = _last_hidden(lm, emb(ids), mask)
            logits = out_layer(h)
            ls.append(_log_s_from(h, logits))
            ms.append(_margin(logits))
    return torch.cat(ls), torch.cat(ms)


def log_sensitivity(lm: LanguageModel, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    """``log S`` (Eq. 6 over the output layer, float64) of each sequence's next-token distribution."""
    return _evaluate(lm, seqs)[0]


def margins(lm: LanguageModel, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    """Top-1 vs top-2 logit margin of each sequence's next token (float64)."""
    return _evaluate(lm, seqs)[1]


def _score(objective: Objective, log_s: torch.Tensor, margin: torch.Tensor, cfg: SearchConfig) -> torch.Tensor:
    """Higher is better; ``-inf`` for a border prompt below ``lowest``."""
    if objective == "sensitive":
        return log_s
    gap = -(torch.log(margin.clamp_min(1e-300)) - math.log(cfg.target)).abs()
    return torch.where(margin >= cfg.lowest, gap, torch.full_like(gap, -math.inf))


def _gradient(lm: LanguageModel, ids: list[int], objective: Objective, cfg: SearchConfig) -> torch.Tensor:
    """``(L, V)``: first-order change of the score for swapping each position to each token."""
    emb_layer = lm.model.get_input_embeddings()
    table = emb_layer.weight.detach()
    x = torch.tensor([ids])
    e = table[x].clone().requires_grad_(True)
    mask = torch.ones_like(x)
    with torch.enable_grad():
        h = _last_hidden(lm, e, mask)
        logits = lm.model.get_output_embeddings()(h)
        if objective == "sensitive":
            value = _log_s_from(h, logits).sum()
        else:
            value = -torch.log(_margin(logits).clamp_min(1e-12)).sum()
        (grad,) = torch.autograd.grad(value, e)
    g = grad[0].double()  # (L, H)
    gain: torch.Tensor = g @ table.double().T - (g * table[x[0]].double()).sum(-1, keepdim=True)
    return gain


def search_prompts(lm: LanguageModel, seeds: Sequence[Sequence[int]], cfg: SearchConfig = SearchConfig()) -> list[PromptCandidate]:
    """Search one prompt from each seed (see the module docstring).

    Args:
        lm: the model (never modified).
        seeds: natural prompts as token ids, each round-trip safe.
        cfg: the search settings.

    Returns:
        One :class:`PromptCandidate` per seed, in order; a seed no swap improved is kept as
        it is (``edits == 0``). A border search whose seed already sits below ``lowest``
        keeps the seed with its margin; the builder filters.
    """
    rng = random.Random(cfg.seed)
    special = set(lm.tokenizer.all_special_ids)
    vocab = lm.vocab_size
    out: list[PromptCandidate] = []
    for seed in seeds:
        seed = list(seed)
        cur = list(seed)
        ls0, m0 = _evaluate(lm, [cur])
        best = float(_score(cfg.objective, ls0, m0, cfg)[0])
        cur_ls, cur_m = float(ls0[0]), float(m0[0])
        stale = 0
        for _ in range(cfg.steps):
            grad = _gradient(lm, cur, cfg.objective, cfg)
            for t in special:
                if t < vocab:
                    grad[:, t] = -math.inf
            changed = [i for i in range(len(cur)) if cur[i] != seed[i]]
            if len(changed) >= cfg.max_edits:  # only positions already edited may change again
                for i in range(len(cur)):
                    if i not in changed:
                        grad[i, :] = -math.inf
            grad[torch.arange(len(cur)), torch.tensor(cur)] = -math.inf
            top = grad.topk(min(cfg.top_k, vocab), dim=-1).indices  # (L, k)
            pool = [(i, int(top[i, j])) for i in range(len(cur)) for j in range(top.shape[1])
                    if math.isfinite(float(grad[i, top[i, j]]))]
            rng.shuffle(pool)
            trials: list[list[int]] = []
            for i, tok in pool:
                cand = list(cur)
                cand[i] = tok
                if lm.round_trips(cand):
                    trials.append(cand)
                if len(trials) >= cfg.candidates:
                    break
            if not trials:
                break
            ls, m = _evaluate(lm, trials)
            score = _score(cfg.objective, ls, m, cfg)
            j = int(score.argmax())
            if float(score[j]) <= best:
                stale += 1
                if stale >= cfg.patience:
                    break
                continue
            stale = 0
            best, cur, cur_ls, cur_m = float(score[j]), trials[j], float(ls[j]), float(m[j])
        out.append(PromptCandidate(tuple(cur), lm.decode(cur), lm.decode(seed),
                                   sum(a != b for a, b in zip(cur, seed, strict=True)), cur_ls, cur_m,
                                   cfg.objective))
        log.debug("prompt %r: log S %.3f margin %.3g", out[-1].text, cur_ls, cur_m)
    return out
