"""Models served by a child process whose ATen, oneDNN or MKL kernels are limited.

    python -m benchmarks.lib.kernel_worker MODELS.pt MODULE-FILES.json   # run by KernelWorker, not by hand

PyTorch picks its vectorized ATen kernels (``ATEN_CPU_CAPABILITY``: ``default``, ``avx2``,
``avx512``), oneDNN its instruction set (``ONEDNN_MAX_CPU_ISA``: ``SSE41``, ``AVX2``, ...)
and MKL its code path (``MKL_ENABLE_INSTRUCTIONS``) once, when torch is imported, so a
deployment with other kernels than this process's is a child process started with those
variables. It emulates a CPU of another vector width (the kernels a server without AVX-512
would run); it is not another CPU model.

The child loads a list of modules saved with ``torch.save`` (first loading, from their
files, the modules of classes no import finds by name) and answers on its standard
streams: it first writes one JSON line (torch's version and the ATen capability it runs),
then, for each request (an ``int64`` array ``[index]`` and a float32 batch, both in NumPy's
``.npy`` format), the float32 answers of model ``index`` to that batch (each array framed by
:func:`send`), in one thread
under ``torch.no_grad``. It exits when its input closes.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np

from benchmarks.lib import ROOT

#: The variables that choose the kernels; the child gets only the ones given to it.
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


class KernelWorkerError(RuntimeError):
    """The child process failed or answered something else than expected."""


class KernelWorker:
    """A child process serving ``models`` with the kernels ``env`` selects.

    Args:
        models: the modules to serve (saved to ``path`` with ``torch.save``).
        env: values of :data:`KERNEL_VARIABLES` for the child (others are removed).
        path: where the modules are saved.
    """

    def __init__(self, models: list[Any], env: dict[str, str], path: Path) -> None:
        import torch

        unknown = sorted(set(env) - set(KERNEL_VARIABLES))
        if unknown:
            raise ValueError(f"expected variables among {KERNEL_VARIABLES}, got {unknown}")
        torch.save(models, path)
        extra = _file_modules(models)
        child = {k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES}
        child.update(env, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                     PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
        self.env = dict(env)
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.lib.kernel_worker", str(path), json.dumps(extra)],
                                     cwd=ROOT, env=child, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise KernelWorkerError(f"the kernel worker ({env}) exited before it answered:\n{self._stderr()}")
        self.info: dict[str, Any] = json.loads(line)
        self.served = len(models)

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")[-3000:]

    def run(self, index: int, x: np.ndarray) -> np.ndarray:
        """Model ``index``'s answers to the float32 batch ``x``."""
        if not 0 <= index < self.served:
            raise IndexError(f"expected a model index in [0, {self.served}), got {index}")
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            send(self.proc.stdin, np.array([index], np.int64))
            send(self.proc.stdin, np.ascontiguousarray(x, dtype=np.float32))
            return receive(self.proc.stdout)
        except (OSError, EOFError, ValueError) as e:
            raise KernelWorkerError(f"the kernel worker ({self.env}) failed: {e}\n{self._stderr()}") from e

    def stop(self) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return int(self.proc.wait(30))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return int(self.proc.wait(5))


def _file_modules(models: list[Any]) -> dict[str, str]:
    """The modules of the models' classes that were loaded from a file under a name no import
    finds (``veriprint.zoo.pretrained_mnist`` does this): name -> file, for the child to load
    the same way before it unpickles."""
    out: dict[str, str] = {}
    for model in models:
        for sub in model.modules():
            name = type(sub).__module__
            mod = sys.modules.get(name)
            if name in out or mod is None or getattr(mod, "__file__", None) is None:
                continue
            top = name.partition(".")[0]
            if top != "__main__" and importlib.machinery.PathFinder.find_spec(top) is None:
                out[name] = str(mod.__file__)
    return out


def _load_file_modules(files: dict[str, str]) -> None:
    for name, file in files.items():
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            raise ImportError(f"expected a Python module at {file} (for {name})")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module


def send(fp: IO[bytes], a: np.ndarray) -> None:
    """Write ``a`` to ``fp`` as its byte count (8 bytes, little-endian) and its ``.npy`` bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=False)
    fp.write(struct.pack("<Q", buf.tell()) + buf.getvalue())
    fp.flush()


def receive(fp: IO[bytes]) -> np.ndarray:
    """The next array :func:`send` wrote to ``fp``; ``EOFError`` when ``fp`` is closed."""
    head = fp.read(8)
    if len(head) < 8:
        raise EOFError("the stream closed")
    (size,) = struct.unpack("<Q", head)
    body = fp.read(size)
    if len(body) < size:
        raise EOFError(f"expected {size} bytes, got {len(body)}")
    return np.asarray(np.lib.format.read_array(io.BytesIO(body), allow_pickle=False))


def _serve(path: Path, files: dict[str, str], inp: IO[bytes], out: IO[bytes]) -> int:
    import torch

    torch.set_num_threads(1)
    _load_file_modules(files)
    models = torch.load(path, weights_only=False)
    for m in models:
        m.eval()
    out.write((json.dumps({"torch": torch.__version__, "aten": torch.backends.cpu.get_cpu_capability(),
                           **{k: os.environ.get(k) for k in KERNEL_VARIABLES}}) + "\n").encode())
    out.flush()
    while True:
        try:
            index = int(receive(inp)[0])
        except EOFError:  # the parent closed the pipe: no more requests
            return 0
        x = torch.from_numpy(receive(inp))
        with torch.no_grad():
            y = models[index](x).float().numpy()
        send(out, np.ascontiguousarray(y))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m benchmarks.lib.kernel_worker MODELS.pt MODULE-FILES.json")
    sys.exit(_serve(Path(sys.argv[1]), json.loads(sys.argv[2]), sys.stdin.buffer, sys.stdout.buffer))
