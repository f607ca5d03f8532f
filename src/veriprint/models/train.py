"""Training and evaluation helpers for the reference models (seeded, CPU-friendly)."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from veriprint.data import Dataset
from veriprint.numerics import freeze

__all__ = ["TrainConfig", "accuracy", "cache_dir", "predict", "train_"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Adam training. ``epochs`` (default 2), ``lr`` (1e-3), ``batch_size`` (64), ``seed`` (0),
    ``weight_decay`` (0), ``max_steps`` (None: no cap), ``label_smoothing`` (0)."""

    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    weight_decay: float = 0.0
    max_steps: int | None = None
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"expected epochs >= 0, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"expected lr > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {self.batch_size}")


def train_(model: nn.Module, data: Dataset, config: TrainConfig | None = None, *, progress: bool = True) -> nn.Module:
    """Train ``model`` in place on ``data`` (cross-entropy) and return it in eval mode."""
    cfg = config or TrainConfig()
    if data.y is None:
        raise ValueError("training needs labels: the data set has no y")
    g = torch.Generator().manual_seed(cfg.seed)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(data)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    model.train()
    step = 0
    with tqdm(total=total, desc="train", unit="batch", disable=not progress, leave=False) as bar:
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=g)
            for i in range(steps_per_epoch):
                if step >= total:
                    break
                idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                loss = F.cross_entropy(model(data.x[idx]), data.y[idx], label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                bar.update(1)
    return freeze(model)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Raw outputs of ``model`` on ``x``, in batches."""
    return torch.cat([model(c) for c in torch.split(x, batch_size)])


def accuracy(model: nn.Module, data: Dataset) -> float:
    """Top-1 accuracy of ``model`` on labelled ``data``."""
    if data.y is None:
        raise ValueError("accuracy needs labels: the data set has no y")
    return float((predict(model, data.x).argmax(-1) == data.y).float().mean())


def cache_dir() -> Path:
    """Where trained reference models are kept: ``$VERIPRINT_CACHE`` or ``~/.cache/veriprint``."""
    root = Path(os.environ.get("VERIPRINT_CACHE", Path.home() / ".cache" / "veriprint"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def config_key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


REFERENCE_MODELS = {
    "fashion-mnist": ("veriprint.zoo:fashion_cnn", TrainConfig(epochs=1, seed=0)),
    "mnist-5k": ("veriprint.zoo:fashion_cnn", TrainConfig(epochs=3, seed=0)),
    "digits": ("veriprint.zoo:digits_mlp", TrainConfig(epochs=30, batch_size=32, seed=0)),
}


def reference_model(dataset: str, *, progress: bool = True) -> tuple[nn.Module, str, Path]:
    """The default model of a built-in data set, trained once and cached.

    Returns ``(model, factory, weights_path)``; the weights live in :func:`cache_dir`
    under a name keyed by the data set, factory and training config.
    """
    from veriprint.data import load_data
    from veriprint.models import load_model, save_weights

    if dataset not in REFERENCE_MODELS:
        raise ValueError(f"expected one of {sorted(REFERENCE_MODELS)}, got {dataset!r}")
    factory, cfg = REFERENCE_MODELS[dataset]
    path = cache_dir() / f"{dataset}-{config_key(factory, cfg, torch.__version__)}.safetensors"
    if not path.exists():
        torch.manual_seed(cfg.seed)
        model = load_model(factory)
        train_(model, load_data(dataset, split="train"), cfg, progress=progress)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # parallel trainers never share one
        save_weights(model, tmp)
        tmp.replace(path)
    return load_model(factory, weights=path), factory, path
