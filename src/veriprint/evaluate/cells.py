"""The evaluation's units of work: pure functions of declared specs and their inputs.

Four stages form a small task graph (the runner puts them on Dask):

1. :func:`train_model` (one per model): train it, measure its test accuracy.
2. :func:`build_pool` (model x method): fingerprint candidates made with the library's
   own pipeline stages, :func:`veriprint.pipeline.build_candidates` (seeds from the test split,
   generation, noise calibration, optional refinement), keeping the samples whose margin
   clears the noise floor, as a fingerprint would.
3. :func:`run_attack` (one per attack instance): :func:`veriprint.tamper.tamper`.
4. Cells, the leaves: :func:`detection_cell` (model x attack instance x method x spec)
   verifies the tampered model against every pool sample with
   :func:`veriprint.verification.verify.verify` and turns the per-sample detections into exact missing
   rates; :func:`false_positive_cell` (model x method x intact variant) verifies
   functionally identical deployments against every pool sample under every spec.

Every stage is deterministic (seeded) and keyed by a hash of what it depends on
(:func:`cell_key`); trained models, pools and tampered models are also kept on disk
under ``<out>/artifacts`` so an interrupted run resumes without recomputing them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from veriprint.evaluate.missing import (
    hypergeom_curve,
    manc_picks,
    miss_from_picks,
    per_query,
    reach_picks,
    required_samples,
)
from veriprint.evaluate.plan import AttackSpec, MethodSpec, ModelSpec, Plan

__all__ = [
    "AttackArtifact",
    "ModelArtifact",
    "Pool",
    "attack_key",
    "build_pool",
    "cell_key",
    "detection_cell",
    "detection_key",
    "false_positive_cell",
    "fp_key",
    "model_key",
    "pool_key",
    "run_attack",
    "train_model",
]

log = logging.getLogger(__name__)

SCHEMA = 1
"""Bumped whenever a stage's computation changes, so old cached results are not reused."""


