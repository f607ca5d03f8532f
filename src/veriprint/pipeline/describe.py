"""Stage 7, describe: the chosen samples' expected outputs, reach and metadata, as a
:class:`~veriprint.fingerprint.Fingerprint`."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from veriprint import __version__
from veriprint.coverage.reach import ParameterReach, parameter_reach, reach_coverage
from veriprint.deployments.profiles import served
from veriprint.fingerprint import Fingerprint
from veriprint.fingerprint.meta import META_VERSION
from veriprint.models import OutputKind, model_hash
from veriprint.pipeline.candidates import Candidates
from veriprint.pipeline.config import FingerprintConfig
from veriprint.pipeline.generate import result_for
from veriprint.selectors.algorithms import Selection

__all__ = ["REACH_DELTAS", "base_meta", "describe", "reach_meta"]

#: Relative changes of one parameter for which a fingerprint records its first-order
#: coverage (``meta["reach"]``, see :func:`veriprint.coverage.reach.reach_coverage`).
REACH_DELTAS = (0.05, 0.01)


def reach_meta(reach: ParameterReach) -> dict[str, Any]:
    """The per-tensor shares of ±5% and ±1% changes revealed, as stored in ``meta["reach"]``."""
    shares = [reach_coverage(reach, d) for d in REACH_DELTAS]
    return {
        "deltas": list(REACH_DELTAS),
        "tensors": reach.tensors,
        "sizes": reach.sizes,
        "share": [[round(sh[n], 4) for n in reach.tensors] for sh in shares],
        "all": [round(sh["all"], 4) for sh in shares],
        "first_order": True,
    }


def base_meta(model: nn.Module, c: Candidates, cfg: FingerprintConfig, *, model_outputs: OutputKind,
              source: str | None, input_shape: list[int], num_classes: int) -> dict[str, Any]:
    """What every fingerprint records about its making (before selection's own entries)."""
    return {
        "meta_version": META_VERSION,
        "tool": "veriprint",
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_hash": model_hash(model),
        "model_source": source or type(model).__name__,
        "model_outputs": model_outputs,
        "domain": c.gen.domain.to_dict(),
        "input_shape": input_shape,
        "num_classes": num_classes,
        "config": cfg.to_dict(),
        "profile": cfg.profile.to_dict(),
    }


def describe(model: nn.Module, c: Candidates, cfg: FingerprintConfig, *, idx: torch.Tensor, chosen: torch.Tensor,
             selection: Selection, eligible: int, pairs: int, model_outputs: OutputKind = "logits",
             source: str | None = None, started: float | None = None,
             budget: dict[str, Any] | None = None) -> Fingerprint:
    """The fingerprint of ``chosen`` (samples whose seeds are candidates ``idx``).

    Args:
        model: the intact model.
        c: the candidates they were chosen from.
        cfg: the config, stored in the metadata.
        idx: each chosen sample's candidate (a twin shares its anchor's).
        chosen: the samples, in query order.
        selection: how they were chosen.
        eligible: how many candidates were eligible.
        pairs: how many twin pairs ``chosen`` starts with.
        model_outputs: what the model returns.
        source: a description of the model.
        started: ``time.perf_counter()`` when the pipeline began (for ``meta["seconds"]``).
        budget: how the number of queries was decided (``meta["budget"]``, see
            :class:`veriprint.selectors.budget.Budget`).
    """
    gen = c.gen
    with torch.inference_mode():  # the outputs of the model as the profiled deployment runs it
        expected = served(model, cfg.profile)(chosen).float()
    has_params = any(p.numel() for p in model.parameters())
    reach = parameter_reach(model, chosen, model_outputs=model_outputs, seed=cfg.seed) if has_params else None
    described = result_for(model, chosen, c.seeds[idx], gen.config, domain=gen.domain, model_outputs=model_outputs,
                           history=gen.history, steps_run=gen.steps_run, seconds=gen.seconds,
                           log_s_before=gen.log_s_before[idx])
    meta = base_meta(model, c, cfg, model_outputs=model_outputs, source=source,
                     input_shape=list(chosen.shape[1:]), num_classes=int(expected.shape[1]))
    meta.update({
        "selection": {
            "method": selection.method,
            "indices_in_bag": idx.tolist(),
            "seed_indices_in_data": c.seed_indices[idx].tolist(),
            "coverage": selection.coverage.tolist(),
            "neurons": selection.neurons,
            "eligible": eligible,
            "refined_reached": int(c.reached.sum()),
            "pairs": pairs,
            "seeds": "boundary" if c.boundary else "random",
        },
        "reach": {} if reach is None else reach_meta(reach),
        **({"budget": budget} if budget is not None else {}),
        "generation": {"steps_run": gen.steps_run, "seconds": round(gen.seconds, 3)},
        "labels": expected.argmax(1).tolist(),
        "seconds": round(time.perf_counter() - (started if started is not None else time.perf_counter()), 3),
    })
    return Fingerprint(  # stored on the CPU, wherever the pipeline ran
        samples=chosen.cpu().clone(),
        grid=None if described.grid is None else described.grid.cpu().clone(),
        expected=expected.cpu().clone(),
        seeds=c.seeds[idx].cpu().clone(),
        log_s=described.log_s_after.float().cpu().clone(),
        margin=described.margin.float().cpu().clone(),
        psnr=described.psnr.cpu().clone(),
        noise=c.noise,
        meta=meta,
    )
