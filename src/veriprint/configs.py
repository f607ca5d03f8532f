"""One way for configuration to flow: dataclass defaults, set keys, a version check.

Every config of the library (:class:`~veriprint.pipeline.config.FingerprintConfig`,
:class:`~veriprint.pipeline.generate.GenerationConfig`, ...) is a frozen dataclass whose field
defaults are the only defaults. Whatever sets options (a command's flags, a
``--config FILE.toml``, a fingerprint's stored metadata, a Python caller) hands
:func:`from_mapping` only the keys it was given; everything else keeps the dataclass's
default. :func:`add_dataclass_arguments` derives a command's flags from the fields (with
the defaults shown in ``--help``, taken from the dataclass), so every option is reachable
from the command line and no default is written twice.

A ``version`` key newer than the dataclass's own is refused: an older veriprint cannot
know what a newer file means.

Files with tables of their own (the monitor's) are read with :func:`load_toml` and
:class:`Table`: typed reads of one table into its dataclass, durations and byte sizes in
the one grammar of :mod:`veriprint.units`, a key left unread refused with the known keys
named, and the same version rule. Every mistake is a :class:`~veriprint.errors.ConfigError`
naming the key, what was expected and what came.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from veriprint import units
from veriprint.errors import ConfigError
from veriprint.redact import redact

__all__ = ["Table", "add_dataclass_arguments", "check_version", "from_mapping", "keys_of", "load_toml", "set_values"]

T = TypeVar("T")


def _name(cls: type) -> str:
    return cls.__name__


def check_version(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` as a dict, after checking its ``version`` against ``cls``'s own.

    Raises:
        ConfigError: ``d`` is not a mapping, or its version is not a positive integer at
            most ``cls``'s.
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"{_name(cls)}: expected a table of settings, got {type(d).__name__}")
    out = dict(d)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if "version" in out and "version" in fields:
        current = fields["version"].default
        if isinstance(current, int):
            _check_version_value(f"{_name(cls)}.version", out["version"], current)
    return out


def _check_version_value(where: str, v: object, current: int) -> None:
    """The one version rule: a whole number >= 1, at most ``current`` (this veriprint's)."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{where}: expected a whole number >= 1, got {v!r}")
    if v > current:
        raise ConfigError(f"{where}: this veriprint reads versions up to {current}, got {v}; "
                          "upgrade veriprint to read it")


def from_mapping(cls: type[T], d: Mapping[str, Any]) -> T:
    """Build ``cls`` from the keys of ``d`` (the rest keep their defaults).

    Raises:
        ConfigError: a key ``cls`` does not have (named, with the known keys), or a value
            its own checks refuse.
    """
    d = check_version(cls, d)
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"{_name(cls)}: unknown setting{'s' * (len(unknown) > 1)} {', '.join(unknown)}; "
                          f"known: {', '.join(known)}")
    try:
        return cls(**d)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{_name(cls)}: {e}") from e


def load_toml(path: str | os.PathLike[str], section: str | None = None) -> dict[str, Any]:
    """The settings in a TOML file (its ``[section]`` table when given and present).

    Raises:
        ConfigError: the file is missing, unreadable or not TOML.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {os.fspath(path)!r}: expected a TOML file, "
                          f"got {'a directory' if p.is_dir() else 'no such file'}")
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {os.fspath(path)!r}: expected a readable TOML file, got "
                          f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {os.fspath(path)!r}: expected TOML, got {e}") from e
    if section is not None and isinstance(data.get(section), dict):
        return dict(data[section])
    return data


def _hints(cls: type) -> dict[str, Any]:
    import sys

    module = sys.modules[cls.__module__]
    return typing.get_type_hints(cls, vars(module))


def _flag_type(hint: Any) -> tuple[Any, dict[str, Any]] | None:
    """argparse settings for a field's type, or None when it has no flag form."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _flag_type(inner[0]) if len(inner) == 1 else (str, {})
    if origin is Literal:
        return type(args[0]), {"choices": list(args)}
    if hint is bool:
        return bool, {}
    if hint in (int, float, str):
        return hint, {}
    if origin is tuple:
        return str, {}
    return None


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_dataclass_arguments(p: argparse.ArgumentParser | Any, cls: type, *,
                            help: Mapping[str, str] | None = None,
                            aliases: Mapping[str, tuple[str, ...]] | None = None,
                            skip: tuple[str, ...] = ("version",),
                            types: Mapping[str, Any] | None = None) -> list[str]:
    """Add one flag per field of ``cls`` (``--field-name``); a flag the user does not give
    leaves no attribute at all, so only what was set flows into :func:`from_mapping`.

    Args:
        p: the parser (or argument group).
        cls: the dataclass.
        help: help text per field (the default shown is the dataclass's own).
        aliases: extra flag spellings per field (kept for older command lines).
        skip: fields without a flag (default: ``version``; nested dataclasses have none).
        types: a parser per field in place of its annotation's (e.g. durations as ``"3s"``).

    Booleans take ``--name`` / ``--no-name``. Returns the ``dest`` names added.
    """
    added = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = _flag_type(hints[f.name])
        if kind is None:
            continue
        typ, extra = kind
        if types and f.name in types:
            typ = types[f.name]
        flags = ["--" + f.name.replace("_", "-"), *((aliases or {}).get(f.name, ()))]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        shown = ",".join(default) if isinstance(default, tuple) else f"{default:.6g}" if isinstance(
            default, float) else default
        text = f"{(help or {}).get(f.name, f'{cls.__name__}.{f.name}')} (default: {shown})"
        if typ is bool:
            p.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=text)
        else:
            p.add_argument(*flags, dest=f.name, type=typ, default=argparse.SUPPRESS, help=text, **extra)
        added.append(f.name)
    return added


