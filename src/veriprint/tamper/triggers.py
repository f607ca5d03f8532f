"""Trigger patches stamped onto image inputs (trojans and backdoors)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from veriprint.data import Dataset
from veriprint.models.train import predict

__all__ = ["Trigger", "attack_success_rate", "concat", "corner_trigger", "triggered_copies"]


@dataclass(frozen=True)
class Trigger:
    """A square patch of pixel values pasted at a fixed position.

    Attributes:
        patch: values, shape ``(C, size, size)``.
        top: row of the patch's top-left corner.
        left: column of the patch's top-left corner.
    """

    patch: torch.Tensor
    top: int
    left: int

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of the images ``x`` ``(N, C, H, W)`` with the patch pasted in."""
        if x.dim() != 4:
            raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(x.shape)}")
        out = x.clone()
        _, s, t = self.patch.shape
        out[:, :, self.top : self.top + s, self.left : self.left + t] = self.patch
        return out

    def mask(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """A 0/1 mask of the patch area for images of ``shape`` ``(N, C, H, W)``."""
        m = torch.zeros(shape[1:])
        _, s, t = self.patch.shape
        m[:, self.top : self.top + s, self.left : self.left + t] = 1.0
        return m


def corner_trigger(x: torch.Tensor, size: int, value: torch.Tensor | float | None = None) -> Trigger:
    """A ``size`` x ``size`` patch one pixel in from the bottom-right corner of images ``x``.

    Args:
        x: example images ``(N, C, H, W)`` (only the shape is used).
        size: side of the patch in pixels; must fit inside the image with its margin.
        value: the patch content: a ``(C, size, size)`` tensor, a constant, or ``None``
            for a black-and-white checkerboard (the BadNets pattern).
    """
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(x.shape)}")
    c, h, w = x.shape[1:]
    if not 1 <= size <= min(h, w) - 1:
        raise ValueError(f"expected 1 <= trigger size <= {min(h, w) - 1} for {h}x{w} images, got {size}")
    if value is None:
        grid = torch.arange(size)
        patch = ((grid[:, None] + grid[None, :]) % 2 == 0).float().expand(c, size, size).clone()
    elif isinstance(value, torch.Tensor):
        patch = value.reshape(c, size, size).clone()
    else:
        patch = torch.full((c, size, size), float(value))
    margin = 1 if min(h, w) - size >= 1 else 0
    return Trigger(patch, h - size - margin, w - size - margin)


def attack_success_rate(model: torch.nn.Module, data: Dataset, trigger: Trigger, target: int) -> float:
    """Fraction of triggered inputs of other classes that the model labels ``target``."""
    assert data.y is not None
    x = data.x[data.y != target]
    if not len(x):
        raise ValueError(f"expected samples of classes other than {target} in {data.name}, found none")
    labels = predict(model, trigger.stamp(x)).argmax(-1)
    return float((labels == target).float().mean())


def triggered_copies(data: Dataset, trigger: Trigger, target: int, fraction: float, seed: int) -> Dataset:
    """Stamped copies of a seeded ``fraction`` of the non-``target`` samples, labelled ``target``."""
    assert data.y is not None
    idx = (data.y != target).nonzero().flatten()
    k = max(1, round(fraction * len(idx)))
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:k]]
    x = trigger.stamp(data.x[idx])
    return Dataset(x, torch.full((k,), target, dtype=torch.long), data.domain, f"{data.name}+trigger")


def concat(*parts: Dataset) -> Dataset:
    """One data set holding every part's samples (the first part's domain and name)."""
    ys = [p.y for p in parts]
    if any(y is None for y in ys):
        raise ValueError("expected labelled data sets")
    y = torch.cat([y for y in ys if y is not None])
    return Dataset(torch.cat([p.x for p in parts]), y, parts[0].domain, parts[0].name)
