"""Keeping secrets out of everything veriprint prints, logs or stores.

Two kinds of secret pass through a verification: the value of the auth header (read from
the environment variable named by ``auth_env``) and credentials someone wrote into a
target URL (``http://user:password@host/...``). URL credentials are refused (see
:func:`refuse_url_credentials`): they would be sent in clear, kept in shell history and
process lists, and echoed by every message naming the URL. The auth value is remembered
here when it is read, and :func:`redact` replaces every occurrence of it (and of its
token part, e.g. ``abc`` in ``Bearer abc``) with ``***``. The verifier redacts its
report, the command line redacts every message it prints, and the HTTP layer redacts
the server's words before quoting them, so a 401 page that echoes the Authorization
header cannot put the token in stdout or in a report file. In any URL it prints, the user
name, the password and every query value (``?token=...``) are masked too, and the whole
path of a webhook whose path is its token (Slack, Discord, Teams, Zapier, Google Chat).
Whatever looks like a credential in any text is masked even when it was never remembered:
an auth scheme and its token (``Bearer abc``, ``Basic dXNl...``) and the value of an auth
header written out (``Authorization: ...``).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any
from urllib.parse import urlsplit

from veriprint.errors import ConfigError

__all__ = ["MASK", "SECRET_PATH_HOSTS", "RedactingFilter", "forget_all", "redact", "redact_obj", "redact_url",
           "refuse_url_credentials", "remember"]

MASK = "***"
_lock = threading.Lock()
_secrets: set[str] = set()
# A URL inside any text: scheme://, then everything up to white space or a quote.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# What looks like a credential wherever it is written, remembered or not: an auth scheme
# word and its token ("Bearer abc...", "Basic dXNl..."), and the value of an auth header
# written out ("Authorization: ...", "X-Api-Key: ..."), up to the end of the value.
# After "Bearer" anything is a token; after the words that are also English ("Basic",
# "Token", ...) only what is shaped like one: 8 or more characters with a digit, one of
# + / = or a capital inside.
_SCHEME_TOKEN = re.compile(r"\b(Bearer|bearer|BEARER)(\s+)(?!\*\*\*)[A-Za-z0-9._~+/=:-]{3,}"
                           r"|(?i:\b(Basic|Token|Digest|Negotiate|ApiKey|Api-Key))(\s+)(?!\*\*\*)"
                           r"(?=[A-Za-z0-9._~+/=:-]{8,})(?=[A-Za-z0-9._~+/=:-]*(?:[0-9+/=]|(?<=[A-Za-z0-9])[A-Z]))"
                           r"[A-Za-z0-9._~+/=:-]+")
_HEADER_VALUE = re.compile(r"(?i)\b((?:Proxy-)?Authorization|X-Api-Key|Api-Key|X-Auth-Token|Cookie)(\s*:\s*)"
                           r"(?!\*\*\*)(?:(Bearer|Basic|Token|Digest|Negotiate|ApiKey)\s+)?[^\s'\"<>,;]+")


def remember(value: str) -> None:
    """Treat ``value`` (and the token after its scheme word, if any) as a secret from now on."""
    if not value:
        return
    parts = {value.strip()}
    _scheme, _, token = value.strip().partition(" ")
    if token.strip():
        parts.add(token.strip())
    with _lock:
        _secrets.update(p for p in parts if p)


def forget_all() -> None:
    """Forget every remembered secret (for tests)."""
    with _lock:
        _secrets.clear()


def redact(text: str) -> str:
    """``text`` with remembered secrets and URL credentials replaced by ``***``."""
    if not isinstance(text, str):
        text = str(text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, MASK)
    text = _HEADER_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _SCHEME_TOKEN.sub(lambda m: f"{m.group(1) or m.group(3)}{m.group(2) or m.group(4)}{MASK}", text)
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


#: Webhook services whose URL path is the secret (``https://hooks.slack.com/services/T/B/token``).
SECRET_PATH_HOSTS = ("hooks.slack.com", "discord.com", "discordapp.com", "webhook.office.com",
                     "outlook.office.com", "hooks.zapier.com", "chat.googleapis.com")


def redact_url(url: str) -> str:
    """``url`` with its user name and password, and every query value, replaced by ``***``;
    for a webhook service whose path is the token (:data:`SECRET_PATH_HOSTS`), the path too."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@" + netloc.rsplit("@", 1)[1]
    query = "&".join(f"{kv.split('=', 1)[0]}={MASK}" if "=" in kv else kv for kv in parts.query.split("&")
                     ) if parts.query else ""
    path = parts.path
    if path and any(host == h or host.endswith("." + h) for h in SECRET_PATH_HOSTS):
        path = "/" + MASK
    out = f"{parts.scheme}://{netloc}{path}" if parts.scheme else url.split("?")[0]
    return out + (f"?{query}" if query else "")


def redact_obj(obj: Any) -> Any:
    """A copy of a JSON-like structure with every string redacted."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_obj(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_obj(v) for v in obj]
    return obj


def refuse_url_credentials(url: str) -> None:
    """Raise :class:`ConfigError` when ``url`` carries ``user[:password]@`` before its host.

    The message names the URL with the credentials masked and says how to pass them.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    if "@" in (parts.netloc or ""):
        raise ConfigError(
            f"expected a target URL without credentials, got {redact(url)!r}: credentials in a URL "
            "leak into logs, reports and process lists. Put the header value in an environment "
            "variable and name it with --auth-env (auth_env=...), e.g. "
            "VERIPRINT_AUTH='Basic <base64 of user:password>' or 'Bearer <token>'"
        )


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is left to logging's own error handling
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
