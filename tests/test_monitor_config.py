"""The monitor's configuration: every mistake is refused at start, naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from testkit.servers.monitor_kit import monitor_cmd
from veriprint.monitor.config import ConfigError, parse_config, parse_duration, redact_url


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "fp.vpf").write_bytes(b"x")
    (tmp_path / "owner.key.pub").write_text("x")
    return tmp_path


def doc(**endpoint: Any) -> dict[str, Any]:
    e = {"name": "cnn", "target": "http://127.0.0.1:8080/v2/models/cnn", "fingerprint": "fp.vpf", **endpoint}
    return {"endpoints": [e]}


def test_a_minimal_config_gets_the_documented_defaults(files: Path) -> None:
    cfg = parse_config(doc(), base=files)
    e = cfg.endpoints[0]
    assert (e.interval, e.jitter_s, e.spec, e.pairs_per_check, e.on_pool_exhausted) == (3600, 360, "top1", 4, "refuse")
    assert e.fingerprint == str(files / "fp.vpf")
    assert cfg.database == f"sqlite:///{files / 'veriprint-monitor.db'}"
    assert (cfg.host, cfg.port, cfg.concurrency) == ("127.0.0.1", 9108, 8)


def test_defaults_apply_and_endpoints_override(files: Path) -> None:
    d = doc(interval="5m")
    d["defaults"] = {"interval": "1h", "spec": "probs", "options": {"timeout": "3s", "retries": 0}}
    d["endpoints"][0]["options"] = {"retries": 2}
    e = parse_config(d, base=files).endpoints[0]
    assert (e.interval, e.spec) == (300, "probs")
    assert e.target_options() == {"timeout": 3.0, "retries": 2}


@pytest.mark.parametrize(("change", "match"), [
    ({"interval": "soon"}, r"endpoints\[0\]\.interval: expected a duration .* got 'soon'"),
    ({"interval": 0.5}, r"endpoints\[0\]\.interval: expected at least 1 second, got 0.5"),
    ({"jitter": "2h", "interval": "1h"}, r"endpoints\[0\]\.jitter: expected less than the interval"),
    ({"spec": "top3"}, r"endpoints\[0\]\.spec: expected top1, topk:K.* got 'top3'"),
    ({"name": "a b"}, r"endpoints\[0\]\.name: expected letters, digits"),
    ({"fingerprint": "missing.vpf"}, r"endpoints\[0\]\.fingerprint: expected an existing .vpf file"),
    ({"pubkey": "nokey.pub"}, r"endpoints\[0\]\.pubkey: expected an existing public key file"),
    ({"pairs_per_check": -1}, r"endpoints\[0\]\.pairs_per_check: expected an integer >= 0, got -1"),
    ({"pairs_per_check": "4"}, r"endpoints\[0\]\.pairs_per_check: expected an integer, got '4'"),
    ({"on_pool_exhausted": "loop"}, r"on_pool_exhausted: expected 'wrap' or 'refuse', got 'loop'"),
    ({"inconclusive_alert_after": 0}, r"inconclusive_alert_after: expected an integer >= 1, got 0"),
    ({"intervall": "1h"}, r"endpoints\[0\]\.intervall: expected one of the known keys .* got an unknown key"),
    ({"options": {"timeuot": 3}}, r"endpoints\[0\]\.options\.timeuot: expected a target option"),
    ({"options": {"datatype": "INT4"}}, r"endpoints\[0\]\.options\.datatype: expected FP32 or UINT8, got 'INT4'"),
    ({"options": {"auth_env": "VERIPRINT_TEST_UNSET_TOKEN"}},
     r"options\.auth_env: expected environment variable VERIPRINT_TEST_UNSET_TOKEN to be set, got unset"),
    ({"decoys": {"ratio": 1}}, r"endpoints\[0\]\.decoys\.data: expected a string, got nothing"),
    ({"decoys": {"data": "digits", "ratio": -1}}, r"decoys\.ratio: expected a number >= 0, got -1"),
    ({"target": "http://user:hunter2@10.0.0.1/v2/models/x"},
     r"endpoints\[0\]\.target: expected a URL without credentials .* got 'http://\*\*\*@10.0.0.1/v2/models/x'"),
])
def test_mistakes_name_the_key_what_was_expected_and_what_came(files: Path, change: dict[str, Any],
                                                                match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        parse_config(doc(**change), base=files)
    assert "hunter2" not in str(e.value)


def test_monitor_and_alert_mistakes(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def err(d: dict[str, Any]) -> str:
        with pytest.raises(ConfigError) as e:
            parse_config(d, base=files)
        return str(e.value)

    assert "endpoints: expected an array of tables ([[endpoints]]), got nothing" in err({})
    assert "endpoints: expected at least one [[endpoints]] table" in err({"endpoints": []})
    assert "monitor.listen: expected HOST:PORT, got 'localhost'" in err({**doc(), "monitor": {"listen": "localhost"}})
    assert "monitor.database: expected a URL without credentials" in err(
        {**doc(), "monitor": {"database": "postgresql://u:secret@db/x"}})
    assert "secret" not in err({**doc(), "monitor": {"database": "postgresql://u:secret@db/x"}})
    assert "monitor.database: expected a sqlite:/// or postgresql:// URL" in err(
        {**doc(), "monitor": {"database": "mysql://db/x"}})
    assert "alerts[0].url: expected exactly one of url and url_env, got neither" in err(
        {**doc(), "alerts": [{"name": "x"}]})
    assert "alerts[0].url_env: expected environment variable NO_SUCH_HOOK_VAR to hold the webhook URL" in err(
        {**doc(), "alerts": [{"name": "x", "url_env": "NO_SUCH_HOOK_VAR"}]})
    assert "alerts[0].format: expected 'json' or 'slack', got 'teams'" in err(
        {**doc(), "alerts": [{"name": "x", "url": "http://127.0.0.1:1/h", "format": "teams"}]})
    assert "alerts[0].url: expected a Slack webhook URL (a secret) in an environment variable" in err(
        {**doc(), "alerts": [{"name": "x", "url": "https://hooks.slack.com/services/T/B/abc"}]})
    assert "endpoints[1].name: expected a name not used by another endpoint, got 'cnn'" in err(
        {"endpoints": doc()["endpoints"] * 2})
    assert "defaults.nme: expected an endpoint key" in err({**doc(), "defaults": {"nme": "x"}})
    monkeypatch.setenv("HOOK_URL", "https://hooks.example.invalid/T/B/secret-token")
    cfg = parse_config({**doc(), "alerts": [{"name": "x", "url_env": "HOOK_URL", "format": "slack"}]}, base=files)
    assert cfg.alerts[0].resolve_url().endswith("secret-token") and cfg.alerts[0].url is None


def test_durations_and_redaction() -> None:
    assert [parse_duration(v, "k") for v in (5, 2.5, "500ms", "30s", "5m", "1h", "1d")] == [
        5, 2.5, 0.5, 30, 300, 3600, 86400]
    for bad in ("-1s", "1 week", True, None):
        with pytest.raises(ConfigError, match="k: expected a duration"):
            parse_duration(bad, "k")
    assert redact_url("https://u:p@host:1/v2/models/m?token=abc&x=1") == "https://***@host:1/v2/models/m?token=***&x=***"
    assert redact_url("http://host/v2/models/m") == "http://host/v2/models/m"


def test_the_one_grammar_of_durations_and_sizes_reaches_every_key(files: Path) -> None:
    d = doc(interval="5min", jitter="500ms", check_timeout="2 min", options={
        "timeout": "1.5s", "backoff": 0, "retry_timeouts": True, "max_response_bytes": "64M"})
    d["monitor"] = {"refresh": "1min"}
    d["alerts"] = [{"name": "a", "url": "http://127.0.0.1:1/h", "timeout": "10s", "backoff": "1.5min"}]
    cfg = parse_config(d, base=files)
    e = cfg.endpoints[0]
    assert (e.interval, e.jitter, e.check_timeout, cfg.refresh) == (300.0, 0.5, 120.0, 60.0)
    assert (cfg.alerts[0].timeout, cfg.alerts[0].backoff) == (10.0, 90.0)
    assert e.target_options() == {"timeout": 1.5, "backoff": 0.0, "retry_timeouts": True,
                                  "max_response_bytes": 64 * 2**20}
    from veriprint.targets import open_target

    sent = open_target(e.target, **e.target_options()).client.options  # type: ignore[attr-defined]
    assert (sent.timeout, sent.retry_timeouts, sent.max_response_bytes) == (1.5, True, 64 * 2**20)
    fresh = doc(fingerprint=None)
    del fresh["endpoints"][0]["fingerprint"]
    fresh["endpoints"][0]["fresh"] = {"model": "pkg.mod:factory", "data": "digits", "horizon": "2d"}
    fresh["endpoints"][0]["secret"] = "owner.key.pub"
    fe = parse_config(fresh, base=files).endpoints[0]
    assert fe.fresh.horizon == 2 * 86400 and fe.kind == "classifier"  # type: ignore[union-attr]


@pytest.mark.parametrize(("change", "match"), [
    ({"options": {"max_response_bytes": "lots"}},
     r"endpoints\[0\]\.options\.max_response_bytes: expected a byte size \(bytes, or a number and a unit.*got 'lots'"),
    ({"options": {"max_response_bytes": 0}}, r"max_response_bytes: expected a byte size of at least 1 byte, got 0"),
    ({"options": {"timeout": 0}}, r"options\.timeout: expected a duration of more than 0 seconds, got 0"),
    ({"options": {"retry_timeouts": "yes"}}, r"options\.retry_timeouts: expected bool, got 'yes'"),
    ({"interval": "1 week"}, r"interval: expected a duration \(seconds, or a number and a unit: 500ms, 30s, "
                             r"5m or 5min, 1\.5h, 1d\), got '1 week'"),
])
def test_sizes_and_durations_are_refused_in_the_one_wording(files: Path, change: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(doc(**change), base=files)


def test_one_config_error_and_a_version_newer_than_this_veriprint_is_refused(files: Path) -> None:
    from veriprint import errors, monitor
    from veriprint.monitor import config as monitor_config

    assert monitor_config.ConfigError is errors.ConfigError is monitor.ConfigError
    assert parse_config({**doc(), "version": 1}, base=files).version == 1
    with pytest.raises(errors.ConfigError, match=r"^m.toml: version: this veriprint reads versions up to 1, got 2; "
                                                  "upgrade veriprint to read it$"):
        parse_config({**doc(), "version": 2}, base=files, source="m.toml")
    with pytest.raises(errors.ConfigError) as e:
        parse_config({**doc(), "monitor": {"refersh": 5}}, base=files)
    assert str(e.value) == ("monitor.refersh: expected one of the known keys (database, database_env, listen, "
                            "concurrency, public_url, refresh, secret, secret_env), got an unknown key")
    assert (e.value.key, e.value.got) == ("monitor.refersh", "<an unknown key>")


def test_cli_refuses_a_bad_config_in_one_line_without_traceback(files: Path) -> None:
    cfg = files / "monitor.toml"
    cfg.write_text('[[endpoints]]\nname = "cnn"\ntarget = "http://127.0.0.1:1/v2/models/x"\n'
                   'fingerprint = "fp.vpf"\ninterval = "every hour"\n')
    r = subprocess.run(monitor_cmd(cfg, "--once"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {cfg}: endpoints[0].interval: expected a duration (seconds, or a number and a unit: 500ms, 30s, "
        "5m or 5min, 1.5h, 1d), got 'every hour'"]
    assert "Traceback" not in r.stdout + r.stderr
    cfg.write_text("[[endpoints]\nname = 1")
    r = subprocess.run(monitor_cmd(cfg, "--check-config"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "expected TOML, got" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # a broken fingerprint is refused at start too, naming the key
    cfg.write_text('[[endpoints]]\nname = "cnn"\ntarget = "http://127.0.0.1:1/v2/models/x"\nfingerprint = "fp.vpf"\n'
                   f'[monitor]\ndatabase = "sqlite:///{files / "m.db"}"\n')
    r = subprocess.run(monitor_cmd(cfg, "--check-config"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "endpoints[0].fingerprint: expected a valid fingerprint file" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
