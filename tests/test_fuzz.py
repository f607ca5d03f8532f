"""Fuzzing the readers of untrusted bytes: the ``.vpf`` reader, the servers' answers and the
settings files (the monitor's TOML, ``verify`` and ``enroll`` ``--config``).

Each property says the same thing: whatever comes in, the reader either returns something
that satisfies its contract or raises the project's own error naming what was wrong;
never another exception, never a value that breaks the contract. The runs are seeded
(``derandomize``) and bounded; the ``slow`` variants try ten times as many inputs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
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

from testkit.servers.raw_http import read_request
from veriprint.fingerprint import Fingerprint
from veriprint.fingerprint.fileformat import FingerprintFileError, read_file, write_file
from veriprint.targets import QueryBatch, TargetError
from veriprint.targets.contract import check_output
from veriprint.targets.http import HttpClient, HttpOptions, parse_json
from veriprint.targets.oip import OipTarget
from veriprint.targets.tfserving import TfServingTarget
from veriprint.targets.torchserve import TorchServeTarget

FAST, SLOW = 150, 1500
#: Settings files run a whole command each (a fingerprint loaded, a database opened).
FAST_FILES, SLOW_FILES = 40, 400
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


# --- settings files: the monitor's TOML, verify's and enroll's --config ------------------------

SECRET = "s3cr3tT0kenFuzzDoNotPrint"
#: Values that carry a secret where a credential would sit, and ordinary ones of every TOML kind.
secret_values = st.sampled_from([
    f"Bearer {SECRET}", f"Authorization: Bearer {SECRET}", f"X-Api-Key: {SECRET}",
    f"http://admin:{SECRET}@127.0.0.1:9/v2/models/m", f"http://{SECRET}@127.0.0.1:9/v2/models/m",
    f"http://127.0.0.1:9/v2/models/m?api_key={SECRET}", f"https://hooks.slack.com/services/T0/B0/{SECRET}",
    f"postgresql://u:{SECRET}@db/x",
])
toml_scalars = (st.integers(-3, 10**6) | st.floats(allow_nan=True, allow_infinity=True) | st.booleans()
                | st.sampled_from(["", "3s", "1h", "0", "-1", "top1", "logits", "probs:2", "x y", "inf", "FP32",
                                   "labels", "Authorization", "127.0.0.1:0", "sqlite:///:memory:", "json", "slack",
                                   "http://127.0.0.1:9/hook", "digits", "refuse", "wrap", "1,0", "fp.vpf"])
                | st.text(max_size=12) | secret_values)
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(["a", "timeout", "name"]), inner, max_size=2),
                           max_leaves=4)


def _toml(value: Any) -> str:
    """``value`` as a TOML value (inline tables and arrays for dicts and lists)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else "inf" if value == float("inf") else "-inf" if value == -float("inf") \
            else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


