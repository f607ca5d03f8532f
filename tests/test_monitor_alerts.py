"""Webhook delivery on the project's HTTP client: one deadline per attempt, secrets never stored."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from test_monitor_store import row
from testkit.servers.raw_http import read_request
from veriprint.monitor.alerts import Dispatcher
from veriprint.monitor.config import parse_config
from veriprint.monitor.db import Store


class RawHook:
    """A webhook on 127.0.0.1 that answers each POST by ``behaviour``: 'ok', 'trickle', 'hang', '500'."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.requests.append(read_request(conn))
                try:
                    if self.behaviour == "ok":
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    elif self.behaviour == "500":
                        conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
                    elif self.behaviour == "trickle":
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                        for _ in range(100):  # one byte every 0.2 s: each read succeeds, the whole takes 20 s
                            if self.stop.wait(0.2):
                                break
                            conn.sendall(b"x")
                    else:
                        self.stop.wait(30)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def _setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: RawHook, *, secret: bool) -> tuple[Store, Any]:
    (tmp_path / "fp.vpf").write_bytes(b"x")
    url = f"http://127.0.0.1:{hook.port}/services/T000/B000/sekrit-token-123"
    sink: dict[str, Any] = {"name": "hook", "timeout": "1s", "attempts": 3, "backoff": "0s"}
    if secret:
        monkeypatch.setenv("HOOK_URL", url)
        sink["url_env"] = "HOOK_URL"
    else:
        sink["url"] = url
    cfg = parse_config({"endpoints": [{"name": "e", "target": "http://127.0.0.1:1/v2/models/m",
                                       "fingerprint": "fp.vpf"}], "alerts": [sink]}, base=tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    a = store.begin("e", 1000, "f" * 64, 0, 0, [0, 1], 4)
    assert a is not None
    done = store.complete(a, row(1000, "TAMPERED"), sinks=("hook",), inconclusive_after=3,
                          payload={"kind": "tampered", "endpoint": "e"})
    assert done is not None and done.alerts == ("tampered",)
    return store, cfg


def test_a_delivered_alert_is_one_json_post(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = RawHook("ok")
    try:
        store, cfg = _setup(tmp_path, monkeypatch, hook, secret=False)
        assert Dispatcher(store, cfg).deliver_due() == 1
        (alert,) = store.alerts()
        assert alert.status == "delivered", alert.last_error
        line, headers, body = hook.requests[0]
        assert line.startswith("POST /services/T000/B000/sekrit-token-123 ")
        assert headers["content-type"] == "application/json" and b'"kind":"tampered"' in body
    finally:
        hook.close()


@pytest.mark.parametrize("behaviour", ["trickle", "hang"])
def test_a_webhook_that_trickles_or_hangs_is_cut_at_the_sinks_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, behaviour: str) -> None:
    hook = RawHook(behaviour)
    try:
        store, cfg = _setup(tmp_path, monkeypatch, hook, secret=True)
        t0 = time.monotonic()
        Dispatcher(store, cfg).deliver_due()
        took = time.monotonic() - t0
        # a per-read timeout would wait the whole 20 s trickle (or 30 s hang); one deadline ends it near 1 s
        assert took < 10, f"delivery took {took:.1f} s against a 1 s timeout"
        (alert,) = store.alerts()
        assert alert.status == "pending" and alert.attempts == 1
        assert "timeout" in alert.last_error, alert.last_error
        (attempt,) = store.alert_attempts(alert.id)
        for text in (alert.last_error, attempt.error):
            assert "sekrit" not in text and "T000" not in text, text
    finally:
        hook.close()


def test_a_failing_webhook_is_retried_by_the_outbox_not_the_client(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    hook = RawHook("500")
    try:
        store, cfg = _setup(tmp_path, monkeypatch, hook, secret=True)
        d = Dispatcher(store, cfg)
        for _ in range(3):
            d.deliver_due()
        (alert,) = store.alerts()
        assert len(hook.requests) == 3, "one attempt is one request"
        assert alert.status == "failed" and alert.last_error == "HTTP 500"
        assert [a.status_code for a in store.alert_attempts(alert.id)] == [500, 500, 500]
    finally:
        hook.close()
