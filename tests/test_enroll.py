"""Enrollment (trust on deploy): keep what the deployment answers stably, refuse what disagrees.

The pool is the shipped demo fingerprint (the Fashion-MNIST CNN, 4 twin pairs with margins
near 2e-4), so no test here generates samples.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from veriprint.cli.main import main
from veriprint.demo import load_shipped
from veriprint.enrollment import EnrollmentError, enroll
from veriprint.errors import ConfigError
from veriprint.fingerprint import Fingerprint
from veriprint.models import load_model
from veriprint.targets import CallableTarget
from veriprint.verification.verify import verify


class Bf16(nn.Module):
    """The model run under CPU bfloat16 autocast: a deployment whose numerics differ."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(x).float()


def noised(model: nn.Module, scale: float, seed: int = 1) -> nn.Module:
    """A copy with every weight scaled by ``1 + scale * N(0, 1)``: another model."""
    bad = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bad.parameters():
            p.mul_(1 + scale * torch.randn(p.shape, generator=g))
    return bad


@pytest.fixture(scope="module")
def demo() -> tuple[nn.Module, Fingerprint, Path]:
    s = load_shipped()
    return load_model(s.factory, weights=s.weights), Fingerprint.load(s.fingerprint), s.fingerprint


class FlakyOnSome:
    """A deployment that answers the model's logits exactly, except on the pool samples
    ``flaky``, where each call adds fresh noise (enough to flip their labels). The pool's
    answers are computed once and looked up, so hundreds of checks stay fast."""

    def __init__(self, model: nn.Module, pool: Fingerprint, flaky: list[int], sigma: float, seed: int = 0,
                 labels: bool = False) -> None:
        self.model, self.sigma, self.labels = model, sigma, labels
        self.rows = pool.samples.flatten(1).numpy()
        with torch.inference_mode():
            self.z = model(pool.samples).double().numpy()
        self.flaky = np.zeros(len(pool), dtype=bool)
        self.flaky[flaky] = True
        self.rng = np.random.default_rng(seed)
        self.__name__ = "flaky"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        match = (x.reshape(len(x), 1, -1) == self.rows[None]).all(axis=2)
        assert match.any(axis=1).all(), "this fake only answers the pool's samples"
        idx = match.argmax(axis=1)
        z = self.z[idx].copy()
        hit = self.flaky[idx]
        z[hit] += self.rng.normal(0.0, self.sigma, size=z[hit].shape)
        return z.argmax(1) if self.labels else z


def test_local_model_enrolls_whole_and_verifies(demo: tuple[nn.Module, Fingerprint, Path]) -> None:
    model, pool, _ = demo
    rep = enroll(pool, model, spec="top1", model=model, keep=8)
    assert (rep.kept, rep.kept_pairs) == (8, 4), rep.summary()
    assert rep.queries == rep.rounds * len(pool) and rep.batch_sizes[:3] == [1, 7, 8]
    info = rep.fingerprint.meta["enrollment"]
    assert info["kept"] == 8 and info["dropped"] == 0 and info["pool"]["sha256"] == pool.sha256
    assert verify(rep.fingerprint, model, spec="top1").verdict == "INTACT"
    # labels only: the local logits stay, the labels agree with them, the tolerance is carried
    labels = CallableTarget(lambda x: model(torch.from_numpy(x)).argmax(1), output="labels")
    rep = enroll(pool, labels, spec="top1", tolerance=5e-5, rounds=8)
    assert rep.kept == 8 and rep.fingerprint.meta["enrollment"]["expected_from"].startswith("local model")
    assert rep.fingerprint.noise.declared == 5e-5
    torch.testing.assert_close(rep.fingerprint.expected, pool.expected)
    assert verify(rep.fingerprint, labels, spec="top1", max_batch=3).verdict == "INTACT"


