"""Remote targets against small HTTP servers run in this process on 127.0.0.1.

Each server follows one protocol (Open Inference Protocol v2, TorchServe, TF Serving) and
can be told to misbehave; every misbehaviour must raise TargetError naming what was
expected and what came.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from veriprint.targets import CallableTarget, QueryBatch, TargetError, open_target
from veriprint.targets.decoys import DecoyCounts, DecoyTarget
from veriprint.targets.http import HttpOptions, check_output
from veriprint.targets.oip import OipTarget, parse_oip_url
from veriprint.targets.tfserving import TfServingTarget
from veriprint.targets.torchserve import TorchServeTarget

CLASSES = 10
SHAPE = (1, 4, 4)
W = np.random.default_rng(0).normal(size=(int(np.prod(SHAPE)), CLASSES))


def model(x: np.ndarray) -> np.ndarray:
    """The 'served model': a fixed linear map, computed in float64."""
    return x.reshape(len(x), -1).astype(np.float64) @ W


Reply = tuple[int, bytes]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Behaviour:
    """What the server does with a request: ``reply(seen) -> (status, body)``."""

    reply: Callable[[Seen], Reply]
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


def _server(behaviour: Behaviour, tls: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            body = json.loads(raw) if raw else None
            seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            behaviour.seen.append(seen)
            status, out = behaviour.reply(seen)
            if status == 0:  # hang until released
                behaviour.release.wait(10)
                return
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[str, Behaviour]]]:
    """Start servers on 127.0.0.1; returns ``(origin, behaviour)``."""
    running: list[tuple[ThreadingHTTPServer, Behaviour]] = []

    def start(reply: Callable[[Seen], Reply], tls: ssl.SSLContext | None = None) -> tuple[str, Behaviour]:
        b = Behaviour(reply)
        s = _server(b, tls)
        running.append((s, b))
        scheme = "https" if tls else "http"
        return f"{scheme}://127.0.0.1:{s.server_address[1]}", b

    yield start
    for s, b in running:
        b.release.set()
        s.shutdown()
        s.server_close()


def _j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# --- Open Inference Protocol v2 -------------------------------------------------------------

def oip_reply(mutate: Callable[[dict[str, Any], int], Reply | dict[str, Any]] | None = None,
              name: str = "m") -> Callable[[Seen], Reply]:
    def reply(seen: Seen) -> Reply:
        if seen.method == "GET":
            return 200, _j({"name": name, "inputs": [{"name": "pixels", "datatype": "FP32",
                                                      "shape": [-1, *SHAPE]}]})
        inp = seen.body["inputs"][0]
        x = np.asarray(inp["data"], dtype=np.float64).reshape(inp["shape"])
        z = model(x)
        answer = {"model_name": name, "id": seen.body.get("id"),
                  "outputs": [{"name": "logits", "shape": list(z.shape), "datatype": "FP32",
                               "data": z.astype(np.float32).reshape(-1).tolist()}]}
        if mutate is None:
            return 200, _j(answer)
        out = mutate(answer, len(x))
        return out if isinstance(out, tuple) else (200, _j(out))
    return reply


def batch(n: int = 6, seed: int = 1) -> QueryBatch:
    g = np.random.default_rng(seed).integers(0, 256, size=(n, *SHAPE))
    return QueryBatch((g / 255).astype(np.float32), g.astype(np.int64))


def test_oip_answers_match_the_model_and_metadata_gives_the_input_name(serve: Any) -> None:
    origin, b = serve(oip_reply())
    t = open_target(f"{origin}/v2/models/m", classes=CLASSES)
    assert isinstance(t, OipTarget)
    q = batch()
    out = t.query(q)
    np.testing.assert_allclose(out, model(q.x).astype(np.float32), rtol=0, atol=0)
    assert out.dtype == np.float32
    assert [s.method for s in b.seen] == ["GET", "POST"]
    assert b.seen[1].path == "/v2/models/m/infer"
    assert b.seen[1].body["inputs"][0]["name"] == "pixels"
    assert b.seen[1].body["inputs"][0]["shape"] == [6, *SHAPE]
    assert (t.requests_sent, t.samples_sent) == (1, 6)


def test_oip_uint8_sends_grid_values_and_versions_go_in_the_path(serve: Any) -> None:
    origin, b = serve(oip_reply(lambda a, n: {**a, "model_version": "3"}))
    t = OipTarget(f"{origin}/v2/models/m/versions/3", datatype="UINT8", input_name="x")
    q = batch()
    t.query(q)
    sent = b.seen[0].body["inputs"][0]
    assert b.seen[0].path == "/v2/models/m/versions/3/infer"
    assert sent["datatype"] == "UINT8" and sent["name"] == "x"
    assert sent["data"] == q.grid.reshape(-1).tolist()
    with pytest.raises(TargetError, match=r"UINT8 inputs but .* no 8-bit grid"):
        t.query(QueryBatch(q.x, None))


@pytest.mark.parametrize("answered", [None, "", "2", 2])
def test_oip_answer_of_another_version_is_refused(serve: Any, answered: object) -> None:
    """A server that ignores the version in the path answers with some other model."""
    origin, _ = serve(oip_reply(lambda a, n: a if answered is None else {**a, "model_version": answered}))
    t = OipTarget(f"{origin}/v2/models/m/versions/3", input_name="pixels")
    with pytest.raises(TargetError, match=rf"expected an answer from version '3' of model 'm', got version {answered!r}"):
        t.query(batch())
    assert OipTarget(f"{origin}/v2/models/m", input_name="pixels").query(batch()).shape == (6, CLASSES)


def test_max_batch_splits_requests_and_keeps_order(serve: Any) -> None:
    origin, b = serve(oip_reply())
    t = OipTarget(f"{origin}/v2/models/m", input_name="pixels", max_batch=4)
    q = batch(n=10)
    out = t.query(q)
    assert [s.body["inputs"][0]["shape"][0] for s in b.seen] == [4, 4, 2]
    np.testing.assert_array_equal(out, model(q.x).astype(np.float32))
    assert (t.requests_sent, t.samples_sent) == (3, 10)


class Fault(NamedTuple):
    name: str
    mutate: Callable[[dict[str, Any], int], Reply | dict[str, Any]]
    match: str  # regex the TargetError message must match: expected ... got ...


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any], int], dict[str, Any]]:
    def mutate(answer: dict[str, Any], n: int) -> dict[str, Any]:
        obj: Any = answer
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value(answer, n) if callable(value) else value
        return answer
    return mutate


def _nan(answer: dict[str, Any], n: int) -> Reply:
    answer["outputs"][0]["data"][3] = float("nan")
    return 200, json.dumps(answer).encode()  # json writes the NaN token, as some servers do


FAULTS = [
    Fault("garbage", lambda a, n: (200, b"<html>proxy says hi</html>"),
          r"expected a JSON body, got '<html>proxy says hi</html>'"),
    Fault("wrong shape", _set(["outputs", 0], lambda a, n: {
        "name": "logits", "shape": [n, 5], "datatype": "FP32", "data": [0.0] * (5 * n)}),
        r"expected 10 classes, got 5"),
    Fault("shape and data disagree", _set(["outputs", 0, "data"], lambda a, n: [0.0] * (10 * n - 1)),
          r"shape \[6, 10\] needs 60 values, got 59"),
    Fault("wrong datatype", _set(["outputs", 0, "datatype"], "BYTES"),
          r"expected datatype in \[.*'FP32'.*\] for logits, got 'BYTES'"),
    Fault("strings", _set(["outputs", 0, "data"], lambda a, n: ["x"] * (10 * n)),
          r"expected numbers, got strings"),
    Fault("NaN", _nan, r"expected finite logits, got nan at sample 0, class 3"),
    Fault("HTTP 500", lambda a, n: (500, b'{"error": "model crashed"}'),
          r"expected HTTP 200, server answered HTTP 500: model crashed"),
    Fault("HTTP 404 html", lambda a, n: (404, b"<h1>Not Found</h1>"),
          r"expected HTTP 200, server answered HTTP 404: <h1>Not Found</h1>"),
    Fault("wrong count", lambda a, n: {**a, "outputs": [{"name": "logits", "shape": [n - 1, 10],
                                                          "datatype": "FP32", "data": [0.0] * (10 * n - 10)}]},
          r"expected outputs for 6 samples, got 5"),
    Fault("other model", _set(["model_name"], "impostor"),
          r"expected an answer from model 'm', got 'impostor'"),
    Fault("other request id", _set(["id"], "someone-else"),
          r"expected response id 'veriprint-\d+', got 'someone-else'"),
    Fault("no outputs", _set(["outputs"], []), r"expected a non-empty 'outputs' list, got \[\]"),
    Fault("error field", lambda a, n: {"error": "out of memory"}, r"server said: out of memory"),
    Fault("two outputs", _set(["outputs"], lambda a, n: [a["outputs"][0], {**a["outputs"][0], "name": "b"}]),
          r"sent 2 outputs \['logits', 'b'\]; name the one to use with output_name"),
    Fault("binary tensor", _set(["outputs", 0, "parameters"], {"binary_data_size": 240}),
          r"expected JSON data, got a binary tensor"),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_oip_faults_raise_target_error_naming_expected_and_received(serve: Any, fault: Fault) -> None:
    origin, _ = serve(oip_reply(fault.mutate))
    t = OipTarget(f"{origin}/v2/models/m", input_name="pixels", classes=CLASSES, retries=0)
    with pytest.raises(TargetError, match=fault.match):
        t.query(batch())


def test_hanging_server_times_out(serve: Any) -> None:
    origin, _ = serve(lambda seen: (0, b""))
    t = OipTarget(f"{origin}/v2/models/m", input_name="pixels", timeout=0.3, retries=2, backoff=0)
    with pytest.raises(TargetError, match=r"no complete answer within the 0.3 s timeout"):
        t.query(batch())
    assert t.requests_sent == 1  # timeouts are not retried by default: the server may have run them


def test_unavailable_is_retried_with_backoff_and_counted(serve: Any) -> None:
    calls = {"n": 0}
    good = oip_reply()

    def flaky(seen: Seen) -> Reply:
        calls["n"] += 1
        return (503, b'{"error": "warming up"}') if calls["n"] <= 2 else good(seen)

    origin, _ = serve(flaky)
    t = OipTarget(f"{origin}/v2/models/m", input_name="pixels", retries=2, backoff=0.01)
    q = batch()
    np.testing.assert_array_equal(t.query(q), model(q.x).astype(np.float32))
    assert (t.requests_sent, t.samples_sent) == (3, 18)
    calls["n"] = 0
    t1 = OipTarget(f"{origin}/v2/models/m", input_name="pixels", retries=1, backoff=0.01)
    with pytest.raises(TargetError, match=r"HTTP 503: warming up \(after 2 attempts\)"):
        t1.query(q)


def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    t = OipTarget(f"http://127.0.0.1:{port}/v2/models/m", input_name="pixels", retries=1, backoff=0)
    with pytest.raises(TargetError, match=r"connection failed: ConnectionRefusedError.*after 2 attempts"):
        t.query(batch())


def test_auth_header_comes_from_the_named_environment_variable(serve: Any, monkeypatch: Any) -> None:
    origin, b = serve(oip_reply())
    monkeypatch.setenv("VP_TEST_TOKEN", "Bearer s3cret")
    t = OipTarget(f"{origin}/v2/models/m", input_name="pixels", auth_env="VP_TEST_TOKEN",
                  auth_header="X-Api-Key")
    t.query(batch())
    assert b.seen[0].headers["x-api-key"] == "Bearer s3cret"
    assert "s3cret" not in repr(t.client.options)
    monkeypatch.delenv("VP_TEST_TOKEN")
    with pytest.raises(ValueError, match=r"VP_TEST_TOKEN .* unset or empty"):
        OipTarget(f"{origin}/v2/models/m", auth_env="VP_TEST_TOKEN")


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_is_verified_unless_switched_off(serve: Any, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    origin, _ = serve(oip_reply(), tls=ctx)
    url = f"{origin}/v2/models/m"
    q = batch()
    with pytest.raises(TargetError, match=r"TLS failed: .*CERTIFICATE_VERIFY_FAILED"):
        OipTarget(url, input_name="pixels", retries=0).query(q)
    expected = model(q.x).astype(np.float32)
    np.testing.assert_array_equal(OipTarget(url, input_name="pixels", ca_file=str(cert)).query(q), expected)
    np.testing.assert_array_equal(OipTarget(url, input_name="pixels", verify_tls=False).query(q), expected)


def test_bad_urls_and_options_are_refused() -> None:
    with pytest.raises(ValueError, match=r"expected http\(s\)://HOST:PORT/v2/models/NAME"):
        open_target("http://127.0.0.1:1/predict")
    with pytest.raises(ValueError, match="expected torchserve"):
        open_target("torchserve+http://127.0.0.1:1/models/x")
    with pytest.raises(ValueError, match="expected tfserving"):
        open_target("tfserving+http://127.0.0.1:1/v2/models/x")
    with pytest.raises(ValueError, match="expected timeout > 0"):
        HttpOptions(timeout=0)
    with pytest.raises(ValueError, match="expected retries >= 0"):
        HttpOptions(retries=-1)
    with pytest.raises(ValueError, match="expected datatype in"):
        OipTarget("http://127.0.0.1:1/v2/models/m", datatype="FP16")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="transport options are"):
        OipTarget("http://127.0.0.1:1/v2/models/m", tiemout=3)
    assert parse_oip_url("https://h:8443/v2/models/a-b/versions/7") == ("https://h:8443", "a-b", "7")


# --- output validation ---------------------------------------------------------------------

class Bad(NamedTuple):
    arr: Any
    form: str
    match: str


BAD_OUTPUTS = [
    Bad([[0.5, 0.6, 0.0]], "probs", r"expected probabilities summing to 1 per sample, sample 0 sums to 1.1"),
    Bad([[1.5, -0.5, 0.0]], "probs", r"expected probabilities in \[0, 1\], got values in \[-0.5, 1.5\]"),
    Bad([3], "labels", r"expected class indices in \[0, 2\], got values in \[3, 3\]"),
    Bad([1.5], "labels", r"expected integer labels, got non-integer values"),
    Bad([1e30], "labels", r"expected integer labels, got values too large to be one \(e.g. 1e\+30\)"),
    Bad([[1, 2, 3]], "labels", r"expected labels of shape \[1\], got \[1, 3\]"),
    Bad([[1.0, 0.5, 0.1]], "top1-prob", r"expected \(label, probability\) pairs of shape \[1, 2\], got \[1, 3\]"),
    Bad([[1.0, 1.5]], "top1-prob", r"expected probabilities in \[0, 1\] in column 1"),
    Bad([0.1, 0.2, 0.7], "logits", r"expected logits of shape \[3, classes\], got \[3\]"),
]


@pytest.mark.parametrize("bad", BAD_OUTPUTS, ids=[f"{b.form}-{i}" for i, b in enumerate(BAD_OUTPUTS)])
def test_check_output_refuses(bad: Bad) -> None:
    arr = np.asarray(bad.arr)
    with pytest.raises(TargetError, match=bad.match):
        check_output(arr, form=bad.form, rows=arr.shape[0], classes=3)  # type: ignore[arg-type]


def test_check_output_accepts_good_forms() -> None:
    np.testing.assert_array_equal(check_output(np.array([[2], [0]]), form="labels", rows=2, classes=3), [2, 0])
    p = check_output(np.array([[0.2, 0.8]]), form="probs", rows=1)
    assert p.dtype == np.float32
    assert check_output(np.array([[2.0, 0.9]]), form="top1-prob", rows=1, classes=3).shape == (1, 2)


# --- TorchServe and TF Serving --------------------------------------------------------------

def torchserve_reply(seen: Seen) -> Reply:
    x = np.asarray(seen.body, dtype=np.float64)
    if x.shape == SHAPE:  # one sample per request
        return 200, _j(model(x[None])[0].astype(np.float32).tolist())
    return 200, _j(model(x).astype(np.float32).tolist())


def test_torchserve_batch_and_per_sample(serve: Any) -> None:
    origin, b = serve(torchserve_reply)
    host = origin.removeprefix("http://")
    q = batch(n=5)
    t = open_target(f"torchserve+http://{host}/predictions/net", classes=CLASSES)
    assert isinstance(t, TorchServeTarget)
    np.testing.assert_array_equal(t.query(q), model(q.x).astype(np.float32))
    assert b.seen[0].path == "/predictions/net"
    t1 = TorchServeTarget(f"torchserve+http://{host}/predictions/net/2.0", per_request="sample")
    np.testing.assert_array_equal(t1.query(q), model(q.x).astype(np.float32))
    assert len(b.seen) == 1 + 5 and b.seen[-1].path == "/predictions/net/2.0"
    assert t1.samples_sent == 5


def test_torchserve_errors(serve: Any) -> None:
    origin, _ = serve(lambda seen: (200, _j({"code": 503, "message": "worker died"})))
    host = origin.removeprefix("http://")
    with pytest.raises(TargetError, match="server said: worker died"):
        TorchServeTarget(f"torchserve+http://{host}/predictions/net").query(batch())
    origin, _ = serve(lambda seen: (200, _j([[0.0] * CLASSES] * 2)))
    host = origin.removeprefix("http://")
    with pytest.raises(TargetError, match="expected outputs for 6 samples, got 2"):
        TorchServeTarget(f"torchserve+http://{host}/predictions/net").query(batch())


def tfserving_reply(seen: Seen) -> Reply:
    inputs = seen.body["inputs"]
    x = np.asarray(inputs["image"] if isinstance(inputs, dict) else inputs, dtype=np.float64)
    z = model(x).astype(np.float32).tolist()
    return 200, _j({"outputs": {"scores": z, "classes": np.argmax(z, axis=1).tolist()}})


def test_tfserving_columnar_predict(serve: Any) -> None:
    origin, b = serve(tfserving_reply)
    host = origin.removeprefix("http://")
    q = batch()
    t = open_target(f"tfserving+http://{host}/v1/models/net/versions/4", input_name="image",
                    output_name="scores", signature_name="serving_default")
    assert isinstance(t, TfServingTarget)
    np.testing.assert_array_equal(t.query(q), model(q.x).astype(np.float32))
    assert b.seen[0].path == "/v1/models/net/versions/4:predict"
    assert b.seen[0].body["signature_name"] == "serving_default"
    labels = TfServingTarget(f"tfserving+http://{host}/v1/models/net", input_name="image",
                             output_name="classes", output="labels").query(q)
    np.testing.assert_array_equal(labels, model(q.x).argmax(1))
    with pytest.raises(TargetError, match=r"the signature has outputs \['classes', 'scores'\]"):
        TfServingTarget(f"tfserving+http://{host}/v1/models/net", input_name="image").query(q)


def test_tfserving_error_body(serve: Any) -> None:
    origin, _ = serve(lambda seen: (400, _j({"error": "Input size does not match signature"})))
    host = origin.removeprefix("http://")
    with pytest.raises(TargetError, match="HTTP 400: Input size does not match signature"):
        TfServingTarget(f"tfserving+http://{host}/v1/models/net").query(batch())


# --- decoys --------------------------------------------------------------------------------

def test_decoys_are_mixed_in_counted_and_filtered_out() -> None:
    calls: list[np.ndarray] = []

    def fn(x: np.ndarray) -> np.ndarray:
        calls.append(x.copy())
        return model(x)

    inner = CallableTarget(fn, max_batch=4)
    pool = np.random.default_rng(5).random((50, *SHAPE)).astype(np.float32)
    t = DecoyTarget(inner, pool, ratio=2.0, seed=3)
    q = batch(n=5)
    out = t.query(q)
    np.testing.assert_allclose(out, model(q.x), rtol=1e-12)
    sent = np.concatenate(calls)
    assert [len(c) for c in calls] == [4, 4, 4, 3]  # 5 real + 10 decoys, inner max_batch 4
    assert t.counts.real == 5 and t.counts.decoys == 10 and t.counts.total == len(sent)
    is_real = np.array([any(np.array_equal(s, r) for r in q.x) for s in sent])
    assert is_real.sum() == 5
    assert not is_real[:5].all()  # shuffled: the real samples are not simply sent first
    assert all(any(np.array_equal(s, p) for p in pool) for s in sent[~is_real])


def test_decoys_carry_grid_values_for_uint8_targets(serve: Any) -> None:
    origin, b = serve(oip_reply())
    inner = OipTarget(f"{origin}/v2/models/m", input_name="pixels", datatype="UINT8")
    pool_grid = np.random.default_rng(6).integers(0, 256, size=(8, *SHAPE))
    t = DecoyTarget(inner, (pool_grid / 255).astype(np.float32), natural_grid=pool_grid, ratio=0.5)
    q = batch(n=4)
    np.testing.assert_allclose(t.query(q), model(q.grid.astype(np.float64)).astype(np.float32), rtol=1e-6)
    assert b.seen[0].body["inputs"][0]["shape"][0] == 6 and t.counts == DecoyCounts(4, 2)
    with pytest.raises(TargetError, match=r"UINT8 inputs but .* no 8-bit grid"):
        DecoyTarget(inner, pool_grid.astype(np.float32)).query(q)
