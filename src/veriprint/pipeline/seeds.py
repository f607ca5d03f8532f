"""Stage 1, seeds: draw the bag of natural inputs that generation starts from."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from veriprint.data import Dataset
from veriprint.errors import ConfigError
from veriprint.models import OutputKind, model_device
from veriprint.noise import as_logits
from veriprint.numerics import label_and_runner_up

__all__ = ["VIEW_KINDS", "draw_seeds", "natural_views", "view_names", "with_views"]

#: What ``FingerprintConfig.views`` may name.
VIEW_KINDS = ("auto", "shifts", "shifts+flips", "none")


def natural_views(x: torch.Tensor, need: int, kind: str = "auto") -> tuple[torch.Tensor, list[str]]:
    """More natural inputs from few: ``x`` followed by shifted (and mirrored) copies of it,
    as many whole groups as reach ``need`` inputs (or all there are).

    Views of images ``(N, C, H, W)``: shifts by ``max(1, W / 32)`` pixels right, left,
    down and up, the edge pixels repeated (so every pixel stays on the input's grid);
    with ``"shifts+flips"`` (``"auto"`` on 3-channel images) also the mirror image and its
    four shifts. A mirrored digit or text line is not a natural input of its class, which
    is why ``"auto"`` mirrors only colour images. Flat inputs ``(N, D)`` have no views.

    Returns:
        The inputs (``x`` first) and the name of each group of ``len(x)`` of them.
    """
    groups = _views(x, kind)
    need_groups = max(1, min(len(groups), -(-need // max(1, len(x)))))
    picked = groups[:need_groups]  # only the views the bag needs are made
    return torch.cat([view(x) for _, view in picked]), [name for name, _ in picked]


def view_names(x: torch.Tensor, kind: str = "auto") -> list[str]:
    """The groups :func:`natural_views` can make of ``x``, ``"original"`` first."""
    return [name for name, _ in _views(x, kind)]


def _views(x: torch.Tensor, kind: str) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """Each view's name and how it is made, ``"original"`` first."""
    if kind not in VIEW_KINDS:
        raise ConfigError(f"expected views in {', '.join(VIEW_KINDS)}, got {kind!r}")
    if kind == "none" or x.dim() != 4 or min(x.shape[2:]) < 8:
        return [("original", lambda t: t)]
    s = max(1, round(x.shape[3] / 32))

    def shift(dy: int, dx: int, mirror: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        def view(t: torch.Tensor) -> torch.Tensor:
            t = t.flip(3) if mirror else t
            h, w = t.shape[2:]
            rows = (torch.arange(h, device=t.device) - dy).clamp(0, h - 1)
            cols = (torch.arange(w, device=t.device) - dx).clamp(0, w - 1)
            return t[:, :, rows][:, :, :, cols]
        return view

    moves = [("right", 0, s), ("left", 0, -s), ("down", s, 0), ("up", -s, 0)]
    out: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [("original", lambda t: t)]
    out += [(f"shift {name} {s}px", shift(dy, dx, False)) for name, dy, dx in moves]
    if kind == "shifts+flips" or (kind == "auto" and x.shape[1] == 3):
        out.append(("mirror", lambda t: t.flip(3)))
        out += [(f"mirror, shift {name} {s}px", shift(dy, dx, True)) for name, dy, dx in moves]
    return out


def with_views(data: Dataset | torch.Tensor, need: int, kind: str = "auto") -> tuple[Dataset | torch.Tensor, list[str]]:
    """``data`` with :func:`natural_views` added when it has fewer than ``need`` inputs
    (labels repeated); ``data`` itself otherwise."""
    x = data.x if isinstance(data, Dataset) else data
    if need <= len(x):
        return data, ["original"]
    xv, names = natural_views(x, need, kind)
    if not isinstance(data, Dataset):
        return xv, names
    y = None if data.y is None else data.y.repeat(len(names))
    return Dataset(xv, y, data.domain, data.name), names


def draw_seeds(
    data: Dataset | torch.Tensor, n: int, seed: int, how: str = "random",
    model: nn.Module | None = None, model_outputs: OutputKind = "logits", *, pool: int = 0,
    batch_size: int = 500,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bag: ``n`` natural inputs and their indices in ``data``.

    ``how="random"``: uniformly (seeded), as the paper does. ``how="boundary"``: among a
    seeded candidate set of up to ``max(20 n, 20000)`` inputs, those with the smallest
    top-1 margins, round-robin over predicted classes (so every class gets boundaries);
    needs ``model``. ``pool`` (when above 0) sets the size of that candidate set instead,
    at least ``n``; ``batch_size`` bounds the batches its margins are computed in.

    Raises:
        ConfigError: ``n`` exceeds the data's size.
    """
    x = data.x if isinstance(data, Dataset) else data
    if n > len(x):
        raise ConfigError(f"expected a bag of at most {len(x)} seeds (the data size), got bag={n}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g, device="cpu")  # drawn on the CPU: the same bag on every device
    if how == "random" or model is None:
        idx = perm[:n]
        return x[idx].float(), idx
    cand = perm[: max(n, pool) if pool > 0 else max(20 * n, min(len(x), 20000))]
    dev = model_device(model)
    with torch.inference_mode():  # the pool goes through the model batch by batch, where the model is
        z = torch.cat([as_logits(model(c.float().to(dev)), model_outputs) for c in torch.split(x[cand], batch_size)])
    top, runner = label_and_runner_up(z)
    rows = torch.arange(len(z), device=z.device)
    margin = (z[rows, top] - z[rows, runner]).cpu()  # the pool's margins and labels, brought over once
    label = top.cpu()
    # Round-robin over predicted classes, smallest margin first within each class.
    queues = [cand_i[margin[cand_i].argsort()] for c in label.unique()
              for cand_i in [(label == c).nonzero().flatten()]]
    picked: list[int] = []
    depth = 0
    while len(picked) < n:
        for q in queues:
            if depth < len(q) and len(picked) < n:
                picked.append(int(q[depth]))
        depth += 1
    idx = cand[torch.tensor(picked, dtype=torch.long, device="cpu")]
    return x[idx].float(), idx
