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
import math
import os
import ssl
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np

from veriprint.targets.base import OUTPUT_FORMS, OutputForm, QueryBatch, Target, TargetError

__all__ = [
    "DATATYPES",
    "HttpClient",
    "HttpOptions",
    "HttpResponse",
    "HttpTarget",
    "InputDatatype",
    "as_array",
    "check_output",
    "parse_json",
]

log = logging.getLogger(__name__)

InputDatatype = Literal["FP32", "UINT8"]
DATATYPES: tuple[str, ...] = ("FP32", "UINT8")
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_SNIPPET = 200


def check_target_options(output: str, datatype: str, max_batch: int | None) -> None:
    """Validate the options every remote target shares (output form, input datatype, batch limit)."""
    if output not in OUTPUT_FORMS:
        raise ValueError(f"expected output in {OUTPUT_FORMS}, got {output!r}")
    if datatype not in DATATYPES:
        raise ValueError(f"expected datatype in {DATATYPES}, got {datatype!r}")
    if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"expected max_batch >= 1 or None, got {max_batch!r}")


def _snippet(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


@dataclass(frozen=True)
class HttpOptions:
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
            raise ValueError(f"expected timeout > 0 seconds, got {self.timeout}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"expected retries >= 0, got {self.retries!r}")
        if not (math.isfinite(self.backoff) and self.backoff >= 0):
            raise ValueError(f"expected backoff >= 0 seconds, got {self.backoff}")
        if self.max_response_bytes < 1:
            raise ValueError(f"expected max_response_bytes >= 1, got {self.max_response_bytes}")
        if self.auth_env is not None and not self.auth_env:
            raise ValueError("expected auth_env to name an environment variable, got ''")
        if not self.auth_header or any(c in self.auth_header for c in ":\r\n "):
            raise ValueError(f"expected auth_header to be a header name, got {self.auth_header!r}")
        if self.ca_file is not None and not os.path.exists(self.ca_file):
            raise ValueError(f"expected ca_file to be an existing file, got {self.ca_file!r}")

    def auth_headers(self) -> dict[str, str]:
        """The auth header read from the environment (empty when ``auth_env`` is None).

        Raises:
            ValueError: ``auth_env`` names a variable that is unset or empty.
        """
        if self.auth_env is None:
            return {}
        value = os.environ.get(self.auth_env)
        if not value:
            raise ValueError(
                f"expected environment variable {self.auth_env} (named by auth_env) to hold "
                "the auth header value, but it is unset or empty"
            )
        return {self.auth_header: value}


@dataclass(frozen=True)
class HttpResponse:
    """One HTTP answer: status code, lower-cased headers and the body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Retryable(Exception):
    """A failure after which the request may be sent again."""


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
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL with a host, got {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
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
        return f"{self.origin}{self.prefix}{path}"

    def _connection(self) -> http.client.HTTPConnection:
        t = self.options.timeout
        if self._ssl is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=t, context=self._ssl)
        return http.client.HTTPConnection(self.host, self.port, timeout=t)

    def _once(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> HttpResponse:
        url = self.url(path)
        deadline = time.monotonic() + self.options.timeout
        conn = self._connection()
        self.attempts += 1
        try:
            try:
                conn.request(method, self.prefix + path, body=body, headers={**self._headers, **headers})
                resp = conn.getresponse()
                chunks: list[bytes] = []
                size = 0
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    if conn.sock is not None:
                        conn.sock.settimeout(left)
                    chunk = resp.read(1 << 16)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > self.options.max_response_bytes:
                        raise TargetError(
                            f"{method} {url}: expected an answer of at most "
                            f"{self.options.max_response_bytes} bytes, the server sent more"
                        )
                    chunks.append(chunk)
            except TimeoutError as e:
                msg = f"{method} {url}: no complete answer within the {self.options.timeout:g} s timeout"
                if self.options.retry_timeouts:
                    raise _Retryable(msg) from e
                raise TargetError(msg) from e
            except ssl.SSLError as e:
                raise TargetError(f"{method} {url}: TLS failed: {e}") from e
            except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError,
                    http.client.RemoteDisconnected) as e:
                raise _Retryable(f"{method} {url}: connection failed: {e!r}") from e
            except (OSError, http.client.HTTPException) as e:
                raise TargetError(f"{method} {url}: request failed: {e!r}") from e
        finally:
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
        delay = self.options.backoff
        for attempt in range(self.options.retries + 1):
            try:
                return self._once(method, path, body, headers or {})
            except _Retryable as e:
                if attempt == self.options.retries:
                    tries = self.options.retries + 1
                    raise TargetError(f"{e} (after {tries} attempt{'s' * (tries > 1)})") from e
                log.info("%s; retrying in %.2f s", e, delay)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

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
            said = obj["error"]
    except ValueError:
        pass
    return f"{method} {url}: expected HTTP 200, server answered HTTP {resp.status}: {said}"


def parse_json(body: bytes, where: str) -> Any:
    """The JSON value in ``body``, or :class:`TargetError` quoting the start of what came."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise TargetError(f"{where}: expected a JSON body, got {_snippet(body)!r}") from e


def as_array(data: Any, where: str) -> np.ndarray:
    """Nested lists of numbers as a float64 or int64 array; :class:`TargetError` otherwise.

    Booleans, strings, ``null`` and ragged lists are refused.
    """
    try:
        arr = np.asarray(data)
    except ValueError as e:  # ragged
        raise TargetError(f"{where}: expected a rectangular array of numbers, got ragged lists") from e
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        return arr.astype(np.float64)
    kind = {"b": "booleans", "U": "strings", "S": "bytes", "O": "mixed or null values"}.get(
        arr.dtype.kind, str(arr.dtype))
    raise TargetError(f"{where}: expected numbers, got {kind} (e.g. {_snippet(repr(arr.flat[0]))})"
                      if arr.size else f"{where}: expected numbers, got an empty value")


def check_output(arr: np.ndarray, *, form: OutputForm, rows: int, classes: int | None = None,
                 where: str = "server") -> np.ndarray:
    """Validate a decoded answer and return it in the :class:`Target` contract's form.

    Args:
        arr: the decoded output (numbers).
        form: what it should be: ``"logits"``/``"probs"`` (``(rows, classes)`` floats),
            ``"labels"`` (``(rows,)`` or ``(rows, 1)`` integers), ``"topk"`` (``(rows, K)``),
            ``"top1-prob"`` (``(rows, 2)``: label, probability).
        rows: how many samples were sent.
        classes: number of classes, when known (checked for every form).
        where: named in error messages.

    Returns:
        float32 ``(rows, classes)`` for logits/probs, float32 ``(rows, 2)`` for top1-prob,
        int64 ``(rows,)`` or ``(rows, K)`` for labels/topk.

    Raises:
        TargetError: wrong count, shape, kind of values, non-finite or out-of-range values.
    """
    if arr.ndim == 0 or arr.shape[0] != rows:
        got = "a scalar" if arr.ndim == 0 else f"{arr.shape[0]} (shape {list(arr.shape)})"
        raise TargetError(f"{where}: expected outputs for {rows} samples, got {got}")
    if form in ("logits", "probs"):
        if arr.ndim != 2:
            raise TargetError(f"{where}: expected {form} of shape [{rows}, classes], got {list(arr.shape)}")
        if classes is not None and arr.shape[1] != classes:
            raise TargetError(f"{where}: expected {classes} classes, got {arr.shape[1]}")
        if arr.dtype.kind not in "fiu":
            raise TargetError(f"{where}: expected numeric {form}, got dtype {arr.dtype}")
        bad = ~np.isfinite(arr)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise TargetError(f"{where}: expected finite {form}, got {arr[r, c]} at sample {r}, "
                              f"class {c} ({int(bad.sum())} non-finite values)")
        out = arr.astype(np.float32)
        if form == "probs":
            if out.min() < -1e-6 or out.max() > 1 + 1e-6:
                raise TargetError(f"{where}: expected probabilities in [0, 1], got values in "
                                  f"[{out.min():g}, {out.max():g}]")
            sums = out.astype(np.float64).sum(axis=1)
            worst = int(np.argmax(np.abs(sums - 1)))
            if abs(sums[worst] - 1) > 1e-3:
                raise TargetError(f"{where}: expected probabilities summing to 1 per sample, "
                                  f"sample {worst} sums to {sums[worst]:.6g}")
        return out
    if form == "top1-prob":
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise TargetError(f"{where}: expected (label, probability) pairs of shape [{rows}, 2], "
                              f"got {list(arr.shape)}")
        out = arr.astype(np.float64)
        if not np.all(np.isfinite(out)):
            raise TargetError(f"{where}: expected finite (label, probability) pairs, got NaN or infinity")
        labels, probs = out[:, 0], out[:, 1]
        if not np.all(labels == np.round(labels)) or labels.min() < 0 or (
                classes is not None and labels.max() >= classes):
            raise TargetError(f"{where}: expected integer class indices in column 0, got "
                              f"{labels[:5].tolist()}...")
        if probs.min() < -1e-6 or probs.max() > 1 + 1e-6:
            raise TargetError(f"{where}: expected probabilities in [0, 1] in column 1, got values in "
                              f"[{probs.min():g}, {probs.max():g}]")
        return out.astype(np.float32)
    # labels / topk
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise TargetError(f"{where}: expected integer {form}, got non-integer values")
    elif arr.dtype.kind not in "iu":
        raise TargetError(f"{where}: expected integer {form}, got dtype {arr.dtype}")
    out = arr.astype(np.int64)
    if form == "labels":
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.ndim != 1:
            raise TargetError(f"{where}: expected labels of shape [{rows}], got {list(arr.shape)}")
    elif out.ndim != 2:
        raise TargetError(f"{where}: expected top-k labels of shape [{rows}, K], got {list(arr.shape)}")
    if out.size and (out.min() < 0 or (classes is not None and out.max() >= classes)):
        top = f"[0, {classes - 1}]" if classes is not None else ">= 0"
        raise TargetError(f"{where}: expected class indices in {top}, got values in "
                          f"[{out.min()}, {out.max()}]")
    return out


class HttpTarget(Target):
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
            raise ValueError(f"expected classes >= 1 or None, got {classes}")
        if http is not None and http_options:
            raise ValueError(f"give either http=HttpOptions(...) or its fields, got both "
                             f"(extra: {sorted(http_options)})")
        try:
            options = http or HttpOptions(**http_options)
        except TypeError as e:
            fields = sorted(HttpOptions.__dataclass_fields__)
            raise TypeError(f"unknown option for {type(self).__name__}: {e}; "
                            f"transport options are {fields}") from e
        self.client = HttpClient(base_url, options)
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
                raise ValueError("expected finite input samples, got NaN or infinity")
            return x
        if batch.grid is None:
            raise TargetError("this target takes UINT8 inputs but the fingerprint's samples have no "
                              "8-bit grid values; use datatype='FP32'")
        g = np.asarray(batch.grid)
        if g.size and (g.min() < 0 or g.max() > 255):
            raise TargetError(f"expected grid values in [0, 255] for UINT8, got [{g.min()}, {g.max()}]")
        return g.astype(np.uint8)

    def query(self, batch: QueryBatch) -> np.ndarray:
        data = self._payload_data(batch)
        self._prepare()
        n = data.shape[0]
        step = self.max_batch or max(n, 1)
        parts = []
        for start in range(0, n, step):
            chunk = data[start:start + step]
            raw = self._infer(chunk)
            parts.append(check_output(raw, form=self.output, rows=chunk.shape[0],
                                      classes=self.classes, where=self.description))
        if not parts:
            return np.zeros((0, self.classes or 0), np.float32)
        return np.concatenate(parts, axis=0)

    def _post(self, path: str, payload: Any, samples: int) -> Any:
        """POST a query carrying ``samples`` samples; counts every attempt."""
        before = self.client.attempts
        try:
            return self.client.post_json(path, payload)
        finally:
            sent = self.client.attempts - before
            self.requests_sent += sent
            self.samples_sent += sent * samples

    def _prepare(self) -> None:
        """Called before each query (e.g. to read the model's metadata once)."""

    @abstractmethod
    def _infer(self, data: np.ndarray) -> np.ndarray:
        """Send one request for ``data`` (float32 or uint8, ``(n, ...)``); the decoded output."""
