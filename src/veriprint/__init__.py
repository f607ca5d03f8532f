"""veriprint: Sensitive-Sample fingerprints for black-box integrity checks of neural networks.

The pipeline (He, Zhang, Lee, CVPR 2019): :func:`generate` Sensitive-Samples from natural
seeds (the objective lives in :mod:`veriprint.pipeline.objective`), pick a few (:mod:`veriprint.selectors`;
the paper's :func:`manc`), freeze them with their expected outputs in a :class:`Fingerprint`
file (:func:`make_fingerprint`, stage by stage in :mod:`veriprint.pipeline`), and later
:func:`verify` a deployed model through any :class:`Target` (or first :func:`enroll` a fresh
deployment: fingerprint what it answers stably). Errors of the inputs raise a
:class:`VeriprintError`.

Heavy submodules are imported on first use, so ``import veriprint`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "InputDomain": "veriprint.data",
    "Dataset": "veriprint.data",
    "load_data": "veriprint.data",
    "load_model": "veriprint.models",
    "sensitivity": "veriprint.pipeline.objective",
    "log_sensitivity": "veriprint.pipeline.objective",
    "entropy_topk": "veriprint.pipeline.objective",
    "GenerationConfig": "veriprint.pipeline.generate",
    "GenerationResult": "veriprint.pipeline.generate",
    "generate": "veriprint.pipeline.generate",
    "open_target": "veriprint.targets",
    "tamper": "veriprint.tamper",
    "manc": "veriprint.selectors.algorithms",
    "Fingerprint": "veriprint.fingerprint",
    "FingerprintConfig": "veriprint.pipeline",
    "make_fingerprint": "veriprint.pipeline",
    "build_candidates": "veriprint.pipeline",
    "verify": "veriprint.verification.verify",
    "VerificationReport": "veriprint.verification.verify",
    "enroll": "veriprint.enrollment",
    "EnrollmentReport": "veriprint.enrollment",
    "EnrollmentError": "veriprint.enrollment",
    "Target": "veriprint.targets",
    "TargetError": "veriprint.targets",
    "VeriprintError": "veriprint.errors",
    "ConfigError": "veriprint.errors",
    "list_selectors": "veriprint.selectors",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'veriprint' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
