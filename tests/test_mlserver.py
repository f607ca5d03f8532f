"""A real Seldon MLServer on 127.0.0.1 serving ONNX exports of a trained model.

The server runs from .venv-serving (scripts/setup-serving.sh); without it these tests skip,
except in CI (CI=true) where they fail.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from veriprint.data import Dataset, InputDomain, load_data
from veriprint.onnx_import import export_onnx
from veriprint.targets import OnnxTarget, QueryBatch, TargetError, TorchTarget, open_target
from veriprint.targets.decoys import DecoyTarget
from veriprint.targets.oip import OipTarget
from veriprint.train import TrainConfig, train_
from veriprint.zoo import digits_mlp

sys.path.insert(0, str(Path(__file__).parent))
from servers.mlserver import MLServer, ServedModel, require_mlserver

pytestmark = pytest.mark.slow  # one server start and a short training run (~20 s)


class FromGrid(nn.Module):
    """Takes 8-bit grid values (uint8) and maps them onto the model's float domain in-graph."""

    def __init__(self, model: nn.Module, domain: InputDomain) -> None:
        super().__init__()
        self.model, self.domain = model, domain

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        d = self.domain
        assert d.levels is not None
        return self.model(g.float() / d.levels * (d.hi - d.lo) + d.lo)


class WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=-1)


def tampered_copy(model: nn.Module) -> nn.Module:
    """One last-layer weight moved by 0.05: a small, targeted change."""
    import copy

    bad = copy.deepcopy(model)
    last = [m for m in bad.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight[3, 7] += 0.05
    return bad


@dataclass
class Served:
    server: MLServer
    model: nn.Module
    tampered: nn.Module
    onnx: dict[str, Path]
    test: Dataset


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_mlserver()
    torch.manual_seed(0)
    train = load_data("digits", split="train")
    model = train_(digits_mlp(), train, TrainConfig(epochs=3, seed=0), progress=False)
    tampered = tampered_copy(model)
    test = load_data("digits", split="test")
    d = tmp_path_factory.mktemp("mlserver")
    x = test.x[:2]
    grid = test.domain.to_grid(x).to(torch.uint8)
    onnx = {
        "digits": export_onnx(model, x, d / "digits.onnx"),
        "digits-u8": export_onnx(FromGrid(model, test.domain), grid, d / "digits-u8.onnx"),
        "digits-probs": export_onnx(WithSoftmax(model), x, d / "digits-probs.onnx"),
        "digits-tampered": export_onnx(tampered, x, d / "digits-tampered.onnx"),
    }
    server = MLServer(d / "repo", [ServedModel(n, p) for n, p in onnx.items()])
    server.start()
    try:
        yield Served(server, model, tampered, onnx, test)
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
