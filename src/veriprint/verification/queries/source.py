"""What the monitor asks a source of checks: the queries of the ``position``-th check.

A :class:`CheckSource` makes each check's fingerprint on demand. The monitor numbers the
checks of an endpoint 0, 1, 2, ... (the position is stored with each check, so a restart
goes on where it stopped) and asks :meth:`CheckSource.make` for each. A source that can
make only so many checks without repeating a query says so in :attr:`checks_available`
and raises :class:`SourceExhausted` past it: a monitor never repeats a query silently.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from veriprint.errors import ConfigError
from veriprint.fingerprint import Fingerprint

__all__ = ["CheckSource", "SourceExhausted"]


class SourceExhausted(ConfigError):
    """Every query the source could make without repeating one was already sent."""


@runtime_checkable
class CheckSource(Protocol):
    """Makes the queries of each check (see the module's docstring).

    Attributes:
        description: one line for logs and the dashboard (no secrets).
        checks_available: checks the source can make without repeating a query (``None``:
            no limit).
    """

    description: str
    checks_available: int | None

    def make(self, position: int) -> Fingerprint:
        """The fingerprint of check number ``position`` (0-based), its expected outputs
        from the owner's model.

        Raises:
            SourceExhausted: ``position >= checks_available``.
        """
        ...
