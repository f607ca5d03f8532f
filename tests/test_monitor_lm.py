"""The monitor checks a language model as it checks a classifier: a local model folder, or an
OpenAI-compatible server on 127.0.0.1 (a fake answering from the same local model), through
the completions and the chat API; results stored, shown, counted; prompts rotated."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("starlette")

sys.path.insert(0, str(Path(__file__).parent))
from testkit.servers.fake_openai import FakeOpenAI
from testkit.servers.monitor_kit import write_config
from veriprint.errors import ConfigError
from veriprint.monitor.checks import run_check
from veriprint.monitor.config import load_config, parse_config
from veriprint.monitor.db import Store
from veriprint.monitor.service import Monitor


class LmFiles:
    def __init__(self, root: Path) -> None:
        import torch

        from veriprint.fingerprint.fileformat import generate_keypair
        from veriprint.lm.builder import LmFingerprintConfig, make_lm_fingerprint, shipped_seeds
        from veriprint.lm.model import tiny_lm

        self.root = root
        self.lm, other = tiny_lm(0), tiny_lm(1)
        for lm, folder in ((self.lm, root / "intact"), (other, root / "other")):
            lm.model.save_pretrained(folder)
            lm.tokenizer.save_pretrained(folder)
        priv, self.pub = generate_keypair(root / "owner.key")
        cfg = LmFingerprintConfig(prompts=8, steps=0, max_tokens=2)
        torch.manual_seed(0)
        seeds = shipped_seeds()[:12]
        self.fp = make_lm_fingerprint(self.lm, cfg, seeds=seeds).save(root / "lm.vpf", key=priv)
        chat = LmFingerprintConfig(prompts=4, steps=0, max_tokens=2, chat=True)
        self.chat_fp = make_lm_fingerprint(self.lm, chat, seeds=seeds).save(root / "lm-chat.vpf", key=priv)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> LmFiles:
    return LmFiles(tmp_path_factory.mktemp("monitor-lm"))


@pytest.fixture
def fake(files: LmFiles) -> Iterator[FakeOpenAI]:
    server = FakeOpenAI(files.lm, "tiny", pad=3000, token="sk-lm-test-token")
    yield server
    server.close()


def test_a_language_model_is_checked_stored_shown_and_counted(files: LmFiles, fake: FakeOpenAI, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from markupsafe import escape
    from starlette.testclient import TestClient

    from veriprint.monitor.web import create_app, shown_answer

    monkeypatch.setenv("LM_API_TOKEN", "Bearer sk-lm-test-token")
    api = {"timeout": "5s", "retries": 0, "auth_env": "LM_API_TOKEN", "max_response_bytes": "1M"}
    cfg_path = write_config(
        tmp_path / "monitor.toml", database=f"sqlite:///{tmp_path / 'm.db'}",
        defaults={"fingerprint": files.root / "lm.vpf", "pubkey": files.pub, "interval": "1h", "jitter": 0,
                  "pairs_per_check": 2, "requests_per_check": 2},
        endpoints=[{"name": "local", "target": files.root / "intact", "spec": "text"},
                   {"name": "sibling", "target": files.root / "other", "spec": "logprobs:3"},
                   {"name": "api", "target": fake.url, "served_model": "tiny", "spec": "logprobs:3", "options": api},
                   {"name": "listed", "target": fake.url, "options": api},  # the model name from /v1/models
                   {"name": "chat", "target": fake.url, "fingerprint": files.root / "lm-chat.vpf", "api": "chat",
                    "spec": "logprobs:2", "options": api},
                   {"name": "small", "target": fake.url, "served_model": "tiny",
                    "options": {**api, "max_response_bytes": "2K"}}])
    config = load_config(cfg_path)
    assert {e.kind for e in config.endpoints} == {"lm"} and config.endpoint("listed").spec == "top1-token"
    store = Store(config.database_url())
    mon = Monitor(config, store)
    outcomes = {o.endpoint: o for o in mon.run_once()}
    got = {name: o.verdict for name, o in outcomes.items()}
    assert got == {"local": "INTACT", "sibling": "TAMPERED", "api": "INTACT", "listed": "INTACT", "chat": "INTACT",
                   "small": "INCONCLUSIVE"}, {n: o.reason for n, o in outcomes.items()}
    # the size limit reached the target: the padded answer was refused, naming the limit
    assert "at most 2048 bytes" in outcomes["small"].reason
    assert "/v1/chat/completions" in fake.paths() and "/v1/completions" in fake.paths()
    assert all(body["model"] == "tiny" for _, body in fake.requests)
    c = store.checks("api")[0]
    assert (c.queries, c.compared, c.spec, c.source) == (2, 2, "logprobs:3", "pool")
    assert set(c.tolerance) == {"floor", "logprob"}
    assert len(c.requests or []) == 2 and c.sequential is not None
    s = c.samples[0]
    assert s["prompt"] == files.fp.prompts[s["index"]] and s["match"] is True
    assert isinstance(s["expected"], list) and isinstance(s["expected"][0], dict)  # top logprobs per token
    bad = store.checks("sibling")[0]
    assert bad.mismatches >= 1 and any(x["match"] is False and x["observed"] != x["expected"] for x in bad.samples)
    # the dashboard's check page shows the prompts with expected and answered tokens, no images
    client = TestClient(create_app(store, config, {}, mon.metrics.registry))
    page = client.get(f"/checks/{bad.id}").text
    assert 'id="prompts"' in page and "differs" in page and ".png" not in page
    flipped = next(x for x in bad.samples if x["match"] is False)
    assert str(escape(flipped["prompt"])) in page and str(escape(shown_answer(flipped["observed"]))) in page
    local = store.checks("local")[0]
    page = client.get(f"/checks/{local.id}").text
    assert "Expected" in page and "Answered" in page
    assert str(escape(repr(files.fp.meta["text"][local.samples[0]["index"]]))) in page  # spec text: the text
    # counted in the metrics like a classifier's check
    text = client.get("/metrics").text
    assert 'veriprint_monitor_checks_total{endpoint="sibling",verdict="TAMPERED"} 1.0' in text
    assert 'veriprint_monitor_endpoint_verdict{endpoint="local",verdict="INTACT"} 1.0' in text
    assert 'veriprint_monitor_queries_total{endpoint="api",kind="fingerprint"} 2.0' in text
    assert f'veriprint_monitor_pool_checks_left{{endpoint="local"}} {(len(files.fp) - 2) // 2}.0' in text
    assert 'veriprint_monitor_check_duration_seconds_count{endpoint="chat"} 1.0' in text
    assert "sk-lm-test-token" not in text + client.get("/api/endpoints").text
    mon.dispatcher.stop()


def test_prompts_rotate_as_a_pool_and_a_spent_pool_is_refused(files: LmFiles, tmp_path: Path) -> None:
    per = len(files.fp) // 2  # two checks per pass
    cfg = parse_config({"monitor": {"database": f"sqlite:///{tmp_path / 'r.db'}"}, "endpoints": [
        {"name": "local", "target": str(files.root / "intact"), "fingerprint": str(files.root / "lm.vpf"),
         "interval": 1, "pairs_per_check": per, "requests_per_check": 2}]}, base=tmp_path)
    mon = Monitor(cfg)
    rt = mon.runtimes["local"]
    checks = [run_check(rt, slot, mon.store, cfg) for slot in (1000, 2000, 3000)]
    assert [c.verdict for c in checks] == ["INTACT", "INTACT", "INCONCLUSIVE"]
    assert "query pool exhausted" in checks[2].reason and "--prompts 64" in checks[2].reason
    stored = sorted(mon.store.checks("local"), key=lambda c: c.slot)
    for a, b in itertools.pairwise(stored[:2]):
        assert not set(a.sample_indices) & set(b.sample_indices), "consecutive checks repeated a prompt"
    assert [len(c.sample_indices) for c in stored] == [per, per, 0]
    assert stored[0].pool_checks_left == 1


@pytest.mark.parametrize(("change", "match"), [
    ({"spec": "top1"}, r"endpoints\[0\]\.spec: expected a language model's spec: top1-token, top1-token:N, "
                       r"logprobs:K or text, got 'top1'"),
    ({"api": "responses"}, r"endpoints\[0\]\.api: expected 'completions' or 'chat', got 'responses'"),
    ({"options": {"output": "probs"}}, r"endpoints\[0\]\.options\.output: expected a target option of a language "
                                       r"model \(timeout, .*max_batch\), got an option of a classifier's target"),
    ({"decoys": {"data": "digits"}}, r"endpoints\[0\]\.decoys: expected no decoys for a language model's"),
])
def test_a_language_models_endpoint_refuses_what_does_not_apply(files: LmFiles, change: dict[str, Any],
                                                               match: str) -> None:
    e = {"name": "lm", "target": "http://127.0.0.1:1/v1", "fingerprint": str(files.root / "lm.vpf"), **change}
    with pytest.raises(ConfigError, match=match):
        parse_config({"endpoints": [e]}, base=files.root)


def test_a_classifiers_endpoint_refuses_a_language_models_keys(files: LmFiles, tmp_path: Path) -> None:
    (tmp_path / "fp.vpf").write_bytes(b"x")
    for change in ({"api": "chat"}, {"served_model": "m"}, {"spec": "top1-token"}):
        e = {"name": "cnn", "target": "http://127.0.0.1:1/v2/models/m", "fingerprint": "fp.vpf", **change}
        with pytest.raises(ConfigError, match=r"endpoints\[0\]\.(api|served_model|spec): expected"):
            parse_config({"endpoints": [e]}, base=tmp_path)


def test_without_the_file_to_read_a_language_models_spec_says_what_it_is(tmp_path: Path) -> None:
    e = {"name": "lm", "target": "http://127.0.0.1:1/v1", "fingerprint": "absent.vpf", "spec": "logprobs:5"}
    cfg = parse_config({"endpoints": [e]}, base=tmp_path, check_files=False)
    assert (cfg.endpoints[0].kind, cfg.endpoints[0].spec) == ("lm", "logprobs:5")
    e["spec"] = "probs"
    assert parse_config({"endpoints": [e]}, base=tmp_path, check_files=False).endpoints[0].kind == "classifier"
