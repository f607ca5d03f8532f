"""A real NVIDIA Triton server (PyTriton, on the CPU) on 127.0.0.1, over REST and gRPC.

It serves the demo's shipped CNN and its tampered copies as ONNX, from .venv-triton
(scripts/setup-triton.sh); without it the server tests skip, except in CI (CI=true) where
they fail. One server is started for the module (about 30 s on 2 busy cores).
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from veriprint.fingerprint import Fingerprint
from veriprint.targets import OnnxTarget, QueryBatch, TargetError, TorchTarget
from veriprint.targets.oip import OipTarget, batch_limit_hint, input_name_hint
from veriprint.targets.oip_grpc import GrpcOipTarget
from veriprint.verification.verify import verify

sys.path.insert(0, str(Path(__file__).parent))
from testkit.servers.triton import (
    SMALL_BATCH,
    TAMPERED_NAMES,
    TritonServer,
    demo_models,
    group_alive,
    require_triton,
)

pytest.importorskip("tritonclient.grpc", reason="gRPC targets need tritonclient: pip install 'veriprint[grpc]'")

PROTOCOLS = ("rest", "grpc")


@dataclass
class Served:
    server: TritonServer
    fingerprint: Fingerprint

    def url(self, protocol: str, name: str = "fashion-cnn") -> str:
        return self.server.url(name) if protocol == "rest" else self.server.grpc_url(name)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_triton()
    models = demo_models()
    server = TritonServer(tmp_path_factory.mktemp("triton"), models.served())
    server.start()
    assert server.proc is not None
    pgid = server.proc.pid
    try:
        yield Served(server, Fingerprint.load(models.fingerprint))
    finally:
        code = server.stop()
    assert code in (0, -15), f"Triton did not stop cleanly (exit {code}):\n{server.tail()}"
    assert not group_alive(pgid), "a process of the Triton server's group outlived its stop"


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``veriprint verify ARGS`` in this process: its exit code and everything it printed."""
    from veriprint.cli.main import main

    capsys.readouterr()
    code = main(["verify", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


# --- without a server --------------------------------------------------------------------------

def test_batch_limit_hint_names_the_limit_and_what_was_sent() -> None:
    said = "expected HTTP 200, server answered HTTP 400: inference request batch-size must be <= 4 for 'm'"
    assert batch_limit_hint(said, 8) == ("; expected at most 4 samples per request (the model's max_batch_size), "
                                         "sent 8: set --max-batch 4 (max_batch=4)")
    assert batch_limit_hint("Request for unknown model: 'm' is not found", 8) == ""


def test_input_name_hint_names_the_metadata_inputs() -> None:
    said = "unexpected inference input 'pixels' for model 'm'"
    assert input_name_hint(said, "pixels", ["image"]) == (
        "; expected the input 'image' (the model's metadata), sent 'pixels': set --input-name image or leave it out")
    assert input_name_hint(said, "pixels", ["a", "b"]) == (
        "; expected one of the inputs ['a', 'b'] (the model's metadata), sent 'pixels': set --input-name")
    assert input_name_hint(said, "pixels", []) == ""
    assert len(input_name_hint(said, "pixels", ["x" * 1000] * 1000)) < 1000  # a hostile server's list is cut
    assert input_name_hint("Request for unknown model: 'm' is not found", "x", ["image"]) == ""


# --- the server's metadata and answers ---------------------------------------------------------

@pytest.mark.slow
def test_metadata_is_read_over_both_protocols(served: Served) -> None:
    meta = OipTarget(served.url("rest")).metadata()
    assert meta["name"] == "fashion-cnn" and meta["platform"] == "python"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    q = QueryBatch(served.fingerprint.samples.numpy())
    rest, grpc = OipTarget(served.url("rest")), GrpcOipTarget(served.url("grpc"))
    rest.query(q)
    grpc.query(q)
    assert rest.input_name == grpc.input_name == "image"  # read from the metadata, not the default "input"
    with urllib.request.urlopen(served.server.origin + "/v2/models/fashion-cnn-mb4/config", timeout=10) as r:
        assert json.load(r)["max_batch_size"] == SMALL_BATCH


@pytest.mark.slow
def test_answers_match_the_local_model_and_each_other(served: Served) -> None:
    q = QueryBatch(served.fingerprint.samples.numpy())
    rest = OipTarget(served.url("rest")).query(q)
    grpc = GrpcOipTarget(served.url("grpc")).query(q)
    local = TorchTarget(demo_models().model).query(q)
    np.testing.assert_array_equal(rest.astype(np.float32), grpc.astype(np.float32))
    np.testing.assert_allclose(rest, local, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(rest.argmax(1), local.argmax(1))


# --- verdicts ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("spec", ["top1", "probs", "logits", "topk:3"])
def test_intact_model_is_intact_at_every_batch_size(served: Served, protocol: str, spec: str) -> None:
    n = len(served.fingerprint)
    for max_batch in (None, 1, 3, 8, 16):
        r = verify(served.fingerprint, served.url(protocol), spec=spec, max_batch=max_batch)
        assert r.verdict == "INTACT", (max_batch, r.reason)
        assert r.queries == n and r.compared == n


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", TAMPERED_NAMES)
def test_every_demo_tamper_is_tampered_as_by_the_same_file_here(served: Served, protocol: str, name: str) -> None:
    local = OnnxTarget(demo_models().onnx[name], threads=1)  # the same file, run here
    for spec in ("top1", "probs"):
        r = verify(served.fingerprint, served.url(protocol, name), spec=spec)
        assert r.verdict == "TAMPERED" and r.exit_code == 1, (spec, r.reason)
        assert r.mismatches == verify(served.fingerprint, local, spec=spec).mismatches, spec


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_uint8_inputs_are_intact(served: Served, protocol: str) -> None:
    for spec in ("top1", "probs"):
        r = verify(served.fingerprint, served.url(protocol, "fashion-cnn-u8"), spec=spec, datatype="UINT8")
        assert r.verdict == "INTACT", (spec, r.reason)


# --- the server's max_batch_size -----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_requests_over_max_batch_size_are_inconclusive_and_name_the_limit(served: Served, protocol: str) -> None:
    url = served.url(protocol, "fashion-cnn-mb4")
    r = verify(served.fingerprint, url, spec="probs")
    assert r.verdict == "INCONCLUSIVE" and r.compared == 0
    assert "batch-size must be <= 4" in r.reason
    assert "expected at most 4 samples per request (the model's max_batch_size), sent 8: set --max-batch 4" in r.reason
    for max_batch in (1, 3, SMALL_BATCH):
        r = verify(served.fingerprint, url, spec="probs", max_batch=max_batch)
        assert r.verdict == "INTACT", (max_batch, r.reason)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_target_limit_splits_the_fingerprint_into_requests(served: Served, protocol: str) -> None:
    url = served.url(protocol, "fashion-cnn-mb4")
    target = OipTarget(url, max_batch=3) if protocol == "rest" else GrpcOipTarget(url, max_batch=3)
    r = verify(served.fingerprint, target, spec="top1")
    assert r.verdict == "INTACT", r.reason
    assert (target.requests_sent, target.samples_sent) == (3, 8)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cli_max_batch_against_the_limit(served: Served, protocol: str, capsys: pytest.CaptureFixture[str]) -> None:
    fp = str(demo_models().fingerprint)
    url = served.url(protocol, "fashion-cnn-mb4")
    code, out = _cli(capsys, fp, "--target", url, "--spec", "top1")
    assert code == 2, out
    assert out.startswith("verdict: INCONCLUSIVE") and "set --max-batch 4" in out
    code, out = _cli(capsys, fp, "--target", url, "--spec", "top1", "--max-batch", "4")
    assert code == 0, out
    assert out.startswith("verdict: INTACT")
    assert "Traceback" not in out


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_refused_input_name_is_one_query_and_the_hint_is_not_counted(served: Served, protocol: str) -> None:
    url = served.url(protocol)
    target = (OipTarget(url, input_name="pixels", retries=0) if protocol == "rest"
              else GrpcOipTarget(url, input_name="pixels", retries=0))
    with pytest.raises(TargetError, match=r"expected the input 'image' \(the model's metadata\), sent 'pixels'"):
        target.query(QueryBatch(served.fingerprint.samples.numpy()))
    assert (target.requests_sent, target.samples_sent) == (1, 8)


# --- Triton's error answers ------------------------------------------------------------------------

ERRORS = [  # (model, target options, what the reason must name)
    ("no-such-model", {}, "unknown model: 'no-such-model' is not found"),
    ("fashion-cnn", {"datatype": "UINT8"}, "data-type is 'UINT8', but model 'fashion-cnn' expects 'FP32'"),
    ("fashion-cnn-u8", {}, "data-type is 'FP32', but model 'fashion-cnn-u8' expects 'UINT8'"),
    ("fashion-cnn-flat", {}, "Expected [-1,784], got [8,1,28,28]"),
    ("fashion-cnn", {"input_name": "pixels"}, "unexpected inference input 'pixels' for model 'fashion-cnn'; "
     "expected the input 'image' (the model's metadata), sent 'pixels': set --input-name image or leave it out"),
]


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("name", "options", "named"), ERRORS, ids=[e[0] + str(sorted(e[1])) for e in ERRORS])
def test_server_errors_are_inconclusive_and_name_expected_and_got(
        served: Served, protocol: str, name: str, options: dict[str, str], named: str) -> None:
    r = verify(served.fingerprint, served.url(protocol, name), spec="top1", retries=0, **options)
    assert r.verdict == "INCONCLUSIVE" and r.compared == 0 and r.exit_code == 2, r.reason
    assert named in r.reason, r.reason
    expect = "HTTP 4" if protocol == "rest" else ("NOT_FOUND" if name == "no-such-model" else "INVALID_ARGUMENT")
    assert expect in r.reason, r.reason


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cli_error_is_one_line_with_exit_2(served: Served, protocol: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _cli(capsys, str(demo_models().fingerprint), "--target", served.url(protocol, "fashion-cnn-flat"))
    assert code == 2, out
    first = out.splitlines()[0]
    assert first.startswith("verdict: INCONCLUSIVE") and "Expected [-1,784], got [8,1,28,28]" in first
    assert "Traceback" not in out


# --- the goal: no false alarm in hundreds of checks, every tamper caught ---------------------------

@pytest.mark.slow
def test_no_false_alarm_in_300_checks_per_protocol_and_every_tamper_caught(served: Served) -> None:
    from benchmarks.studies.triton import measure

    labels = demo_models().labels
    for res in measure(served.server, served.fingerprint, labels, checks=300, clients=2, model=demo_models().model):
        assert res.max_logit_diff is not None and res.max_logit_diff < served.fingerprint.noise.logit_tolerance
        assert res.checks == 300 and res.verdicts == {"INTACT": 300}, (res.protocol, res.verdicts, res.failed)
        assert res.caught == res.tampered_checks == 2 * len(labels), (res.protocol, res.missed)
