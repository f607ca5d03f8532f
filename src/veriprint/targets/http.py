"""HTTP plumbing shared by the remote targets: transport, retries, TLS, auth, validation.

Only the standard library is used (``http.client``, ``ssl``, ``json``). A remote target is
a :class:`HttpTarget`: it turns each :class:`~veriprint.targets.base.QueryBatch` into
requests of at most ``max_batch`` samples, sends them with :class:`HttpClient`, and checks
every answer with :func:`check_output` before the verifier sees it. Anything unexpected
raises :class:`~veriprint.targets.base.TargetError` naming what was expected and what came,
which the verifier reports as INCONCLUSIVE.

Retries resend the same samples, so a retry is one more query in the paper's cost model;
they are made only where the server most likely did not run the model (connection
refused or reset before an answer, HTTP 429/502/503/504) and are counted in
:attr:`HttpTarget.samples_sent`. Timeouts are not retried unless asked.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np

from veriprint.errors import ConfigError
from veriprint.redact import redact, refuse_url_credentials
from veriprint.targets.base import OUTPUT_FORMS, OutputForm, QueryBatch, Target, TargetError
from veriprint.targets.contract import check_output, to_array
from veriprint.targets.transport import (
    HttpOptions,
    TransportOptions,
    transport_options,
    with_retries,
)
from veriprint.targets.transport import Retryable as _Retryable

__all__ = [
    "DATATYPES",
    "HttpClient",
    "HttpOptions",
    "HttpResponse",
    "HttpTarget",
    "InputDatatype",
    "TransportOptions",
    "as_array",
    "check_output",
    "parse_json",
    "transport_options",
]

log = logging.getLogger(__name__)

InputDatatype = Literal["FP32", "UINT8"]
DATATYPES: tuple[str, ...] = ("FP32", "UINT8")
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_SNIPPET = 200


def check_target_options(output: str, datatype: str, max_batch: int | None) -> None:
    """Validate the options every remote target shares (output form, input datatype, batch limit)."""
    if output not in OUTPUT_FORMS:
        raise ConfigError(f"expected output in {OUTPUT_FORMS}, got {output!r}")
    if datatype not in DATATYPES:
        raise ConfigError(f"expected datatype in {DATATYPES}, got {datatype!r}")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int)
                                  or max_batch < 1):
        raise ConfigError(f"expected max_batch >= 1 or None, got {max_batch!r}")


def _snippet(body: bytes | str) -> str:
    """The start of what a server said, on one line, with known secrets masked."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = redact(" ".join(text.split()))
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


