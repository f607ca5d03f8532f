"""The pipeline follows the model's device: no stage makes a tensor without saying where.

No GPU is needed: :class:`tests.device_audit.DeviceAudit` records, while the whole
pipeline runs on the CPU, every tensor veriprint's own code creates without an explicit
device and every host transfer in the stages' inner loops. On a GPU each of those is a
tensor on the wrong device (an error) or a round trip to the host (a stall).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from device_audit import ON_DEVICE, SOURCE, DeviceAudit, DeviceSimulation
from veriprint.data import Dataset
from veriprint.pipeline import FingerprintConfig, make_fingerprint
from veriprint.pipeline.cost import format_costs
from veriprint.pipeline.generate import GenerationConfig
from veriprint.pipeline.plan import resolve

#: The modules whose loops run once per step or per batch: a host transfer there is a finding.
HOT = ("pipeline/generate.py", "pipeline/objective.py", "coverage/reach.py", "noise.py",
       "pipeline/refinement.py", "pipeline/twins.py", "pipeline/calibrate.py", "pipeline/straddle.py")
FAST = GenerationConfig(steps=15)


def audited(model: torch.nn.Module, data: Dataset, cfg: FingerprintConfig,
            pairs: bool | None = None) -> DeviceAudit:
    with DeviceAudit(HOT) as audit:
        fp, gen, _ = make_fingerprint(model, data, cfg, progress=False)
    assert fp.samples.device.type == "cpu" and gen.samples.device.type == "cpu"
    if pairs is not None:  # the branch meant to be audited ran
        assert bool(fp.meta["selection"]["pairs"]) == pairs
    return audit


@pytest.mark.parametrize("selector", ["reach", "manc", "random", "tamper-aware"])
def test_no_stage_makes_a_tensor_without_a_device(fashion_model: torch.nn.Module,
                                                  fashion_data: tuple[Dataset, Dataset], selector: str) -> None:
    # pairs (twins on), every class covered, and for reach a coverage target: every branch of selection
    cfg = FingerprintConfig(bag=24, select=4, selector=selector, generation=FAST,  # type: ignore[arg-type]
                            coverage=0.9 if selector == "reach" else None, max_queries=8)
    audit = audited(fashion_model, fashion_data[1], cfg, pairs=True)
    assert not audit.findings, "tensors made without a device or brought to the host:\n" + audit.report()


def test_singles_views_and_a_flat_model_too(digits_model: torch.nn.Module,
                                            fashion_model: torch.nn.Module,
                                            digits_data: tuple[Dataset, Dataset],
                                            fashion_data: tuple[Dataset, Dataset]) -> None:
    few = fashion_data[1].subset(slice(0, 8))  # fewer inputs than the bag: natural views are made
    for model, data, cfg in [
        (fashion_model, few, FingerprintConfig(bag=24, select=4, twins=False, generation=FAST)),
        (digits_model, digits_data[1], FingerprintConfig(bag=30, select=4, selector="manc", twins=False,
                                                         generation=FAST)),
        (digits_model, digits_data[1], FingerprintConfig(bag=30, select=4, refine=False, generation=FAST)),
        (digits_model, digits_data[1], FingerprintConfig(bag=12, select=4, twins=False, generation=GenerationConfig(
            steps=3, params="all"))),  # the vmap'd Jacobian objective
        (digits_model, digits_data[1], FingerprintConfig(bag=12, select=4, twins=False, generation=GenerationConfig(
            steps=3, objective="entropy"))),
    ]:
        audit = audited(model, data, cfg, pairs=False)
        assert not audit.findings, audit.report()


def test_the_audit_finds_a_cpu_tensor_in_a_hot_loop(fashion_model: torch.nn.Module,
                                                    fashion_data: tuple[Dataset, Dataset],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A margin function that builds a CPU-only mask, compiled as if it were in pipeline/refinement.py."""
    import veriprint.pipeline.refinement as refine

    code = ("def label_margin(model, x, labels, model_outputs='logits'):\n"
            "    z = as_logits(model(x), model_outputs)\n"
            "    mask = torch.zeros(z.shape, dtype=torch.bool)\n"
            "    mask.scatter_(1, labels.view(-1, 1), True)\n"
            "    return z[mask] - z.masked_fill(mask, float('-inf')).amax(dim=1)\n")
    space = dict(vars(refine))
    exec(compile(code, str(SOURCE / "pipeline" / "refinement.py"), "exec"), space)
    monkeypatch.setattr(refine, "label_margin", space["label_margin"])
    cfg = FingerprintConfig(bag=12, select=2, generation=FAST)
    audit = audited(fashion_model, fashion_data[1], cfg)
    assert {(f.kind, f.func, f.where.split(":")[0]) for f in audit.findings} == {("factory", "zeros", "pipeline/refinement.py")}


def test_cpu_fingerprints_do_not_change(fashion_model: torch.nn.Module,
                                        fashion_data: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    """Run twice: the same samples and expected outputs (no device is named anywhere)."""
    cfg = FingerprintConfig(bag=16, select=4, generation=FAST, budget="none")
    a, _, _ = make_fingerprint(fashion_model, fashion_data[1], cfg, progress=False)
    b, _, _ = make_fingerprint(fashion_model, fashion_data[1], dataclasses.replace(cfg), progress=False)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.expected, b.expected)
    assert "peak_gpu_mb" not in a.meta["stages"]["generate"]
    assert "GPU MB" not in format_costs(a.meta["stages"])


def test_auto_memory_fills_a_gpu_and_stays_small_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import veriprint.pipeline.plan as plan

    monkeypatch.setattr(plan, "_machine_memory", lambda device="cpu": 140 * 2**30 if device.startswith("cuda")
                        else 8 * 2**30)
    assert resolve("auto", "auto", "cpu") == (600.0, 2**30)
    assert resolve("auto", "auto", "cuda:0") == (60.0, int(0.4 * 140 * 2**30))
    assert resolve("90s", "2G", "cuda") == (90.0, 2 * 2**30)


