"""A dishonest provider behind a real Seldon MLServer on 127.0.0.1.

The server answers honestly, then swaps in a tampered copy and keeps answering what it saw
while honest from memory (replay). Over real HTTP: the default fingerprint says INTACT
after the swap (the evasion is real), a check made fresh after the swap says TAMPERED, and
the same tampered copy without a policy is caught by both. Without .venv-serving the test
skips, except in CI (CI=true) where it fails.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from veriprint.targets.oip import OipTarget
from veriprint.verification.queries.fresh import FreshConfig, FreshQueries
from veriprint.verification.verify import verify

sys.path.insert(0, str(Path(__file__).parent))
from testkit.servers.digits import digits_fingerprint, digits_models, tampered_copy
from testkit.servers.mlserver import MLServer, ServedModel, require_mlserver

pytestmark = pytest.mark.slow  # one server start (~15 s) and a short training run

SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass
class Adversary:
    server: MLServer
    swap: Path


@pytest.fixture(scope="module")
def adversary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adversary]:
    require_mlserver()
    m = digits_models()
    d = tmp_path_factory.mktemp("adversary")
    x = m.test.x[:2]
    torch.jit.trace(m.model, x).save(str(d / "intact.pt"))
    torch.jit.trace(tampered_copy(m.model, 4), x).save(str(d / "tampered.pt"))
    swap = d / "swap"

    def served(name: str, policy: str) -> ServedModel:
        return ServedModel(name, runtime="adversary_runtime.AdversaryRuntime", parameters={
            "src": str(SRC), "intact": str(d / "intact.pt"), "served": str(d / "tampered.pt"),
            "policy": policy, "swap": str(swap)})

    server = MLServer(d / "repo", [served("replay", "replay"), served("plain", "")])
    server.start()
    try:
        yield Adversary(server, swap)
    finally:
        code = server.stop()
    assert code in (0, -15), f"MLServer did not stop cleanly (exit {code}):\n{server.tail()}"


def test_replay_behind_a_real_server_evades_a_repeated_fingerprint_but_not_a_fresh_check(
        adversary: Adversary) -> None:
    fp = digits_fingerprint()
    m = digits_models()
    replay = OipTarget(adversary.server.url("replay"), classes=10)
    plain = OipTarget(adversary.server.url("plain"), classes=10)
    honest = verify(fp, replay, spec="top1")
    assert honest.verdict == "INTACT", honest.reason
    assert verify(fp, plain, spec="top1").verdict == "INTACT"  # before the swap both are honest
    adversary.swap.touch()
    assert verify(fp, plain, spec="top1").verdict == "TAMPERED"
    evaded = verify(fp, replay, spec="top1")
    assert evaded.verdict == "INTACT", evaded.reason  # every query was seen: answered from memory
    fresh = FreshQueries(m.model, m.test, b"a test owner's secret, 32 bytes!",
                         FreshConfig(per_check=8, horizon_checks=4), name="replay")
    caught = [verify(fresh.make(p), replay, spec="top1").verdict for p in range(2)]
    assert "TAMPERED" in caught, caught  # 8 samples a check: not every check sees 4-bit weights
