"""The numeric noise floor: how much an *intact* model's outputs move between deployments.

Outputs of the same weights differ across batch sizes, thread counts, runtimes and
hardware (measured here: up to 5.7e-6 in logits between batch 1 and 1000 in torch, the
same between torch and onnxruntime). A sample whose top-1 margin is inside that noise can
flip its label with no tampering at all, so the fingerprint records the noise measured at
fingerprint time and every comparison keeps well clear of it.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veriprint.deployments.profiles import DeviceProfile, served
from veriprint.errors import ConfigError
from veriprint.models import OutputKind
from veriprint.numerics import top2_margin as _margins

__all__ = ["FLOOR_MODES", "MAX_LOGIT_NOISE", "MAX_SAFETY", "NoiseFloor", "as_logits", "calibrate_noise",
           "resolution_guard"]

#: How the smallest margin floor is set: ``"fixed"`` (``min_floor``, 1e-4 by default) or
#: ``"measured"`` (two units of the deployment's resolution, :func:`resolution_guard`).
FLOOR_MODES = ("fixed", "measured")

#: Largest logit noise or declared tolerance a stored floor may carry. The noisiest
#: deployment measured (float16 serving on a GPU) moved logits by 0.07; a floor of 100
#: logits would call every sample of any real model ambiguous.
MAX_LOGIT_NOISE = 100.0
#: Largest safety factor a stored floor may carry.
MAX_SAFETY = 1e4

log = logging.getLogger(__name__)


def as_logits(out: torch.Tensor, model_outputs: OutputKind) -> torch.Tensor:
    """Model outputs as logits (``log p`` for a softmax-ending model)."""
    return torch.log(out.double().clamp_min(1e-300)) if model_outputs == "probs" else out.double()


@dataclass(frozen=True)
class NoiseFloor:
    """Measured noise and the tolerances derived from it.

    Attributes:
        logit: largest ``|Δ logit|`` seen between variants of the intact model.
        prob: largest ``|Δ probability|``.
        margin: largest change of the top-1 vs top-2 margin.
        variants: what was compared (``"batch=1"``, ``"threads=1"``, ``"float64"``, ...).
        safety: factor applied to the measured noise (default 10).
        declared: tolerance in logits declared by the user for noisier deployments.
        declared_prob: declared tolerance on probabilities.
        min_floor: smallest margin floor, whatever was measured (default 1e-4).
    """

    logit: float
    prob: float
    margin: float
    variants: tuple[str, ...]
    safety: float = 10.0
    declared: float = 0.0
    declared_prob: float = 0.0
    min_floor: float = 1e-4

    @property
    def floor(self) -> float:
        """Margin (in logits) a label-carrying sample must clear to be trusted."""
        return max(self.safety * self.margin, self.min_floor, 2 * self.declared)

    @property
    def logit_tolerance(self) -> float:
        """Largest logit difference still taken as noise."""
        return max(self.safety * self.logit, self.min_floor / 2, self.declared)

    @property
    def prob_tolerance(self) -> float:
        """Largest probability difference still taken as noise."""
        return max(self.safety * self.prob, 1e-6, self.declared_prob)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["variants"] = list(self.variants)
        d.update(floor=self.floor, logit_tolerance=self.logit_tolerance, prob_tolerance=self.prob_tolerance)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NoiseFloor:
        """Read a floor stored in a fingerprint, refusing values no calibration could give.

        Every number must be finite and real; noise and declared tolerances must lie in
        ``[0, MAX_LOGIT_NOISE]`` (probabilities in ``[0, 1]``), ``safety`` in
        ``[1, MAX_SAFETY]``, ``min_floor`` in ``(0, MAX_LOGIT_NOISE]``. A floor outside
        these bounds would mark every sample "within noise", so that any answer matched.

        Raises:
            ConfigError: a field is missing, of the wrong type, or out of range.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"expected the noise floor as an object, got {type(d).__name__}")
        required = ("logit", "prob", "margin")
        missing = [k for k in required if k not in d]
        if missing:
            raise ConfigError(f"noise floor: expected fields {list(required)}, missing {missing}")
        kw: dict[str, Any] = {k: d[k] for k in _BOUNDS if k in d}
        variants = d.get("variants", ())
        if not isinstance(variants, list | tuple) or not all(isinstance(v, str) for v in variants):
            raise ConfigError(f"noise floor: expected variants to be a list of names, got {variants!r:.80}")
        kw["variants"] = tuple(variants)
        return cls(**kw)

    def __post_init__(self) -> None:
        for name, (lo, hi, closed) in _BOUNDS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ConfigError(f"noise floor: expected {name} to be a finite number, got {v!r}")
            if v < lo or v > hi or (not closed and v == lo):
                left = "[" if closed else "("
                raise ConfigError(f"noise floor: expected {name} in {left}{lo:g}, {hi:g}], got {v!r}")


