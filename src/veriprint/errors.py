"""The exceptions veriprint raises on purpose, under one base.

Every failure that is the input's fault, not veriprint's (a corrupt or crafted
fingerprint file, a server that answers garbage, an option a target does not take, a
value out of range), raises a :class:`VeriprintError` whose message names what was
expected and what came. The command line prints that message on one line and exits 2;
it never prints a traceback for one, and exit 1 is reserved for TAMPERED.

The subclasses also derive from the built-in exception they refine (``ValueError``,
``RuntimeError``), so code written against those keeps working.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ModelError", "UnknownOptionError", "VeriprintError"]


class VeriprintError(Exception):
    """Base of veriprint's own errors: the input was wrong, and the message says how."""


class ConfigError(VeriprintError, ValueError):
    """An option, setting or argument is missing, of the wrong type, or out of range.

    The one configuration error of the project (``veriprint.monitor.config.ConfigError`` is
    this class too). Raised with a message, or built by :meth:`at` for one key of a settings
    file, which also keeps the key, what was expected and what came.
    """

    key: str = ""
    expected: str = ""
    got: object = None
    source: str = ""

    @classmethod
    def at(cls, key: str, expected: str, got: object, *, source: str = "") -> ConfigError:
        """``"SOURCE: KEY: expected EXPECTED, got GOT"``, with every secret masked.

        Args:
            key: the setting, as the file spells its path (``endpoints[0].interval``).
            expected: what it takes.
            got: what it holds; a string in ``<...>`` describes it instead of quoting it
                (``"<an unknown key>"``, ``"<nothing (the key is required)>"``).
            source: the file it is in ("" for none).
        """
        from veriprint.redact import redact  # redact imports this module

        shown = got[1:-1] if isinstance(got, str) and got.startswith("<") and got.endswith(">") else repr(got)
        prefix = f"{source}: " if source else ""
        # every message passes the one redaction rule: a value written in the wrong place may be a secret
        err = cls(redact(f"{prefix}{key}: expected {expected}, got {shown}"))
        err.key, err.expected, err.got, err.source = key, expected, got, source
        return err


class UnknownOptionError(ConfigError, TypeError):
    """An option that the receiving target or stage does not take (its name is misspelt,
    or it belongs to another kind of target)."""


class ModelError(VeriprintError, ValueError):
    """A model or its weights cannot be loaded (a bad factory, file or state dict)."""
