"""Fuzzing the readers of untrusted bytes: the ``.vpf`` reader and the servers' answers.

Each property says the same thing: whatever comes in, the reader either returns something
that satisfies its contract or raises the project's own error naming what was wrong;
never another exception, never a value that breaks the contract. The runs are seeded
(``derandomize``) and bounded; the ``slow`` variants try ten times as many inputs.
"""

from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servers.raw_http import read_request
from veriprint.fileformat import FingerprintFileError, read_file, write_file
from veriprint.fingerprint import Fingerprint
from veriprint.targets import QueryBatch, TargetError
from veriprint.targets.contract import check_output
from veriprint.targets.http import HttpClient, HttpOptions, parse_json
from veriprint.targets.oip import OipTarget
from veriprint.targets.tfserving import TfServingTarget
from veriprint.targets.torchserve import TorchServeTarget

FAST, SLOW = 150, 1500
FORMS = ("logits", "probs", "labels", "topk", "top1-prob")


def _settings(n: int) -> settings:
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


class Original(bytes):
    """A valid file's bytes, shown short in failure reports."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes of a valid .vpf>"


@pytest.fixture(scope="module")
def vpf_bytes(tmp_path_factory: pytest.TempPathFactory, digits_fingerprint: Fingerprint) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "fp.vpf"
    digits_fingerprint.save(path)
    return Original(path.read_bytes())


def _load_bytes(data: bytes) -> Fingerprint | None:
    """Load ``data`` as a fingerprint: the Fingerprint, or None when refused as it should be."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.vpf"
        path.write_bytes(data)
        try:
            fp = Fingerprint.load(path)
        except FingerprintFileError:
            return None
    assert torch.isfinite(fp.expected).all() and np.isfinite(fp.noise.floor)
    assert len(fp) >= 1 and fp.expected.shape[0] == len(fp)
    return fp


mutations = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6)


def _mutated(data: bytes, edits: list[tuple[float, int]], cut: float | None) -> bytes:
    buf = bytearray(data)
    for where, value in edits:
        buf[int(where * len(buf))] = value
    if cut is not None:
        buf = buf[: int(cut * len(buf))]
    return bytes(buf)


def _check_reader(vpf_bytes: bytes, edits: list[tuple[float, int]], cut: float | None) -> None:
    _load_bytes(_mutated(vpf_bytes, edits, cut))


@given(edits=mutations, cut=st.none() | st.floats(0, 1))
@_settings(FAST)
def test_vpf_reader_survives_byte_edits(vpf_bytes: bytes, edits: list[tuple[float, int]],
                                        cut: float | None) -> None:
    _check_reader(vpf_bytes, edits, cut)


@pytest.mark.slow
@given(edits=mutations, cut=st.none() | st.floats(0, 1))
@_settings(SLOW)
def test_vpf_reader_survives_byte_edits_long(vpf_bytes: bytes, edits: list[tuple[float, int]],
                                             cut: float | None) -> None:
    _check_reader(vpf_bytes, edits, cut)


json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=4))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=24)
TENSORS = ("samples", "expected", "seeds", "margin", "grid", "log_s", "psnr")
NOISE = ("logit", "prob", "margin", "safety", "declared", "declared_prob", "min_floor", "variants")


def _check_rehashed(vpf_bytes: bytes, tensor: str, value: float, noise_key: str, noise_value: Any,
                    drop: str | None) -> None:
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "src.vpf"
        src.write_bytes(vpf_bytes)
        f = read_file(src)
    tensors = {k: v.clone() for k, v in f.tensors.items()}
    meta = json.loads(json.dumps(f.meta))
    t = tensors[tensor]
    t.view(-1)[0] = value if t.dtype.is_floating_point else int(np.clip(np.nan_to_num(value), 0, 255))
    meta["noise"][noise_key] = noise_value
    if drop is not None:
        meta.pop(drop, None)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "crafted.vpf"
        write_file(out, tensors, meta)
        _load_bytes(out.read_bytes())


crafted = {"tensor": st.sampled_from(TENSORS),
           "value": st.floats(allow_nan=True, allow_infinity=True, width=32),
           "noise_key": st.sampled_from(NOISE), "noise_value": json_values,
           "drop": st.none() | st.sampled_from(("noise", "domain", "model_outputs", "labels"))}


@given(**crafted)
@_settings(FAST)
def test_vpf_reader_refuses_rehashed_nonsense(vpf_bytes: bytes, tensor: str, value: float, noise_key: str,
                                              noise_value: Any, drop: str | None) -> None:
    _check_rehashed(vpf_bytes, tensor, value, noise_key, noise_value, drop)


@pytest.mark.slow
@given(**crafted)
@_settings(SLOW)
def test_vpf_reader_refuses_rehashed_nonsense_long(vpf_bytes: bytes, tensor: str, value: float,
                                                   noise_key: str, noise_value: Any, drop: str | None) -> None:
    _check_rehashed(vpf_bytes, tensor, value, noise_key, noise_value, drop)


