"""Load test of ``veriprint monitor``: many endpoints checked concurrently on 127.0.0.1.

The monitor runs as a real process (``veriprint monitor --config ...``, SQLite history)
against ``--endpoints`` endpoints: fake Open Inference Protocol servers in this process
(the digits MLP behind them) plus, when ``.venv-serving`` has MLServer, a few endpoints on
a real MLServer. Every endpoint is checked every ``--interval`` seconds for ``--seconds``
seconds; then the monitor gets SIGTERM and must exit 0. Measured:

* checks stored per second, and slots missed (a slot whose check never started);
* the latency veriprint adds: a check's wall time minus the time it waited for the
  target's answers (p50, p99), and the whole check's p99;
* the monitor's peak resident memory (``VmHWM``);
* that no check was lost: every check the monitor logged as stored is in the database
  once, no slot has two, and no attempt is left without its check after the clean stop.

``--write-docs`` puts the numbers, the command and the machine into docs/guide/monitoring.md
(between the ``monitor-load`` markers).

Usage: ``python -m benchmarks.speed.monitor_load [--endpoints 100] [--seconds 60] [--write-docs]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.lib import ROOT

DOCS = ROOT / "docs" / "guide" / "monitoring.md"
BEGIN, END = "<!-- monitor-load:begin -->", "<!-- monitor-load:end -->"
STORED = re.compile(r"stored check endpoint=(\S+) slot=(\d+) id=(\d+)")


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run(endpoints: int = 100, seconds: float = 60.0, interval: float = 1.0, concurrency: int = 16,
        mlserver: bool = True, fakes: int = 4, workdir: Path | None = None) -> dict[str, Any]:
    """Run the load test; the measured numbers as a dict."""
    from testkit.servers.digits import digits_models
    from testkit.servers.fake_oip import FakeOip, torch_model
    from testkit.servers.mlserver import MLServer, ServedModel, serving_venv
    from testkit.servers.monitor_kit import MonitorProcess, pool_files, write_config
    from testkit.servers.processes import free_port
    from veriprint.monitor.db import Attempt, Store

    work = workdir or Path(tempfile.mkdtemp(prefix="veriprint-monitor-load-"))
    path, pub, _ = pool_files()
    m = digits_models()
    servers = [FakeOip({"digits": torch_model(m.model)}, (1, 8, 8)) for _ in range(fakes)]
    ml: MLServer | None = None
    real = 0
    if mlserver and (serving_venv() / "bin" / "mlserver").exists():
        ml = MLServer(work / "mlserver", [ServedModel("digits", m.onnx["digits"])]).start()
        real = min(4, endpoints)
    targets = [ml.url("digits") for _ in range(real)] if ml else []
    targets += [servers[i % fakes].url("digits") for i in range(endpoints - len(targets))]
    db = work / "monitor.db"
    cfg = write_config(
        work / "monitor.toml", database=f"sqlite:///{db}", concurrency=concurrency,
        defaults={"fingerprint": path, "pubkey": pub, "interval": interval, "jitter": interval * 0.9,
                  "pairs_per_check": 2, "pool_warn_checks": 0, "spec": "top1",
                  "on_pool_exhausted": "wrap",  # a load test of the scheduler: repeats are fine here
                  "options": {"timeout": "10s", "retries": 0}},
        endpoints=[{"name": f"e{i:03d}", "target": t} for i, t in enumerate(targets)])
    log = work / "monitor.log"
    proc = MonitorProcess(cfg, free_port(), log)
    try:
        proc.start(timeout=120)
        t0 = time.time()
        time.sleep(seconds)
        assert proc.proc is not None
        rss = _peak_rss_mib(proc.proc.pid)
        t1 = time.time()
        code = proc.stop(grace=30)
    finally:
        proc.kill()
        for s in servers:
            s.close()
        if ml is not None:
            ml.stop()
    store = Store(f"sqlite:///{db}", migrate=False)
    checks = [c for name in (f"e{i:03d}" for i in range(endpoints)) for c in store.checks(name, limit=10**6)]
    window = [c for c in checks if t0 <= c.finished_at <= t1]
    logged = Counter((mm[1], int(mm[2])) for mm in (STORED.search(x) for x in log.read_text().splitlines()) if mm)
    rows = Counter((c.endpoint, c.slot) for c in checks)
    from sqlalchemy import func, select

    with store.read() as s:
        open_attempts = int(s.scalar(select(func.count()).select_from(Attempt).where(Attempt.check_id.is_(None))) or 0)
    first = min((c.slot for c in checks), default=0)
    last = max((c.slot for c in checks), default=0)
    expected_slots = endpoints * (int((last - first) / (interval * 1000)) + 1) if checks else 0
    added = [max(0.0, c.duration_s - c.target_s) for c in window]
    result = {
        "endpoints": endpoints, "real_mlserver_endpoints": real, "fake_servers": fakes, "interval_s": interval,
        "concurrency": concurrency, "seconds": round(t1 - t0, 1), "checks": len(window),
        "checks_per_s": round(len(window) / (t1 - t0), 1),
        "verdicts": dict(Counter(c.verdict for c in window)),
        "added_latency_p50_ms": round(1000 * _percentile(added, 0.5), 1),
        "added_latency_p99_ms": round(1000 * _percentile(added, 0.99), 1),
        "check_p99_ms": round(1000 * _percentile([c.duration_s for c in window], 0.99), 1),
        "target_wait_p99_ms": round(1000 * _percentile([c.target_s for c in window], 0.99), 1),
        "peak_rss_mib": round(rss, 1),
        "logged_stored": sum(logged.values()), "rows": len(checks),
        "lost": len(set(logged) - set(rows)), "duplicated": sum(n - 1 for n in rows.values() if n > 1),
        "open_attempts_after_stop": open_attempts, "exit_code": code,
        "missed_slots": max(0, expected_slots - len(checks)),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": "python -m benchmarks.speed.monitor_load " + f"--endpoints {endpoints} --seconds {seconds:g}",
    }
    store.close()
    return result


def to_markdown(r: dict[str, Any]) -> str:
    mix = f"{r['endpoints'] - r['real_mlserver_endpoints']} on {r['fake_servers']} fake OIP servers"
    if r["real_mlserver_endpoints"]:
        mix += f" and {r['real_mlserver_endpoints']} on a real MLServer"
    return "\n".join([
        BEGIN,
        f"`{r['command']}` on {r['machine']} (the monitor, its fake servers and MLServer sharing them):",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| endpoints | {r['endpoints']} ({mix}), each every {r['interval_s']:g} s, "
        f"{r['concurrency']} checks at once |",
        f"| checks stored | {r['checks']} in {r['seconds']} s: **{r['checks_per_s']} checks/s** "
        f"({', '.join(f'{k} {v}' for k, v in sorted(r['verdicts'].items()))}) |",
        f"| latency added by veriprint (check minus waiting for the target) | p50 {r['added_latency_p50_ms']} ms, "
        f"**p99 {r['added_latency_p99_ms']} ms** |",
        f"| whole check p99 / waiting for the target p99 | {r['check_p99_ms']} ms / {r['target_wait_p99_ms']} ms |",
        f"| monitor's peak memory (VmHWM) | {r['peak_rss_mib']} MiB |",
        f"| checks lost / stored twice / attempts left open after SIGTERM | {r['lost']} / {r['duplicated']} / "
        f"{r['open_attempts_after_stop']} (of {r['logged_stored']} logged as stored; exit code {r['exit_code']}) |",
        f"| slots missed (check never started: the machine was saturated) | {r['missed_slots']} |",
        END,
    ])


def write_docs(r: dict[str, Any]) -> None:
    text = DOCS.read_text()
    if BEGIN not in text:
        raise SystemExit(f"{DOCS} has no {BEGIN} marker")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(head + to_markdown(r) + tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoints", type=int, default=100)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--no-mlserver", action="store_true", help="fake servers only")
    p.add_argument("--write-docs", action="store_true", help="write the numbers into docs/guide/monitoring.md")
    args = p.parse_args(argv)
    r = run(args.endpoints, args.seconds, args.interval, args.concurrency, mlserver=not args.no_mlserver)
    print(json.dumps(r, indent=1))
    print(to_markdown(r))
    if args.write_docs:
        write_docs(r)
    return 0 if r["lost"] == 0 and r["duplicated"] == 0 and r["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
