"""The sensitivity objective (Eq. 6) against the paper's literal loop, and the IBSF entropy."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import mpmath
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from veriprint import zoo
from veriprint.models import load_model, split_last_layer
from veriprint.pipeline.objective import (
    entropy_topk,
    log_sensitivity,
    resolve_params,
    sensitivity,
    sensitivity_loop,
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny models: a second intra-op thread only adds contention on a shared machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _mlp(seed: int = 0, dtype: torch.dtype = F64) -> nn.Module:
    torch.manual_seed(seed)
    return zoo.mlp(6, (8, 5), 4).to(dtype).eval()


def _cnn(seed: int = 0) -> nn.Module:
    """The fashion CNN in float64 with non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    model = zoo.fashion_cnn().to(F64).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g, dtype=F64) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.num_features, generator=g, dtype=F64))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g, dtype=F64))
    return model


def _digits(seed: int = 0, dtype: torch.dtype = F64) -> nn.Module:
    torch.manual_seed(seed)
    return zoo.digits_mlp().to(dtype).eval()


def _x(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _exported(tmp_path: Path) -> nn.Module:
    model = _cnn(seed=3)
    x = _x(2, 1, 28, 28)
    program = torch.export.export(
        model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},)
    )
    torch.export.save(program, str(tmp_path / "cnn.pt2"))
    return load_model(tmp_path / "cnn.pt2")


def _onnx(tmp_path: Path) -> nn.Module:
    pytest.importorskip("onnx")
    from veriprint.models.onnx_import import export_onnx

    torch.manual_seed(4)
    model = zoo.digits_mlp().eval()
    export_onnx(model, torch.zeros(2, 1, 8, 8), tmp_path / "mlp.onnx")
    return load_model(tmp_path / "mlp.onnx").to(F64)


# name -> (builder taking tmp_path, input shape without batch)
MODELS: dict[str, tuple[Callable[[Path], nn.Module], tuple[int, ...]]] = {
    "mlp": (lambda _p: _mlp(), (6,)),
    "cnn-batchnorm": (lambda _p: _cnn(), (1, 28, 28)),
    "gelu-layernorm": (lambda _p: _digits(), (1, 8, 8)),
    "torch-export": (_exported, (1, 28, 28)),
    "onnx-import": (_onnx, (1, 8, 8)),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], nn.Module]:
    """The models of :data:`MODELS`, each built once for this module."""
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            cache[name] = MODELS[name][0](tmp_path_factory.mktemp(name))
        return cache[name]

    return get


def _assert_rel(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    """``|a - b| <= rtol |b|`` elementwise, for values of ``S`` (not ``log S``)."""
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    rel = ((a - b).abs() / b.abs()).max().item()
    assert rel <= rtol, f"relative error {rel:.3g} > {rtol}"


# ------------------------------------------------------------------ closed form vs loop


@pytest.mark.filterwarnings("ignore:`isinstance.treespec, LeafSpec.` is deprecated:FutureWarning")
@pytest.mark.parametrize("outputs", ["probs", "logits"])
@pytest.mark.parametrize("name", list(MODELS))
def test_closed_form_equals_the_per_output_loop(
    built: Callable[[str], nn.Module], name: str, outputs: str
) -> None:
    model, shape = built(name), MODELS[name][1]
    x = _x(3, *shape, seed=1)
    closed = log_sensitivity(model, x, method="closed", outputs=outputs)  # type: ignore[arg-type]
    names = split_last_layer(model, x).names
    loop = sensitivity_loop(model, x, names, outputs=outputs)  # type: ignore[arg-type]
    assert closed.shape == loop.shape == (3,)
    _assert_rel(closed.exp(), loop, 1e-5)


def test_closed_form_of_a_softmax_ending_model() -> None:
    model = nn.Sequential(_mlp(seed=5), nn.Softmax(dim=-1)).eval()
    x = _x(4, 6, seed=2)
    closed = log_sensitivity(model, x, method="closed", model_outputs="probs")
    names = split_last_layer(model, x, "probs").names
    assert names == ["0.7.weight", "0.7.bias"]
    loop = sensitivity_loop(model, x, names, outputs="probs", model_outputs="probs")
    _assert_rel(closed.exp(), loop, 1e-5)


def test_closed_form_without_bias_uses_h_squared() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3, bias=False)).to(F64).eval()
    x = _x(4, 5, seed=3)
    closed = log_sensitivity(model, x, method="closed")
    loop = sensitivity_loop(model, x, split_last_layer(model, x).names)
    _assert_rel(closed.exp(), loop, 1e-5)


