"""A real Seldon MLServer on 127.0.0.1 serving ONNX exports of a trained model.

The server runs from .venv-serving (scripts/setup-serving.sh); without it these tests skip,
except in CI (CI=true) where they fail.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from veriprint.data import Dataset
from veriprint.fingerprint import Fingerprint
from veriprint.targets import OnnxTarget, QueryBatch, TargetError, TorchTarget, open_target
from veriprint.targets.decoys import DecoyTarget
from veriprint.targets.oip import OipTarget
from veriprint.verification.verify import verify

sys.path.insert(0, str(Path(__file__).parent))
from testkit.servers.digits import digits_fingerprint, digits_models
from testkit.servers.mlserver import MLServer, ServedModel, require_mlserver
from testkit.servers.processes import free_port

pytestmark = pytest.mark.slow  # one server start and a short training run (~20 s)


@dataclass
class Served:
    server: MLServer
    model: nn.Module
    onnx: dict[str, Path]
    test: Dataset


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_mlserver()
    m = digits_models()
    server = MLServer(tmp_path_factory.mktemp("mlserver"), [ServedModel(n, p) for n, p in m.onnx.items()])
    server.start()
    try:
        yield Served(server, m.model, m.onnx, m.test)
    finally:
        code = server.stop()
    assert code in (0, -15), f"MLServer did not stop cleanly (exit {code}):\n{server.tail()}"


def queries(s: Served, n: int = 40) -> QueryBatch:
    x = s.test.x[:n]
    return QueryBatch(x.numpy(), s.test.domain.to_grid(x).numpy())


def test_fp32_answers_equal_local_onnxruntime_and_torch(served: Served) -> None:
    q = queries(served)
    remote = open_target(served.server.url("digits"), classes=10).query(q)
    local = OnnxTarget(served.onnx["digits"], threads=1).query(q)
    torch_out = TorchTarget(served.model).query(q)
    np.testing.assert_allclose(remote, local, rtol=0, atol=1e-6)
    np.testing.assert_allclose(remote, torch_out, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(remote.argmax(1), torch_out.argmax(1))


def test_uint8_inputs_are_mapped_in_the_graph_and_match_torch(served: Served) -> None:
    q = queries(served)
    t = OipTarget(served.server.url("digits-u8"), datatype="UINT8", classes=10)
    remote = t.query(q)
    x = served.test.domain.from_grid(torch.from_numpy(q.grid))
    torch_out = TorchTarget(served.model).query(QueryBatch(x.numpy()))
    np.testing.assert_allclose(remote, torch_out, rtol=0, atol=1e-4)
    import onnxruntime as ort

    local = ort.InferenceSession(str(served.onnx["digits-u8"])).run(None, {"input": q.grid.astype(np.uint8)})[0]
    np.testing.assert_allclose(remote, local, rtol=0, atol=1e-6)
    assert t.input_name == "input"  # read from the model's metadata or the default


def test_probs_output_is_validated_and_matches_softmax(served: Served) -> None:
    q = queries(served)
    probs = OipTarget(served.server.url("digits-probs"), output="probs", classes=10).query(q)
    expected = torch.softmax(torch.from_numpy(TorchTarget(served.model).query(q)), -1).numpy()
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)


def test_max_batch_splits_into_several_requests(served: Served) -> None:
    q = queries(served, n=21)
    whole = OipTarget(served.server.url("digits"))
    split = OipTarget(served.server.url("digits"), max_batch=8)
    np.testing.assert_allclose(split.query(q), whole.query(q), rtol=0, atol=1e-6)
    assert (split.requests_sent, split.samples_sent) == (3, 21)
    assert (whole.requests_sent, whole.samples_sent) == (1, 21)


def test_tampered_model_answers_differently(served: Served) -> None:
    q = queries(served)
    good = OipTarget(served.server.url("digits")).query(q)
    bad = OipTarget(served.server.url("digits-tampered")).query(q)
    assert np.abs(good - bad).max() > 1e-3


def test_decoys_through_the_server(served: Served) -> None:
    q = queries(served, n=10)
    pool = served.test.subset(slice(100, 200))
    t = DecoyTarget.from_dataset(OipTarget(served.server.url("digits"), max_batch=16), pool, ratio=3.0)
    out = t.query(q)
    np.testing.assert_allclose(out, OipTarget(served.server.url("digits")).query(q), rtol=0, atol=1e-6)
    assert (t.counts.real, t.counts.decoys) == (10, 30)
    assert t.inner.samples_sent == 40  # type: ignore[attr-defined]


def test_server_errors_raise_target_error(served: Served) -> None:
    q = queries(served, n=4)
    with pytest.raises(TargetError, match=r"expected HTTP 200, server answered HTTP 404"):
        OipTarget(served.server.url("no-such-model"), input_name="input", retries=0).query(q)
    # float samples sent to the uint8 graph: the runtime refuses them
    with pytest.raises(TargetError, match=r"expected HTTP 200, server answered HTTP (400|422|500)"):
        OipTarget(served.server.url("digits-u8"), datatype="FP32", retries=0).query(q)
    with pytest.raises(TargetError, match=r"expected 3 classes, got 10"):
        OipTarget(served.server.url("digits"), classes=3).query(q)


# --- end to end: verify() against the served models -------------------------------------------

@pytest.fixture(scope="session")
def fingerprint(served: Served) -> Fingerprint:
    return digits_fingerprint()


@pytest.mark.parametrize("spec", ["top1", "probs", "logits", "topk:3"])
def test_intact_served_model_is_intact(served: Served, fingerprint: Fingerprint, spec: str) -> None:
    for max_batch in (None, 1, 3):
        r = verify(fingerprint, served.server.url("digits"), spec=spec, max_batch=max_batch, classes=10)
        assert r.verdict == "INTACT", (max_batch, r.reason)
        assert r.queries == len(fingerprint) and r.compared == len(fingerprint)


def test_intact_served_probs_and_uint8_models_are_intact(served: Served, fingerprint: Fingerprint) -> None:
    r = verify(fingerprint, served.server.url("digits-probs"), spec="probs", output="probs")
    assert r.verdict == "INTACT", r.reason
    assert fingerprint.grid is not None
    for spec in ("top1", "probs"):
        r = verify(fingerprint, served.server.url("digits-u8"), spec=spec, datatype="UINT8")
        assert r.verdict == "INTACT", (spec, r.reason)


@pytest.mark.parametrize("spec", ["top1", "probs"])
def test_tampered_served_model_is_tampered(served: Served, fingerprint: Fingerprint, spec: str) -> None:
    r = verify(fingerprint, served.server.url("digits-tampered"), spec=spec)
    assert r.verdict == "TAMPERED", r.reason
    assert r.mismatches >= 1 and r.exit_code == 1


def test_8bit_rounding_is_caught_by_probabilities(served: Served, fingerprint: Fingerprint) -> None:
    """Rounding to 8 bits moves the logits by ~1e-2: far above the probability tolerance, but
    below these samples' label margins (the 16-level digits grid keeps them >= 0.1), so a
    labels-only API does not reveal it with 8 samples."""
    r = verify(fingerprint, served.server.url("digits-round8"), spec="probs")
    assert r.verdict == "TAMPERED" and r.mismatches == len(fingerprint), r.reason
    assert verify(fingerprint, served.server.url("digits-round8"), spec="top1").verdict != "INCONCLUSIVE"


def test_decoys_hide_the_samples_and_are_reported(served: Served, fingerprint: Fingerprint) -> None:
    inner = OipTarget(served.server.url("digits"), max_batch=8)
    t = DecoyTarget.from_dataset(inner, served.test.subset(slice(0, 200)), ratio=4.0, seed=1)
    r = verify(fingerprint, t, spec="top1")
    assert r.verdict == "INTACT", r.reason
    assert (r.queries, r.decoys) == (8, 32)
    assert inner.samples_sent == 40 and inner.requests_sent == 5


class FaultyProxy:
    """An in-process server on 127.0.0.1 in front of MLServer that spoils its answers."""

    def __init__(self, upstream: str, fault: str) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                req = urllib.request.Request(upstream + self.path, data=body, method=self.command,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10) as r:
                    status, out = r.status, r.read()
                status, out = proxy.spoil(self.command, status, out)
                if status == 0:
                    proxy.release.wait(10)
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = _serve

            def log_message(self, *args: object) -> None:
                pass

        self.fault = fault
        self.release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"

    def spoil(self, method: str, status: int, out: bytes) -> tuple[int, bytes]:
        if method != "POST":
            return status, out
        if self.fault == "garbage":
            return 200, b"\x00\x17not json at all"
        if self.fault == "500":
            return 500, b'{"error": "worker crashed"}'
        if self.fault == "hang":
            return 0, b""
        answer = json.loads(out)
        t = answer["outputs"][0]
        if self.fault == "shape":
            t["shape"], t["data"] = [t["shape"][0], 5], t["data"][: t["shape"][0] * 5]
        elif self.fault == "count":
            t["shape"], t["data"] = [t["shape"][0] - 1, t["shape"][1]], t["data"][t["shape"][1]:]
        elif self.fault == "nan":
            t["data"][0] = float("nan")
        elif self.fault == "datatype":
            t["datatype"] = "BYTES"
        return 200, json.dumps(answer).encode()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


BROKEN = [
    ("garbage", r"expected a JSON body, got"),
    ("500", r"expected HTTP 200, server answered HTTP 500: worker crashed"),
    ("hang", r"no complete answer within the 0.5 s timeout"),
    ("shape", r"expected 10 classes, got 5"),
    ("count", r"expected outputs for 8 samples, got 7"),
    ("nan", r"expected finite logits, got nan"),
    ("datatype", r"expected datatype in .* got 'BYTES'"),
]


@pytest.mark.parametrize(("fault", "match"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_server_is_inconclusive(served: Served, fingerprint: Fingerprint, fault: str, match: str) -> None:
    proxy = FaultyProxy(served.server.origin, fault)
    try:
        r = verify(fingerprint, f"{proxy.origin}/v2/models/digits", spec="top1", classes=10,
                   timeout=0.5, retries=0)
    finally:
        proxy.close()
    assert r.verdict == "INCONCLUSIVE" and r.exit_code == 2
    assert re.search(match, r.reason), r.reason


def test_missing_model_and_stopped_server_are_inconclusive(served: Served, fingerprint: Fingerprint) -> None:
    r = verify(fingerprint, served.server.url("no-such-model"), spec="top1", input_name="input", retries=0)
    assert r.verdict == "INCONCLUSIVE" and "HTTP 404" in r.reason
    port = free_port()  # nothing listens there
    r = verify(fingerprint, f"http://127.0.0.1:{port}/v2/models/digits", spec="top1", retries=1, backoff=0)
    assert r.verdict == "INCONCLUSIVE" and "ConnectionRefusedError" in r.reason, r.reason


# --- the same server over gRPC (tritonclient) ------------------------------------------------

def test_grpc_answers_equal_rest_and_verify(served: Served, fingerprint: Fingerprint) -> None:
    pytest.importorskip("tritonclient.grpc", reason="gRPC targets need tritonclient: pip install 'veriprint[grpc]'")
    from veriprint.targets.oip_grpc import GrpcOipTarget

    q = queries(served, n=21)
    grpc_url = f"grpc://127.0.0.1:{served.server.grpc_port}"
    t = open_target(f"{grpc_url}/digits", classes=10, max_batch=8)
    assert isinstance(t, GrpcOipTarget)
    np.testing.assert_array_equal(t.query(q), OipTarget(served.server.url("digits")).query(q))
    assert (t.requests_sent, t.samples_sent) == (3, 21) and t.input_name == "input"
    u8 = GrpcOipTarget(f"{grpc_url}/digits-u8", datatype="UINT8").query(q)
    np.testing.assert_array_equal(u8, OipTarget(served.server.url("digits-u8"), datatype="UINT8").query(q))
    assert verify(fingerprint, f"{grpc_url}/digits", spec="probs").verdict == "INTACT"
    assert verify(fingerprint, f"{grpc_url}/digits-tampered", spec="top1").verdict == "TAMPERED"
    r = verify(fingerprint, f"{grpc_url}/no-such-model", input_name="input", retries=0)
    assert r.verdict == "INCONCLUSIVE" and "NOT_FOUND" in r.reason, r.reason
    r = verify(fingerprint, f"grpc://127.0.0.1:{free_port()}/digits", input_name="input", retries=1, backoff=0)
    assert r.verdict == "INCONCLUSIVE" and "UNAVAILABLE" in r.reason and "after 2 attempts" in r.reason, r.reason
