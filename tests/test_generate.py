"""Algorithm 1: constraints, snapping, determinism, and that sensitivity rises."""

from __future__ import annotations

import pytest
import torch

from veriprint.data import InputDomain
from veriprint.pipeline.generate import GenerationConfig, generate, project, snap_to_ball

DOM = InputDomain(0.0, 1.0, 255)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="eps"):
        GenerationConfig(eps=-1.0)
    with pytest.raises(ValueError, match="norm"):
        GenerationConfig(norm="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        GenerationConfig(steps=-3)
    with pytest.raises(ValueError, match="lr"):
        GenerationConfig(lr=0.0)


def test_config_round_trip() -> None:
    cfg = GenerationConfig(params=("0.*", "4.weight"), steps=7)
    assert GenerationConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_and_snapping_stay_feasible(norm: str) -> None:
    g = torch.Generator().manual_seed(1)
    v0 = DOM.snap(torch.rand(16, 1, 6, 6, generator=g))
    x = v0 + torch.randn(16, 1, 6, 6, generator=g) * 0.2
    eps = 8 / 255 if norm == "linf" else 0.3
    p = project(x, v0, eps, norm, DOM)  # type: ignore[arg-type]
    s = snap_to_ball(p, v0, eps, norm, DOM)  # type: ignore[arg-type]
    for t in (p, s):
        d = (t - v0).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (size <= eps * (1 + 1e-5)).all()
        assert t.min() >= 0 and t.max() <= 1
    assert DOM.on_grid(s)


def test_constraints_hold_on_a_trained_model(digits_model: torch.nn.Module, digits_data) -> None:  # type: ignore[no-untyped-def]
    test = digits_data[1]
    seeds = test.x[:24]
    cfg = GenerationConfig(steps=60, eps=2 / 16, lr=1e-2, patience=0)
    res = generate(digits_model, seeds, cfg, domain=test.domain, progress=False)
    d = (res.samples - seeds).flatten(1)
    assert (d.abs().amax(1) <= 2 / 16 + 1e-6).all()
    assert test.domain.on_grid(res.samples)
    assert res.grid is not None and res.grid.dtype == torch.uint8
    assert torch.equal(test.domain.from_grid(res.grid.long()), res.samples)
    # Sensitivity rises on a trained model, and the history records it.
    assert res.log_s_after.mean() > res.log_s_before.mean() + 0.5
    assert res.history.shape == (60, 2) and res.history[-1, 0] > res.history[0, 0]
    assert torch.isfinite(res.psnr).all() or (res.psnr == float("inf")).any()
    assert (res.margin >= 0).all()


def test_eps_zero_returns_the_seeds(digits_model: torch.nn.Module, digits_data) -> None:  # type: ignore[no-untyped-def]
    seeds = digits_data[1].x[:8]
    res = generate(digits_model, seeds, GenerationConfig(eps=0.0, steps=50), domain=digits_data[1].domain,
                   progress=False)
    assert torch.equal(res.samples, seeds)
    assert res.steps_run == 0


def test_same_seed_same_samples(digits_model: torch.nn.Module, digits_data) -> None:  # type: ignore[no-untyped-def]
    seeds = digits_data[1].x[:10]
    cfg = GenerationConfig(steps=20, eps=2 / 16, lr=1e-2, batch_size=4)
    a = generate(digits_model, seeds, cfg, domain=digits_data[1].domain, progress=False)
    b = generate(digits_model, seeds, cfg, domain=digits_data[1].domain, progress=False)
    assert torch.equal(a.samples, b.samples)


def test_chunking_does_not_change_samples(digits_model: torch.nn.Module, digits_data) -> None:  # type: ignore[no-untyped-def]
    seeds = digits_data[1].x[:12]
    base = dict(steps=15, eps=2 / 16, lr=1e-2, patience=0)
    a = generate(digits_model, seeds, GenerationConfig(batch_size=12, **base), domain=digits_data[1].domain,
                 progress=False)
    b = generate(digits_model, seeds, GenerationConfig(batch_size=5, **base), domain=digits_data[1].domain,
                 progress=False)
    assert (a.samples - b.samples).abs().max() <= digits_data[1].domain.step + 1e-6


def test_entropy_objective_runs(digits_model: torch.nn.Module, digits_data) -> None:  # type: ignore[no-untyped-def]
    seeds = digits_data[1].x[:8]
    cfg = GenerationConfig(steps=20, eps=2 / 16, lr=1e-2, objective="entropy", entropy_k=2, patience=0)
    res = generate(digits_model, seeds, cfg, domain=digits_data[1].domain, progress=False)
    assert res.log_s_after.mean() >= res.log_s_before.mean()


def test_rejects_seeds_outside_the_domain(digits_model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="seeds in"):
        generate(digits_model, torch.full((2, 1, 8, 8), 2.0), GenerationConfig(steps=1), progress=False)
