"""The benchmark command's quick mode runs, writes its report, and its correctness checks hold.

Speed goals are never asserted here (timings on shared CI machines are noise); what is
asserted is that the benchmarks still run and still time the right computation: the
closed form agrees with the literal Algorithm 1, the vmap'd Jacobian with the per-output
loop, and MANC with plain Algorithm 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.lib import ROOT
from veriprint.evaluate.baselines import (
    authors_config,
    literal_value_and_grad,
    surrogate_value_and_grad,
)
from veriprint.pipeline.objective import log_sensitivity, resolve_params, sensitivity_loop
from veriprint.zoo import digits_mlp


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return digits_mlp().eval()


def test_literal_baseline_matches_closed_form_and_loop() -> None:
    model = _model()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)).double()
    model = model.double()
    lit = literal_value_and_grad(model, x)
    names = resolve_params(model, "last", x)
    assert len(names) == 2
    assert torch.allclose(lit.value, sensitivity_loop(model, x, names), rtol=1e-12)
    xx = x.clone().requires_grad_(True)
    ls = log_sensitivity(model, xx)
    (g,) = torch.autograd.grad(ls.sum(), xx)
    assert torch.allclose(ls.detach(), torch.log(lit.value), atol=1e-10)
    assert torch.allclose(g, lit.grad / lit.value.view(-1, 1, 1, 1), rtol=1e-8, atol=1e-12)


def test_surrogate_baseline_is_the_squared_last_layer_gradient() -> None:
    model = _model().double()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)).double()
    out = surrogate_value_and_grad(model, x, classes=3)
    last = model[-1]
    for i in range(2):
        logp = torch.log_softmax(model(x[i : i + 1]), dim=-1)
        gw, gb = torch.autograd.grad(logp[0, :3].sum(), [last.weight, last.bias])
        assert torch.allclose(out.value[i], gw.pow(2).sum() + gb.pow(2).sum(), rtol=1e-12)
    # the gradient is that of the value: check against finite differences along one direction
    d = torch.ones_like(x[:1])
    h = 1e-6
    up = surrogate_value_and_grad(model, x[:1] + h * d, classes=3).value
    down = surrogate_value_and_grad(model, x[:1] - h * d, classes=3).value
    assert torch.allclose((up - down) / (2 * h), (out.grad[:1] * d).sum(), rtol=1e-5)


def test_authors_config_is_their_l2_ball() -> None:
    cfg = authors_config((1, 28, 28))
    assert cfg.norm == "l2" and not cfg.log_space and cfg.patience == 0
    assert cfg.eps == pytest.approx(10 / 255 * 28)


@pytest.mark.slow
def test_quick_benchmarks_run_and_agree(tmp_path: Path) -> None:
    out, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.speed.run", "--quick", "--out", str(out), "--json", str(raw)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for title in ("## Goals", "## Correctness checks", "Generation step", "General parameter subsets",
                  "A bag of", "MANC selection", "Verification overhead", "torch.compile"):
        assert title in text
    result = json.loads(raw.read_text())
    checks = [c for s in result["sections"].values() for c in s["checks"]]
    names = " ".join(c["name"] for c in checks)
    assert "closed form = Algorithm 1" in names and "vmap Jacobian = per-output loop" in names
    assert all(c["passed"] for c in checks)
    step = result["sections"]["step"]["data"]
    for r in (10, 100):
        assert step[f"agree_r{r}_torch.float64"]["log_s"] < 1e-9
        assert step[f"agree_r{r}_torch.float64"]["grad"] < 1e-7
        assert step[f"r{r}"]["literal_per_sample"] > 0


@pytest.mark.parametrize("log_space", [True, False])
def test_generate_baseline_follows_the_batched_generator(log_space: bool) -> None:
    from veriprint.evaluate.baselines import generate_baseline
    from veriprint.pipeline.generate import GenerationConfig, generate

    model = _model()
    seeds = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    cfg = GenerationConfig(steps=6, patience=0, eps=16 / 255, lr=1e-2, log_space=log_space)
    base = generate_baseline(model, seeds, cfg, method="algorithm1", progress=False)
    batched = generate(model, seeds, cfg, progress=False)
    # same objective and per-sample Adam: the same samples up to float rounding at grid boundaries
    assert (base.samples - batched.samples).abs().max() <= 1 / 255 + 1e-6
    assert (base.samples == batched.samples).float().mean() > 0.98
    assert base.linf.max() <= cfg.eps + 1e-6 and base.steps_run == 6
    assert (base.log_s_after > base.log_s_before).all()


def test_generate_baseline_authors_stays_in_its_ball() -> None:
    from veriprint.evaluate.baselines import generate_baseline

    model = _model()
    seeds = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    cfg = authors_config((1, 8, 8), steps=5, lr=1e-2)
    res = generate_baseline(model, seeds, cfg, method="authors", progress=False)
    assert res.l2.max() <= cfg.eps + 1e-5
    assert not torch.equal(res.samples, seeds)
    with pytest.raises(ValueError, match="expected method"):
        generate_baseline(model, seeds, cfg, method="nope", progress=False)  # type: ignore[arg-type]


def test_report_is_written_when_a_family_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.speed.compiled
    import benchmarks.speed.selection
    from benchmarks.lib.timing import Check, Context, Section
    from benchmarks.speed import run as bench

    def broken(ctx: Context) -> Section:
        raise RuntimeError("CUDA out of memory | simulated")

    def fine(ctx: Context) -> Section:
        return Section("selection", "Stand-in family", "ran", checks=[Check("stand-in check", True, "ok")],
                       data={"device": ctx.device})

    monkeypatch.setattr(benchmarks.speed.compiled, "run", broken)
    monkeypatch.setattr(benchmarks.speed.selection, "run", fine)
    out, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    status = bench.main(["--quick", "--only", "compiled", "selection", "--out", str(out), "--json", str(raw)])
    assert status == 1  # a failed family fails the run, but only after the others ran
    text = out.read_text()
    assert "## compiled: FAILED" in text and "RuntimeError: CUDA out of memory" in text
    assert "| compiled family ran | **NO** |" in text and "\\| simulated" in text  # the table stays intact
    assert "## Stand-in family" in text and "| stand-in check | yes | ok |" in text
    assert "- **device**: cpu" in text
    result = json.loads(raw.read_text())
    assert result["complete"] is True
    assert result["sections"]["compiled"]["checks"][0]["passed"] is False
    assert "simulated" in result["sections"]["compiled"]["data"]["error"]
    assert result["sections"]["selection"]["data"] == {"device": "cpu"}


def test_device_cuda_needs_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.lib.timing import Context
    from benchmarks.speed import run as bench

    with pytest.raises(ValueError, match="expected device"):
        Context(device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda", "--only", "selection"])


def test_bag_section_from_a_gpu_worker_without_the_data_set(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess as sp

    import benchmarks.speed.bag as bag
    from benchmarks.lib.timing import Context

    answer = {"n": 500, "steps": 1000, "steps_run": 400, "seconds": 2.0, "unit": 0.004, "peak_reset": True,
              "device": "cuda", "memory": "cuda allocated", "rss_before_mib": 10.0, "peak_rss_mib": 250.0,
              "log_s_gain_median": 1.5, "linf_max": 8 / 255, "real_data": False,
              "source": "random weights, uniform random seeds (FileNotFoundError: not found)"}
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> sp.CompletedProcess[str]:
        seen.append(cmd)
        return sp.CompletedProcess(cmd, 0, stdout="log line\n" + json.dumps(answer) + "\n", stderr="")

    monkeypatch.setattr(bag.subprocess, "run", fake_run)
    sec = bag.run(Context(device="cuda"))
    assert seen[0][seen[0].index("--device") + 1] == "cuda" and "--train" in seen[0]
    assert "peak GPU memory (torch)" in sec.headers
    assert sec.rows[0][sec.headers.index("peak GPU memory (torch)")] == "250 MiB"
    assert sec.rows[0][sec.headers.index("step / unit")] == "1.25x"  # 2 s / 400 steps / 4 ms
    notes = " ".join(sec.notes)
    assert "max_memory_allocated" in notes and "Fashion-MNIST was not available" in notes

    def failing(cmd: list[str], **kwargs: object) -> sp.CompletedProcess[str]:
        return sp.CompletedProcess(cmd, 1, stdout="", stderr="Traceback ...\nRuntimeError: CUDA error: boom\n")

    monkeypatch.setattr(bag.subprocess, "run", failing)
    with pytest.raises(RuntimeError, match="status 1: RuntimeError: CUDA error: boom"):
        bag.run(Context(device="cuda"))


@pytest.mark.slow
def test_scaling_and_stage_benchmarks_run(tmp_path: Path) -> None:
    """The scaling benchmark's quick mode and a tiny stage ablation run and report every row."""
    from benchmarks.speed import scaling, stages

    out, raw, png = tmp_path / "scaling.md", tmp_path / "scaling.json", tmp_path / "scaling.png"
    assert scaling.main(["--quick", "--out", str(out), "--json", str(raw), "--plot", str(png)]) == 0
    rows = json.loads(raw.read_text())
    assert [r["model"] for r in rows] == ["base", "side 32"] and png.stat().st_size > 0
    for r in rows:
        assert r["stages"]["generate"]["forward_backward"] > 0 and sum(r["predicted"].values()) > 0
        assert r["default_plan"]["total_s"] > 0
    assert "| base |" in out.read_text()
    sj, smd = tmp_path / "stages.json", tmp_path / "stages.md"
    assert stages.main(["--models", "tiny-imagenet", "--bag", "8", "--steps", "0", "2", "--draws", "1",
                        "--tensors", "2", "--json", str(sj), "--out", str(smd)]) == 0
    res = json.loads(sj.read_text())[0]
    names = [row["config"] for row in res["rows"]]
    assert names[:2] == ["steps 0", "steps 2"] and "steps 2, no refinement" in names
    for row in res["rows"]:
        assert 0 <= row["measured_5pct"] <= 1 and row["edits"] == 4 and len(row["structural"]) == 6
    assert "## tiny-imagenet" in smd.read_text()


