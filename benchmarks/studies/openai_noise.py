"""How much a real OpenAI-compatible server (vLLM, CPU) moves greedy tokens and logprobs
with batch size and concurrency, against the same model folder run locally one prompt at a
time: the noise floor that language-model fingerprints must keep clear of.

    bash scripts/setup-lm-serving.sh
    .venv/bin/python -m benchmarks.studies.openai_noise --out /tmp/openai-noise.json
    .venv/bin/python -m benchmarks.studies.openai_noise --arch llama --prompts 32 --tokens 8

A tiny randomly initialised model folder is made (or ``--folder`` names one), served by
vLLM on 127.0.0.1 (or ``--url`` names a running server), and the same prompts are sent as
completions in requests of 1, 2, 4, 8, 16 and 32 prompts, as single-prompt requests with 4
and 8 in flight at once, and through the chat endpoint. For each way it reports prompts
whose generated tokens differ from the local greedy run, the largest |logprob difference|
over the top-K alternatives of tokens both runs share, and the smallest top-1 margin seen.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from testkit.servers.openai_server import OpenAIServer, local_greedy, make_tiny_lm, prompts
from veriprint.targets.openai import Completion, OpenAIChat, OpenAICompletions


def between(a: list[Completion], b: list[Completion]) -> dict[str, Any]:
    """Token and logprob differences between two server runs of the same prompts."""
    tokens = sum(x.tokens != y.tokens for x, y in zip(a, b, strict=True))
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        for j, (u, v) in enumerate(zip(x.top_logprobs or [], y.top_logprobs or [], strict=False)):
            if x.tokens[:j + 1] != y.tokens[:j + 1]:
                break
            worst = max([worst, *(abs(u[t] - v[t]) for t in u.keys() & v.keys())])
    return {"tokens_differing_from_first_way": tokens, "max_logprob_diff_from_first_way": worst}


def compare(ref: list[dict[str, Any]], got: list[Completion]) -> dict[str, Any]:
    """Token and logprob differences of ``got`` from the local greedy ``ref``."""
    differ = 0
    worst = 0.0
    for r, g in zip(ref, got, strict=True):
        if g.text != r["text"]:
            differ += 1
        steps = r["steps"][: len(g.top_logprobs or [])]
        for j, (step, alt) in enumerate(zip(steps, g.top_logprobs or [], strict=False)):
            if j > 0 and g.tokens[:j] != r["tokens"][:j]:
                break  # past the first different token the contexts differ
            ours = sorted(alt.values(), reverse=True)[: len(step["logprobs"])]
            worst = max(worst, max(abs(a - b) for a, b in zip(ours, step["logprobs"], strict=False)))
    return {"texts_differing": differ, "max_logprob_diff": worst}


def margins(ref: list[dict[str, Any]]) -> float:
    return min(s["logprobs"][0] - s["logprobs"][1] for r in ref for s in r["steps"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=("gpt2", "llama"), default="gpt2")
    p.add_argument("--folder", default=None, help="a model folder (default: a tiny random one)")
    p.add_argument("--url", default=None, help="a running server's /v1 URL (default: start vLLM)")
    p.add_argument("--model", default="tiny", help="the served model's name")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--tokens", type=int, default=8, help="max_tokens per prompt")
    p.add_argument("--k", type=int, default=5, help="logprobs per token")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="openai-noise-"))
    folder = Path(a.folder) if a.folder else make_tiny_lm(tmp / "model", arch=a.arch)
    texts = prompts(a.prompts)
    ref = local_greedy(folder, texts, a.tokens, a.k)
    server = None
    if a.url is None:
        t0 = time.perf_counter()
        server = OpenAIServer(folder, a.model).start()
        print(f"server ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    url = a.url or (server.base_url if server else "")
    rows: list[dict[str, Any]] = []
    try:
        ways: list[tuple[str, OpenAICompletions]] = [
            (f"completions, {b} per request", OpenAICompletions(url, a.model, max_batch=b))
            for b in (1, 2, 4, 8, 16, 32)]
        ways += [(f"completions, 1 per request, {w} in flight", OpenAICompletions(url, a.model, max_batch=1,
                                                                                  workers=w))
                 for w in (4, 8)]
        first: list[Completion] | None = None
        for name, target in ways:
            for rep in range(a.repeats):
                t0 = time.perf_counter()
                got = target.complete(texts, max_tokens=a.tokens, logprobs=a.k)
                first = first or got
                rows.append({"way": name, "repeat": rep, "seconds": time.perf_counter() - t0,
                             **compare(ref, got), **between(first, got)})
                print(json.dumps(rows[-1]), file=sys.stderr)
        chat = OpenAIChat(url, a.model, workers=4)
        # the tiny folder's chat template: "user: TEXT\nassistant:"
        chat_ref = local_greedy(folder, [f"user: {t}\nassistant:" for t in texts], a.tokens, a.k)
        got = chat.complete(texts, max_tokens=a.tokens, logprobs=a.k)
        rows.append({"way": "chat, 4 in flight", "repeat": 0, **compare(chat_ref, got)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    result = {"arch": a.arch, "prompts": a.prompts, "tokens": a.tokens, "k": a.k,
              "smallest_local_margin": margins(ref), "rows": rows}
    text = json.dumps(result, indent=1)
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
