"""Verification: no false alarms on intact models, tampering caught, bad targets never INTACT."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from veriprint.fingerprint import Fingerprint
from veriprint.targets import CallableTarget, OnnxTarget, TorchTarget
from veriprint.verification.verify import verify

SPECS = ["top1", "topk:3", "probs", "probs:2", "top1-prob:2", "logits"]


def _edited(model: torch.nn.Module, fn) -> torch.nn.Module:  # type: ignore[no-untyped-def]
    m = copy.deepcopy(model)
    with torch.no_grad():
        fn(m)
    return m


@pytest.mark.parametrize("spec", SPECS)
def test_intact_model_is_intact_under_every_spec(digits_model, digits_fingerprint: Fingerprint, spec: str) -> None:  # type: ignore[no-untyped-def]
    for target in (TorchTarget(digits_model), TorchTarget(digits_model, max_batch=1),
                   TorchTarget(digits_model, threads=1)):
        report = verify(digits_fingerprint, target, spec=spec)
        assert report.verdict == "INTACT", report.reason
        assert report.queries == len(digits_fingerprint) and report.compared == len(digits_fingerprint)


def test_intact_after_save_load_and_through_onnxruntime(tmp_path: Path, digits_model,  # type: ignore[no-untyped-def]
                                                         digits_fingerprint: Fingerprint) -> None:
    from veriprint.models.onnx_import import export_onnx

    path = tmp_path / "fp.vpf"
    digits_fingerprint.save(path)
    onnx_path = export_onnx(digits_model, digits_fingerprint.samples[:2], tmp_path / "m.onnx")
    for spec in SPECS:
        assert verify(path, OnnxTarget(onnx_path), spec=spec).verdict == "INTACT"
        assert verify(path, OnnxTarget(onnx_path, max_batch=1, threads=1), spec=spec).verdict == "INTACT"
        assert verify(path, str(onnx_path), spec=spec).verdict == "INTACT"


def test_fingerprint_margins_clear_the_floor(digits_fingerprint: Fingerprint) -> None:
    assert (digits_fingerprint.margin > digits_fingerprint.noise.floor).all()
    assert digits_fingerprint.domain.on_grid(digits_fingerprint.samples)
    assert digits_fingerprint.noise.margin < 1e-4


def test_one_last_layer_weight_changed_by_1e3_is_tampered_under_probs(digits_model,  # type: ignore[no-untyped-def]
                                                                       digits_fingerprint: Fingerprint) -> None:
    def bump(m: torch.nn.Module) -> None:
        w = m[-1].weight
        i = int(w.abs().argmax())
        w.view(-1)[i] *= 1 + 1e-3

    report = verify(digits_fingerprint, _edited(digits_model, bump), spec="probs")
    assert report.verdict == "TAMPERED", report.reason
    assert report.exit_code == 1


@pytest.mark.slow
def test_8bit_weights_are_tampered_under_top1_on_fashion_mnist(fashion_model, fashion_data) -> None:  # type: ignore[no-untyped-def]
    from veriprint.fingerprint import FingerprintConfig, make_fingerprint
    from veriprint.pipeline.generate import GenerationConfig

    cfg = FingerprintConfig(bag=100, generation=GenerationConfig(steps=100))
    fp, _, _ = make_fingerprint(fashion_model, fashion_data[1], cfg, progress=False)

    def int8(m: torch.nn.Module) -> None:
        for p in m.parameters():
            s = p.abs().amax() / 127
            p.copy_((p / s).round() * s)

    assert verify(fp, fashion_model, spec="top1").verdict == "INTACT"
    report = verify(fp, _edited(fashion_model, int8), spec="top1")
    assert report.verdict == "TAMPERED", report.reason


def _answers(fn):  # type: ignore[no-untyped-def]
    return CallableTarget(fn, output="logits")


BAD_TARGETS = {
    "raises": (_answers(lambda x: (_ for _ in ()).throw(ConnectionError("refused"))), "ConnectionError"),
    "wrong shape": (_answers(lambda x: np.zeros((len(x), 3))), "shape"),
    "fewer outputs": (_answers(lambda x: np.zeros((len(x) - 1, 10))), "shape"),
    "NaN": (_answers(lambda x: np.full((len(x), 10), np.nan)), "NaN"),
    "not numeric": (_answers(lambda x: np.array([["a"] * 10] * len(x))), "numeric"),
    "labels out of range": (CallableTarget(lambda x: np.full(len(x), 99), output="labels"), "labels in"),
}


@pytest.mark.parametrize("case", sorted(BAD_TARGETS))
def test_bad_targets_are_inconclusive(digits_fingerprint: Fingerprint, case: str) -> None:
    target, words = BAD_TARGETS[case]
    report = verify(digits_fingerprint, target, spec="top1")
    assert report.verdict == "INCONCLUSIVE"
    assert words in report.reason
    assert report.exit_code == 2


def test_label_only_target_and_spec_mismatch(digits_model, digits_fingerprint: Fingerprint) -> None:  # type: ignore[no-untyped-def]
    labels = CallableTarget(lambda x: digits_model(torch.from_numpy(x)).argmax(1).numpy(), output="labels")
    assert verify(digits_fingerprint, labels, spec="top1").verdict == "INTACT"
    report = verify(digits_fingerprint, labels, spec="probs")
    assert report.verdict == "INCONCLUSIVE" and "needs more" in report.reason


def test_uint8_target_receives_the_exact_grid(digits_model, digits_fingerprint: Fingerprint) -> None:  # type: ignore[no-untyped-def]
    dom = digits_fingerprint.domain

    def from_grid(g: np.ndarray) -> np.ndarray:
        x = dom.from_grid(torch.from_numpy(g.astype(np.int64)))
        return digits_model(x).detach().numpy()

    report = verify(digits_fingerprint, CallableTarget(from_grid, uint8=True), spec="probs")
    assert report.verdict == "INTACT", report.reason


def test_report_serializes(digits_model, digits_fingerprint: Fingerprint) -> None:  # type: ignore[no-untyped-def]
    import json

    report = verify(digits_fingerprint, digits_model, spec="top1")
    d = json.loads(report.to_json())
    assert d["verdict"] == "INTACT" and len(d["samples"]) == len(digits_fingerprint)
    assert "INTACT" in report.summary()


def test_verify_closes_the_targets_it_opens_and_no_other(digits_model, digits_fingerprint: Fingerprint,  # type: ignore[no-untyped-def]
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import veriprint.verification.verify as v

    closed: list[str] = []

    class Recording(TorchTarget):
        def close(self) -> None:
            closed.append(self.description)

    def opener(spec, **kw):  # type: ignore[no-untyped-def]  # a URL or path: verify opens the target
        if isinstance(spec, Recording):
            return spec
        return Recording(digits_model)

    monkeypatch.setattr(v, "open_target", opener)
    assert verify(digits_fingerprint, "http://127.0.0.1:1/v2/models/m", spec="probs").verdict == "INTACT"
    assert len(closed) == 1
    mine = Recording(digits_model)
    assert verify(digits_fingerprint, mine, spec="probs").verdict == "INTACT"
    assert len(closed) == 1, "a target the caller passed in is the caller's to close"

    class Failing(Recording):
        def close(self) -> None:
            raise OSError("channel already gone")

    monkeypatch.setattr(v, "open_target", lambda spec, **kw: Failing(digits_model))
    assert verify(digits_fingerprint, "http://127.0.0.1:1/v2/models/m", spec="probs").verdict == "INTACT"
