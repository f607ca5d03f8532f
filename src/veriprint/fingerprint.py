"""A model's fingerprint: a few Sensitive-Samples and the intact model's outputs on them.

:func:`make_fingerprint` runs the whole owner-side pipeline: draw a bag of natural seeds,
generate Sensitive-Samples (Algorithm 1), calibrate the numeric noise floor, optionally
refine the samples towards the decision boundary (for label-only APIs), keep the samples
whose margin clears the floor, pick ``k`` of them (by default the candidates whose labels
reveal the smallest changes of every parameter tensor, :mod:`veriprint.reach`; the paper's
MANC, Algorithm 2, on request), and record their outputs with the share of each tensor's
parameters whose small change they reveal. The file format is in :mod:`veriprint.fileformat`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from veriprint import __version__
from veriprint.data import Dataset, InputDomain
from veriprint.errors import ConfigError
from veriprint.fileformat import FingerprintFileError, LoadedFile, read_file, write_file
from veriprint.generate import GenerationConfig, GenerationResult, generate, result_for
from veriprint.models import OutputKind, model_hash
from veriprint.noise import NoiseFloor, as_logits, calibrate_noise
from veriprint.reach import ParameterReach, parameter_reach, reach_coverage
from veriprint.select import (
    Selection,
    activations,
    boundary_events,
    event_cover,
    manc,
    random_selection,
    reach_cover,
    simulate_flips,
)

__all__ = ["REACH_DELTAS", "Fingerprint", "FingerprintConfig", "make_fingerprint"]

#: Relative changes of one parameter for which a fingerprint records its first-order
#: coverage (``meta["reach"]``, see :func:`veriprint.reach.reach_coverage`).
REACH_DELTAS = (0.05, 0.01)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FingerprintConfig:
    """How a fingerprint is made.

    Args:
        bag: natural seeds drawn for generation (default 500, the paper's bag).
        seeds: how the bag is drawn: ``"boundary"`` (default with refinement): the natural
            inputs with the smallest top-1 margins, the same number for each predicted class
            (refinement reaches the boundary from them, and every class gets boundaries);
            ``"random"``: uniformly, as the paper does.
        select: samples kept in the fingerprint, ``N_S`` (default 8).
        selector: ``"reach"`` (default): greedy cover of every parameter tensor by the
            first-order reach of the candidates (:func:`veriprint.select.reach_cover`: the
            smaller the change of a parameter that flips a chosen sample, the better);
            ``"manc"``: the paper's active-neuron cover (with refinement, single-logit
            boundary events first, :func:`veriprint.select.event_cover`); ``"random"``;
            or ``"tamper-aware"``: greedy cover of the label flips caused by simulated
            small weight changes (:func:`veriprint.select.simulate_flips`).
        neurons: MANC's neurons of interest: ``"penultimate"`` (default) or ``"all"``.
        threshold: activation threshold for MANC (default 0).
        refine: move samples to just above the noise floor for label APIs (default True).
        refine_factor: refinement target as a multiple of the floor (default 2).
        twins: with refinement, store samples in pairs across the decision boundary
            (:func:`veriprint.refine.boundary_twins`): a change of the margin in either
            direction flips one of the pair (default True; ``select`` pairs' worth).
        safety: factor on the measured noise (default 10).
        min_floor: smallest margin floor in logits (default 1e-4).
        tolerance: extra logit noise declared for the deployment (GPU, TF32, float16
            serving), default 0.
        prob_tolerance: extra probability noise declared likewise, default 0.
        calibrate_onnx: include onnxruntime in the noise calibration (default False).
        seed: seed for drawing the bag and for random selection (default 0).
        generation: the :class:`GenerationConfig`.
        version: config schema version.
    """

    bag: int = 500
    seeds: Literal["boundary", "random"] = "boundary"
    select: int = 8
    selector: Literal["reach", "manc", "random", "tamper-aware"] = "reach"
    neurons: Literal["penultimate", "all"] = "penultimate"
    threshold: float = 0.0
    refine: bool = True
    refine_factor: float = 2.0
    twins: bool = True
    safety: float = 10.0
    min_floor: float = 1e-4
    tolerance: float = 0.0
    prob_tolerance: float = 0.0
    calibrate_onnx: bool = False
    seed: int = 0
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    version: int = 1

    def __post_init__(self) -> None:
        checks = [
            ("bag", self.bag >= 1),
            ("seeds", self.seeds in ("boundary", "random")),
            ("select", 1 <= self.select <= self.bag),
            ("selector", self.selector in ("reach", "manc", "random", "tamper-aware")),
            ("neurons", self.neurons in ("penultimate", "all")),
            ("refine_factor", self.refine_factor >= 1),
            ("safety", self.safety >= 1),
            ("min_floor", self.min_floor > 0),
            ("tolerance", self.tolerance >= 0),
            ("prob_tolerance", self.prob_tolerance >= 0),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"invalid FingerprintConfig.{name}: got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["generation"] = self.generation.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FingerprintConfig:
        d = dict(d)
        # Files written before these options existed drew seeds at random, without twins.
        d.setdefault("seeds", "random")
        d.setdefault("twins", False)
        d["generation"] = GenerationConfig.from_dict(d.get("generation", {}))
        return cls(**d)


@dataclass(frozen=True)
class Fingerprint:
    """Samples, expected outputs and how they were made.

    Attributes:
        samples: float32 queries ``(k, ...)``, exactly on the input grid.
        grid: their grid values (uint8 for 8-bit data), or ``None``.
        expected: the intact model's raw outputs ``(k, r)`` (float32).
        seeds: the natural inputs the samples started from.
        log_s: ``log S`` (Eq. 6) of each sample.
        margin: top-1 vs top-2 logit margin of each sample.
        psnr: PSNR of each sample against its seed (dB).
        noise: the calibrated noise floor.
        meta: everything else (model hash, domain, configs, coverage, times, version).
        sha256: content hash of the file it was read from or written to ("" before).
        signature: ``"unsigned"``, ``"valid"`` or ``"not checked"``.
    """

    samples: torch.Tensor
    grid: torch.Tensor | None
    expected: torch.Tensor
    seeds: torch.Tensor
    log_s: torch.Tensor
    margin: torch.Tensor
    psnr: torch.Tensor
    noise: NoiseFloor
    meta: dict[str, Any]
    sha256: str = ""
    signature: str = "unsigned"

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    @property
    def domain(self) -> InputDomain:
        return InputDomain(**self.meta["domain"])

    @property
    def model_outputs(self) -> OutputKind:
        return self.meta["model_outputs"]  # type: ignore[no-any-return]

    @property
    def expected_logits(self) -> torch.Tensor:
        """Expected outputs as float64 logits (``log p`` for softmax-ending models)."""
        return as_logits(self.expected, self.model_outputs)

    def save(self, path: str | os.PathLike[str], *, key: str | os.PathLike[str] | None = None) -> Fingerprint:
        """Write the ``.vpf`` file (signed with the Ed25519 private ``key`` if given)."""
        tensors = {
            "samples": self.samples.float(),
            "expected": self.expected.float(),
            "seeds": self.seeds.float(),
            "log_s": self.log_s.float(),
            "margin": self.margin.float(),
            "psnr": self.psnr.float(),
        }
        if self.grid is not None:
            tensors["grid"] = self.grid
        meta = {**self.meta, "noise": self.noise.to_dict()}
        digest = write_file(path, tensors, meta, key=key)
        return Fingerprint(**{**self.__dict__, "sha256": digest, "signature": "valid" if key else "unsigned"})

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, pubkey: str | os.PathLike[str] | None = None) -> Fingerprint:
        """Read and check a ``.vpf`` file (see :func:`veriprint.fileformat.read_file`)."""
        f: LoadedFile = read_file(path, pubkey)
        t = f.tensors
        noise, meta = _checked_contents(os.fspath(path), t, f.meta)
        return cls(
            samples=t["samples"], grid=t.get("grid"), expected=t["expected"], seeds=t["seeds"],
            log_s=t["log_s"], margin=t["margin"], psnr=t["psnr"], noise=noise, meta=meta,
            sha256=f.sha256, signature=f.signature,
        )


_PER_SAMPLE = ("log_s", "margin", "psnr")


def _checked_contents(path: str, t: dict[str, torch.Tensor],
                      file_meta: dict[str, Any]) -> tuple[NoiseFloor, dict[str, Any]]:
    """Refuse a fingerprint whose contents no veriprint could have written.

    A file's hash proves only that nobody edited it after it was written; an unsigned
    file can be written by anyone with this project's own writer. So every number that a
    verdict depends on is checked here: shapes that agree, finite samples inside the
    declared input domain, a grid that matches the samples, finite expected outputs (in
    [0, 1] for a softmax model) and a plausible noise floor.

    Raises:
        FingerprintFileError: naming the first thing that is wrong.
    """
    def refuse(what: str) -> FingerprintFileError:
        return FingerprintFileError(f"{path}: {what}")

    missing = {"samples", "expected", "seeds", *_PER_SAMPLE} - set(t)
    if missing:
        raise refuse(f"expected tensors samples, expected, seeds, {', '.join(_PER_SAMPLE)}; "
                     f"missing {sorted(missing)}")
    if not isinstance(file_meta, dict):
        raise refuse(f"expected the metadata to be a JSON object, got {type(file_meta).__name__}")
    meta = dict(file_meta)
    for key in ("noise", "domain", "model_outputs"):
        if key not in meta:
            raise refuse(f"expected a metadata entry {key!r}, found only {sorted(meta)}")
    samples, expected = t["samples"], t["expected"]
    k = samples.shape[0] if samples.dim() else 0
    if samples.dim() < 2 or k < 1:
        raise refuse(f"expected at least one sample, shape (k, ...), got shape {tuple(samples.shape)}")
    if expected.dim() != 2 or expected.shape[0] != k or expected.shape[1] < 1:
        raise refuse(f"expected outputs of shape ({k}, classes), got {tuple(expected.shape)}")
    if t["seeds"].shape != samples.shape:
        raise refuse(f"expected seeds of the samples' shape {tuple(samples.shape)}, "
                     f"got {tuple(t['seeds'].shape)}")
    for name in _PER_SAMPLE:
        if tuple(t[name].shape) != (k,):
            raise refuse(f"expected {name} of shape ({k},), got {tuple(t[name].shape)}")
    for name in ("samples", "expected", "seeds"):
        if not t[name].dtype.is_floating_point:
            raise refuse(f"expected {name} as floats, got {t[name].dtype}")
        if not torch.isfinite(t[name]).all():
            raise refuse(f"expected finite {name}, got NaN or infinity")
    if meta["model_outputs"] not in ("logits", "probs"):
        raise refuse(f"expected model_outputs 'logits' or 'probs', got {meta['model_outputs']!r}")
    if meta["model_outputs"] == "probs" and (expected.min() < 0 or expected.max() > 1):
        raise refuse("expected probabilities in [0, 1] for a softmax model, got values in "
                     f"[{float(expected.min()):g}, {float(expected.max()):g}]")
    try:
        domain = InputDomain(**meta["domain"])
    except (TypeError, ValueError) as e:
        raise refuse(f"expected domain {{lo, hi, levels}}, got {meta['domain']!r:.100} ({e})") from e
    slack = 1e-5 * (domain.hi - domain.lo)
    if samples.min() < domain.lo - slack or samples.max() > domain.hi + slack:
        raise refuse(f"expected samples in the input domain [{domain.lo:g}, {domain.hi:g}], got "
                     f"values in [{float(samples.min()):g}, {float(samples.max()):g}]")
    grid = t.get("grid")
    if grid is not None:
        if grid.shape != samples.shape:
            raise refuse(f"expected a grid of the samples' shape {tuple(samples.shape)}, "
                         f"got {tuple(grid.shape)}")
        if domain.levels is None:
            raise refuse("expected no grid for a continuous input domain, got one")
        if grid.dtype.is_floating_point or grid.min() < 0 or grid.max() > domain.levels:
            raise refuse(f"expected integer grid values in [0, {domain.levels}], got {grid.dtype} "
                         f"values in [{float(grid.min()):g}, {float(grid.max()):g}]")
        on_grid = domain.lo + grid.double() * domain.step
        if (on_grid - samples.double()).abs().max() > max(domain.step, 1.0) * 1e-4:
            raise refuse("expected the grid values to be the samples' own (lo + grid * step), "
                         "they differ")
    try:
        noise = NoiseFloor.from_dict(meta.pop("noise"))
    except ConfigError as e:
        raise refuse(str(e)) from e
    return noise, meta


def _draw_seeds(
    data: Dataset | torch.Tensor, n: int, seed: int, how: str = "random",
    model: nn.Module | None = None, model_outputs: OutputKind = "logits",
) -> tuple[torch.Tensor, torch.Tensor]:
    x = data.x if isinstance(data, Dataset) else data
    if n > len(x):
        raise ValueError(f"expected a bag of at most {len(x)} seeds (the data size), got bag={n}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    if how == "random" or model is None:
        idx = perm[:n]
        return x[idx].float(), idx
    cand = perm[: max(20 * n, min(len(x), 20000))]
    with torch.inference_mode():
        z = torch.cat([as_logits(model(c.float()), model_outputs) for c in torch.split(x[cand], 500)])
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


def make_fingerprint(
    model: nn.Module,
    data: Dataset | torch.Tensor,
    config: FingerprintConfig | None = None,
    *,
    domain: InputDomain | None = None,
    model_outputs: OutputKind = "logits",
    progress: bool = True,
    source: str | None = None,
) -> tuple[Fingerprint, GenerationResult, Selection]:
    """Fingerprint a model.

    Args:
        model: the intact classifier (eval mode).
        data: natural inputs to draw seeds from (a :class:`Dataset` or a tensor).
        config: :class:`FingerprintConfig` (default: bag 500, 8 samples as 4 twin pairs, refinement and selection by reach).
        domain: input range and grid (default: the data set's, else ``[0, 1]`` 8-bit).
        model_outputs: ``"logits"`` (default) or ``"probs"``.
        progress: show progress bars.
        source: a description of the model stored in the metadata.

    Returns:
        The :class:`Fingerprint`, the full :class:`GenerationResult` of the bag (after
        refinement) and the :class:`Selection`.
    """
    cfg = config or FingerprintConfig()
    domain = domain or (data.domain if isinstance(data, Dataset) else InputDomain())
    start = time.perf_counter()
    boundary = cfg.seeds == "boundary" and cfg.refine
    seeds, seed_idx = _draw_seeds(data, cfg.bag, cfg.seed, "boundary" if boundary else "random", model, model_outputs)
    gen = generate(model, seeds, cfg.generation, domain=domain, model_outputs=model_outputs, progress=progress)
    noise = calibrate_noise(model, gen.samples, model_outputs=model_outputs, onnx=cfg.calibrate_onnx,
                            safety=cfg.safety, declared=cfg.tolerance, declared_prob=cfg.prob_tolerance,
                            min_floor=cfg.min_floor)
    samples, reached = gen.samples, torch.zeros(len(gen), dtype=torch.bool)
    if cfg.refine and cfg.generation.eps > 0:
        from veriprint.refine import refine_to_boundary

        ref = refine_to_boundary(model, gen.samples, seeds, target=cfg.refine_factor * noise.floor,
                                 eps=cfg.generation.eps, norm=cfg.generation.norm, domain=domain,
                                 model_outputs=model_outputs)
        samples, reached = ref.samples, ref.reached
        gen = _redescribe(model, gen, samples, model_outputs)
    eligible = gen.margin > noise.floor
    if cfg.refine and int((eligible & reached).sum()) >= cfg.select:
        eligible = eligible & reached
    n_ok = int(eligible.sum())
    if n_ok < cfg.select:
        raise ValueError(
            f"only {n_ok} of {len(gen)} samples have a top-1 margin above the noise floor "
            f"{noise.floor:.3g}; need {cfg.select}: use a larger bag or a smaller declared tolerance"
        )
    twins: torch.Tensor | None = None
    pairs = 0
    has_params = any(p.numel() for p in model.parameters())
    # Reach needs parameters to differentiate; a model without any (weights held as
    # buffers or constants) is selected by the boundary-event rule instead.
    selector = "manc" if cfg.selector == "reach" and not has_params else cfg.selector
    if cfg.refine and cfg.twins and cfg.select >= 2 and cfg.generation.eps > 0:
        from veriprint.refine import boundary_twins

        twins, twin_ok = boundary_twins(model, samples, seeds, target=cfg.refine_factor * noise.floor,
                                        eps=cfg.generation.eps, norm=cfg.generation.norm, domain=domain,
                                        model_outputs=model_outputs)
        if int((eligible & twin_ok).sum()) >= cfg.select // 2:
            pairs = cfg.select // 2
        else:
            log.warning("only %d samples have a twin across the boundary; storing single samples",
                        int((eligible & twin_ok).sum()))
    @functools.cache
    def units() -> torch.Tensor:
        return activations(model, samples, layers=cfg.neurons, threshold=cfg.threshold, model_outputs=model_outputs)

    @functools.cache
    def events(both_sides: bool) -> torch.Tensor:
        with torch.inference_mode():
            return boundary_events(as_logits(model(samples), model_outputs), both_sides=both_sides)

    if pairs:
        assert twins is not None
        paired = eligible & twin_ok
        if selector == "random":
            sel = random_selection(len(gen), pairs, seed=cfg.seed, eligible=paired)
        elif selector == "reach":
            # A pair reveals a change of a parameter in a direction if either member flips.
            pidx = paired.nonzero().flatten()
            ra = parameter_reach(model, samples[pidx], model_outputs=model_outputs, seed=cfg.seed, progress=progress)
            rb = parameter_reach(model, twins[pidx], model_outputs=model_outputs, seed=cfg.seed, progress=progress)
            sub = reach_cover(torch.maximum(ra.directed(), rb.directed()), ra.directed_weights, pairs,
                              score=-gen.margin[pidx])
            sel = Selection(pidx[sub.indices], sub.coverage, sub.gains, sub.levels, sub.neurons, sub.method)
        else:
            # A last-layer weight w[k, j] shows only in a pair whose boundary involves class k
            # while unit j is active: after new classes, cover new (class, unit) events.
            ev = events(True)
            joint = (ev[:, :, None] & units().bool()[:, None, :]).flatten(1) if cfg.neurons == "penultimate" else units()
            sel = event_cover(joint, ev, pairs, score=-gen.margin, eligible=paired)
        anchors = sel.indices
        extra = torch.empty(0, dtype=torch.long)
        if cfg.select % 2:
            rest = eligible.clone()
            rest[anchors] = False
            extra = event_cover(units(), events(False), 1, score=-gen.margin, eligible=rest).indices
        chosen = torch.cat([torch.stack([samples[anchors], twins[anchors]], dim=1).flatten(0, 1), samples[extra]])
        idx = torch.cat([anchors.repeat_interleave(2), extra])
    else:
        if selector == "reach":
            eidx = eligible.nonzero().flatten()
            r = parameter_reach(model, samples[eidx], model_outputs=model_outputs, seed=cfg.seed, progress=progress)
            sub = reach_cover(r.directed(), r.directed_weights, cfg.select, score=-gen.margin[eidx])
            sel = Selection(eidx[sub.indices], sub.coverage, sub.gains, sub.levels, sub.neurons, sub.method)
        elif selector == "manc" and cfg.refine:
            sel = event_cover(units(), events(False), cfg.select, score=-gen.margin, eligible=eligible)
        elif selector == "manc":
            sel = manc(units(), cfg.select, score=gen.log_s_after, eligible=eligible)
        elif selector == "tamper-aware":
            flips = simulate_flips(model, samples, seed=cfg.seed)
            sel = manc(flips, cfg.select, score=gen.log_s_after, eligible=eligible)
        else:
            sel = random_selection(len(gen), cfg.select, seed=cfg.seed, eligible=eligible)
        idx = sel.indices
        chosen = samples[idx]
    with torch.inference_mode():
        expected = model(chosen).float()
    reach = parameter_reach(model, chosen, model_outputs=model_outputs, seed=cfg.seed) if has_params else None
    described = result_for(model, chosen, seeds[idx], gen.config, domain=domain, model_outputs=model_outputs,
                           history=gen.history, steps_run=gen.steps_run, seconds=gen.seconds,
                           log_s_before=gen.log_s_before[idx])
    meta: dict[str, Any] = {
        "tool": "veriprint",
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_hash": model_hash(model),
        "model_source": source or type(model).__name__,
        "model_outputs": model_outputs,
        "domain": domain.to_dict(),
        "input_shape": list(chosen.shape[1:]),
        "num_classes": int(expected.shape[1]),
        "config": cfg.to_dict(),
        "selection": {
            "method": sel.method,
            "indices_in_bag": idx.tolist(),
            "seed_indices_in_data": seed_idx[idx].tolist(),
            "coverage": sel.coverage.tolist(),
            "neurons": sel.neurons,
            "eligible": n_ok,
            "refined_reached": int(reached.sum()),
            "pairs": pairs,
            "seeds": "boundary" if boundary else "random",
        },
        "reach": {} if reach is None else _reach_meta(reach),
        "generation": {"steps_run": gen.steps_run, "seconds": round(gen.seconds, 3)},
        "labels": expected.argmax(1).tolist(),
        "seconds": round(time.perf_counter() - start, 3),
    }
    fp = Fingerprint(
        samples=chosen.clone(),
        grid=None if described.grid is None else described.grid.clone(),
        expected=expected.clone(),
        seeds=seeds[idx].clone(),
        log_s=described.log_s_after.float().clone(),
        margin=described.margin.float().clone(),
        psnr=described.psnr.clone(),
        noise=noise,
        meta=meta,
    )
    return fp, gen, sel


def _reach_meta(reach: ParameterReach) -> dict[str, Any]:
    shares = [reach_coverage(reach, d) for d in REACH_DELTAS]
    return {
        "deltas": list(REACH_DELTAS),
        "tensors": reach.tensors,
        "sizes": reach.sizes,
        "share": [[round(sh[n], 4) for n in reach.tensors] for sh in shares],
        "all": [round(sh["all"], 4) for sh in shares],
        "first_order": True,
    }


def _redescribe(model: nn.Module, gen: GenerationResult, samples: torch.Tensor, model_outputs: OutputKind) -> GenerationResult:
    return result_for(model, samples, gen.seeds, gen.config, domain=gen.domain, model_outputs=model_outputs,
                      history=gen.history, steps_run=gen.steps_run, seconds=gen.seconds,
                      log_s_before=gen.log_s_before)