def test_bfloat16_deployment_enrolls_and_never_false_alarms(demo: tuple[nn.Module, Fingerprint, Path],
                                                            tmp_path: Path) -> None:
    model, pool, _ = demo
    served = Bf16(model)
    # the float32 fingerprint false-alarms on this deployment: it would need a tolerance
    assert verify(pool, served, spec="top1").verdict == "TAMPERED"
    with pytest.raises(EnrollmentError, match=r"disagrees with the local fingerprint .* on \d of 8"):
        enroll(pool, served, spec="top1", model=model)
    rep = enroll(pool, served, spec="top1", model=model, tolerance=0.1)
    assert rep.kept >= 4 and rep.kept_pairs >= 2, rep.summary()
    assert all(c.why in ("kept", "undecided", "twin dropped", "not selected") for c in rep.candidates)
    assert rep.fingerprint.meta["enrollment"]["expected_from"] == "endpoint"
    key = tmp_path / "owner.key"
    assert main(["keygen", "--out", str(key)]) == 0
    path = tmp_path / "enrolled.vpf"
    rep.fingerprint.save(path, key=key)
    fp = Fingerprint.load(path, pubkey=f"{key}.pub")
    for mb in (None, 1, 2, 3, 5) * 4:
        r = verify(fp, served, spec="top1", max_batch=mb)
        assert r.verdict == "INTACT" and r.compared == len(fp), r.reason
    for scale in (0.01, 0.05):
        assert verify(fp, Bf16(noised(model, scale)), spec="top1").verdict == "TAMPERED"


def test_other_model_is_refused(demo: tuple[nn.Module, Fingerprint, Path]) -> None:
    model, pool, _ = demo
    other = noised(model, 0.01)
    for target in (other, Bf16(other)):
        with pytest.raises(EnrollmentError, match="it may not serve this model") as e:
            enroll(pool, target, spec="top1", model=model, tolerance=0.1)
        assert e.value.details["disagreeing"]
    # labels only, the tolerance wider than every margin: nothing can be checked
    with pytest.raises(EnrollmentError, match="cannot check that the endpoint serves this model"):
        enroll(pool, CallableTarget(lambda x: model(torch.from_numpy(x)).argmax(1), output="labels"),
               spec="top1", tolerance=0.1)
    with pytest.raises(ConfigError, match="expected the local model the pool was made from"):
        enroll(pool, model, model=other)


def test_noisy_deployment_keeps_only_stable_pairs(demo: tuple[nn.Module, Fingerprint, Path]) -> None:
    model, pool, _ = demo
    fake = CallableTarget(FlakyOnSome(model, pool, flaky=[2, 5], sigma=1e-3))
    rep = enroll(pool, fake, spec="top1", model=model, tolerance=0.01, rounds=8)
    why = {c.index: c.why for c in rep.candidates}
    assert why[2] == "unstable" and why[5] == "unstable", why
    assert why[3] == "twin dropped" and why[4] == "twin dropped", why
    assert (rep.kept, rep.kept_pairs) == (4, 2)
    verdicts = [verify(rep.fingerprint, fake, spec="top1", max_batch=1 + i % 4).verdict for i in range(200)]
    assert verdicts.count("INTACT") == 200
    # without a tolerance the flips are disagreements on decided samples: refused
    with pytest.raises(EnrollmentError, match="disagrees"):
        enroll(pool, fake, spec="top1", model=model)
    labels = CallableTarget(FlakyOnSome(model, pool, flaky=[2, 5], sigma=1e-3, labels=True), output="labels")
    with pytest.raises(EnrollmentError, match="disagrees"):
        enroll(pool, labels, spec="top1")


def test_noisy_http_deployment_and_a_failing_one(demo: tuple[nn.Module, Fingerprint, Path]) -> None:
    """The same through an in-process OIP server on 127.0.0.1: only stable pairs kept, no false
    alarm; a server that starts failing refuses the enrollment."""
    sys.path.insert(0, str(Path(__file__).parent))
    from testkit.servers.fake_oip import FakeOip

    model, pool, _ = demo
    with FakeOip({"cnn": FlakyOnSome(model, pool, flaky=[0], sigma=1e-3, seed=3)}, (1, 28, 28)) as fake:
        url = fake.url("cnn")
        rep = enroll(pool, url, spec="top1", model=model, tolerance=0.01, max_batch=4, retries=0)
        assert {c.index: c.why for c in rep.candidates if not c.kept} == {0: "unstable", 1: "twin dropped"}
        assert rep.kept == 6 and "oip:http://127.0.0.1" in rep.fingerprint.meta["enrollment"]["target"]
        verdicts = [verify(rep.fingerprint, url, spec="top1", max_batch=1 + i % 3).verdict for i in range(50)]
        assert verdicts.count("INTACT") == 50
        fake.faults["cnn"] = "500"
        with pytest.raises(EnrollmentError, match=r"the target failed in round 1 of 6 .*HTTP 500"):
            enroll(pool, url, spec="top1", retries=0)


