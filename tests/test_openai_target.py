"""The OpenAI-compatible targets against small fake servers run in this process on 127.0.0.1.

A fake server answers ``/v1/completions`` and ``/v1/chat/completions`` with a fixed "model"
(each prompt's continuation is its words reversed, one word a token) and can be told to
misbehave; every misbehaviour must raise TargetError naming what was expected and what came,
in bounded time, with no secret in the message.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import pytest

from testkit.servers.raw_http import read_request
from veriprint import redact
from veriprint.errors import ConfigError, VeriprintError
from veriprint.targets import TargetError
from veriprint.targets.http import HttpOptions
from veriprint.targets.openai import Completion, OpenAIChat, OpenAICompletions

SECRET = "sk-test-s3cr3t-Key-never-shown"
Reply = tuple[int, bytes]


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    yield
    redact.forget_all()


def continuation(prompt: str, n: int) -> list[str]:
    """The fake model's greedy tokens: the prompt's words, reversed, cycled to ``n``."""
    words = prompt.split()[::-1] or ["x"]
    return [" " + words[i % len(words)] for i in range(n)]


def alternatives(token: str, k: int) -> dict[str, float]:
    return {token: -0.1, **{f"{token}#{i}": -1.0 - i for i in range(1, k)}}


def completions_answer(body: dict[str, Any]) -> dict[str, Any]:
    k, n = body.get("logprobs"), body["max_tokens"]
    choices = []
    for i, p in enumerate(body["prompt"]):
        toks = continuation(p, n)
        choice: dict[str, Any] = {"index": i, "text": "".join(toks), "finish_reason": "length"}
        if k is not None:
            choice["logprobs"] = {"tokens": toks, "token_logprobs": [-0.1] * n,
                                  "top_logprobs": [alternatives(t, k) for t in toks]}
        choices.append(choice)
    return {"object": "text_completion", "model": body["model"], "choices": choices[::-1],
            "usage": {"completion_tokens": n * len(choices)}}


def chat_answer(body: dict[str, Any]) -> dict[str, Any]:
    (msg,) = body["messages"]
    n, k = body["max_tokens"], body.get("top_logprobs")
    toks = continuation(msg["content"], n)
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": "".join(toks)},
                              "finish_reason": "length"}
    if body.get("logprobs"):
        choice["logprobs"] = {"content": [
            {"token": t, "logprob": -0.1, "top_logprobs": [{"token": a, "logprob": v}
                                                          for a, v in alternatives(t, k).items()]}
            for t in toks]}
    return {"object": "chat.completion", "model": body["model"], "choices": [choice],
            "usage": {"completion_tokens": n}}


class Fake:
    """A fake server: ``mutate(answer, body)`` may change or replace each answer."""

    def __init__(self, mutate: Callable[[dict[str, Any], dict[str, Any]], Any] | None = None) -> None:
        self.mutate = mutate
        self.seen: list[tuple[str, dict[str, str], Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, None))
                self._send(200, json.dumps({"object": "list", "data": [{"id": "tiny"}]}).encode())

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw)
                fake.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                answer = (chat_answer if self.path.split("?")[0].endswith("/chat/completions")
                          else completions_answer)(body)
                out = fake.mutate(answer, body) if fake.mutate else answer
                if isinstance(out, tuple):
                    self._send(*out)
                else:
                    self._send(200, out if isinstance(out, bytes) else json.dumps(out).encode())

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def fake() -> Iterator[Callable[..., Fake]]:
    running: list[Fake] = []

    def start(mutate: Callable[[dict[str, Any], dict[str, Any]], Any] | None = None) -> Fake:
        running.append(Fake(mutate))
        return running[-1]

    yield start
    for f in running:
        f.server.shutdown()
        f.server.server_close()


FAST = HttpOptions(timeout=5, retries=0)
PROMPTS = ["one two three", "four five", "six", "seven eight nine ten", "eleven"]


# --- answers as they should be --------------------------------------------------------------

def test_completions_send_greedy_requests_and_put_choices_in_index_order(fake: Any) -> None:
    f = fake()
    target = OpenAICompletions(f.url, "tiny", options=FAST)
    out = target.complete(PROMPTS, max_tokens=3, logprobs=2)
    assert [c.tokens for c in out] == [continuation(p, 3) for p in PROMPTS]
    assert out[0] == Completion(text=" three two one", tokens=[" three", " two", " one"],
                                top_logprobs=[alternatives(t, 2) for t in (" three", " two", " one")])
    ((path, headers, body),) = f.seen
    assert path == "/v1/completions" and headers["content-type"] == "application/json"
    assert body == {"model": "tiny", "prompt": PROMPTS, "max_tokens": 3, "temperature": 0, "n": 1,
                    "stream": False, "logprobs": 2}
    assert "authorization" not in headers
    assert (target.requests_sent, target.prompts_sent) == (1, 5)


def test_without_logprobs_texts_come_and_nothing_else(fake: Any) -> None:
    f = fake()
    out = OpenAICompletions(f.url + "/v1/", "tiny", options=FAST).complete(["a b"], max_tokens=2)
    assert out == [Completion(text=" b a", tokens=[], top_logprobs=None)]
    assert "logprobs" not in f.seen[0][2]


@pytest.mark.parametrize("max_batch,workers", [(1, 1), (2, 1), (2, 3), (None, 4)])
def test_max_batch_splits_requests_and_workers_keep_the_order(fake: Any, max_batch: int | None,
                                                              workers: int) -> None:
    f = fake()
    target = OpenAICompletions(f.url, "tiny", options=FAST, max_batch=max_batch, workers=workers)
    out = target.complete(PROMPTS, max_tokens=2, logprobs=1)
    assert [c.tokens for c in out] == [continuation(p, 2) for p in PROMPTS]
    size = max_batch or len(PROMPTS)
    assert sorted(len(b["prompt"]) for _, _, b in f.seen) == sorted(
        len(PROMPTS[i:i + size]) for i in range(0, len(PROMPTS), size))
    assert target.prompts_sent == len(PROMPTS)


def test_chat_sends_one_user_message_per_request_in_the_chat_format(fake: Any) -> None:
    f = fake()
    target = OpenAIChat(f.url, "tiny", options=FAST, workers=2)
    out = target.complete(PROMPTS[:3], max_tokens=2, logprobs=3)
    assert [c.text for c in out] == ["".join(continuation(p, 2)) for p in PROMPTS[:3]]
    assert out[2].top_logprobs == [alternatives(" six", 3)] * 2
    bodies = sorted((b for _, _, b in f.seen), key=lambda b: b["messages"][0]["content"])
    assert [b["messages"] for b in bodies] == [[{"role": "user", "content": p}] for p in sorted(PROMPTS[:3])]
    assert all(b["logprobs"] is True and b["top_logprobs"] == 3 and b["temperature"] == 0 for b in bodies)
    assert {p for p, _, _ in f.seen} == {"/v1/chat/completions"}


def test_fewer_tokens_are_taken_when_the_server_says_it_stopped(fake: Any) -> None:
    def stop_early(a: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        for c in a["choices"]:
            c["finish_reason"] = "stop"
            for key in ("tokens", "token_logprobs", "top_logprobs"):
                c["logprobs"][key] = c["logprobs"][key][:1]
        return a
    out = OpenAICompletions(fake(stop_early).url, "tiny", options=FAST).complete(["a b"], max_tokens=3,
                                                                                logprobs=1)
    assert out[0].tokens == [" b"]


def test_base_url_prefix_and_query_string_are_kept_and_models_listed(fake: Any) -> None:
    f = fake()
    target = OpenAICompletions(f.url + "/proxy/v1?team=a", "tiny", options=FAST)
    target.complete(["a"], max_tokens=1)
    assert f.seen[-1][0] == "/proxy/v1/completions?team=a"
    assert target.models() == ["tiny"]
    assert f.seen[-1][0] == "/proxy/v1/models?team=a"


def test_the_api_key_is_sent_as_a_bearer_token_and_never_shown(fake: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("VP_OPENAI_KEY", SECRET)
    f = fake(lambda a, b: (401, json.dumps({"error": {"message": f"bad key Bearer {SECRET} ({SECRET})",
                                                      "type": "invalid_request_error"}}).encode()))
    target = OpenAICompletions(f.url, "tiny", options=FAST, api_key_env="VP_OPENAI_KEY")
    with pytest.raises(TargetError, match="HTTP 401") as e:
        target.complete(["a"], max_tokens=1)
    assert f.seen[0][1]["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(e.value) and "bad key" in str(e.value)
    assert SECRET not in redact.redact(repr(target.__dict__))
    monkeypatch.delenv("VP_OPENAI_KEY")
    with pytest.raises(ConfigError, match="VP_OPENAI_KEY"):
        OpenAICompletions(f.url, "tiny", api_key_env="VP_OPENAI_KEY")


# --- malformed answers ----------------------------------------------------------------------

def _edit(fn: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any], dict[str, Any]], Any]:
    def mutate(a: dict[str, Any], body: dict[str, Any]) -> Any:
        fn(a)  # edits in place
        return a
    return mutate


def _first(a: dict[str, Any]) -> dict[str, Any]:
    return min(a["choices"], key=lambda c: c["index"])  # type: ignore[no-any-return]


class Fault(NamedTuple):
    name: str
    mutate: Callable[[dict[str, Any], dict[str, Any]], Any]
    expect: str
    chat: bool = False

    def __repr__(self) -> str:
        return self.name


FAULTS = [
    Fault("no choices", _edit(lambda a: a.pop("choices")), "expected a 'choices' field"),
    Fault("choices not a list", _edit(lambda a: a.update(choices={"0": 1})), "expected 'choices' to be list"),
    Fault("a choice too few", _edit(lambda a: a["choices"].pop()), "expected 2 choices .*got 1"),
    Fault("a choice too many", _edit(lambda a: a["choices"].append(dict(a["choices"][0]))),
          "expected 2 choices .*got 3"),
    Fault("index twice", _edit(lambda a: [c.update(index=0) for c in a["choices"]]), "index 0 twice"),
    Fault("index out of range", _edit(lambda a: a["choices"][0].update(index=7)), r"index in \[0, 1\], got 7"),
    Fault("index a boolean", _edit(lambda a: a["choices"][0].update(index=True)), "'index' to be int"),
    Fault("index missing", _edit(lambda a: a["choices"][0].pop("index")), "expected a 'index' field"),
    Fault("text not a string", _edit(lambda a: _first(a).update(text=None)), "'text' to be str"),
    Fault("NaN logprob", lambda a, b: json.dumps(a).replace('": -0.1', '": NaN', 1).encode(),
          "finite log-probability .*nan"),
    Fault("infinite logprob", lambda a, b: json.dumps(a).replace('": -0.1', '": -Infinity', 1).encode(),
          "finite log-probability .*inf"),
    Fault("positive logprob", _edit(lambda a: _first(a)["logprobs"]["top_logprobs"][0].update({" x": 0.5})),
          "at most 0, got 0.5"),
    Fault("logprob a string", _edit(lambda a: _first(a)["logprobs"]["top_logprobs"][1].update({" y": "-1"})),
          "log-probability \\(a number\\)"),
    Fault("logprob a boolean", _edit(lambda a: _first(a)["logprobs"]["top_logprobs"][1].update({" y": False})),
          "log-probability \\(a number\\)"),
    Fault("too many alternatives", _edit(lambda a: _first(a)["logprobs"]["top_logprobs"][0].update(
        {f"z{i}": -5.0 for i in range(5)})), "expected 2 alternatives"),
    Fault("no alternatives", _edit(lambda a: _first(a)["logprobs"]["top_logprobs"].__setitem__(0, {})),
          "expected 2 alternatives .*got 0"),
    Fault("alternatives not an object", _edit(lambda a: _first(a)["logprobs"]["top_logprobs"].__setitem__(
        0, [1, 2])), "object \\{token: logprob\\}"),
    Fault("logprobs missing", _edit(lambda a: _first(a).pop("logprobs")), "expected 'logprobs' with tokens"),
    Fault("tokens not strings", _edit(lambda a: _first(a)["logprobs"]["tokens"].__setitem__(0, 5)),
          "expected a token string, got 5"),
    Fault("top_logprobs shorter than tokens", _edit(lambda a: _first(a)["logprobs"]["top_logprobs"].pop()),
          "one top_logprobs entry per token \\(3\\), got 2"),
    Fault("more tokens than asked", _edit(lambda a: [_first(a)["logprobs"][k].append(_first(a)["logprobs"][k][0])
                                                     for k in ("tokens", "token_logprobs", "top_logprobs")]),
          "at most 3 tokens \\(max_tokens\\), got 4"),
    Fault("fewer tokens, length", _edit(lambda a: [_first(a)["logprobs"][k].pop()
                                                      for k in ("tokens", "token_logprobs", "top_logprobs")]),
          "expected 3 tokens \\(max_tokens\\) or a finish_reason of 'stop', got 2"),
    Fault("no finish_reason", _edit(lambda a: _first(a).pop("finish_reason")), "finish_reason 'stop' or 'length', got None"),
    Fault("odd finish_reason", _edit(lambda a: _first(a).update(finish_reason="content_filter")),
          "finish_reason 'stop' or 'length', got 'content_filter'"),
    Fault("another object", _edit(lambda a: a.update(object="chat.completion")),
          "object 'text_completion', got 'chat.completion'"),
    Fault("an error object", lambda a, b: {"error": {"message": "model overloaded"}}, "server said: model overloaded"),
    Fault("HTTP 400", lambda a, b: (400, b'{"error": {"message": "max_tokens is too large", "code": 400}}'),
          "expected HTTP 200, server answered HTTP 400: max_tokens is too large"),
    Fault("HTTP 404 page", lambda a, b: (404, b"<html>not here</html>"), "HTTP 404: <html>not here</html>"),
    Fault("not JSON", lambda a, b: b"choices: none", "expected a JSON body, got 'choices: none'"),
    Fault("a key twice", lambda a, b: b'{"choices": [], "choices": []}', "name each key once"),
    Fault("a list, not an object", lambda a, b: b"[1, 2]", "expected a JSON object, got list"),
    Fault("chat: two choices", _edit(lambda a: a["choices"].append(dict(a["choices"][0], index=1))),
          "expected 1 choice .*got 2", chat=True),
    Fault("chat: content null", _edit(lambda a: a["choices"][0]["message"].update(content=None)),
          "'content' to be str", chat=True),
    Fault("chat: no message", _edit(lambda a: a["choices"][0].pop("message")), "a 'message' field", chat=True),
    Fault("chat: content not a list", _edit(lambda a: a["choices"][0]["logprobs"].update(content="x")),
          "'content' to be list", chat=True),
    Fault("chat: alternative without logprob", _edit(
        lambda a: a["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0].pop("logprob")),
        "top_logprobs\\[0\\]: expected a 'logprob' field", chat=True),
    Fault("chat: NaN chosen logprob", lambda a, b: json.dumps(a).replace('"logprob": -0.1', '"logprob": NaN', 1).encode(),
          "finite log-probability", chat=True),
    Fault("chat: too many tokens", _edit(lambda a: a["choices"][0]["logprobs"]["content"].append(
        a["choices"][0]["logprobs"]["content"][0])), "at most 3 tokens", chat=True),
    Fault("token_logprobs too short", _edit(lambda a: _first(a)["logprobs"]["token_logprobs"].pop()),
          "one token_logprobs entry per token \\(3\\), got 2"),
    Fault("token_logprobs NaN", lambda a, b: json.dumps(a).replace("[-0.1", "[NaN", 1).encode(),
          "token_logprobs\\[0\\]: expected a finite log-probability"),
]


@pytest.mark.parametrize("fault", FAULTS, ids=repr)
def test_malformed_answers_raise_target_error_naming_expected_and_received(fake: Any, fault: Fault) -> None:
    f = fake(fault.mutate)
    cls = OpenAIChat if fault.chat else OpenAICompletions
    with pytest.raises(TargetError, match=fault.expect) as e:
        cls(f.url, "tiny", options=FAST).complete(["a b", "c d e"][: 1 if fault.chat else 2], max_tokens=3,
                                                   logprobs=2)
    assert "Traceback" not in str(e.value) and len(str(e.value)) < 600


def test_token_count_without_logprobs_comes_from_usage(fake: Any) -> None:
    f = fake(_edit(lambda a: a.update(usage={"completion_tokens": 4})))
    with pytest.raises(TargetError, match="at most 3 tokens \\(max_tokens\\), got 4"):
        OpenAICompletions(f.url, "tiny", options=FAST).complete(["a"], max_tokens=3)
    f = fake(_edit(lambda a: a.update(usage={"completion_tokens": 4})))
    with pytest.raises(TargetError, match="at most 3 tokens"):
        OpenAIChat(f.url, "tiny", options=FAST).complete(["a"], max_tokens=3)


def test_chat_alternatives_spelled_alike_keep_the_larger_logprob(fake: Any) -> None:
    def twin(a: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        a["choices"][0]["logprobs"]["content"][0]["top_logprobs"] = [
            {"token": "\ufffd", "logprob": -0.5}, {"token": "\ufffd", "logprob": -0.7}]
        return a
    out = OpenAIChat(fake(twin).url, "tiny", options=FAST).complete(["a"], max_tokens=1, logprobs=2)
    assert out[0].top_logprobs == [{"\ufffd": -0.5}]


# --- misbehaving transports ------------------------------------------------------------------

def _raw(script: Callable[[socket.socket], None]) -> tuple[str, threading.Event]:
    """A one-connection-at-a-time TCP server on 127.0.0.1 that stops within 20 s by itself."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    sock.settimeout(0.05)
    stop = threading.Event()
    deadline = time.monotonic() + 20

    def loop() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                try:
                    read_request(conn)
                    script(conn)
                except OSError:
                    pass
        sock.close()
    threading.Thread(target=loop, daemon=True).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def test_a_trickling_answer_is_cut_at_the_timeout() -> None:
    def trickle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n")
        for _ in range(5000):
            conn.sendall(b" ")
            time.sleep(0.05)
    url, stop = _raw(trickle)
    t0 = time.monotonic()
    with pytest.raises(TargetError, match="no complete answer within the 1 s timeout"):
        OpenAICompletions(url, "tiny", options=HttpOptions(timeout=1, retries=0)).complete(["a"], max_tokens=1)
    assert time.monotonic() - t0 < 5
    stop.set()


