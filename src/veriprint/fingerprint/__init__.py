"""The file: a fingerprint, what it holds, and how it lies on disk.

* :mod:`veriprint.fingerprint.contents`: :class:`Fingerprint`, its samples, expected outputs
  and noise floor, refusing any contents no veriprint could have written;
* :mod:`veriprint.fingerprint.meta`: the typed, versioned metadata a fingerprint carries;
* :mod:`veriprint.fingerprint.fileformat`: the bytes: safetensors with a header hash, an
  optional Ed25519 signature, and the key files.
"""

from __future__ import annotations

from typing import Any

from veriprint.fingerprint.contents import Fingerprint
from veriprint.fingerprint.contents import __getattr__ as _contents_getattr

__all__ = ["Fingerprint"]


def __getattr__(name: str) -> Any:
    """``FingerprintConfig``, ``make_fingerprint`` and ``REACH_DELTAS`` live in the pipeline."""
    return _contents_getattr(name)