def test_probs_spec_stores_the_endpoint_answers(demo: tuple[nn.Module, Fingerprint, Path]) -> None:
    model, pool, _ = demo
    served = Bf16(model)
    rep = enroll(pool, served, spec="probs", tolerance=0.1, prob_tolerance=0.05, keep=4)
    assert rep.kept == 4 and rep.fingerprint.meta["enrollment"]["reselected_by"] == "pool order"
    for mb in (None, 1, 3):
        assert verify(rep.fingerprint, served, spec="probs", max_batch=mb).verdict == "INTACT"
    assert verify(rep.fingerprint, noised(model, 0.01), spec="probs").verdict == "TAMPERED"


def test_bad_arguments_are_refused(demo: tuple[nn.Module, Fingerprint, Path]) -> None:
    model, pool, _ = demo
    for kw, msg in (({"rounds": 1}, "rounds"), ({"keep": 0}, "keep"), ({"batch_sizes": ()}, "batch size"),
                    ({"tolerance": -1.0}, "tolerance"), ({"spec": "top7"}, "unknown output spec")):
        with pytest.raises(ConfigError, match=msg):
            enroll(pool, model, **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs more than this target's 'labels'"):
        enroll(pool, CallableTarget(lambda x: np.zeros(len(x), np.int64), output="labels"), spec="probs")
    with pytest.raises(ConfigError, match="every replica to answer in the same form"):
        enroll(pool, [model, CallableTarget(lambda x: model(torch.from_numpy(x)).argmax(1), output="labels")])
    two = CallableTarget(lambda x: model(torch.from_numpy(x)).topk(2).indices, output="topk")
    with pytest.raises(EnrollmentError, match="cannot be compared under spec topk:3"):
        enroll(pool, two, spec="topk:3")
    broken = CallableTarget(lambda x: np.full((len(x), 10), np.nan), output="logits")
    with pytest.raises(EnrollmentError, match=r"the target failed in round 1 of 6 .*batch of 1"):
        enroll(pool, broken)


def test_cli_enroll_then_verify(demo: tuple[nn.Module, Fingerprint, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    _, _, pool_path = demo
    s = load_shipped()
    weights = str(s.weights)
    out, report = tmp_path / "enrolled.vpf", tmp_path / "enroll.json"
    code = main(["enroll", str(pool_path), "--target", s.factory, "--target-weights", weights,
                 "--model", s.factory, "--weights", weights, "--spec", "top1", "--keep", "4",
                 "--out", str(out), "--report", str(report)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "enrolled: 4 queries kept (2 twin pairs)" in text and f"wrote {out}" in text
    data = json.loads(report.read_text())
    assert data["kept"] == 4 and len(data["candidates"]) == 8
    assert main(["verify", str(out), "--target", s.factory, "--weights", weights]) == 0
    assert main(["inspect", str(out)]) == 0
    assert "enrolled: " in capsys.readouterr().out
    # a refusal: exit 2, one line naming why, nothing written
    bad = tmp_path / "bad.vpf"
    code = main(["enroll", str(pool_path), "--target", "veriprint.zoo:fashion_cnn", "--out", str(bad),
                 "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 2 and not bad.exists()
    assert err.startswith("error: enrollment refused: the endpoint disagrees") and err.count("\n") == 1
    assert json.loads(report.read_text())["disagreeing"] == list(range(8))
    assert main(["enroll", str(pool_path), "--target", s.factory, "--rounds", "1", "--out", str(bad)]) == 2
    assert "expected rounds to be a whole number >= 2, got 1" in capsys.readouterr().err
