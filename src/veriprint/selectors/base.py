"""The selector registry: how a fingerprint's samples are chosen from the candidates.

A selector picks ``k`` single samples (:meth:`Selector.singles`) or ``k`` twin pairs
(:meth:`Selector.pairs`, by their anchors: a pair is chosen whole) from a
:class:`SelectionContext`. Each one lives in its own module of this package and registers
itself under the name a :class:`~veriprint.pipeline.config.FingerprintConfig` gives:
``reach`` (the default), ``manc``, ``random``, ``tamper-aware``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from veriprint.errors import ConfigError
from veriprint.models import OutputKind
from veriprint.noise import as_logits
from veriprint.selectors.algorithms import Selection, activations, boundary_events
from veriprint.selectors.prediction import CoveragePrediction

if TYPE_CHECKING:  # the pipeline's types; the pipeline imports the selectors where it calls them
    from veriprint.pipeline.candidates import Candidates
    from veriprint.pipeline.config import FingerprintConfig
    from veriprint.pipeline.twins import Twins

__all__ = ["SelectionContext", "Selector", "get_selector", "list_selectors", "register"]


@dataclass
class SelectionContext:
    """What a selector may look at.

    Attributes:
        model: the intact model.
        candidates: the bag, described.
        eligible: bool ``(N,)``: which candidates may be chosen.
        twins: each candidate's twin, or None when the fingerprint stores single samples.
        cfg: the fingerprint's config (``neurons``, ``threshold``, ``seed``).
        model_outputs: what the model returns.
        progress: show progress bars.
        prediction: what the last selector that predicts coverage predicted of the
            candidates it examined (None until one ran; see
            :mod:`veriprint.selectors.prediction`).
    """

    model: nn.Module
    candidates: Candidates
    eligible: torch.Tensor
    twins: Twins | None
    cfg: FingerprintConfig
    model_outputs: OutputKind = "logits"
    progress: bool = False
    prediction: CoveragePrediction | None = None
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def paired(self) -> torch.Tensor:
        """Eligible candidates that have a twin."""
        if self.twins is None:
            raise ConfigError("this selection has no twins")
        return self.eligible & self.twins.ok

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits of ``x``, in batches of the plan's (``cfg.generation.batch_size``)."""
        with torch.inference_mode():
            return torch.cat([as_logits(self.model(c), self.model_outputs)
                              for c in torch.split(x, self.cfg.generation.batch_size)])

    def units(self) -> torch.Tensor:
        """Active neurons of interest per candidate (MANC's matrix), computed once."""
        if "units" not in self._cache:
            self._cache["units"] = activations(self.model, self.candidates.samples, layers=self.cfg.neurons,
                                               threshold=self.cfg.threshold, model_outputs=self.model_outputs,
                                               batch_size=self.cfg.generation.batch_size)
        units: torch.Tensor = self._cache["units"]
        return units

    def events(self, both_sides: bool) -> torch.Tensor:
        """Boundary events per candidate (see :func:`veriprint.selectors.algorithms.boundary_events`), computed once."""
        key = ("events", both_sides)
        if key not in self._cache:
            self._cache[key] = boundary_events(self.logits(self.candidates.samples), both_sides=both_sides)
        events: torch.Tensor = self._cache[key]
        return events


class Selector:
    """A way to choose samples; subclasses implement :meth:`singles` and :meth:`pairs`.

    A selector with ``predicts_coverage`` sets ``ctx.prediction`` whenever it picks, so
    that the query budget can grow its selection to a coverage target.
    """

    name: str = ""
    summary: str = ""
    predicts_coverage: bool = False

    def singles(self, ctx: SelectionContext, k: int) -> Selection:
        """``k`` single samples among ``ctx.eligible``."""
        raise NotImplementedError

    def pairs(self, ctx: SelectionContext, k: int) -> Selection:
        """``k`` pairs, by their anchors, among ``ctx.paired``."""
        raise NotImplementedError


_REGISTRY: dict[str, Selector] = {}
S = Callable[[type[Selector]], type[Selector]]


def register(name: str, summary: str) -> S:
    """Register a :class:`Selector` subclass under ``name``."""

    def deco(cls: type[Selector]) -> type[Selector]:
        if name in _REGISTRY:
            raise ValueError(f"selector {name!r} is already registered")
        cls.name, cls.summary = name, summary
        _REGISTRY[name] = cls()
        return cls

    return deco


def get_selector(name: str) -> Selector:
    """The registered selector called ``name``."""
    if name not in _REGISTRY:
        raise ConfigError(f"expected a selector among {sorted(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def list_selectors() -> list[Selector]:
    """Every registered selector, by name."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]
