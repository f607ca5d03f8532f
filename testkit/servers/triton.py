"""Start and stop a real NVIDIA Triton server (through PyTriton) on 127.0.0.1, on the CPU.

Triton lives in its own virtual environment, made with Debian's ``/usr/bin/python3.11`` by
``scripts/setup-triton.sh`` (``.venv-triton``; ``VERIPRINT_TRITON_VENV`` overrides the
place): under a pyenv-built Python 3.11.7 PyTriton's model stub fails to load any model
(``'_thread.RLock' object has no attribute '_recursion_count'``). The server is
``triton_app.py`` beside this file, serving ONNX files through onnxruntime; HTTP and gRPC
take free ports picked at start, the metrics endpoint is off. It runs in its own process
group, is stopped with SIGTERM (then SIGKILL after a grace period), and its PyTriton
workspace sits in the server's folder.

:func:`demo_models` gives what the Triton tests serve: the demo's shipped CNN and its
tampered copies (the attacks of the tampering registry that the demo table lists, exported
by ``servers.demo_onnx``) and variants of the intact model (a smaller ``max_batch_size``, a
flat input, 8-bit inputs).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from testkit.servers.demo_onnx import NAMES as DEMO_NAMES
from testkit.servers.processes import OipServer, stop_group
from testkit.servers.required import missing

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).with_name("triton_app.py")
STAMP = ".veriprint-triton"  # written by scripts/setup-triton.sh once the install is complete

# The demo's tampered copies (veriprint.demo.tampered_copies, in its order) as served names.
TAMPERED_NAMES = tuple(f"fashion-{n}" for n in DEMO_NAMES[1:])
SMALL_BATCH = 4  # max_batch_size of "fashion-cnn-mb4"; every other model takes 16


def group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` still runs (zombies excepted)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def triton_venv() -> Path:
    return Path(os.environ.get("VERIPRINT_TRITON_VENV", ROOT / ".venv-triton")).absolute()


def require_triton() -> Path:
    """The Triton environment's Python; skips the test without it, fails in CI (``CI=true``)."""
    venv = triton_venv()
    exe = venv / "bin" / "python"
    if not exe.exists() or not (venv / STAMP).is_file():
        missing(f"PyTriton is not installed ({venv} is missing or incomplete): run scripts/setup-triton.sh "
                "(scripts/setup.sh does it)")
    return exe


@dataclass(frozen=True)
class TritonModel:
    """One served model: its name, ONNX file and Triton ``max_batch_size``."""

    name: str
    onnx: Path
    max_batch_size: int = 16


class TritonServer(OipServer):
    """A running Triton; use as a context manager or call :meth:`start` / :meth:`stop`."""

    label = "Triton"

    def __init__(self, root: Path, models: list[TritonModel], *, input_name: str = "image",
                 output_name: str = "logits") -> None:
        self.python = require_triton()
        self.root = root
        self.models = models
        self.input_name, self.output_name = input_name, output_name
        self.take_ports()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "triton.log"

    def command(self) -> list[str]:
        cmd = [str(self.python), str(APP), "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
               "--input-name", self.input_name, "--output-name", self.output_name,
               "--workspace", str(self.root / "workspace")]
        for m in self.models:
            cmd += ["--model", f"{m.name}={m.onnx}@{m.max_batch_size}"]
        return cmd

    def _ready(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.origin + path, timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 180.0) -> TritonServer:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / "workspace", ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env["PATH"] = f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}"
        self.spawn(self.command(), cwd=self.root, env=env)
        self.wait_ready([f"/v2/models/{m.name}/ready" for m in self.models], self._ready, timeout)
        return self

    def stop(self, grace: float = 30.0) -> int:
        """Stop the server; its exit code.

        SIGTERM goes to PyTriton alone first, which unloads the models and stops Triton and
        the model stubs in order (signalling the whole group at once leaves Triton waiting
        on stubs that are gone). Whatever of the group still runs ``grace`` seconds later is
        sent SIGTERM, then SIGKILL.
        """
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        deadline = time.monotonic() + grace
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        code = stop_group(proc, grace)
        if group_alive(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        return code


class _Flat(nn.Module):
    """The model behind a flat input of 784 values (a deployment whose input shape differs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.reshape(-1, 1, 28, 28))


@dataclass(frozen=True)
class TritonModels:
    """The demo's shipped model and fingerprint, and the ONNX files Triton serves from them."""

    model: nn.Module
    fingerprint: Path
    onnx: dict[str, Path]  # served name -> ONNX file
    labels: dict[str, str]  # tampered served name -> the demo table's label

    def served(self) -> list[TritonModel]:
        return [TritonModel(n, p, SMALL_BATCH if n.endswith("-mb4") else 16) for n, p in self.onnx.items()]


@functools.lru_cache(maxsize=1)
def demo_models() -> TritonModels:
    """The shipped demo CNN and its tampered copies as ONNX (``servers.demo_onnx``, shared
    with the other servers' tests), served as ``fashion-`` + their names there, and three
    variants of the intact model: ``fashion-cnn-mb4`` (Triton's ``max_batch_size`` 4),
    ``fashion-cnn-flat`` (a flat input of 784 values) and ``fashion-cnn-u8`` (8-bit grid
    values in, mapped to the model's range in the graph)."""
    from testkit.servers.demo_onnx import demo_models as demo_onnx
    from testkit.servers.digits import FromGrid
    from veriprint.data import load_data
    from veriprint.models.onnx_export import export_onnx

    demo = demo_onnx()
    onnx = {f"fashion-{n}": demo.onnx[n] for n in DEMO_NAMES}
    labels = {f"fashion-{n}": demo.labels[n] for n in DEMO_NAMES[1:]}
    d = Path(tempfile.mkdtemp(prefix="veriprint-triton-"))
    atexit.register(shutil.rmtree, d, True)
    x = torch.zeros(2, 1, 28, 28)
    onnx["fashion-cnn-mb4"] = onnx["fashion-cnn"]
    onnx["fashion-cnn-flat"] = export_onnx(_Flat(demo.model), x.reshape(2, -1), d / "fashion-cnn-flat.onnx")
    domain = load_data("fashion-mnist", split="test", limit=2).domain
    grid = domain.to_grid(x).to(torch.uint8)
    onnx["fashion-cnn-u8"] = export_onnx(FromGrid(demo.model, domain), grid, d / "fashion-cnn-u8.onnx")
    return TritonModels(demo.model, demo.fingerprint, onnx, labels)