# --- what servers answer ---------------------------------------------------------------------

ROWS = 3
datatypes = st.sampled_from(["FP32", "FP64", "INT64", "UINT8", "BOOL", "BYTES", "FP16", "x", None])
shapes = st.lists(st.integers(-1, 12), max_size=3) | json_values
oip_tensor = st.fixed_dictionaries({"name": st.sampled_from(["logits", "y", 3]), "datatype": datatypes,
                                    "shape": shapes, "data": json_values
                                    | st.lists(st.floats(-5, 5) | st.integers(-2, 12), max_size=40)})
oip_answer = (json_values | st.fixed_dictionaries(
    {"outputs": st.lists(oip_tensor, max_size=2) | json_values},
    optional={"id": json_values, "model_name": st.sampled_from(["m", "other"]), "error": json_values}))
rows_answer = json_values | st.lists(st.lists(st.floats(-5, 5) | st.integers(-1, 12), min_size=1, max_size=12),
                                     min_size=ROWS, max_size=ROWS)
tf_answer = json_values | st.fixed_dictionaries({}, optional={"outputs": rows_answer, "predictions": rows_answer,
                                                               "error": json_values})


def _query(target: Any, answer: Any, classes: int | None) -> None:
    target._post = lambda path, payload, samples: answer
    target._prepare = lambda: None
    x = np.zeros((ROWS, 1, 2, 2), np.float32)
    try:
        out = target.query(QueryBatch(x))
        checked = check_output(out, form=target.output, rows=ROWS, classes=classes)
    except TargetError:
        return
    assert checked.shape[0] == ROWS


def _targets(form: str, classes: int | None) -> list[Any]:
    opts = {"output": form, "classes": classes}
    return [OipTarget("http://127.0.0.1:9/v2/models/m", input_name="input", **opts),
            TorchServeTarget("torchserve+http://127.0.0.1:9/predictions/m", **opts),
            TfServingTarget("tfserving+http://127.0.0.1:9/v1/models/m", **opts)]


@given(answer=oip_answer | tf_answer, form=st.sampled_from(FORMS), classes=st.none() | st.integers(1, 12))
@_settings(3 * FAST)
def test_answer_decoders_never_break_the_contract(answer: Any, form: str, classes: int | None) -> None:
    for target in _targets(form, classes):
        _query(target, answer, classes)


@pytest.mark.slow
@given(answer=oip_answer | tf_answer, form=st.sampled_from(FORMS), classes=st.none() | st.integers(1, 12))
@_settings(3 * SLOW)
def test_answer_decoders_never_break_the_contract_long(answer: Any, form: str, classes: int | None) -> None:
    for target in _targets(form, classes):
        _query(target, answer, classes)


@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
@_settings(FAST)
def test_json_bodies_parse_or_say_what_came(body: bytes) -> None:
    try:
        parse_json(body, "server")
    except TargetError as e:
        assert "expected a JSON body" in str(e)


# --- whole HTTP answers over a socket ------------------------------------------------------------

heads = st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 401 Unauthorized", b"HTTP/1.0 200 OK", b"HTTP/1.1 999 ?",
                         b"HTTP/1.1 200", b"HTTP/2 200", b"", b"\x00\xff"])
header_lines = st.lists(st.sampled_from([b"Content-Length: 10", b"Content-Length: -1", b"Content-Length: 99999",
                                         b"Transfer-Encoding: chunked", b"Content-Type: application/json",
                                         b"Content-Length: 2", b"X: " + b"y" * 300, b"bad header"]), max_size=3)


def _serve_once(payload: bytes) -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    sock.settimeout(5)

    def run() -> None:
        try:
            conn, _ = sock.accept()
            with conn:
                read_request(conn)
                conn.sendall(payload)
        except OSError:
            pass
        finally:
            sock.close()

    threading.Thread(target=run, daemon=True).start()
    return int(sock.getsockname()[1])


def _check_wire(head: bytes, lines: list[bytes], body: bytes) -> None:
    port = _serve_once(head + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body)
    client = HttpClient(f"http://127.0.0.1:{port}", HttpOptions(timeout=2, retries=0))
    with contextlib.suppress(TargetError):
        client.get_json("/v2/models/m")


@given(head=heads, lines=header_lines, body=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
@_settings(40)
def test_http_answers_off_the_wire_parse_or_say_what_came(head: bytes, lines: list[bytes], body: bytes) -> None:
    _check_wire(head, lines, body)


@pytest.mark.slow
@given(head=heads, lines=header_lines, body=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
@_settings(400)
def test_http_answers_off_the_wire_parse_or_say_what_came_long(head: bytes, lines: list[bytes], body: bytes) -> None:
    _check_wire(head, lines, body)
