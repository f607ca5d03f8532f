"""Which single-parameter changes an LM fingerprint's prompts reveal, at first order, per tensor.

The language-model counterpart of :mod:`veriprint.coverage.reach`. Each prompt is run along its
intact greedy answer (teacher-forced), and at every generated step two things are
differentiated with respect to every parameter:

* the step's top-1 vs top-2 logit margin ``m`` (for ``top1-token``): scaling one weight
  ``theta_k`` by ``1 + delta`` moves the margin by about ``delta * theta_k * g_k``, so the
  greedy token flips, and the answer differs, when ``delta * theta_k * g_k < -m``.
  ``log10(|theta_k * g_k| / m)`` is the step's *reach* over the weight (1: a 10% change of
  the right sign flips it; 2: 1%); only steps whose margin is at least the noise floor
  count, since a step within the floor of a tie accepts either token;
* the logprobs of the step's ``k`` most likely tokens (for ``logprobs:K``): a change is
  seen when one of them moves by more than the logprob tolerance, in either direction,
  so the reach is ``log10(|theta_k * g_k| / tolerance)`` and both signs count.

A prompt's reach in each direction is the maximum over its steps, the fingerprint's the
maximum over its prompts; :meth:`LmReach.share` turns it into the share of each tensor's
weights whose ``±delta`` change (random sign) the fingerprint reveals, the figure stored
in ``meta["reach"]`` and shown by ``veriprint inspect``. First order is checked against
real edits by ``benchmarks/studies/lm_edits.py``.

A tied embedding (the shipped model's input embedding is its output layer) is one tensor:
an edit of one of its entries changes both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from veriprint.lm.model import LanguageModel

__all__ = ["REACH_DELTAS", "REACH_SPECS", "LmReach", "combine", "fingerprint_reach", "lm_reach", "prompt_reach",
           "reach_meta", "select_by_reach"]

#: The relative changes whose coverage a fingerprint stores about itself.
REACH_DELTAS = (0.05, 0.01)
#: The specs it is stored for: a greedy token flips (``top1-token``), or one of the top 5
#: logprobs moves by more than the tolerance (``logprobs:5``).
REACH_SPECS = ("top1-token", "logprobs:5")


@dataclass(frozen=True)
class LmReach:
    """First-order reach of a set of prompts over examined weights.

    Attributes:
        tensors: the parameter tensors' names (a tied tensor once).
        sizes: each tensor's number of entries.
        tensor_of: ``(P,)`` the tensor of each examined weight.
        down: ``(P,)`` the largest reach of a step's margin for a negative change of the
            weight (``-inf`` where no step's margin falls with it).
        up: ``(P,)`` the same for a positive change.
        logprob: ``(P,)`` the largest reach of a top-``k`` logprob (either sign).
        k: how many logprobs per step were differentiated.
        steps: decided steps (margin at least the floor) whose margins were differentiated.
    """

    tensors: list[str]
    sizes: list[int]
    tensor_of: torch.Tensor
    down: torch.Tensor
    up: torch.Tensor
    logprob: torch.Tensor
    k: int
    steps: int

    def share(self, spec: str, delta: float = 0.05) -> dict[str, float]:
        """Expected share of each tensor's weights whose change by ``±delta`` (sign drawn at
        random) the prompts reveal under ``spec`` (``"top1-token"`` or ``"logprobs"``),
        at first order; ``"all"`` is the mean over tensors (every tensor weighs the same).
        """
        if not delta > 0:
            raise ValueError(f"expected delta > 0, got {delta}")
        need = math.log10(1.0 / delta)
        if spec.startswith("top1-token"):
            d = ((self.down >= need).double() + (self.up >= need).double()) / 2
        elif spec.startswith("logprobs"):
            d = (self.logprob >= need).double()
        else:
            raise ValueError(f"expected spec top1-token or logprobs, got {spec!r}")
        out = {}
        for t, name in enumerate(self.tensors):
            sel = self.tensor_of == t
            out[name] = float(d[sel].mean()) if bool(sel.any()) else 0.0
        out["all"] = sum(out[n] for n in self.tensors) / len(self.tensors)
        return out


def _named(lm: LanguageModel) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in lm.model.named_parameters() if p.numel() > 0]  # tied weights appear once


def lm_reach(lm: LanguageModel, prompts: Sequence[Sequence[int]], answers: torch.Tensor, margins: torch.Tensor, *,
             floor: float, tolerance: float, k: int = 5, per_tensor: int = 4096, seed: int = 0) -> LmReach:
    """First-order reach of ``prompts`` (the ids the model sees) along their ``answers``: the
    maximum over prompts of :func:`prompt_reach`."""
    rows = prompt_reach(lm, prompts, answers, margins, floor=floor, tolerance=tolerance, k=k, per_tensor=per_tensor,
                        seed=seed)
    return combine(rows)


def combine(rows: Sequence[LmReach]) -> LmReach:
    """The reach of a set of prompts from each one's: the maximum in each direction."""
    if not rows:
        raise ValueError("expected the reach of at least one prompt, got none")
    first = rows[0]
    return LmReach(first.tensors, first.sizes, first.tensor_of, torch.stack([r.down for r in rows]).amax(0),
                   torch.stack([r.up for r in rows]).amax(0), torch.stack([r.logprob for r in rows]).amax(0),
                   first.k, sum(r.steps for r in rows))


