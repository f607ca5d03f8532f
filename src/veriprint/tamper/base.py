"""The tampering registry, its result types, and the one function that runs any attack.

An attack is a pure function ``(model, config, context) -> AttackOutcome`` registered for
its frozen config dataclass with :func:`register`. :func:`tamper` copies the caller's
model, runs the attack on the copy, and measures what every attack reports: clean accuracy
before and after, the attack's own success measure, how many weights changed and by how
much, and the wall time.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from veriprint.data import Dataset
from veriprint.models.train import accuracy, predict
from veriprint.numerics import freeze as _freeze

__all__ = [
    "AttackContext",
    "AttackInfo",
    "AttackOutcome",
    "Objective",
    "TamperReport",
    "TamperResult",
    "WeightChange",
    "attack_info",
    "config_to_dict",
    "list_attacks",
    "register",
    "require",
    "tamper",
    "weight_change",
]

log = logging.getLogger(__name__)

C = TypeVar("C")


@dataclass(frozen=True)
class AttackContext:
    """What an attack may use besides the model.

    Attributes:
        data: the attacker's labelled data (training, trigger design, poisoning).
        eval_data: held-out labelled data for every reported measure.
        progress: whether to show progress bars.
    """

    data: Dataset
    eval_data: Dataset
    progress: bool = True


@dataclass(frozen=True)
class Objective:
    """The training objective of a training-based attack, reusable by an adaptive attacker.

    Attributes:
        train: the (poisoned, triggered or relabelled) training set.
        params: names of the parameters the attack trains (``None``: all).
        measure: the attack's success measure on a model (higher is more successful).
        loss: batch loss ``(model, x, y) -> scalar`` (``None``: cross-entropy).
        project: maps trained parameter values to the values the model must hold
            (a pruning mask, a quantization grid); trained through straight-through.
    """

    train: Dataset
    params: tuple[str, ...] | None
    measure: Callable[[nn.Module], float]
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    project: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None


@dataclass(frozen=True)
class AttackOutcome:
    """What an attack function returns (the tampered model plus its own figures).

    Attributes:
        model: the tampered model (the attack's private copy).
        success_name: name of the success measure (as in the paper's Table 2).
        success: its value, or ``None`` for attacks without one.
        metrics: further attack-specific figures.
        size_saving: fraction of storage saved (compression attacks), else ``None``.
        objective: the training objective, for attacks that have one.
    """

    model: nn.Module
    success_name: str
    success: float | None
    metrics: Mapping[str, float] = field(default_factory=dict)
    size_saving: float | None = None
    objective: Objective | None = None


def require(ok: bool, what: str, value: object) -> None:
    """Raise ``ValueError(f"expected {what}, got {value!r}")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"expected {what}, got {value!r}")


AttackFn = Callable[[nn.Module, Any, AttackContext], AttackOutcome]


@dataclass(frozen=True)
class AttackInfo:
    """A registered attack: its CLI name, config type, function, summary and family.

    ``family`` is ``"paper"`` (He, Zhang, Lee, CVPR 2019, Table 2 and Section 5.4),
    ``"bivbench"`` (the tampering types of BIVBench, ACM MM 2024) or ``"subtle"``.
    """

    name: str
    config_type: type
    fn: AttackFn
    summary: str
    family: str

    def defaults(self) -> dict[str, Any]:
        """The config's fields and their default values."""
        return config_to_dict(self.config_type())


FAMILIES = ("paper", "bivbench", "subtle")
"""Attack families, in listing order; ``"subtle"``: small numeric changes a provider might
make without training (beyond the paper's compression and BIVBench's types)."""

_BY_TYPE: dict[type, AttackInfo] = {}
_BY_NAME: dict[str, AttackInfo] = {}


def register(
    config_type: type[C], name: str, summary: str, family: str = "bivbench"
) -> Callable[[AttackFn], AttackFn]:
    """Register ``fn`` as the attack for ``config_type`` under the CLI name ``name``."""
    if family not in FAMILIES:
        raise ValueError(f"expected family among {FAMILIES}, got {family!r}")

    def deco(fn: AttackFn) -> AttackFn:
        if config_type in _BY_TYPE or name in _BY_NAME:
            raise ValueError(f"attack {name!r} ({config_type.__name__}) is already registered")
        info = AttackInfo(name, config_type, fn, summary, family)
        _BY_TYPE[config_type] = info
        _BY_NAME[name] = info
        return fn

    return deco


def list_attacks() -> list[AttackInfo]:
    """Every registered attack, family by family (the paper's, BIVBench's, subtle changes), each by name."""
    return sorted(_BY_NAME.values(), key=lambda a: (FAMILIES.index(a.family), a.name))


def attack_info(key: str | type | object) -> AttackInfo:
    """The registered attack for a CLI name, a config type or a config instance."""
    if isinstance(key, str):
        if key not in _BY_NAME:
            raise ValueError(f"expected an attack among {sorted(_BY_NAME)}, got {key!r}")
        return _BY_NAME[key]
    cls = key if isinstance(key, type) else type(key)
    if cls not in _BY_TYPE:
        raise ValueError(f"expected a registered attack config, got {cls.__name__}")
    return _BY_TYPE[cls]


def config_to_dict(config: object) -> dict[str, Any]:
    """A JSON-ready dict of a config; nested attack configs carry their ``name``."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            nested = config_to_dict(value)
            if type(value) in _BY_TYPE:
                nested = {"name": _BY_TYPE[type(value)].name, **nested}
            value = nested
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


@dataclass(frozen=True)
class WeightChange:
    """How far a tampered state dict is from the original (floating tensors only).

    Attributes:
        changed: number of scalar entries that differ.
        total: number of scalar entries compared.
        l2: L2 norm of the difference.
        max_abs: largest absolute difference.
    """

    changed: int
    total: int
    l2: float
    max_abs: float


def weight_change(before: nn.Module, after: nn.Module) -> WeightChange:
    """Compare two models of the same architecture entry by entry."""
    a_state, b_state = before.state_dict(), after.state_dict()
    if a_state.keys() != b_state.keys():
        raise ValueError(
            f"expected the same state dict keys, got {sorted(a_state.keys() ^ b_state.keys())} differing"
        )
    changed, total, sq, mx = 0, 0, 0.0, 0.0
    for k, a in a_state.items():
        b = b_state[k]
        if not a.is_floating_point():
            continue
        if a.shape != b.shape:
            raise ValueError(f"{k}: expected shape {tuple(a.shape)}, got {tuple(b.shape)}")
        d = b.detach().double() - a.detach().double()
        changed += int((d != 0).sum())
        total += d.numel()
        sq += float(d.pow(2).sum())
        if d.numel():
            mx = max(mx, float(d.abs().max()))
    return WeightChange(changed, total, math.sqrt(sq), mx)


@dataclass(frozen=True)
class TamperReport:
    """The figures every attack reports.

    Attributes:
        attack: the attack's registered name.
        config: the config as a dict.
        clean_accuracy_before: top-1 accuracy of the intact model on the evaluation data.
        clean_accuracy_after: the same for the tampered model.
        success_name: the attack's own success measure (the paper's Table 2).
        success: its value (``None`` for attacks without one).
        changed_params: number of changed scalar weights (and buffers).
        total_params: number of scalar weights (and buffers) compared.
        l2_change: L2 norm of the weight change.
        max_abs_change: largest absolute weight change.
        size_saving: fraction of storage saved, for compression attacks.
        flip_rate: fraction of evaluation inputs whose top-1 label changed.
        seconds: wall time of the attack (measurements excluded).
        metrics: further attack-specific figures.
    """

    attack: str
    config: dict[str, Any]
    clean_accuracy_before: float
    clean_accuracy_after: float
    success_name: str
    success: float | None
    changed_params: int
    total_params: int
    l2_change: float
    max_abs_change: float
    size_saving: float | None
    flip_rate: float
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TamperResult:
    """A tampered model and its report.

    Attributes:
        model: the tampered model, in eval mode (a new object; the input is untouched).
        report: the :class:`TamperReport`.
    """

    model: nn.Module
    report: TamperReport


def tamper(
    model: nn.Module,
    config: object,
    *,
    data: Dataset,
    eval_data: Dataset | None = None,
    progress: bool = True,
) -> TamperResult:
    """Run the attack registered for ``config`` on a copy of ``model``.

    Args:
        model: the intact classifier (never modified).
        config: a registered attack config (see :func:`list_attacks`).
        data: the attacker's labelled data.
        eval_data: labelled data for the reported measures (default: ``data``).
        progress: show progress bars (default True).

    Returns:
        A :class:`TamperResult` with the tampered model and its :class:`TamperReport`.
    """
    info = attack_info(config)
    if data.y is None:
        raise ValueError("tampering needs labelled data: the data set has no y")
    eval_data = data if eval_data is None else eval_data
    if eval_data.y is None:
        raise ValueError("the evaluation data set has no labels")
    intact = _freeze(copy.deepcopy(model))
    work = copy.deepcopy(intact)
    ctx = AttackContext(data, eval_data, progress)
    log.info("tamper: running %s", info.name)
    start = time.perf_counter()
    outcome = info.fn(work, config, ctx)
    seconds = time.perf_counter() - start
    tampered = _freeze(outcome.model)
    change = weight_change(intact, tampered)
    before_labels = predict(intact, eval_data.x).argmax(-1)
    after_labels = predict(tampered, eval_data.x).argmax(-1)
    report = TamperReport(
        attack=info.name,
        config=config_to_dict(config),
        clean_accuracy_before=accuracy(intact, eval_data),
        clean_accuracy_after=accuracy(tampered, eval_data),
        success_name=outcome.success_name,
        success=outcome.success,
        changed_params=change.changed,
        total_params=change.total,
        l2_change=change.l2,
        max_abs_change=change.max_abs,
        size_saving=outcome.size_saving,
        flip_rate=float((before_labels != after_labels).float().mean()),
        seconds=seconds,
        metrics={k: float(v) for k, v in outcome.metrics.items()},
    )
    return TamperResult(tampered, report)
