"""Start and stop a real TorchServe on 127.0.0.1 serving ONNX files (handler: ts_handler.py).

TorchServe 0.12 lives in .venv-serving (scripts/setup-serving.sh). Its Java frontend
listens on three free loopback ports (inference, management, metrics), token
authorization is off, and each model is an unpacked archive made with
``torch-model-archiver --archive-format no-archive``. The launcher runs in the foreground
in its own process group and is stopped with SIGTERM (then SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from testkit.servers.mlserver import serving_venv
from testkit.servers.processes import free_port
from testkit.servers.required import missing

HANDLER = Path(__file__).with_name("ts_handler.py")


def require_torchserve() -> Path:
    """The ``torchserve`` executable; skips without it, fails in CI (``CI=true``)."""
    exe = serving_venv() / "bin" / "torchserve"
    if not exe.exists():
        msg = f"TorchServe is not installed ({exe} missing): run scripts/setup-serving.sh"
        missing(msg)
    return exe


@dataclass(frozen=True)
class TsModel:
    name: str
    onnx: Path


class TorchServe:
    """A running TorchServe; use as a context manager."""

    def __init__(self, root: Path, models: list[TsModel], threads: int = 1, preload: list[str] | None = None) -> None:
        """``models`` are archived into the store; those named in ``preload`` (default: all)
        are loaded at start, the others by :meth:`register`."""
        self.exe = require_torchserve()
        self.root = root
        self.models = models
        self.preload = [m.name for m in models] if preload is None else list(preload)
        self.threads = threads
        self.ports = {k: free_port() for k in ("inference", "management", "metrics")}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "torchserve.log"

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    def url(self, name: str) -> str:
        return f"torchserve+{self.origin}/predictions/{name}"

    def _write_store(self) -> Path:
        store = self.root / "store"
        store.mkdir(parents=True, exist_ok=True)
        archiver = self.exe.parent / "torch-model-archiver"
        for m in self.models:
            staged = self.root / "staging" / m.name
            staged.mkdir(parents=True, exist_ok=True)
            (staged / "model.onnx").write_bytes(m.onnx.read_bytes())
            subprocess.run([str(archiver), "--model-name", m.name, "--version", "1.0", "--handler", str(HANDLER),
                            "--extra-files", str(staged / "model.onnx"), "--export-path", str(store),
                            "--archive-format", "no-archive", "--force"], check=True, capture_output=True)
        return store

    def start(self, timeout: float = 180.0) -> TorchServe:
        store = self._write_store()
        cfg = self.root / "config.properties"
        cfg.write_text("\n".join([
            f"inference_address=http://127.0.0.1:{self.ports['inference']}",
            f"management_address=http://127.0.0.1:{self.ports['management']}",
            f"metrics_address=http://127.0.0.1:{self.ports['metrics']}",
            "disable_token_authorization=true",
            f"model_store={store}",
            *([f"load_models={','.join(self.preload)}"] if self.preload else []),
            "default_workers_per_model=1",
            "enable_model_api=true",  # register / unregister (off by default since TorchServe 0.11)
            "install_py_dep_per_model=false",
            "",
        ]))
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env.update(PATH=f"{self.exe.parent}{os.pathsep}{env.get('PATH', '')}",
                   LOG_LOCATION=str(self.root / "logs"), METRICS_LOCATION=str(self.root / "logs"),
                   VERIPRINT_TS_THREADS=str(self.threads),
                   # the launcher refuses to start while the pid file in the temp folder names a running
                   # server: a temp folder of its own lets servers of other processes run beside it
                   TMPDIR=str(self.root))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(self.exe), "--start", "--foreground", "--ncs", "--disable-token-auth", "--ts-config", str(cfg)],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        pending = list(self.preload)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"TorchServe exited with {self.proc.returncode} while starting:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"TorchServe not ready after {timeout:g} s:\n{self.tail()}")
            if self._ready(pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.5)
        return self

    def _ready(self, name: str) -> bool:
        try:
            url = f"http://127.0.0.1:{self.ports['management']}/models/{name}"
            with urllib.request.urlopen(url, timeout=2) as r:
                return b'"READY"' in r.read()
        except (urllib.error.URLError, OSError):
            return False

    def _manage(self, method: str, path: str, timeout: float) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports['management']}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                r.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"TorchServe {method} {path}: HTTP {e.code} {e.read()[:300]!r}\n{self.tail()}") from e

    def register(self, name: str, timeout: float = 180.0) -> None:
        """Load the stored model ``name`` with one worker; returns when it is ready."""
        self._manage("POST", f"/models?url={name}&initial_workers=1&synchronous=true", timeout)

    def unregister(self, name: str, timeout: float = 60.0) -> None:
        """Unload ``name`` (its worker stops)."""
        self._manage("DELETE", f"/models/{name}", timeout)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 30.0) -> int:
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:  # the launcher, the JVM and the Python workers share the group
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(grace)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return int(proc.returncode)

    def __enter__(self) -> TorchServe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
