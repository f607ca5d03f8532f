"""The deployment-noise benchmark: its measures, and prepare + run end to end on the CPU.

The run mode is meant for a GPU machine where veriprint is not installed and cryptography,
dask and tqdm may be missing; the end-to-end test runs it on the CPU in a fresh interpreter
with those modules blocked. Variants that need CUDA must be skipped with a note, and the
float32 CPU variant must verify the CPU-made fingerprint INTACT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmarks.studies.deployment_noise as dn
from benchmarks.lib import ROOT


def test_deviation_counts_changed_labels_and_decided_ones() -> None:
    z32 = np.array([[2.0, 0.0, 0.0], [1.0, 0.99, 0.0], [0.0, 3.0, 1.0]], dtype=np.float32)
    z64 = z32.astype(np.float64)
    got = z32.copy()
    got[1] = [0.98, 1.0, 0.0]  # label flips, CPU margin 0.01
    got[2, 2] = 1.5
    d = dn.deviation(got, z32, z64, floor=0.1)
    assert d["n"] == 3
    assert d["max_logit"] == pytest.approx(0.5)
    assert d["max_logit_f64"] == pytest.approx(0.5)
    assert d["top1_changed"] == 1
    assert d["top1_changed_decided"] == 0  # the flipped sample sits inside the floor
    assert dn.deviation(got, z32, z64, floor=0.005)["top1_changed_decided"] == 1
    assert dn.deviation(z32, z32, z64, floor=0.1)["max_logit"] == 0.0


def test_needed_tolerances() -> None:
    expected = np.array([[1.0, 0.6, 0.0], [0.0, 2.0, 0.0]])
    got = np.array([[0.7, 0.8, 0.0], [0.0, 2.0, 0.05]])
    need = dn.needed_tolerances(got, expected)
    assert need["logit"] == pytest.approx(0.3)
    assert need["top1"] == pytest.approx(0.2)  # half the CPU margin (0.4) of the flipped sample
    assert need["prob"] > 0
    assert dn.needed_tolerances(expected, expected) == {"logit": 0.0, "prob": 0.0, "top1": 0.0}


def test_forward_batches_and_precision() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    x = torch.rand(10, 1, 4, 4).numpy()
    calls: list[int] = []
    model.register_forward_pre_hook(lambda _m, a: calls.append(len(a[0])))
    by_variant = {v.name: v for v in dn.VARIANTS}
    full = dn.make_forward(model, by_variant["fp32"], "cpu")(x)
    one = dn.make_forward(model, by_variant["batch=1"], "cpu")
    calls.clear()
    out_one = one(x)
    assert calls == [1] * 10
    assert out_one.dtype == np.float32 and out_one.shape == (10, 4)
    assert np.abs(out_one - full).max() < 1e-5
    bf16 = dn.make_forward(model, by_variant["bfloat16"], "cpu")(x)
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - full).max() > 0  # really ran in bfloat16


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dn") / "bundle"
    threads = torch.get_num_threads()
    try:
        assert dn.main(["--prepare", str(out), "--models", "digits-mlp", "--bag", "40", "--steps", "20",
                        "--natural", "60", "--epochs", "3", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.slow
def test_bundle_is_self_contained(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == dn.BUNDLE_FORMAT
    (entry,) = manifest["models"]
    for key in ("weights", "fingerprint", "arrays"):
        assert (bundle / entry[key]).is_file()
    with np.load(bundle / entry["arrays"]) as z:
        assert z["natural_x"].shape == (60, 1, 8, 8)
        assert z["natural_z32"].shape == z["natural_z64"].shape == (60, 10)
        assert z["bag_x"].shape[0] == z["bag_z32"].shape[0] == 40
        assert z["fingerprint_z32"].shape == (entry["samples"], 10)
        assert np.abs(z["natural_z32"] - z["natural_z64"]).max() < 1e-4
    assert sum(f.stat().st_size for f in bundle.iterdir()) < 1_000_000


@pytest.mark.slow
def test_run_on_cpu_without_optional_modules(bundle: Path, tmp_path: Path) -> None:
    code = ("import sys; sys.modules.update(dict.fromkeys(('cryptography', 'dask', 'tqdm'))); "
            "from benchmarks.studies.deployment_noise import main; sys.exit(main(sys.argv[1:]))")
    out, report = tmp_path / "noise.json", tmp_path / "noise.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-c", code, "--bundle", str(bundle), "--device", "cpu",
                           "--threads", "1", "--out", str(out), "--report", str(report)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["environment"]["tqdm_stand_in"] is True
    (m,) = res["models"]
    rows = {r["variant"]: r for r in m["rows"]}
    assert list(rows) == [v.name for v in dn.VARIANTS]
    for v in dn.VARIANTS:
        if v.cuda_only:
            assert rows[v.name]["status"] == "skipped" and "needs cuda" in rows[v.name]["note"]
    fp32 = rows["fp32"]
    assert fp32["status"] == "ok"
    for spec in dn.SPECS:
        assert fp32["verify"][spec]["verdict"] == "INTACT"
        assert fp32["verify"][spec]["mismatches"] == 0
    assert fp32["needed"]["logit"] <= m["noise"]["logit_tolerance"]
    for name in ("batch=1", "batch=8", "batch=64", "autocast-bf16", "bfloat16"):
        assert rows[name]["status"] == "ok", rows[name].get("error")
    assert rows["bfloat16"]["sets"]["natural"]["max_logit"] > 1e-4
    assert rows["bfloat16"]["verify"]["logits"]["verdict"] == "TAMPERED"  # beyond the CPU-calibrated floor
    assert rows["bfloat16"]["verify_declared"]["logits"]["verdict"] == "INTACT"  # within the measured tolerance
    text = report.read_text()
    assert "## What this means" in text
    for v in dn.VARIANTS:
        assert f"| {v.name} |" in text
    assert (tmp_path / "noise.png").is_file()


@pytest.mark.slow
def test_failing_variant_is_recorded(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = dn.make_forward

    def flaky(model: torch.nn.Module, variant: dn.Variant, device: str):  # type: ignore[no-untyped-def]
        if variant.name == "half":
            raise RuntimeError("no float16 kernel here")
        return real(model, variant, device)

    monkeypatch.setattr(dn.measure, "make_forward", flaky)  # where run_bundle looks it up
    res = dn.run_bundle(bundle, "cpu", ["fp32", "half"])
    rows = {r["variant"]: r for r in res["models"][0]["rows"]}
    assert rows["half"]["status"] == "error" and "no float16 kernel" in rows["half"]["error"]
    assert rows["fp32"]["status"] == "ok"
    assert "half | error" in dn.render(res)


@pytest.mark.slow
def test_time_limit_skips_the_rest(bundle: Path) -> None:
    res = dn.run_bundle(bundle, "cpu", ["fp32", "batch=8"], time_limit=0.0)
    rows = res["models"][0]["rows"]
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
    assert "time limit" in rows[0]["note"]
    assert "No variant ran." in dn.summarize(res)
