"""Model loading in every supported form, its errors, and the ONNX import."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

from veriprint import zoo
from veriprint.models import ModelError, load_model, model_hash, save_weights, split_last_layer
from veriprint.models.onnx_import import SUPPORTED_OPS, OnnxImportError, export_onnx, import_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics and affine parameters, so folding is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
    return model


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return _randomize_bn(zoo.fashion_cnn()).eval()


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return zoo.digits_mlp().eval()


class _OpMix(nn.Module):
    """A model exercising the ops beyond the zoo: unfolded batch norm, dynamic reshapes,
    transposes, pools, a MatMul+Add layer, a hand-written layer norm, tanh GELU, softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.proj = nn.Parameter(torch.randn(16, 12) * 0.3)
        self.shift = nn.Parameter(torch.randn(12) * 0.1)
        self.gain = nn.Parameter(1 + 0.1 * torch.randn(12))
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        y = torch.tanh(y) + 0.5 * torch.sigmoid(y)
        y = F.avg_pool2d(y, 2)
        y = y * F.adaptive_avg_pool2d(y, 1)
        y = y.transpose(2, 3).contiguous()
        y = y.view(y.size(0), -1)[:, :16]
        y = y @ self.proj + self.shift
        mu = y.mean(-1, keepdim=True)
        var = (y - mu).pow(2).mean(-1, keepdim=True)
        y = (y - mu) / torch.sqrt(var + 1e-5) * self.gain
        y = F.gelu(y, approximate="tanh")
        y = 3 * torch.softmax(y, -1) + F.relu(y)
        return self.head(y)


def _opmix() -> nn.Module:
    torch.manual_seed(2)
    return _randomize_bn(_OpMix(), seed=2).eval()


