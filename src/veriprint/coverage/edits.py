"""Detection power as coverage, measured: which single-parameter edits some query sees.

:func:`edit_sweep` makes real edits, one at a time: for every parameter tensor, ``draws``
random entries (seeded; all of a smaller tensor), each scaled by ``1 - delta`` and
``1 + delta`` for every ``delta`` asked for. For each edit it records

- whether the edit is *visible*: it moves some natural input's top-2 margin (the intact
  top class minus the intact runner-up) or some logit by more than ``visible_at``
  (callers use twice the fingerprint's noise floor): an edit no natural input shows above
  the noise is one no natural-looking query could be asked to reveal;
- for every named set of probes (a fingerprint's queries, a bag of candidates), which of
  them change top-1 label.

Coverage is then ``caught / visible``, per tensor or over all tensors, for any prefix of
a set of queries (:meth:`EditSweep.caught`). First-order reach (:mod:`veriprint.coverage.reach`)
predicts the share caught; this is the measurement it is checked against.

Edits of a tensor deep in a chain of modules reuse the input the chain feeds that module
(computed once per tensor), so a sweep costs about one forward pass of the layers after
each edited one; a model that is not such a chain (checked exactly on the probes) is run
whole for every edit.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from veriprint.errors import ConfigError
from veriprint.models import OutputKind
from veriprint.noise import as_logits
from veriprint.numerics import label_and_runner_up

__all__ = ["EditSweep", "edit_sweep"]


@dataclass(frozen=True)
class EditSweep:
    """Real single-parameter edits and what saw them.

    Attributes:
        tensors: the parameter tensors' names.
        sizes: each tensor's number of entries.
        tensor_of: ``(E,)`` the tensor of each edit.
        entry: ``(E,)`` the flat index of the edited entry in its tensor.
        delta: ``(E,)`` the signed relative change (``-0.05`` scales by 0.95).
        visible: ``(E,)`` bool: some natural input moves by more than ``visible_at``.
        flips: per probe set, bool ``(E, n)``: which probes changed top-1 label.
        visible_at: the threshold of ``visible``, in logits.
        natural: how many natural inputs decided ``visible``.
    """

    tensors: list[str]
    sizes: list[int]
    tensor_of: torch.Tensor
    entry: torch.Tensor
    delta: torch.Tensor
    visible: torch.Tensor
    flips: dict[str, torch.Tensor]
    visible_at: float
    natural: int

    def __len__(self) -> int:
        return int(self.tensor_of.numel())

    def edits(self, delta: float) -> torch.Tensor:
        """Bool ``(E,)``: the edits of size ``|delta|`` (both signs)."""
        return (self.delta.abs() - abs(delta)).abs() < 1e-9

    def caught(self, probes: str, upto: int | None = None, *, any_of: Sequence[str] = ()) -> torch.Tensor:
        """Bool ``(E,)``: some of the first ``upto`` probes of ``probes`` (all by default),
        or some probe of the sets ``any_of``, changed label."""
        f = self.flips[probes]
        hit = f[:, :upto].any(1) if f.shape[1] else torch.zeros(len(self), dtype=torch.bool)
        for name in any_of:
            hit = hit | self.flips[name].any(1)
        return hit

    def per_tensor(self, hit: torch.Tensor, delta: float, *, of_visible: bool) -> list[float]:
        """Share of each tensor's ``±delta`` edits that ``hit`` holds, among all of them or
        among the visible ones (NaN for a tensor without a visible edit)."""
        sel = self.edits(delta)
        out = []
        for t in range(len(self.tensors)):
            rows = sel & (self.tensor_of == t)
            if of_visible:
                rows = rows & self.visible
            n = int(rows.sum())
            out.append(float(hit[rows].sum()) / n if n else float("nan"))
        return out

    def overall(self, hit: torch.Tensor, delta: float, *, of_visible: bool) -> float:
        """Every tensor weighing the same: the mean over tensors of the share of its edits
        that ``hit`` holds, divided (``of_visible``) by the same mean of the visible share."""
        sel = self.edits(delta)
        num, den = 0.0, 0.0
        for t in range(len(self.tensors)):
            rows = sel & (self.tensor_of == t)
            n = int(rows.sum())
            if not n:
                continue
            num += float((hit & rows & self.visible if of_visible else hit & rows).sum()) / n
            den += float((rows & self.visible).sum()) / n if of_visible else 1.0
        return num / den if den else float("nan")


def _leaf_chain(model: nn.Module, x: torch.Tensor, model_outputs: OutputKind) -> list[nn.Module] | None:
    """The model's leaf modules when its output is exactly their composition on ``x``
    (with reshapes between them), else None."""
    leaves = [m for m in model.modules() if not list(m.children())]
    seen: list[tuple[nn.Module, tuple[object, ...], object]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, i, o))) for m in leaves]
    try:
        with torch.inference_mode():
            out = model(x)
    finally:
        for handle in hooks:
            handle.remove()
    if not seen or len({id(m) for m, _, _ in seen}) != len(seen):
        return None
    chain = [m for m, _, _ in seen]
    with torch.inference_mode():
        y = x
        for m, (_, inp, _o) in zip(chain, seen, strict=True):
            if len(inp) != 1 or not isinstance(inp[0], torch.Tensor) or inp[0].numel() != y.numel():
                return None
            y = m(y.reshape(inp[0].shape))
        if not isinstance(out, torch.Tensor) or y.shape != out.shape or not torch.equal(y, out):
            return None
    owned = [id(p) for m in chain for p in m.parameters(recurse=False)]
    if len(set(owned)) != len(owned) or any(id(p) not in set(owned) for p in model.parameters()):
        return None  # a parameter outside the chain's leaves, or shared by two of them
    return chain


class _Runner:
    """Forward passes of ``rows`` under edits, reusing what precedes the edited module."""

    def __init__(self, model: nn.Module, rows: torch.Tensor, model_outputs: OutputKind, batch_size: int) -> None:
        self.model, self.rows, self.kind, self.batch = model, rows, model_outputs, batch_size
        self.chain = _leaf_chain(model, rows[: min(8, rows.shape[0])], model_outputs)
        self.shapes: list[torch.Size] = []
        if self.chain is not None:
            seen: list[torch.Size] = []
            hooks = [m.register_forward_pre_hook(lambda m, i: seen.append(i[0].shape[1:])) for m in self.chain]
            try:
                with torch.inference_mode():
                    model(rows[:1])
            finally:
                for h in hooks:
                    h.remove()
            self.shapes = seen
        self.start = 0
        self.cached: torch.Tensor | None = None

    def prepare(self, module: nn.Module | None) -> None:
        """Cache the input of ``module`` (the edited parameter's owner) for every row."""
        self.start, self.cached = 0, None
        if self.chain is None or module is None:
            return
        self.start = next(i for i, m in enumerate(self.chain) if m is module)
        with torch.inference_mode():
            h = self.rows
            for m, s in zip(self.chain[: self.start], self.shapes, strict=False):
                h = torch.cat([m(c.reshape(-1, *s)) for c in torch.split(h, self.batch)])
            self.cached = h

    def logits(self) -> torch.Tensor:
        with torch.inference_mode():
            if self.cached is None:
                return torch.cat([as_logits(self.model(c), self.kind) for c in torch.split(self.rows, self.batch)])
            assert self.chain is not None
            parts = []
            for c in torch.split(self.cached, self.batch):
                h = c
                for m, s in zip(self.chain[self.start:], self.shapes[self.start:], strict=True):
                    h = m(h.reshape(-1, *s))
                parts.append(as_logits(h, self.kind))
            return torch.cat(parts)


def edit_sweep(
    model: nn.Module,
    probes: Mapping[str, torch.Tensor],
    natural: torch.Tensor,
    *,
    visible_at: float,
    draws: int = 64,
    deltas: Sequence[float] = (0.05, 0.01),
    seed: int = 0,
    model_outputs: OutputKind = "logits",
    batch_size: int = 1024,
    tensors: Sequence[str] | None = None,
    progress: bool = False,
) -> EditSweep:
    """Real single-parameter edits of every tensor of ``model``, and what each one flips.

    Args:
        model: the intact classifier (a copy is edited; ``model`` is not changed).
        probes: named sets of inputs ``(n, ...)`` whose top-1 labels are watched.
        natural: natural inputs ``(m, ...)`` that decide which edits are visible.
        visible_at: an edit is visible when some natural input's top-2 margin or logit
            moves by more than this (logits; e.g. twice the noise floor).
        draws: entries edited per tensor (all of a smaller one), drawn with ``seed``.
        deltas: relative sizes; each entry is edited by ``-delta`` and ``+delta``.
        seed: seed of the draws.
        model_outputs: what the model returns.
        batch_size: rows per forward pass.
        tensors: the names of the tensors to edit (default: every one). The entries are
            drawn as for a sweep of every tensor, so a sweep of some tensors makes the same
            edits of them as the full sweep; the others have no edits, and the shares over
            tensors are over the edited ones.
        progress: show a progress bar over the edits (a sweep of a large model takes
            minutes to hours).

    Raises:
        ConfigError: no parameters, no natural inputs, a bad ``draws``, ``deltas`` or
            ``visible_at``, or a tensor name the model does not have.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.numel() > 0]
    if not named:
        raise ConfigError("expected a model with parameters, got none")
    if natural.shape[0] < 1:
        raise ConfigError("expected at least one natural input, got none")
    if draws < 1 or not deltas or any(not 0 < d < 1 for d in deltas) or not visible_at > 0:
        raise ConfigError(f"expected draws >= 1, deltas in (0, 1) and visible_at > 0, got {draws}, "
                          f"{list(deltas)}, {visible_at}")
    wanted = set(tensors) if tensors is not None else {n for n, _ in named}
    unknown = sorted(wanted - {n for n, _ in named})
    if unknown:
        raise ConfigError(f"expected tensors of the model (such as {named[0][0]!r}), got {', '.join(map(repr, unknown))}")
    work = copy.deepcopy(model).eval()
    names = list(probes)
    sizes_n = [int(probes[n].shape[0]) for n in names]
    rows = torch.cat([natural, *(probes[n] for n in names)]).float()
    runner = _Runner(work, rows, model_outputs, batch_size)
    base = runner.logits()
    m = natural.shape[0]
    top, second = label_and_runner_up(base[:m])
    ar = torch.arange(m)
    base_margin = base[ar, top] - base[ar, second]
    base_label = base[m:].argmax(1)
    owner = {id(p): mod for mod in work.modules() for p in mod.parameters(recurse=False)}
    g = torch.Generator().manual_seed(seed)
    total = sum(min(draws, p.numel()) for n, p in named if n in wanted) * 2 * len(deltas)
    bar = tqdm(total=total, desc="edits", unit="edit", disable=not progress, leave=False)
    tensor_of, entry, delta, visible, flips = [], [], [], [], []
    for t, ((name, p), w) in enumerate(zip(named, [q for q in work.parameters() if q.numel() > 0], strict=True)):
        idx = torch.randperm(p.numel(), generator=g)[:draws].tolist()
        if name not in wanted:  # drawn all the same, so the edited tensors get the full sweep's entries
            continue
        runner.prepare(owner.get(id(w)))
        flat = w.data.view(-1)
        for j in idx:
            orig = flat[j].clone()
            for d in deltas:
                for sign in (-1.0, 1.0):
                    flat[j] = orig * (1 + sign * d)
                    z = runner.logits()
                    flat[j] = orig
                    dz = (z[:m] - base[:m]).abs().amax(1)
                    dm = ((z[ar, top] - z[ar, second]) - base_margin).abs()
                    visible.append(bool((torch.maximum(dz, dm) > visible_at).any()))
                    flips.append(z[m:].argmax(1) != base_label)
                    tensor_of.append(t)
                    entry.append(j)
                    delta.append(sign * d)
                    bar.update()
    bar.close()
    allflips = torch.stack(flips) if flips else torch.zeros(0, sum(sizes_n), dtype=torch.bool)
    split = dict(zip(names, torch.split(allflips, sizes_n, dim=1), strict=True))
    return EditSweep(
        tensors=[n for n, _ in named], sizes=[p.numel() for _, p in named],
        tensor_of=torch.tensor(tensor_of), entry=torch.tensor(entry), delta=torch.tensor(delta, dtype=torch.float64),
        visible=torch.tensor(visible), flips=split, visible_at=float(visible_at), natural=m,
    )
