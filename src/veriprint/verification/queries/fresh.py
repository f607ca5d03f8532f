"""Fresh checks: every check made anew from natural seeds no earlier check used.

The owner holds the model, so it can make each check's queries when the check is due, and
compute their expected outputs itself. :class:`FreshQueries` splits the owner's natural
inputs once, by a permutation keyed with the owner's secret, into disjoint slices, one per
check for ``horizon_checks`` checks; check ``p`` draws its seeds only from slice ``p``. No
input is ever sent twice and no two checks share a seed, so neither a provider that replays
answers nor one that routes inputs close to anything it has seen before learns anything
from earlier checks; knowing the algorithm does not tell it the slices.

Kinds of check (:class:`FreshConfig.kind`):

* ``"boundary"`` (default): refined boundary samples, one per seed and no twins: no two
  queries are within the ball of each other, so a near-duplicate router has nothing to
  pair. Each sample flips when a change lowers its margin below the floor; over a check's
  ``per_check`` samples, changes of either sign are caught.
* ``"twins"``: the default fingerprint's twin pairs (both sides of a boundary), for
  providers that do not look at pairs; twins are 1-2 grey levels apart, so a provider that
  routes near-duplicates can spot them (``docs/design/adversary.md``).
* ``"natural"``: the natural seeds themselves, unchanged, with the owner's model's outputs:
  under ``probs`` or ``logits`` they catch small weight changes while being user traffic a
  router cannot tell apart; under ``top1`` they catch only changes that flip a natural label.

The cost is one small fingerprint per check (``docs/design/adversary.md`` measures it per day at
the monitor's default interval).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from veriprint.data import Dataset
from veriprint.errors import ConfigError
from veriprint.fingerprint import Fingerprint
from veriprint.models import OutputKind
from veriprint.verification.queries.keyed import keyed_permutation
from veriprint.verification.queries.source import SourceExhausted

__all__ = ["FreshConfig", "FreshQueries"]

log = logging.getLogger(__name__)

KINDS = ("boundary", "twins", "natural")


@dataclass(frozen=True)
class FreshConfig:
    """How each fresh check is made.

    Args:
        kind: ``"boundary"`` (default), ``"twins"`` or ``"natural"`` (module docstring).
        per_check: queries per check (default 16; pairs count two).
        horizon_checks: checks the owner's natural inputs must last without a repeat
            (default 720: 30 days at the monitor's default hourly interval).
        seeds_per_check: natural inputs set aside for each check (default 0: as many as
            ``horizon_checks`` allows, at most 32 per query); the boundary kinds draw their
            seeds near a decision boundary from them.
        steps: ascent steps of the generation (default 200).
        budget: time budget for making one check (default ``"2min"``).
        eps: the L-inf ball around each seed (default ``None``: the generation's default,
            8/255).
    """

    kind: Literal["boundary", "twins", "natural"] = "boundary"
    per_check: int = 16
    horizon_checks: int = 720
    seeds_per_check: int = 0
    steps: int = 200
    budget: str = "2min"
    eps: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"expected a fresh check kind among {', '.join(KINDS)}, got {self.kind!r}")
        for name, low in (("per_check", 1), ("horizon_checks", 1), ("seeds_per_check", 0), ("steps", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"expected {name} to be an integer >= {low}, got {v!r}")
        if self.kind == "twins" and self.per_check % 2:
            raise ConfigError(f"expected an even per_check for twin pairs, got {self.per_check}")


class FreshQueries:
    """A :class:`~veriprint.verification.queries.source.CheckSource` making each check anew.

    Args:
        model: the owner's intact model (eval mode).
        data: the owner's natural inputs (a data set, an image folder, recent traffic).
        secret: the owner's secret (:func:`veriprint.verification.queries.keyed.load_secret`).
        config: :class:`FreshConfig`.
        model_outputs: ``"logits"`` (default) or ``"probs"``.
        name: the endpoint's name: two endpoints with one secret get different slices.

    Raises:
        ConfigError: the data cannot give ``horizon_checks`` checks of ``per_check`` queries.
    """

    def __init__(self, model: nn.Module, data: Dataset, secret: bytes, config: FreshConfig | None = None, *,
                 model_outputs: OutputKind = "logits", name: str = "") -> None:
        self.cfg = cfg = config or FreshConfig()
        self.model = model.eval()
        self.data = data
        self.model_outputs = model_outputs
        n = len(data.x)
        need = cfg.per_check if cfg.kind == "natural" else max(cfg.per_check, 2)
        per = cfg.seeds_per_check or min(n // cfg.horizon_checks, 32 * cfg.per_check)
        if per < need:
            raise ConfigError(
                f"expected at least {need * cfg.horizon_checks} natural inputs for {cfg.horizon_checks} fresh checks "
                f"of {cfg.per_check} queries ({need} seeds each, never reused), got {n}: give more inputs "
                f"(an image folder or recent traffic), fewer queries per check, or a shorter horizon")
        self.seeds_per_check = per
        self.checks_available: int | None = n // per
        self._order = keyed_permutation(secret, n, "fresh-seeds", name)
        self.description = (f"fresh {cfg.kind} checks of {cfg.per_check} queries from {data.name or 'natural inputs'} "
                            f"({self.checks_available} checks before a seed would repeat)")
        self.seconds = 0.0

    def seeds_of(self, position: int) -> torch.Tensor:
        """Indices (into the data) of the natural inputs set aside for check ``position``."""
        if self.checks_available is not None and not 0 <= position < self.checks_available:
            raise SourceExhausted(f"fresh checks: every one of the {self.checks_available} seed slices was used "
                                  f"(check {position} asked); give more natural inputs to go on without repeating "
                                  "a query")
        lo = position * self.seeds_per_check
        return torch.as_tensor(self._order[lo: lo + self.seeds_per_check], dtype=torch.long)

    def make(self, position: int) -> Fingerprint:
        """The fingerprint of check ``position``: queries from its slice only, expected outputs
        from the owner's model."""
        from veriprint.pipeline import FingerprintConfig, make_fingerprint
        from veriprint.pipeline.generate import GenerationConfig

        idx = self.seeds_of(position)
        d = self.data
        part = Dataset(d.x[idx], None if d.y is None else d.y[idx], d.domain, d.name)
        cfg = self.cfg
        base = FingerprintConfig(select=cfg.per_check, ceiling_share=0.0, cover_classes=False,
                                 max_queries=cfg.per_check, budget=cfg.budget, views="none",
                                 generation=GenerationConfig(steps=cfg.steps) if cfg.eps is None
                                 else GenerationConfig(steps=cfg.steps, eps=cfg.eps))
        if cfg.kind == "natural":
            fcfg = dataclasses.replace(base, bag=cfg.per_check, seeds="random", refine=False, twins=False,
                                       selector="random", seed=position,
                                       generation=GenerationConfig(steps=0))
        else:
            bag = min(len(idx), max(2 * cfg.per_check, 16))
            fcfg = dataclasses.replace(base, bag=bag, twins=cfg.kind == "twins", pool=len(idx), seed=position)
        t0 = time.perf_counter()
        fp, _, _ = make_fingerprint(self.model, part, fcfg, domain=d.domain, model_outputs=self.model_outputs,
                                    progress=False, source=f"fresh check {position}")
        took = time.perf_counter() - t0
        self.seconds += took
        fp.meta["fresh"] = {"kind": cfg.kind, "position": position, "seeds": len(idx), "seconds": round(took, 3)}
        if len(fp) != cfg.per_check:
            log.warning("fresh check %d: made %d queries, not the %d asked (too few usable seeds in its slice)",
                        position, len(fp), cfg.per_check)
        return fp
