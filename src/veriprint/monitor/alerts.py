"""Alert delivery: webhooks (generic JSON or Slack-compatible), retried, every attempt recorded.

Alerts are queued in the database in the same transaction as the check that raised them
(an outbox), one row per sink, under a de-duplication key: ``ENDPOINT/tampered/SLOT`` when
an endpoint turns TAMPERED (not again while it stays so), ``ENDPOINT/inconclusive/SLOT``
when the N-th INCONCLUSIVE check in a row is stored (SLOT: the first of the streak), and
``ENDPOINT/resolved/SLOT`` when an endpoint with an open alert is INTACT again. A
:class:`Dispatcher` sends what is due, with exponential backoff between attempts, and
gives up after the sink's ``attempts``. Delivery is at least once: a receiver may see an
alert twice if the monitor dies between sending and recording, so each carries its
``dedup_key``.

The JSON body is the alert itself (``kind``, ``endpoint``, ``verdict``, ``reason``,
``check_id``, ``dedup_key``, ...); the Slack body is ``{"text": ...}``. Webhook URLs and
auth header values come from environment variables and are never logged or stored.

Webhooks go through the same HTTP client as every target (:class:`veriprint.targets.http.
HttpClient`): one timeout for the whole request, answer included, so a receiver that
trickles bytes cannot hold delivery past the sink's ``timeout``; no redirects, no proxy
from the environment, a bounded answer. Retries are the outbox's (``attempts``,
``backoff``), never the client's, so one attempt is one request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from veriprint.errors import VeriprintError
from veriprint.monitor.config import AlertSink, MonitorConfig
from veriprint.monitor.db import Alert, Store
from veriprint.redact import MASK, redact
from veriprint.targets.http import HttpClient
from veriprint.targets.transport import HttpOptions

__all__ = ["Dispatcher", "format_body"]

#: The most of a webhook's answer that is read (its status is all that counts).
_MAX_ANSWER = 1 << 20

log = logging.getLogger(__name__)

_TITLES = {"tampered": "TAMPERED", "inconclusive": "cannot be checked", "resolved": "INTACT again"}


def format_body(sink: AlertSink, payload: dict[str, Any], public_url: str = "") -> dict[str, Any]:
    """The request body for one sink."""
    base = public_url.rstrip("/")
    link = f"{base}/checks/{payload.get('check_id')}" if base else ""
    if sink.format == "json":
        return {**payload, "check_url": link}
    kind = payload.get("kind", "")
    head = f"veriprint: {payload.get('endpoint')} is {_TITLES.get(kind, kind)}"
    lines = [f"*{head}*", f"verdict {payload.get('verdict')}: {payload.get('reason')}",
             f"target {payload.get('target')}, spec {payload.get('spec')}, fingerprint "
             f"{str(payload.get('fingerprint_sha256', ''))[:12]} ({payload.get('signature')})"]
    if kind == "inconclusive":
        lines.append(f"{payload.get('consecutive_inconclusive')} INCONCLUSIVE checks in a row")
    if link:
        lines.append(f"<{link}|check {payload.get('check_id')}>")
    return {"text": "\n".join(lines)}


def _shown_error(message: str, url: str, *, secret_url: bool) -> str:
    """A delivery error as it is logged and stored: a URL read from the environment may be
    the secret itself (Slack's path is its token), so only its scheme and host are shown."""
    if secret_url:
        parts = urlsplit(url)
        message = message.replace(url, f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/{MASK}")
    return redact(message)


class Dispatcher:
    """Sends due alerts from the outbox.

    Args:
        store: the database.
        config: sinks and the dashboard's public address.
        on_attempt: called with ``(sink, ok)`` after each attempt (metrics).
    """

    def __init__(self, store: Store, config: MonitorConfig, on_attempt: Any = None) -> None:
        self.store = store
        self.config = config
        self.sinks = {s.name: s for s in config.alerts}
        self.on_attempt = on_attempt
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        self._wake.set()

    def deliver_due(self) -> int:
        """Attempt every due alert once; how many were attempted.

        Once :meth:`stop` was called no further attempt starts: what is left stays queued in
        the database, and the next start (or ``--once`` run) delivers it.
        """
        n = 0
        for alert in self.store.due_alerts(time.time()):
            if self._stop.is_set():
                break
            sink = self.sinks.get(alert.sink)
            if sink is None:
                self.store.record_delivery(alert.id, ok=False, status_code=None, seconds=0.0,
                                           error=f"no sink named {alert.sink!r} in the configuration",
                                           max_attempts=1, backoff=0)
                continue
            self._attempt(alert, sink)
            n += 1
        return n

    def _attempt(self, alert: Alert, sink: AlertSink) -> None:
        url = sink.resolve_url()
        headers = {"User-Agent": "veriprint-monitor"}
        body = format_body(sink, alert.payload, self.config.public_url)
        t0 = time.perf_counter()
        ok, code, error = False, None, ""
        if not url:
            error = f"environment variable {sink.url_env} is unset or empty"
        else:
            try:
                client = HttpClient(url, HttpOptions(timeout=sink.timeout, retries=0, auth_env=sink.auth_env,
                                                     max_response_bytes=_MAX_ANSWER))
                payload = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
                r = client.request("POST", "" if client.prefix else "/", payload,
                                   {**headers, "Content-Type": "application/json"})
                code = r.status
                ok = 200 <= code < 300
                if not ok:
                    error = f"HTTP {code}"
            except (VeriprintError, ValueError) as e:
                error = _shown_error(str(e), url, secret_url=bool(sink.url_env))
        seconds = time.perf_counter() - t0
        status = self.store.record_delivery(alert.id, ok=ok, status_code=code, error=error, seconds=seconds,
                                            max_attempts=sink.attempts, backoff=sink.backoff)
        if self.on_attempt is not None:
            self.on_attempt(sink.name, ok)
        if ok:
            log.info("alert %s (%s) delivered to %s", alert.dedup_key, alert.kind, sink.name)
        elif status == "failed":
            log.error("alert %s to %s given up after %d attempts: %s", alert.dedup_key, sink.name,
                      alert.attempts + 1, error)
        else:
            log.warning("alert %s to %s failed (%s); will retry", alert.dedup_key, sink.name, error)

    def drain(self, timeout: float) -> None:
        """Deliver until nothing is pending or ``timeout`` seconds pass (for ``--once``)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.deliver_due()
            if not self.store.pending_alerts():
                return
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.deliver_due()
                except Exception:
                    log.exception("alert delivery failed")
                self._wake.wait(0.5)
                self._wake.clear()

        self._thread = threading.Thread(target=loop, name="veriprint-alerts", daemon=True)
        self._thread.start()

    def stop(self, wait: float = 2.0) -> None:
        """Stop delivering: no new attempt starts, pending alerts stay queued for the next start.

        An attempt in flight is given ``wait`` seconds; a webhook that does not answer by then
        is left to its own timeout in the (daemon) delivery thread, which ends with the process,
        and its alert stays pending (delivery is at least once).
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(wait)
            if self._thread.is_alive():
                log.warning("alert delivery still waiting on a webhook after %g s; leaving it (the alert "
                            "stays queued for the next start)", wait)
                return