def test_logits_sensitivity_is_r_times_h_squared_plus_one() -> None:
    model = _digits(seed=7)
    x = _x(5, 1, 8, 8, seed=4)
    h, z, _ = split_last_layer(model, x).forward(x)
    expected = math.log(z.shape[-1]) + torch.log(h.pow(2).sum(1) + 1)
    for method in ("closed", "jacobian"):
        got = log_sensitivity(model, x, params="last", outputs="logits", method=method)  # type: ignore[arg-type]
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ jacobian, probe, loop


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("all", None),
        ("1.*", ["1.weight", "1.bias"]),
        (["4.weight", "7.*"], ["4.weight", "7.weight", "7.bias"]),
        ("last", ["7.weight", "7.bias"]),
    ],
)
@pytest.mark.parametrize("outputs", ["probs", "logits"])
def test_jacobian_equals_the_loop(params: str | list[str], expected: list[str] | None,
                                  outputs: str) -> None:
    model = _digits(seed=8)
    x = _x(3, 1, 8, 8, seed=5)
    names = resolve_params(model, params, x)
    assert names == (expected or [n for n, _ in model.named_parameters()])
    jac = log_sensitivity(model, x, params=params, outputs=outputs, method="jacobian")  # type: ignore[arg-type]
    loop = log_sensitivity(model, x, params=params, outputs=outputs, method="loop")  # type: ignore[arg-type]
    _assert_rel(jac.exp(), loop.exp(), 1e-8)


def test_jacobian_on_a_cnn_with_batch_norm_equals_the_loop() -> None:
    model = _cnn(seed=9)
    x = _x(2, 1, 28, 28, seed=6)
    params = ["4.*", "5.*", "11.*"]  # a convolution, its batch norm, the last layer
    jac = log_sensitivity(model, x, params=params, method="jacobian", chunk=1)
    loop = log_sensitivity(model, x, params=params, method="loop")
    _assert_rel(jac.exp(), loop.exp(), 1e-8)


