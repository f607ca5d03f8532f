"""The shipped alert rules and a real Prometheus (Debian's `prometheus` package, which
scripts/setup.sh installs): `promtool` checks and unit-tests every rule, and a Prometheus
server on 127.0.0.1 scrapes a running monitor; the series are read back through its HTTP
API. Without the package the tests skip, except in CI (CI=true) where they fail.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from servers.digits import digits_models
from servers.fake_oip import FakeOip, torch_model
from servers.mlserver import free_port
from servers.monitor_kit import MonitorProcess, pool_files, run_once, write_config
from servers.processes import stop_group
from servers.required import missing

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (Debian package prometheus; scripts/setup.sh installs it)")
    return str(path)


def test_every_shipped_alert_rule_is_valid_and_unit_tested() -> None:
    promtool = _tool("promtool")
    r = subprocess.run([promtool, "check", "rules", str(DEPLOY / "alerts.yml")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([promtool, "test", "rules", str(DEPLOY / "alerts.test.yml")], capture_output=True, text=True,
                       timeout=60, cwd=DEPLOY)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    rules = {r["alert"] for g in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in yaml.safe_load((DEPLOY / "alerts.test.yml").read_text())["tests"]
              for t in case["alert_rule_test"]}
    assert rules == tested, f"rules without a unit test: {sorted(rules - tested)}"


@pytest.mark.slow  # a monitor and a Prometheus server: ~15 s
def test_a_real_prometheus_scrapes_the_monitor_and_answers_its_series(tmp_path: Path) -> None:
    prometheus = _tool("prometheus")
    path, pub, _ = pool_files()
    m = digits_models()
    with FakeOip({"good": torch_model(m.model)}, (1, 8, 8)) as fake:
        cfg = write_config(tmp_path / "monitor.toml", database=f"sqlite:///{tmp_path / 'm.db'}", endpoints=[
            {"name": "good", "target": fake.url("good"), "fingerprint": path, "pubkey": pub, "spec": "probs"}])
        once = run_once(cfg)
        assert once.returncode == 0, once.stdout + once.stderr
    port, prom_port = free_port(), free_port()
    mon = MonitorProcess(cfg, port, tmp_path / "monitor.log", "--serve-only").start()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "alerts.yml")],
        "scrape_configs": [{"job_name": "veriprint-monitor", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed in the finally below)
    prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        query = 'veriprint_monitor_endpoint_verdict{endpoint="good",verdict="INTACT"}'
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        result: list[dict[str, object]] = []
        end = time.monotonic() + 60
        while time.monotonic() < end and not result:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    result = json.loads(r.read())["data"]["result"]
            except OSError:
                pass
            time.sleep(0.5)
        assert result, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert result[0]["value"][1] == "1"  # type: ignore[index]
        with urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/rules", timeout=5) as r:
            names = {rule["name"] for g in json.loads(r.read())["data"]["groups"] for rule in g["rules"]}
        assert {"ModelTampered", "ModelRoutingConfirmed"} <= names
    finally:
        stop_group(prom, 10)
        log.close()
        mon.stop()
