"""The arguments both kinds of enrollment check alike: counts, bounded numbers, the targets."""

from __future__ import annotations

import math
from typing import Any

from veriprint.errors import ConfigError

__all__ = ["check_int", "check_number", "target_list"]


def check_int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"expected {name} to be a whole number >= {lo}, got {value!r}")
    return value


def check_number(name: str, value: object, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 <= value <= hi:
        raise ConfigError(f"expected {name} in [0, {hi:g}], got {value!r}")
    return float(value)


def target_list(target: Any) -> list[Any]:
    """One target or a list of replicas, as a list (refusing none)."""
    raw: list[Any] = list(target) if isinstance(target, list | tuple) else [target]
    if not raw:
        raise ConfigError("expected at least one target, got none")
    return raw
