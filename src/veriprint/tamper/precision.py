"""Precision reduction, the cheating provider's compression (the paper's Table 2, row 4).

Two attacks: casting every floating weight to a 16-bit format (``cast``), and uniform
symmetric weight quantization to ``bits`` bits per tensor or per output channel
(``quantize``; 8 bits is the paper's "4x compression"), optionally followed by a short
recovery fine-tune trained straight-through the quantizer. The tampered model keeps float32
tensors that hold exactly the reduced-precision values, so it runs and loads anywhere,
and behaves as the compressed model served by the provider would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from veriprint.models.train import accuracy
from veriprint.tamper.base import AttackContext, AttackOutcome, Objective, register, require
from veriprint.tamper.layers import weight_names
from veriprint.tamper.training import fit_

__all__ = ["CastConfig", "QuantizeConfig", "quantize_tensor"]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class CastConfig:
    """Cast every floating parameter and buffer to a 16-bit format and back.

    Args:
        dtype: ``"float16"`` (default) or ``"bfloat16"``.
        buffers: also cast floating buffers such as BatchNorm statistics (default True).
    """

    dtype: Literal["float16", "bfloat16"] = "float16"
    buffers: bool = True

    def __post_init__(self) -> None:
        require(self.dtype in _DTYPES, f"dtype in {sorted(_DTYPES)}", self.dtype)


@register(CastConfig, "cast", "precision reduction: cast weights to float16/bfloat16 (2x)", family="paper")
def _cast(model: nn.Module, cfg: CastConfig, ctx: AttackContext) -> AttackOutcome:
    dtype = _DTYPES[cfg.dtype]
    tensors = list(model.parameters()) + (list(model.buffers()) if cfg.buffers else [])
    with torch.no_grad():
        for t in tensors:
            if t.is_floating_point():
                t.copy_(t.to(dtype).to(t.dtype))
    return AttackOutcome(model, "compression", 2.0, size_saving=0.5)


@dataclass(frozen=True)
class QuantizeConfig:
    """Uniform symmetric quantization of weights to ``bits`` bits.

    ``w_q = s * clamp(round(w / s), -(2^(b-1) - 1), 2^(b-1) - 1)`` with the scale
    ``s = max|w| / (2^(b-1) - 1)`` per tensor or per output channel (dimension 0).

    Args:
        bits: bits per weight, 2 to 16 (default 8: 4x compression of float32).
        granularity: ``"tensor"`` (default) or ``"channel"``.
        scope: ``"weights"`` (matrices and kernels, default) or ``"all"`` parameters.
        recover_steps: recovery fine-tune steps after quantizing, trained
            straight-through the quantizer (default 0: none).
        recover_lr: Adam learning rate of the recovery (default 1e-4).
        batch_size: recovery batch size (default 64).
        seed: seed of the recovery's batch order (default 0).
    """

    bits: int = 8
    granularity: Literal["tensor", "channel"] = "tensor"
    scope: Literal["weights", "all"] = "weights"
    recover_steps: int = 0
    recover_lr: float = 1e-4
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        require(isinstance(self.bits, int) and 2 <= self.bits <= 16, "2 <= bits <= 16", self.bits)
        require(self.granularity in ("tensor", "channel"), "granularity 'tensor' or 'channel'", self.granularity)
        require(self.scope in ("weights", "all"), "scope 'weights' or 'all'", self.scope)
        require(self.recover_steps >= 0, "recover_steps >= 0", self.recover_steps)
        require(self.recover_lr > 0, "recover_lr > 0", self.recover_lr)
        require(self.batch_size >= 1, "batch_size >= 1", self.batch_size)


def quantize_tensor(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """Symmetric uniform quantization of ``w`` (returned dequantized, same dtype)."""
    qmax = 2 ** (bits - 1) - 1
    if per_channel and w.dim() >= 2:
        amax = w.detach().abs().flatten(1).amax(dim=1).view(-1, *([1] * (w.dim() - 1)))
    else:
        amax = w.detach().abs().max()
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    return (torch.round(w / scale).clamp(-qmax, qmax) * scale).to(w.dtype)


@register(QuantizeConfig, "quantize", "precision reduction: b-bit weight quantization (8 bits: 4x)", family="paper")
def _quantize(model: nn.Module, cfg: QuantizeConfig, ctx: AttackContext) -> AttackOutcome:
    params = dict(model.named_parameters())
    names = weight_names(model) if cfg.scope == "weights" else list(params)
    per_channel = cfg.granularity == "channel"
    chosen = set(names)

    def project(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: quantize_tensor(v, cfg.bits, per_channel) if n in chosen else v for n, v in values.items()}

    def measure(m: nn.Module) -> float:
        return accuracy(m, ctx.eval_data)

    objective = Objective(ctx.data, None, measure, project=project)
    fit_(model, ctx.data, steps=cfg.recover_steps, lr=cfg.recover_lr, batch_size=cfg.batch_size,
         seed=cfg.seed, project=project, progress=ctx.progress, desc="quantize: recover")
    old_bits = sum(32 * t.numel() for t in model.state_dict().values() if t.is_floating_point())
    new_bits = old_bits
    for n in names:
        p = params[n]
        scales = p.shape[0] if per_channel and p.dim() >= 2 else 1
        new_bits -= 32 * p.numel() - (cfg.bits * p.numel() + 32 * scales)
    ratio = old_bits / new_bits
    return AttackOutcome(model, "compression", ratio, size_saving=1 - new_bits / old_bits,
                         metrics={"quantized_tensors": len(names)}, objective=objective)
