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
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from veriprint.errors import ConfigError

__all__ = ["add_dataclass_arguments", "check_version", "from_mapping", "load_toml", "set_values"]

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
        v = out["version"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{_name(cls)}.version: expected a whole number >= 1, got {v!r}")
        if isinstance(current, int) and v > current:
            raise ConfigError(f"{_name(cls)}.version: this veriprint reads versions up to {current}, "
                              f"got {v}; upgrade veriprint to read it")
    return out


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
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"--config {os.fspath(path)!r}: expected TOML, {e}") from e
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