# field -> (lowest, highest, lowest allowed): what a calibration or a declaration can give.
_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "logit": (0.0, MAX_LOGIT_NOISE, True), "prob": (0.0, 1.0, True), "margin": (0.0, MAX_LOGIT_NOISE, True),
    "safety": (1.0, MAX_SAFETY, True), "declared": (0.0, MAX_LOGIT_NOISE, True),
    "declared_prob": (0.0, 1.0, True), "min_floor": (0.0, MAX_LOGIT_NOISE, False),
}


def resolution_guard(logits: torch.Tensor, profile: DeviceProfile | None = None) -> float:
    """The smallest floor of the ``"measured"`` mode: two units of the deployment's resolution.

    Two units in the last place of ``max |z|`` (``2 * eps * 2**floor(log2 max|z|)``), with
    ``eps`` the relative spacing of the logits the deployment
    answers with (:attr:`veriprint.deployments.profiles.DeviceProfile.resolution`, float32's
    1.2e-7 by default) and ``z`` the calibrated samples' logits. A margin is a difference
    of two logits, each of which another kernel may round by one unit the other way; a
    measurement on one machine sees none of that when its kernels are deterministic.
    Never below 1e-12 (a stored floor must be positive).
    """
    eps = (profile or DeviceProfile()).resolution
    top = float(logits.abs().max()) if logits.numel() else 0.0
    if not math.isfinite(top) or top <= 0:
        return 1e-12
    ulp = eps * 2.0 ** math.floor(math.log2(top))  # spacing of the numbers just below |z|
    return max(2.0 * ulp, 1e-12)


def _run(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(c) for c in torch.split(x, batch)])


def _onnx_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    try:
        import onnxruntime as ort

        from veriprint.models.onnx_export import export_onnx
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.onnx"
        try:
            export_onnx(model, x[:2], path)
        except Exception as e:  # export support varies by model; the noise check is optional
            log.warning("onnx export for noise calibration failed: %s", e)
            return None
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return torch.from_numpy(sess.run(None, {name: x.numpy()})[0])


