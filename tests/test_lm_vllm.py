"""The shipped language model served by a real OpenAI-compatible server, vLLM (CPU).

vLLM serves the shipped ``fortunes-lm`` folder as it is (the same files ``load_lm`` reads);
a fingerprint made locally must be INTACT through ``/v1/completions`` under every spec and
request size, and the sibling checkpoint served the same way must be TAMPERED.
``scripts/setup-lm-serving.sh`` installs the server; without it these tests skip (and fail
under ``CI=true``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from testkit.servers.openai_server import OpenAIServer, require_vllm
from veriprint.lm.builder import LmFingerprintConfig, make_lm_fingerprint
from veriprint.lm.fingerprint import LmFingerprint
from veriprint.lm.model import ASSETS, load_lm
from veriprint.lm.verify import open_lm_target, verify_lm
from veriprint.targets.http import HttpOptions

pytestmark = pytest.mark.slow

OPTIONS = HttpOptions(timeout=120, retries=0)


@pytest.fixture(scope="module")
def fingerprint(tmp_path_factory: pytest.TempPathFactory) -> LmFingerprint:
    require_vllm()
    cfg = LmFingerprintConfig(prompts=8, steps=2, candidates=16)
    return make_lm_fingerprint(load_lm("fortunes-lm"), cfg).save(tmp_path_factory.mktemp("lm") / "lm.vpf")


def _serve(name: str, root: Path) -> OpenAIServer:
    folder = root / name
    shutil.copytree(ASSETS / name, folder)
    return OpenAIServer(folder, "fortunes-lm", log=root / f"{name}.log")


@pytest.fixture(scope="module")
def intact(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    server = _serve("fortunes-lm", tmp_path_factory.mktemp("vllm")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("spec", ["top1-token", "logprobs:5", "text"])
@pytest.mark.parametrize("max_batch", [1, 8])
def test_vllm_serving_the_shipped_folder_is_intact(fingerprint: LmFingerprint, intact: OpenAIServer, spec: str,
                                                    max_batch: int) -> None:
    target = open_lm_target(intact.base_url, served_model="fortunes-lm", options=OPTIONS)
    r = verify_lm(fingerprint, target, spec=spec, max_batch=max_batch)
    assert r.verdict == "INTACT", r.summary()


def test_vllm_serving_the_sibling_is_tampered(fingerprint: LmFingerprint, intact: OpenAIServer,
                                              tmp_path: Path) -> None:
    intact.stop()  # one server at a time on two cores
    with _serve("fortunes-lm-sibling", tmp_path) as sibling:
        target = open_lm_target(sibling.base_url, served_model="fortunes-lm", options=OPTIONS)
        assert verify_lm(fingerprint, target, spec="logprobs:5").verdict == "TAMPERED"
