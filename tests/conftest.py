"""Shared fixtures: seeded RNGs and small trained models (trained once per session)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from veriprint.data import Dataset, load_data
from veriprint.models.train import TrainConfig, train_
from veriprint.zoo import digits_mlp, fashion_cnn


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture(scope="session", autouse=True)
def _speed_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The plan's calibrated speeds go to a cache of the test session's own (subprocesses too)."""
    before = os.environ.get("VERIPRINT_SPEED_CACHE")
    os.environ["VERIPRINT_SPEED_CACHE"] = str(tmp_path_factory.mktemp("speed-cache"))
    yield
    if before is None:
        os.environ.pop("VERIPRINT_SPEED_CACHE", None)
    else:
        os.environ["VERIPRINT_SPEED_CACHE"] = before


@pytest.fixture(scope="session")
def digits_data() -> tuple[Dataset, Dataset]:
    return load_data("digits", split="train"), load_data("digits", split="test")


@pytest.fixture(scope="session")
def digits_model(digits_data: tuple[Dataset, Dataset]) -> torch.nn.Module:
    """The LayerNorm/GELU MLP trained on 8x8 digits (~96% test accuracy, < 2 s)."""
    torch.manual_seed(0)
    return train_(digits_mlp(), digits_data[0], TrainConfig(epochs=20, batch_size=32), progress=False)


@pytest.fixture(scope="session")
def fashion_data() -> tuple[Dataset, Dataset]:
    train = load_data("fashion-mnist", split="train").subset(slice(0, 6000))
    test = load_data("fashion-mnist", split="test").subset(slice(0, 1000))
    return train, test


@pytest.fixture(scope="session")
def fashion_model(fashion_data: tuple[Dataset, Dataset]) -> torch.nn.Module:
    """The BatchNorm CNN trained for one epoch on 6,000 Fashion-MNIST images (~80%)."""
    torch.manual_seed(0)
    return train_(fashion_cnn(), fashion_data[0], TrainConfig(epochs=1), progress=False)


@pytest.fixture(scope="session")
def digits_fingerprint(digits_model: torch.nn.Module, digits_data: tuple[Dataset, Dataset]):  # type: ignore[no-untyped-def]
    """A small fingerprint of the digits MLP (bag 60, 40 steps, exactly 8 samples, refinement on)."""
    from veriprint.fingerprint import FingerprintConfig, make_fingerprint
    from veriprint.pipeline.generate import GenerationConfig

    cfg = FingerprintConfig(bag=60, select=8, cover_classes=False, ceiling_share=0.0, budget="none",
                            generation=GenerationConfig(steps=40, eps=2 / 16, lr=1e-2))
    fp, _, _ = make_fingerprint(digits_model, digits_data[1], cfg, progress=False, source="veriprint.zoo:digits_mlp")
    return fp
