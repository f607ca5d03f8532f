"""Sensitive-Sample generation: projected gradient ascent (Algorithm 1, Eq. 7).

The whole bag is optimized in one batch (chunked to bound memory): every sample has its
own objective and its own Adam moments, so batching changes nothing but speed.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from veriprint._callable import callable_module
from veriprint.data import InputDomain
from veriprint.models import LastLayer, OutputKind, split_last_layer
from veriprint.numerics import top2_margin
from veriprint.pipeline.objective import entropy_topk, log_sensitivity

__all__ = [
    "GenerationConfig",
    "GenerationResult",
    "generate",
    "margins",
    "project",
    "psnr",
    "result_for",
    "snap_to_ball",
]

log = logging.getLogger(__name__)

Norm = Literal["linf", "l2"]
Objective = Literal["ssf", "entropy"]


@dataclass(frozen=True)
class GenerationConfig:
    """How Sensitive-Samples are generated.

    Args:
        steps: maximum number of ascent steps, the paper's ``itr_max`` (default 1000).
        lr: Adam learning rate in input units (default 1e-3, the paper's).
        eps: radius of the ball around the seed, in input units (default 8/255).
        norm: ``"linf"`` (default) or ``"l2"``.
        objective: ``"ssf"`` (Eq. 6, default) or ``"entropy"`` (IBSF, top-``k`` entropy).
        params: parameters of interest for ``"ssf"``: ``"last"`` (default), ``"all"``, or
            a tuple of names / glob patterns.
        outputs: ``f`` in Eq. 6: ``"probs"`` (default) or ``"logits"``.
        log_space: ascend ``log S`` instead of ``S`` (default True). Per sample the two
            gradients point the same way; ``log S`` keeps its scale on saturated models
            where ``S`` and its gradient vanish under Adam's epsilon.
        entropy_k: ``k`` of the IBSF objective (default 10).
        batch_size: samples optimized together; bounds memory (default 500).
        patience: stop a chunk when its mean objective has not improved by ``min_delta``
            for this many steps; 0 disables early stopping (default 100).
        min_delta: improvement that resets the patience counter (default 1e-4).
        version: config schema version.
    """

    steps: int = 1000
    lr: float = 1e-3
    eps: float = 8 / 255
    norm: Norm = "linf"
    objective: Objective = "ssf"
    params: str | tuple[str, ...] = "last"
    outputs: OutputKind = "probs"
    log_space: bool = True
    entropy_k: int = 10
    batch_size: int = 500
    patience: int = 100
    min_delta: float = 1e-4
    version: int = 1

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool]] = [
            ("steps", isinstance(self.steps, int) and self.steps >= 0),
            ("lr", self.lr > 0 and math.isfinite(self.lr)),
            ("eps", self.eps >= 0 and math.isfinite(self.eps)),
            ("norm", self.norm in ("linf", "l2")),
            ("objective", self.objective in ("ssf", "entropy")),
            ("outputs", self.outputs in ("probs", "logits")),
            ("entropy_k", isinstance(self.entropy_k, int) and self.entropy_k >= 2),
            ("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1),
            ("patience", isinstance(self.patience, int) and self.patience >= 0),
            ("min_delta", self.min_delta >= 0),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"invalid GenerationConfig.{name}: got {getattr(self, name)!r}")
        if isinstance(self.params, list):
            object.__setattr__(self, "params", tuple(self.params))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = self.params if isinstance(self.params, str) else list(self.params)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationConfig:
        """Read a stored config; a newer ``version`` or an unknown key is refused, named."""
        from veriprint.configs import from_mapping

        d = dict(d)
        if isinstance(d.get("params"), list):
            d["params"] = tuple(d["params"])
        return from_mapping(cls, d)


@dataclass(frozen=True)
class GenerationResult:
    """Generated samples and what is known about each.

    Attributes:
        samples: float32 samples on the input grid, shape ``(N, ...)``.
        grid: their grid indices (uint8 for 8-bit data, int16 up to 32,767 levels, int32 above), or ``None``
            for continuous inputs.
        seeds: the natural inputs they started from.
        log_s_before: ``log S`` of the seeds, shape ``(N,)`` (objective ``"ssf"``), or the
            entropy for ``"entropy"``.
        log_s_after: the same for the snapped samples.
        linf: L-inf distance to the seed per sample.
        l2: L2 distance to the seed per sample.
        psnr: PSNR against the seed in dB (``inf`` when unchanged).
        margin: top-1 minus top-2 logit (``log p``) per sample.
        labels: top-1 label per sample.
        history: mean objective and mean PSNR after each step, shape ``(steps_run, 2)``.
        steps_run: steps taken by the longest chunk.
        seconds: wall time.
        config: the configuration used.
        domain: the input domain.
    """

    samples: torch.Tensor
    grid: torch.Tensor | None
    seeds: torch.Tensor
    log_s_before: torch.Tensor
    log_s_after: torch.Tensor
    linf: torch.Tensor
    l2: torch.Tensor
    psnr: torch.Tensor
    margin: torch.Tensor
    labels: torch.Tensor
    history: torch.Tensor
    steps_run: int
    seconds: float
    config: GenerationConfig
    domain: InputDomain = field(default_factory=InputDomain)

    def __len__(self) -> int:
        return int(self.samples.shape[0])


def project(x: torch.Tensor, v0: torch.Tensor, eps: float, norm: Norm, domain: InputDomain) -> torch.Tensor:
    """Project onto ``{x : ||x - v0|| <= eps} ∩ [lo, hi]^m`` (ball first, then the box).

    For L-inf this is the exact projection. For L2, scaling into the ball then clamping
    to the box keeps the point feasible (clamping only moves coordinates towards
    ``v0``, which lies in the box) without being the exact Euclidean projection.
    """
    d = x - v0
    if norm == "linf":
        d = d.clamp(-eps, eps)
    else:
        n = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        d = d * (eps / n).clamp(max=1.0).view(-1, *([1] * (d.dim() - 1)))
    return domain.clamp(v0 + d)


def snap_to_ball(x: torch.Tensor, v0: torch.Tensor, eps: float, norm: Norm, domain: InputDomain) -> torch.Tensor:
    """Round to the input grid without leaving the ball or the box.

    L-inf: round, then clip each grid index into the ball. L2: round; samples that then
    leave the ball are truncated towards the seed instead (which never increases any
    coordinate's distance when the seed is on the grid).
    """
    if domain.levels is None:
        return project(x, v0, eps, norm, domain)
    step = domain.step
    g = domain.to_grid(x)
    g0 = (v0.double() - domain.lo) / step
    if norm == "linf":
        lower = torch.ceil(g0 - eps / step - 1e-9).clamp(min=0)
        upper = torch.floor(g0 + eps / step + 1e-9).clamp(max=domain.levels)
        g = torch.minimum(torch.maximum(g.double(), lower), upper).long()
        return domain.from_grid(g)
    snapped = domain.from_grid(g)
    over = (snapped - v0).flatten(1).norm(dim=1) > eps * (1 + 1e-6)
    if over.any():
        gx = (x.double() - domain.lo) / step
        trunc = (g0 + torch.trunc(gx - g0)).round().clamp(0, domain.levels).long()
        snapped[over] = domain.from_grid(trunc[over])
    return snapped


def psnr(x: torch.Tensor, v0: torch.Tensor, domain: InputDomain) -> torch.Tensor:
    """Peak signal-to-noise ratio of ``x`` against ``v0`` per sample, in dB."""
    mse = (x.double() - v0.double()).pow(2).flatten(1).mean(dim=1)
    return (10 * torch.log10((domain.hi - domain.lo) ** 2 / mse)).float()


def margins(out: torch.Tensor, model_outputs: OutputKind = "logits") -> torch.Tensor:
    """Top-1 minus top-2 logit per sample (for a probs model, of ``log p``)."""
    z = torch.log(out.clamp_min(1e-45)) if model_outputs == "probs" else out
    return top2_margin(z)


def _objective(model: nn.Module, x: torch.Tensor, cfg: GenerationConfig, model_outputs: OutputKind,
               last: LastLayer | None = None) -> torch.Tensor:
    if cfg.objective == "entropy":
        return entropy_topk(model, x, k=cfg.entropy_k, model_outputs=model_outputs)
    ls = log_sensitivity(model, x, params=cfg.params, outputs=cfg.outputs, model_outputs=model_outputs, last=last)
    return ls if cfg.log_space else torch.exp(ls)


def _closed_form_layer(model: nn.Module, v0: torch.Tensor, cfg: GenerationConfig,
                       model_outputs: OutputKind) -> LastLayer | None:
    """The last layer, located once per chunk, when every step uses the closed form."""
    if cfg.objective != "ssf" or cfg.params != "last" or isinstance(model, torch.jit.ScriptModule):
        return None
    return split_last_layer(model, v0, model_outputs)


def _ascend(
    model: nn.Module, v0: torch.Tensor, cfg: GenerationConfig, domain: InputDomain,
    model_outputs: OutputKind, bar: Any, deadline: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    x = v0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=cfg.lr, maximize=True)
    history = torch.full((cfg.steps, 2), float("nan"), device=v0.device)
    best, since = -math.inf, 0
    last = _closed_form_layer(model, v0, cfg, model_outputs)
    for step in range(cfg.steps):
        value = _objective(model, x, cfg, model_outputs, last)
        # the gradient with respect to the samples only: no parameter gradients
        (x.grad,) = torch.autograd.grad(value.sum(), x)
        opt.step()
        with torch.no_grad():
            x.copy_(project(x, v0, cfg.eps, cfg.norm, domain))
            mean_t = value.detach().mean()
            history[step, 0] = mean_t
            history[step, 1] = psnr(x, v0, domain).clamp(max=200).mean()
            mean = float(mean_t)  # the one value per step the host needs (patience)
        bar.update(1)
        if deadline is not None and time.perf_counter() > deadline:
            bar.update(cfg.steps - step - 1)
            return x.detach(), history[: step + 1]
        if cfg.patience:
            if mean > best + cfg.min_delta * (1 if cfg.log_space else abs(best) if math.isfinite(best) else 1):
                best, since = mean, 0
            else:
                since += 1
                if since >= cfg.patience:
                    bar.update(cfg.steps - step - 1)
                    return x.detach(), history[: step + 1]
    return x.detach(), history


def generate(
    model: nn.Module,
    seeds: torch.Tensor,
    config: GenerationConfig | None = None,
    *,
    domain: InputDomain | None = None,
    model_outputs: OutputKind = "logits",
    progress: bool = True,
    deadline: float | None = None,
) -> GenerationResult:
    """Turn natural seeds into Sensitive-Samples.

    Projected gradient ascent with Adam on ``log S`` (Eq. 6) or the IBSF entropy, under
    ``x in [lo, hi]^m`` and ``||x - v0|| <= eps`` (Eq. 7). The paper's Algorithm 1 stops
    once the sample leaves the eps-ball; here each step is projected back instead, so
    every iterate is feasible. The final samples are snapped to the input grid (inside
    the ball) and all reported figures are computed on the snapped samples.

    Args:
        model: classifier in eval mode.
        seeds: natural inputs ``(N, ...)``, the ``v0`` of Eq. 7.
        config: :class:`GenerationConfig` (default: the paper's settings).
        domain: input range and grid (default ``[0, 1]``, 8-bit).
        model_outputs: ``"logits"`` (default) or ``"probs"`` for a softmax-ending model.
        progress: show a progress bar.
        deadline: a ``time.perf_counter()`` value; the ascent stops there (each chunk of
            the bag at its share of the time left), after at least one step. ``steps_run``
            says how far it got.

    Returns:
        A :class:`GenerationResult`.
    """
    cfg = config or GenerationConfig()
    domain = domain or InputDomain()
    if seeds.dim() < 2 or seeds.shape[0] == 0:
        raise ValueError(f"expected seeds of shape (N, ...) with N >= 1, got {tuple(seeds.shape)}")
    seeds = seeds.detach().float()
    if seeds.min() < domain.lo or seeds.max() > domain.hi:
        raise ValueError(
            f"expected seeds in [{domain.lo}, {domain.hi}], got [{seeds.min().item()}, {seeds.max().item()}]"
        )
    start = time.perf_counter()
    chunks = list(torch.split(seeds, cfg.batch_size))
    steps = cfg.steps if cfg.eps > 0 else 0
    outs, hists = [], []
    with tqdm(total=steps * len(chunks), desc="generate", unit="step", disable=not progress, leave=False) as bar:
        for i, v0 in enumerate(chunks):
            due = None if deadline is None else start + (deadline - start) * (i + 1) / len(chunks)
            if steps:
                x, hist = _ascend(model, v0, cfg, domain, model_outputs, bar, due)
            else:
                x, hist = v0.clone(), torch.zeros(0, 2, device=v0.device)
            outs.append(snap_to_ball(x, v0, cfg.eps, cfg.norm, domain))
            hists.append((hist, v0.shape[0]))
    samples = torch.cat(outs)
    steps_run = max(h.shape[0] for h, _ in hists)
    history = torch.zeros(steps_run, 2, device=seeds.device)
    for h, n in hists:
        padded = torch.cat([h, h[-1:].expand(steps_run - h.shape[0], 2)]) if h.shape[0] else history
        history += padded * (n / seeds.shape[0])
    return result_for(model, samples, seeds, cfg, domain=domain, model_outputs=model_outputs, history=history,
                      steps_run=steps_run, seconds=time.perf_counter() - start)


def result_for(
    model: nn.Module,
    samples: torch.Tensor,
    seeds: torch.Tensor,
    cfg: GenerationConfig,
    *,
    domain: InputDomain,
    model_outputs: OutputKind = "logits",
    history: torch.Tensor | None = None,
    steps_run: int = 0,
    seconds: float = 0.0,
    log_s_before: torch.Tensor | None = None,
) -> GenerationResult:
    """Measure ``samples`` (objective, distances, PSNR, margins, labels, grid) into a result."""
    before = log_s_before if log_s_before is not None else _describe(model, seeds, cfg, model_outputs)[0]
    after, out = _describe(model, samples, cfg, model_outputs)
    d = (samples - seeds).flatten(1)
    grid = None
    if domain.levels is not None:
        g = domain.to_grid(samples)
        grid = g.to(torch.uint8 if domain.levels <= 255 else torch.int16 if domain.levels <= 32767 else torch.int32)
    return GenerationResult(
        samples=samples,
        grid=grid,
        seeds=seeds,
        log_s_before=before,
        log_s_after=after,
        linf=d.abs().amax(dim=1),
        l2=d.norm(dim=1),
        psnr=psnr(samples, seeds, domain),
        margin=margins(out, model_outputs),
        labels=out.argmax(dim=-1),
        history=torch.zeros(0, 2, device=samples.device) if history is None else history,
        steps_run=steps_run,
        seconds=seconds,
        config=cfg,
        domain=domain,
    )


def _describe(
    model: nn.Module, x: torch.Tensor, cfg: GenerationConfig, model_outputs: OutputKind
) -> tuple[torch.Tensor, torch.Tensor]:
    values, outs = [], []
    for chunk in torch.split(x, cfg.batch_size):
        with torch.no_grad():
            outs.append(model(chunk))
        if cfg.objective == "entropy":
            with torch.no_grad():
                values.append(entropy_topk(model, chunk, k=cfg.entropy_k, model_outputs=model_outputs))
        else:
            params = cfg.params
            with torch.enable_grad() if params != "last" else torch.no_grad():
                v = log_sensitivity(model, chunk, params=params, outputs=cfg.outputs, model_outputs=model_outputs)
            values.append(v.detach())
    return torch.cat(values), torch.cat(outs)


callable_module(__name__, "generate")  # ``veriprint.pipeline.generate`` is this module and this function alike
