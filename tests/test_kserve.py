"""A real KServe ModelServer on 127.0.0.1 serving the demo's zoo model and its tampered copies.

The server (``kserve.ModelServer`` with a custom ``kserve.Model`` over onnxruntime) runs
from .venv-kserve (scripts/setup-kserve.sh); without it these tests skip, except in CI
(CI=true) where they fail. Every check goes over both of its Open Inference Protocol v2
endpoints: REST and gRPC.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from veriprint.fingerprint import Fingerprint
from veriprint.models.onnx_export import export_onnx
from veriprint.targets import OnnxTarget, QueryBatch, TargetError, open_target
from veriprint.targets.oip import OipTarget
from veriprint.verification.verify import verify
from veriprint.zoo import digits_mlp

sys.path.insert(0, str(Path(__file__).parent))
from testkit.servers.demo_onnx import NAMES, DemoModels, demo_models
from testkit.servers.kserve import KServe, require_kserve
from testkit.servers.processes import free_port

pytestmark = pytest.mark.slow  # seven ONNX exports, one server start, 600 checks (~45 s on 2 shared cores)

PROTOCOLS = ("rest", "grpc")
TAMPERS = NAMES[1:]


@pytest.fixture(scope="module")
def models() -> DemoModels:
    require_kserve()
    return demo_models()


@pytest.fixture(scope="module")
def ks(models: DemoModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KServe]:
    root = tmp_path_factory.mktemp("kserve")
    torch.manual_seed(0)  # a model of 8x8 inputs, for a fingerprint of the wrong shape
    digits = export_onnx(digits_mlp().eval(), torch.zeros(2, 1, 8, 8), root / "digits-8x8.onnx")
    server = KServe(root, {**models.onnx, "digits-8x8": digits})
    server.start()
    try:
        yield server
    finally:
        code = server.stop()
    assert code in (0, -15), f"KServe did not stop cleanly (exit {code}):\n{server.tail()}"


def url(ks: KServe, protocol: str, name: str) -> str:
    return ks.url(name) if protocol == "rest" else ks.grpc_url(name)


def queries(n: int = 20) -> QueryBatch:
    fp = Fingerprint.load(demo_models().fingerprint)
    x = fp.samples.numpy()
    return QueryBatch(np.concatenate([x, x[::-1]])[:n])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_answers_equal_local_onnxruntime(ks: KServe, models: DemoModels, protocol: str) -> None:
    q = queries(13)
    t = open_target(url(ks, protocol, "cnn"), classes=10, max_batch=5)
    local = OnnxTarget(models.onnx["cnn"], threads=1).query(q)
    np.testing.assert_allclose(t.query(q), local, rtol=0, atol=1e-6)
    assert (t.requests_sent, t.samples_sent) == (3, 13)  # type: ignore[attr-defined]
    assert t.input_name == "input"  # type: ignore[attr-defined]  # read from KServe's metadata


def _listening(port: int) -> set[str]:
    """The local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_both_endpoints_listen_on_loopback_only(ks: KServe) -> None:
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, ::ffff:127.0.0.1
    for port in (ks.http_port, ks.grpc_port):
        assert _listening(port) and _listening(port) <= loopback, (port, _listening(port))


def test_metadata_lists_the_graph_over_both_protocols(ks: KServe) -> None:
    meta = OipTarget(ks.url("cnn")).metadata()
    assert meta["name"] == "cnn"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    import tritonclient.grpc as grpcclient  # the client the gRPC target uses

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ks.grpc_port}")
    try:
        g = client.get_model_metadata("cnn", as_json=True)
    finally:
        client.close()
    assert g["name"] == "cnn"
    assert [(i["name"], i["datatype"], [int(d) for d in i["shape"]]) for i in g["inputs"]] == \
        [("input", "FP32", [-1, 1, 28, 28])]
    assert [(o["name"], o["datatype"], [int(d) for d in o["shape"]]) for o in g["outputs"]] == \
        [("output", "FP32", [-1, 10])]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("spec", ["top1", "probs"])
