"""Small reference classifiers, usable as factories (``veriprint.zoo:fashion_cnn``).

They are the default models of the demo, the tests and the evaluation: a BatchNorm CNN
for 28x28 grey images and a LayerNorm/GELU MLP for flat or small inputs.
"""

from __future__ import annotations

from torch import nn

__all__ = ["digits_mlp", "fashion_cnn", "mlp"]


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
