"""Where attacks act in a model: its last linear layer, hidden units, parameter groups.

Everything here works on ordinary modules and on ``torch.export`` graphs alike, because
the last layer is found with :func:`veriprint.models.split_last_layer` and parameters are
addressed by name.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from veriprint.models import LastLayer, split_last_layer

__all__ = ["hidden_units", "last_layer", "param_groups", "reinit_", "weight_names"]


def last_layer(model: nn.Module, x: torch.Tensor) -> LastLayer:
    """The final linear layer ``z = W h + b`` (the model's outputs must be its logits)."""
    return split_last_layer(model, x[:4], outputs="logits")


def hidden_units(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Penultimate features ``h`` (the last layer's inputs), shape ``(N, d)``."""
    last = last_layer(model, x)
    with torch.no_grad():
        return torch.cat([last.forward(c)[0] for c in torch.split(x, batch_size)])


def param_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped by the module (name prefix) holding them, in model order."""
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        groups.setdefault(name.rpartition(".")[0], []).append(name)
    return list(groups.values())


def weight_names(model: nn.Module) -> list[str]:
    """Names of the weight matrices and kernels (parameters with 2 or more dimensions)."""
    return [n for n, p in model.named_parameters() if p.dim() >= 2]


def reinit_(weight: torch.Tensor, bias: torch.Tensor | None, generator: torch.Generator) -> None:
    """PyTorch's default initialization of a linear or conv layer, drawn from ``generator``.

    Kaiming-uniform with ``a = sqrt(5)`` for the weight, i.e. ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
    and the same bound for the bias.
    """
    fan_in = weight[0].numel()
    bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
    with torch.no_grad():
        weight.copy_(torch.empty_like(weight).uniform_(-bound, bound, generator=generator))
        if bias is not None:
            bias.copy_(torch.empty_like(bias).uniform_(-bound, bound, generator=generator))