def _exact_probe_std(model: nn.Module, x: torch.Tensor, probes: int) -> torch.Tensor:
    """Std of the Hutchinson estimate: sqrt(2 (||M||_F^2 - sum M_ii^2) / probes), M = A A^T."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    stds = []
    for xi in x:
        def probs(p: dict[str, torch.Tensor], xi: torch.Tensor = xi) -> torch.Tensor:
            return torch.softmax(functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0), -1)

        A = torch.cat([j.flatten(1) for j in jacrev(probs)(params).values()], dim=1)
        M = A @ A.T
        stds.append(torch.sqrt(2 * (M.pow(2).sum() - M.diag().pow(2).sum()) / probes))
    return torch.stack(stds)


def test_probe_estimate_is_within_a_few_percent() -> None:
    model = _digits(seed=10)
    x = _x(2, 1, 8, 8, seed=7)
    probes = 400
    exact = log_sensitivity(model, x, params="all", method="jacobian").exp()
    g = torch.Generator().manual_seed(0)
    estimate = log_sensitivity(model, x, params="all", method="probe", probes=probes,
                               generator=g).exp()
    std = _exact_probe_std(model, x, probes)
    assert (std / exact).max() < 0.03  # the setting really resolves a few percent
    assert ((estimate - exact).abs() <= 4 * std).all()
    _assert_rel(estimate, exact, 0.1)
    # Few probes are noisier than many: the estimate is a real average, not the exact value.
    few = log_sensitivity(model, x, params="all", method="probe", probes=1,
                          generator=torch.Generator().manual_seed(1)).exp()
    assert ((few - exact).abs() > (estimate - exact).abs()).any()


def test_probe_is_exact_for_logits_of_the_last_layer() -> None:
    # For z = W h + b the logit Jacobian rows are orthogonal (J J^T = (|h|^2+1) I), so the
    # Hutchinson estimator has zero variance.
    model = _digits(seed=11)
    x = _x(3, 1, 8, 8, seed=8)
    exact = log_sensitivity(model, x, outputs="logits", method="closed")
    probe = log_sensitivity(model, x, params="last", outputs="logits", method="probe", probes=2,
                            generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(probe, exact, rtol=1e-10, atol=1e-10)


def test_sensitivity_is_exp_of_log_sensitivity() -> None:
    model = _mlp(seed=12, dtype=torch.float32)
    x = _x(3, 6, seed=9, dtype=torch.float32)
    s = sensitivity(model, x)
    assert s.dtype == F64
    torch.testing.assert_close(s, log_sensitivity(model, x).double().exp())


# ------------------------------------------------------------------ saturation


def _saturated(dtype: torch.dtype) -> nn.Module:
    """A digits MLP whose class 0 wins by ~72 logits: top probability ~ 1 - 1e-31."""
    model = _digits(seed=13, dtype=F64)
    with torch.no_grad():
        model[-1].bias[0] += 72.0
    return model.to(dtype)


def _log_s_reference(h: torch.Tensor, z: torch.Tensor) -> list[float]:
    """log S from float64 h and z in 80-digit arithmetic, sums over other classes taken directly."""
    mpmath.mp.dps = 80
    out = []
    for hi, zi in zip(h.tolist(), z.tolist(), strict=True):
        e = [mpmath.exp(mpmath.mpf(v)) for v in zi]
        p = [v / mpmath.fsum(e) for v in e]
        terms = []
        for i, pi in enumerate(p):
            others = [pj for j, pj in enumerate(p) if j != i]
            # ||e_i - p||^2 = (1 - p_i)^2 + sum_{j!=i} p_j^2, with 1 - p_i = sum_{j!=i} p_j
            terms.append(pi**2 * (mpmath.fsum(others) ** 2 + mpmath.fsum(q**2 for q in others)))
        s = (mpmath.fsum(mpmath.mpf(v) ** 2 for v in hi) + 1) * mpmath.fsum(terms)
        out.append(float(mpmath.log(s)))
    return out


def test_saturated_model_gives_finite_equal_log_s_in_float32_and_float64() -> None:
    x = _x(4, 1, 8, 8, seed=10)
    m64, m32 = _saturated(F64), _saturated(torch.float32)
    h, z, _ = split_last_layer(m64, x).forward(x)
    assert (torch.logsumexp(z[:, 1:] - z[:, :1], dim=-1) < -69).all()  # 1 - p_top < 1e-30
    ls64 = log_sensitivity(m64, x, method="closed")
    ls32 = log_sensitivity(m32, x.float(), method="closed")
    assert ls32.dtype == torch.float32
    assert torch.isfinite(ls32).all() and torch.isfinite(ls64).all()
    assert (ls64 < -120).all()  # S itself is below float32's smallest subnormal
    reference = torch.tensor(_log_s_reference(h.detach(), z.detach()), dtype=F64)
    torch.testing.assert_close(ls64, reference, rtol=1e-12, atol=0)
    torch.testing.assert_close(ls32.double(), reference, rtol=1e-6, atol=0)
    # The jacobian route is cancellation-free as well.
    jac32 = log_sensitivity(m32, x.float(), params="last", method="jacobian")
    torch.testing.assert_close(jac32.double(), reference, rtol=1e-6, atol=0)

    # The naive polynomial sum_i p_i^2 ||e_i - p||^2 collapses: 0 in float32, and in
    # float64 1 - p_top rounds to 0 so the dominant (sum_{j!=top} p_j)^2 term is lost.
    def naive(h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(z, dim=-1)
        eye = torch.eye(z.shape[-1], dtype=z.dtype)
        return (h.pow(2).sum(1) + 1) * (p.pow(2) * (eye - p[:, None, :]).pow(2).sum(-1)).sum(-1)

    h32, z32, _ = split_last_layer(m32, x.float()).forward(x.float())
    assert (naive(h32, z32) == 0).all()
    assert (naive(h, z).log() - reference < -0.5).all()


def test_saturated_gradient_is_finite() -> None:
    x = _x(3, 1, 8, 8, seed=11, dtype=torch.float32).requires_grad_(True)
    log_sensitivity(_saturated(torch.float32), x, method="closed").sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ------------------------------------------------------------------ gradients in x


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("closed", "last"),
        ("jacobian", "all"),
        ("jacobian", ["1.*"]),
        ("jacobian", ["2.*"]),  # layer-norm parameters
        ("probe", ["2.*", "7.*"]),
    ],
)
def test_input_gradient_matches_finite_differences(method: str, params: str | list[str]) -> None:
    model = _digits(seed=14)
    x = _x(2, 1, 8, 8, seed=12).requires_grad_(True)

    def f(inp: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)  # the same probes at every evaluation
        return log_sensitivity(model, inp, params=params, method=method, probes=3,  # type: ignore[arg-type]
                               generator=g).sum()

    (grad,) = torch.autograd.grad(f(x), x)
    g = torch.Generator().manual_seed(0)
    eps = 1e-5
    for _ in range(3):
        d = torch.randn(x.shape, generator=g, dtype=F64)
        with torch.no_grad():
            fd = (f(x + eps * d) - f(x - eps * d)) / (2 * eps)
        torch.testing.assert_close((grad * d).sum(), fd, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ IBSF entropy


def _entropy_direct(z: torch.Tensor, k: int) -> torch.Tensor:
    p = torch.softmax(z.double(), dim=-1)
    top = p.topk(k, dim=-1).values
    q = top / top.sum(-1, keepdim=True)
    return -(q * q.log()).sum(-1)


@pytest.mark.parametrize("k", [2, 3, 10, 50])
def test_entropy_topk_equals_direct_computation(k: int) -> None:
    model = _digits(seed=15)
    x = _x(5, 1, 8, 8, seed=13)
    got = entropy_topk(model, x, k=k)
    with torch.no_grad():
        expected = _entropy_direct(model(x), min(k, 10))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    assert (got > 0).all() and (got <= math.log(min(k, 10)) + 1e-12).all()


def test_entropy_topk_on_saturated_outputs() -> None:
    x = _x(4, 1, 8, 8, seed=14)
    with torch.no_grad():
        expected = _entropy_direct(_saturated(F64)(x), 3)
    assert (expected > 0).all() and (expected < 1e-25).all()
    x32 = x.float().requires_grad_(True)
    got = entropy_topk(_saturated(torch.float32), x32, k=3)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=0)
    got.sum().backward()
    assert x32.grad is not None and torch.isfinite(x32.grad).all()
    # A softmax-ending model: probabilities underflow to exactly 0 but the entropy does not NaN.
    probs_model = nn.Sequential(_saturated(torch.float32), nn.Softmax(dim=-1))
    got_p = entropy_topk(probs_model, x.float(), k=3, model_outputs="probs")
    assert torch.isfinite(got_p).all()


# ------------------------------------------------------------------ invalid arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outputs": "logits", "model_outputs": "probs"}, "needs a model that returns logits"),
        ({"outputs": "labels"}, "expected outputs 'probs' or 'logits'"),
        ({"model_outputs": "labels"}, "expected model_outputs 'probs' or 'logits'"),
        ({"method": "closed", "params": "all"}, "closed form needs params='last'"),
        ({"method": "probe", "probes": 0}, "expected probes >= 1"),
        ({"method": "newton"}, "unknown method 'newton'"),
        ({"params": ["nothing.*"]}, "match none of"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, object], message: str) -> None:
    model = _mlp(seed=16)
    with pytest.raises(ValueError, match=message):
        log_sensitivity(model, _x(2, 6), **kwargs)  # type: ignore[arg-type]


def test_invalid_entropy_and_resolve_arguments() -> None:
    model = _mlp(seed=17)
    with pytest.raises(ValueError, match="expected k >= 2"):
        entropy_topk(model, _x(2, 6), k=1)
    with pytest.raises(ValueError, match="expected model_outputs"):
        entropy_topk(model, _x(2, 6), model_outputs="labels")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs an example batch"):
        resolve_params(model, "last")


def test_loop_refuses_logits_of_a_probs_model() -> None:
    model = nn.Sequential(_mlp(seed=18), nn.Softmax(dim=-1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="needs a model that returns logits"):
            sensitivity_loop(model, _x(2, 6), ["0.7.weight"], outputs="logits",
                             model_outputs="probs")
