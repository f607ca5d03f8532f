"""Training the zoo's language model: corpus, tokenizer, model, shipped folder.

The corpus is the fortune cookies of Debian's ``fortunes-min`` package (the files
``fortunes``, ``literature`` and ``riddles`` in ``/usr/share/games/fortunes``, 98 KB of
English quotations, jokes and riddles under the fortune program's BSD licence): the
smallest well-kept text a registry ships that still reads as natural English, which a
model of under a million parameters learns in minutes on two cores.

``python -m veriprint.lm.train --out DIR`` (what ``scripts/make-lm-assets.sh`` runs)
trains a byte-level BPE tokenizer, then a small Llama, and writes the model folder,
its sibling (the same run's checkpoint at 3/4 of the steps), seed prompts drawn from
the corpus, and a manifest with every file's SHA-256.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from veriprint.lm.model import _file_sha256, offline

__all__ = ["CORPUS_DIR", "CORPUS_FILES", "LmTrainConfig", "read_corpus", "train_tokenizer"]

log = logging.getLogger(__name__)

CORPUS_DIR = Path("/usr/share/games/fortunes")
CORPUS_FILES = ("fortunes", "literature", "riddles")
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class LmTrainConfig:
    """How the zoo's LM is made.

    Args:
        vocab: BPE vocabulary size, special token included (default 512).
        hidden: width (default 96), with ``heads`` heads (default 3: heads of 32 dimensions,
            a size vLLM's CPU attention kernels take) and an MLP of ``3 * hidden`` (SwiGLU).
        layers: decoder layers (default 3).
        context: training window in tokens (default 64; the model takes up to 256).
        steps: optimiser steps (default 1600), AdamW at ``lr`` (default 3e-3) with a cosine decay.
        batch_size: windows per step (default 16).
        sibling_at: the sibling checkpoint's step (default 1200: 3/4 of the run).
        threads: torch threads while training (default 1: the same bits run to run).
        seed: seed of initialisation and batch order (default 0).
    """

    vocab: int = 512
    hidden: int = 96
    heads: int = 3
    layers: int = 3
    context: int = 64
    steps: int = 1600
    lr: float = 3e-3
    batch_size: int = 16
    sibling_at: int = 1200
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.sibling_at < self.steps:
            raise ValueError(f"expected 0 < sibling_at < steps, got {self.sibling_at} and {self.steps}")


def read_corpus(root: Path = CORPUS_DIR) -> list[str]:
    """The fortune cookies as documents (one per ``%``-separated entry, whitespace tidied)."""
    docs: list[str] = []
    for name in CORPUS_FILES:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"expected the corpus file {path}: install Debian's fortunes-min "
                                    "(apt-get install fortunes-min; scripts/setup.sh does this)")
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            text = "\n".join(re.sub(r"[ \t]+", " ", line).strip() for line in entry.strip().splitlines())
            if text:
                docs.append(text)
    return docs


def train_tokenizer(docs: list[str], vocab: int) -> Any:
    """A byte-level BPE tokenizer trained on ``docs``, as a ``PreTrainedTokenizerFast``
    whose one special token ``<|endoftext|>`` is BOS, EOS and pad; nothing is added when
    encoding, so a text's ids are its tokens alone."""
    offline()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    chat = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + '\n' }}"
            "{% elif m['role'] == 'user' %}{{ m['content'] }}{% else %}{{ m['content'] + eos_token }}"
            "{% endif %}{% endfor %}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS,
                                   chat_template=chat, model_max_length=256)


def _model(cfg: LmTrainConfig, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=3 * cfg.hidden,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                         max_position_embeddings=256, tie_word_embeddings=True, rms_norm_eps=1e-5,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def _save(model: Any, tokenizer: Any, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return {p.name: _file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}


def train(out: Path, cfg: LmTrainConfig = LmTrainConfig(), corpus: Path = CORPUS_DIR) -> dict[str, Any]:
    """Train and write ``out/fortunes-lm``, ``out/fortunes-lm-sibling``, ``out/seeds.json``
    and ``out/manifest.json``; returns the manifest."""
    offline()
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    docs = read_corpus(corpus)
    rng = random.Random(cfg.seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    held = sorted(order[:200])
    train_docs = [docs[i] for i in order[200:]]
    tokenizer = train_tokenizer(docs, cfg.vocab)
    stream: list[int] = []
    for d in train_docs:
        stream += [*tokenizer.encode(d, add_special_tokens=False), tokenizer.eos_token_id]
    data = torch.tensor(stream, dtype=torch.long)
    torch.manual_seed(cfg.seed)
    model = _model(cfg, tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    g = torch.Generator().manual_seed(cfg.seed)
    model.train()
    files: dict[str, dict[str, str]] = {}
    losses: list[float] = []
    for step in range(1, cfg.steps + 1):
        starts = torch.randint(0, len(data) - cfg.context - 1, (cfg.batch_size,), generator=g)
        x = torch.stack([data[s: s + cfg.context + 1] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss  # the model shifts the labels itself
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0:
            log.info("step %d loss %.3f", step, sum(losses[-100:]) / 100)
        if step == cfg.sibling_at:
            model.eval()
            files["fortunes-lm-sibling"] = _save(model, tokenizer, out / "fortunes-lm-sibling")
            model.train()
    model.eval()
    files["fortunes-lm"] = _save(model, tokenizer, out / "fortunes-lm")
    seeds = [docs[i].split("\n")[0] for i in held]
    (out / "seeds.json").write_text(json.dumps(seeds, indent=0, ensure_ascii=False) + "\n")
    manifest = {
        "corpus": {"package": "fortunes-min (Debian)", "files": [str(corpus / n) for n in CORPUS_FILES],
                   "documents": len(docs), "training_tokens": len(stream), "held_out": len(held)},
        "train_config": asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": round(sum(losses[-100:]) / len(losses[-100:]), 4),
        "models": {name: {"files": f} for name, f in files.items()},
        "seeds": {"file": "seeds.json", "sha256": _file_sha256(out / "seeds.json"),
                  "what": "first lines of 200 held-out fortunes, the natural seeds of the prompt search"},
        "command": "scripts/make-lm-assets.sh",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="train the zoo's language model and write its shipped folder")
    p.add_argument("--out", required=True, type=Path, help="folder to write (src/veriprint/assets/lm)")
    p.add_argument("--steps", type=int, default=LmTrainConfig.steps, help="optimiser steps")
    p.add_argument("--sibling-at", type=int, default=LmTrainConfig.sibling_at, help="the sibling's step")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = train(args.out, LmTrainConfig(steps=args.steps, sibling_at=args.sibling_at))
    print(json.dumps({k: manifest[k] for k in ("parameters", "final_loss", "seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
