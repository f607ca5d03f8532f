"""Stage 1, seeds: draw the bag of natural inputs that generation starts from."""

from __future__ import annotations

import torch
from torch import nn

from veriprint.data import Dataset
from veriprint.errors import ConfigError
from veriprint.models import OutputKind
from veriprint.noise import as_logits

__all__ = ["draw_seeds"]


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
    perm = torch.randperm(len(x), generator=g)
    if how == "random" or model is None:
        idx = perm[:n]
        return x[idx].float(), idx
    cand = perm[: max(n, pool) if pool > 0 else max(20 * n, min(len(x), 20000))]
    with torch.inference_mode():
        z = torch.cat([as_logits(model(c.float()), model_outputs) for c in torch.split(x[cand], batch_size)])
    top2 = z.topk(2, dim=1)
    margin = top2.values[:, 0] - top2.values[:, 1]
    # Round-robin over predicted classes, smallest margin first within each class.
    queues = [cand_i[margin[cand_i].argsort()] for c in top2.indices[:, 0].unique()
              for cand_i in [(top2.indices[:, 0] == c).nonzero().flatten()]]
    picked: list[int] = []
    depth = 0
    while len(picked) < n:
        for q in queues:
            if depth < len(q) and len(picked) < n:
                picked.append(int(q[depth]))
        depth += 1
    idx = cand[torch.tensor(picked, dtype=torch.long)]
    return x[idx].float(), idx