def test_the_objectives_outside_the_pipeline_defaults(digits_model: torch.nn.Module,
                                                      digits_data: tuple[Dataset, Dataset]) -> None:
    from veriprint.pipeline.objective import log_sensitivity

    x = digits_data[1].x[:4].clone().requires_grad_(True)
    with DeviceAudit(HOT) as audit:
        for method in ("probe", "jacobian", "loop"):
            log_sensitivity(digits_model, x, params="all", method=method, probes=2)  # type: ignore[arg-type]
    assert not audit.findings, audit.report()


def simulated(model: torch.nn.Module, data: Dataset, cfg: FingerprintConfig,
              monkeypatch: pytest.MonkeyPatch, returned_on_host: bool = True) -> DeviceSimulation:
    """The whole pipeline with the model's parameters and buffers on a simulated GPU."""
    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 0)
    sim = DeviceSimulation()
    sim.on_device([*model.parameters(), *model.buffers()])
    sim.on_host([data.x])  # the data stays in host memory
    with sim:
        fp, gen, _ = make_fingerprint(model, data, cfg, progress=False)
        assert fp.meta["stages"]["generate"]["peak_gpu_mb"] == 0  # the meter saw a GPU
    for t in (fp.samples, fp.expected, gen.samples, gen.margin):  # returned on the host
        assert sim._get(t) != ON_DEVICE or not returned_on_host
    return sim


@pytest.mark.parametrize("selector", ["reach", "manc", "random", "tamper-aware"])
def test_the_pipeline_on_a_simulated_gpu_mixes_no_devices(fashion_model: torch.nn.Module,
                                                           fashion_data: tuple[Dataset, Dataset], selector: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """What CUDA would refuse (a host tensor in an operation on device tensors, numpy() of a
    device tensor), found without a GPU by :class:`DeviceSimulation`."""
    cfg = FingerprintConfig(bag=24, select=4, selector=selector, generation=FAST,  # type: ignore[arg-type]
                            coverage=0.9 if selector == "reach" else None, max_queries=8)
    sim = simulated(fashion_model, fashion_data[1], cfg, monkeypatch)
    assert not sim.mixed, sim.report()


def test_singles_views_and_a_flat_model_on_a_simulated_gpu(digits_model: torch.nn.Module,
                                                           fashion_model: torch.nn.Module,
                                                           digits_data: tuple[Dataset, Dataset],
                                                           fashion_data: tuple[Dataset, Dataset],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for model, data, cfg in [
        (fashion_model, fashion_data[1].subset(slice(0, 8)), FingerprintConfig(bag=24, select=4, twins=False,
                                                                               generation=FAST)),
        (digits_model, digits_data[1], FingerprintConfig(bag=30, select=4, selector="manc", generation=FAST)),
        (digits_model, digits_data[1], FingerprintConfig(bag=30, select=4, refine=False, generation=FAST)),
    ]:
        sim = simulated(model, data, cfg, monkeypatch)
        assert not sim.mixed, sim.report()


def test_the_simulation_finds_a_bag_left_on_the_host(fashion_model: torch.nn.Module,
                                                     fashion_data: tuple[Dataset, Dataset],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import veriprint.pipeline.candidates as candidates

    monkeypatch.setattr(candidates, "model_device", lambda model: torch.device("cpu"))  # the bag is not moved
    sim = simulated(fashion_model, fashion_data[1], FingerprintConfig(bag=12, select=2, generation=FAST),
                    monkeypatch, returned_on_host=False)
    assert any("conv2d mixes a host tensor" in m for m in sim.mixed), sim.report()


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16"])
def test_device_cuda_copies_the_model_to_a_simulated_gpu(fashion_model: torch.nn.Module,
                                                         fashion_data: tuple[Dataset, Dataset], precision: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``device="cuda"``: make_fingerprint moves a copy of the caller's (host) model to the
    device and runs everything there, the profile's calibration and expected outputs too."""
    import types

    for name, value in [("is_available", lambda: True), ("device_count", lambda: 1),
                        ("get_device_name", lambda *a: "simulated GPU"), ("synchronize", lambda *a, **k: None),
                        ("reset_peak_memory_stats", lambda *a, **k: None), ("max_memory_allocated", lambda *a: 0),
                        ("get_device_properties", lambda *a: types.SimpleNamespace(total_memory=2**34))]:
        monkeypatch.setattr(torch.cuda, name, value)
    cfg = FingerprintConfig(bag=16, select=4, generation=FAST, device="cuda", precision=precision)  # type: ignore[arg-type]
    sim = DeviceSimulation()
    sim.on_host([fashion_data[1].x, *fashion_model.parameters(), *fashion_model.buffers()])
    with sim:
        fp, gen, _ = make_fingerprint(fashion_model, fashion_data[1], cfg, progress=False)
    assert not sim.mixed, sim.report()
    assert fp.meta["profile"]["device_name"] == "simulated GPU" and "peak_gpu_mb" in fp.meta["stages"]["refine"]
    assert fp.meta["plan"]["memory_bytes"] == int(0.4 * 2**34)  # the GPU's memory, not the CPU's 1 GiB
    assert all(sim._get(p) == "host" for p in fashion_model.parameters())  # the caller's model stays put
    assert sim._get(fp.samples) != ON_DEVICE and sim._get(gen.samples) != ON_DEVICE
    if precision != "fp32" and fp.meta["selection"]["pairs"]:  # the pairs straddled the profiled boundary there too
        assert fp.meta["straddle"]["pairs"] == fp.meta["selection"]["pairs"]
