"""Which single-parameter changes a sample reveals through a top-1 label, at first order.

A sample with label ``c``, runner-up ``r`` and margin ``m = z_c - z_r`` changes label
when a tampering lowers ``z_c - z_r`` by more than ``m``. Scaling one parameter
``theta_k`` by ``1 + delta`` moves that difference by about
``delta * theta_k * g_k`` with ``g_k = d(z_c - z_r)/d(theta_k)``, so the label flips when

    delta * theta_k * g_k < -m,   i.e.  |delta| >= m / |theta_k * g_k|  with the sign of
                                        delta opposite to that of theta_k * g_k.

``log10(|theta_k * g_k| / m)`` is the sample's *reach* over the parameter: 1 means a 10%
change (of the right sign) flips it, 2 means 1%. Boundary refinement makes ``m`` as small
as the noise floor allows; a twin across the boundary has ``g`` of the opposite sign, so
a pair reveals both directions of a change.

This module gives the reach matrix of a set of samples (one backward pass each),
:func:`reach_coverage`, the share of each parameter tensor whose ``±delta`` change the
set reveals (the figure a fingerprint reports about itself), and the selection by reach
lives in :func:`veriprint.selectors.algorithms.reach_cover`. First order is checked against real edits:
the tests compare each tensor's predicted share with real ±5% edits (digits MLP: within
about one point on average over tensors), and ``benchmarks/studies/detection_power.py`` does the
same on three larger models (a per-tensor gap of 1-3 points on average).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from veriprint.models import OutputKind
from veriprint.noise import as_logits
from veriprint.numerics import label_and_runner_up

__all__ = ["ParameterReach", "parameter_reach", "reach_coverage"]


@dataclass(frozen=True)
class ParameterReach:
    """Reach of ``N`` samples over ``P`` examined parameters.

    Attributes:
        log_reach: ``(N, P)`` float32, ``log10(|theta_k * g_k| / m)``.
        sign: ``(N, P)`` int8, the sign of ``theta_k * g_k``: a change ``delta`` of the
            opposite sign lowers the sample's margin (``0`` where ``g_k`` is 0).
        weights: ``(P,)``: each parameter tensor sums to 1, so every tensor counts the
            same whatever its size.
        tensors: the parameter tensors' names.
        tensor_of: ``(P,)`` index into ``tensors`` of each examined parameter.
        sizes: number of entries of each tensor (examined or not).
    """

    log_reach: torch.Tensor
    sign: torch.Tensor
    weights: torch.Tensor
    tensors: list[str]
    tensor_of: torch.Tensor
    sizes: list[int]

    def __len__(self) -> int:
        return int(self.log_reach.shape[0])

    def rows(self, index: torch.Tensor) -> ParameterReach:
        """The reach of some of the samples."""
        return ParameterReach(self.log_reach[index], self.sign[index], self.weights, self.tensors,
                              self.tensor_of, self.sizes)

    def directed(self) -> torch.Tensor:
        """``(N, 2P)``: column ``k`` is the reach over parameter ``k`` for a negative
        change, column ``P + k`` for a positive one (``-inf`` where that direction raises
        the sample's margin). The reach of a set of samples (a pair, a fingerprint) in
        each direction is the maximum over its rows."""
        neg = torch.full_like(self.log_reach, -math.inf)
        down = torch.where(self.sign > 0, self.log_reach, neg)
        up = torch.where(self.sign < 0, self.log_reach, neg)
        return torch.cat([down, up], dim=1)

    @property
    def directed_weights(self) -> torch.Tensor:
        """``(2P,)``: the weights of :meth:`directed`'s columns (each direction half)."""
        return torch.cat([self.weights, self.weights]) / 2


def parameter_reach(
    model: nn.Module,
    x: torch.Tensor,
    *,
    model_outputs: OutputKind = "logits",
    per_tensor: int = 4096,
    seed: int = 0,
    progress: bool = False,
) -> ParameterReach:
    """First-order reach of each sample's label over the model's parameters.

    One backward pass per sample, in float64 arithmetic on the float32 gradients. Tensors
    larger than ``per_tensor`` entries are represented by a seeded random subset of that
    many entries; every tensor's share stays an unbiased estimate and a bag of hundreds
    takes a few MB. The result lies on the device of ``x`` (the subsets are drawn on the
    CPU, so they are the same everywhere).

    Args:
        model: the intact classifier (eval mode; its parameters are not changed).
        x: samples ``(N, ...)``.
        model_outputs: what the model returns.
        per_tensor: at most this many entries examined per parameter tensor.
        seed: seed of the subsets.
        progress: show a progress bar.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.numel() > 0]
    if not named:
        raise ValueError("expected a model with parameters, got none")
    if per_tensor < 1:
        raise ValueError(f"expected per_tensor >= 1, got {per_tensor}")
    g = torch.Generator().manual_seed(seed)  # subsets drawn on the CPU (the same on every device), then moved
    dev = x.device
    cols = [torch.arange(p.numel(), device=dev) if p.numel() <= per_tensor
            else torch.randperm(p.numel(), generator=g, device="cpu")[:per_tensor].sort().values.to(dev)
            for _, p in named]
    params = [p for _, p in named]
    theta = torch.cat([p.detach().reshape(-1)[c].double().to(dev) for p, c in zip(params, cols, strict=True)])
    reach, signs = [], []
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for i in tqdm(range(x.shape[0]), desc="reach", unit="sample", disable=not progress, leave=False):
                z = as_logits(model(x[i:i + 1]), model_outputs)[0]
                label, runner = label_and_runner_up(z.detach())
                diff = z[label] - z[runner]
                grads = torch.autograd.grad(diff, params, allow_unused=True)
                gk = torch.cat([torch.zeros(c.numel(), dtype=torch.float64, device=dev) if gr is None
                                else gr.detach().reshape(-1)[c].double() for gr, c in zip(grads, cols, strict=True)])
                tg = theta * gk
                margin = max(float(diff.detach()), 1e-300)
                reach.append(torch.log10(tg.abs() / margin).float())
                signs.append(torch.sign(tg).to(torch.int8))
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
    tensor_of = torch.cat([torch.full((c.numel(),), t, device=dev) for t, c in enumerate(cols)])
    weights = torch.cat([torch.full((c.numel(),), 1.0 / c.numel(), device=dev) for c in cols])
    return ParameterReach(torch.stack(reach), torch.stack(signs), weights, [n for n, _ in named], tensor_of,
                          [p.numel() for p in params])


def reach_coverage(reach: ParameterReach, delta: float = 0.05) -> dict[str, float]:
    """Expected share of each tensor's parameters whose change by ``±delta`` (sign drawn at
    random) flips at least one of the samples, at first order: 1 for a parameter whose
    two directions each flip some sample, 1/2 for one direction, 0 for none.

    Returns ``{tensor name: share}`` plus ``"all"``, the mean over tensors.
    """
    if not delta > 0:
        raise ValueError(f"expected delta > 0, got {delta}")
    hit = (reach.directed() >= math.log10(1.0 / delta)).any(0).double()
    p = reach.log_reach.shape[1]
    d = (hit[:p] + hit[p:]) / 2
    out = {}
    for t, name in enumerate(reach.tensors):
        sel = reach.tensor_of == t
        out[name] = float(d[sel].mean()) if bool(sel.any()) else 0.0
    out["all"] = sum(out[n] for n in reach.tensors) / len(reach.tensors)
    return out
