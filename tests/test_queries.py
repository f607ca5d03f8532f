"""Keyed draws, fresh checks that never repeat a query, and the BatchNorm-recalibration tamper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from veriprint.data import Dataset
from veriprint.errors import ConfigError
from veriprint.fingerprint.fileformat import generate_keypair
from veriprint.verification.queries import keyed_int, keyed_permutation, keyed_rng, load_secret
from veriprint.verification.queries.fresh import FreshConfig, FreshQueries
from veriprint.verification.queries.source import CheckSource, SourceExhausted
from veriprint.verification.verify import verify

SECRET = b"0123456789abcdef-test-secret"


def test_keyed_draws_repeat_with_the_secret_and_differ_without_it() -> None:
    assert keyed_int(SECRET, "decoys", "ep", 1) == keyed_int(SECRET, "decoys", "ep", 1)
    assert keyed_int(SECRET, "decoys", "ep", 1) != keyed_int(SECRET, "decoys", "ep", 2)
    assert keyed_int(SECRET, "decoys", "ep", 1) != keyed_int(SECRET + b"x", "decoys", "ep", 1)
    a = keyed_permutation(SECRET, 50, "order", 3)
    assert sorted(a.tolist()) == list(range(50))
    assert (a == keyed_permutation(SECRET, 50, "order", 3)).all()
    assert not (a == keyed_permutation(SECRET, 50, "order", 4)).all()
    assert keyed_rng(SECRET, "x").random() == keyed_rng(SECRET, "x").random()
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        keyed_int(b"short", "x")


def test_secret_from_a_file_or_an_ed25519_key_never_in_the_message(tmp_path: Path) -> None:
    raw = tmp_path / "schedule.key"
    raw.write_bytes(b"s3cret-bytes-0123456789")
    s1 = load_secret(raw)
    assert len(s1) == 32 and s1 != raw.read_bytes()  # a derived subkey, not the file itself
    priv, _ = generate_keypair(tmp_path / "owner.key")
    s2 = load_secret(priv)
    assert len(s2) == 32 and s2 == load_secret(priv)
    short = tmp_path / "short"
    short.write_bytes(b"tiny-secret")
    with pytest.raises(ConfigError) as e:
        load_secret(short)
    assert "tiny-secret" not in str(e.value) and "16 bytes" in str(e.value)
    with pytest.raises(ConfigError, match="expected a secret key file"):
        load_secret(tmp_path / "missing")


@pytest.fixture(scope="module")
def fresh_kit(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, Dataset]:
    model = request.getfixturevalue("digits_model")
    train, _ = request.getfixturevalue("digits_data")
    return model, train


@pytest.mark.parametrize("kind", ["boundary", "twins", "natural"])
def test_fresh_checks_never_share_a_seed_or_a_query(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "twins":  # the 8x8 digits' 17 grey levels are too coarse for twins: the CNN on 28x28
        model = request.getfixturevalue("fashion_model")
        data = request.getfixturevalue("fashion_data")[0]
        cfg = FreshConfig(kind="twins", per_check=4, horizon_checks=100, steps=20)
    else:
        model, data = request.getfixturevalue("fresh_kit")
        cfg = FreshConfig(kind=kind, per_check=4, horizon_checks=20, steps=20, eps=2 / 16)  # type: ignore[arg-type]
    fq = FreshQueries(model, data, SECRET, cfg, name="ep")
    assert isinstance(fq, CheckSource)
    slices = [set(fq.seeds_of(p).tolist()) for p in range(fq.checks_available or 0)]
    assert fq.checks_available is not None and fq.checks_available >= cfg.horizon_checks
    assert all(len(s) == fq.seeds_per_check for s in slices)
    assert len(set().union(*slices)) == sum(len(s) for s in slices)  # disjoint: no seed twice
    fps = [fq.make(p) for p in range(3)]
    rows = [r.tobytes() for fp in fps for r in fp.samples.numpy()]
    assert len(rows) == len(set(rows))  # no query twice
    for p, fp in enumerate(fps):
        assert len(fp) == 4 and fp.meta["fresh"]["position"] == p
        assert verify(fp, model, spec="top1").verdict == "INTACT"
        if kind == "twins":
            assert fp.meta["selection"]["pairs"] == 2
        if kind == "natural":  # the natural inputs themselves, from this check's slice only
            x = data.x[fq.seeds_of(p)].reshape(fq.seeds_per_check, -1)
            for row in fp.samples.reshape(len(fp), -1):
                assert (x == row).all(dim=1).any()
    # another secret or another endpoint: other slices
    other = FreshQueries(model, data, SECRET, cfg, name="other")
    assert set(other.seeds_of(0).tolist()) != slices[0]


def test_fresh_checks_refuse_to_repeat(fresh_kit: tuple[torch.nn.Module, Dataset]) -> None:
    model, data = fresh_kit
    fq = FreshQueries(model, data, SECRET, FreshConfig(kind="natural", per_check=4, horizon_checks=50), name="ep")
    n = fq.checks_available
    assert n is not None
    with pytest.raises(SourceExhausted, match="seed slices was used"):
        fq.make(n)
    with pytest.raises(ConfigError, match=r"expected at least \d+ natural inputs"):
        FreshQueries(model, data, SECRET, FreshConfig(per_check=16, horizon_checks=720))
    with pytest.raises(ConfigError, match="kind"):
        FreshConfig(kind="other")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="even"):
        FreshConfig(kind="twins", per_check=5)


def test_fresh_natural_checks_catch_a_small_change_under_probs(fresh_kit: tuple[torch.nn.Module, Dataset]) -> None:
    from veriprint.tamper import WeightNoiseConfig, tamper

    model, data = fresh_kit
    fq = FreshQueries(model, data, SECRET, FreshConfig(kind="natural", per_check=8, horizon_checks=20), name="ep")
    fp = fq.make(0)
    bad = tamper(model, WeightNoiseConfig(1e-3), data=data, progress=False).model
    assert verify(fp, model, spec="probs").verdict == "INTACT"
    assert verify(fp, bad, spec="probs").verdict == "TAMPERED"


def test_bn_recalibration_changes_statistics_only() -> None:
    from veriprint.tamper import BnRecalibrateConfig, tamper
    from veriprint.zoo import fashion_cnn

    torch.manual_seed(0)
    model = fashion_cnn().eval()
    x = torch.rand(256, 1, 28, 28)
    data = Dataset(x, torch.zeros(256, dtype=torch.long), name="random")
    res = tamper(model, BnRecalibrateConfig(batches=2, batch_size=32), data=data, progress=False)
    new = dict(res.model.named_buffers())
    old = dict(model.named_buffers())
    assert not torch.equal(new["1.running_mean"], old["1.running_mean"])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), res.model.parameters(), strict=True))
    assert not res.model.training
    with pytest.raises(ValueError, match="BatchNorm"):
        from veriprint.zoo import digits_mlp

        tamper(digits_mlp(), BnRecalibrateConfig(), data=Dataset(torch.rand(64, 64), torch.zeros(64, dtype=torch.long)),
               progress=False)
    assert np.isfinite(res.report.clean_accuracy_after)


def test_cli_decoys_differ_between_runs_unless_seeded(tmp_path: Path, digits_fingerprint: object,
                                                      digits_model: torch.nn.Module,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from veriprint.cli.main import main
    from veriprint.fingerprint import Fingerprint
    from veriprint.models import save_weights
    from veriprint.targets.decoys import DecoyTarget

    assert isinstance(digits_fingerprint, Fingerprint)
    digits_fingerprint.save(tmp_path / "fp.vpf")
    save_weights(digits_model, tmp_path / "w.safetensors")
    sent: list[bytes] = []
    real = DecoyTarget.query

    def record(self: DecoyTarget, batch):  # type: ignore[no-untyped-def]
        out = real(self, batch)
        sent.append(self._rng.bit_generator.state["state"]["state"].to_bytes(16, "big"))
        return out

    monkeypatch.setattr(DecoyTarget, "query", record)
    args = ["verify", str(tmp_path / "fp.vpf"), "--target", "veriprint.zoo:digits_mlp", "--weights",
            str(tmp_path / "w.safetensors"), "--decoys", "8", "--decoy-data", "digits"]
    for _ in range(2):
        assert main(args) == 0
    assert len(sent) == 2 and sent[0] != sent[1]  # a new mix on every run
    sent.clear()
    for _ in range(2):
        assert main([*args, "--decoy-seed", "5"]) == 0
    assert len(sent) == 2 and sent[0] == sent[1]  # repeatable only when asked
