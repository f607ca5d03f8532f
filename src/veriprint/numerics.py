"""Small numeric helpers written once: softmax, the top-2 margin, freezing a model.

Each is the exact computation its callers used before (same operations, same order), so
moving a caller here changes no result.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["freeze", "label_and_runner_up", "softmax_np", "top2_margin", "top2_margin_np"]


def softmax_np(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, stable (the row maximum is subtracted first)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def top2_margin(z: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 value of each row of ``z`` (``(N, r)``, ``r >= 2``)."""
    top2 = z.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def label_and_runner_up(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's label (largest value of the last axis) and runner-up (the largest of the
    others), as indices: the one definition every stage uses.

    Ties go to the lower index, for the label and then for the runner-up (``argmax``'s rule),
    so a 16-bit deployment's tied logits give the same pair on every call.
    """
    label = z.argmax(dim=-1)
    runner = z.scatter(-1, label.unsqueeze(-1), float("-inf")).argmax(dim=-1)
    return label, runner


def top2_margin_np(z: np.ndarray) -> np.ndarray:
    """:func:`top2_margin` for NumPy arrays, in float64."""
    s = np.sort(np.asarray(z, dtype=np.float64), axis=1)
    out: np.ndarray = s[:, -1] - s[:, -2]
    return out


def freeze(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with no parameter requiring gradients (returned for chaining)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
