"""Durations as people write them, one grammar for flags, ``--config`` files and the monitor.

``seconds("500ms")``, ``"30s"``, ``"5m"`` (or ``"5min"``), ``"1.5h"``, ``"1d"``, or a plain
number of seconds. The fingerprint's time budget adds ``"none"`` and ``"auto"`` on top of
this grammar (:func:`veriprint.pipeline.plan.parse_duration`).
"""

from __future__ import annotations

import argparse
import math
import re

__all__ = ["DURATION_HINT", "duration_flag", "seconds"]

DURATION_HINT = "a duration (seconds, or a string like '500ms', '30s', '5m', '1h')"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|min|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def seconds(value: object) -> float:
    """Seconds of ``value`` (a number, or a string in the module's grammar), at least 0.

    Raises:
        ValueError: anything else, or a negative or non-finite number.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_HINT}, got {value!r}")
    if isinstance(value, int | float):
        out = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        out = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"expected {DURATION_HINT}, got {value!r}")
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"expected a duration >= 0, got {value!r}")
    return out


def duration_flag(text: str) -> float:
    """:func:`seconds` as an argparse ``type``."""
    try:
        return seconds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
