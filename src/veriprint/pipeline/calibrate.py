"""Stage 3, calibrate: measure the noise floor on the generated samples."""

from __future__ import annotations

import torch
from torch import nn

from veriprint.models import OutputKind
from veriprint.noise import NoiseFloor, calibrate_noise
from veriprint.pipeline.config import FingerprintConfig

__all__ = ["calibrate"]


def calibrate(model: nn.Module, samples: torch.Tensor, cfg: FingerprintConfig, *,
              model_outputs: OutputKind = "logits") -> NoiseFloor:
    """The floor of :func:`veriprint.noise.calibrate_noise` with the config's safety factor,
    declared tolerances, minimum floor, (optionally) onnxruntime, and its device profile:
    the noise measured is that of the model as the profiled deployment runs it, and its
    floor mode (``"measured"``: no fixed minimum, two units of the deployment's resolution).
    No batch is larger than the config's gradient batch (the memory budget's, see
    :mod:`veriprint.pipeline.plan`)."""
    return calibrate_noise(model, samples, model_outputs=model_outputs, onnx=cfg.calibrate_onnx,
                           safety=cfg.safety, declared=cfg.tolerance, declared_prob=cfg.prob_tolerance,
                           min_floor=cfg.min_floor, profile=cfg.profile, floor=cfg.floor,
                           max_batch=cfg.generation.batch_size)