def test_detection_power_runs_and_renders_with_other_runs_beside(tmp_path: Path) -> None:
    from benchmarks.studies import detection_power

    run = tmp_path / "digits.json"
    small = ["--quick", "--models", "digits-mlp", "--bag", "70", "--steps", "20", "--draws", "2", "--natural", "64"]
    assert detection_power.main([*small, "--json", str(run)]) == 0
    info = json.loads(run.read_text())["models"][0]
    assert info["config"]["seed_data"] == "all" and info["config"]["seed_inputs"] > 359  # train and test
    default = info["sweep"]["deltas"]["0.05"]["default"]
    assert 8 <= default["queries"] <= 64 and 0 <= default["visible"] <= 1
    assert info["config"]["default_budget"] == {"ceiling_share": 0.97, "max_queries": 64}  # the library's
    other = tmp_path / "digits-share.json"  # the default's budget set on the command line
    assert detection_power.main([*small, "--ceiling-share", "0.5", "--max-queries", "10", "--eps", "3/16",
                                 "--json", str(other)]) == 0
    grown = json.loads(other.read_text())["models"][0]
    assert grown["config"]["default_budget"] == {"ceiling_share": 0.5, "max_queries": 10}
    assert info["config"]["eps"] == 2 / 16 and grown["config"]["eps"] == 3 / 16  # a larger ball asked for
    assert 10 < grown["psnr"]["min"] <= grown["psnr"]["median"] < info["psnr"]["median"] + 1e-9
    assert grown["sweep"]["deltas"]["0.05"]["default"]["queries"] <= 10
    out = tmp_path / "power.md"
    assert detection_power.main(["--render", str(run), "--also", str(run), str(other), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## The goal, where it stands" in text and "## The same models with other settings" in text
    psnr = f"{info['psnr']['median']:.1f} ({info['psnr']['min']:.1f})"
    assert text.count(f"| digits-mlp | 70 | 2/16 | {psnr} | 64 | 0.97, 64 |") == 2  # the run, and again with --also
    assert text.count("| digits-mlp | 70 | 3/16 |") == 1 and "| 64 | 0.5, 10 |" in text
    with pytest.raises(SystemExit):
        detection_power.main([*small, "--eps", "1/0"])


def test_gpu_benchmark_dry_run_and_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/speed/gpu.py end to end on the CPU with a tiny model (every section), and its
    refusal of --device cuda where there is no GPU."""
    from benchmarks.speed import gpu

    out, raw = tmp_path / "gpu.md", tmp_path / "gpu.json"
    assert gpu.main(["--device", "cpu", "--quick", "--out", str(out), "--json", str(raw)]) == 0
    res = json.loads(raw.read_text())
    assert not [k for k in (*gpu.SECTIONS, "cpu_fingerprint") if "error" in res[k]]
    a = res["default"]
    assert a["stages"]["generate"]["forward_backward"] > 0 and a["queries"] >= 4
    b = res["compiled"]
    assert b["modules_compiled"] == 3 and b["bag"] == a["bag"]  # the tiny CNN's three blocks
    assert b["samples_max_diff"] <= 1 / 255 + 1e-6 and b["steps"] == a["steps_run"]
    assert [r["model"] for r in res["scaling"]["rows"]] == ["base", "side 32"]
    d = res["numerics"]
    ran = [r for r in d["deviation"] if "vs_cpu_fp32" in r]
    assert {r["variant"] for r in ran} == {"fp32", "autocast-fp16", "autocast-bf16", "half", "bfloat16"}
    assert next(r for r in ran if r["variant"] == "fp32" and r["batch"] == 1)["vs_device_fp32_b1"] == 0.0
    assert len(d["verifications"]) == len(ran) * 2  # two fingerprints, one verification each
    assert {v["fingerprint"] for v in d["verifications"]} == {"pipeline on cpu (a)", "made on the CPU"}
    text = out.read_text()
    for heading in ("## a.", "## b.", "## c.", "## d.", "false alarms in"):
        assert heading in text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    assert gpu.main(["--out", str(tmp_path / "none.md")]) == 2
    assert "expected a CUDA device" in capsys.readouterr().err and not (tmp_path / "none.md").exists()


@pytest.mark.slow
def test_prefix_search_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/speed/prefix_search.py makes the same fingerprint with both searches and reports both."""
    from benchmarks.speed import prefix_search

    raw = tmp_path / "p.json"
    assert prefix_search.main(["--model", "tiny", "--bag", "8", "--steps", "1", "--json", str(raw),
                               "--out", str(tmp_path / "p.md")]) == 0
    rows = json.loads(raw.read_text())
    assert [r["method"] for r in rows] == ["bisect", "line"]
    assert rows[0]["reach"] == rows[1]["reach"] and rows[0]["bag"] == rows[1]["bag"] == 8


@pytest.mark.slow
def test_straddle_benchmark_runs_and_straddled_pairs_catch_more_behind_autocast(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.studies.straddle", "--models", "fashion-mlp", "--precisions",
                           "autocast-bf16", "--checks", "20", "--json", str(runs), "--out", str(tmp_path / "s.md")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((runs / "fashion-mlp-autocast-bf16.json").read_text())
    kinds = r["kinds"]
    assert kinds["straddled"]["straddle"]["straddling"] == kinds["straddled"]["straddle"]["pairs"] > 0
    assert "tightened" not in kinds["straddled"]["straddle"] and kinds["straddled, tightened"]["straddle"]["tightened"] >= 0
    for k in kinds.values():  # made for this deployment: no false alarm
        assert k["false_alarms"] == {"top1": 0, "logits": 0}
    caught = {k: sum(c[k]["top1"] == "TAMPERED" for c in r["cases"]) for k in kinds}
    assert caught["straddled"] > caught["profile, float32 pairs"], caught
    gross = [c for c in r["cases"] if c["labels_flipped"] >= 20]  # trojans, poisonings: seen by any fingerprint
    assert gross and all(c["exact CPU"]["top1"] == "TAMPERED" for c in gross)
    assert r["budget"]["ceiling_share"] == 0.0 and r["exact"]["queries"] >= 8
    again = tmp_path / "again.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.studies.straddle", "--render", str(runs / "fashion-mlp-autocast-bf16.json"),
                           "--out", str(again)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [ln for ln in (tmp_path / "s.md").read_text().splitlines() if ln.startswith("| ")]
    assert table == [ln for ln in again.read_text().splitlines() if ln.startswith("| ")]
