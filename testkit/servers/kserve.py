"""Start and stop a real KServe ModelServer on 127.0.0.1 serving ONNX files.

KServe lives in its own virtual environment (``scripts/setup-kserve.sh`` makes
``.venv-kserve``; ``VERIPRINT_KSERVE_VENV`` overrides the place). The server is
``kserve.ModelServer`` with a custom ``kserve.Model`` per ONNX file (``kserve_runtime.py``),
answering the Open Inference Protocol v2 over REST and gRPC on two free loopback ports.
It runs in its own process group and is stopped with SIGTERM (then SIGKILL after a grace
period).
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from testkit.servers.processes import OipServer
from testkit.servers.required import missing

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = Path(__file__).with_name("kserve_runtime.py")


def kserve_venv() -> Path:
    return Path(os.environ.get("VERIPRINT_KSERVE_VENV", ROOT / ".venv-kserve")).resolve()


def require_kserve() -> Path:
    """The Python of the KServe environment; skips the test without it, fails in CI (``CI=true``)."""
    exe = kserve_venv() / "bin" / "python"
    stamp = kserve_venv() / ".veriprint-kserve"
    if not exe.exists() or not stamp.exists():
        missing(f"KServe is not installed ({stamp} missing): run scripts/setup-kserve.sh "
                "(scripts/setup.sh does it)")
    return exe


class KServe(OipServer):
    """A running KServe ModelServer; use as a context manager or call :meth:`start` / :meth:`stop`.

    Args:
        root: a folder for the server's log.
        models: served name -> ONNX file.
        threads: onnxruntime's intra-op threads per model.
    """

    label = "KServe"

    def __init__(self, root: Path, models: dict[str, Path], threads: int = 1) -> None:
        self.python = require_kserve()
        self.root = root
        self.models = dict(models)
        self.threads = threads
        self.take_ports()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "kserve.log"

    def _ready(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.origin + path, timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 120.0) -> KServe:
        self.root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        # -P: the runtime's own folder stays off sys.path, where this module would shadow kserve
        cmd = [str(self.python), "-P", str(RUNTIME), "--http-port", str(self.http_port), "--grpc-port",
               str(self.grpc_port), "--threads", str(self.threads),
               *(f"{name}={path}" for name, path in self.models.items())]
        self.spawn(cmd, cwd=self.root, env=env)
        self.wait_ready([f"/v2/models/{name}/ready" for name in self.models], self._ready, timeout)
        return self