def cell_key(kind: str, *parts: object) -> str:
    """A stable hash of a stage's kind and everything it depends on (dataclasses as dicts)."""
    def plain(x: object) -> object:
        if hasattr(x, "__dataclass_fields__"):
            d = asdict(x)  # type: ignore[call-overload]
            # A field added after keys were first written leaves them valid at its default.
            for f in fields(x):  # type: ignore[arg-type]
                if f.metadata.get("key_omits_default") and d[f.name] == f.default:
                    del d[f.name]
            return d
        return x

    text = json.dumps([SCHEMA, kind, *[plain(p) for p in parts]], sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def _pool_params(plan: Plan) -> dict[str, Any]:
    return {"pool": plan.pool, "natural_pool": plan.natural_pool, "seed": plan.seed, "bag": plan.bag,
            "bags": plan.bags, "n_max": plan.n_max}


def _cell_params(plan: Plan) -> dict[str, Any]:
    return {**_pool_params(plan), "ns": plan.ns, "alphas": plan.alphas}


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@functools.lru_cache(maxsize=8)
def _data(source: str, split: str, limit: int | None) -> Any:
    from veriprint.data import load_data

    return load_data(source, split=split, limit=limit)


def _artifact(out: str | None, key: str) -> Path | None:
    if out is None:
        return None
    path = Path(out) / "artifacts" / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(path: Path | None, obj: dict[str, Any]) -> None:
    if path is None:
        return
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
        torch.save(obj, f)
    Path(f.name).replace(path)


def _load(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        return torch.load(path, weights_only=False)  # type: ignore[no-any-return]
    except Exception as e:  # a truncated file from an interrupted run: recompute
        log.warning("ignoring unreadable artifact %s: %s", path, e)
        return None


# ---------------------------------------------------------------------------------------
# Stage 1: models


@dataclass(frozen=True)
class ModelArtifact:
    """A trained model's weights and its figures (the Table 2 analogue's model rows)."""

    key: str
    state: dict[str, torch.Tensor]
    row: dict[str, Any]


def build_module(spec: ModelSpec, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The model of ``spec``, with ``state`` loaded, in eval mode."""
    from veriprint.models import load_model
    from veriprint.numerics import freeze

    torch.manual_seed(spec.seed)
    model = load_model(spec.factory)
    if state is not None:
        model.load_state_dict(state)
    return freeze(model)


def model_key(spec: ModelSpec) -> str:
    return cell_key("model", spec)


def pool_key(plan: Plan, model_spec: ModelSpec, method: MethodSpec) -> str:
    return cell_key("pool", _pool_params(plan), model_spec, method)


def attack_key(model_spec: ModelSpec, attack: AttackSpec) -> str:
    return cell_key("attack", model_spec, attack.attack, attack.params)


def train_model(spec: ModelSpec, *, threads: int = 1, out: str | None = None) -> ModelArtifact:
    """Train ``spec`` on its training split (seeded) and measure its test accuracy."""
    from veriprint.models.train import TrainConfig, accuracy, train_

    key = model_key(spec)
    path = _artifact(out, key)
    cached = _load(path)
    if cached is not None:
        return ModelArtifact(key, cached["state"], cached["row"])
    start = time.perf_counter()
    with _threads(threads):
        model = build_module(spec)
        train = _data(spec.data, "train", spec.train_limit)
        test = _data(spec.data, "test", spec.test_limit)
        train_(model, train, TrainConfig(epochs=spec.epochs, lr=spec.lr, seed=spec.seed), progress=False)
        acc = accuracy(model, test)
    params = sum(p.numel() for p in model.parameters())
    row = {"kind": "model", "key": key, "model": spec.name, "factory": spec.factory, "data": spec.data,
           "train_samples": len(train), "test_samples": len(test), "params": params, "accuracy": acc,
           "seconds": time.perf_counter() - start}
    art = ModelArtifact(key, {k: v.clone() for k, v in model.state_dict().items()}, row)
    _save(path, {"state": art.state, "row": row})
    return art


# ---------------------------------------------------------------------------------------
# Stage 2: pools of candidates


@dataclass(frozen=True)
class Pool:
    """Fingerprint candidates of one model and method (only those above the noise floor).

    Attributes:
        key: the stage key.
        fingerprint: every candidate as one :class:`~veriprint.fingerprint.Fingerprint`
            (samples, grid, intact outputs, noise floor), so the verifier itself
            compares them.
        active: bool ``(P, M)`` penultimate activations (for MANC), or None.
        picks: MANC's picks in each of the plan's bags, ``(bags, n_max)``, or None.
        score: ``log S`` per candidate (MANC's tie-break).
        row: the pool's figures, with the generation history (Figure 3).
        pairs: candidates are twin pairs: the fingerprint holds samples ``2i`` and
            ``2i + 1`` for candidate ``i``, and ``picks`` index candidates (by reach).
    """

    key: str
    fingerprint: Any
    active: np.ndarray | None
    picks: np.ndarray | None
    score: np.ndarray
    row: dict[str, Any]
    pairs: bool = False

    def __len__(self) -> int:
        """Number of candidates (samples, or pairs)."""
        return len(self.fingerprint) // (2 if self.pairs else 1)


def build_pool(plan: Plan, model_spec: ModelSpec, method: MethodSpec, model: ModelArtifact, *,
               out: str | None = None) -> Pool:
    """Generate the candidate pool of ``method`` on the intact model."""
    from veriprint.fingerprint import Fingerprint
    from veriprint.pipeline import (
        FingerprintConfig,
        base_meta,
        build_candidates,
        eligible,
        make_twins,
    )
    from veriprint.pipeline.generate import GenerationConfig, margins, psnr
    from veriprint.selectors.algorithms import activations

    key = pool_key(plan, model_spec, method)
    path = _artifact(out, key)
    cached = _load(path)
    if cached is not None:
        return Pool(key, Fingerprint(**cached["fingerprint"]), cached["active"], cached["picks"], cached["score"],
                    cached["row"], cached.get("pairs", False))
    start = time.perf_counter()
    test = _data(model_spec.data, "test", model_spec.test_limit)
    eps = 0.0 if method.natural else (model_spec.eps if method.eps is None else method.eps)
    size = len(test) if method.natural else min(plan.pool, len(test))
    if method.natural and plan.natural_pool is not None:
        size = min(plan.natural_pool, len(test))
    gen_cfg = GenerationConfig(steps=method.steps, lr=method.lr, eps=eps, objective=method.objective,
                               patience=0)
    cfg = FingerprintConfig(bag=size, select=1, selector="random", refine=method.refine, seed=plan.seed,
                            generation=gen_cfg)
    with _threads(plan.threads):
        net = build_module(model_spec, model.state)
        cands = build_candidates(net, test, cfg, domain=test.domain, progress=False)
        eligible(cands, cfg, 1)  # at least one candidate above the floor, or a clear error
        gen, noise = cands.gen, cands.noise
        keep = (gen.margin > noise.floor).nonzero().flatten()
        if method.pairs:
            tw = make_twins(net, cands, cfg, keep=keep)
            keep, twins = keep[tw.ok], tw.samples[tw.ok]
            samples = torch.stack([gen.samples[keep], twins], dim=1).flatten(0, 1)
            at = keep.repeat_interleave(2)
        else:
            samples, at = gen.samples[keep], keep
        with torch.inference_mode():
            expected = net(samples).float()
        active = None
        reach = None
        if method.pairs:
            reach = _pair_reach(net, samples, seed=plan.seed)
        elif not method.natural:
            active = activations(net, samples).numpy()
    if method.pairs:  # twins are new samples: describe them from scratch
        margin, sample_psnr = margins(expected.double()).float(), psnr(samples, gen.seeds[at], test.domain)
    else:
        margin, sample_psnr = gen.margin[at].float(), gen.psnr[at].float()
    fp = Fingerprint(
        samples=samples.clone(), grid=None if gen.grid is None else test.domain.to_grid(samples).to(gen.grid.dtype),
        expected=expected, seeds=gen.seeds[at].clone(), log_s=gen.log_s_after[at].float(),
        margin=margin, psnr=sample_psnr, noise=noise,
        meta=base_meta(net, cands, cfg, model_outputs="logits", source=model_spec.factory,
                       input_shape=list(samples.shape[1:]), num_classes=int(expected.shape[1])),
    )
    finite_psnr = gen.psnr[keep][torch.isfinite(gen.psnr[keep])]
    row = {
        "kind": "pool", "key": key, "model": model_spec.name, "method": method.name, "generated": len(gen),
        "eligible": len(keep), "noise_floor": noise.floor, "noise_margin": noise.margin,
        "objective": method.objective, "refine": method.refine, "eps": eps, "steps": method.steps,
        "log_s_before": float(gen.log_s_before.mean()), "log_s_after": float(gen.log_s_after[keep].mean())
        if len(keep) else float("nan"),
        "psnr_mean": float(finite_psnr.mean()) if len(finite_psnr) else float("inf"),
        "linf_max": float(gen.linf[keep].max()) if len(keep) else 0.0,
        "margin_median": float(gen.margin[keep].median()) if len(keep) else float("nan"),
        "history": gen.history.tolist(), "seconds": time.perf_counter() - start,
    }
    score = fp.log_s.numpy().astype(np.float64)
    picks = None
    if reach is not None and len(keep):
        score = -fp.margin[0::2].numpy().astype(np.float64)  # ties: the smaller margin first
        picks = reach_picks(reach[0], reach[1], bag=plan.bag, bags=plan.bags, n_max=max(plan.n_max // 2, 1),
                            seed=plan.seed, score=score)
        row.update(selector="reach", unit="pair")
    elif active is not None and len(keep):
        picks = manc_picks(active, bag=plan.bag, bags=plan.bags, n_max=plan.n_max, seed=plan.seed, score=score,
                           multi_cover=method.multi_cover)
    row["seconds"] = time.perf_counter() - start
    pool = Pool(key, fp, active, picks, score, row, method.pairs)
    _save(path, {"fingerprint": {k: getattr(fp, k) for k in fp.__dataclass_fields__}, "active": active,
                 "picks": picks, "score": score, "row": row, "pairs": method.pairs})
    return pool


def _pair_reach(net: nn.Module, samples: torch.Tensor, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Directed reach of each pair (rows ``2i``, ``2i + 1`` of ``samples``) and its column weights."""
    from veriprint.coverage.reach import parameter_reach

    if not len(samples):
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0)
    r = parameter_reach(net, samples, per_tensor=512, seed=seed)
    d = r.directed()
    return torch.maximum(d[0::2], d[1::2]).numpy(), r.directed_weights.numpy()



# ---------------------------------------------------------------------------------------
# Stage 3: attacks


@dataclass(frozen=True)
class AttackArtifact:
    """A tampered model's weights and its :class:`~veriprint.tamper.TamperReport` row."""

    key: str
    state: dict[str, torch.Tensor]
    row: dict[str, Any]


def run_attack(plan: Plan, attack: AttackSpec, model_spec: ModelSpec, model: ModelArtifact, *,
               out: str | None = None) -> AttackArtifact:
    """Run one attack instance on the intact model (attacker's data: the training split)."""
    from veriprint.tamper import attack_info, tamper

    key = attack_key(model_spec, attack)
    path = _artifact(out, key)
    cached = _load(path)
    if cached is not None:
        return AttackArtifact(key, cached["state"], {**cached["row"], "attack": attack.name, "group": attack.group})
    config = attack.config()
    with _threads(plan.threads):
        net = build_module(model_spec, model.state)
        result = tamper(net, config, data=_data(model_spec.data, "train", model_spec.train_limit),
                        eval_data=_data(model_spec.data, "test", model_spec.test_limit), progress=False)
    report = result.report.to_dict()
    row = {"kind": "attack", "key": key, "model": model_spec.name, "attack": attack.name, "group": attack.group,
           "family": attack_info(config).family, "hides": attack.hides, **{k: report[k] for k in (
               "clean_accuracy_before", "clean_accuracy_after", "success_name", "success", "changed_params",
               "total_params", "l2_change", "max_abs_change", "flip_rate", "seconds", "metrics")}}
    state = {k: v.clone() for k, v in result.model.state_dict().items()}
    _save(path, {"state": state, "row": row})
    return AttackArtifact(key, state, row)


# ---------------------------------------------------------------------------------------
# Stage 4: cells


def detection_key(plan: Plan, model_spec: ModelSpec, attack: AttackSpec, method: MethodSpec, spec: str) -> str:
    return cell_key("detect", _cell_params(plan), model_spec, attack.attack, attack.params, method, spec)


def detection_cell(plan: Plan, model_spec: ModelSpec, attack: AttackSpec, method: MethodSpec, spec: str,
                   pool: Pool, tampered: AttackArtifact) -> dict[str, Any]:
    """Missing rates of one model x attack instance x method x output spec.

    Every pool sample is verified against the tampered model under ``spec``; the samples
    the verifier reports as mismatching are the detecting ones (``d`` of ``n``). Random
    selection is exact (hypergeometric, :mod:`veriprint.evaluate.missing`); MANC is
    averaged over ``plan.bags`` bags of ``plan.bag`` drawn from the pool.
    """
    from veriprint.targets import TorchTarget
    from veriprint.verification.verify import verify

    start = time.perf_counter()
    with _threads(plan.threads):
        net = build_module(model_spec, tampered.state)
        report = verify(pool.fingerprint, TorchTarget(net), spec=spec)
    detect = np.array([r.match is False for r in report.samples], dtype=bool)
    if pool.pairs:  # a pair detects when either of its two samples does
        detect = np.asarray(detect.reshape(-1, 2).any(axis=1), dtype=bool)
    n, d = len(detect), int(detect.sum())
    headline = spec == plan.specs[0]
    k_curve = n if headline else max(plan.ns)
    curve = hypergeom_curve(n, d, k_curve, stop_below=1e-12) if n else []
    if pool.pairs:
        curve = per_query(curve, 2 * len(curve) + 1 if curve else 1)

    def at(c: list[float] | np.ndarray, k: int) -> float:
        if not len(c):
            return 1.0
        return float(c[k - 1]) if k <= len(c) else float(c[-1])

    row: dict[str, Any] = {
        "kind": "detect", "key": detection_key(plan, model_spec, attack, method, spec), "model": model_spec.name,
        "attack": attack.name, "group": attack.group, "hides": attack.hides, "method": method.name,
        "natural": method.natural, "spec": spec, "n": n, "d": d, "ambiguous": report.ambiguous,
        "verdict_all": report.verdict, "ns": list(plan.ns),
        "miss_random": [at(curve, k) for k in plan.ns],
        "req_random": [required_samples(curve, a) for a in plan.alphas] if headline else None,
        "curve_random": curve if headline else None,
    }
    if pool.picks is not None and n:
        mm = miss_from_picks(pool.picks, detect, bag=min(plan.bag, n))
        miss, err = mm.miss, mm.stderr
        if pool.pairs:
            miss = np.array(per_query(miss, 2 * len(miss) + 1))
            err = np.array(per_query(err, 2 * len(err) + 1, no_pair=0.0))
        row.update(
            miss_manc=[at(miss, k) for k in plan.ns], stderr_manc=[at(err, k) for k in plan.ns],
            bag=mm.bag, bags=mm.bags,
            req_manc=[required_samples(miss, a) for a in plan.alphas] if headline else None,
            curve_manc=miss.tolist() if headline else None,
        )
    if pool.pairs:
        row.update(selector="reach", unit="pair")
    row["seconds"] = time.perf_counter() - start
    return row


def fp_key(plan: Plan, model_spec: ModelSpec, method: MethodSpec, variant: str) -> str:
    return cell_key("fp", _pool_params(plan), plan.specs, model_spec, method, variant)


def _variant_target(variant: str, net: nn.Module, example: torch.Tensor, tmp: Path) -> Any:
    from veriprint.targets import OnnxTarget, TorchTarget

    if variant.startswith("torch-batch"):
        return TorchTarget(net, max_batch=int(variant.removeprefix("torch-batch")))
    if variant.startswith("torch-threads"):
        return TorchTarget(net, threads=int(variant.removeprefix("torch-threads")))
    if variant.startswith("onnx"):
        from veriprint.models.onnx_export import export_onnx

        path = export_onnx(net, example, tmp / "model.onnx")
        return OnnxTarget(path, max_batch=1 if variant == "onnx-batch1" else None, threads=1)
    raise ValueError(f"unknown variant {variant!r}")


def false_positive_cell(plan: Plan, model_spec: ModelSpec, method: MethodSpec, variant: str, pool: Pool,
                        model: ModelArtifact) -> dict[str, Any]:
    """Verify an intact deployment ``variant`` against every pool sample under every spec.

    Any mismatching sample is a false positive. Also verifies an 8-sample fingerprint
    chosen from the pool (MANC, or the first samples for natural pools) and records its
    verdicts.
    """
    from veriprint.fingerprint import Fingerprint
    from veriprint.selectors.algorithms import manc
    from veriprint.verification.verify import verify

    start = time.perf_counter()
    per_spec: dict[str, int] = {}
    verdicts: dict[str, str] = {}
    k = min(8, len(pool))
    if pool.pairs:  # the first bag's 4 pairs picked by reach, or the first 4 pairs
        first = pool.picks[0][:4] if pool.picks is not None else np.arange(min(4, len(pool)))
        idx = torch.from_numpy(np.stack([2 * first, 2 * first + 1], axis=1).reshape(-1))
    elif pool.active is not None and k:
        idx = manc(pool.active, k, score=torch.from_numpy(pool.score), multi_cover=method.multi_cover).indices
    else:
        idx = torch.arange(k)
    full = pool.fingerprint
    small = Fingerprint(**{**{f: getattr(full, f) for f in full.__dataclass_fields__},
                           **{f: getattr(full, f)[idx] for f in ("samples", "expected", "seeds", "log_s", "margin",
                                                                 "psnr")},
                           "grid": None if full.grid is None else full.grid[idx]})
    with _threads(plan.threads), tempfile.TemporaryDirectory() as tmp:
        net = build_module(model_spec, model.state)
        target = _variant_target(variant, copy.deepcopy(net), full.samples[:2], Path(tmp))
        for spec in plan.specs:
            report = verify(full, target, spec=spec)
            per_spec[spec] = report.mismatches if report.verdict != "INCONCLUSIVE" else -1
            verdicts[spec] = verify(small, target, spec=spec).verdict
    return {
        "kind": "fp", "key": fp_key(plan, model_spec, method, variant), "model": model_spec.name,
        "method": method.name, "variant": variant, "n": len(pool), "mismatches": per_spec,
        "fingerprint_verdicts": verdicts, "seconds": time.perf_counter() - start,
    }