@dataclass(frozen=True)
class HttpResponse:
    """One HTTP answer: status code, lower-cased headers and the body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Watchdog:
    """Cuts a request's socket when its deadline passes, wherever the request is blocked.

    A socket timeout bounds one ``recv``; a server that trickles a byte at a time (slow
    headers, slow body, slow chunks, a slow TLS handshake) never trips it. The watchdog
    bounds the whole request instead: a timer shuts the socket down at the deadline, which
    wakes any blocked read or write, and :attr:`expired` tells the reader why it stopped.
    The descriptor is only touched under a lock while the request still owns it.
    """

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._fd = -1
        self._finished = False
        self.expired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._fd = sock.fileno()
            if self.expired:
                self._cut()

    def done(self) -> None:
        """The request is over: never touch its descriptor again."""
        with self._lock:
            self._finished = True
            self._fd = -1
        self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.expired = True
            self._cut()

    def _cut(self) -> None:
        if self._fd < 0:
            return
        try:
            borrowed = socket.socket(fileno=self._fd)
        except OSError:
            return
        try:
            borrowed.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            borrowed.detach()  # the request still owns (and closes) the descriptor


def _content_length(resp: http.client.HTTPResponse, method: str, url: str) -> int | None:
    """The declared body size (None when chunked, absent or a HEAD answer)."""
    if method == "HEAD" or resp.chunked or resp.status in (204, 304) or 100 <= resp.status < 200:
        return None
    text = resp.getheader("content-length")
    if text is None:
        return None
    values = {v.strip() for v in text.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise TargetError(f"{method} {url}: expected a Content-Length of digits, got {_snippet(text)!r}")
    return int(values.pop())


class HttpClient:
    """Requests to one server (``http://`` or ``https://`` base URL), one connection each.

    Args:
        base_url: scheme, host and port (a path is kept as a prefix).
        options: timeouts, retries, TLS and auth (default :class:`HttpOptions`).

    Attributes:
        attempts: requests sent so far, retries included.
    """

    def __init__(self, base_url: str, options: HttpOptions | None = None) -> None:
        self.options = options or HttpOptions()
        refuse_url_credentials(base_url)
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"expected an http:// or https:// URL with a host, got {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.query = parts.query  # kept on every request (``?api_key=...``), masked where shown
        self._headers = {"Accept": "application/json", **self.options.auth_headers()}
        self._ssl: ssl.SSLContext | None = None
        if self.scheme == "https":
            ctx = ssl.create_default_context(cafile=self.options.ca_file)
            if not self.options.verify_tls:
                log.warning("TLS verification is off for %s: the server's identity is not checked",
                            self.host)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx
        self.attempts = 0

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.origin}{self.prefix}{self._target(path)}"

    def _target(self, path: str) -> str:
        """``path`` with the base URL's query string, if any."""
        return f"{path}?{self.query}" if self.query else path

    def _connect(self, watchdog: _Watchdog) -> http.client.HTTPConnection:
        """A connection whose socket the watchdog can cut (TLS handshake included)."""
        raw = socket.create_connection((self.host, self.port), timeout=self.options.timeout)
        watchdog.watch(raw)
        sock: socket.socket = raw
        if self._ssl is not None:
            sock = self._ssl.wrap_socket(raw, server_hostname=self.host)  # same descriptor
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.options.timeout)
        conn.sock = sock
        return conn

    def _once(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> HttpResponse:
        url = self.url(path)
        limit = self.options.max_response_bytes
        self.attempts += 1
        conn: http.client.HTTPConnection | None = None
        chunks: list[bytes] = []
        with _Watchdog(self.options.timeout) as watchdog:
            try:
                conn = self._connect(watchdog)
                conn.request(method, self.prefix + self._target(path), body=body,
                             headers={**self._headers, **headers})
                resp = conn.getresponse()
                declared = _content_length(resp, method, url)
                if declared is not None and declared > limit:
                    raise TargetError(f"{method} {url}: expected an answer of at most {limit} bytes, "
                                      f"the server announced {declared}")
                size = 0
                while True:
                    chunk = resp.read(1 << 16)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > limit:
                        raise TargetError(f"{method} {url}: expected an answer of at most {limit} "
                                          "bytes, the server sent more")
                    chunks.append(chunk)
                if watchdog.expired:
                    raise TimeoutError
                if declared is not None and size != declared:
                    raise TargetError(f"{method} {url}: expected {declared} bytes (its Content-Length), "
                                      f"the server sent {size} before closing")
            except TargetError:
                raise
            except Exception as e:
                if watchdog.expired or isinstance(e, TimeoutError):
                    msg = (f"{method} {url}: no complete answer within the {self.options.timeout:g} s "
                           "timeout")
                    if self.options.retry_timeouts:
                        raise _Retryable(msg) from e
                    raise TargetError(msg) from e
                if isinstance(e, ssl.SSLError):
                    raise TargetError(f"{method} {url}: TLS failed: {e}") from e
                if isinstance(e, ConnectionRefusedError | ConnectionResetError | BrokenPipeError
                              | http.client.RemoteDisconnected):
                    raise _Retryable(f"{method} {url}: connection failed: {e!r}") from e
                if isinstance(e, OSError | http.client.HTTPException):
                    raise TargetError(f"{method} {url}: request failed: {redact(repr(e))}") from e
                raise
            finally:
                watchdog.done()
                if conn is not None:
                    conn.close()
        headers_out = {k.lower(): v for k, v in resp.getheaders()}
        answer = HttpResponse(resp.status, headers_out, b"".join(chunks))
        if answer.status in RETRY_STATUSES:
            raise _Retryable(_status_message(method, url, answer))
        return answer

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> HttpResponse:
        """Send one request, retrying with exponential backoff where that is safe.

        Returns:
            the answer, whatever its status (except the retried ones, 429/502/503/504,
            when retries run out: those raise).

        Raises:
            TargetError: on timeouts, connection failures and retried statuses that persist.
        """
        return with_retries(lambda: self._once(method, path, body, headers or {}), self.options)

    def get_json(self, path: str) -> Any:
        """GET ``path``; the parsed JSON body of a 2xx answer, else :class:`TargetError`."""
        return self._json_of("GET", path, self.request("GET", path))

    def post_json(self, path: str, payload: Any) -> Any:
        """POST ``payload`` as JSON; the parsed JSON body of a 2xx answer, else :class:`TargetError`."""
        body = json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()
        resp = self.request("POST", path, body, {"Content-Type": "application/json"})
        return self._json_of("POST", path, resp)

    def _json_of(self, method: str, path: str, resp: HttpResponse) -> Any:
        url = self.url(path)
        if not 200 <= resp.status < 300:
            raise TargetError(_status_message(method, url, resp))
        return parse_json(resp.body, f"{method} {url}")


def _status_message(method: str, url: str, resp: HttpResponse) -> str:
    said = _snippet(resp.body) or "(empty body)"
    try:
        obj = json.loads(resp.body)
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            said = _snippet(obj["error"])
    except (ValueError, RecursionError):
        pass
    return f"{method} {url}: expected HTTP 200, server answered HTTP {resp.status}: {said}"


class _DuplicateKey(Exception):
    pass


def _distinct_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (the reader would keep only the last)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(repr(k[:80]))
        out[k] = v
    return out


def parse_json(body: bytes, where: str) -> Any:
    """The JSON value in ``body``, or :class:`TargetError` quoting the start of what came."""
    try:
        return json.loads(body, object_pairs_hook=_distinct_keys)
    except _DuplicateKey as e:
        raise TargetError(f"{where}: expected a JSON body whose objects name each key once, got {e} "
                          "twice in one object") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise TargetError(f"{where}: expected a JSON body, got {_snippet(body)!r}") from e
    except RecursionError as e:
        raise TargetError(f"{where}: expected a JSON body, got one nested too deeply to read") from e


def split_query(url: str) -> tuple[str, str]:
    """``url`` without its query string, and the query string (``""`` when none): a model URL
    is parsed without it, and the query goes back on every request's path."""
    head, sep, query = url.partition("?")
    return head, query if sep else ""


def with_query(base: str, query: str) -> str:
    return f"{base}?{query}" if query else base


def as_array(data: Any, where: str) -> np.ndarray:
    """Decoded JSON numbers as an int64 or float64 array (:func:`~veriprint.targets.contract.to_array`);
    booleans, strings, ``null`` and ragged lists raise :class:`TargetError`."""
    arr = to_array(data, where)
    return arr.astype(np.int64 if arr.dtype.kind in "iu" else np.float64)


class HttpTarget(Target, ABC):
    """A model behind an HTTP API; subclasses implement :meth:`_infer` for one request.

    Args:
        base_url: ``http(s)://HOST:PORT`` (plus path prefix) of the server.
        output: what the server returns: ``"logits"`` (default), ``"probs"``,
            ``"labels"``, ``"topk"`` or ``"top1-prob"``.
        datatype: what is sent: ``"FP32"`` (default: the float samples) or ``"UINT8"``
            (the fingerprint's 8-bit grid values, e.g. raw pixels).
        max_batch: most samples per request (default ``None``: one request per batch).
        classes: expected number of classes, checked on every answer (default ``None``).
        http: transport options (default :class:`HttpOptions`); or give its fields as
            keyword arguments (``timeout=5``, ``retries=0``, ``auth_env="TOKEN"``, ...).

    Attributes:
        requests_sent: HTTP requests made for queries, retries included.
        samples_sent: samples sent in them, retries included (the query cost).
    """

    protocol = "http"

    def __init__(self, base_url: str, *, output: OutputForm = "logits", datatype: InputDatatype = "FP32",
                 max_batch: int | None = None, classes: int | None = None,
                 http: HttpOptions | None = None, **http_options: Any) -> None:
        check_target_options(output, datatype, max_batch)
        if classes is not None and classes < 1:
            raise ConfigError(f"expected classes >= 1 or None, got {classes}")
        self.client = HttpClient(base_url, transport_options(http, http_options, type(self).__name__))
        self.output = output
        self.datatype = datatype
        self.max_batch = max_batch
        self.classes = classes
        self.requests_sent = 0
        self.samples_sent = 0

    def _payload_data(self, batch: QueryBatch) -> np.ndarray:
        if self.datatype == "FP32":
            x = np.asarray(batch.x, dtype=np.float32)
            if not np.all(np.isfinite(x)):
                raise ConfigError("expected finite input samples, got NaN or infinity")
            return x
        if batch.grid is None:
            raise TargetError("this target takes UINT8 inputs but the fingerprint's samples have no "
                              "8-bit grid values; use datatype='FP32'")
        g = np.asarray(batch.grid)
        if g.size and (g.min() < 0 or g.max() > 255):
            raise TargetError(f"expected grid values in [0, 255] for UINT8, got [{g.min()}, {g.max()}]")
        return g.astype(np.uint8)

    keep_precision = False  # the wire carries float32 (FP32) answers
    _counts_itself = True  # every HTTP attempt, retries included (see _post)

    def _answer(self, batch: QueryBatch) -> np.ndarray:
        return self._infer(self._payload_data(batch))

    def _post(self, path: str, payload: Any, samples: int) -> Any:
        """POST a query carrying ``samples`` samples; counts every attempt."""
        before = self.client.attempts
        try:
            return self.client.post_json(path, payload)
        finally:
            sent = self.client.attempts - before
            self.requests_sent += sent
            self.samples_sent += sent * samples

    @abstractmethod
    def _infer(self, data: np.ndarray) -> np.ndarray:
        """Send one request for ``data`` (float32 or uint8, ``(n, ...)``); the decoded output."""
