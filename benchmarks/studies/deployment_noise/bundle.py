"""Deployment noise, owner side: train or load the models and write the bundle (``--prepare``)."""

from __future__ import annotations

import copy
import importlib
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.studies.deployment_noise._common import BUNDLE_FORMAT, BUNDLE_VERSION


@dataclass(frozen=True)
class Recipe:
    """How one bundled model is obtained and fingerprinted (prepare mode only)."""

    name: str
    factory: str
    kwargs: dict[str, Any]
    data: str
    about: str
    epochs: int = 1
    eps: float | None = None
    lr: float | None = None


RECIPES: dict[str, Recipe] = {
    "fashion-cnn": Recipe("fashion-cnn", "veriprint.zoo:fashion_cnn", {}, "fashion-mnist",
                          "the demo's reference BatchNorm CNN (veriprint.models.train.reference_model)"),
    "digits-mlp": Recipe("digits-mlp", "veriprint.zoo:digits_mlp", {}, "digits",
                         "LayerNorm/GELU MLP 64-64-32-10 trained on 8x8 digits",
                         epochs=20, eps=2 / 16, lr=1e-2),
    "fashion-mlp": Recipe("fashion-mlp", "veriprint.zoo:mlp", {"in_features": 784, "hidden": [256, 128]},
                          "fashion-mnist", "LayerNorm/GELU MLP 784-256-128-10 trained on 12,000 images"),
}


def _log(msg: str) -> None:
    print(f"[deployment-noise] {msg}", file=sys.stderr, flush=True)


def _build(factory: str, kwargs: dict[str, Any]) -> nn.Module:
    module, _, name = factory.partition(":")
    fn = getattr(importlib.import_module(module), name)
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    model: nn.Module = fn(**kw)
    return model


def _trained(recipe: Recipe, epochs: int | None = None) -> nn.Module:
    """The recipe's model, trained (seeded; one thread, faster for these sizes on a busy CPU)."""
    from veriprint.data import load_data
    from veriprint.models.train import TrainConfig, reference_model, train_

    if recipe.name == "fashion-cnn":
        model, _, _ = reference_model("fashion-mnist", progress=False)
        return model.eval()
    torch.manual_seed(0)
    model = _build(recipe.factory, recipe.kwargs)
    if recipe.data == "digits":
        data, batch = load_data("digits", split="train"), 32
    else:
        data, batch = load_data(recipe.data, split="train").subset(slice(0, 12000)), 64
    cfg = TrainConfig(epochs=recipe.epochs if epochs is None else epochs, batch_size=batch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_(model, data, cfg, progress=False)
    finally:
        torch.set_num_threads(threads)


@torch.inference_mode()
def _logits(model: nn.Module, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> np.ndarray:
    m = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    out: np.ndarray = m(x.to(dtype)).double().numpy()
    return out


def prepare(out: Path, models: list[str], *, bag: int, steps: int, natural: int,
            epochs: int | None = None) -> dict[str, Any]:
    """Write the bundle to ``out`` and return its manifest."""
    from veriprint.data import load_data
    from veriprint.models import save_weights
    from veriprint.models.train import accuracy
    from veriprint.pipeline import FingerprintConfig, make_fingerprint
    from veriprint.pipeline.generate import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    entries = []
    for name in models:
        recipe = RECIPES[name]
        t0 = time.perf_counter()
        model = _trained(recipe, epochs)
        test = load_data(recipe.data, split="test")
        gen_kw: dict[str, Any] = {"steps": steps}
        if recipe.eps is not None:
            gen_kw["eps"] = recipe.eps
        if recipe.lr is not None:
            gen_kw["lr"] = recipe.lr
        cfg = FingerprintConfig(bag=bag, generation=GenerationConfig(**gen_kw))
        fp, gen, _ = make_fingerprint(model, test, cfg, progress=False, source=recipe.factory)
        fp = fp.save(out / f"{name}.vpf")
        save_weights(model, out / f"{name}.safetensors")
        x_nat = test.x[:natural].float()
        y_nat = test.y[:natural] if test.y is not None else torch.zeros(len(x_nat), dtype=torch.long)
        sets = {"natural": x_nat, "fingerprint": fp.samples, "bag": gen.samples}
        arrays: dict[str, np.ndarray] = {"natural_y": y_nat.numpy()}
        for key, x in sets.items():
            if key != "fingerprint":
                arrays[f"{key}_x"] = x.numpy().astype(np.float32)
            arrays[f"{key}_z32"] = _logits(model, x).astype(np.float32)
            arrays[f"{key}_z64"] = _logits(model, x.double(), torch.float64)
        if not np.array_equal(arrays["fingerprint_z32"], fp.expected.numpy()):
            _log(f"{name}: CPU logits of the fingerprint samples differ from the stored expected outputs")
        np.savez_compressed(out / f"{name}.npz", **arrays)  # type: ignore[arg-type]
        acc = accuracy(model, test)
        entries.append({
            "name": name, "factory": recipe.factory, "kwargs": recipe.kwargs, "about": recipe.about,
            "data": f"{recipe.data}/test", "weights": f"{name}.safetensors", "fingerprint": f"{name}.vpf",
            "arrays": f"{name}.npz", "epochs": None if name == "fashion-cnn" else (recipe.epochs if epochs is None else epochs),
            "test_accuracy": round(acc, 4), "natural": len(x_nat),
            "bag": len(gen), "samples": len(fp), "noise": fp.noise.to_dict(),
            "fingerprint_config": fp.meta["config"], "seconds": round(time.perf_counter() - t0, 1),
        })
        _log(f"{name}: accuracy {acc:.1%}, {len(fp)} samples, floor {fp.noise.floor:.3g}, "
             f"{time.perf_counter() - t0:.0f} s")
    manifest = {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
        "prepared": {"torch": torch.__version__, "python": platform.python_version(),
                     "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                     "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - start, 1),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "models": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
