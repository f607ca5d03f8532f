"""The shipped alert rules and a real Prometheus (Debian's `prometheus` package, which
scripts/setup.sh installs): `promtool` checks and unit-tests every rule, and a Prometheus
server on 127.0.0.1 scrapes a running monitor; the series are read back through its HTTP
API. Without the package the tests skip, except in CI (CI=true) where they fail.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from testkit.servers.digits import digits_models, tampered_copy
from testkit.servers.fake_oip import FakeOip, torch_model
from testkit.servers.monitor_kit import MonitorProcess, Receiver, pool_files, run_once, write_config
from testkit.servers.processes import free_port, stop_group
from testkit.servers.required import missing

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


# --- the shipped Grafana dashboard ------------------------------------------------------------

DASHBOARD = DEPLOY / "grafana-dashboard.json"
GRAFANA_GLOBALS = {"__rate_interval": "30s", "__interval": "5s", "__range": "5m"}  # values for a short test
PANEL_TYPES = {"row", "stat", "timeseries", "state-timeline", "table", "gauge", "bargauge", "text"}
VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def _panels(dashboard: dict[str, object]) -> list[dict[str, object]]:
    out = []
    for p in dashboard["panels"]:  # type: ignore[attr-defined]
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside a collapsed row
    return out


def _exprs(dashboard: dict[str, object]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel."""
    return [(str(p["title"]), str(t["expr"])) for p in _panels(dashboard) for t in p.get("targets", [])]  # type: ignore[attr-defined]


def _substitute(expr: str, values: dict[str, str]) -> str:
    return VARIABLE.sub(lambda m: values[m.group(1)], expr)


def test_grafana_dashboard_has_the_shape_of_a_dashboard() -> None:
    """What Grafana's import needs: a title and uid, a current schema version, a Prometheus
    datasource variable that every panel and query uses, unique panel ids and query refIds,
    panels inside the 24-column grid that do not overlap, and only variables it defines."""
    d = json.loads(DASHBOARD.read_text())
    assert isinstance(d["title"], str) and d["title"] and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"])
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 39
    assert d.get("id") is None  # an id is the saving Grafana's; import makes its own
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == source and v["query"]["query"] == v["definition"], v["name"]
    panels = _panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        assert p["type"] in PANEL_TYPES, p["type"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] >= 1 and g["x"] + g["w"] <= 24 and g["h"] >= 1 and g["y"] >= 0, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["title"] and p.get("description"), p
        assert p["datasource"] == source, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == source and t["expr"].strip(), p["title"]
    known = set(variables) | set(GRAFANA_GLOBALS)
    for title, expr in _exprs(d):
        unknown = set(VARIABLE.findall(expr)) - known
        assert not unknown, f"{title!r} uses undefined variables {unknown}"
    for v in variables.values():
        if v["type"] == "query":
            assert not set(VARIABLE.findall(v["definition"])) - known, v["name"]


def _prom_query(port: int, query: str) -> dict[str, object]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as e:  # Prometheus answers a bad expression with HTTP 400 and a JSON error
        return dict(json.loads(e.read()))


def _exported(exposition: str) -> set[str]:
    """The sample names a /metrics text has at least one sample of."""
    return {line.split("{", 1)[0].split(" ", 1)[0] for line in exposition.splitlines()
            if line and not line.startswith("#")}


@pytest.mark.slow  # a monitor checking two endpoints every second and a Prometheus server: ~30 s
def test_every_dashboard_query_runs_on_a_real_prometheus(tmp_path: Path) -> None:
    """Each panel's PromQL, with the template variables filled in, through Prometheus's HTTP API
    against a monitor that checks an intact and a tampered endpoint and alerts a webhook: no
    error for any of them, and a result for every one whose series the monitor exports."""
    prometheus = _tool("prometheus")
    path, pub, _ = pool_files()
    m = digits_models()
    hook = Receiver()
    fake = FakeOip({"good": torch_model(m.model), "bad": torch_model(tampered_copy(m.model, 4))}, (1, 8, 8))
    cfg = write_config(
        tmp_path / "monitor.toml", database=f"sqlite:///{tmp_path / 'm.db'}",
        defaults={"fingerprint": path, "pubkey": pub, "interval": 1, "jitter": 0, "pairs_per_check": 1,
                  "spec": "probs", "on_pool_exhausted": "wrap"},
        alerts=[{"name": "hook", "url": hook.url}],
        endpoints=[{"name": "good", "target": fake.url("good"), "queries_per_day": 100000},
                   {"name": "bad", "target": fake.url("bad")}])
    port, prom_port = free_port(), free_port()
    mon = MonitorProcess(cfg, port, tmp_path / "monitor.log").start()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "veriprint-monitor", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed in the finally below)
    prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # enough scrapes of enough checks that rates and quantiles over 30 s have two points
        ready = 'min(count_over_time(veriprint_monitor_check_duration_seconds_count{endpoint=~"good|bad"}[30s])) >= 5'
        end = time.monotonic() + 90
        while time.monotonic() < end:
            try:
                if _prom_query(prom_port, ready)["data"]["result"]:  # type: ignore[index]
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"no scrapes of checks after 90 s:\n{mon.tail()}\n"
                        f"{(tmp_path / 'prometheus.log').read_text()[-2000:]}")
        exported = _exported(mon.get("/metrics")) | {"up"}
        d = json.loads(DASHBOARD.read_text())
        values = {"datasource": "", "job": "veriprint-monitor", "endpoint": "good|bad", **GRAFANA_GLOBALS}
        empty, unexported = [], set()
        for title, expr in _exprs(d):
            answer = _prom_query(prom_port, _substitute(expr, values))
            assert answer.get("status") == "success", (title, expr, answer.get("error"))
            names = set(re.findall(r"\b(?:veriprint_monitor_\w+|up)\b(?=\s*[{\[)]|\s*$|\s)", expr))
            assert names, f"{title!r}: no metric found in {expr!r}"
            unexported |= names - exported
            if names <= exported and not answer["data"]["result"]:  # type: ignore[index]
                empty.append((title, expr))
        assert not empty, f"queries over exported series gave no result: {empty}"
        # only what this run cannot make is left unchecked: no check timed out, none was interrupted
        assert unexported <= {"veriprint_monitor_check_timeouts_total", "veriprint_monitor_interrupted_checks"}, \
            unexported
        # the variables' own queries (Grafana's label_values) as Prometheus's label API
        for name in ("job", "endpoint"):
            var = next(v for v in d["templating"]["list"] if v["name"] == name)
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
            assert match is not None and match.group(2) == name, var["definition"]
            url = (f"http://127.0.0.1:{prom_port}/api/v1/label/{name}/values?"
                   + urllib.parse.urlencode({"match[]": _substitute(match.group(1), values)}))
            with urllib.request.urlopen(url, timeout=10) as r:
                got = set(json.loads(r.read())["data"])
            assert got == ({"veriprint-monitor"} if name == "job" else {"good", "bad"}), (name, got)
        # every series the monitor exports has a panel
        families = {line.split()[2] for line in mon.get("/metrics").splitlines()
                    if line.startswith("# TYPE") and not line.split()[2].endswith("_created")}
        text = json.dumps(d)
        assert not [f for f in families if f.startswith("veriprint_monitor_") and f not in text], families
    finally:
        stop_group(prom, 10)
        log.close()
        mon.stop()
        fake.close()
        hook.close()