def calibrate_noise(
    model: nn.Module,
    x: torch.Tensor,
    *,
    model_outputs: OutputKind = "logits",
    batch_sizes: tuple[int, ...] = (1, 7, 64),
    max_single: int = 64,
    threads: bool = True,
    float64: bool = True,
    onnx: bool = False,
    safety: float = 10.0,
    declared: float = 0.0,
    declared_prob: float = 0.0,
    min_floor: float = 1e-4,
    profile: DeviceProfile | None = None,
    floor: str = "fixed",
    max_batch: int | None = None,
) -> NoiseFloor:
    """Measure how much the intact model's outputs move on ``x`` across execution variants.

    The reference is one forward pass over the whole batch. Variants: other batch sizes
    (batch 1 on the first ``max_single`` samples), a single thread, a float64 copy of the
    model (the exact value the float32 runs scatter around), and optionally onnxruntime.

    With a non-default ``profile`` (:mod:`veriprint.deployments.profiles`) every run goes through the
    model as that deployment serves it, and the reference is rounded to float32 as the
    fingerprint stores it. The variants are then the batch sizes, one thread (on the
    CPU) and, on CUDA, ``cudnn.benchmark``; float64 and onnxruntime are left out: they
    measure how far the profile's numerics sit from float32, which the expected outputs
    made under the profile already carry, not how much the deployment itself moves.

    Args:
        model: the classifier.
        x: samples (the bag or the fingerprint's samples).
        model_outputs: what the model returns.
        batch_sizes: batch sizes compared with the full batch (default 1, 7, 64).
        max_single: samples run one by one for batch size 1 (default 64).
        threads: include a single-thread run (default True).
        float64: include a float64 copy of the model (default True).
        onnx: include onnxruntime (default False: needs ``onnx`` and ``onnxruntime``).
        safety: factor on the measured noise (default 10).
        declared: logit tolerance declared for noisier deployments (default 0).
        declared_prob: probability tolerance declared likewise (default 0).
        min_floor: smallest margin floor in logits (default 1e-4).
        profile: the deployment's device and precision (default: float32 on the CPU).
        floor: ``"fixed"`` (default): the smallest margin floor is ``min_floor``;
            ``"measured"``: it is :func:`resolution_guard` of the reference logits, so the
            floor is ``safety`` times the measured noise wherever that is larger than two
            units of the deployment's resolution (``min_floor`` is then not used).
        max_batch: the largest batch run (default: the whole of ``x`` for the reference);
            bounds the memory a large model's passes take. Batch sizes above it are run
            at it instead.
    """
    if floor not in FLOOR_MODES:
        raise ConfigError(f"expected floor one of {', '.join(FLOOR_MODES)}, got {floor!r}")
    if safety < 1:
        raise ValueError(f"expected safety >= 1, got {safety}")
    if declared < 0 or declared_prob < 0:
        raise ValueError(f"expected declared tolerances >= 0, got {declared}, {declared_prob}")
    x = x.detach().float()
    profiled = profile is not None and not profile.is_default
    if profiled:
        assert profile is not None
        model = served(model, profile)
        float64 = onnx = False
    full = max(len(x), 1) if max_batch is None else max(1, min(len(x), max_batch))
    ref = as_logits(_run(model, x, full).float(), model_outputs)  # as stored
    runs: list[tuple[str, torch.Tensor, slice]] = []
    cap = 64 if max_batch is None else max(1, min(64, max_batch))
    if max_batch is not None:
        batch_sizes = tuple(dict.fromkeys(min(b, max_batch) for b in batch_sizes))
    for b in batch_sizes:
        part = slice(0, min(len(x), max_single)) if b == 1 else slice(0, len(x))
        runs.append((f"batch={b}", as_logits(_run(model, x[part], b), model_outputs), part))
    if profiled and profile is not None and profile.device.startswith("cuda"):
        threads = False  # torch's CPU threads do not touch a GPU's kernels
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            runs.append(("cudnn.benchmark", as_logits(_run(model, x, cap), model_outputs), slice(0, len(x))))
        finally:
            torch.backends.cudnn.benchmark = before
    if threads and torch.get_num_threads() > 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            runs.append(("threads=1", as_logits(_run(model, x, cap), model_outputs), slice(0, len(x))))
        finally:
            torch.set_num_threads(previous)
    if float64:
        import copy

        m64 = copy.deepcopy(model).double()
        runs.append(("float64", as_logits(_run(m64, x.double(), cap), model_outputs), slice(0, len(x))))
    if onnx:
        out = _onnx_outputs(model, x)
        if out is not None:
            runs.append(("onnxruntime", as_logits(out, model_outputs), slice(0, len(x))))
    logit = prob = margin = 0.0
    p_ref = torch.softmax(ref, dim=-1)
    m_ref = _margins(ref) if ref.shape[-1] > 1 else torch.zeros(len(ref), dtype=ref.dtype, device=ref.device)
    for _name, z, part in runs:
        logit = max(logit, float((z - ref[part]).abs().max()))
        prob = max(prob, float((torch.softmax(z, dim=-1) - p_ref[part]).abs().max()))
        if ref.shape[-1] > 1:
            margin = max(margin, float((_margins(z) - m_ref[part]).abs().max()))
    if floor == "measured":
        min_floor = resolution_guard(ref, profile)
    return NoiseFloor(
        logit=logit, prob=prob, margin=margin, variants=tuple(n for n, _, _ in runs),
        safety=safety, declared=declared, declared_prob=declared_prob, min_floor=min_floor,
    )