def _document(tables: dict[str, Any]) -> str:
    """A TOML file of ``{"table": {...}}`` (``""``: top level; ``"x[]"``: an array of tables)."""
    lines = [f"{json.dumps(k)} = {_toml(v)}" for k, v in tables.get("", {}).items()]
    for name, body in tables.items():
        if not name:
            continue
        lines.append(f"[[{name[:-2]}]]" if name.endswith("[]") else f"[{name}]")
        lines += [f"{json.dumps(k)} = {_toml(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def _ends_well(code: int, text: str) -> None:
    """A command's end: an exit code, no traceback, no Python error leaking out, no secret,
    and an error (if any) said on one line naming what was expected."""
    assert code in (0, 1, 2), (code, text)
    assert "Traceback" not in text, text
    assert SECRET not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    for line in errors:
        assert not re.match(r"error: (TypeError|KeyError|AttributeError|ValueError|IndexError|OverflowError|"
                            r"RecursionError|AssertionError|NameError|UnboundLocalError)\b", line), line
    assert len(errors) <= 1, text  # one error, said on one line
    if code == 2 and not text.startswith("verdict"):
        assert errors, text


def _run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    from veriprint import redact
    from veriprint.cli.main import main

    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refusing a value a settings file set: not the one path
        code = 99
        assert False, f"argparse exited ({e.code}): {capsys.readouterr()}"  # noqa: B011
    finally:
        redact.forget_all()
        monitor_log = logging.getLogger("veriprint.monitor")  # its handler holds this run's stderr
        for h in list(monitor_log.handlers):
            monitor_log.removeHandler(h)
        monitor_log.propagate = True
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture(scope="module")
def settings_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from veriprint.demo import load_shipped

    d = tmp_path_factory.mktemp("settings")
    (d / "fp.vpf").write_bytes(Path(load_shipped().fingerprint).read_bytes())
    return d


MONITOR_KEYS = {
    "monitor": ["database", "database_env", "listen", "concurrency", "public_url", "refresh", "secret", "x"],
    "defaults": ["interval", "spec", "options", "jitter", "name", "target"],
    "alerts[]": ["name", "format", "url", "url_env", "auth_env", "timeout", "attempts", "backoff", "y"],
    "endpoints[]": ["name", "target", "fingerprint", "pubkey", "spec", "interval", "jitter", "check_timeout",
                    "max_batch", "pairs_per_check", "requests_per_check", "on_pool_exhausted", "queries_per_day",
                    "false_mismatch_rate", "alpha", "secret", "options", "decoys", "fresh", "z"],
    "endpoints.options": ["timeout", "retries", "backoff", "auth_env", "auth_header", "verify_tls", "ca_file",
                          "output", "datatype", "max_batch", "classes", "input_name", "w"],
}


def _monitor_base(d: Path) -> dict[str, dict[str, Any]]:
    return {"monitor": {"database": f"sqlite:///{d / 'fuzz.db'}", "listen": "127.0.0.1:0"},
            "alerts[]": {"name": "hook", "url": "http://127.0.0.1:9/hook"},
            "endpoints[]": {"name": "cnn", "target": "http://127.0.0.1:9/v2/models/m", "fingerprint": "fp.vpf"},
            "endpoints.options": {"retries": 0}}


def _check_monitor_file(settings_dir: Path, capsys: pytest.CaptureFixture[str], data: st.DataObject) -> None:
    doc = _monitor_base(settings_dir)
    for _ in range(data.draw(st.integers(1, 3))):
        table = data.draw(st.sampled_from(sorted(MONITOR_KEYS)))
        key = data.draw(st.sampled_from(MONITOR_KEYS[table]))
        doc.setdefault(table, {})[key] = data.draw(toml_values)
    path = settings_dir / "monitor.toml"
    path.write_text(_document(doc))
    code, text = _run_cli(capsys, ["monitor", "--config", str(path), "--check-config"])
    _ends_well(code, text)
    assert code in (0, 2) and (code == 0) == (": ok" in text) and (code == 2) == bool(
        [line for line in text.splitlines() if line.startswith("error:")]), text


@given(data=st.data())
@_settings(FAST_FILES)
def test_monitor_files_end_in_one_line_or_ok(settings_dir: Path, capsys: pytest.CaptureFixture[str],
                                            data: st.DataObject) -> None:
    _check_monitor_file(settings_dir, capsys, data)


@pytest.mark.slow
@given(data=st.data())
@_settings(SLOW_FILES)
def test_monitor_files_end_in_one_line_or_ok_long(settings_dir: Path, capsys: pytest.CaptureFixture[str],
                                                 data: st.DataObject) -> None:
    _check_monitor_file(settings_dir, capsys, data)


COMMAND_KEYS = {
    "verify": ["spec", "max_batch", "pubkey", "timeout", "retries", "backoff", "retry_timeouts", "verify_tls",
               "ca_file", "auth_env", "auth_header", "max_response_bytes", "output", "input_name", "output_name",
               "datatype", "insecure", "decoys", "decoy_seed", "report", "weights", "keep", "fingerprint", "q"],
    "enroll": ["spec", "max_batch", "pubkey", "timeout", "auth_header", "auth_env", "keep", "rounds", "batch_sizes",
               "tolerance", "prob_tolerance", "seed", "key", "model", "report", "output", "interval", "pool", "q"],
}


def _check_command_file(settings_dir: Path, capsys: pytest.CaptureFixture[str], command: str,
                        data: st.DataObject) -> None:
    keys = COMMAND_KEYS[command]
    values = {data.draw(st.sampled_from(keys)): data.draw(toml_values) for _ in range(data.draw(st.integers(1, 3)))}
    path = settings_dir / f"{command}.toml"
    path.write_text(_document({"": values}))
    fixed = ["--target", "http://127.0.0.1:9/v2/models/m", "--input-name", "x", "--retries", "0", "--timeout", "1",
             "--backoff", "0", "--config", str(path)]
    argv = [command, str(settings_dir / "fp.vpf"), *fixed]
    if command == "enroll":
        argv += ["--out", str(settings_dir / "enrolled.vpf"), "--interval", "0", "--rounds", "2"]
    with contextlib.chdir(settings_dir):  # a report named by the file lands here
        code, text = _run_cli(capsys, argv)
    _ends_well(code, text)
    assert code != 1, text  # nothing answers: never TAMPERED


@pytest.mark.parametrize("command", sorted(COMMAND_KEYS))
@given(data=st.data())
@_settings(FAST_FILES)
def test_command_settings_files_end_in_one_line_or_a_verdict(settings_dir: Path, capsys: pytest.CaptureFixture[str],
                                                            command: str, data: st.DataObject) -> None:
    _check_command_file(settings_dir, capsys, command, data)


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMAND_KEYS))
@given(data=st.data())
@_settings(SLOW_FILES)
def test_command_settings_files_end_in_one_line_or_a_verdict_long(settings_dir: Path,
                                                                 capsys: pytest.CaptureFixture[str], command: str,
                                                                 data: st.DataObject) -> None:
    _check_command_file(settings_dir, capsys, command, data)
