"""Adversarial fine-tuning, the adaptive attacker of the paper's Section 5.4 (Table 6).

The attacker knows the method. It runs an attack, generates its own Sensitive-Samples
from the intact model with :func:`veriprint.pipeline.generate.generate` (seeds drawn from its data
with a seed different from the owner's), and fine-tunes the tampered model to keep those
samples' intact outputs (KL divergence of the probabilities, or MSE of the logits) while
still training on the attack's own objective. The paper found this makes tampering easier
to detect, not harder; this attack lets one measure that on any model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from veriprint.models.train import predict
from veriprint.tamper.base import AttackContext, AttackOutcome, attack_info, register, require
from veriprint.tamper.poisoning import PoisonConfig
from veriprint.tamper.training import fit_

__all__ = ["AdversarialFineTuneConfig", "divergence"]


@dataclass(frozen=True)
class AdversarialFineTuneConfig:
    """An attack followed by adversarial fine-tuning on the attacker's Sensitive-Samples.

    Args:
        attack: the config of the attack to hide, or an attack name for its defaults
            (default: error-generic poisoning, ``PoisonConfig()``); it must be a
            training-based attack.
        samples: number of Sensitive-Samples the attacker generates (default 100).
        seed: seed of the attacker's seed-image draw (default 1; the owner's is 0).
        gen_steps: generation steps (default 300).
        gen_eps: L-inf radius of generation (default 8/255).
        divergence: ``"kl"`` (KL of intact to tampered probabilities, default) or
            ``"mse"`` (of the logits).
        weight: weight of the preservation term (default 1.0).
        steps: fine-tune steps (default 300).
        lr: Adam learning rate (default 1e-4).
        batch_size: batch size of the attack's own data (default 64).
    """

    attack: object = field(default_factory=PoisonConfig)
    samples: int = 100
    seed: int = 1
    gen_steps: int = 300
    gen_eps: float = 8 / 255
    divergence: Literal["kl", "mse"] = "kl"
    weight: float = 1.0
    steps: int = 300
    lr: float = 1e-4
    batch_size: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.attack, str):  # an attack name: its default config
            object.__setattr__(self, "attack", attack_info(self.attack).config_type())
        info = attack_info(self.attack)
        require(info.config_type is not AdversarialFineTuneConfig, "an attack other than adversarial-finetune",
                info.name)
        require(isinstance(self.samples, int) and self.samples >= 1, "samples >= 1", self.samples)
        require(isinstance(self.gen_steps, int) and self.gen_steps >= 0, "gen_steps >= 0", self.gen_steps)
        require(self.gen_eps >= 0, "gen_eps >= 0", self.gen_eps)
        require(self.divergence in ("kl", "mse"), "divergence 'kl' or 'mse'", self.divergence)
        require(self.weight > 0, "weight > 0", self.weight)
        require(isinstance(self.steps, int) and self.steps >= 0, "steps >= 0", self.steps)
        require(self.lr > 0, "lr > 0", self.lr)
        require(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size >= 1", self.batch_size)


def divergence(kind: str, reference: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(reference) || softmax(out))`` (batch mean) or the MSE of the logits."""
    if kind == "mse":
        return F.mse_loss(out, reference)
    return F.kl_div(F.log_softmax(out, dim=-1), F.log_softmax(reference, dim=-1),
                    log_target=True, reduction="batchmean")


@register(AdversarialFineTuneConfig, "adversarial-finetune",
          "adaptive attacker: hide an attack by fine-tuning on its own Sensitive-Samples", family="paper")
def _adversarial_finetune(model: nn.Module, cfg: AdversarialFineTuneConfig, ctx: AttackContext) -> AttackOutcome:
    from veriprint.pipeline.generate import GenerationConfig, generate

    intact = copy.deepcopy(model).eval()
    info = attack_info(cfg.attack)
    base = info.fn(model, cfg.attack, ctx)
    if base.objective is None:
        raise ValueError(f"attack {info.name!r} has no training objective to keep during adversarial fine-tuning")
    obj = base.objective
    seeds = ctx.data.sample(min(cfg.samples, len(ctx.data)), seed=cfg.seed).x
    gen = generate(intact, seeds, GenerationConfig(steps=cfg.gen_steps, eps=cfg.gen_eps),
                   domain=ctx.data.domain, progress=ctx.progress)
    samples = gen.samples
    reference = predict(intact, samples)

    def preserve(m: nn.Module, _step: int) -> torch.Tensor:
        return cfg.weight * divergence(cfg.divergence, reference, m(samples))

    def flips(m: nn.Module) -> float:
        return float((predict(m, samples).argmax(-1) != reference.argmax(-1)).float().mean())

    with torch.no_grad():
        div_before = float(divergence(cfg.divergence, reference, predict(base.model, samples)))
    flips_before = flips(base.model)
    tuned = fit_(base.model, obj.train, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                 params=obj.params, loss=obj.loss, project=obj.project, extra_loss=preserve,
                 progress=ctx.progress, desc="adversarial fine-tune")
    with torch.no_grad():
        div_after = float(divergence(cfg.divergence, reference, predict(tuned, samples)))
    metrics = {
        "own_samples_divergence_before_af": div_before,
        "own_samples_divergence_after_af": div_after,
        "own_samples_flip_rate_before_af": flips_before,
        "own_samples_flip_rate_after_af": flips(tuned),
        "samples": float(len(samples)),
    }
    if base.success is not None:
        metrics["success_before_af"] = base.success
    return AttackOutcome(tuned, f"{base.success_name} (after AF)", obj.measure(tuned), metrics=metrics,
                         size_saving=base.size_saving, objective=obj)
