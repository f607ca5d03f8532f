"""Durations and byte sizes as people write them: one grammar each, for every flag, file and field.

**Durations** (:func:`parse_duration`, :func:`seconds`): a number of seconds (``30``, ``2.5``,
``"45"``), or a number and a unit, with or without a space, in any case::

    500ms   30s   5m  5min   1.5h   1d   .5h   2 min

``ms`` milliseconds, ``s`` seconds, ``m`` or ``min`` minutes, ``h`` hours, ``d`` days. A
field may also take words (the fingerprint's time budget takes ``none`` and ``auto``) and
may ask for more than 0 seconds (a budget, a timeout).

**Byte sizes** (:func:`parse_bytes`): a number of bytes (``1000``), or a number and a unit
in powers of 1024, in any case, ``B``, ``iB`` or nothing after the prefix::

    64K  64KB  64KiB   512M   2.5G  2.5GB   1T   1000B

A field may also take words (a memory budget takes ``auto``). A size is always at least one byte.

Every refusal is a :class:`~veriprint.errors.ConfigError` (a ``ValueError``) worded one way:
``expected <what> (<the grammar>), got <the value>``, or ``expected <what> of at least
<bound>, got <the value>`` for a number out of range.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Collection

from veriprint.errors import ConfigError

__all__ = [
    "BYTES_HINT",
    "BYTE_UNITS",
    "DURATION_HINT",
    "DURATION_UNITS",
    "byte_count",
    "bytes_flag",
    "duration_flag",
    "parse_bytes",
    "parse_duration",
    "seconds",
]

#: Seconds per duration unit (a bare number is seconds).
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
#: Bytes per size prefix (a bare number is bytes).
BYTE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}

DURATION_HINT = "seconds, or a number and a unit: 500ms, 30s, 5m or 5min, 1.5h, 1d"
BYTES_HINT = "bytes, or a number and a unit in powers of 1024: 64K, 512M or 512MiB, 2.5G or 2.5GB, 1T"

_NUMBER = r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))"
_DURATION = re.compile(rf"{_NUMBER}\s*(ms|s|min|m|h|d)?", re.IGNORECASE)
_BYTES = re.compile(rf"{_NUMBER}\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)


def _hint(grammar: str, words: Collection[str]) -> str:
    return grammar + (f"; or {', '.join(words)}" if words else "")


def _word(value: object, words: Collection[str]) -> str | None:
    if isinstance(value, str) and words:
        w = value.strip().lower()
        if w in words:
            return w
    return None


def _number(value: object, pattern: re.Pattern[str], what: str, hint: str) -> tuple[float, str]:
    """The number and the unit of ``value`` (a number: no unit), or the grammar's refusal."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"expected {what} ({hint}), got {value!r}")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        m = pattern.fullmatch(value.strip())
        if not m:
            raise ConfigError(f"expected {what} ({hint}), got {value!r}")
        number, unit = float(m.group(1)), (m.group(2) or "").lower()
    if not math.isfinite(number):
        raise ConfigError(f"expected {what} ({hint}), got {value!r}")
    return number, unit


def parse_duration(value: object, *, what: str = "a duration", words: Collection[str] = (),
                   positive: bool = False) -> float | str:
    """Seconds of ``value``, or the word it is (lower-cased) when ``words`` holds it.

    Args:
        value: a number of seconds, or a string in the module's grammar.
        what: what the field is, for the message (``"a time budget"``).
        words: the words the field takes besides durations (``("auto", "none")``).
        positive: refuse 0 (a budget or a timeout must be more than 0 seconds).

    Raises:
        ConfigError: anything else, or fewer than 0 seconds (with ``positive``, 0 or fewer).
    """
    word = _word(value, words)
    if word is not None:
        return word
    hint = _hint(DURATION_HINT, words)
    number, unit = _number(value, _DURATION, what, hint)
    out = number * DURATION_UNITS.get(unit, 1.0)
    if out < 0 or (positive and out <= 0):
        raise ConfigError(f"expected {what} of {'more than' if positive else 'at least'} 0 seconds, got {value!r}")
    return out


def seconds(value: object, *, what: str = "a duration", positive: bool = False) -> float:
    """Seconds of ``value`` (a number, or a string in the module's grammar), at least 0
    (more than 0 with ``positive``); :func:`parse_duration` without words.

    Raises:
        ConfigError: anything else, or a number out of range.
    """
    out = parse_duration(value, what=what, positive=positive)
    assert isinstance(out, float)
    return out


def parse_bytes(value: object, *, what: str = "a byte size", words: Collection[str] = ()) -> int | str:
    """Bytes of ``value`` (at least 1), or the word it is (lower-cased) when ``words`` holds it.

    Raises:
        ConfigError: anything else, or less than one byte.
    """
    word = _word(value, words)
    if word is not None:
        return word
    hint = _hint(BYTES_HINT, words)
    number, prefix = _number(value, _BYTES, what, hint)
    out = number * BYTE_UNITS[prefix]
    if out < 1 or out > 2**63 - 1:
        raise ConfigError(f"expected {what} of at least 1 byte, got {value!r}" if out < 1 else
                          f"expected {what} below 8 EiB, got {value!r}")
    return int(out)


def byte_count(value: object, *, what: str = "a byte size") -> int:
    """:func:`parse_bytes` without words."""
    out = parse_bytes(value, what=what)
    assert isinstance(out, int)
    return out


def duration_flag(text: str) -> float:
    """:func:`seconds` as an argparse ``type``."""
    try:
        return seconds(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def bytes_flag(text: str) -> int:
    """:func:`byte_count` as an argparse ``type``."""
    try:
        return byte_count(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