CASES = {
    "fashion_cnn": (_cnn, (1, 28, 28)),
    "digits_mlp": (_mlp, (1, 8, 8)),
    "opmix": (_opmix, (2, 12, 12)),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path]]:
    """Each case model with its ONNX export (the op mix keeps batch norm unfolded)."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, (make, shape) in CASES.items():
        model = make()
        path = root / f"{name}.onnx"
        x = torch.randn(2, *shape)
        if name == "opmix":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                                  do_constant_folding=False, input_names=["input"],
                                  output_names=["output"],
                                  dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        else:
            export_onnx(model, x, path)
        out[name] = (model, path)
    return out


# ------------------------------------------------------------------ load_model forms


def test_module_is_copied_and_put_in_eval_mode() -> None:
    model = zoo.digits_mlp().train()
    before = model_hash(model)
    loaded = load_model(model)
    assert loaded is not model
    assert not loaded.training and all(not m.training for m in loaded.modules())
    assert all(not p.requires_grad for p in loaded.parameters())
    # The caller's module is untouched: still training, still trainable, same weights.
    assert model.training and all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        next(loaded.parameters()).add_(1.0)
    assert model_hash(model) == before != model_hash(loaded)


def test_factory_from_package() -> None:
    model = load_model("veriprint.zoo:fashion_cnn")
    assert not model.training
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_factory_from_file(tmp_path: Path) -> None:
    src = tmp_path / "my_model.py"
    src.write_text(
        "from torch import nn\n\n"
        "def build(width=5):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 3))\n"
    )
    model = load_model(f"{src}:build")
    assert model(torch.zeros(2, 4)).shape == (2, 3)
    assert not model.training


@pytest.mark.parametrize("form", ["safetensors", "pt", "pt-wrapped"])
def test_weights_are_loaded(tmp_path: Path, form: str) -> None:
    trained = _cnn()
    if form == "safetensors":
        path = tmp_path / "w.safetensors"
        save_weights(trained, path)
    else:
        path = tmp_path / "w.pt"
        state = trained.state_dict()
        torch.save({"state_dict": state} if form == "pt-wrapped" else state, path)
    model = load_model("veriprint.zoo:fashion_cnn", weights=path)
    assert model_hash(model) == model_hash(trained)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), rtol=0, atol=0)


def test_torch_export_archive_with_dynamic_batch(tmp_path: Path) -> None:
    trained = _cnn()
    x = torch.randn(3, 1, 28, 28)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(trained, (x,), dynamic_shapes=({0: batch},))
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    model = load_model(path)
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in trained.named_parameters()}
    for n in (1, 7):
        xb = torch.randn(n, 1, 28, 28)
        with torch.no_grad():
            torch.testing.assert_close(model(xb), trained(xb), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_file(tmp_path: Path) -> None:
    trained = _mlp()
    path = tmp_path / "model.ts"
    torch.jit.script(trained).save(str(path))
    model = load_model(path)
    assert isinstance(model, torch.jit.ScriptModule)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), rtol=1e-6, atol=1e-6)


def test_onnx_file(exported: dict[str, tuple[nn.Module, Path]]) -> None:
    trained, path = exported["fashion_cnn"]
    model = load_model(path)
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), rtol=1e-5, atol=1e-5)


def test_torch_weights_fit_an_onnx_import_of_the_same_mlp(
    exported: dict[str, tuple[nn.Module, Path]], tmp_path: Path
) -> None:
    # Initializer names are kept, so the torch state dict loads into the imported graph.
    trained, path = exported["digits_mlp"]
    other = zoo.digits_mlp().eval()
    save_weights(other, tmp_path / "other.safetensors")
    model = load_model(path, weights=tmp_path / "other.safetensors")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), other(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(x), trained(x), atol=1e-3)


# ------------------------------------------------------------------ load_model errors


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no model at"):
        load_model(tmp_path / "absent.pt2")


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_model("veriprint.zoo:digits_mlp", weights=tmp_path / "absent.safetensors")


def test_state_dict_without_factory(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(zoo.digits_mlp().state_dict(), path)
    with pytest.raises(ModelError, match="needs a factory"):
        load_model(path)


def test_mismatched_weights(tmp_path: Path) -> None:
    path = tmp_path / "mlp.safetensors"
    save_weights(zoo.digits_mlp(), path)
    with pytest.raises(ModelError, match="do not fit the model"):
        load_model("veriprint.zoo:fashion_cnn", weights=path)


def test_weights_that_are_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ModelError, match="expected a state dict"):
        load_model("veriprint.zoo:digits_mlp", weights=path)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("veriprint.zoo:no_such_model", "has no callable 'no_such_model'"),
        ("veriprint.no_such_module:fashion_cnn", "cannot import module"),
        (":fashion_cnn", "expected a factory"),
        ("veriprint.zoo:__doc__", "has no callable"),
    ],
)
def test_wrong_factory_string(spec: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        load_model(spec)


def test_factory_file_missing_or_returning_a_non_module(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="factory file not found"):
        load_model(f"{tmp_path / 'absent.py'}:build")
    src = tmp_path / "bad.py"
    src.write_text("def build():\n    return 42\n")
    with pytest.raises(ModelError, match=r"returned int, not nn\.Module"):
        load_model(f"{src}:build")


# ------------------------------------------------------------------ ONNX import


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_import_matches_torch_and_onnxruntime(
    exported: dict[str, tuple[nn.Module, Path]], name: str, batch: int
) -> None:
    trained, path = exported[name]
    model = import_onnx(path)
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, *CASES[name][1], generator=g)
    with torch.no_grad():
        ours = model(x)
        ref = trained(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    runtime = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert ours.shape == ref.shape == (batch, ref.shape[-1])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, runtime, rtol=1e-5, atol=1e-5)


def test_onnx_import_parameters_and_last_layer(exported: dict[str, tuple[nn.Module, Path]]) -> None:
    _, path = exported["fashion_cnn"]
    model = import_onnx(path)
    names = [n for n, _ in model.named_parameters()]
    # Batch norm is folded into the convolutions; the Gemm layers keep their torch names.
    assert {"9.weight", "9.bias", "11.weight", "11.bias"} <= set(names)
    assert len(names) == 8
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())
    assert isinstance(model.get_submodule("11"), nn.Linear)
    last = split_last_layer(model, torch.randn(3, 1, 28, 28))
    assert (last.weight, last.bias) == ("11.weight", "11.bias")
    h, z, out = last.forward(torch.randn(3, 1, 28, 28))
    assert h.shape == (3, 128) and z.shape == out.shape == (3, 10)


def test_onnx_import_keeps_unfolded_batch_norm_statistics_as_buffers(
    exported: dict[str, tuple[nn.Module, Path]],
) -> None:
    trained, path = exported["opmix"]
    model = import_onnx(path)
    buffers = dict(model.named_buffers())
    torch.testing.assert_close(buffers["bn.running_var"], trained.bn.running_var)
    assert "bn.running_var" not in dict(model.named_parameters())
    # MatMul + Add with constant operands becomes one linear layer (weight transposed).
    proj = model.get_submodule("proj")
    assert isinstance(proj, nn.Linear)
    torch.testing.assert_close(proj.weight, trained.proj.detach().t())
    torch.testing.assert_close(proj.bias, trained.shift.detach())
    assert split_last_layer(model, torch.randn(2, 2, 12, 12)).weight == "head.weight"


def test_onnx_import_supports_torch_func(exported: dict[str, tuple[nn.Module, Path]]) -> None:
    trained, path = exported["opmix"]
    model = import_onnx(path).double()
    reference = trained.double()
    x = torch.randn(3, 2, 12, 12, dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    ref_params = {k: v.detach() for k, v in reference.named_parameters()}

    def f(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    def g(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(reference, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    ref = vmap(jacrev(g), in_dims=(None, 0))(ref_params, x)
    torch.testing.assert_close(jac["head.weight"], ref["head.weight"], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(jac["conv.weight"], ref["conv.weight"], rtol=1e-6, atol=1e-9)
    # The MatMul weight is stored transposed.
    torch.testing.assert_close(jac["proj.weight"], ref["proj"].transpose(-1, -2), rtol=1e-6, atol=1e-9)
    # Swapped-in parameters really are used.
    zeroed = {**params, "head.weight": torch.zeros_like(params["head.weight"])}
    out = vmap(f, in_dims=(None, 0))(zeroed, x)
    torch.testing.assert_close(out, params["head.bias"].expand(3, -1))


def test_onnx_import_follows_double_precision(exported: dict[str, tuple[nn.Module, Path]]) -> None:
    trained, path = exported["digits_mlp"]
    single = import_onnx(path)
    double = import_onnx(path).double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = trained.double()(x)
        out = double(x)
        err32 = (single(x.float()).double() - ref).abs().max()
    assert out.dtype == torch.float64
    # The graph's float32 constants (GELU's sqrt(2), the layer-norm epsilon) bound the
    # agreement, but float64 evaluation is still far closer than float32.
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-8)
    assert (out - ref).abs().max() < err32 / 10


def test_export_onnx_is_self_contained(tmp_path: Path) -> None:
    model = _cnn().train()
    path = export_onnx(model, torch.randn(2, 1, 28, 28), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert (inp.name, out.name) == ("input", "output")
    assert inp.type.tensor_type.shape.dim[0].dim_param  # a symbolic batch axis
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [1, 28, 28]
    # Exported with eval-mode semantics (running statistics); the caller's mode is kept.
    assert model.training
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(import_onnx(path)(x), model.eval()(x), rtol=1e-5, atol=1e-5)


def _graph(op: str, **attrs: object) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unsupported_op_names_the_op_and_the_supported_list(tmp_path: Path) -> None:
    with pytest.raises(OnnxImportError, match=r"unsupported ONNX operator\(s\) Hardmax") as err:
        import_onnx(_graph("Hardmax"))
    assert "Conv" in str(err.value) and "Gemm" in str(err.value)
    path = tmp_path / "hardmax.onnx"
    onnx.save(_graph("Hardmax"), str(path))
    with pytest.raises(ModelError, match="Hardmax"):
        load_model(path)


def test_onnx_import_rejects_other_domains_and_bad_files(tmp_path: Path) -> None:
    model = _graph("Relu")
    model.graph.node[0].domain = "com.microsoft"
    with pytest.raises(OnnxImportError, match=r"com\.microsoft::Relu"):
        import_onnx(model)
    with pytest.raises(FileNotFoundError):
        import_onnx(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx file" * 10)
    with pytest.raises(OnnxImportError, match="not a readable ONNX model"):
        import_onnx(junk)


@pytest.mark.parametrize("op", ["Relu", "Sigmoid", "Tanh", "Softmax", "Erf", "Identity"])
def test_single_op_graphs_match_onnxruntime(op: str) -> None:
    proto = _graph(op)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    got = import_onnx(proto)(torch.from_numpy(x))
    assert op in SUPPORTED_OPS
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-6, atol=1e-6)
