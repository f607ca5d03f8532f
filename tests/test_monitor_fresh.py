"""The monitor against a provider that looks at the queries: keyed splits, fresh checks,
decoys that never repeat, and the sequential test over requests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from veriprint.errors import ConfigError as ArgumentError
from veriprint.monitor.checks import EndpointRuntime, run_check
from veriprint.monitor.config import ConfigError, parse_config
from veriprint.monitor.db import Store
from veriprint.monitor.sequential import (
    SequentialParams,
    SequentialState,
    clopper_pearson_lower,
    update,
)
from veriprint.verification.queries.split import split_requests
from veriprint.verification.verify import SampleResult, VerificationReport, merge_reports

sys.path.insert(0, str(Path(__file__).parent))
from testkit.servers.digits import digits_models, tampered_copy
from testkit.servers.fake_oip import FakeOip, torch_model

HOUR_MS = 3_600_000


# --- splitting a check into requests -------------------------------------------------------


@pytest.mark.parametrize("pairs,singles,k", [(8, 0, 4), (3, 5, 4), (1, 0, 4), (0, 7, 3), (6, 1, 2), (5, 0, 1)])
def test_split_covers_every_sample_once_and_keeps_twin_halves_apart(pairs: int, singles: int, k: int) -> None:
    units = [(2 * i, 2 * i + 1) for i in range(pairs)] + [(2 * pairs + i,) for i in range(singles)]
    n = 2 * pairs + singles
    for seed in range(50):
        reqs = split_requests(np.random.default_rng(seed), units, k)
        assert len(reqs) == min(k, n) and all(reqs)
        assert sorted(i for r in reqs for i in r) == list(range(n))
        where = {i: j for j, r in enumerate(reqs) for i in r}
        if len(reqs) > 1:
            assert all(where[a] != where[b] for a, b in units[:pairs])


def test_split_sizes_and_contents_vary_with_the_key() -> None:
    units = [(2 * i, 2 * i + 1) for i in range(8)]
    shapes = {tuple(len(r) for r in split_requests(np.random.default_rng(s), units, 4)) for s in range(40)}
    assert len(shapes) > 5  # not a fixed shape a provider could match
    a = split_requests(np.random.default_rng(7), units, 4)
    assert a == split_requests(np.random.default_rng(7), units, 4)


def test_split_refuses_no_requests() -> None:
    with pytest.raises(ArgumentError, match="at least 1 request"):
        split_requests(np.random.default_rng(0), [(0,)], 0)


# --- merging the requests' reports ---------------------------------------------------------


def _rep(verdict: str, n: int, mism: int = 0, compared: int | None = None, amb: int = 0) -> VerificationReport:
    c = n if compared is None else compared
    samples = [SampleResult(i, [0.0], [0.0] if i < c else None, (i >= mism) if i < c else None, i < amb)
               for i in range(n)]
    return VerificationReport(verdict, "why", "top1", "t", n, 0, c, mism, amb, {"floor": 0.0, "logit": 0.0,
                              "prob": 0.0}, {}, samples)  # type: ignore[arg-type]


def test_merged_verdicts_follow_the_single_request_rules() -> None:
    ok = merge_reports([(_rep("INTACT", 2), [0, 3]), (_rep("INTACT", 2), [1, 2])])
    assert ok.verdict == "INTACT" and ok.compared == 4 and [s.index for s in ok.samples] == [0, 1, 2, 3]
    bad = merge_reports([(_rep("INTACT", 2), [0, 1]), (_rep("TAMPERED", 2, mism=1), [2, 3])])
    assert bad.verdict == "TAMPERED" and bad.mismatches == 1 and "1 of 2 requests" in bad.reason
    cut = merge_reports([(_rep("INTACT", 2), [0, 1]), (_rep("INCONCLUSIVE", 2, compared=0), [2, 3])])
    assert cut.verdict == "INCONCLUSIVE" and "only 2 of 4" in cut.reason
    # a request of ambiguous samples alone is not a failure when another request decided
    amb = merge_reports([(_rep("INCONCLUSIVE", 1, amb=1), [0]), (_rep("INTACT", 1), [1])])
    assert amb.verdict == "INTACT"
    assert merge_reports([(_rep("INCONCLUSIVE", 1, amb=1), [0])]).verdict == "INCONCLUSIVE"


# --- the sequential test -------------------------------------------------------------------


def test_sequential_test_keeps_its_false_alarm_bound_under_the_null() -> None:
    params = SequentialParams(p0=1e-2, alpha=1e-2)
    rng = np.random.default_rng(0)
    alarms = 0
    for _ in range(300):
        state, _ = update(None, list(rng.random(2000) < params.p0), params)
        alarms += state.alarm
    assert alarms <= 8  # 3 expected at alpha = 1%; Ville's bound holds at every time at once


def test_sequential_test_alarms_on_a_trickle_and_estimates_the_share() -> None:
    params = SequentialParams()  # p0 = alpha = 1e-3
    rng = np.random.default_rng(1)
    state: SequentialState | None = None
    crossed_at = None
    for check in range(200):
        state, crossed = update(state, list(rng.random(4) < 0.10), params, slot=check)
        if crossed:
            crossed_at = check
    assert state is not None and crossed_at is not None and crossed_at < 24
    assert state.alarm and state.alarm_slot == crossed_at
    assert state.share is not None and 0.06 < state.share < 0.14
    assert 0.04 < state.share_lower < state.share
    one, _ = update(None, [True], params)
    assert not one.alarm  # one mismatching request is a TAMPERED check, not yet the sequential alarm
    assert SequentialState.from_dict(state.to_dict(), params) == state
    assert SequentialState.from_dict(state.to_dict(), SequentialParams(p0=1e-2)).requests == 0


def test_clopper_pearson_matches_the_beta_quantile() -> None:
    from scipy.stats import beta

    for k, n in [(1, 10), (5, 50), (17, 200), (50, 50)]:
        assert clopper_pearson_lower(k, n) == pytest.approx(beta.ppf(0.05, k, n - k + 1), abs=1e-9)
    assert clopper_pearson_lower(0, 10) == 0.0


# --- the monitor with fresh checks ---------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Any:
    m = digits_models()
    with FakeOip({"good": torch_model(m.model), "bad": torch_model(tampered_copy(m.model, 4))}, (1, 8, 8)) as f:
        yield f


def _fresh_config(tmp: Path, served: FakeOip, **endpoint: Any) -> Any:
    weights = tmp / "digits.pt"
    if not weights.exists():
        torch.save(digits_models().model.state_dict(), weights)
        (tmp / "owner_model.py").write_text("from veriprint.zoo import digits_mlp\n\n\ndef model():\n"
                                            "    return digits_mlp()\n")
    (tmp / "owner.key").write_bytes(bytes(range(32)))
    e = {"name": "good", "target": served.url("good"), "spec": "probs", "requests_per_check": 3,
         "fresh": {"model": "owner_model.py:model", "weights": "digits.pt", "data": "digits", "per_check": 8,
                   "horizon": "6h"}, **endpoint}
    return parse_config({"monitor": {"secret": "owner.key"}, "endpoints": [e]}, base=tmp)


def test_fresh_checks_never_send_a_row_twice_and_stop_when_the_seeds_are_spent(tmp_path: Path,
                                                                               served: FakeOip) -> None:
    cfg = _fresh_config(tmp_path, served, decoys={"data": "digits", "split": "train", "ratio": 1.0})
    rt = EndpointRuntime.load(cfg.endpoints[0], "endpoints[0]")
    assert rt.source is not None and rt.source.checks_available is not None
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    served.inputs.pop("good", None)
    outs = [run_check(rt, (i + 1) * HOUR_MS, store, cfg) for i in range(3)]
    assert [o.verdict for o in outs] == ["INTACT"] * 3, [o.reason for o in outs]
    rows = store.checks("good")
    assert {r.source for r in rows} == {"fresh"} and sorted(r.pool_start for r in rows) == [0, 1, 2]
    assert all(len(r.requests or []) == 3 for r in rows)
    assert all(r.decoys > 0 for r in rows)
    sent = served.inputs["good"]
    assert len(sent) == 9  # three requests a check
    flat = np.concatenate([x.reshape(len(x), -1) for x in sent])
    assert len({row.tobytes() for row in flat}) == len(flat)  # no row, query or decoy, sent twice
    left = rt.source.checks_available - 3
    for i in range(left):
        run_check(rt, (10 + i) * HOUR_MS, store, cfg)
    done = run_check(rt, 99 * HOUR_MS, store, cfg)
    assert done.verdict == "INCONCLUSIVE" and "fresh checks exhausted" in done.reason


def test_fresh_checks_catch_a_swap_and_the_sequential_test_confirms_it(tmp_path: Path, served: FakeOip) -> None:
    cfg = _fresh_config(tmp_path, served, name="bad", target=served.url("bad"))
    rt = EndpointRuntime.load(cfg.endpoints[0], "endpoints[0]")
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    outs = [run_check(rt, (i + 1) * HOUR_MS, store, cfg) for i in range(3)]
    assert all(o.verdict == "TAMPERED" for o in outs), [o.reason for o in outs]
    newest = store.checks("bad")[0]
    assert newest.sequential is not None and newest.sequential["requests"] == 9
    assert newest.sequential["alarm"] and newest.sequential["evidence"] >= 1000
    assert any("sequential test" in w for c in store.checks("bad") for w in c.warnings)


def test_fresh_endpoints_need_a_secret_and_decoys_apart_from_their_seeds(tmp_path: Path, served: FakeOip) -> None:
    (tmp_path / "digits.pt").write_bytes(b"")
    e = {"name": "x", "target": served.url("good"), "fresh": {"model": "digits.pt", "data": "digits"}}
    with pytest.raises(ConfigError, match="a secret for a fresh endpoint"):
        parse_config({"endpoints": [e]}, base=tmp_path)
    (tmp_path / "k").write_bytes(bytes(32))
    with pytest.raises(ConfigError, match="decoys from other natural inputs"):
        parse_config({"monitor": {"secret": "k"}, "endpoints": [{**e, "decoys": {"data": "digits"}}]}, base=tmp_path)
    with pytest.raises(ConfigError, match="either fingerprint or a \\[fresh\\] table"):
        parse_config({"monitor": {"secret": "k"}, "endpoints": [{**e, "fingerprint": "digits.pt"}]}, base=tmp_path)


def test_the_check_page_shows_the_labels_a_top1_check_compared(tmp_path: Path, served: FakeOip) -> None:
    from starlette.testclient import TestClient

    from veriprint.monitor.web import create_app

    cfg = _fresh_config(tmp_path, served, name="bad", target=served.url("bad"), spec="top1")
    rt = EndpointRuntime.load(cfg.endpoints[0], "endpoints[0]")
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    out = run_check(rt, HOUR_MS, store, cfg)
    assert out.verdict == "TAMPERED" and out.stored is not None
    row = store.check(out.stored.id)
    assert row is not None
    flipped = [s for s in row.samples if s["match"] is False]
    page = TestClient(create_app(store, cfg, {})).get(f"/checks/{out.stored.id}").text
    assert "label flipped" in page and ">differs<" not in page
    s = flipped[0]
    assert f"<td>{int(s['expected'][0])}</td><td>{int(s['observed'][0])}</td>" in page


def test_check_config_creates_nothing_and_once_reports_its_own_timed_out_check(tmp_path: Path) -> None:
    import subprocess

    from testkit.servers.monitor_kit import monitor_cmd, pool_files, write_config

    path, pub, _ = pool_files()
    m = digits_models()
    with FakeOip({"hang": torch_model(m.model)}, (1, 8, 8)) as fake:
        fake.faults["hang"] = "hang"
        db = tmp_path / "m.db"
        cfg = write_config(tmp_path / "monitor.toml", database=f"sqlite:///{db}", endpoints=[
            {"name": "hang", "target": fake.url("hang"), "fingerprint": path, "pubkey": pub,
             "check_timeout": "1s", "options": {"timeout": "30s", "retries": 0}}])
        r = subprocess.run(monitor_cmd(cfg, "--check-config"), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
        assert not db.exists()  # checking the file opens no database
        r = subprocess.run(monitor_cmd(cfg, "--once"), capture_output=True, text=True, timeout=120)
        fake.release.set()
    assert r.returncode == 2, r.stdout + r.stderr
    assert "hang: INCONCLUSIVE (the check took longer than check_timeout = 1 s)" in r.stdout, r.stdout
    assert "already checked" not in r.stdout
    row = Store(f"sqlite:///{db}").checks("hang")[0]
    assert row.pool_checks_left is not None and row.pool_checks_left >= 0  # the pool's state, not "no rotation"
    assert row.queries == 0 and any("may have been sent" in w for w in row.warnings)


def test_a_check_id_beyond_the_database_range_is_not_found(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from veriprint.monitor.web import create_app

    (tmp_path / "fp.vpf").write_bytes(b"x")
    cfg = parse_config({"endpoints": [{"name": "e", "target": "http://127.0.0.1:1/v2/models/m",
                                       "fingerprint": "fp.vpf"}]}, base=tmp_path)
    client = TestClient(create_app(Store(f"sqlite:///{tmp_path / 'm.db'}"), cfg, {}), raise_server_exceptions=False)
    for path in ("/checks/1234567890123456789012345", "/api/checks/1234567890123456789012345", "/checks/7"):
        assert client.get(path).status_code == 404, path


def test_a_probe_reports_the_newest_check_and_sends_nothing(tmp_path: Path, served: FakeOip) -> None:
    from starlette.testclient import TestClient

    from veriprint.monitor.web import create_app

    cfg = _fresh_config(tmp_path, served, name="bad", target=served.url("bad"))
    rt = EndpointRuntime.load(cfg.endpoints[0], "endpoints[0]")
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    client = TestClient(create_app(store, cfg, {}))
    before = client.get("/probe", params={"target": "bad"})
    assert before.status_code == 200 and "probe_success 0" in before.text
    assert "probe_duration_seconds" not in before.text  # no check yet
    assert run_check(rt, HOUR_MS, store, cfg).verdict == "TAMPERED"
    hits = served.hits["bad"]
    after = client.get("/probe", params={"target": "bad"}).text
    assert "probe_success 0" in after and 'veriprint_probe_verdict{endpoint="bad",verdict="TAMPERED"} 1' in after
    assert served.hits["bad"] == hits  # a scrape sends no query
    assert client.get("/probe", params={"target": "nope"}).status_code == 400


@pytest.mark.slow  # a monitor process, a check and a shutdown: ~15 s
def test_sigterm_stops_the_service_promptly_while_a_webhook_never_answers(tmp_path: Path) -> None:
    import socket
    import time

    from testkit.servers.monitor_kit import MonitorProcess, pool_files, write_config
    from testkit.servers.processes import free_port

    path, pub, _ = pool_files()
    m = digits_models()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections and never answers
    hook = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
    db = tmp_path / "m.db"
    with FakeOip({"bad": torch_model(tampered_copy(m.model, 4))}, (1, 8, 8)) as fake:
        cfg = write_config(tmp_path / "monitor.toml", database=f"sqlite:///{db}", endpoints=[
            {"name": "bad", "target": fake.url("bad"), "fingerprint": path, "pubkey": pub, "spec": "probs",
             "interval": 1, "jitter": 0, "on_pool_exhausted": "wrap"}],
            alerts=[{"name": "hook", "url": hook, "timeout": "60s", "attempts": 5}])
        mon = MonitorProcess(cfg, free_port(), tmp_path / "monitor.log").start()
        try:
            end = time.monotonic() + 60
            while time.monotonic() < end and not (db.exists() and Store(f"sqlite:///{db}").pending_alerts()):
                time.sleep(0.2)
            assert Store(f"sqlite:///{db}").pending_alerts() >= 1, mon.tail()
            time.sleep(1.0)  # the delivery thread is now waiting on the silent webhook
            t0 = time.monotonic()
            code = mon.stop(grace=30)
            took = time.monotonic() - t0
        finally:
            mon.kill()
            silent.close()
    assert code == 0 and took < 15, (code, took, mon.tail())
    assert Store(f"sqlite:///{db}").pending_alerts() >= 1  # still queued for the next start