def test_intact_is_intact_and_every_demo_tamper_tampered(ks: KServe, models: DemoModels, protocol: str,
                                                         spec: str) -> None:
    r = verify(models.fingerprint, url(ks, protocol, "cnn"), spec=spec)
    assert r.verdict == "INTACT" and r.exit_code == 0, r.reason
    assert r.queries == r.compared == 8
    for name in TAMPERS:
        r = verify(models.fingerprint, url(ks, protocol, name), spec=spec)
        assert r.verdict == "TAMPERED" and r.exit_code == 1, (models.labels[name], r.reason)
        assert r.mismatches >= 1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "veriprint.cli.main", "verify", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cli_verdicts_and_report(ks: KServe, models: DemoModels, protocol: str, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    out = _cli(str(models.fingerprint), "--target", url(ks, protocol, "cnn"), "--spec", "probs",
               "--report", str(report))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "INTACT" in out.stdout
    assert json.loads(report.read_text())["verdict"] == "INTACT"
    out = _cli(str(models.fingerprint), "--target", url(ks, protocol, "cnn-last-x105"), "--spec", "top1")
    assert out.returncode == 1 and "TAMPERED" in out.stdout, out.stdout + out.stderr
    out = _cli(str(models.fingerprint), "--target", url(ks, protocol, "no-such-model"), "--retries", "0")
    assert out.returncode == 2 and "INCONCLUSIVE" in out.stdout, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


# --- KServe's error answers: a clear reason, never INTACT -------------------------------------

NOT_FOUND = {"rest": r"HTTP 404: Model with name no-such-model does not exist",
             "grpc": r"NOT_FOUND Model with name no-such-model does not exist"}
BAD_SHAPE = {"rest": r"HTTP 400: expected 'input' of shape \[-1, 1, 8, 8\], got \[8, 1, 28, 28\]",
             "grpc": r"INVALID_ARGUMENT expected 'input' of shape \[-1, 1, 8, 8\], got \[8, 1, 28, 28\]"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_model_is_inconclusive(ks: KServe, models: DemoModels, protocol: str) -> None:
    for input_name in (None, "input"):  # with and without the metadata request
        r = verify(models.fingerprint, url(ks, protocol, "no-such-model"), input_name=input_name, retries=0)
        assert r.verdict == "INCONCLUSIVE" and r.exit_code == 2, r.reason
        assert re.search(NOT_FOUND[protocol], r.reason), r.reason


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_shape_is_inconclusive(ks: KServe, models: DemoModels, protocol: str) -> None:
    """The CNN's 28x28 samples sent to a model of 8x8 inputs: KServe refuses the shape."""
    r = verify(models.fingerprint, url(ks, protocol, "digits-8x8"), spec="top1", retries=0)
    assert r.verdict == "INCONCLUSIVE" and r.exit_code == 2, r.reason
    assert re.search(BAD_SHAPE[protocol], r.reason), r.reason


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_input_name_and_datatype_are_target_errors(ks: KServe, protocol: str) -> None:
    q = queries(4)
    with pytest.raises(TargetError, match=r"expected inputs \['input'\], got 'pixels'"):
        open_target(url(ks, protocol, "cnn"), input_name="pixels", retries=0).query(q)
    grid = QueryBatch(q.x, np.zeros(q.x.shape, np.uint8))
    with pytest.raises(TargetError, match=r"expected 'input' as FP32, got UINT8"):
        open_target(url(ks, protocol, "cnn"), datatype="UINT8", retries=0).query(grid)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_version_kserve_does_not_serve_is_never_intact(ks: KServe, models: DemoModels, protocol: str) -> None:
    """KServe has no model versions: REST refuses a versioned path (HTTP 501), gRPC ignores the
    version and answers with its one model, so only the answer's empty version shows it."""
    r = verify(models.fingerprint, url(ks, protocol, "cnn") + "/versions/2", retries=0)
    assert r.verdict == "INCONCLUSIVE" and r.exit_code == 2, r.reason
    expected = {"rest": r"HTTP 501: Model versioning not supported yet",
                "grpc": r"expected an answer from version '2' of model 'cnn', got version ''"}
    assert re.search(expected[protocol], r.reason), r.reason


def test_stopped_server_is_inconclusive(models: DemoModels) -> None:
    port = free_port()  # nothing listens there
    for target in (f"http://127.0.0.1:{port}/v2/models/cnn", f"grpc://127.0.0.1:{port}/cnn"):
        r = verify(models.fingerprint, target, input_name="input", retries=1, backoff=0)
        assert r.verdict == "INCONCLUSIVE" and "after 2 attempts" in r.reason, r.reason


# --- the benchmark: no false alarm in 300 checks per protocol, every demo tamper caught ---------

def test_benchmark_300_checks_per_protocol(ks: KServe, models: DemoModels) -> None:
    """The run of benchmarks/studies/kserve.py (docs/measurements/kserve.md), on this module's server."""
    from benchmarks.studies.kserve import SPECS, report, run

    results = run(ks, models, checks=300)
    assert [r.protocol for r in results] == list(PROTOCOLS)
    for r in results:
        assert r.checks == 300 and r.false_alarms == [], (r.protocol, r.false_alarms[:3])
        assert r.tamper_checks == len(TAMPERS) * len(SPECS) and r.misses == [], (r.protocol, r.misses)
        assert r.max_logit_diff < Fingerprint.load(models.fingerprint).noise.logit_tolerance
    assert "| rest | 300 | 0 |" in report(results, Fingerprint.load(models.fingerprint))
