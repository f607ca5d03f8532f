"""An OpenAI-compatible server on 127.0.0.1, in this process, answering from a local language model.

``/v1/models`` lists one name; ``/v1/completions`` and ``/v1/chat/completions`` answer greedily
with :class:`veriprint.lm.target.LocalCompletions` (the chat endpoint through the tokenizer's
chat template), in the OpenAI formats that ``veriprint.targets.openai`` reads. ``pad`` adds
that many bytes to every answer (an oversized answer); ``token`` requires ``Authorization:
Bearer TOKEN``. Every request is recorded as ``(path, body)``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from veriprint.lm.target import LocalCompletions


class FakeOpenAI:
    def __init__(self, lm: Any, name: str = "tiny", *, pad: int = 0, token: str | None = None) -> None:
        self.name = name
        self.pad = pad
        self.token = token
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        plain, chat = LocalCompletions(lm), LocalCompletions(lm, chat=True)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not self._authorized():
                    return
                if self.path.rstrip("/") != "/v1/models":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                self._send(200, {"object": "list", "data": [{"id": fake.name, "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with fake.lock:
                    fake.requests.append((self.path, body))
                if not self._authorized():
                    return
                if body.get("model") != fake.name:
                    self._send(404, {"error": {"message": f"the model {body.get('model')!r} does not exist"}})
                elif self.path == "/v1/completions":
                    self._send(200, completions(plain, body))
                elif self.path == "/v1/chat/completions":
                    self._send(200, chat_completion(chat, body))
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def _authorized(self) -> bool:
                if fake.token is None or self.headers.get("Authorization") == f"Bearer {fake.token}":
                    return True
                self._send(401, {"error": {"message": "invalid API key"}})
                return False

            def _send(self, status: int, obj: dict[str, Any]) -> None:
                if fake.pad:
                    obj = {**obj, "padding": "x" * fake.pad}
                data = json.dumps(obj).encode()
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
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def paths(self) -> list[str]:
        with self.lock:
            return [p for p, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _finish(tokens: list[str], max_tokens: int) -> str:
    return "length" if len(tokens) >= max_tokens else "stop"


def completions(local: LocalCompletions, body: dict[str, Any]) -> dict[str, Any]:
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    k, n = body.get("logprobs"), body["max_tokens"]
    choices = []
    for i, c in enumerate(local.complete(prompts, max_tokens=n, logprobs=k)):
        choice: dict[str, Any] = {"index": i, "text": c.text, "finish_reason": _finish(c.tokens, n)}
        if k is not None:
            choice["logprobs"] = {"tokens": c.tokens, "top_logprobs": c.top_logprobs}
        choices.append(choice)
    return {"object": "text_completion", "model": body["model"], "choices": choices}


def chat_completion(local: LocalCompletions, body: dict[str, Any]) -> dict[str, Any]:
    (msg,) = body["messages"]
    k, n = body.get("top_logprobs"), body["max_tokens"]
    (c,) = local.complete([msg["content"]], max_tokens=n, logprobs=k if body.get("logprobs") else None)
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": c.text},
                              "finish_reason": _finish(c.tokens, n)}
    if body.get("logprobs"):
        assert c.top_logprobs is not None
        choice["logprobs"] = {"content": [
            {"token": t, "logprob": max(top.values()) if t not in top else top[t],
             "top_logprobs": [{"token": a, "logprob": v} for a, v in top.items()]}
            for t, top in zip(c.tokens, c.top_logprobs, strict=True)]}
    return {"object": "chat.completion", "model": body["model"], "choices": [choice],
            "usage": {"completion_tokens": len(c.tokens)}}
