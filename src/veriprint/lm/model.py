"""Causal language models: the zoo entry, loading a model folder, and the forward passes.

A :class:`LanguageModel` is a Hugging Face ``transformers`` causal LM with its tokenizer,
both read from one folder that ``from_pretrained(folder)`` also reads, so a server given
the same folder serves the same weights. The zoo ships one such folder,
``fortunes-lm`` (a 3-layer Llama of 0.4M parameters with a 512-token byte-level BPE
tokenizer, trained here on the fortune cookies of Debian's ``fortunes-min``; see
``scripts/make-lm-assets.sh``), and its sibling ``fortunes-lm-sibling`` (the same run,
stopped earlier). Every shipped file's SHA-256 is in ``assets/lm/manifest.json`` and is
checked on load, so every machine checks the same bits.

Nothing here downloads: ``HF_HUB_OFFLINE=1`` is set before ``transformers`` is imported
and every load is from a local folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veriprint.errors import ModelError

__all__ = ["ASSETS", "ZOO", "LanguageModel", "dense", "is_lm_source", "load_lm", "next_token_logits", "offline",
           "pad_left", "tiny_lm", "tokenizer_sha256", "weights_sha256"]

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "lm"
"""Where the shipped language models live, with ``manifest.json``."""

ZOO: dict[str, str] = {"fortunes-lm": "fortunes-lm", "fortunes-lm-sibling": "fortunes-lm-sibling"}
"""Zoo name -> folder under :data:`ASSETS`."""


def offline() -> None:
    """Forbid every hub download before ``transformers`` or ``huggingface_hub`` is imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@dataclass(frozen=True)
class LanguageModel:
    """A causal LM, its tokenizer and where they came from.

    Attributes:
        model: the ``transformers`` causal LM (eval mode, float32 unless tampered).
        tokenizer: its ``PreTrainedTokenizerFast``.
        source: the zoo name or folder it was loaded from.
        weights_sha256: SHA-256 of its float32 state dict (:func:`weights_sha256`).
        tokenizer_sha256: SHA-256 of its tokenizer (:func:`tokenizer_sha256`).
    """

    model: Any
    tokenizer: Any
    source: str
    weights_sha256: str
    tokenizer_sha256: str

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, as a server that takes text computes them (no special tokens added)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Each id as text, as an OpenAI-compatible server spells a generated token."""
        return [self.decode([i]) for i in ids]

    def round_trips(self, ids: Sequence[int]) -> bool:
        """Whether ``encode(decode(ids)) == ids``: a server that takes text then sees exactly ``ids``."""
        return self.encode(self.decode(ids)) == list(ids)


def dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or a quantized tensor subclass's (torchao's) dequantized values."""
    if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "dequantize"):
        return t.dequantize()
    return t


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over every state-dict tensor (name, dtype, shape, bytes), in name order; a
    quantized tensor subclass counts by its type name and dequantized values."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        kind = str(t.dtype) if type(t) in (torch.Tensor, nn.Parameter) else type(t).__name__
        t = dense(t).detach().cpu().contiguous()
        h.update(name.encode() + b"\0" + kind.encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_sha256(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's canonical JSON (vocabulary, merges, pre-tokenizer, decoder)."""
    text = tokenizer.backend_tokenizer.to_str()
    canon = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_manifest(name: str, folder: Path) -> None:
    try:
        manifest = json.loads((ASSETS / "manifest.json").read_text())
        files = manifest["models"][name]["files"]
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot read the shipped LM manifest {ASSETS / 'manifest.json'} for {name!r}: {e}") from None
    for fname, digest in files.items():
        path = folder / fname
        if not path.is_file():
            raise ModelError(f"the shipped LM file {path} is missing; restore it from git or remake it with "
                             "scripts/make-lm-assets.sh")
        got = _file_sha256(path)
        if got != digest:
            raise ModelError(f"{path}: SHA-256 {got[:16]}... is not the manifest's {digest[:16]}...; restore the "
                             "file from git, or remake the assets with scripts/make-lm-assets.sh")


def is_lm_source(source: object) -> bool:
    """Whether ``source`` names a language model: a zoo name (``fortunes-lm``, ``lm:NAME``)
    or a folder holding a ``config.json`` of a causal LM."""
    if not isinstance(source, str | os.PathLike):
        return False
    text = os.fspath(source)
    if text.removeprefix("lm:") in ZOO:
        return True
    folder = Path(text)
    return folder.is_dir() and (folder / "config.json").is_file()


def _resolve(source: str | os.PathLike[str]) -> tuple[Path, str | None]:
    text = os.fspath(source)
    name = text.removeprefix("lm:")
    if name in ZOO:
        return ASSETS / ZOO[name], name
    folder = Path(text)
    if not folder.is_dir():
        raise ModelError(f"expected a language model: a zoo name ({', '.join(sorted(ZOO))}) or a model folder "
                         f"with config.json, got {text!r}")
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: expected a model folder with config.json (from save_pretrained), found "
                         f"{sorted(p.name for p in folder.iterdir())[:8]}")
    return folder, None


def load_lm(source: str | os.PathLike[str], *, attn_implementation: str = "eager") -> LanguageModel:
    """Load a causal LM and its tokenizer from a zoo name or a ``save_pretrained`` folder.

    Args:
        source: ``"fortunes-lm"``, ``"fortunes-lm-sibling"`` (``lm:`` prefix optional) or a folder.
        attn_implementation: ``"eager"`` (default, the reference) or ``"sdpa"``.

    Raises:
        ModelError: the folder is missing, is not a causal LM, or a shipped file's hash is not
            the manifest's.
    """
    folder, zoo_name = _resolve(source)
    if zoo_name is not None:
        _check_manifest(zoo_name, folder)
    offline()
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        with _torchao_quietly():
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32,
                                                         attn_implementation=attn_implementation)
            tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{folder}: cannot load a causal LM and its tokenizer: {type(e).__name__}: {e}") from None
    model.eval()
    return LanguageModel(model, tokenizer, zoo_name or os.fspath(source), weights_sha256(model),
                         tokenizer_sha256(tokenizer))


