"""Start and stop a real Seldon MLServer on 127.0.0.1 serving ONNX files.

MLServer lives in its own virtual environment (``scripts/setup-serving.sh`` makes
``.venv-serving``; ``VERIPRINT_SERVING_VENV`` overrides the place). Two pitfalls of
MLServer 1.7.1 are handled here: ``parallel_workers`` is 0 (with worker processes the
worker dies with "There is no current event loop" under uvloop 0.23), and the metrics
server is off (it would listen on a fixed port). The HTTP and gRPC ports are free ports
picked at start; the server runs in its own process group and is stopped with SIGTERM
(then SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from testkit.servers.processes import OipServer
from testkit.servers.required import missing

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = Path(__file__).with_name("onnx_runtime.py")


def serving_venv() -> Path:
    return Path(os.environ.get("VERIPRINT_SERVING_VENV", ROOT / ".venv-serving")).resolve()


def require_mlserver() -> Path:
    """The ``mlserver`` executable; skips the test without it, fails in CI (``CI=true``)."""
    exe = serving_venv() / "bin" / "mlserver"
    if not exe.exists():
        msg = (f"MLServer is not installed ({exe} missing): run scripts/setup-serving.sh "
               "(scripts/setup.sh does it)")
        missing(msg)
    return exe



@dataclass(frozen=True)
class ServedModel:
    """One model for the server: its name, ONNX file and onnxruntime threads; or, with
    ``runtime``, a runtime file of ``testkit/servers`` (``module.Class``) and its parameters."""

    name: str
    onnx: Path | None = None
    threads: int | None = 1
    runtime: str = ""
    parameters: dict[str, object] | None = None


class MLServer(OipServer):
    """A running MLServer; use as a context manager or call :meth:`start` / :meth:`stop`."""

    label = "MLServer"

    def __init__(self, root: Path, models: list[ServedModel]) -> None:
        self.exe = require_mlserver()
        self.root = root
        self.models = models
        self.take_ports()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "mlserver.log"

    def _write_repository(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.copy(RUNTIME, self.root / RUNTIME.name)
        settings = {"debug": False, "host": "127.0.0.1", "http_port": self.http_port,
                    "grpc_port": self.grpc_port, "metrics_endpoint": None, "parallel_workers": 0,
                    "load_models_at_startup": True, "metrics_dir": str(self.root / ".metrics")}
        (self.root / "settings.json").write_text(json.dumps(settings, indent=1))
        for m in self.models:
            d = self.root / "models" / m.name
            d.mkdir(parents=True, exist_ok=True)
            if m.runtime:
                module = m.runtime.rsplit(".", 1)[0]
                shutil.copy(RUNTIME.with_name(f"{module}.py"), self.root / f"{module}.py")
                (d / "model-settings.json").write_text(json.dumps({
                    "name": m.name, "implementation": m.runtime, "parameters": dict(m.parameters or {})}))
                continue
            assert m.onnx is not None
            shutil.copy(m.onnx, d / "model.onnx")
            params: dict[str, object] = {"uri": "./model.onnx"}
            if m.threads:
                params["threads"] = m.threads
            (d / "model-settings.json").write_text(json.dumps({
                "name": m.name, "implementation": "onnx_runtime.OnnxRuntime", "parameters": params}))

    def _ready(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.origin + path, timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 120.0) -> MLServer:
        self._write_repository()
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env.update(MLSERVER_HTTP_PORT=str(self.http_port), MLSERVER_GRPC_PORT=str(self.grpc_port),
                   PATH=f"{self.exe.parent}{os.pathsep}{env.get('PATH', '')}")
        self.spawn([str(self.exe), "start", str(self.root)], cwd=self.root, env=env)
        self.wait_ready([f"/v2/models/{m.name}/ready" for m in self.models], self._ready, timeout)
        return self
