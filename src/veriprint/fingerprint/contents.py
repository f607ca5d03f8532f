"""A model's fingerprint: a few Sensitive-Samples and the intact model's outputs on them.

:class:`Fingerprint` is the type: its samples, expected outputs and noise floor, read
(:meth:`Fingerprint.load`, which refuses any file whose contents no veriprint could have
written), written (:meth:`Fingerprint.save`) and cut down (:meth:`Fingerprint.subset`).
The file format is in :mod:`veriprint.fingerprint.fileformat`; the pipeline that makes a fingerprint
is in :mod:`veriprint.pipeline` (``make_fingerprint`` and ``FingerprintConfig`` are also
importable from here).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from veriprint.data import InputDomain
from veriprint.errors import ConfigError
from veriprint.fingerprint.fileformat import FingerprintFileError, LoadedFile, read_file, write_file
from veriprint.fingerprint.meta import FingerprintMeta, MetaError
from veriprint.models import OutputKind
from veriprint.noise import NoiseFloor, as_logits

__all__ = ["Fingerprint"]

_FROM_PIPELINE = {"FingerprintConfig": "veriprint.pipeline.config", "make_fingerprint": "veriprint.pipeline.make",
                  "REACH_DELTAS": "veriprint.pipeline.describe"}


def __getattr__(name: str) -> Any:
    """``FingerprintConfig``, ``make_fingerprint`` and ``REACH_DELTAS`` live in the pipeline."""
    if name in _FROM_PIPELINE:
        import importlib

        return getattr(importlib.import_module(_FROM_PIPELINE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        meta: everything else (model hash, domain, configs, coverage, times, version) as
            stored; read it typed through :attr:`info`.
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
    def info(self) -> FingerprintMeta:
        """The metadata, typed (:class:`~veriprint.fingerprint.meta.FingerprintMeta`), read
        afresh from :attr:`meta` (which the pipeline's stages still write as a dict)."""
        return FingerprintMeta.from_dict(self.meta)

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

    def units(self) -> list[tuple[int, ...]]:
        """The samples grouped as the pipeline stores them: twin pairs first (samples ``2i``
        and ``2i + 1`` for ``i < meta["selection"]["pairs"]``), then single samples.

        Raises:
            ConfigError: ``selection.pairs`` is not a count the samples can hold.
        """
        n = len(self)
        sel = self.meta.get("selection")
        pairs = sel.get("pairs", 0) if isinstance(sel, dict) else 0
        if isinstance(pairs, bool) or not isinstance(pairs, int) or not 0 <= 2 * pairs <= n:
            raise ConfigError(f"expected selection.pairs to be a count in [0, {n // 2}], got {pairs!r}")
        return [(2 * i, 2 * i + 1) for i in range(pairs)] + [(i,) for i in range(2 * pairs, n)]

    def subset(self, indices: Sequence[int] | torch.Tensor) -> Fingerprint:
        """The fingerprint made of the samples at ``indices`` (in that order).

        The result keeps the metadata, the noise floor, and the hash and signature status
        of the file it was read from (a check of the subset reports the file that was
        checked), and records the positions it kept in ``meta["subset_of"]``. Saving it
        writes a new file with its own hash, signed only if a key is given.

        Raises:
            ConfigError: no index, or an index out of range.
        """
        idx = torch.as_tensor(indices, dtype=torch.long).flatten()
        n = len(self)
        if idx.numel() == 0:
            raise ConfigError("expected at least one sample index for a subset, got none")
        bad = [i for i in idx.tolist() if not 0 <= i < n]
        if bad:
            raise ConfigError(f"expected sample indices in [0, {n}), got {bad}")
        meta = {**self.meta, "subset_of": {"sha256": self.sha256, "size": n, "indices": idx.tolist()}}
        if isinstance(meta.get("labels"), list) and len(meta["labels"]) == n:
            meta["labels"] = [meta["labels"][i] for i in idx.tolist()]
        return dataclasses.replace(
            self, samples=self.samples[idx].clone(), grid=None if self.grid is None else self.grid[idx].clone(),
            expected=self.expected[idx].clone(), seeds=self.seeds[idx].clone(), log_s=self.log_s[idx].clone(),
            margin=self.margin[idx].clone(), psnr=self.psnr[idx].clone(), meta=meta,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, pubkey: str | os.PathLike[str] | None = None) -> Fingerprint:
        """Read and check a ``.vpf`` file (see :func:`veriprint.fingerprint.fileformat.read_file`)."""
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

    if isinstance(file_meta, dict) and file_meta.get("kind") == "lm":
        raise refuse("this is a language-model fingerprint: read it with veriprint.lm.fingerprint.LmFingerprint "
                     "(the command line does so by itself)")
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
        FingerprintMeta.from_dict(meta, classes=int(expected.shape[1]), shape=list(samples.shape[1:]))
    except MetaError as e:
        raise refuse(str(e)) from e
    try:
        noise = NoiseFloor.from_dict(meta.pop("noise"))
    except ConfigError as e:
        raise refuse(str(e)) from e
    return noise, meta