@contextlib.contextmanager
def _torchao_quietly() -> Iterator[None]:
    """Loading with torchao's import-time messages off.

    ``transformers`` imports torchao, and parts of it, whenever it is installed (for the
    ``lm-torchao`` tamper it is); on a CPU machine torchao then logs that its CUDA kernels
    cannot be loaded, and torch that torchao registers enums it no longer needs to: true and
    harmless here, and printed by every command that loads a language model. Inside this
    context those two loggers say only errors, and warnings are not shown.
    """
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def tiny_lm(seed: int = 0, *, hidden: int = 32, layers: int = 2, tokenizer: Any = None) -> LanguageModel:
    """A randomly initialised Llama of the shipped model's class and tokenizer, for tests.

    Args:
        seed: seed of the initialisation (default 0).
        hidden: width (default 32; 4 heads).
        layers: decoder layers (default 2).
        tokenizer: a tokenizer (default: the shipped one, read without the model).
    """
    offline()
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if tokenizer is None:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(ASSETS / ZOO["fortunes-lm"], local_files_only=True)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=128, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.set_attn_implementation("eager")
    model.eval()
    return LanguageModel(model, tokenizer, f"tiny-lm(seed={seed})", weights_sha256(model),
                         tokenizer_sha256(tokenizer))


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int, *, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists to one length (plus ``extra`` more pads): ids and attention mask."""
    if not seqs:
        raise ValueError("expected at least one sequence, got none")
    width = max(len(s) for s in seqs) + extra
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def next_token_logits(model: Any, seqs: Sequence[Sequence[int]], *, pad_id: int = 0, batch_size: int = 32,
                      extra_pad: int = 0, grad: bool = False, embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of the token after each sequence, ``(N, V)`` float32, in left-padded batches.

    Left padding with an attention mask and position ids counted from each sequence's
    first real token, so a sequence's logits do not depend on its neighbours' lengths
    (up to float noise, which :mod:`veriprint.lm.noise` measures).

    Args:
        model: a causal LM.
        seqs: token ids per sequence (each at least one token).
        pad_id: id written in pad positions (masked out).
        batch_size: sequences per forward pass (default 32).
        extra_pad: pad positions added on the left of every batch (default 0).
        grad: keep the graph (default False: ``inference_mode``).
        embeds: input embeddings ``(N, L, H)`` to use in place of the ids' (all sequences of
            length ``L``; for the gradient of the prompt search).
    """
    if any(len(s) == 0 for s in seqs):
        raise ValueError("expected every sequence to hold at least one token")
    out: list[torch.Tensor] = []
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with ctx:
        for lo in range(0, len(seqs), batch_size):
            part = seqs[lo: lo + batch_size]
            ids, mask = pad_left(part, pad_id, extra=extra_pad)
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            kwargs: dict[str, Any] = {"attention_mask": mask, "position_ids": pos, "use_cache": False}
            if embeds is not None:
                e = embeds[lo: lo + batch_size]
                if extra_pad or e.shape[1] != ids.shape[1]:
                    raise ValueError("embeds need sequences of one length and no extra padding")
                kwargs["inputs_embeds"] = e
            else:
                kwargs["input_ids"] = ids
            logits = model(**kwargs).logits[:, -1, :]
            out.append(logits.float())
    return torch.cat(out)
