"""Enrollment against a real MLServer on 127.0.0.1 serving ONNX exports through onnxruntime.

The served model is the shipped demo CNN (no training here) and a copy with its weights
moved by 1%; the pool is the shipped demo fingerprint. One server for the module.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from veriprint.cli.main import main
from veriprint.demo import load_shipped
from veriprint.enrollment import EnrollmentError, enroll
from veriprint.fingerprint import Fingerprint
from veriprint.models import load_model
from veriprint.models.onnx_export import export_onnx
from veriprint.verification.verify import verify

sys.path.insert(0, str(Path(__file__).parent))
from test_enroll import noised
from testkit.servers.mlserver import MLServer, ServedModel, require_mlserver

pytestmark = pytest.mark.slow  # one server start (~10 s)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MLServer, torch.nn.Module, Path]]:
    require_mlserver()
    s = load_shipped()
    model = load_model(s.factory, weights=s.weights)
    d = tmp_path_factory.mktemp("enroll-onnx")
    x = Fingerprint.load(s.fingerprint).samples[:2]
    files = {"cnn": export_onnx(model, x, d / "cnn.onnx"),
             "cnn-tampered": export_onnx(noised(model, 0.01), x, d / "cnn-tampered.onnx")}
    srv = MLServer(tmp_path_factory.mktemp("enroll-mlserver"), [ServedModel(n, p) for n, p in files.items()])
    srv.start()
    try:
        yield srv, model, s.fingerprint
    finally:
        code = srv.stop()
    assert code in (0, -15), f"MLServer did not stop cleanly (exit {code}):\n{srv.tail()}"


def test_enroll_the_served_model_then_verify(server: tuple[MLServer, torch.nn.Module, Path],
                                             tmp_path: Path) -> None:
    srv, model, pool_path = server
    pool = Fingerprint.load(pool_path)
    for spec in ("top1", "probs"):
        rep = enroll(pool, srv.url("cnn"), spec=spec, model=model if spec == "top1" else None, rounds=4,
                     classes=10)
        assert (rep.kept, rep.kept_pairs) == (8, 4), rep.summary()
        assert rep.noise["logit"] < 1e-4, rep.noise  # onnxruntime on one thread: float32 noise only
        for mb in (None, 1, 3, 5):
            r = verify(rep.fingerprint, srv.url("cnn"), spec=spec, max_batch=mb)
            assert r.verdict == "INTACT" and r.compared == 8, r.reason
        assert verify(rep.fingerprint, srv.url("cnn-tampered"), spec=spec).verdict == "TAMPERED"
    with pytest.raises(EnrollmentError, match="it may not serve this model"):
        enroll(pool, srv.url("cnn-tampered"), spec="top1", rounds=2)
    out = tmp_path / "enrolled.vpf"
    assert main(["enroll", str(pool_path), "--target", srv.url("cnn"), "--target", srv.url("cnn"),
                 "--spec", "top1", "--rounds", "3", "--max-batch", "4", "--out", str(out)]) == 0
    assert Fingerprint.load(out).meta["enrollment"]["replicas"] == 2
    assert main(["verify", str(out), "--target", srv.url("cnn")]) == 0
    assert main(["verify", str(out), "--target", srv.url("cnn-tampered")]) == 1
