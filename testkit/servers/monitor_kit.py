"""What the monitor's tests share: a small signed pool fingerprint, a webhook receiver, a
config writer, and the monitor run as a real process."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from testkit.servers.digits import digits_models
from testkit.servers.processes import stop_group
from veriprint.fingerprint import Fingerprint, FingerprintConfig, make_fingerprint
from veriprint.fingerprint.fileformat import generate_keypair
from veriprint.pipeline.generate import GenerationConfig

ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def pool_files() -> tuple[Path, Path, Fingerprint]:
    """A signed fingerprint of the digits MLP with 12 twin pairs (24 samples), and its public key."""
    d = Path(tempfile.mkdtemp(prefix="veriprint-monitor-fp-"))
    priv, pub = generate_keypair(d / "owner.key")
    cfg = FingerprintConfig(bag=200, select=24, selector="random", cover_classes=False, budget="none",
                            generation=GenerationConfig(steps=40, eps=4 / 16, lr=1e-2))
    fp, _, _ = make_fingerprint(digits_models().model, digits_models().test, cfg, progress=False)
    assert fp.meta["selection"]["pairs"] == 12, fp.meta["selection"]
    fp = fp.save(d / "pool.vpf", key=priv)
    return d / "pool.vpf", pub, fp


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every JSON body; the first ``fail`` posts get HTTP 500."""

    def __init__(self, fail: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.posts = 0
        self.fail = fail
        self.lock = threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                with rec.lock:
                    rec.posts += 1
                    failing = rec.posts <= rec.fail
                    if not failing:
                        rec.bodies.append(json.loads(body))
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def kinds(self, endpoint: str | None = None) -> list[str]:
        with self.lock:
            return [b["kind"] for b in self.bodies if endpoint is None or b.get("endpoint") == endpoint]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_config(path: Path, *, database: str, endpoints: list[dict[str, Any]], alerts: list[dict[str, Any]] = (),
                 defaults: dict[str, Any] | None = None, listen: str = "127.0.0.1:0", concurrency: int = 8) -> Path:
    """Write a monitor TOML file (values given as Python objects)."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str | Path):
            return json.dumps(str(v))
        return repr(v)

    lines = ["[monitor]", f"database = {value(database)}", f"listen = {value(listen)}",
             f"concurrency = {concurrency}", "refresh = 0", ""]
    if defaults:
        lines += ["[defaults]", *(f"{k} = {value(v)}" for k, v in defaults.items()), ""]
    for a in alerts:
        lines += ["[[alerts]]", *(f"{k} = {value(v)}" for k, v in a.items()), ""]
    for e in endpoints:
        lines += ["[[endpoints]]", *(f"{k} = {value(v)}" for k, v in e.items()), ""]
    path.write_text("\n".join(lines))
    return path


def monitor_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "veriprint.cli.main", "monitor", "--config", str(config), *args]


def run_once(config: Path, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(monitor_cmd(config, "--once"), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


class MonitorProcess:
    """``veriprint monitor`` as a real process (its own process group), logging to a file."""

    def __init__(self, config: Path, port: int, log: Path, *args: str) -> None:
        self.log = log
        self.port = port
        self.config = config
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> MonitorProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(monitor_cmd(self.config, "--listen", f"127.0.0.1:{self.port}", *self.args),
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=ROOT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"monitor exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"monitor not up after {timeout} s:\n{self.tail()}")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return str(r.read().decode())

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self, grace: float = 20) -> int:
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        return stop_group(proc, grace)
