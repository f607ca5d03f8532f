"""The one grammar of durations and of byte sizes, as every flag, file and field reads them."""

from __future__ import annotations

import argparse
import math

import pytest

from veriprint.errors import ConfigError
from veriprint.units import (
    byte_count,
    bytes_flag,
    duration_flag,
    parse_bytes,
    parse_duration,
    seconds,
)


@pytest.mark.parametrize(("value", "want"), [
    (5, 5.0), (2.5, 2.5), ("45", 45.0), ("0", 0.0), ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("5min", 300.0),
    ("1.5h", 5400.0), ("1d", 86400.0), (".5h", 1800.0), ("5.", 5.0), (" 2 min ", 120.0), ("10M", 600.0),
    ("1.5H", 5400.0), ("250MS", 0.25), ("+3s", 3.0),
])
def test_every_duration_form_either_side_took(value: object, want: float) -> None:
    assert seconds(value) == pytest.approx(want)


@pytest.mark.parametrize("bad", ["", "soon", "1 week", "5 days", "1e3", "5mins", "s", True, None, [5], float("nan"),
                                 float("inf"), "inf"])
def test_a_duration_out_of_the_grammar_names_the_grammar_and_what_came(bad: object) -> None:
    with pytest.raises(ConfigError) as e:
        seconds(bad)
    assert str(e.value) == ("expected a duration (seconds, or a number and a unit: 500ms, 30s, 5m or 5min, 1.5h, 1d), "
                            f"got {bad!r}")


def test_ranges_and_words_are_the_fields_own() -> None:
    with pytest.raises(ConfigError, match=r"^expected a duration of at least 0 seconds, got '-1s'$"):
        seconds("-1s")
    with pytest.raises(ConfigError, match=r"^expected a timeout of more than 0 seconds, got '0ms'$"):
        seconds("0ms", what="a timeout", positive=True)
    budget = {"what": "a time budget", "words": ("auto", "none"), "positive": True}
    assert parse_duration("AUTO", **budget) == "auto" and parse_duration(" none ", **budget) == "none"  # type: ignore[arg-type]
    assert parse_duration("1d", **budget) == 86400.0  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^expected a time budget \(seconds, .*1d; or auto, none\), got 'later'$"):
        parse_duration("later", **budget)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="expected a duration"):  # a word only where the field takes it
        seconds("auto")


@pytest.mark.parametrize(("value", "want"), [
    (1000, 1000), ("1000", 1000), ("1000B", 1000), ("64K", 64 * 2**10), ("64kb", 64 * 2**10), ("64KiB", 64 * 2**10),
    ("512M", 512 * 2**20), ("512 MiB", 512 * 2**20), ("2.5G", int(2.5 * 2**30)), ("2.5GB", int(2.5 * 2**30)),
    ("1T", 2**40),
])
def test_every_byte_size_form(value: object, want: int) -> None:
    assert byte_count(value) == want


@pytest.mark.parametrize("bad", ["", "lots", "2X", "1000ib", "1e6", True, None, 1.0 * math.inf])
def test_a_byte_size_out_of_the_grammar_names_the_grammar(bad: object) -> None:
    with pytest.raises(ConfigError) as e:
        byte_count(bad)
    assert str(e.value) == ("expected a byte size (bytes, or a number and a unit in powers of 1024: 64K, 512M or "
                            f"512MiB, 2.5G or 2.5GB, 1T), got {bad!r}")
    for small in ("0", "-1G", 0):
        with pytest.raises(ConfigError, match=f"^expected a byte size of at least 1 byte, got {small!r}$"):
            byte_count(small)
    assert parse_bytes("Auto", what="a memory budget", words=("auto",)) == "auto"


def test_flags_take_the_same_grammar() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--timeout", type=duration_flag)
    p.add_argument("--size", type=bytes_flag)
    args = p.parse_args(["--timeout", "2min", "--size", "64M"])
    assert (args.timeout, args.size) == (120.0, 64 * 2**20)
    with pytest.raises(argparse.ArgumentTypeError, match="expected a byte size"):
        bytes_flag("much")
