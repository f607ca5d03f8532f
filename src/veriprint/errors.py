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
    """An option, setting or argument is missing, of the wrong type, or out of range."""


class UnknownOptionError(ConfigError, TypeError):
    """An option that the receiving target or stage does not take (its name is misspelt,
    or it belongs to another kind of target)."""


class ModelError(VeriprintError, ValueError):
    """A model or its weights cannot be loaded (a bad factory, file or state dict)."""
