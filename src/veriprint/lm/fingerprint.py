"""An LM fingerprint: prompts, the intact model's greedy answers, and the file that holds them.

The file is a ``.vpf`` of the project's format (:mod:`veriprint.fingerprint.fileformat`: safetensors,
canonical JSON metadata, SHA-256 content hash, optional Ed25519 signature) whose metadata
says ``"kind": "lm"``. Its tensors:

* ``prompt_ids`` (I32 ``(k, L)``, ``-1`` past a prompt's end) and ``prompt_lengths`` (I32 ``(k,)``);
* ``expected_ids`` (I32 ``(k, T)``, ``-1`` past the end), ``lengths`` (I32 ``(k,)``);
* ``top_ids`` (I32 ``(k, T, M)``) and ``top_logprobs`` (F32 ``(k, T, M)``): the ``M`` (10)
  most likely tokens of each generated step and their logprobs;
* ``margins`` (F64 ``(k, T)``): top-1 vs top-2 logit margin of each step; ``log_s`` (F64 ``(k,)``).

Its metadata also holds everything a verifier needs without the tokenizer: the prompts as
text, the expected tokens and top tokens as the API spells them, the expected text, the
tokenizer's and the weights' SHA-256, the noise floor, and the config that made it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from veriprint.errors import ConfigError
from veriprint.fingerprint.fileformat import FingerprintFileError, read_file, write_file
from veriprint.lm.specs import ExpectedAnswer
from veriprint.noise import NoiseFloor

__all__ = ["KIND", "LmFingerprint", "is_lm_file"]

KIND = "lm"
#: Metadata lists with one entry per prompt (kept in step by :meth:`LmFingerprint.subset`).
PER_PROMPT = ("prompts", "seed_texts", "edits", "roles", "tokens", "text", "top_tokens")
_TENSORS = ("prompt_ids", "prompt_lengths", "expected_ids", "lengths", "top_ids", "top_logprobs", "margins", "log_s")


def is_lm_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a readable ``.vpf`` whose metadata says it is an LM fingerprint
    (reads only the header; the full check is :meth:`LmFingerprint.load`)."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
    except Exception:  # not a readable file: the classifier path says what is wrong with it
        return False
    return isinstance(meta, dict) and meta.get("kind") == KIND


@dataclass(frozen=True)
class LmFingerprint:
    """Prompts and the intact model's answers.

    Attributes:
        tensors: the file's tensors (see the module docstring).
        noise: the calibrated noise floor (``logit``: logprob noise; ``margin``: margin noise).
        meta: everything else: ``prompts``, ``tokens``, ``top_tokens``, ``text``, ``roles``,
            ``tokenizer_sha256``, ``model_hash``, ``model_source``, ``max_tokens``, ``api``, ``config``.
        sha256: content hash of the file ("" before it is written).
        signature: ``"unsigned"``, ``"valid"`` or ``"not checked"``.
    """

    tensors: dict[str, torch.Tensor]
    noise: NoiseFloor
    meta: dict[str, Any]
    sha256: str = ""
    signature: str = "unsigned"

    def __len__(self) -> int:
        return int(self.tensors["log_s"].shape[0])

    @property
    def prompts(self) -> list[str]:
        return list(self.meta["prompts"])

    @property
    def max_tokens(self) -> int:
        return int(self.tensors["expected_ids"].shape[1])

    def expected(self, i: int) -> ExpectedAnswer:
        """What the intact model answers to prompt ``i``."""
        n = len(self.meta["tokens"][i])
        return ExpectedAnswer(
            tokens=list(self.meta["tokens"][i]), text=str(self.meta["text"][i]),
            margins=[float(v) for v in self.tensors["margins"][i, :max(n, 1)]],
            top_tokens=[list(r) for r in self.meta["top_tokens"][i]],
            top_logprobs=[[float(v) for v in row] for row in self.tensors["top_logprobs"][i, :max(n, 1)]])

    def units(self) -> list[tuple[int, ...]]:
        """The prompts as the monitor's pool spends them: one unit per prompt (an LM
        fingerprint stores no twin pairs)."""
        return [(i,) for i in range(len(self))]

    def subset(self, indices: Sequence[int]) -> LmFingerprint:
        """The fingerprint made of the prompts at ``indices`` (in that order).

        As :meth:`veriprint.fingerprint.Fingerprint.subset`: the result keeps the noise floor
        and the hash and signature status of the file it was read from, and records the
        positions it kept in ``meta["subset_of"]``.

        Raises:
            ConfigError: no index, or an index out of range.
        """
        idx = [int(i) for i in indices]
        n = len(self)
        if not idx:
            raise ConfigError("expected at least one prompt index for a subset, got none")
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise ConfigError(f"expected prompt indices in [0, {n}), got {bad}")
        at = torch.tensor(idx, dtype=torch.long)
        tensors = {name: t[at].clone() for name, t in self.tensors.items()}
        meta = {**self.meta, "subset_of": {"sha256": self.sha256, "size": n, "indices": idx}}
        for key in PER_PROMPT:
            v = self.meta.get(key)
            if isinstance(v, list) and len(v) == n:
                meta[key] = [v[i] for i in idx]
        return dataclasses.replace(self, tensors=tensors, meta=meta)

    def prompt_ids(self, i: int) -> list[int]:
        return [int(v) for v in self.tensors["prompt_ids"][i, : int(self.tensors["prompt_lengths"][i])]]

    def save(self, path: str | os.PathLike[str], *, key: str | os.PathLike[str] | None = None) -> LmFingerprint:
        """Write the ``.vpf`` file (signed with the Ed25519 private ``key`` if given)."""
        digest = write_file(path, self.tensors, {**self.meta, "kind": KIND, "noise": self.noise.to_dict()}, key=key)
        return LmFingerprint(self.tensors, self.noise, self.meta, digest, "valid" if key else "unsigned")

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, pubkey: str | os.PathLike[str] | None = None) -> LmFingerprint:
        """Read and check an LM ``.vpf`` file.

        Raises:
            FingerprintFileError: the file is unreadable, edited, badly signed, not an LM
                fingerprint, or holds contents no veriprint could have written.
        """
        f = read_file(path, pubkey)
        noise, meta = _checked(os.fspath(path), f.tensors, f.meta)
        return cls(f.tensors, noise, meta, f.sha256, f.signature)


def _checked(path: str, t: dict[str, torch.Tensor], meta: dict[str, Any]) -> tuple[NoiseFloor, dict[str, Any]]:
    def refuse(what: str) -> FingerprintFileError:
        return FingerprintFileError(f"{path}: {what}")

    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise refuse("expected a language-model fingerprint (metadata kind 'lm'), got "
                     f"{meta.get('kind') if isinstance(meta, dict) else type(meta).__name__!r}")
    missing = [n for n in _TENSORS if n not in t]
    if missing:
        raise refuse(f"expected tensors {', '.join(_TENSORS)}; missing {missing}")
    k = int(t["log_s"].shape[0]) if t["log_s"].dim() == 1 else -1
    if k < 1:
        raise refuse(f"expected at least one prompt, log_s of shape (k,), got {tuple(t['log_s'].shape)}")
    if t["expected_ids"].dim() != 2 or t["expected_ids"].shape[0] != k:
        raise refuse(f"expected expected_ids of shape ({k}, T), got {tuple(t['expected_ids'].shape)}")
    steps = int(t["expected_ids"].shape[1])
    if not 1 <= steps <= 4:
        raise refuse(f"expected 1 to 4 generated tokens per prompt, got {steps}")
    if t["top_ids"].dim() != 3 or tuple(t["top_ids"].shape[:2]) != (k, steps) or t["top_ids"].shape[2] < 2:
        raise refuse(f"expected top_ids of shape ({k}, {steps}, M >= 2), got {tuple(t['top_ids'].shape)}")
    m = int(t["top_ids"].shape[2])
    shapes = {"top_logprobs": (k, steps, m), "margins": (k, steps), "lengths": (k,), "prompt_lengths": (k,)}
    for name, shape in shapes.items():
        if tuple(t[name].shape) != shape:
            raise refuse(f"expected {name} of shape {shape}, got {tuple(t[name].shape)}")
    if t["prompt_ids"].dim() != 2 or t["prompt_ids"].shape[0] != k:
        raise refuse(f"expected prompt_ids of shape ({k}, L), got {tuple(t['prompt_ids'].shape)}")
    for name in ("top_logprobs", "margins", "log_s"):
        if not t[name].dtype.is_floating_point or not torch.isfinite(t[name]).all():
            raise refuse(f"expected finite floats in {name}")
    if (t["top_logprobs"] > 1e-6).any() or (t["margins"] < 0).any():
        raise refuse("expected logprobs <= 0 and margins >= 0")
    for key, size in (("prompts", k), ("tokens", k), ("top_tokens", k), ("text", k)):
        v = meta.get(key)
        if not isinstance(v, list) or len(v) != size:
            raise refuse(f"expected metadata {key!r} as a list of {size}, got {type(v).__name__}")
    if not all(isinstance(p, str) and p for p in meta["prompts"]) or not all(isinstance(s, str) for s in meta["text"]):
        raise refuse("expected prompts as non-empty strings and text as strings")
    for i in range(k):
        toks, tops = meta["tokens"][i], meta["top_tokens"][i]
        if not isinstance(toks, list) or not all(isinstance(s, str) for s in toks) or not 1 <= len(toks) <= steps:
            raise refuse(f"expected tokens[{i}] as 1 to {steps} strings")
        if (not isinstance(tops, list) or len(tops) < len(toks)
                or not all(isinstance(r, list) and len(r) == m and all(isinstance(s, str) for s in r) for r in tops)):
            raise refuse(f"expected top_tokens[{i}] as {len(toks)} lists of {m} strings")
    try:
        noise = NoiseFloor.from_dict(meta.get("noise"))  # type: ignore[arg-type]
    except ConfigError as e:
        raise refuse(str(e)) from e
    rest = {key: v for key, v in meta.items() if key != "noise"}
    return noise, rest