def prompt_reach(lm: LanguageModel, prompts: Sequence[Sequence[int]], answers: torch.Tensor, margins: torch.Tensor, *,
                 floor: float, tolerance: float, k: int = 5, per_tensor: int = 4096,
                 seed: int = 0) -> list[LmReach]:
    """First-order reach of each of ``prompts`` (the ids the model sees) along its answer.

    Args:
        lm: the intact model (its weights are not changed).
        prompts: token ids of each prompt, as the model sees them.
        answers: ``(N, T)`` the intact greedy ids (``-1`` past an answer's end).
        margins: ``(N, T)`` the intact top-1 vs top-2 margins: steps below ``floor`` are skipped
            for the margin's reach.
        floor: the margin noise floor.
        tolerance: the logprob tolerance (``> 0``).
        k: logprobs differentiated per step (default 5).
        per_tensor: at most this many entries examined per tensor, a seeded random subset
            of a larger one (default 4096, as for classifiers).
        seed: seed of the subsets.
    """
    if not tolerance > 0 or not floor > 0:
        raise ValueError(f"expected floor > 0 and tolerance > 0, got {floor} and {tolerance}")
    if k < 0 or per_tensor < 1:
        raise ValueError(f"expected k >= 0 and per_tensor >= 1, got {k} and {per_tensor}")
    named = _named(lm)
    params = [p for _, p in named]
    g = torch.Generator().manual_seed(seed)
    cols = [torch.arange(p.numel()) if p.numel() <= per_tensor
            else torch.randperm(p.numel(), generator=g)[:per_tensor].sort().values for p in params]
    signed = torch.cat([p.detach().reshape(-1)[c].double() for p, c in zip(params, cols, strict=True)])
    theta, sign_p = signed.abs(), torch.sign(signed)
    n_cols = int(theta.numel())
    tensor_of = torch.cat([torch.full((c.numel(),), t) for t, c in enumerate(cols)])
    names, sizes = [n for n, _ in named], [p.numel() for p in params]
    out_rows: list[LmReach] = []
    flags = [p.requires_grad for p in params]

    def grad_of(value: torch.Tensor, retain: bool) -> torch.Tensor:
        grads = torch.autograd.grad(value, params, retain_graph=retain, allow_unused=True)
        return torch.cat([torch.zeros(c.numel(), dtype=torch.float64) if gr is None
                          else gr.detach().reshape(-1)[c].double() for gr, c in zip(grads, cols, strict=True)])

    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for i, prompt in enumerate(prompts):
                down = torch.full((n_cols,), -math.inf, dtype=torch.float64)
                up = down.clone()
                lp_best = down.clone()
                steps = 0
                live = [int(t) for t in answers[i].tolist() if t >= 0]
                if not live:
                    out_rows.append(LmReach(names, sizes, tensor_of, down.float(), up.float(), lp_best.float(), k, 0))
                    continue
                seq = list(prompt) + live[:-1]
                ids = torch.tensor([seq])
                out = lm.model(input_ids=ids, use_cache=False).logits[0].float()
                n_steps = len(live)
                for t in range(n_steps):
                    z = out[len(prompt) - 1 + t]
                    last = t == n_steps - 1
                    top = z.detach().topk(max(2, k)).indices
                    if float(margins[i, t]) >= floor:
                        gk = grad_of(z[top[0]] - z[top[1]], retain=True)
                        tg = sign_p * gk  # the sign of theta_k * g_k
                        reach = torch.log10((theta * gk.abs()) / max(float(margins[i, t]), 1e-300))
                        down = torch.where(tg > 0, torch.maximum(down, reach), down)
                        up = torch.where(tg < 0, torch.maximum(up, reach), up)
                        steps += 1
                    if k:
                        logp = torch.log_softmax(z, dim=-1)
                        for j in range(k):
                            gk = grad_of(logp[top[j]], retain=not (last and j == k - 1))
                            lp_best = torch.maximum(lp_best, torch.log10(theta * gk.abs() / tolerance))
                del out
                out_rows.append(LmReach(names, sizes, tensor_of, down.float(), up.float(), lp_best.float(), k, steps))
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
    return out_rows