def set_values(args: argparse.Namespace, dests: list[str]) -> dict[str, Any]:
    """The fields among ``dests`` that the user gave on the command line."""
    return {dest: getattr(args, dest) for dest in dests if hasattr(args, dest)}


# --- tables of a settings file --------------------------------------------------------------


def keys_of(cls: type, *, without: Iterable[str] = (), extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The keys a table of dataclass ``cls`` takes: its fields, less ``without`` (fields the
    reader derives), plus ``extra`` (keys that are read into other fields)."""
    drop = set(without)
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in drop) + tuple(extra)


class Table:
    """Typed reads from one table of a settings file; a key left unread is refused at :meth:`done`.

    Args:
        data: the table (anything else is refused, naming ``key``).
        key: its path in the file (``"endpoints[0].decoys"``; "" for the top level).
        source: the file's name, put before every message.
        known: the keys it takes (a dataclass: its fields, see :func:`keys_of`), named when
            an unknown one is refused.
    """

    def __init__(self, data: Any, key: str = "", source: str = "", known: Iterable[str] | type = ()) -> None:
        if not isinstance(data, dict):
            raise ConfigError.at(key or "(top level)", "a table", f"<{type(data).__name__}>", source=source)
        self.data = dict(data)
        self.key = key
        self.source = source
        self.known: tuple[str, ...] = keys_of(known) if isinstance(known, type) else tuple(known)

    def path(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def error(self, name: str, expected: str, got: Any) -> ConfigError:
        return ConfigError.at(self.path(name), expected, got, source=self.source)

    def has(self, name: str) -> bool:
        return name in self.data

    def peek(self, name: str) -> Any:
        """The value of ``name`` (None when absent), left to be read."""
        return self.data.get(name)

    def pop(self, name: str, types: tuple[type, ...], expected: str, default: Any = None,
            required: bool = False) -> Any:
        """The value of ``name`` if it is one of ``types`` (a bool only if ``bool`` is one)."""
        if name not in self.data:
            if required:
                raise self.error(name, expected, "<nothing (the key is required)>")
            return default
        value = self.data.pop(name)
        if isinstance(value, bool) and bool not in types:
            raise self.error(name, expected, value)
        if not isinstance(value, types):
            raise self.error(name, expected, value if isinstance(value, str | int | float) else
                             f"<{type(value).__name__}>")
        return value

    def string(self, name: str, default: str | None = None, required: bool = False) -> Any:
        return self.pop(name, (str,), "a string", default, required)

    def integer(self, name: str, default: int, lo: int = 0, hi: int | None = None) -> int:
        value: int = self.pop(name, (int,), "an integer", default)
        if value < lo or (hi is not None and value > hi):
            bound = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
            raise self.error(name, bound, value)
        return value

    def number(self, name: str, default: float, lo: float = 0.0) -> float:
        value = float(self.pop(name, (int, float), "a number", default))
        if not math.isfinite(value) or value < lo:
            raise self.error(name, f"a number >= {lo:g}", value)
        return value

    def boolean(self, name: str, default: bool) -> bool:
        return bool(self.pop(name, (bool,), "true or false", default))

    def duration(self, name: str, default: float, *, positive: bool = False) -> float:
        """Seconds of a duration in the one grammar (:func:`veriprint.units.seconds`)."""
        if name not in self.data:
            return default
        return float(self.parse(name, lambda v: units.seconds(v, positive=positive)))

    def byte_size(self, name: str, default: int) -> int:
        """Bytes of a size in the one grammar (:func:`veriprint.units.byte_count`)."""
        if name not in self.data:
            return default
        return int(self.parse(name, units.byte_count))

    def parse(self, name: str, parse: Any) -> Any:
        """``parse(value)`` of ``name``; its refusal (``expected ..., got ...``) named by the key."""
        value = self.data.pop(name)
        try:
            return parse(value)
        except ConfigError as e:
            prefix = f"{self.source}: " if self.source else ""
            raise ConfigError(redact(f"{prefix}{self.path(name)}: {e}")) from None

    def table(self, name: str, known: Iterable[str] | type = ()) -> Table | None:
        """The table ``name`` (None when absent)."""
        if name not in self.data:
            return None
        return Table(self.data.pop(name), self.path(name), self.source, known)

    def version(self, current: int) -> int:
        """The table's ``version`` (default ``current``); a newer one than this veriprint's is refused."""
        if "version" not in self.data:
            return current
        v = self.data.pop("version")
        where = f"{self.source}: {self.path('version')}" if self.source else self.path("version")
        _check_version_value(where, v, current)
        return int(v)

    def done(self) -> None:
        """Refuse the first key left unread, naming the known ones."""
        for name in self.data:
            raise self.error(name, f"one of the known keys ({', '.join(self.known)})", "<an unknown key>")
