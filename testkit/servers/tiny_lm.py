"""A tiny randomly initialised causal LM folder, and its own greedy outputs, for the server tests.

Run with the LM server environment's Python (``transformers`` lives there)::

    python tiny_lm.py make FOLDER [--arch gpt2|llama] [--seed 0]
    python tiny_lm.py greedy FOLDER PROMPTS.json MAX_TOKENS K > OUT.json

``make`` trains a byte-level BPE tokenizer on a fixed ASCII text (its bytes only, so that
every token is whole characters), builds the model from a config
with a seeded random initialisation, gives the tokenizer a one-line chat template and
writes both with ``save_pretrained`` (a folder ``from_pretrained`` reads, as a server does).
``greedy`` runs the same folder one prompt at a time, in float32, with no padding: per
prompt the generated ids, text and per step the K best next-token log-probabilities (ids
and values) and the chosen one's, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TEXT = (
    "The quick brown fox jumps over the lazy dog. A sensitive sample moves with the weights. "
    "Models served behind an API may be swapped, quantized or fine-tuned without notice. "
    "Fingerprints keep a few prompts and the answers the shipped model gives to them. "
    "One two three four five six seven eight nine ten. Hello world, hello there, goodbye!\n"
    "user: assistant: system: 0123456789 (a) [b] {c} <d> 'e' \"f\" ? - _ / + = * & % $ # @ ~ ;\n"
)
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def make(folder: str, arch: str, seed: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Only the bytes of TEXT (all ASCII) and their merges: every token decodes to whole
    # characters, so texts and tokens compare exactly whatever a server joins or splits.
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator([TEXT] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    eos = fast.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(seed)
    vocab = len(fast)
    model: torch.nn.Module
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=256, n_embd=128, n_layer=2,
                                           n_head=2, bos_token_id=eos, eos_token_id=eos,
                                           initializer_range=0.2))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256,
                                             num_hidden_layers=2, num_attention_heads=2,
                                             num_key_value_heads=1, max_position_embeddings=256,
                                             bos_token_id=eos, eos_token_id=eos, initializer_range=0.2))
    # heads of 64 dimensions: vLLM's CPU attention kernels take 32, 64, 80, 96, ... only
    model.eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)


def greedy(folder: str, prompts: list[str], max_tokens: int, k: int) -> list[dict[str, object]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    eos = model.config.eos_token_id
    out = []
    for p in prompts:
        ids = tok(p, return_tensors="pt")["input_ids"]
        gen: list[int] = []
        steps = []
        with torch.no_grad():
            for _ in range(max_tokens):
                logits = model(ids).logits[0, -1].double()
                lp = torch.log_softmax(logits, -1)
                top = torch.topk(lp, k)
                nxt = int(torch.argmax(lp))
                steps.append({"ids": top.indices.tolist(), "logprobs": top.values.tolist(),
                              "chosen": float(lp[nxt])})
                if nxt == eos:
                    break
                gen.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        out.append({"ids": gen, "text": tok.decode(gen), "steps": steps,
                    "tokens": [tok.decode([i]) for i in gen]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("folder")
    m.add_argument("--arch", choices=("gpt2", "llama"), default="gpt2")
    m.add_argument("--seed", type=int, default=0)
    g = sub.add_parser("greedy")
    g.add_argument("folder")
    g.add_argument("prompts")
    g.add_argument("max_tokens", type=int)
    g.add_argument("k", type=int)
    a = ap.parse_args()
    if a.cmd == "make":
        make(a.folder, a.arch, a.seed)
    else:
        with open(a.prompts) as f:
            prompts = json.load(f)
        json.dump(greedy(a.folder, prompts, a.max_tokens, a.k), sys.stdout)


if __name__ == "__main__":
    main()