def test_an_oversized_answer_is_refused() -> None:
    big = json.dumps({"choices": [{"index": 0, "text": "x" * 100_000, "finish_reason": "length"}]}).encode()

    def send(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + f"{len(big):x}\r\n".encode() + big + b"\r\n0\r\n\r\n")
    url, stop = _raw(send)
    with pytest.raises(TargetError, match="at most 10000 bytes, the server sent more"):
        OpenAICompletions(url, "tiny", options=HttpOptions(timeout=5, retries=0, max_response_bytes=10_000)
                          ).complete(["a"], max_tokens=1)
    stop.set()


def test_a_refused_connection_is_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TargetError, match="connection failed"):
        OpenAICompletions(f"http://127.0.0.1:{port}", "tiny", options=HttpOptions(timeout=2, retries=0)
                          ).complete(["a"], max_tokens=1)


# --- bad arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize("make,call,expect", [
    (lambda: OpenAICompletions("http://127.0.0.1:9", ""), None, "expected a model name"),
    (lambda: OpenAICompletions("ftp://127.0.0.1:9", "m"), None, "http:// or https://"),
    (lambda: OpenAICompletions("http://u:p@127.0.0.1:9", "m"), None, "without credentials"),
    (lambda: OpenAICompletions("http://127.0.0.1:9", "m", max_batch=0), None, "max_batch >= 1"),
    (lambda: OpenAICompletions("http://127.0.0.1:9", "m", workers=0), None, "workers >= 1"),
    (lambda: OpenAICompletions("http://127.0.0.1:9", "m", extra_body={"seed": math.nan}), None, "finite JSON"),
    (lambda: OpenAICompletions("http://127.0.0.1:9", "m", extra_body={"f": object()}), None, "finite JSON"),
    (lambda: OpenAICompletions("http://127.0.0.1:9", "m"), dict(prompts="abc", max_tokens=1), "one string"),
    (lambda: OpenAICompletions("http://127.0.0.1:9", "m"), dict(prompts=[b"a"], max_tokens=1), "as strings"),
    (lambda: OpenAICompletions("http://127.0.0.1:9", "m"), dict(prompts=["a"], max_tokens=0), "max_tokens >= 1"),
    (lambda: OpenAICompletions("http://127.0.0.1:9", "m"), dict(prompts=["a"], max_tokens=True), "max_tokens >= 1"),
    (lambda: OpenAICompletions("http://127.0.0.1:9", "m"), dict(prompts=["a"], max_tokens=1, logprobs=0),
     r"logprobs in \[1, 20\]"),
    (lambda: OpenAIChat("http://127.0.0.1:9", "m"), dict(prompts=["a"], max_tokens=1, logprobs=21),
     r"logprobs in \[1, 20\]"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_arguments_are_refused_before_any_request(make: Any, call: Any, expect: str) -> None:
    with pytest.raises(VeriprintError, match=expect):
        target = make()
        target.complete(**call)


def test_extra_body_goes_in_every_request_but_replaces_nothing(fake: Any) -> None:
    f = fake()
    OpenAICompletions(f.url, "tiny", options=FAST, extra_body={"seed": 0, "temperature": 1.0, "model": "x"}
                      ).complete(["a"], max_tokens=1)
    body = f.seen[0][2]
    assert (body["seed"], body["temperature"], body["model"]) == (0, 0, "tiny")


def test_no_prompts_send_no_request(fake: Any) -> None:
    f = fake()
    assert OpenAICompletions(f.url, "tiny").complete([], max_tokens=1) == []
    assert f.seen == []


def test_the_server_fixture_names_a_head_size_vllm_cannot_serve(tmp_path: Any) -> None:
    from testkit.servers.openai_server import head_size_problem

    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 96, "num_attention_heads": 4}))
    assert "got 24 (96 wide, 4 heads)" in head_size_problem(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"n_embd": 128, "n_head": 2}))
    assert head_size_problem(tmp_path) == ""
