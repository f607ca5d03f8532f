"""A real TorchServe on 127.0.0.1 serving the digits model through an onnxruntime handler.

The server runs from .venv-serving (scripts/setup-serving.sh); without it these tests skip,
except in CI (CI=true) where they fail.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from veriprint.targets import OnnxTarget, QueryBatch, TargetError, open_target
from veriprint.targets.torchserve import TorchServeTarget
from veriprint.verification.verify import verify

sys.path.insert(0, str(Path(__file__).parent))
from testkit.servers.digits import digits_fingerprint, digits_models
from testkit.servers.torchserve import TorchServe, TsModel, require_torchserve

pytestmark = pytest.mark.slow  # a JVM and one Python worker per model (~15 s to start)


@pytest.fixture(scope="module")
def ts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    require_torchserve()
    m = digits_models()
    names = ("digits", "digits-u8", "digits-tampered")
    server = TorchServe(tmp_path_factory.mktemp("torchserve"), [TsModel(n, m.onnx[n]) for n in names])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def queries(n: int = 20) -> QueryBatch:
    test = digits_models().test
    x = test.x[:n]
    return QueryBatch(x.numpy(), test.domain.to_grid(x).numpy())


def test_answers_equal_local_onnxruntime(ts: TorchServe) -> None:
    q = queries()
    local = OnnxTarget(digits_models().onnx["digits"]).query(q)
    t = open_target(ts.url("digits"), classes=10, max_batch=8)
    assert isinstance(t, TorchServeTarget)
    np.testing.assert_allclose(t.query(q), local, rtol=0, atol=1e-6)
    assert (t.requests_sent, t.samples_sent) == (3, 20)
    one = TorchServeTarget(ts.url("digits"), per_request="sample", classes=10)
    np.testing.assert_allclose(one.query(queries(5)), local[:5], rtol=0, atol=1e-6)
    assert one.requests_sent == 5
    u8 = TorchServeTarget(ts.url("digits-u8"), datatype="UINT8").query(q)
    np.testing.assert_allclose(u8, local, rtol=0, atol=1e-4)


def test_verify_through_torchserve(ts: TorchServe) -> None:
    fp = digits_fingerprint()
    for spec in ("top1", "probs"):
        assert verify(fp, ts.url("digits"), spec=spec).verdict == "INTACT"
        r = verify(fp, ts.url("digits-tampered"), spec=spec)
        assert r.verdict == "TAMPERED" and r.exit_code == 1, r.reason
    r = verify(fp, ts.url("no-such-model"), spec="top1", retries=0)
    assert r.verdict == "INCONCLUSIVE" and "HTTP 404" in r.reason, r.reason


def test_handler_errors_are_target_errors(ts: TorchServe) -> None:
    wrong_shape = QueryBatch(np.zeros((3, 1, 4, 4), np.float32))  # the graph wants 8x8 images
    with pytest.raises(TargetError, match=r"expected HTTP 200, server answered HTTP (400|500|503)"):
        TorchServeTarget(ts.url("digits"), retries=0).query(wrong_shape)