def select_by_reach(rows: Sequence[LmReach], n: int, order: Sequence[int], *, delta: float = 0.05) -> list[int]:
    """``n`` of the prompts whose ``rows`` are given, chosen greedily for ``top1-token``
    coverage at ``±delta``: each pick is the prompt (among ``order``, the candidates in
    order of preference, which breaks ties) that adds the most to the mean over tensors of
    the share of weights and directions some chosen prompt flips; once none adds anything
    the rest follow ``order``."""
    if not rows or n < 1:
        return []
    need = math.log10(1.0 / delta)
    first = rows[0]
    counts = torch.bincount(first.tensor_of, minlength=len(first.tensors)).double()
    w = 1.0 / (2 * len(first.tensors) * counts[first.tensor_of])
    weight = torch.cat([w, w])
    hits = {i: torch.cat([rows[i].down >= need, rows[i].up >= need]) for i in order}
    covered = torch.zeros_like(weight, dtype=torch.bool)
    chosen: list[int] = []
    rest = list(order)
    while rest and len(chosen) < n:
        gains = [float(weight[hits[i] & ~covered].sum()) for i in rest]
        best = max(range(len(rest)), key=lambda j: (gains[j], -j))
        if gains[best] <= 0:
            break
        i = rest.pop(best)
        chosen.append(i)
        covered |= hits[i]
    return chosen + rest[: n - len(chosen)]


def fingerprint_reach(lm: LanguageModel, fp: Any, *, k: int = 5, per_tensor: int = 4096, seed: int = 0) -> LmReach:
    """:func:`lm_reach` of an :class:`~veriprint.lm.fingerprint.LmFingerprint`'s prompts
    (templated as its API sees them)."""
    from veriprint.lm.target import LocalCompletions

    local = LocalCompletions(lm, chat=fp.meta.get("api") == "chat")
    ids = [local.prompt_ids(lm.decode(fp.prompt_ids(i))) if local.chat else fp.prompt_ids(i) for i in range(len(fp))]
    answers = fp.tensors["expected_ids"].long()
    return lm_reach(lm, ids, answers, fp.tensors["margins"], floor=fp.noise.floor,
                    tolerance=fp.noise.logit_tolerance, k=k, per_tensor=per_tensor, seed=seed)


def reach_meta(reach: LmReach) -> dict[str, Any]:
    """The per-tensor shares stored in an LM fingerprint's ``meta["reach"]``: for each of
    :data:`REACH_SPECS` and :data:`REACH_DELTAS`, the share of each tensor's weights whose
    change the prompts reveal, and the mean over tensors."""
    share: dict[str, list[list[float]]] = {}
    mean: dict[str, list[float]] = {}
    for spec in REACH_SPECS:
        rows = [reach.share(spec, d) for d in REACH_DELTAS]
        share[spec] = [[round(r[n], 4) for n in reach.tensors] for r in rows]
        mean[spec] = [round(r["all"], 4) for r in rows]
    return {"deltas": list(REACH_DELTAS), "tensors": reach.tensors, "sizes": reach.sizes, "k": reach.k,
            "steps": reach.steps, "share": share, "all": mean}
