"""A throw-away PostgreSQL server on 127.0.0.1 for the monitor's tests (Debian's binaries).

The server refuses to run as root, so when the tests run as root it runs as a system user
``veriprint-pg`` (created with ``useradd`` if missing) through ``runuser``. Its data lives
in a fresh folder under /tmp; it listens on a free port and its own socket folder, trusts
local connections, and is stopped (fast mode, then SIGKILL) when the fixture ends.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from testkit.servers.processes import free_port
from testkit.servers.required import missing

USER = "veriprint-pg"


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    exe = shutil.which("initdb")
    return Path(found[-1]).parent if found else (Path(exe).parent if exe else None)


def require_postgres() -> Path:
    b = postgres_bin()
    if b is None:
        msg = "PostgreSQL is not installed (no initdb): apt-get install postgresql (scripts/setup.sh does it)"
        missing(msg)
    return b


class Postgres:
    def __init__(self) -> None:
        self.bin = require_postgres()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="veriprint-pg-"))
        self.data = self.dir / "data"
        self.as_user: list[str] = []
        if os.getuid() == 0:
            if subprocess.run(["id", "-u", USER], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                               check=True, capture_output=True)
            shutil.chown(self.dir, USER, USER)
            self.as_user = ["runuser", "-u", USER, "--"]

    @property
    def url(self) -> str:
        return f"postgresql://veriprint@127.0.0.1:{self.port}/monitor"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=self.dir)

    def start(self) -> Postgres:
        r = self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "veriprint", "--auth=trust",
                      "-E", "UTF8", "--no-sync")
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stderr}")
        opts = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} -c fsync=off"
        r = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-o", opts,
                      "-w", "-t", "60", "start")
        if r.returncode:
            raise RuntimeError(f"PostgreSQL did not start: {r.stderr}\n{self.log()}")
        end = time.monotonic() + 30
        while True:
            r = self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "veriprint",
                          "monitor")
            if r.returncode == 0:
                return self
            if time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"createdb failed: {r.stderr}")
            time.sleep(0.3)

    def log(self) -> str:
        try:
            return (self.dir / "log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        r = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
        if r.returncode:
            pid = self.data / "postmaster.pid"
            if pid.exists():
                subprocess.run(["kill", "-9", pid.read_text().split()[0]], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
