"""The OpenAI-compatible targets against a real server: vLLM (CPU) serving a tiny model folder.

One server serves a tiny randomly initialised GPT-2 folder for the whole module (it takes
about 100 s to start on 2 cores). Its greedy outputs must equal those of the same folder
run locally by ``transformers`` one prompt at a time, with logprobs within float32
rounding, through both endpoints; requests of 1 to 32 prompts and several requests in
flight must give the same answers; and its refusals must reach the caller as one clear
line. ``scripts/setup-lm-serving.sh`` installs the server; without it these tests skip
(and fail under ``CI=true``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.servers.openai_server import OpenAIServer, local_greedy, make_tiny_lm, prompts
from veriprint.targets import TargetError
from veriprint.targets.http import HttpOptions
from veriprint.targets.openai import Completion, OpenAIChat, OpenAICompletions

pytestmark = pytest.mark.slow

TOKENS = 5
K = 5
#: float32 logits, log-softmax in float32 on the server and in float64 locally: ~1e-5 apart
#: (measured: docs/measurements/openai-server-noise.md)
LOGPROB_TOL = 1e-4
OPTIONS = HttpOptions(timeout=120, retries=0)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OpenAIServer, Path]]:
    root = tmp_path_factory.mktemp("openai-server")
    folder = make_tiny_lm(root / "tiny-gpt2", arch="gpt2", seed=0)
    server = OpenAIServer(folder, "tiny", log=root / "vllm.log").start()
    try:
        yield server, folder
    finally:
        server.stop()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return prompts(16, seed=1)


@pytest.fixture(scope="module")
def reference(served: tuple[OpenAIServer, Path], texts: list[str]) -> list[dict[str, Any]]:
    return local_greedy(served[1], texts, TOKENS, K)


def assert_matches(got: list[Completion], ref: list[dict[str, Any]]) -> None:
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        assert g.text == r["text"], f"prompt {i}"
        stopped = len(r["steps"]) > len(r["tokens"])  # the local run chose end-of-text
        # a server may list the end-of-text token it stopped on (vLLM does)
        extra = g.tokens[len(r["tokens"]):]
        assert g.tokens[:len(r["tokens"])] == r["tokens"], f"prompt {i}"
        assert extra == [] or (stopped and extra == ["<|endoftext|>"]), f"prompt {i}: {extra}"
        assert "".join(g.tokens[:len(r["tokens"])]) == g.text
        assert g.top_logprobs is not None and len(g.top_logprobs) == len(g.tokens)
        for j, (alt, step) in enumerate(zip(g.top_logprobs, r["steps"], strict=False)):
            ours = sorted(alt.values(), reverse=True)[:K]
            assert ours == pytest.approx(step["logprobs"], abs=LOGPROB_TOL), f"prompt {i} token {j}"
            assert alt[g.tokens[j]] == pytest.approx(step["chosen"], abs=LOGPROB_TOL)


def test_completions_equal_the_local_greedy_outputs(served: tuple[OpenAIServer, Path], texts: list[str],
                                                    reference: list[dict[str, Any]]) -> None:
    target = OpenAICompletions(served[0].base_url, "tiny", options=OPTIONS)
    assert target.models() == ["tiny"]
    got = target.complete(texts, max_tokens=TOKENS, logprobs=K)
    assert target.requests_sent == 1
    assert_matches(got, reference)
    plain = target.complete(texts[:2], max_tokens=TOKENS)
    assert [c.text for c in plain] == [r["text"] for r in reference[:2]]


def test_chat_equals_the_local_greedy_outputs_of_the_templated_prompt(
        served: tuple[OpenAIServer, Path], texts: list[str]) -> None:
    few = texts[:4]
    # the tiny folder's chat template: "user: TEXT\nassistant:"
    ref = local_greedy(served[1], [f"user: {t}\nassistant:" for t in few], TOKENS, K)
    got = OpenAIChat(served[0].base_url, "tiny", options=OPTIONS, workers=2).complete(
        few, max_tokens=TOKENS, logprobs=K)
    assert_matches(got, ref)


@pytest.mark.parametrize("max_batch,workers", [(1, 1), (4, 1), (32, 1), (1, 4), (4, 4)])
def test_batch_size_and_concurrency_change_no_answer(served: tuple[OpenAIServer, Path], texts: list[str],
                                                     reference: list[dict[str, Any]], max_batch: int,
                                                     workers: int) -> None:
    target = OpenAICompletions(served[0].base_url, "tiny", options=OPTIONS, max_batch=max_batch,
                               workers=workers)
    got = target.complete(texts, max_tokens=TOKENS, logprobs=K)
    assert target.requests_sent == -(-len(texts) // max_batch)
    assert_matches(got, reference)


def test_the_servers_refusals_are_one_clear_line(served: tuple[OpenAIServer, Path]) -> None:
    url = served[0].base_url
    with pytest.raises(TargetError, match=r"expected HTTP 200, server answered HTTP 404: .*nope") as e:
        OpenAICompletions(url, "nope", options=OPTIONS).complete(["hello"], max_tokens=1)
    assert "\n" not in str(e.value)
    with pytest.raises(TargetError, match="expected HTTP 200, server answered HTTP 400"):
        OpenAICompletions(url, "tiny", options=OPTIONS).complete(["hello"], max_tokens=1000)
    with pytest.raises(TargetError, match="HTTP 404"):
        OpenAICompletions(url.removesuffix("/v1") + "/elsewhere", "tiny", options=OPTIONS).complete(
            ["hello"], max_tokens=1)
