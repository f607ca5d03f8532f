"""How many queries a fingerprint keeps: a fixed budget, a coverage target, every class.

A selector picks greedily, so the first ``k`` picks of a longer selection are the
selection of ``k`` (same ties, same order). :func:`choose` uses this twice on top of any
selector:

- with ``cfg.coverage`` (a selector that predicts coverage: reach), it picks up to ``max_queries`` and keeps the
  shortest prefix, ``select`` queries at least, whose predicted share of ``±5%``
  single-parameter changes revealed (first order, mean over tensors, the figure
  ``meta["reach"]`` records) reaches the target; the cap, the end of the eligible bag, or
  the bag's own ceiling (the share every eligible candidate together reveals) stops it
  otherwise;
- without one, ``cfg.ceiling_share`` (default 0.97) sets the target the same way as that
  fraction of the bag's ceiling: the queries stop where more of them would add little of
  what the bag can reveal (a selector that predicts no coverage keeps exactly ``select``);
- with ``cfg.cover_classes`` on a model of at most :data:`MAX_COVERED_CLASSES` classes,
  it then adds candidates (pairs, for twins) that bring new top-1 labels until every class
  labels some query: through a top-1 API a query reveals a decrease of its own label's
  logit and of no other, so a class without a query is blind to it. Ties go to the
  candidate adding the most to the selector's own objective (reach), then to the
  smaller margin.

The outcome is a :class:`Budget`, stored as ``meta["budget"]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from veriprint.errors import ConfigError
from veriprint.noise import as_logits
from veriprint.selectors.algorithms import Selection
from veriprint.selectors.base import SelectionContext, Selector
from veriprint.selectors.prediction import COVERAGE_DELTA, prefix_coverage

__all__ = ["COVERAGE_DELTA", "MAX_COVERED_CLASSES", "Budget", "choose", "prefix_coverage"]

#: Models with at most this many classes get a query labelled with each class by default.
MAX_COVERED_CLASSES = 16

@dataclass(frozen=True)
class Budget:
    """How the number of queries was decided.

    Attributes:
        queries: queries kept (pairs count two).
        requested: the ``select`` asked for.
        stopped: what ended the growth: ``"budget"`` (exactly ``select``), ``"target"``
            (the coverage target was reached), ``"cap"`` (``max_queries``), ``"ceiling"``
            (the chosen queries reveal all the eligible bag reveals), ``"bag"`` (no
            eligible candidate left).
        target: the coverage target (None without one): ``coverage``, or ``share`` times
            the ceiling.
        share: the ``ceiling_share`` the target came from (None for a ``coverage``
            target or none).
        predicted: predicted share of ``±5%`` changes revealed by the kept queries
            (first order, mean over tensors; None without reach).
        ceiling: the same share for every eligible candidate of the bag together.
        classes: the model's number of classes.
        labelled: the classes some query is labelled with.
        blind: the classes no query is labelled with (blind to a decrease of their logit).
        added_for_classes: queries added so that more classes label a query.
    """

    queries: int
    requested: int
    stopped: str
    target: float | None
    share: float | None
    predicted: float | None
    ceiling: float | None
    classes: int
    labelled: list[int]
    blind: list[int]
    added_for_classes: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("target", "predicted", "ceiling"):
            if d[key] is not None:
                d[key] = round(d[key], 4)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Budget:
        """Read ``meta["budget"]`` (keys this version does not know are ignored; ``share``,
        which files written before it lack, is None).

        Raises:
            ConfigError: a field is missing.
        """
        d = {"share": None, **d}
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ConfigError(f"expected meta budget fields {', '.join(missing)}, got {sorted(d)}")
        return cls(**{n: d[n] for n in names})

    def summary(self) -> str:
        """One line for the command line."""
        parts = [f"{self.queries} queries"]
        if self.predicted is not None:
            parts.append(f"predicted coverage of ±{COVERAGE_DELTA:.0%} single-parameter changes "
                         f"{self.predicted:.1%} (first order, mean over tensors; the whole bag: {self.ceiling:.1%})")
        if self.target is not None:
            goal = (f"target {self.target:.1%} ({self.share:.0%} of the whole bag's {self.ceiling:.1%})"
                    if self.share is not None and self.ceiling is not None else f"target {self.target:.1%}")
            why = {"target": "target reached", "cap": "stopped by the cap (max_queries)",
                   "ceiling": "stopped by the bag's ceiling: no candidate reveals more",
                   "bag": "stopped: no eligible candidate left"}.get(self.stopped, self.stopped)
            if self.ceiling is not None and self.stopped != "target" and self.ceiling < self.target:
                why += f" (the whole bag reveals {self.ceiling:.1%}, below the target: a larger bag may)"
            parts.append(f"{goal}: {why}")
        if self.added_for_classes:
            parts.append(f"{self.added_for_classes} added so that more classes label a query")
        if self.blind:
            parts.append(f"{len(self.blind)} of {self.classes} classes blind to a decrease of their logit "
                         f"(no query labelled {', '.join(map(str, self.blind[:20]))}"
                         f"{', ...' if len(self.blind) > 20 else ''})")
        return "; ".join(parts)


def _labels(ctx: SelectionContext, paired: bool) -> list[set[int]]:
    key = ("labels", paired)
    if key not in ctx._cache:
        rows = [ctx.logits(ctx.candidates.samples).argmax(1)]
        if paired:
            assert ctx.twins is not None
            rows.append(ctx.logits(ctx.twins.samples).argmax(1))
        ctx._cache[key] = torch.stack(rows, 1).cpu()  # read row by row on the host
    return [set(r.tolist()) for r in ctx._cache[key]]


def _num_classes(ctx: SelectionContext) -> int:
    with torch.inference_mode():
        return int(as_logits(ctx.model(ctx.candidates.samples[:1]), ctx.model_outputs).shape[1])


def _pick(ctx: SelectionContext, selector: Selector, k: int, paired: bool) -> Selection:
    return selector.pairs(ctx, k) if paired else selector.singles(ctx, k)


def choose(ctx: SelectionContext, selector: Selector, k: int, *, paired: bool) -> tuple[Selection, Budget]:
    """``selector``'s picks (``k`` pairs or singles at least), grown as the config asks.

    Args:
        ctx: the selection context (its ``cfg`` gives ``coverage``, ``max_queries`` and
            ``cover_classes``).
        selector: the selector.
        k: units (pairs or singles) the budget ``select`` asks for.
        paired: pick pairs (a twin each) rather than single samples.

    Returns:
        The :class:`~veriprint.selectors.algorithms.Selection` (anchors, in pick order) and its :class:`Budget`.
    """
    cfg = ctx.cfg
    per = 2 if paired else 1
    pool = ctx.paired if paired else ctx.eligible
    available = int(pool.sum())
    cap = max(k, min(max(cfg.max_queries, cfg.select) // per, available))
    stopped = "budget"
    target: float | None = None
    # the ceiling share needs the selector's predictions; others keep exactly the budget
    share = (cfg.ceiling_share if cfg.coverage is None and cfg.ceiling_share > 0 and selector.predicts_coverage
             else None)
    grow = cfg.coverage is not None or share is not None
    sel = _pick(ctx, selector, cap if grow else k, paired)
    trace = _trace(ctx, sel.indices) if grow else None  # the prediction after each pick
    if cfg.coverage is not None and trace is None:
        raise ConfigError("a coverage target needs selection by reach, which needs the model's parameters; "
                          "got a model without any")
    if grow and trace is None:  # reach recorded nothing to predict by: exactly the budget
        sel, share = _prefix(sel, k), None
    elif trace is not None:
        ceiling = _ceiling(ctx)
        target = cfg.coverage if cfg.coverage is not None else ceiling * (share or 0.0)
        n = len(sel.indices)
        stopped = "cap" if cap * per >= max(cfg.max_queries, cfg.select) else "bag"
        for i in range(k - 1, len(trace)):
            if float(trace[i]) >= target - 1e-12:
                n, stopped = i + 1, "target"
                break
            if float(trace[i]) >= ceiling - 1e-12:
                n, stopped = i + 1, "ceiling"
                break
        sel = _prefix(sel, n)
    classes = _num_classes(ctx)
    added = 0
    if cfg.cover_classes and classes <= MAX_COVERED_CLASSES:
        sel, added = _cover_classes(ctx, sel, cap, paired, classes)
    labels = _labels(ctx, paired)
    labelled = sorted(set().union(*(labels[int(i)] for i in sel.indices)))
    trace = _trace(ctx, sel.indices)
    budget = Budget(
        queries=len(sel.indices) * per, requested=cfg.select, stopped=stopped, target=target, share=share,
        predicted=None if trace is None or not len(trace) else float(trace[-1]),
        ceiling=None if trace is None else _ceiling(ctx), classes=classes, labelled=labelled,
        blind=[c for c in range(classes) if c not in labelled], added_for_classes=added * per,
    )
    return sel, budget


def _trace(ctx: SelectionContext, indices: torch.Tensor) -> torch.Tensor | None:
    return None if ctx.prediction is None else ctx.prediction.trace(indices)


def _ceiling(ctx: SelectionContext) -> float:
    """What every eligible candidate the selector examined together reveals."""
    assert ctx.prediction is not None
    return ctx.prediction.ceiling()


def _prefix(sel: Selection, n: int) -> Selection:
    return Selection(sel.indices[:n], sel.coverage[:n], sel.gains[:n], sel.levels[:n], sel.neurons, sel.method)


def _cover_classes(ctx: SelectionContext, sel: Selection, cap: int, paired: bool,
                   classes: int) -> tuple[Selection, int]:
    labels = _labels(ctx, paired)
    pool = (ctx.paired if paired else ctx.eligible).clone()
    picked = sel.indices.tolist()
    pool[sel.indices] = False
    covered = set().union(*(labels[i] for i in picked)) if picked else set()
    pred = ctx.prediction
    r = None if pred is None else (pred.indices, pred.values, pred.weights)
    cur: torch.Tensor | None = None
    pos: dict[int, int] = {}
    if r is not None:
        idx, values, _ = r
        pos = {int(b): i for i, b in enumerate(idx.tolist())}
        v = values.double().clamp(0.0, 3.0)
        cur = (v[[pos[i] for i in picked]].amax(0) if picked
               else torch.zeros(v.shape[1], dtype=torch.float64, device=v.device))
    margin = ctx.candidates.gen.margin.double().cpu()  # read one by one on the host
    added: list[int] = []
    while len(covered) < classes and len(picked) < cap:
        best: tuple[int, float, float, int] | None = None
        for i in pool.nonzero().flatten().tolist():
            new = len(labels[i] - covered)
            if new == 0:
                continue
            gain = 0.0
            if cur is not None and r is not None:
                row = r[1][pos[i]].double().clamp(0.0, 3.0)
                gain = float(((torch.maximum(row, cur) - cur) * r[2].double()).sum())
            key = (new, gain, -float(margin[i]), -i)
            if best is None or key > best:
                best = key
        if best is None:
            break  # no eligible candidate is labelled with a missing class
        choice = -best[3]
        picked.append(choice)
        added.append(choice)
        pool[choice] = False
        covered |= labels[choice]
        if cur is not None and r is not None:
            cur = torch.maximum(cur, r[1][pos[choice]].double().clamp(0.0, 3.0))
    if not added:
        return sel, 0
    n = len(added)
    indices = torch.cat([sel.indices, torch.tensor(added, dtype=torch.long, device="cpu")])
    if r is not None:  # the selector's own trace: share revealed by a 10% change
        order = torch.tensor([pos[int(i)] for i in indices], dtype=torch.long, device=r[1].device)
        coverage = prefix_coverage(r[1], r[2], order, delta=0.1).float().cpu()
    else:
        last = sel.coverage[-1:] if sel.coverage.numel() else torch.zeros(1, device="cpu")
        coverage = torch.cat([sel.coverage, last.repeat(n)])
    out = Selection(
        indices=indices,
        coverage=coverage,
        gains=torch.cat([sel.gains, torch.zeros(n, dtype=sel.gains.dtype, device="cpu")]),
        levels=torch.cat([sel.levels, torch.ones(n, dtype=sel.levels.dtype, device="cpu")]),
        neurons=sel.neurons, method=sel.method,
    )
    return out, n
