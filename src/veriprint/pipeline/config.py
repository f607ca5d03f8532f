"""How a fingerprint is made: :class:`FingerprintConfig`, the single source of its defaults.

The command line, ``--config FILE.toml`` and the library all build this one dataclass
(:func:`veriprint.configs.from_mapping` of the keys the user set), so a default lives here
and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from veriprint.configs import check_version, from_mapping
from veriprint.deployments.profiles import DeviceProfile, Precision
from veriprint.errors import ConfigError
from veriprint.pipeline.generate import GenerationConfig
from veriprint.pipeline.plan import parse_bytes, parse_duration

__all__ = ["SELECTOR_NAMES", "FingerprintConfig"]

#: The selectors a config may name (each is a file in :mod:`veriprint.selectors`).
SELECTOR_NAMES = ("reach", "manc", "random", "tamper-aware")


@dataclass(frozen=True)
class FingerprintConfig:
    """How a fingerprint is made.

    Args:
        bag: natural seeds drawn for generation (default 500, the paper's bag).
        seeds: how the bag is drawn: ``"boundary"`` (default with refinement): the natural
            inputs with the smallest top-1 margins, the same number for each predicted class
            (refinement reaches the boundary from them, and every class gets boundaries);
            ``"random"``: uniformly, as the paper does.
        select: samples kept in the fingerprint, ``N_S``: the query budget, pairs counting
            two (default 8; ``queries`` on the command line and in config files, where
            ``select`` stays accepted).
        selector: ``"reach"`` (default): greedy cover of every parameter tensor by the
            first-order reach of the candidates (:func:`veriprint.selectors.algorithms.reach_cover`: the
            smaller the change of a parameter that flips a chosen sample, the better);
            ``"manc"``: the paper's active-neuron cover (with refinement, single-logit
            boundary events first, :func:`veriprint.selectors.algorithms.event_cover`); ``"random"``;
            or ``"tamper-aware"``: greedy cover of the label flips caused by simulated
            small weight changes (:func:`veriprint.selectors.algorithms.simulate_flips`).
        coverage: a target for the predicted share of ``±5%`` single-parameter changes
            the queries reveal (first-order reach, mean over tensors,
            :func:`veriprint.coverage.reach.reach_coverage`): queries are added greedily by reach,
            ``select`` at least, until the target, ``max_queries`` or the bag's own
            ceiling stops them (default None; needs ``selector="reach"``).
        ceiling_share: without a ``coverage`` target, add queries the same way until their
            predicted share reaches this fraction of the bag's ceiling (what every eligible
            candidate together reveals), ``select`` at least and ``max_queries`` at most
            (default 0.97: the queries stop where more of them would add little; 0: exactly
            ``select``). ``benchmarks/studies/detection_power.py`` measures what it buys: with 0.97
            and a cap of 64, 90% or more of the visible ±5% single-parameter edits were
            caught on each zoo model it measures, with 0.95 and 32, 88.9% on one of them.
        max_queries: most queries ``coverage``, ``ceiling_share`` and ``cover_classes`` may
            grow the fingerprint to, pairs counting two (default 64; never fewer than
            ``select``).
        cover_classes: for a model with at most 16 classes, add queries (by pairs, within
            ``max_queries``) until every class is the top-1 label of some query: a top-1
            query reveals a decrease of its own label's logit only, so a class no query is
            labelled with is blind to it (default True).
        neurons: MANC's neurons of interest: ``"penultimate"`` (default) or ``"all"``.
        threshold: activation threshold for MANC (default 0).
        refine: move samples to just above the noise floor for label APIs (default True).
        refine_factor: refinement target as a multiple of the floor (default 2).
        twins: with refinement, store samples in pairs across the decision boundary
            (:func:`veriprint.pipeline.twins.boundary_twins`): a change of the margin in either
            direction flips one of the pair (default True; ``select`` pairs' worth).
        safety: factor on the measured noise (default 10).
        min_floor: smallest margin floor in logits with ``floor="fixed"`` (default 1e-4).
        tolerance: extra logit noise declared for the deployment (GPU, TF32, float16
            serving), default 0.
        prob_tolerance: extra probability noise declared likewise, default 0.
        calibrate_onnx: include onnxruntime in the noise calibration (default False).
        seed: seed for drawing the bag and for random selection (default 0).
        pool: natural inputs examined to draw boundary seeds (default 0: ``max(20 bag,
            min(data, 20000))``, at most the data).
        views: when the data has fewer inputs than ``bag``, add natural views of each
            (:func:`veriprint.pipeline.seeds.natural_views`): ``"auto"`` (default: shifts,
            and mirror images of colour images), ``"shifts"``, ``"shifts+flips"`` or
            ``"none"``. A bag larger than the data and its views is cut to their number,
            with a warning; the views used are recorded in ``meta["data"]``.
        budget: time budget for the whole run: ``"auto"`` (default: 10 minutes on a CPU,
            60 s on an accelerator), a duration (``"90s"``, ``"10m"``, ``"1.5h"``), or
            ``"none"``. ``bag``, ``pool`` and ``generation.steps`` are ceilings that the
            plan trims to fit (:mod:`veriprint.pipeline.plan`: the counted work at the
            machine's calibrated speed); a run that fits is unchanged, and no stage is
            stopped by the clock.
        max_memory: memory budget for the tensors one backward pass keeps, which caps the
            batch size: ``"auto"`` (default: 1 GiB, at most 40% of the machine's memory;
            on a CUDA device, 40% of the GPU's memory) or a size (``"512M"``, ``"2G"``).
        device: where the deployment runs the model, ``"cpu"`` (default), ``"cuda"`` or
            ``"cuda:N"``: the whole pipeline runs there (:func:`make_fingerprint` copies
            the model to the device), and the expected outputs and the noise floor are
            computed there (:mod:`veriprint.deployments.profiles`); a CUDA device is refused where
            none is present.
        precision: the deployment's numerics, ``"fp32"`` (default), ``"tf32"`` (CUDA),
            ``"fp16"`` / ``"bf16"`` (weights and inputs cast), ``"autocast-fp16"`` /
            ``"autocast-bf16"`` (``torch.autocast``) or ``"fp64"``. Generation runs in
            float32 either way (TF32 on for ``tf32`` only); what the profile changes is
            what the file expects, and where its twin pairs sit: on the boundary of the
            model as the profile runs it (:mod:`veriprint.pipeline.straddle`).
        floor: how the smallest margin floor is set: ``"fixed"`` (default): never below
            ``min_floor``; ``"measured"``: the floor follows ``safety`` times the measured
            noise, down to two units of the deployment's resolution
            (:func:`veriprint.noise.resolution_guard`; a few 1e-6 in float32), and
            ``min_floor`` is not used. ``docs/guide/deployments.md`` has the measurement: on
            8-bit data it caught more single-parameter edits with no false alarm on any
            float32 CPU deployment, but on a coarse grid (16 levels) it leaves far fewer
            twins, so it is not the default.
        generation: the :class:`GenerationConfig`.
        version: config schema version.
    """

    bag: int = 500
    seeds: Literal["boundary", "random"] = "boundary"
    select: int = 8
    selector: Literal["reach", "manc", "random", "tamper-aware"] = "reach"
    coverage: float | None = None
    ceiling_share: float = 0.97
    max_queries: int = 64
    cover_classes: bool = True
    neurons: Literal["penultimate", "all"] = "penultimate"
    threshold: float = 0.0
    refine: bool = True
    refine_factor: float = 2.0
    twins: bool = True
    safety: float = 10.0
    min_floor: float = 1e-4
    tolerance: float = 0.0
    prob_tolerance: float = 0.0
    calibrate_onnx: bool = False
    seed: int = 0
    pool: int = 0
    views: Literal["auto", "shifts", "shifts+flips", "none"] = "auto"
    budget: str = "auto"
    max_memory: str = "auto"
    device: str = "cpu"
    precision: Precision = "fp32"
    floor: Literal["fixed", "measured"] = "fixed"
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    version: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):  # no setting is NaN or infinite (they would pass every comparison below)
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"invalid FingerprintConfig.{f.name}: expected a finite number, got {v!r}")
        checks = [
            ("bag", self.bag >= 1),
            ("seeds", self.seeds in ("boundary", "random")),
            ("select", isinstance(self.select, int) and 1 <= self.select <= self.bag),
            ("selector", self.selector in SELECTOR_NAMES),
            ("coverage", self.coverage is None or 0 < self.coverage <= 1),
            ("ceiling_share", 0 <= self.ceiling_share <= 1),
            ("max_queries", self.max_queries >= 1),
            ("neurons", self.neurons in ("penultimate", "all")),
            ("refine_factor", self.refine_factor >= 1),
            ("safety", self.safety >= 1),
            ("min_floor", self.min_floor > 0),
            ("tolerance", 0 <= self.tolerance <= 100),  # logits: beyond, every answer would match
            ("prob_tolerance", 0 <= self.prob_tolerance <= 1),
            ("pool", isinstance(self.pool, int) and self.pool >= 0),
            ("views", self.views in ("auto", "shifts", "shifts+flips", "none")),
            ("floor", self.floor in ("fixed", "measured")),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"invalid FingerprintConfig.{name}: got {getattr(self, name)!r}")
        for name, parse in (("budget", parse_duration), ("max_memory", parse_bytes)):
            try:
                parse(getattr(self, name))
            except ConfigError as e:
                raise ConfigError(f"invalid FingerprintConfig.{name}: {e}") from None
        if self.coverage is not None and self.selector != "reach":
            raise ConfigError(f"FingerprintConfig.coverage needs selector 'reach' (it predicts coverage by reach), "
                              f"got selector {self.selector!r}")
        try:
            self.profile  # noqa: B018 (checks device and precision together)
        except ConfigError as e:
            raise ConfigError(f"invalid FingerprintConfig device/precision: {e}") from e

    @property
    def profile(self) -> DeviceProfile:
        """The deployment's device and precision (:class:`~veriprint.deployments.profiles.DeviceProfile`)."""
        return DeviceProfile(self.device, self.precision)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["generation"] = self.generation.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FingerprintConfig:
        """Read a config as stored in a fingerprint's metadata (or written by hand).

        Files written before ``seeds`` and ``twins`` existed drew seeds at random, without
        twins; files written before ``floor`` had the fixed floor; files written before
        ``budget`` existed had none; those keys default accordingly. A ``version`` newer
        than this veriprint's, or a key it does not know, is refused with the key named.
        """
        d = check_version(cls, d)
        d.setdefault("seeds", "random")
        d.setdefault("twins", False)
        d.setdefault("budget", "none")
        d.setdefault("cover_classes", False)  # files before class coverage kept exactly ``select``
        d.setdefault("ceiling_share", 0.0)  # ... and so did files before the ceiling share
        d.setdefault("max_queries", 64)  # the cap before the field was stored
        if "queries" in d:  # the user-facing name of ``select``
            d = dict(d)
            queries = d.pop("queries")
            if "select" in d and d["select"] != queries:
                raise ConfigError(f"FingerprintConfig: queries ({queries!r}) and select ({d['select']!r}) name the "
                                  "same setting; give one")
            d["select"] = queries
        d.setdefault("floor", "fixed")  # files written before measured floors had the fixed one
        d["generation"] = GenerationConfig.from_dict(d.get("generation", {}))
        return from_mapping(cls, d)
