"""The models the serving tests put behind real servers: a digits MLP trained in a few
seconds, its ONNX exports (FP32 logits, UINT8 pixels, softmax, two tampered copies) and a
small fingerprint of it. Built once per test process and shared by the server tests."""

from __future__ import annotations

import atexit
import copy
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from veriprint.data import Dataset, InputDomain, load_data
from veriprint.fingerprint import Fingerprint, FingerprintConfig, make_fingerprint
from veriprint.models.onnx_import import export_onnx
from veriprint.models.train import TrainConfig, train_
from veriprint.zoo import digits_mlp


class FromGrid(nn.Module):
    """Takes 8-bit grid values (uint8) and maps them onto the model's float domain in-graph."""

    def __init__(self, model: nn.Module, domain: InputDomain) -> None:
        super().__init__()
        self.model, self.domain = model, domain

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        d = self.domain
        assert d.levels is not None
        return self.model(g.float() / d.levels * (d.hi - d.lo) + d.lo)


class WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=-1)


def tampered_copy(model: nn.Module, bits: int) -> nn.Module:
    """Every weight rounded to ``bits`` bits (symmetric, per tensor): a quantized model swapped
    in for the original. At 4 bits this one keeps its test accuracy within a point."""
    bad = copy.deepcopy(model)
    with torch.no_grad():
        for p in bad.parameters():
            step = p.abs().max() / (2 ** (bits - 1) - 1)
            p.copy_(torch.round(p / step) * step)
    return bad


@dataclass(frozen=True)
class Digits:
    model: nn.Module
    test: Dataset
    onnx: dict[str, Path]  # served name -> ONNX file


@functools.lru_cache(maxsize=1)
def digits_models() -> Digits:
    torch.manual_seed(0)
    model = train_(digits_mlp(), load_data("digits", split="train"), TrainConfig(epochs=3, seed=0),
                   progress=False)
    test = load_data("digits", split="test")
    d = Path(tempfile.mkdtemp(prefix="veriprint-serving-"))
    atexit.register(shutil.rmtree, d, True)
    x = test.x[:2]
    grid = test.domain.to_grid(x).to(torch.uint8)
    onnx = {
        "digits": export_onnx(model, x, d / "digits.onnx"),
        "digits-u8": export_onnx(FromGrid(model, test.domain), grid, d / "digits-u8.onnx"),
        "digits-probs": export_onnx(WithSoftmax(model), x, d / "digits-probs.onnx"),
        "digits-tampered": export_onnx(tampered_copy(model, 4), x, d / "digits-tampered.onnx"),
        "digits-round8": export_onnx(tampered_copy(model, 8), x, d / "digits-round8.onnx"),
    }
    return Digits(model, test, onnx)


@functools.lru_cache(maxsize=1)
def digits_fingerprint() -> Fingerprint:
    fp, _, _ = make_fingerprint(digits_models().model, digits_models().test,
                                FingerprintConfig(bag=32, select=8, cover_classes=False, budget="none"), progress=False)
    return fp
