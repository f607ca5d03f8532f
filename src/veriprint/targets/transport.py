"""What every remote target shares, whatever moves its bytes: options, retries, deadlines.

:class:`TransportOptions` (also known as ``HttpOptions``) holds the timeout, retries,
backoff, TLS and auth settings of REST and gRPC targets alike; :func:`with_retries` is
the one retry loop (exponential backoff, only after failures that are safe to repeat,
each counted by the caller as one more query). The deadline of one attempt is enforced by
the transport itself: a socket watchdog for HTTP (:mod:`veriprint.targets.http`), the
call's deadline for gRPC.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from veriprint.errors import ConfigError, UnknownOptionError
from veriprint.redact import remember
from veriprint.targets.base import TargetError

__all__ = ["HttpOptions", "Retryable", "TransportOptions", "transport_options", "with_retries"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Retryable(Exception):
    """A failure after which the request may be sent again (the server did not run it)."""


@dataclass(frozen=True)
class TransportOptions:
    """How to talk to a server.

    Attributes:
        timeout: seconds allowed for one request: connecting, and the whole answer
            (default 30.0).
        retries: further attempts after a failure that is safe to retry (default 2).
        backoff: seconds before the first retry, doubled for each next one (default 0.5).
        retry_timeouts: also retry requests that timed out (default False: the server
            may have run them, and a retry sends the samples again).
        verify_tls: check the server's certificate and host name for https (default True).
        ca_file: a PEM bundle of trusted certificates (default: the system's).
        auth_env: name of an environment variable whose value is sent as the
            ``auth_header`` header (default None: no auth). The value itself is never
            taken from an argument, logged, or shown.
        auth_header: the header that carries it (default ``"Authorization"``; put the
            scheme in the variable, e.g. ``"Bearer abc..."``).
        max_response_bytes: largest answer read (default 256 MiB).
    """

    timeout: float = 30.0
    retries: int = 2
    backoff: float = 0.5
    retry_timeouts: bool = False
    verify_tls: bool = True
    ca_file: str | None = None
    auth_env: str | None = None
    auth_header: str = "Authorization"
    max_response_bytes: int = 256 * 2**20

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"expected timeout > 0 seconds, got {self.timeout}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"expected retries >= 0, got {self.retries!r}")
        if not (math.isfinite(self.backoff) and self.backoff >= 0):
            raise ConfigError(f"expected backoff >= 0 seconds, got {self.backoff}")
        if self.max_response_bytes < 1:
            raise ConfigError(f"expected max_response_bytes >= 1, got {self.max_response_bytes}")
        if self.auth_env is not None and not self.auth_env:
            raise ConfigError("expected auth_env to name an environment variable, got ''")
        bad = header_name_problem(self.auth_header)
        if bad:
            raise ConfigError(f"expected auth_header to be a header name such as 'Authorization', got {bad}")
        if self.ca_file is not None and not os.path.exists(self.ca_file):
            raise ConfigError(f"expected ca_file to be an existing file, got {self.ca_file!r}")

    def auth_headers(self) -> dict[str, str]:
        """The auth header read from the environment (empty when ``auth_env`` is None).

        Raises:
            ValueError: ``auth_env`` names a variable that is unset or empty.
        """
        if self.auth_env is None:
            return {}
        value = os.environ.get(self.auth_env)
        if value:
            remember(value)  # masked in everything printed or stored from now on
        if not value:
            raise ConfigError(
                f"expected environment variable {self.auth_env} (named by auth_env) to hold "
                "the auth header value, but it is unset or empty"
            )
        return {self.auth_header: value}


HttpOptions = TransportOptions

#: The characters of an HTTP header name (RFC 9110 "token").
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def header_name_problem(name: object) -> str:
    """What is wrong with ``name`` as a header name ("" when nothing is), never quoting a
    value that is not a plain name: ``"Authorization: Bearer abc"`` holds a token."""
    if not isinstance(name, str) or not name:
        return "an empty value" if name == "" else f"a {type(name).__name__}"
    if all(c in _TCHAR for c in name) and len(name) <= 64:
        return ""
    return (f"a value of {len(name)} characters with {'a colon' if ':' in name else 'spaces or other characters'} "
            "(not shown: it may hold a secret; put the value in the variable auth_env names)")


def transport_options(http: TransportOptions | None, fields: dict[str, Any], owner: str) -> TransportOptions:
    """``http``, or a :class:`TransportOptions` made of ``fields``; a clear error for unknown names."""
    if http is not None and fields:
        raise ConfigError(f"give either http=HttpOptions(...) or its fields, got both "
                          f"(extra: {sorted(fields)})")
    if http is not None:
        return http
    known = set(TransportOptions.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UnknownOptionError(f"unknown option{'s' * (len(unknown) > 1)} for {owner}: "
                                 f"{', '.join(unknown)}; transport options are {sorted(known)}")
    return TransportOptions(**fields)


def with_retries(attempt: Callable[[], T], options: TransportOptions) -> T:
    """``attempt()``, tried again after a :class:`Retryable` failure, at most
    ``options.retries`` more times, ``options.backoff`` seconds doubling in between.

    Raises:
        TargetError: the last failure, saying how many attempts were made.
    """
    delay = options.backoff
    for n in range(options.retries + 1):
        try:
            return attempt()
        except Retryable as e:
            if n == options.retries:
                tries = options.retries + 1
                raise TargetError(f"{e} (after {tries} attempt{'s' * (tries > 1)})") from e
            log.info("%s; retrying in %.2f s", e, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover
