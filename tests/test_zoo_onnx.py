"""The ONNX importer's additions for zoo models: HardSigmoid and HardSwish against
onnxruntime, weights stored as Constant nodes made parameters, and a final Softmax cut
off to give logits."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from veriprint.models.onnx_import import (
    SUPPORTED_OPS,
    OnnxImportError,
    constants_as_initializers,
    import_onnx,
    logits_before_softmax,
)


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]  # type: ignore[no-any-return]


def _one_op(op: str, opset: int, **attrs: object) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], **attrs)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 6])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize(("op", "opset", "attrs"), [
    ("HardSigmoid", 11, {}),
    ("HardSigmoid", 11, {"alpha": 0.2, "beta": 0.5}),
    ("HardSigmoid", 17, {"alpha": 1 / 6, "beta": 0.5}),
    ("HardSigmoid", 17, {"alpha": 0.7, "beta": -0.1}),
    ("HardSwish", 14, {}),
], ids=repr)
def test_hard_activations_match_onnxruntime(op: str, opset: int, attrs: dict[str, float]) -> None:
    # Values on both sides of both kinks, and exactly on them.
    x = np.concatenate([np.random.default_rng(0).uniform(-8, 8, (7, 6)),
                        [[-3.0, 3.0, -2.5, 2.5, 0.0, 1.0]]]).astype(np.float32)
    proto = _one_op(op, opset, **attrs)
    got = import_onnx(proto)(torch.from_numpy(x))
    assert op in SUPPORTED_OPS
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.detach().numpy(), _run(proto, x), rtol=1e-6, atol=1e-6)
    assert float(got.min()) <= 0.0 and (op == "HardSwish" or float(got.max()) == 1.0)  # both clamps reached


def _classifier_with_constant_weights() -> onnx.ModelProto:
    """x (N, 4) -> MatMul(W) + b -> HardSigmoid-free Mul by a scalar -> Softmax -> Identity,
    with W, b and the scalar as Constant nodes, as PaddlePaddle exports them."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)

    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))

    nodes = [
        const("fc.w", w), const("fc.b", b), const("two", np.array(2.0, dtype=np.float32)),
        helper.make_node("MatMul", ["x", "fc.w"], ["h"]),
        helper.make_node("Add", ["h", "fc.b"], ["z"]),
        helper.make_node("Mul", ["z", "two"], ["z2"]),
        helper.make_node("Softmax", ["z2"], ["p"], axis=1),
        helper.make_node("Identity", ["p"], ["probs"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def test_constant_weights_become_parameters_and_the_function_is_unchanged() -> None:
    proto = _classifier_with_constant_weights()
    x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    assert list(import_onnx(proto).parameters()) == []  # as exported: nothing to fingerprint
    rewritten = constants_as_initializers(proto)
    assert sorted(t.name for t in rewritten.graph.initializer) == ["fc.b", "fc.w"]  # the scalar stays
    assert [n.op_type for n in rewritten.graph.node].count("Constant") == 1
    assert len(proto.graph.initializer) == 0 and len(proto.graph.node) == 8  # the original is untouched
    module = import_onnx(rewritten)
    assert sum(p.numel() for p in module.parameters()) == 4 * 3 + 3
    assert isinstance(module.get_submodule("fc.w"), torch.nn.Linear)  # MatMul + Add: the last layer
    np.testing.assert_allclose(_run(rewritten, x), _run(proto, x), rtol=1e-6, atol=1e-7)
    got = module(torch.from_numpy(x))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.detach().numpy(), _run(proto, x), rtol=1e-5, atol=1e-6)
    assert len(constants_as_initializers(proto, min_size=1).graph.initializer) == 3
    with pytest.raises(ValueError, match="expected min_size >= 1, got 0"):
        constants_as_initializers(proto, min_size=0)


def test_logits_before_softmax_outputs_what_the_softmax_read() -> None:
    proto = constants_as_initializers(_classifier_with_constant_weights())
    x = np.random.default_rng(3).standard_normal((6, 4)).astype(np.float32)
    cut = logits_before_softmax(proto)
    assert [o.name for o in cut.graph.output] == ["z2"]
    assert [n.op_type for n in cut.graph.node][-1] == "Mul"
    logits = _run(cut, x)
    assert logits.shape == (6, 3)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), _run(proto, x), rtol=1e-5,
                               atol=1e-7)
    got = import_onnx(cut)(torch.from_numpy(x))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.detach().numpy(), logits, rtol=1e-5, atol=1e-5)


def test_logits_before_softmax_refuses_what_is_not_a_final_softmax() -> None:
    with pytest.raises(OnnxImportError, match="to come from a Softmax, got Relu"):
        logits_before_softmax(_one_op("Relu", 17))
    wrong_axis = _classifier_with_constant_weights()
    wrong_axis.graph.node[6].attribute[0].i = 0
    with pytest.raises(OnnxImportError, match="over the last axis, got axis=0"):
        logits_before_softmax(wrong_axis)
    shared = _classifier_with_constant_weights()  # the probabilities are also read elsewhere
    shared.graph.node.append(helper.make_node("Neg", ["p"], ["q"]))
    with pytest.raises(OnnxImportError, match="nothing but the output to read 'p'"):
        logits_before_softmax(shared)
    two = _classifier_with_constant_weights()
    two.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 3]))
    with pytest.raises(OnnxImportError, match="one output, got 2"):
        logits_before_softmax(two)


def _graph(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[str],
           inits: list[onnx.TensorProto], opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                   for o in outputs], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _both(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    module = import_onnx(proto)
    got = module(*(torch.from_numpy(feeds[n]) for n in module.input_names))
    got = got if isinstance(got, tuple) else (got,)
    return [g.detach().numpy() for g in got], expected


@pytest.mark.parametrize(("shape", "pads", "mode", "axes"), [
    ((2, 7), [0, 3, 0, 2], "reflect", None),
    ((2, 7), [0, 3, 0, 2], "edge", None),
    ((2, 7), [1, -2, 0, 3], "constant", None),  # negative: cropping
    ((2, 3, 5, 6), [0, 0, 1, 2, 0, 0, 2, 1], "reflect", None),
    ((2, 3, 5, 6), [0, 1, 2, 0, 1, 0, 0, 2], "constant", None),
    ((2, 3, 5, 6), [2, 1, 1, 2], "edge", [2, 3]),
    ((3, 8), [4, 4], "reflect", [-1]),
], ids=repr)
def test_pad_matches_onnxruntime(shape: tuple[int, ...], pads: list[int], mode: str, axes: list[int] | None) -> None:
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    inits = [numpy_helper.from_array(np.array(pads, dtype=np.int64), "pads"),
             numpy_helper.from_array(np.array(1.5, dtype=np.float32), "value")]
    inputs = ["x", "pads", "value"]
    if axes is not None:
        inits.append(numpy_helper.from_array(np.array(axes, dtype=np.int64), "axes"))
        inputs.append("axes")
    node = helper.make_node("Pad", inputs, ["y"], mode=mode)
    proto = _graph([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))], ["y"], inits, 18)
    (got,), (expected,) = _both(proto, {"x": x})
    assert "Pad" in SUPPORTED_OPS and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_pad_refuses_what_it_cannot_translate() -> None:
    x = np.zeros((1, 2, 3, 4, 5), dtype=np.float32)
    pads = numpy_helper.from_array(np.array([0, 1, 0, 0, 0, 0, 1, 0, 0, 0], dtype=np.int64), "pads")
    node = helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")
    proto = _graph([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))], ["y"], [pads], 18)
    with pytest.raises(OnnxImportError, match="reflect padding supports the last 3 axes"):
        import_onnx(proto)(torch.from_numpy(x))
    node = helper.make_node("Pad", ["x", "pads"], ["y"], mode="wrap")
    proto = _graph([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))], ["y"], [pads], 19)
    with pytest.raises(OnnxImportError, match="expected mode constant, reflect or edge, got 'wrap'"):
        import_onnx(proto)(torch.from_numpy(x))


@pytest.mark.parametrize(("starts", "ends", "axes", "steps"), [
    ([-1], [-9223372036854775807], [1], [-1]),  # the whole axis reversed, as torch exports a flip
    ([5, 0], [1, 3], [1, 0], [-2, 1]),
    ([100], [-100], [1], [-3]),  # out-of-range starts and ends are clamped
    ([2], [2], [1], [-1]),  # empty
], ids=repr)
def test_slice_with_negative_steps_matches_onnxruntime(starts: list[int], ends: list[int], axes: list[int],
                                                       steps: list[int]) -> None:
    x = np.arange(4 * 7, dtype=np.float32).reshape(4, 7)
    inits = [numpy_helper.from_array(np.array(v, dtype=np.int64), n)
             for n, v in (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps))]
    node = helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])
    proto = _graph([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 7])], ["y"], inits, 13)
    (got,), (expected,) = _both(proto, {"x": x})
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("direction", "bias", "initial"), [
    ("forward", True, True),
    ("forward", False, False),
    ("reverse", True, False),
    ("bidirectional", True, True),
], ids=repr)
def test_lstm_matches_onnxruntime(direction: str, bias: bool, initial: bool) -> None:
    rng = np.random.default_rng(5)
    dirs, steps, batch, size, hidden = 2 if direction == "bidirectional" else 1, 5, 3, 4, 6
    x = rng.standard_normal((steps, batch, size)).astype(np.float32)
    state = (dirs, batch, hidden)
    inits = [numpy_helper.from_array(rng.standard_normal((dirs, 4 * hidden, size)).astype(np.float32) * 0.5, "W"),
             numpy_helper.from_array(rng.standard_normal((dirs, 4 * hidden, hidden)).astype(np.float32) * 0.5, "R")]
    names = ["x", "W", "R", "", "", "", ""]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal((dirs, 8 * hidden)).astype(np.float32), "B"))
        names[3] = "B"
    feeds = {"x": x}
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))]
    if initial:
        for n in ("h0", "c0"):
            feeds[n] = rng.standard_normal(state).astype(np.float32)
            inputs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, list(state)))
        names[5:7] = ["h0", "c0"]
    node = helper.make_node("LSTM", names, ["y", "yh", "yc"], hidden_size=hidden, direction=direction)
    proto = _graph([node], inputs, ["y", "yh", "yc"], inits, 14)
    got, expected = _both(proto, feeds)
    assert "LSTM" in SUPPORTED_OPS
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_lstm_refuses_what_it_cannot_translate() -> None:
    w = numpy_helper.from_array(np.zeros((1, 8, 3), dtype=np.float32), "W")
    r = numpy_helper.from_array(np.zeros((1, 8, 2), dtype=np.float32), "R")
    x = torch.zeros(4, 1, 3)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 1, 3])]
    for attrs, match in (({"activations": ["Relu", "Tanh", "Tanh"]}, "expected the activations"),
                         ({"clip": 1.0}, "clip and input_forget"),
                         ({"layout": 1}, "expected layout 0"),
                         ({"direction": "bidirectional"}, "does not fit weights for 1 directions")):
        node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=2, **attrs)
        with pytest.raises(OnnxImportError, match=match):
            import_onnx(_graph([node], inputs, ["y"], [w, r], 14))(x)
