"""Loaders of natural inputs and their errors: built-in sets, .npz files, image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from veriprint.data import InputDomain, load_data


def test_builtin_sets_have_their_domains_and_splits() -> None:
    digits = load_data("digits", split="test")
    assert digits.domain == InputDomain(0.0, 1.0, 16) and digits.x.shape[1:] == (1, 8, 8)
    assert digits.domain.on_grid(digits.x)
    train = load_data("digits", split="train")
    assert len(train) + len(digits) == 1797  # the two splits partition the set
    fashion = load_data("fashion-mnist", split="test")
    assert fashion.x.shape == (10000, 1, 28, 28) and fashion.domain.levels == 255
    assert sorted(torch.unique(fashion.y).tolist()) == list(range(10))


def test_npz_files_and_their_errors(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(6, 1, 4, 4)) / 255.0
    np.savez(tmp_path / "ok.npz", x=x, y=np.arange(6) % 3)
    data = load_data(str(tmp_path / "ok.npz"))
    assert data.x.shape == (6, 1, 4, 4) and data.y is not None and data.domain.levels == 255
    np.savez(tmp_path / "noname.npz", images=x)
    with pytest.raises(ValueError, match="expected an array named 'x'"):
        load_data(str(tmp_path / "noname.npz"))
    np.savez(tmp_path / "nan.npz", x=np.full((2, 4), np.nan))
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_data(str(tmp_path / "nan.npz"))
    np.savez(tmp_path / "shape.npz", x=np.zeros(5))
    with pytest.raises(ValueError, match=r"expected x of shape \(N,C,H,W\) or \(N,D\)"):
        load_data(str(tmp_path / "shape.npz"))
    with pytest.raises(ValueError, match="expected split 'train' or 'test'"):
        load_data("digits", split="validation")
    with pytest.raises(FileNotFoundError):
        load_data(str(tmp_path / "missing.npz"))
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"expected an \.npz file or an image folder"):
        load_data(str(tmp_path / "data.csv"))


def test_image_folders_and_their_errors(tmp_path: Path) -> None:
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((5, 5), 40 * i, dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    data = load_data(str(tmp_path / "imgs"))
    assert len(data) == 4 and data.y is not None and sorted(set(data.y.tolist())) == [0, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="expected one sub-folder per class"):
        load_data(str(tmp_path / "empty"))
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image files"):
        load_data(str(tmp_path / "noimg"))


def test_domains_are_validated() -> None:
    with pytest.raises(ValueError, match="finite lo < hi"):
        InputDomain(1.0, 0.0)
    with pytest.raises(ValueError, match="positive int or None"):
        InputDomain(0.0, 1.0, 0)
    with pytest.raises(ValueError, match="continuous"):
        InputDomain(0.0, 1.0, None).to_grid(torch.zeros(1))
