"""Hostile inputs: crafted fingerprint files, misbehaving servers, bad local models.

Whatever the file, the server or the model does, a check must end in bounded time with
the right exit code (2 unless a well-formed answer really differs), a one-line reason, no
traceback and no secret in anything printed or stored. Crafted files are re-hashed with
the project's own writer (an unsigned file proves only that it was not edited after it
was written). Servers bind 127.0.0.1 and stop by themselves.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from testkit.servers.raw_http import read_request
from veriprint import redact
from veriprint.cli.main import main
from veriprint.errors import ConfigError, VeriprintError
from veriprint.fingerprint import Fingerprint
from veriprint.fingerprint.fileformat import FingerprintFileError, read_file, write_file
from veriprint.models import save_weights
from veriprint.targets import CallableTarget, open_target
from veriprint.verification.verify import verify

SECRET = "s3cr3t-Token-do-not-print"


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    yield
    redact.forget_all()


@pytest.fixture(scope="module")
def vpf(tmp_path_factory: pytest.TempPathFactory, digits_fingerprint: Fingerprint) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "fp.vpf"
    digits_fingerprint.save(path)
    return path


def craft(vpf: Path, out: Path, edit: Callable[[dict[str, torch.Tensor], dict[str, Any]], None]) -> Path:
    """A copy of ``vpf`` edited by ``edit(tensors, meta)`` and re-hashed by the project's writer."""
    f = read_file(vpf)
    tensors = {k: v.clone() for k, v in f.tensors.items()}
    meta = json.loads(json.dumps(f.meta))
    edit(tensors, meta)
    write_file(out, tensors, meta)
    return out


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run the CLI in this process; ``(exit code, stdout + stderr)``, checked for tracebacks."""
    code = main(list(argv))
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text, text
    return code, text


def _noise(**changes: Any) -> Callable[[dict[str, torch.Tensor], dict[str, Any]], None]:
    def edit(t: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        meta["noise"].update(changes)
    return edit


# --- crafted fingerprint files ---------------------------------------------------------------

def _set(name: str, value: Any) -> Callable[[dict[str, torch.Tensor], dict[str, Any]], None]:
    def edit(t: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        t[name] = t[name].clone()
        t[name].view(-1)[0] = value
    return edit


def _drop_meta(key: str) -> Callable[[dict[str, torch.Tensor], dict[str, Any]], None]:
    def edit(t: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        del meta[key]
    return edit


def _empty(t: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    for k in list(t):
        t[k] = t[k][:0]


def _short_grid(t: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    t["grid"] = t["grid"][:-1]


def _grid_not_samples(t: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    t["grid"] = (t["grid"].long() + 1).clamp_max(16).to(t["grid"].dtype)


def _seeds_mismatch(t: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    t["seeds"] = t["seeds"][:-1]


def _meta_list(t: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    meta.clear()
    meta["domain"] = [0, 1]


CRAFTED = {
    "NaN floor": (_noise(margin=float("nan")), "expected margin to be a finite number"),
    "infinite floor": (_noise(logit=float("inf")), "expected logit to be a finite number"),
    "absurd floor": (_noise(declared=1e9), "expected declared in [0, 100]"),
    "negative noise": (_noise(margin=-1.0), "expected margin in [0, 100]"),
    "safety below 1": (_noise(safety=0.5), "expected safety in [1, 10000]"),
    "zero min floor": (_noise(min_floor=0.0), "expected min_floor in (0, 100]"),
    "string noise": (_noise(prob="0.1"), "expected prob to be a finite number"),
    "bool noise": (_noise(logit=True), "expected logit to be a finite number"),
    "noise without fields": (lambda t, m: m.update(noise={}), "missing ['logit', 'prob', 'margin']"),
    "noise not an object": (lambda t, m: m.update(noise=[1, 2]), "expected the noise floor as an object"),
    "no noise entry": (_drop_meta("noise"), "expected a metadata entry 'noise'"),
    "no domain entry": (_drop_meta("domain"), "expected a metadata entry 'domain'"),
    "bad domain": (lambda t, m: m.update(domain={"lo": 1, "hi": 0}), "expected domain"),
    "bad model outputs": (lambda t, m: m.update(model_outputs="bananas"), "expected model_outputs"),
    "NaN expected": (_set("expected", float("nan")), "expected finite expected"),
    "infinite expected": (_set("expected", float("inf")), "expected finite expected"),
    "NaN sample": (_set("samples", float("nan")), "expected finite samples"),
    "sample out of domain": (_set("samples", 7.0), "expected samples in the input domain"),
    "empty": (_empty, "expected at least one sample"),
    "grid rows differ": (_short_grid, "expected a grid of the samples' shape"),
    "grid not the samples'": (_grid_not_samples, "expected the grid values to be the samples' own"),
    "seeds rows differ": (_seeds_mismatch, "expected seeds of the samples' shape"),
    "metadata without entries": (_meta_list, "expected a metadata entry"),
    "missing tensor": (lambda t, m: t.pop("psnr"), "missing ['psnr']"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_files_are_refused_on_load(vpf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           case: str) -> None:
    edit, words = CRAFTED[case]
    bad = craft(vpf, tmp_path / "bad.vpf", edit)
    with pytest.raises(FingerprintFileError, match=words.replace("[", r"\[").replace("(", r"\(")):
        Fingerprint.load(bad)
    code, text = cli(capsys, "verify", str(bad), "--target", "veriprint.zoo:digits_mlp")
    assert code == 2 and words in text
    assert len(text.strip().splitlines()) == 1, text


def test_every_sample_within_noise_is_not_intact(vpf: Path, tmp_path: Path,
                                                 digits_model: torch.nn.Module) -> None:
    """A plausible floor larger than every margin makes any answer match: INCONCLUSIVE."""
    bad = Fingerprint.load(craft(vpf, tmp_path / "wide.vpf", _noise(declared=60.0)))
    assert bad.noise.floor == 120.0

    def scrambled(x: np.ndarray) -> np.ndarray:  # a model with nothing in common with the intact one
        return np.random.default_rng(0).normal(size=(len(x), 10))

    for target in (digits_model, CallableTarget(scrambled)):
        report = verify(bad, target, spec="top1")
        assert report.verdict == "INCONCLUSIVE", report.reason
        assert "within the noise floor" in report.reason and report.exit_code == 2


def test_an_empty_fingerprint_object_is_refused(digits_fingerprint: Fingerprint,
                                                digits_model: torch.nn.Module) -> None:
    fp = digits_fingerprint
    empty = Fingerprint(fp.samples[:0], None, fp.expected[:0], fp.seeds[:0], fp.log_s[:0], fp.margin[:0],
                        fp.psnr[:0], fp.noise, fp.meta)
    for max_batch in (None, 4):
        with pytest.raises(ConfigError, match="at least one sample, got 0"):
            verify(empty, digits_model, spec="top1", max_batch=max_batch)


def test_unreadable_paths_say_what_they_are(vpf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "trunc.vpf").write_bytes(vpf.read_bytes()[:100])
    (tmp_path / "huge-header.vpf").write_bytes((2**60).to_bytes(8, "little") + b"{}")
    (tmp_path / "noise.vpf").write_bytes(os.urandom(4096))
    cases = {
        str(tmp_path): "got a directory",
        "/dev/null": "not a regular file",
        str(tmp_path / "missing.vpf"): "not found",
        str(tmp_path / "trunc.vpf"): "not a readable fingerprint file",
        str(tmp_path / "huge-header.vpf"): "not a readable fingerprint file",
        str(tmp_path / "noise.vpf"): "not a readable fingerprint file",
    }
    for path, words in cases.items():
        code, text = cli(capsys, "verify", path, "--target", "veriprint.zoo:digits_mlp")
        assert code == 2 and words in text, (path, text)
        assert len(text.strip().splitlines()) == 1, text


def test_bad_public_keys_say_what_they_are(vpf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for pubkey, words in (("", "got an empty value"), (str(tmp_path), "got a directory"),
                          ("zz", "not a hex key")):
        signed = tmp_path / "signed.vpf"
        key = tmp_path / "k"
        if not key.exists():
            assert cli(capsys, "keygen", "--out", str(key))[0] == 0
            Fingerprint.load(vpf).save(signed, key=key)
        code, text = cli(capsys, "verify", str(signed), "--target", "veriprint.zoo:digits_mlp",
                         "--pubkey", pubkey)
        assert code == 2 and words in text, (pubkey, text)


def test_bad_arguments_are_named(vpf: Path, digits_model: torch.nn.Module,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("0", "-1", "x"):
        with pytest.raises(SystemExit) as e:
            main(["verify", str(vpf), "--target", "veriprint.zoo:digits_mlp", "--max-batch", value])
        assert e.value.code == 2
        assert "expected a whole number >= 1" in capsys.readouterr().err
    for max_batch in (0, -1, True, 2.5):
        with pytest.raises(ConfigError, match="expected max_batch >= 1"):
            verify(vpf, digits_model, max_batch=max_batch)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="expected an output spec such as 'top1'"):
        verify(vpf, digits_model, spec=None)  # type: ignore[arg-type]
    code, text = cli(capsys, "verify", str(vpf), "--target", "veriprint.zoo:digits_mlp", "--timeout", "3")
    assert code == 2 and "option timeout not taken by TorchTarget" in text
    assert "option not supported" not in text


# --- reports, keys ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tampered_weights(tmp_path_factory: pytest.TempPathFactory, digits_model: torch.nn.Module) -> Path:
    import copy

    bad = copy.deepcopy(digits_model)
    with torch.no_grad():
        for p in bad.parameters():
            p.add_(0.5 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tampered") / "bad.safetensors"
    save_weights(bad, path)
    return path


def test_verdict_exit_code_does_not_depend_on_the_report(vpf: Path, tmp_path: Path, tampered_weights: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["verify", str(vpf), "--target", "veriprint.zoo:digits_mlp", "--weights", str(tampered_weights)]
    code, text = cli(capsys, *args, "--report", str(tmp_path / "no" / "such" / "dir" / "r.json"))
    assert code == 1 and "TAMPERED" in text and "could not write the report" in text
    code, text = cli(capsys, *args, "--report", str(tmp_path / "r.json"))
    assert code == 1 and json.loads((tmp_path / "r.json").read_text())["verdict"] == "TAMPERED"


def test_report_never_overwrites_the_fingerprint(vpf: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "fp.vpf"
    copy.write_bytes(vpf.read_bytes())
    link = tmp_path / "link.json"
    link.symlink_to(copy)
    before = copy.read_bytes()
    for report in (copy, link, tmp_path / "." / "fp.vpf"):
        code, text = cli(capsys, "verify", str(copy), "--target", "veriprint.zoo:digits_mlp",
                         "--report", str(report))
        assert code == 2 and "refusing to overwrite it" in text
    assert copy.read_bytes() == before


def test_keygen_refuses_to_overwrite_and_creates_0600(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = os.umask(0)
    try:
        assert cli(capsys, "keygen", "--out", str(tmp_path / "k"))[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    first = (tmp_path / "k").read_bytes()
    code, text = cli(capsys, "keygen", "--out", str(tmp_path / "k"))
    assert code == 2 and "already exists" in text and (tmp_path / "k").read_bytes() == first
    (tmp_path / "k").unlink()
    code, text = cli(capsys, "keygen", "--out", str(tmp_path / "k"))  # k.pub is still there
    assert code == 2 and "k.pub already exists" in text
    assert cli(capsys, "keygen", "--out", str(tmp_path / "k"), "--force")[0] == 0
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    code, text = cli(capsys, "keygen", "--out", str(tmp_path))
    assert code == 2 and "expected a file name" in text


# --- local targets: one output contract ------------------------------------------------------

def _logits(digits_model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def fn(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return digits_model(torch.from_numpy(x)).numpy().astype(np.float64)
    return fn


def _local_cases(m: torch.nn.Module) -> dict[str, tuple[Any, str]]:
    z = _logits(m)

    def top1prob(label: Callable[[np.ndarray], np.ndarray]) -> CallableTarget:
        return CallableTarget(lambda x: np.stack([label(z(x)), np.full(len(x), 0.9)], axis=1),
                              output="top1-prob")

    return {
        "complex logits": (CallableTarget(lambda x: z(x) + 1j), "complex"),
        "complex tensor": (CallableTarget(lambda x: torch.from_numpy(z(x)) * (1 + 0j)), "complex"),
        "fractional top1-prob label": (top1prob(lambda v: v.argmax(1) + 0.7), "expected integer class"),
        "negative top1-prob label": (top1prob(lambda v: -np.ones(len(v))), "expected class indices"),
        "out-of-range top1-prob label": (top1prob(lambda v: np.full(len(v), 10)), "in [0, 9]"),
        "bool labels": (CallableTarget(lambda x: z(x).argmax(1) > 4, output="labels"), "booleans"),
        "duplicate top-k": (CallableTarget(lambda x: np.repeat(z(x).argmax(1)[:, None], 3, 1), output="topk"),
                            "distinct top-k labels"),
        "probs not summing to 1": (CallableTarget(lambda x: np.full((len(x), 10), 0.5), output="probs"),
                                   "summing to 1"),
        "tuple output": (CallableTarget(lambda x: (z(x), z(x))), "expected outputs for"),
        "dict output": (CallableTarget(lambda x: {"logits": z(x)}), "objects"),
        "ragged output": (CallableTarget(lambda x: [[1.0] * 10, [1.0]] * (len(x) // 2)), "rectangular"),
        "extra rows": (CallableTarget(lambda x: np.concatenate([z(x), z(x)])), "expected outputs for"),
        "too large for float32": (CallableTarget(lambda x: z(x) * 1e300), "float32 range"),
        "bool factory tensor": (CallableTarget(lambda x: torch.from_numpy(z(x)) > 0), "booleans"),
        "bools among floats": (CallableTarget(lambda x: [[True, *r[1:]] for r in z(x).tolist()]), "booleans"),
        "complex among floats": (CallableTarget(lambda x: [[complex(r[0]), *r[1:]] for r in z(x).tolist()]),
                                 "complex"),
    }


def test_local_targets_are_held_to_the_contract(digits_model: torch.nn.Module,
                                                digits_fingerprint: Fingerprint) -> None:
    for case, (target, words) in _local_cases(digits_model).items():
        spec = "top1"
        report = verify(digits_fingerprint, target, spec=spec)
        assert report.verdict == "INCONCLUSIVE", (case, report.verdict, report.reason)
        assert words in report.reason, (case, report.reason)
        assert "\n" not in report.reason


def test_a_well_formed_local_answer_still_gives_intact(digits_model: torch.nn.Module,
                                                       digits_fingerprint: Fingerprint) -> None:
    z = _logits(digits_model)
    for target in (CallableTarget(z), CallableTarget(lambda x: torch.from_numpy(z(x))),
                   CallableTarget(lambda x: z(x).argmax(1).astype(np.float64), output="labels"),
                   CallableTarget(lambda x: np.argsort(-z(x), axis=1)[:, :3], output="topk")):
        report = verify(digits_fingerprint, target, spec="top1")
        assert report.verdict == "INTACT", report.reason


def test_bad_model_factories_are_inconclusive(vpf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "factories.py").write_text(
        "import torch\n"
        "def raises():\n    raise RuntimeError('no GPU here')\n"
        "def not_a_module():\n    return 42\n"
        "class Tuple(torch.nn.Module):\n"
        "    def forward(self, x):\n        return (x.flatten(1)[:, :10], x)\n"
        "def tuple_model():\n    return Tuple()\n"
        "class Nan(torch.nn.Module):\n"
        "    def forward(self, x):\n        return x.flatten(1)[:, :10] * float('nan')\n"
        "def nan_model():\n    return Nan()\n"
    )
    for name, words in (("raises", "no GPU here"), ("not_a_module", "not nn.Module"), ("tuple_model", "tensor"),
                        ("nan_model", "NaN")):
        code, text = cli(capsys, "verify", str(vpf), "--target", f"{tmp_path / 'factories.py'}:{name}")
        assert code == 2 and "INCONCLUSIVE" in text and words in text, (name, text)


# --- misbehaving servers ---------------------------------------------------------------------

class RawServer:
    """A TCP server on 127.0.0.1 running ``script(conn, stop)`` for each connection.

    It stops by itself after ``lifetime`` seconds, and at once when closed.
    """

    def __init__(self, script: Callable[[socket.socket, threading.Event], None], lifetime: float = 30) -> None:
        self.script = script
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.deadline = time.monotonic() + lifetime
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
        self.stop.set()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                self.script(conn, self.stop)
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def start(script: Callable[[socket.socket, threading.Event], None]) -> RawServer:
        servers.append(RawServer(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def trickle(data: bytes, every: float = 0.2) -> Callable[[socket.socket, threading.Event], None]:
    def script(conn: socket.socket, stop: threading.Event) -> None:
        read_request(conn)
        for i in range(len(data)):
            if stop.wait(every):
                return
            conn.sendall(data[i:i + 1])
        stop.wait(30)
    return script


def reply(head: bytes, body: bytes, *, close_early: bool = False) -> Callable[[socket.socket, threading.Event], None]:
    def script(conn: socket.socket, stop: threading.Event) -> None:
        read_request(conn)
        conn.sendall(head + body)
        if not close_early:
            stop.wait(30)
    return script


def silent(conn: socket.socket, stop: threading.Event) -> None:
    stop.wait(30)


OIP = "/v2/models/m"
FOREVER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"X-Slow: " + b"a" * 10_000
SLOW_BODY = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
             + b"[" * 100_000)
SLOW_CHUNKS = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"1\r\n[\r\n" * 10_000)


@pytest.mark.parametrize("case", ["slow headers", "slow body", "slow chunks", "silent", "silent TLS"])
def test_timeout_bounds_the_whole_request(vpf: Path, raw_server: Callable[..., RawServer], case: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    script = {"slow headers": trickle(FOREVER), "slow body": trickle(SLOW_BODY),
              "slow chunks": trickle(SLOW_CHUNKS), "silent": silent, "silent TLS": silent}[case]
    server = raw_server(script)
    scheme = "https" if case == "silent TLS" else "http"
    start = time.monotonic()
    code, text = cli(capsys, "verify", str(vpf), "--target", f"{scheme}://127.0.0.1:{server.port}{OIP}",
                     "--input-name", "input", "--timeout", "1", "--retries", "0")
    took = time.monotonic() - start
    assert code == 2 and "INCONCLUSIVE" in text and "within the 1 s timeout" in text, text
    assert took < 4, f"{case}: the check took {took:.1f} s with --timeout 1"


@pytest.mark.parametrize("transport", ["torchserve", "tfserving"])
def test_timeout_bounds_every_rest_transport(digits_fingerprint: Fingerprint, transport: str,
                                             raw_server: Callable[..., RawServer]) -> None:
    server = raw_server(trickle(FOREVER))
    url = {"torchserve": f"torchserve+http://127.0.0.1:{server.port}/predictions/m",
           "tfserving": f"tfserving+http://127.0.0.1:{server.port}/v1/models/m"}[transport]
    start = time.monotonic()
    report = verify(digits_fingerprint, url, spec="top1", timeout=1, retries=0)
    assert report.verdict == "INCONCLUSIVE" and "within the 1 s timeout" in report.reason
    assert time.monotonic() - start < 4


def test_timeout_bounds_grpc(digits_fingerprint: Fingerprint) -> None:
    import grpc  # installed with tritonclient[grpc] (the grpc extra, in dev)
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    stop = threading.Event()

    class Slow(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        def ModelMetadata(self, request: Any, context: Any) -> Any:
            return service_pb2.ModelMetadataResponse(
                name="m", inputs=[service_pb2.ModelMetadataResponse.TensorMetadata(name="input")])

        def ModelInfer(self, request: Any, context: Any) -> Any:
            stop.wait(10)
            return service_pb2.ModelInferResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Slow(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        start = time.monotonic()
        report = verify(digits_fingerprint, f"grpc://127.0.0.1:{port}/m", spec="top1", timeout=1, retries=0)
        took = time.monotonic() - start
    finally:
        stop.set()
        server.stop(0)
    assert report.verdict == "INCONCLUSIVE" and "within the 1 s timeout" in report.reason, report.reason
    assert took < 4


def _oip_ok(n: int = 8) -> bytes:
    return json.dumps({"outputs": [{"name": "logits", "datatype": "FP32", "shape": [n, 10],
                                    "data": [0.0] * (n * 10)}]}).encode()


def _head(length: int | str, status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode()


def test_short_bodies_and_odd_lengths_are_refused(digits_fingerprint: Fingerprint,
                                                  raw_server: Callable[..., RawServer]) -> None:
    body = _oip_ok()
    cases = {
        "short body": (reply(_head(len(body) + 50), body, close_early=True), "the server sent"),
        "huge announced": (reply(_head(10**12), b"{}", close_early=True), "the server announced"),
        "two lengths": (reply(_head(f"{len(body)}, 7"), body, close_early=True), "Content-Length of digits"),
        "garbage status line": (reply(b"HELLO\r\n\r\n", b"", close_early=True), "request failed"),
        "deep JSON": (reply(_head(200_000), b"[" * 100_000 + b"]" * 100_000, close_early=True),
                      "nested too deeply"),
        "NaN literal": (reply(_head(len(body.replace(b"0.0", b"NaN"))), body.replace(b"0.0", b"NaN"),
                              close_early=True), "NaN"),
    }
    for case, (script, words) in cases.items():
        server = raw_server(script)
        report = verify(digits_fingerprint, f"http://127.0.0.1:{server.port}{OIP}", spec="top1",
                        input_name="input", timeout=3, retries=0)
        assert report.verdict == "INCONCLUSIVE", (case, report.reason)
        assert words in report.reason, (case, report.reason)


def echo_auth(conn: socket.socket, stop: threading.Event) -> None:
    _, headers, _ = read_request(conn)
    page = f"<html><h1>401</h1><pre>Authorization: {headers.get('authorization')}</pre></html>".encode()
    conn.sendall(_head(len(page), "401 Unauthorized") + page)


def test_a_page_echoing_the_token_never_reaches_output(vpf: Path, tmp_path: Path,
                                                       raw_server: Callable[..., RawServer],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VP_TOKEN", f"Bearer {SECRET}")
    server = raw_server(echo_auth)
    report = tmp_path / "report.json"
    code, text = cli(capsys, "-v", "verify", str(vpf), "--target", f"http://127.0.0.1:{server.port}{OIP}",
                     "--input-name", "input", "--auth-env", "VP_TOKEN", "--retries", "0",
                     "--report", str(report))
    assert code == 2 and "HTTP 401" in text and "Authorization: ***" in text, text
    assert SECRET not in text and SECRET not in report.read_text()


@pytest.mark.parametrize("url", [
    "http://admin:{s}@127.0.0.1:9/v2/models/m",
    "https://{s}@127.0.0.1:9/v2/models/m",
    "torchserve+http://admin:{s}@127.0.0.1:9/predictions/m",
    "tfserving+http://admin:{s}@127.0.0.1:9/v1/models/m",
    "grpc://admin:{s}@127.0.0.1:9/m",
])
def test_credentials_in_urls_are_refused_and_never_echoed(vpf: Path, tmp_path: Path, url: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    url = url.format(s=SECRET)
    with pytest.raises(ConfigError, match="without credentials"):
        open_target(url)
    report = tmp_path / "report.json"
    code, text = cli(capsys, "verify", str(vpf), "--target", url, "--report", str(report))
    assert code == 2 and "--auth-env" in text and "***@127.0.0.1" in text, text
    assert SECRET not in text and SECRET not in report.read_text()


def test_every_error_is_a_veriprint_error() -> None:
    from veriprint.models import ModelError
    from veriprint.targets import TargetError

    for cls in (FingerprintFileError, TargetError, ConfigError, ModelError):
        assert issubclass(cls, VeriprintError)


def test_query_string_secrets_in_urls_are_masked(vpf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = cli(capsys, "verify", str(vpf), "--target", f"http://127.0.0.1:9/v2/models/m?token={SECRET}")
    assert code == 2 and "token=***" in text and SECRET not in text, text


class _Cast(torch.nn.Module):
    """A model whose answers are the intact ones cast to another dtype."""

    def __init__(self, inner: torch.nn.Module, how: str) -> None:
        super().__init__()
        self.inner, self.how = inner, how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inner(x)
        return z > z.mean(dim=1, keepdim=True) if self.how == "bool" else z.to(torch.complex64)


@pytest.mark.parametrize("how", ["bool", "complex"])
def test_a_local_model_answering_booleans_or_complex_numbers_is_inconclusive(
        digits_fingerprint: Fingerprint, digits_model: torch.nn.Module, how: str) -> None:
    """Never TAMPERED (booleans read as 0/1 scores) nor INTACT (complex read as its real part)."""
    for spec in ("top1", "logits"):
        rep = verify(digits_fingerprint, _Cast(digits_model, how), spec=spec)
        assert rep.verdict == "INCONCLUSIVE" and "expected numbers" in rep.reason, rep.reason
        assert ("booleans" if how == "bool" else "complex") in rep.reason


def test_an_oip_answer_with_two_outputs_of_one_name_is_refused() -> None:
    from veriprint.targets import TargetError
    from veriprint.targets.oip import OipTarget

    good = {"name": "logits", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}
    other = {**good, "data": [9.0, 0.0, 0.0]}
    for output_name in (None, "logits"):
        t = OipTarget("http://127.0.0.1:9/v2/models/m", output_name=output_name)
        with pytest.raises(TargetError, match=r"distinct names.*logits more than once"):
            t._decode({"model_name": "m", "outputs": [good, other]}, "r")
        assert t._decode({"model_name": "m", "outputs": [good]}, "r").shape == (1, 3)


def test_a_rehashed_file_with_mistyped_known_metadata_is_refused(vpf: Path, tmp_path: Path) -> None:
    cases = {"num_classes": ("ten", "expected num_classes to be the expected outputs' 10 classes"),
             "input_shape": ([1, 2], "expected input_shape to be the samples' shape"),
             "selection": ("all", "expected selection to be an object")}
    for key, (value, words) in cases.items():
        bad = craft(vpf, tmp_path / f"{key}.vpf", lambda t, m, k=key, v=value: m.update({k: v}))
        with pytest.raises(FingerprintFileError, match=re.escape(words)):
            Fingerprint.load(bad)
    wrong = craft(vpf, tmp_path / "n.vpf", lambda t, m: m.update(num_classes=11))
    with pytest.raises(FingerprintFileError, match="num_classes"):
        Fingerprint.load(wrong)


def test_webhook_tokens_in_url_paths_and_mistaken_auth_headers_are_never_shown(tmp_path: Path) -> None:
    from veriprint.monitor.config import ConfigError as MonitorConfigError
    from veriprint.monitor.config import parse_config
    from veriprint.targets.transport import TransportOptions

    token = "XyZ-webhook-secret-1234"
    hook = f"https://hooks.slack.com/services/T000/B000/{token}"
    assert redact.redact_url(hook) == "https://hooks.slack.com/***"
    assert token not in redact.redact(f"posting to {hook} failed")
    (tmp_path / "fp.vpf").write_bytes(b"x")
    ep = {"name": "e", "target": "http://127.0.0.1:1/v2/models/m", "fingerprint": "fp.vpf"}
    with pytest.raises(MonitorConfigError) as e:
        parse_config({"endpoints": [ep], "alerts": [{"name": "a", "url": hook, "format": "slack"}]},
                     base=tmp_path, check_files=False)
    assert "url_env" in str(e.value) and token not in str(e.value)
    bearer = "Authorization: Bearer tok-abc-987"
    with pytest.raises(MonitorConfigError) as e:
        parse_config({"endpoints": [{**ep, "options": {"auth_header": bearer}}]}, base=tmp_path, check_files=False)
    assert "auth_header" in str(e.value) and "tok-abc-987" not in str(e.value)
    with pytest.raises(ConfigError) as e2:
        TransportOptions(auth_header=bearer)
    assert "header name" in str(e2.value) and "tok-abc-987" not in str(e2.value)
    assert TransportOptions(auth_header="X-Api-Key").auth_header == "X-Api-Key"


def test_config_files_take_every_flag_name_parsed_as_the_flag_parses_it(
        vpf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "v.toml"
    cfg.write_text('max_batch = 4\nspec = "probs"\n')
    code, text = cli(capsys, "verify", str(vpf), "--target", "veriprint.zoo:digits_mlp", "--config", str(cfg))
    assert "TypeError" not in text and "multiple values" not in text, text
    assert code in (0, 1) and "spec: probs" in text, text  # the file's spec was used
    cfg.write_text('timeout = "3s"\nretries = 0\n')  # a duration, as the flag takes it
    code, text = cli(capsys, "verify", str(vpf), "--target", "http://127.0.0.1:9/v2/models/m", "--config", str(cfg))
    assert code == 2 and "connection failed" in text and "TypeError" not in text, text
    for body, words in [('timeout = "soon"', "timeout (as --timeout): expected a duration"),
                        ("max_batch = 0", "max_batch (as --max-batch): expected a whole number >= 1"),
                        ('spec = ["top1"]', "spec (as --spec): expected a string, got list"),
                        ("retries = true", "retries (as --retries): expected a value"),
                        ('datatype = "FP64"', "datatype (as --datatype): expected one of FP32, UINT8"),
                        ("pubkey = 7", "pubkey (as --pubkey): expected a string, got int 7")]:
        cfg.write_text(body + "\n")
        code, text = cli(capsys, "verify", str(vpf), "--target", "veriprint.zoo:digits_mlp", "--config", str(cfg))
        assert code == 2 and words in text and len(text.strip().splitlines()) == 1, (body, text)


def test_a_fingerprint_setting_that_is_not_finite_is_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "f.toml"
    for body, words in [("tolerance = inf", "expected a finite number, got inf"),
                        ("tolerance = nan", "expected a finite number, got nan"),
                        ("prob_tolerance = 2.0", "FingerprintConfig.prob_tolerance"),
                        ("tolerance = 1e9", "FingerprintConfig.tolerance")]:
        cfg.write_text(body + "\n")
        # a model that does not exist: the settings are refused before it is even looked for
        code, text = cli(capsys, "fingerprint", "--model", str(tmp_path / "missing.pt"), "--data", "digits",
                         "--out", str(tmp_path / "x.vpf"), "--config", str(cfg))
        assert code == 2 and words in text and "no model" not in text, (body, text)
    assert not (tmp_path / "x.vpf").exists()


def test_a_query_string_in_a_target_url_stays_a_query_string(digits_fingerprint: Fingerprint,
                                                             digits_model: torch.nn.Module) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            paths.append(self.path)
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            x = np.asarray(req["inputs"][0]["data"], np.float32).reshape(req["inputs"][0]["shape"])
            with torch.inference_mode():
                z = digits_model(torch.from_numpy(x)).numpy()
            body = json.dumps({"model_name": "m", "outputs": [{"name": "logits", "datatype": "FP32",
                               "shape": list(z.shape), "data": z.ravel().tolist()}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v2/models/m?api_key={SECRET}"
        rep = verify(digits_fingerprint, url, spec="top1", retries=0)
    finally:
        srv.shutdown()
        srv.server_close()
    assert rep.verdict == "INTACT", rep.reason
    assert paths and all(p == f"/v2/models/m/infer?api_key={SECRET}" for p in paths), paths
    assert SECRET not in rep.target and SECRET not in json.dumps(rep.to_dict())


def test_a_monitor_target_with_a_user_name_is_refused_when_the_file_is_read(tmp_path: Path) -> None:
    from veriprint.monitor.config import ConfigError as MonitorConfigError
    from veriprint.monitor.config import parse_config

    for url in ("http://alice@127.0.0.1:1/v2/models/m", f"http://alice:{SECRET}@127.0.0.1:1/v2/models/m"):
        ep = {"name": "e", "target": url, "fingerprint": "fp.vpf"}
        with pytest.raises(MonitorConfigError, match="without credentials") as e:
            parse_config({"endpoints": [ep]}, base=tmp_path, check_files=False)
        assert "alice" not in str(e.value) and SECRET not in str(e.value)


def test_inspect_reads_a_file_with_only_the_required_metadata(vpf: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    keep = ("noise", "domain", "model_outputs")
    bare = craft(vpf, tmp_path / "bare.vpf", lambda t, m: [m.pop(k) for k in list(m) if k not in keep])
    code, text = cli(capsys, "inspect", str(bare))
    assert code == 0 and "KeyError" not in text and "error" not in text, text
    assert "classes:" in text and "label a query" in text

# --- enrollment --------------------------------------------------------------------------------

def _jitter(model: torch.nn.Module, size: float, seed: int = 0) -> CallableTarget:
    """The model's logits, each moved by +-``size`` (a fresh sign per value and call)."""
    rng = np.random.default_rng(seed)

    def answer(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            z = model(torch.from_numpy(x)).double().numpy()
        return z + rng.choice([-size, size], size=z.shape)  # type: ignore[no-any-return]

    return CallableTarget(answer)


@pytest.fixture(scope="module")
def demo_pool() -> tuple[torch.nn.Module, Fingerprint]:
    from veriprint.demo import load_shipped
    from veriprint.models import load_model

    s = load_shipped()
    return load_model(s.factory, weights=s.weights).eval(), Fingerprint.load(s.fingerprint)


def test_enrollment_inside_the_pools_tolerance_keeps_the_pools_floor(
        demo_pool: tuple[torch.nn.Module, Fingerprint]) -> None:
    """Noise the pool absorbs must not widen the enrolled floor: a label check with a logits
    enrollment catches what the pool catches."""
    import copy

    from veriprint.enrollment import enroll

    model, pool = demo_pool
    rep = enroll(pool, _jitter(model, 2e-5), spec="logits", keep=8)
    fp = rep.fingerprint
    assert (fp.noise.floor, fp.noise.logit_tolerance) == (pool.noise.floor, pool.noise.logit_tolerance)
    assert fp.meta["enrollment"]["serves"] == ["top1", "topk", "logits"], fp.meta["enrollment"]
    bad = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in bad.parameters():
            p.mul_(1 + 1e-3 * torch.randn(p.shape, generator=g))
    for spec in ("top1", "logits"):
        assert verify(fp, _jitter(model, 2e-5, seed=3), spec=spec).verdict == "INTACT"
    pool_says = verify(pool, _jitter(bad, 2e-5, seed=3), spec="top1")
    enrolled_says = verify(fp, _jitter(bad, 2e-5, seed=3), spec="top1")
    assert pool_says.verdict == "TAMPERED", pool_says.reason
    assert enrolled_says.verdict == "TAMPERED" and enrolled_says.mismatches >= pool_says.mismatches


def test_an_enrollment_whose_floor_grew_serves_only_its_spec(demo_pool: tuple[torch.nn.Module, Fingerprint],
                                                            tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from veriprint.enrollment import enroll

    model, pool = demo_pool
    rep = enroll(pool, _jitter(model, 1e-4), spec="logits", keep=8, tolerance=1e-3)
    fp = rep.fingerprint
    info = fp.meta["enrollment"]
    assert fp.noise.floor > pool.noise.floor and info["serves"] == ["logits"], info
    assert set(info["grown"]) == {"floor", "logit", "prob"}
    assert verify(fp, _jitter(model, 1e-4, seed=3), spec="logits").verdict == "INTACT"
    with pytest.raises(ConfigError, match="expected a spec this enrolled fingerprint serves"):
        verify(fp, _jitter(model, 1e-4, seed=3), spec="top1")
    fp.save(tmp_path / "enrolled.vpf")
    code, text = cli(capsys, "verify", str(tmp_path / "enrolled.vpf"), "--target", "veriprint.zoo:fashion_cnn",
                     "--spec", "top1")
    assert code == 2 and "margin floor from 0.0001 to" in text and "--spec logits" in text, text
    assert len(text.strip().splitlines()) == 1


def test_keep_too_small_for_a_pair_is_named(demo_pool: tuple[torch.nn.Module, Fingerprint]) -> None:
    from veriprint.enrollment import EnrollmentError, enroll

    model, pool = demo_pool
    with pytest.raises(EnrollmentError, match=r"keep 1 cannot hold a twin pair .* keep 2 or more"):
        enroll(pool, model, spec="top1", keep=1)
    assert enroll(pool, model, spec="top1", keep=2).kept_pairs == 1


def test_a_json_answer_naming_a_key_twice_is_refused() -> None:
    from veriprint.targets import TargetError
    from veriprint.targets.http import parse_json

    with pytest.raises(TargetError, match="name each key once"):
        parse_json(b'{"outputs": [], "outputs": [{"name": "logits"}]}', "t")
    assert parse_json(b'{"a": {"b": 1}, "c": 2}', "t") == {"a": {"b": 1}, "c": 2}


def test_credentials_written_in_any_text_are_masked_without_being_remembered() -> None:
    assert redact.redact("Authorization: Bearer abc.def-123 was refused") == "Authorization: *** was refused"
    assert redact.redact("sent Bearer eyJhbGciOi") == "sent Bearer ***"
    assert redact.redact("X-Api-Key: k3y") == "X-Api-Key: ***"
    assert redact.redact("Basic dXNlcjpwYXNz") == "Basic ***"
    assert redact.redact("Basic auth is off; the token basic") == "Basic auth is off; the token basic"
