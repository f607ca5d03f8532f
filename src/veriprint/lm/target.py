"""The local LM target, and greedy decoding with what a fingerprint records.

:class:`LocalCompletions` answers as an OpenAI-compatible ``/v1/completions`` server does
(temperature 0, greedy): ``complete(prompts, max_tokens=..., logprobs=K)`` returns one
:class:`Completion` per prompt text, with the generated text, its tokens as the server
spells them and, when asked, the top-``K`` logprobs per generated token. The remote
targets (``veriprint.targets.openai``) have the same ``complete`` shape, so the verifier
(:mod:`veriprint.lm.verify`) has one path for both; with ``chat=True`` the local target
applies the tokenizer's chat template (and an optional system prompt) as a chat server does.

:func:`greedy` is the decoding itself on token ids, returning the top candidates and the
margin of every step: the fingerprint builder and the noise floor use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from veriprint.lm.model import LanguageModel, next_token_logits
from veriprint.targets.base import TargetError

__all__ = ["Completion", "CompletionsTarget", "Greedy", "LocalCompletions", "greedy"]


@dataclass(frozen=True)
class Completion:
    """One generated answer, in the OpenAI completions format.

    Attributes:
        text: the generated text.
        tokens: the generated tokens, as the server spells them.
        top_logprobs: per generated token, its top-K alternatives -> logprob (``None`` when
            logprobs were not asked for).
    """

    text: str
    tokens: list[str]
    top_logprobs: list[dict[str, float]] | None


class CompletionsTarget(Protocol):
    """What the LM verifier talks to: a local model or an OpenAI-compatible server."""

    description: str

    def complete(self, prompts: Sequence[str], *, max_tokens: int,
                 logprobs: int | None = None) -> Sequence[Any]: ...


@dataclass(frozen=True)
class Greedy:
    """Greedy decoding of ``N`` prompts for ``T`` steps (``T`` the longest; a prompt that
    generated its end-of-text token earlier has ``lengths[i] < T``).

    Attributes:
        ids: ``(N, T)`` generated ids (``-1`` past a prompt's end).
        top_ids: ``(N, T, M)`` the ``M`` most likely ids at each step, best first.
        top_logprobs: ``(N, T, M)`` their log-probabilities (float32 as computed).
        margins: ``(N, T)`` top-1 minus top-2 logit at each step (float64).
        lengths: ``(N,)`` generated tokens per prompt.
    """

    ids: torch.Tensor
    top_ids: torch.Tensor
    top_logprobs: torch.Tensor
    margins: torch.Tensor
    lengths: torch.Tensor


def greedy(lm: LanguageModel, prompts: Sequence[Sequence[int]], max_tokens: int, *, top: int = 8,
           batch_size: int = 32, extra_pad: int = 0, cache: bool = False, stop_at_eos: bool = True,
           follow: torch.Tensor | None = None) -> Greedy:
    """Greedy decoding, one full forward pass per step (or a KV cache with ``cache=True``).

    Args:
        lm: the model.
        prompts: token ids per prompt.
        max_tokens: steps (at least 1).
        top: candidates recorded per step (default 8).
        batch_size: prompts per forward pass (default 32).
        extra_pad: extra left pads per batch (default 0; for the noise floor).
        cache: decode with ``past_key_values`` as servers do (default False).
        stop_at_eos: stop a prompt after its end-of-text token (default True).
        follow: ``(N, T)`` ids to feed instead of the argmax (teacher forcing): the noise
            floor compares every variant along the same tokens.
    """
    if max_tokens < 1:
        raise ValueError(f"expected max_tokens >= 1, got {max_tokens}")
    n = len(prompts)
    pad = int(lm.tokenizer.pad_token_id or 0)
    eos = lm.tokenizer.eos_token_id
    seqs = [list(p) for p in prompts]
    done = [False] * n
    ids = torch.full((n, max_tokens), -1, dtype=torch.long)
    top_ids = torch.zeros((n, max_tokens, top), dtype=torch.long)
    top_lp = torch.zeros((n, max_tokens, top), dtype=torch.float32)
    marg = torch.zeros((n, max_tokens), dtype=torch.float64)
    lengths = torch.zeros(n, dtype=torch.long)
    logits_steps = _cached_logits(lm, seqs, max_tokens, follow) if cache else None
    for t in range(max_tokens):
        live = [i for i in range(n) if not done[i]]
        if not live:
            break
        if logits_steps is not None:
            logits = logits_steps[t][live]
        else:
            logits = next_token_logits(lm.model, [seqs[i] for i in live], pad_id=pad, batch_size=batch_size,
                                       extra_pad=extra_pad)
        logp = torch.log_softmax(logits.float(), dim=-1)
        v, k = logp.topk(top, dim=-1)
        zz = logits.double().topk(2, dim=-1).values
        for row, i in enumerate(live):
            nxt = int(k[row, 0]) if follow is None else int(follow[i, t])
            ids[i, t] = nxt
            top_ids[i, t] = k[row]
            top_lp[i, t] = v[row]
            marg[i, t] = zz[row, 0] - zz[row, 1]
            lengths[i] = t + 1
            seqs[i].append(nxt)
            if (stop_at_eos and nxt == eos) or nxt < 0:
                done[i] = True
    return Greedy(ids, top_ids, top_lp, marg, lengths)


def _cached_logits(lm: LanguageModel, seqs: list[list[int]], steps: int, follow: torch.Tensor | None) -> list[torch.Tensor]:
    """Per step ``(N, V)`` logits from incremental decoding with a KV cache, one prompt at a time."""
    rows: list[list[torch.Tensor]] = [[] for _ in range(steps)]
    with torch.inference_mode():
        for i, s in enumerate(seqs):
            out = lm.model(input_ids=torch.tensor([s]), use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1, :].float()
            for t in range(steps):
                rows[t].append(logits[0])
                nxt = int(logits.argmax(-1)) if follow is None else int(follow[i, t])
                if nxt < 0:
                    nxt = 0
                out = lm.model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[:, -1, :].float()
    return [torch.stack(r) for r in rows]


class LocalCompletions:
    """A local LM behind the ``complete`` shape of an OpenAI-compatible server.

    Args:
        lm: the model and tokenizer.
        batch_size: prompts per forward pass (default 8).
        chat: apply the tokenizer's chat template, as ``/v1/chat/completions`` does (default False).
        system_prompt: a system message put before the user's in chat mode (default none).
        chat_template: a chat template in place of the tokenizer's (default: the tokenizer's).
    """

    def __init__(self, lm: LanguageModel, *, batch_size: int = 8, chat: bool = False,
                 system_prompt: str | None = None, chat_template: str | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size!r}")
        self.lm = lm
        self.batch_size = batch_size
        self.chat = chat
        self.system_prompt = system_prompt
        self.chat_template = chat_template
        self.description = f"local:{lm.source}" + (" (chat)" if chat else "")

    def prompt_ids(self, prompt: str) -> list[int]:
        """The token ids the model sees for ``prompt`` (templated in chat mode)."""
        if not self.chat:
            return self.lm.encode(prompt)
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
            {"role": "user", "content": prompt}]
        ids = self.lm.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                    chat_template=self.chat_template, return_dict=False)
        return list(ids)

    def complete(self, prompts: Sequence[str], *, max_tokens: int, logprobs: int | None = None) -> list[Completion]:
        """Greedy completions of ``prompts`` (see :class:`Completion`).

        Raises:
            TargetError: a prompt is empty or longer than the model takes, or ``logprobs``
                is out of range.
        """
        if logprobs is not None and not 0 <= logprobs <= 20:
            raise TargetError(f"expected logprobs in [0, 20], got {logprobs}")
        limit = int(getattr(self.lm.model.config, "max_position_embeddings", 1 << 30))
        ids = [self.prompt_ids(p) for p in prompts]
        for i, s in enumerate(ids):
            if not s or len(s) + max_tokens > limit:
                raise TargetError(f"prompt {i}: expected 1 to {limit - max_tokens} tokens, got {len(s)}")
        k = max(1, logprobs or 1)
        g = greedy(self.lm, ids, max_tokens, top=k, batch_size=self.batch_size)
        out: list[Completion] = []
        eos = self.lm.tokenizer.eos_token_id
        for i in range(len(prompts)):
            n = int(g.lengths[i])
            gen = [int(t) for t in g.ids[i, :n]]
            shown = [t for t in gen if t != eos]  # servers stop at end-of-text and do not show it
            tops = None
            if logprobs is not None:
                tops = [_top_dict(self.lm.token_strings(g.top_ids[i, t, :logprobs].tolist()),
                                  g.top_logprobs[i, t, :logprobs].tolist()) for t in range(len(shown))]
            out.append(Completion(self.lm.decode(shown), self.lm.token_strings(shown), tops))
        return out


def _top_dict(tokens: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    """Token string -> logprob, best first; two ids spelled alike keep the better (as a JSON object would)."""
    out: dict[str, float] = {}
    for tok, v in zip(tokens, values, strict=True):
        out.setdefault(tok, float(v))
    return out
