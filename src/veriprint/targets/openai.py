"""Language models behind an OpenAI-compatible API: ``/v1/completions`` and ``/v1/chat/completions``.

vLLM, llama.cpp's server, Hugging Face's ``transformers serve`` and TGI speak this API. A
check asks for greedy output (``temperature`` 0) of a few prompts and, where the server
gives them, the top-K next-token log-probabilities of every generated token, each endpoint
in its own format:

* completions: ``{"prompt": [p1, p2, ...], "max_tokens": N, "logprobs": K}``, answered with
  ``choices[i].text`` and ``choices[i].logprobs.tokens`` / ``.top_logprobs`` (one object
  ``{token: logprob}`` per generated token). Several prompts go in one request (the API
  takes a list; ``max_batch`` bounds it, 1 for servers that take one string only);
* chat: ``{"messages": [{"role": "user", "content": p}], "max_tokens": N, "logprobs": true,
  "top_logprobs": K}``, one prompt per request, answered with ``choices[0].message.content``
  and ``choices[0].logprobs.content[j].token`` / ``.top_logprobs`` (a list of
  ``{"token", "logprob"}``).

Every answer is held to the same rules as the other remote targets
(:mod:`veriprint.targets.http`): bounded time and size through
:class:`~veriprint.targets.transport.HttpOptions`, and anything malformed (a missing field,
a wrong type, a wrong number of choices, a repeated or missing ``index``, a log-probability
that is not a finite number at most 0, more tokens than asked, or fewer without a
``finish_reason`` of ``"stop"``) raises :class:`~veriprint.targets.base.TargetError` naming
what was expected and what came. An API key is read from an environment variable
(``api_key_env``), sent as ``Authorization: Bearer ...`` and masked in everything shown
(:mod:`veriprint.redact`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from veriprint.errors import ConfigError
from veriprint.redact import remember
from veriprint.targets.base import TargetError
from veriprint.targets.http import HttpClient, HttpResponse, _snippet, parse_json
from veriprint.targets.transport import HttpOptions, with_retries

__all__ = ["MAX_LOGPROBS", "Completion", "OpenAIChat", "OpenAICompletions"]

log = logging.getLogger(__name__)

#: The most alternatives per token asked for (the chat API's limit, and vLLM's default).
MAX_LOGPROBS = 20
#: How far above 0 a log-probability may be (a server's float rounding of log(1)).
LOGPROB_SLACK = 1e-4
_SNIPPET = 120


@dataclass(frozen=True)
class Completion:
    """What the server generated for one prompt.

    Attributes:
        text: the generated text.
        tokens: the generated tokens, as the server spells them (empty when the server
            gave no per-token detail: completions without ``logprobs`` give none). A
            server may end them with the end-of-text token it stopped on, which the text
            leaves out (vLLM does, on both endpoints).
        top_logprobs: per generated token, its K most likely alternatives and their
            natural-log probabilities (``None`` when not asked for).
    """

    text: str
    tokens: list[str]
    top_logprobs: list[dict[str, float]] | None


def _short(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _logprob(value: Any, where: str) -> float:
    """``value`` as a log-probability: a finite real number at most 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TargetError(f"{where}: expected a log-probability (a number), got {_short(value)}")
    x = float(value)
    if not math.isfinite(x) or x > LOGPROB_SLACK:
        raise TargetError(f"{where}: expected a finite log-probability at most 0, got {x!r}")
    return x


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``obj[key]``, checked to be of ``kind``."""
    if not isinstance(obj, dict):
        raise TargetError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise TargetError(f"{where}: expected a {key!r} field, got keys {sorted(obj)[:12]}")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise TargetError(f"{where}: expected {key!r} to be {names}, got {_short(value)}")
    return value


class OpenAICompletions:
    """A language model behind ``/v1/completions`` (greedy, ``temperature`` 0).

    Args:
        base_url: the API's URL as OpenAI clients take it, ``http(s)://HOST:PORT/v1``
            (``/v1`` is added when the path does not end with it; a longer path is kept
            as a prefix, a query string goes on every request).
        model: the model name sent in every request (the server's ``/v1/models`` lists them).
        options: timeouts, retries, TLS, response size limit (default :class:`HttpOptions`).
        api_key_env: an environment variable holding an API key, sent as
            ``Authorization: Bearer KEY`` (default None: no key; or use ``options.auth_env``
            for a header value with its scheme). The key is never shown.
        max_batch: most prompts per request (default None: all of them in one; 1 for a
            server that takes a single prompt). The chat endpoint always sends one.
        workers: requests in flight at once (default 1).
        extra_body: more fields for every request body (e.g. ``{"seed": 0}``; default none);
            they cannot replace the fields this class sets.

    Attributes:
        requests_sent: HTTP requests made, retries included.
        prompts_sent: prompts sent in them, retries included (the query cost).
    """

    path = "/completions"
    kind = "text_completion"

    def __init__(self, base_url: str, model: str, *, options: HttpOptions | None = None,
                 api_key_env: str | None = None, max_batch: int | None = None, workers: int = 1,
                 extra_body: Mapping[str, Any] | None = None) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigError(f"expected a model name, got {model!r}")
        if max_batch is not None and (not _is_int(max_batch) or max_batch < 1):
            raise ConfigError(f"expected max_batch >= 1 or None, got {max_batch!r}")
        if not _is_int(workers) or workers < 1:
            raise ConfigError(f"expected workers >= 1, got {workers!r}")
        options = options or HttpOptions()
        self._headers: dict[str, str] = {"Content-Type": "application/json"}
        if api_key_env is not None:
            if options.auth_env is not None:
                raise ConfigError("give either api_key_env or options.auth_env, got both")
            key = os.environ.get(api_key_env, "") if api_key_env else ""
            if not key.strip():
                raise ConfigError(f"expected environment variable {api_key_env or repr(api_key_env)} "
                                  "(named by api_key_env) to hold the API key, but it is unset or empty")
            remember(key.strip())
            remember(f"Bearer {key.strip()}")
            self._headers["Authorization"] = f"Bearer {key.strip()}"
        head, sep, query = base_url.partition("?") if isinstance(base_url, str) else (base_url, "", "")
        if not isinstance(head, str):
            raise ConfigError(f"expected a base URL string, got {type(base_url).__name__}")
        head = head.rstrip("/")
        if not head.endswith("/v1"):
            head += "/v1"
        self.client = HttpClient(head + sep + query, options)
        self.base_url = self.client.url("").split("?")[0]
        self.model = model
        self.max_batch = max_batch
        self.workers = workers
        extra = dict(extra_body or {})
        try:
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"expected extra_body to hold finite JSON values, got {_short(extra)} ({e})") from None
        if any(not isinstance(k, str) for k in extra):
            raise ConfigError(f"expected extra_body's keys to be strings, got {_short(list(extra))}")
        self.extra_body = extra
        self.requests_sent = 0
        self.prompts_sent = 0
        self._count_lock = threading.Lock()
        self.description = f"{type(self).__name__}({self.client.url(self.path)}, model={model!r})"

    # --- requests --------------------------------------------------------------------------

    def _check_request(self, prompts: Sequence[str], max_tokens: int, logprobs: int | None) -> list[str]:
        if isinstance(prompts, str | bytes):
            raise ConfigError("expected a sequence of prompts, got one string; wrap it in a list")
        out = list(prompts)
        bad = [p for p in out if not isinstance(p, str)]
        if bad:
            raise ConfigError(f"expected prompts as strings, got {type(bad[0]).__name__}")
        if not _is_int(max_tokens) or max_tokens < 1:
            raise ConfigError(f"expected max_tokens >= 1, got {max_tokens!r}")
        if logprobs is not None and (not _is_int(logprobs) or not 1 <= logprobs <= MAX_LOGPROBS):
            raise ConfigError(f"expected logprobs in [1, {MAX_LOGPROBS}] or None, got {logprobs!r}")
        return out

    def _groups(self, prompts: list[str]) -> list[list[str]]:
        size = self.max_batch or max(len(prompts), 1)
        return [prompts[i:i + size] for i in range(0, len(prompts), size)]

    def complete(self, prompts: Sequence[str], *, max_tokens: int,
                 logprobs: int | None = None) -> list[Completion]:
        """Greedy completions of ``prompts``, in their order.

        Args:
            prompts: the texts to continue (sent as they are, no template).
            max_tokens: tokens to generate per prompt; fewer only where the server says
                it stopped (``finish_reason`` ``"stop"``: an end-of-text token).
            logprobs: K, the alternatives wanted per generated token (default None: none).

        Returns:
            one :class:`Completion` per prompt.

        Raises:
            TargetError: the server failed, timed out, or answered anything malformed.
            ConfigError: bad arguments.
        """
        items = self._check_request(prompts, max_tokens, logprobs)
        groups = self._groups(items)
        if self.workers == 1 or len(groups) < 2:
            parts = [self._one(g, max_tokens, logprobs) for g in groups]
        else:
            with ThreadPoolExecutor(min(self.workers, len(groups))) as pool:
                parts = list(pool.map(lambda g: self._one(g, max_tokens, logprobs), groups))
        return [c for part in parts for c in part]

    def _body(self, prompts: list[str], max_tokens: int, logprobs: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {**self.extra_body, "model": self.model, "prompt": prompts,
                                "max_tokens": max_tokens, "temperature": 0, "n": 1, "stream": False}
        if logprobs is not None:
            body["logprobs"] = logprobs
        return body

    def _one(self, prompts: list[str], max_tokens: int, logprobs: int | None) -> list[Completion]:
        answer = self._post(self._body(prompts, max_tokens, logprobs), len(prompts))
        return self._decode(answer, len(prompts), max_tokens, logprobs)

    def _post(self, body: dict[str, Any], prompts: int) -> Any:
        """POST ``body``; the parsed JSON of a 2xx answer (counts every attempt)."""
        data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
        tries = 0

        def attempt() -> HttpResponse:
            nonlocal tries
            tries += 1
            return self.client._once("POST", self.path, data, self._headers)

        try:
            resp = with_retries(attempt, self.client.options)
        finally:
            with self._count_lock:  # requests may be in flight in several threads
                self.requests_sent += tries
                self.prompts_sent += tries * prompts
        where = f"POST {self.client.url(self.path)}"
        if not 200 <= resp.status < 300:
            raise TargetError(f"{where}: expected HTTP 200, server answered HTTP {resp.status}: "
                              f"{_error_text(resp)}")
        return parse_json(resp.body, where)

    def models(self) -> list[str]:
        """The model names the server lists (``GET /v1/models``)."""
        where = f"GET {self.client.url('/models')}"
        resp = self.client.request("GET", "/models", None, self._headers)
        if not 200 <= resp.status < 300:
            raise TargetError(f"{where}: expected HTTP 200, server answered HTTP {resp.status}: "
                              f"{_error_text(resp)}")
        data = _field(parse_json(resp.body, where), "data", list, where)
        return [str(_field(m, "id", str, f"{where} data[{i}]")) for i, m in enumerate(data)]

    # --- answers ---------------------------------------------------------------------------

    def _choices(self, answer: Any, count: int) -> list[dict[str, Any]]:
        """The answer's choices, one per prompt, put in ``index`` order."""
        where = self.description
        if isinstance(answer, dict) and "error" in answer:
            raise TargetError(f"{where}: server said: {_error_of(answer['error'])}")
        kind = answer.get("object") if isinstance(answer, dict) else None
        if kind is not None and kind != self.kind:
            raise TargetError(f"{where}: expected an answer of object {self.kind!r}, got {_short(kind)}")
        choices = _field(answer, "choices", list, where)
        if len(choices) != count:
            raise TargetError(f"{where}: expected {count} choice{'s' * (count != 1)} (one per prompt, "
                              f"n=1), got {len(choices)}")
        by_index: dict[int, dict[str, Any]] = {}
        for j, choice in enumerate(choices):
            at = f"{where} choices[{j}]"
            index = _field(choice, "index", int, at)
            if not 0 <= index < count:
                raise TargetError(f"{at}: expected an index in [0, {count - 1}], got {index}")
            if index in by_index:
                raise TargetError(f"{at}: expected each index once, got index {index} twice")
            by_index[index] = choice
        return [by_index[i] for i in range(count)]

    def _decode(self, answer: Any, count: int, max_tokens: int, logprobs: int | None) -> list[Completion]:
        out = []
        for i, choice in enumerate(self._choices(answer, count)):
            where = f"{self.description} choice {i}"
            text = _field(choice, "text", str, where)
            tokens: list[str] = []
            top: list[dict[str, float]] | None = None
            detail = choice.get("logprobs")
            if logprobs is not None or detail is not None:
                if not isinstance(detail, dict):
                    raise TargetError(f"{where}: expected 'logprobs' with tokens and top_logprobs "
                                      f"(logprobs={logprobs} was asked), got {_short(detail)}")
                tokens = _strings(_field(detail, "tokens", list, f"{where} logprobs"), f"{where} logprobs.tokens")
                chosen = detail.get("token_logprobs")
                if chosen is not None:
                    if not isinstance(chosen, list) or len(chosen) != len(tokens):
                        raise TargetError(f"{where}: expected one token_logprobs entry per token "
                                          f"({len(tokens)}), got {_short(chosen) if not isinstance(chosen, list) else len(chosen)}")
                    for j, v in enumerate(chosen):
                        _logprob(v, f"{where} logprobs.token_logprobs[{j}]")
                if logprobs is not None:
                    rows = _field(detail, "top_logprobs", list, f"{where} logprobs")
                    if len(rows) != len(tokens):
                        raise TargetError(f"{where}: expected one top_logprobs entry per token "
                                          f"({len(tokens)}), got {len(rows)}")
                    top = [_alternatives(r, logprobs, f"{where} token {j}") for j, r in enumerate(rows)]
            count_known = bool(tokens) or detail is not None
            n = len(tokens) if count_known else _usage_tokens(answer, count, where)
            _check_length(choice, n, max_tokens, where)
            out.append(Completion(text=text, tokens=tokens, top_logprobs=top))
        return out


class OpenAIChat(OpenAICompletions):
    """A language model behind ``/v1/chat/completions`` (greedy, ``temperature`` 0).

    Each prompt is one request with one user message,
    ``messages=[{"role": "user", "content": prompt}]``; the server applies its chat
    template. The arguments are those of :class:`OpenAICompletions` (``max_batch`` is
    ignored: the endpoint takes one conversation per request; use ``workers`` to send
    several at once).
    """

    path = "/chat/completions"
    kind = "chat.completion"

    def _groups(self, prompts: list[str]) -> list[list[str]]:
        return [[p] for p in prompts]

    def _body(self, prompts: list[str], max_tokens: int, logprobs: int | None) -> dict[str, Any]:
        (prompt,) = prompts
        body: dict[str, Any] = {**self.extra_body, "model": self.model,
                                "messages": [{"role": "user", "content": prompt}],
                                "max_tokens": max_tokens, "temperature": 0, "n": 1, "stream": False}
        if logprobs is not None:
            body.update(logprobs=True, top_logprobs=logprobs)
        return body

    def _decode(self, answer: Any, count: int, max_tokens: int, logprobs: int | None) -> list[Completion]:
        (choice,) = self._choices(answer, count)
        where = f"{self.description} choice 0"
        message = _field(choice, "message", dict, where)
        text = _field(message, "content", str, f"{where} message")
        tokens: list[str] = []
        top: list[dict[str, float]] | None = None
        detail = choice.get("logprobs")
        if logprobs is not None or detail is not None:
            if not isinstance(detail, dict):
                raise TargetError(f"{where}: expected 'logprobs' with content (top_logprobs={logprobs} "
                                  f"was asked), got {_short(detail)}")
            content = _field(detail, "content", list, f"{where} logprobs")
            rows = []
            for j, entry in enumerate(content):
                at = f"{where} logprobs.content[{j}]"
                tokens.append(_field(entry, "token", str, at))
                _logprob(_field(entry, "logprob", (int, float), at), f"{at} logprob")
                if logprobs is not None:
                    rows.append(_chat_alternatives(_field(entry, "top_logprobs", list, at), logprobs, at))
            top = rows if logprobs is not None else None
        n = len(tokens) if detail is not None else _usage_tokens(answer, 1, where)
        _check_length(choice, n, max_tokens, where)
        return [Completion(text=text, tokens=tokens, top_logprobs=top)]


def _strings(values: list[Any], where: str) -> list[str]:
    for j, v in enumerate(values):
        if not isinstance(v, str):
            raise TargetError(f"{where}[{j}]: expected a token string, got {_short(v)}")
    return list(values)


def _alternatives(row: Any, k: int, where: str) -> dict[str, float]:
    """One completions ``top_logprobs`` entry, ``{token: logprob}``: 1 to K+1 of them (a
    server may add the chosen token to the K best)."""
    if not isinstance(row, dict):
        raise TargetError(f"{where}: expected top_logprobs as an object {{token: logprob}}, got {_short(row)}")
    if not 1 <= len(row) <= k + 1:
        raise TargetError(f"{where}: expected {k} alternatives (logprobs={k}), got {len(row)}")
    return {str(t): _logprob(v, f"{where} logprob of {t!r:.40}") for t, v in row.items()}


def _chat_alternatives(rows: list[Any], k: int, where: str) -> dict[str, float]:
    """One chat ``top_logprobs`` list, ``[{"token", "logprob"}, ...]``, as ``{token: logprob}``.
    Two alternatives spelled alike (two byte pieces of one character both shown as U+FFFD)
    keep the larger log-probability."""
    if not 1 <= len(rows) <= k + 1:
        raise TargetError(f"{where}: expected {k} top_logprobs (top_logprobs={k}), got {len(rows)}")
    out: dict[str, float] = {}
    for j, r in enumerate(rows):
        at = f"{where} top_logprobs[{j}]"
        token = _field(r, "token", str, at)
        value = _logprob(_field(r, "logprob", (int, float), at), f"{at} logprob")
        out[token] = max(value, out.get(token, -math.inf))
    return out


def _usage_tokens(answer: Any, count: int, where: str) -> int | None:
    """Tokens generated, from ``usage.completion_tokens`` (only for a one-prompt answer)."""
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if count != 1 or not isinstance(usage, dict):
        return None
    n = usage.get("completion_tokens")
    if n is None:
        return None
    if not _is_int(n) or n < 0:
        raise TargetError(f"{where}: expected usage.completion_tokens to be a count, got {_short(n)}")
    return int(n)


def _check_length(choice: dict[str, Any], n: int | None, max_tokens: int, where: str) -> None:
    """Refuse more tokens than asked, and fewer unless the server says it stopped."""
    reason = choice.get("finish_reason")
    if reason is not None and not isinstance(reason, str):
        raise TargetError(f"{where}: expected finish_reason to be a string, got {_short(reason)}")
    if reason not in ("stop", "length"):
        raise TargetError(f"{where}: expected finish_reason 'stop' or 'length', got {_short(reason)}")
    if n is None:
        return
    if n > max_tokens:
        raise TargetError(f"{where}: expected at most {max_tokens} tokens (max_tokens), got {n}")
    if n < max_tokens and reason != "stop":
        raise TargetError(f"{where}: expected {max_tokens} tokens (max_tokens) or a finish_reason of "
                          f"'stop', got {n} with finish_reason {reason!r}")


def _error_of(error: Any) -> str:
    """An OpenAI error object's message (``{"message": ..., "type": ...}``) or the value."""
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return _snippet(error["message"])
    return _snippet(error if isinstance(error, str) else json.dumps(error)[:400])


def _error_text(resp: HttpResponse) -> str:
    try:
        obj = json.loads(resp.body)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        for key in ("error", "detail", "message"):
            if key in obj:
                return _error_of(obj[key])
    return _snippet(resp.body) or "(empty body)"

