"""A deployment with other CPU kernels: the model served by a child process started with
ATEN_CPU_CAPABILITY=default (benchmarks/lib/kernel_worker.py), checked as the deployments
benchmark checks it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.lib.deployments import KERNELS, Deployment, Fleet, false_alarms, open_fleet
from benchmarks.lib.kernel_worker import KernelWorker
from veriprint.data import Dataset
from veriprint.fingerprint import Fingerprint, FingerprintConfig, make_fingerprint
from veriprint.pipeline.generate import GenerationConfig
from veriprint.verification.verify import verify

sys.path.insert(0, str(Path(__file__).parent))
from testkit.servers.digits import tampered_copy
from testkit.servers.required import missing


@pytest.fixture(scope="module")
def fingerprint(digits_model: nn.Module, digits_data: tuple[Dataset, Dataset]) -> Fingerprint:
    cfg = FingerprintConfig(bag=40, generation=GenerationConfig(steps=20))
    return make_fingerprint(digits_model.eval(), digits_data[1], cfg, progress=False)[0]


@pytest.fixture(scope="module")
def fleet(digits_model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    name, what, env, _ = KERNELS[0]
    assert env == {"ATEN_CPU_CAPABILITY": "default"}
    f = open_fleet(Deployment(name, what, None, kernels=env), [digits_model.eval(), tampered_copy(digits_model, 6)],
                   torch.zeros(2, 1, 8, 8), "digits", 10, tmp_path_factory.mktemp("kernels"))
    assert f is not None
    try:
        yield f
    finally:
        f.stop()


def test_the_child_runs_the_default_kernels_and_answers_within_the_floor(
        fleet: Fleet, fingerprint: Fingerprint, digits_data: tuple[Dataset, Dataset]) -> None:
    natural = digits_data[1].x[:100].numpy()
    tallies, dz = false_alarms({"fixed floor": fingerprint}, fleet.target(0), natural, checks=5, seed=0)
    assert all(t.alarms == 0 and t.intact == 5 for t in tallies["fixed floor"].values()), tallies
    assert 0 <= dz["fixed floor"] < fingerprint.noise.floor
    assert verify(fingerprint, fleet.target(0), spec="logits").verdict == "INTACT"
    r = verify(fingerprint, fleet.target(1), spec="logits")  # 6-bit weights behind the same kernels
    assert r.verdict == "TAMPERED", r.reason


def test_the_worker_says_which_kernels_it_runs(digits_model: nn.Module, tmp_path: Path) -> None:
    w = KernelWorker([digits_model.eval()], {"ATEN_CPU_CAPABILITY": "default"}, tmp_path / "m.pt")
    try:
        assert w.info["aten"] == "DEFAULT" and w.info["ATEN_CPU_CAPABILITY"] == "default"
        x = np.zeros((3, 1, 8, 8), np.float32)
        with torch.no_grad():
            here = digits_model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(w.run(0, x), here, rtol=0, atol=1e-5)
        with pytest.raises(IndexError, match=r"expected a model index in \[0, 1\), got 1"):
            w.run(1, x)
    finally:
        assert w.stop() == 0


def test_unknown_variables_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expected variables among .*got \['OMP_NUM_THREADS'\]"):
        KernelWorker([], {"OMP_NUM_THREADS": "2"}, tmp_path / "m.pt")


def test_shift_mode_compares_the_same_batches_here_and_there(tmp_path: Path) -> None:
    """--shift: the child at this process's own ATen level answers bit for bit as this process
    does; the default kernels stay far below the floor and flip no label."""
    import json
    import subprocess

    here = torch.backends.cpu.get_cpu_capability()
    control = {"AVX512": "ATen AVX-512", "AVX2": "ATen AVX2", "DEFAULT": "ATen default"}[here]
    raw = tmp_path / "s.json"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.studies.deployments", "--shift", "--quick", "--deployments",
                           "ATen default", control, "--out", str(tmp_path / "s.md"), "--json", str(raw)],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["deployment"]: r for r in json.loads(raw.read_text())["rows"]}
    assert rows[control]["dz_64"] == 0 and rows[control]["dz_1"] == 0, rows[control]
    low = rows["ATen default"]
    assert low["inputs"] == 359 and low["dz_64"] < 1e-4 and low["dz_1"] < 1e-4, low
    assert low["flips_64"] == 0 and low["flips_1"] == 0


def test_a_model_whose_class_was_loaded_from_a_file_is_served(tmp_path: Path) -> None:
    """The pretrained MNIST CNN's class lives in a module loaded from its package's file under
    a name no import finds; the child loads that file before it unpickles."""
    from veriprint.zoo import pretrained_mnist

    try:
        model = pretrained_mnist().eval()
    except ImportError as e:  # scripts/setup.sh installs its wheel: a failure under CI
        missing(f"{e}; run scripts/setup.sh")
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        here = model(x).numpy()
    w = KernelWorker([model], {"ATEN_CPU_CAPABILITY": "default"}, tmp_path / "m.pt")
    try:
        np.testing.assert_allclose(w.run(0, x.numpy()), here, rtol=0, atol=1e-4)
    finally:
        w.stop()
