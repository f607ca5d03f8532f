"""The test servers' process base (testkit.servers.processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from testkit.servers.processes import ServerProcess


class _Sleeper(ServerProcess):
    label = "sleeper"

    def __init__(self, root: Path) -> None:
        self.log = root / "sleeper.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> _Sleeper:
        self.starts += 1
        self.spawn([sys.executable, "-c", "import time; time.sleep(60)"], cwd=self.log.parent, env={})
        return self


def test_a_server_started_then_entered_runs_once_and_stops(tmp_path: Path) -> None:
    server = _Sleeper(tmp_path)
    with server.start() as s:
        assert s is server and server.starts == 1
        proc = server.proc
        assert proc is not None and proc.poll() is None
    assert server.proc is None and proc.poll() is not None  # stopped on leaving
    with _Sleeper(tmp_path) as fresh:  # entered without start(): started by the with
        assert fresh.starts == 1 and fresh.proc is not None
