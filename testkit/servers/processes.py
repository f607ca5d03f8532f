"""Starting, waiting for and stopping a server in its own process group, for every test server here."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 20.0) -> int:
    """SIGTERM ``proc``'s process group, SIGKILL after ``grace`` seconds; its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return int(proc.returncode)


class ServerProcess:
    """What every test server here shares: one child in its own process group, its output in
    ``log``, waited for until ready, stopped with :func:`stop_group`. A subclass sets ``label``,
    ``log`` and ``proc`` (``None`` until started) and implements ``start``."""

    label = "server"
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def spawn(self, cmd: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        """Start ``cmd`` in a new session (its own process group), output to ``log``."""
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, pending: list[str], ready: Callable[[str], bool], timeout: float,
                   poll: float = 0.2) -> None:
        """Wait until ``ready(p)`` holds for each of ``pending`` in turn; a server that exits or
        takes longer than ``timeout`` seconds raises with the end of its log (and is stopped)."""
        deadline = time.monotonic() + timeout
        pending = list(pending)
        while pending:
            assert self.proc is not None
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(f"{self.label} exited with {code} while starting:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.label} not ready after {timeout:g} s:\n{self.tail()}")
            if ready(pending[0]):
                pending.pop(0)
            else:
                time.sleep(poll)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 20.0) -> int:
        """SIGTERM the server's process group, SIGKILL after ``grace`` s; its exit code."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        return stop_group(proc, grace)

    def start(self) -> Self:
        raise NotImplementedError

    def __enter__(self) -> Self:
        """Started (once: a server already started by :meth:`start` is not started again)."""
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OipServer(ServerProcess):
    """A server of the Open Inference Protocol on two free ports of 127.0.0.1, REST and gRPC:
    the URLs of its models. A subclass calls :meth:`take_ports` in its ``__init__``."""

    http_port: int
    grpc_port: int

    def take_ports(self) -> None:
        """Two distinct free ports, REST's and gRPC's."""
        self.http_port = free_port()
        self.grpc_port = free_port()
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def url(self, name: str) -> str:
        """The model's REST URL, ``http://127.0.0.1:PORT/v2/models/NAME``."""
        return f"{self.origin}/v2/models/{name}"

    def grpc_url(self, name: str) -> str:
        """The model's gRPC URL, ``grpc://127.0.0.1:PORT/NAME``."""
        return f"grpc://127.0.0.1:{self.grpc_port}/{name}"
