"""Device profiles: expected outputs and noise floor computed under the serving numerics."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from veriprint.data import Dataset
from veriprint.deployments.profiles import DEFAULT_PROFILE, DeviceProfile, served
from veriprint.errors import ConfigError
from veriprint.fingerprint import Fingerprint
from veriprint.models import save_weights
from veriprint.noise import calibrate_noise
from veriprint.pipeline import FingerprintConfig, make_fingerprint
from veriprint.pipeline.generate import GenerationConfig
from veriprint.verification.verify import verify

NO_GPU = not torch.cuda.is_available()


def _cfg(**kw: object) -> FingerprintConfig:
    return FingerprintConfig(bag=40, generation=GenerationConfig(steps=20), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw, words", [
    ({"device": "gpu"}, "expected device cpu, cuda or cuda:N, got 'gpu'"),
    ({"device": "cuda:x"}, "got 'cuda:x'"),
    ({"precision": "int8"}, "expected precision one of fp32, tf32"),
    ({"precision": "tf32"}, "tf32 with a cuda device"),
])
def test_bad_profiles_are_refused_with_what_was_expected(kw: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match="device/precision") as e:
        FingerprintConfig(**kw)  # type: ignore[arg-type]
    assert words in str(e.value)


def test_default_profile_is_the_model_itself_and_calibrates_as_before(digits_model: torch.nn.Module) -> None:
    assert served(digits_model) is digits_model
    assert served(digits_model, DeviceProfile()) is digits_model
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    assert calibrate_noise(digits_model, x) == calibrate_noise(digits_model, x, profile=DEFAULT_PROFILE)


@pytest.mark.parametrize("precision, dtype", [("fp64", torch.float64), ("bf16", torch.bfloat16),
                                              ("fp16", torch.float16), ("autocast-bf16", torch.float32)])
def test_served_model_runs_in_the_profile_and_answers_on_the_cpu(digits_model: torch.nn.Module, precision: str,
                                                                 dtype: torch.dtype) -> None:
    m = served(digits_model, DeviceProfile("cpu", precision))
    assert next(m.parameters()).dtype == dtype
    assert next(digits_model.parameters()).dtype == torch.float32  # the caller's model is not touched
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        out, ref = m(x), digits_model(x)
    assert out.device.type == "cpu" and out.dtype == (torch.float64 if precision == "fp64" else torch.float32)
    err = float((out.double() - ref.double()).abs().max())
    if precision == "fp64":
        assert 0 < err < 1e-4  # float32 rounding only
    else:
        assert err > 1e-4  # reduced precision really moves the logits


@pytest.mark.parametrize("precision", ["fp64", "bf16", "autocast-bf16"])
def test_profiled_fingerprint_expects_the_served_outputs_and_verifies_there(
        digits_model: torch.nn.Module, digits_data: tuple[Dataset, Dataset], precision: str) -> None:
    # the fixed floor: the measured one of a half precision is its resolution, which may
    # hold the float32 model's outputs too (see the measured-floor test below)
    fp, _, _ = make_fingerprint(digits_model, digits_data[1], _cfg(precision=precision, floor="fixed"),
                                progress=False)
    deployment = served(digits_model, DeviceProfile("cpu", precision))
    with torch.inference_mode():
        want = deployment(fp.samples).float()
    assert torch.equal(fp.expected, want)
    assert fp.meta["profile"]["device"] == "cpu" and fp.meta["profile"]["precision"] == precision
    assert fp.meta["config"]["precision"] == precision
    assert "float64" not in fp.noise.variants and "batch=1" in fp.noise.variants
    for spec in ("top1", "logits"):
        rep = verify(fp, deployment, spec=spec, max_batch=3)
        assert rep.verdict == "INTACT", (spec, rep.reason)
    if precision != "fp64":  # the float32 model is not what this deployment serves
        assert verify(fp, digits_model, spec="logits").verdict == "TAMPERED"
        default, _, _ = make_fingerprint(digits_model, digits_data[1], _cfg(floor="fixed"), progress=False)
        assert verify(default, deployment, spec="logits").verdict == "TAMPERED"


def test_profiled_fingerprint_round_trips_through_the_file(tmp_path: Path, digits_model: torch.nn.Module,
                                                           digits_data: tuple[Dataset, Dataset]) -> None:
    fp, _, _ = make_fingerprint(digits_model, digits_data[1], _cfg(precision="fp64"), progress=False)
    fp.save(tmp_path / "fp.vpf")
    back = Fingerprint.load(tmp_path / "fp.vpf")
    assert back.meta["profile"]["precision"] == "fp64"
    assert FingerprintConfig.from_dict(back.meta["config"]).profile == DeviceProfile("cpu", "fp64")


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU: the refusal is for machines without one")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_is_refused_clearly_without_a_gpu(digits_model: torch.nn.Module,
                                               digits_data: tuple[Dataset, Dataset], device: str) -> None:
    cfg = _cfg(device=device, precision="tf32")  # a valid profile: refused only where it is used
    with pytest.raises(ConfigError, match=f"expected a CUDA device for --device {device}, got none"):
        make_fingerprint(digits_model, digits_data[1], cfg, progress=False)
    with pytest.raises(ConfigError, match="sees no GPU"):
        served(digits_model, cfg.profile)


def test_cli_takes_device_and_precision_and_inspect_shows_them(
        tmp_path: Path, digits_model: torch.nn.Module, capsys: pytest.CaptureFixture[str]) -> None:
    from veriprint.cli.main import main

    weights = tmp_path / "w.safetensors"
    save_weights(digits_model, weights)
    common = ["fingerprint", "--model", "veriprint.zoo:digits_mlp", "--weights", str(weights), "--data", "digits",
              "--bag", "40", "--steps", "20", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "fp.vpf"), "--precision", "autocast-bf16"]) == 0
    assert main(["inspect", str(tmp_path / "fp.vpf")]) == 0
    assert "profile: expected outputs and floor computed on cpu in autocast-bf16" in capsys.readouterr().out
    (tmp_path / "c.toml").write_text('precision = "fp64"\n')
    assert main([*common, "--out", str(tmp_path / "c.vpf"), "--config", str(tmp_path / "c.toml")]) == 0
    assert Fingerprint.load(tmp_path / "c.vpf").meta["profile"]["precision"] == "fp64"
    if NO_GPU:
        capsys.readouterr()
        assert main([*common, "--out", str(tmp_path / "g.vpf"), "--device", "cuda"]) == 2
        assert "expected a CUDA device for --device cuda" in capsys.readouterr().err


# --- measured floors --------------------------------------------------------------------------


def test_resolution_guard_is_two_units_in_the_last_place_of_the_largest_logit() -> None:
    from veriprint.noise import resolution_guard

    z = torch.tensor([[10.0, -3.0], [1.0, 2.0]])
    assert resolution_guard(z) == 2 * 2.0**-23 * 8  # float32: |z| in [8, 16) is spaced 2**-20
    assert resolution_guard(z, DeviceProfile("cpu", "bf16")) == 2 * 2.0**-7 * 8
    assert resolution_guard(z, DeviceProfile("cpu", "autocast-fp16")) == 2 * 2.0**-10 * 8
    assert resolution_guard(z, DeviceProfile("cpu", "fp64")) == resolution_guard(z)  # stored as float32
    assert resolution_guard(torch.zeros(2, 3)) == 1e-12


def test_measured_floor_follows_the_noise_and_fixed_keeps_min_floor(digits_model: torch.nn.Module) -> None:
    from veriprint.noise import resolution_guard

    x = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    fixed = calibrate_noise(digits_model, x)
    measured = calibrate_noise(digits_model, x, floor="measured")
    assert fixed.min_floor == 1e-4 and fixed.floor == 1e-4  # float32 noise here is ~1e-6
    with torch.inference_mode():
        guard = resolution_guard(digits_model(x))
    assert measured.min_floor == guard
    assert measured.margin == fixed.margin
    assert measured.floor == max(10 * measured.margin, guard) < 1e-4
    with pytest.raises(ConfigError, match="expected floor one of fixed, measured, got 'lowest'"):
        calibrate_noise(digits_model, x, floor="lowest")
    with pytest.raises(ConfigError, match=r"FingerprintConfig\.floor"):
        FingerprintConfig(floor="lowest")  # type: ignore[arg-type]


def test_measured_floor_fingerprint_verifies_on_cpu_deployments(digits_model: torch.nn.Module,
                                                                digits_data: tuple[Dataset, Dataset]) -> None:
    fp, _, _ = make_fingerprint(digits_model, digits_data[1], _cfg(floor="measured"), progress=False)
    assert fp.noise.floor < 1e-4 and fp.meta["config"]["floor"] == "measured"
    from veriprint.targets import TorchTarget

    for mb in (1, 3, None):
        for threads in (1, 2):
            rep = verify(fp, TorchTarget(digits_model, threads=threads), spec="logits", max_batch=mb)
            assert rep.verdict == "INTACT", rep.reason
    bad = __import__("copy").deepcopy(digits_model)
    with torch.no_grad():
        bad[-1].bias.add_(1e-3)
    assert verify(fp, bad, spec="logits").verdict == "TAMPERED"


def test_measured_floor_of_a_half_precision_profile_is_its_resolution(digits_model: torch.nn.Module,
                                                                      digits_data: tuple[Dataset, Dataset]) -> None:
    from veriprint.noise import resolution_guard

    fp, _, _ = make_fingerprint(digits_model, digits_data[1], _cfg(precision="bf16", floor="measured"),
                                progress=False)
    deployment = served(digits_model, DeviceProfile("cpu", "bf16"))
    with torch.inference_mode():
        guard = resolution_guard(deployment(fp.samples), DeviceProfile("cpu", "bf16"))
    assert fp.noise.min_floor >= guard > 1e-3  # bfloat16 logits are spaced ~1e-2 apart
    assert verify(fp, deployment, spec="top1").verdict == "INTACT"


class _Rounded(torch.nn.Module):
    """A deployment whose logits come rounded to steps of ``q`` (as reduced precision does)."""

    def __init__(self, model: torch.nn.Module, q: float) -> None:
        super().__init__()
        self.model, self.q = model, q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(self.model(x) / self.q) * self.q


def test_straddle_moves_float32_pairs_onto_the_rounded_boundary(fashion_model: torch.nn.Module,
                                                               fashion_data: tuple[Dataset, Dataset]) -> None:
    from veriprint.numerics import top2_margin
    from veriprint.pipeline.straddle import straddle

    fp, _, _ = make_fingerprint(fashion_model, fashion_data[1], _cfg(select=8, floor="fixed"), progress=False)
    a, b, seeds = fp.samples[0::2], fp.samples[1::2], fp.seeds[0::2]
    deployment = _Rounded(fashion_model, 0.05)
    with torch.no_grad():
        before = deployment(a).argmax(1) != deployment(b).argmax(1)
    assert not before.all()  # rounding in steps of 0.05 undoes pairs made 2e-4 from the boundary
    eps = fp.meta["config"]["generation"]["eps"]
    domain = fashion_data[1].domain
    res = straddle(deployment, fashion_model, a, b, seeds, target=2e-4, eps=eps, domain=domain)
    assert int(res.ok.sum()) >= 3 and bool((res.ok | ~res.moved).all())
    with torch.no_grad():
        za, zb = deployment(res.first[res.ok]), deployment(res.second[res.ok])
    assert (za.argmax(1) != zb.argmax(1)).all()
    assert (top2_margin(za) >= 2e-4).all() and (top2_margin(zb) >= 2e-4).all()
    assert domain.on_grid(res.first) and domain.on_grid(res.second)
    for x in (res.first, res.second):
        assert float((x - seeds).abs().max()) <= eps + 1e-6
    assert torch.equal(res.first[~res.ok], a[~res.ok]) and torch.equal(res.second[~res.ok], b[~res.ok])


def test_the_flip_search_never_writes_the_served_model() -> None:
    """Its parameters made as inference tensors, which refuse any in-place write outside
    inference mode: finding the bias and every shift search run on copies passed per call,
    and give what the same search gives on an ordinary copy."""
    from veriprint.pipeline.straddle import flip_shifts, output_bias

    torch.manual_seed(5)
    plain = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)).eval()
    with torch.inference_mode():
        frozen = copy.deepcopy(plain)
        for p in frozen.parameters():
            p.data = p.data.clone()  # made in inference mode: writes outside it raise
    assert frozen[2].bias.is_inference()
    x = torch.rand(40, 4)
    bias = output_bias(frozen, x)
    assert bias is frozen[2].bias
    got = flip_shifts(frozen, bias, x, 1e-3)
    assert torch.equal(got, flip_shifts(plain, plain[2].bias, x, 1e-3))
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), frozen.parameters(), strict=True))


def test_output_bias_is_found_and_flip_shift_is_the_margin_on_its_grid() -> None:
    from veriprint.numerics import top2_margin
    from veriprint.pipeline.straddle import flip_shift, flip_shifts, output_bias

    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)).eval()
    x = torch.rand(40, 4)
    assert output_bias(model, x) is model[2].bias  # not the hidden layer's
    assert output_bias(torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False)), x) is None
    low = 1e-3
    before = [p.clone() for p in model.parameters()]
    got = flip_shift(model, model[2].bias, x, low)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # restored
    with torch.no_grad():
        m = top2_margin(model(x)).double()
    levels = torch.tensor([low * 2.0 ** (k - 1) for k in range(14)], dtype=torch.float64)
    # a shift flips the label once it passes the margin: the first level above it
    want = torch.tensor([float(levels[levels > v][0]) if bool((levels > v).any()) else float("inf") for v in m],
                        dtype=torch.float64)
    close = (m.view(-1, 1) - levels).abs().min(1).values < 1e-6  # float32 rounding at a level: either one
    assert torch.equal(got[~close], want[~close]) and bool((~close).sum() >= 30)
    # behind rounded logits the two directions differ: the smaller of the two, by brute force
    rounded = _Rounded(model, 0.05)
    brute = []
    for i in range(len(x)):
        with torch.no_grad():
            z = rounded(x[i:i + 1])[0]
        lab, run = int(z.argmax()), int(z.scatter(0, z.argmax().view(1), float("-inf")).argmax())
        ways = [float("inf"), float("inf")]
        for way, (cls, sign) in enumerate(((run, 1.0), (lab, -1.0))):
            for d in levels.tolist():
                orig = model[2].bias.data[cls].clone()
                model[2].bias.data[cls] = orig + sign * d
                with torch.no_grad():
                    flipped = int(rounded(x[i:i + 1])[0].argmax()) != lab
                model[2].bias.data[cls] = orig
                if flipped:
                    ways[way] = d
                    break
        brute.append(ways)
    each = flip_shifts(rounded, model[2].bias, x, low)
    assert each.tolist() == brute
    assert flip_shift(rounded, model[2].bias, x, low).tolist() == [min(w) for w in brute]
    assert bool((each[:, 0] != each[:, 1]).any())  # the ways do differ behind rounding
    cap = torch.full((len(x),), 4 * low, dtype=torch.float64)  # with a cap: only the shifts up to it
    capped = flip_shift(model, model[2].bias, x, low, below=cap)
    assert torch.equal(capped, torch.where(got <= 4 * low, got, torch.full_like(got, float("inf"))))


def test_tighten_brings_the_flipping_shift_down_behind_rounded_logits(
        fashion_model: torch.nn.Module, fashion_data: tuple[Dataset, Dataset]) -> None:
    from veriprint.numerics import top2_margin
    from veriprint.pipeline.straddle import flip_shifts, output_bias, straddle, tighten

    fp, _, _ = make_fingerprint(fashion_model, fashion_data[1], _cfg(select=8, floor="fixed"), progress=False)
    a, b, seeds = fp.samples[0::2], fp.samples[1::2], fp.seeds[0::2]
    deployment = _Rounded(fashion_model, 0.05)
    eps, domain = fp.meta["config"]["generation"]["eps"], fashion_data[1].domain
    res = straddle(deployment, fashion_model, a, b, seeds, target=2e-4, eps=eps, domain=domain)
    x, s = torch.cat([res.first[res.ok], res.second[res.ok]]), torch.cat([seeds[res.ok], seeds[res.ok]])
    t = tighten(deployment, fashion_model, x, s, low=2e-4, eps=eps, domain=domain)
    assert t is not None
    with torch.no_grad():
        z0, z1 = deployment(x), deployment(t.samples)
    assert torch.equal(z0.argmax(1), z1.argmax(1)) and (top2_margin(z1) >= 2e-4).all()  # same answers, decided
    better = t.after < t.before
    assert (t.after <= t.before).all() and better.any() and (t.after[better] >= 2e-4).all()
    bias = output_bias(deployment, x[:4])
    assert bias is not None
    assert torch.equal(flip_shifts(deployment, bias, t.samples, 2e-4).max(dim=1).values, t.after)  # either way
    assert 1 <= t.rounds <= 6 and not t.stopped
    late = tighten(deployment, fashion_model, x, s, low=2e-4, eps=eps, domain=domain, deadline=0.0)
    assert late is not None and late.stopped and late.rounds == 0 and torch.equal(late.samples, x)  # past it
    assert domain.on_grid(t.samples) and float((t.samples - s).abs().max()) <= eps + 1e-6


@pytest.mark.parametrize("precision", ["bf16", "autocast-bf16"])
def test_reduced_precision_profile_stores_pairs_on_the_served_boundary(
        fashion_model: torch.nn.Module, fashion_data: tuple[Dataset, Dataset], precision: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from veriprint.cli.main import main

    fp, _, _ = make_fingerprint(fashion_model, fashion_data[1], _cfg(select=8, floor="fixed", precision=precision),
                                progress=False)
    st = fp.meta["straddle"]
    assert st["pairs"] == fp.meta["selection"]["pairs"] and 0 <= st["straddling"] <= st["pairs"]
    assert st["straddling"] == st["moved"] + st["already"]
    assert 0 <= st["tightened"] <= 2 * st["straddling"] and "tighten_rounds" not in st  # rounded logits: ends tightened too
    if st["tightened"]:
        assert st["shift_after"] <= st["shift_before"]
    labels = fp.expected.argmax(1)
    differ = int((labels[0: 2 * st["pairs"]: 2] != labels[1: 2 * st["pairs"]: 2]).sum())
    assert differ >= st["straddling"]  # each straddling pair gets two labels from the deployment
    assert verify(fp, served(fashion_model, DeviceProfile("cpu", precision)), spec="top1").verdict == "INTACT"
    fp.save(tmp_path / "fp.vpf")
    assert Fingerprint.load(tmp_path / "fp.vpf").meta["straddle"] == st
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "fp.vpf")]) == 0
    assert f"straddle: {st['straddling']} of {st['pairs']} pairs labelled differently" in capsys.readouterr().out
    default, _, _ = make_fingerprint(fashion_model, fashion_data[1], _cfg(select=8, floor="fixed"), progress=False)
    assert "straddle" not in default.meta


def test_float64_profile_keeps_the_float32_pairs(fashion_model: torch.nn.Module,
                                                 fashion_data: tuple[Dataset, Dataset]) -> None:
    # float64 answers within ~1e-6 of float32: every pair straddles that boundary already
    fp, _, _ = make_fingerprint(fashion_model, fashion_data[1], _cfg(select=8, floor="fixed", precision="fp64"),
                                progress=False)
    st = fp.meta["straddle"]
    assert st["pairs"] > 0 and st["already"] == st["pairs"] and st["moved"] == 0 and "tightened" not in st
    plain, _, _ = make_fingerprint(fashion_model, fashion_data[1], _cfg(select=8, floor="fixed"), progress=False)
    assert torch.equal(fp.samples, plain.samples)


def test_cli_prints_the_straddle_of_a_profiled_fingerprint(tmp_path: Path, fashion_model: torch.nn.Module,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from veriprint.cli.main import main

    weights = tmp_path / "w.safetensors"
    save_weights(fashion_model, weights)
    assert main(["fingerprint", "--model", "veriprint.zoo:fashion_cnn", "--weights", str(weights), "--data",
                 "fashion-mnist", "--bag", "40", "--steps", "20", "--queries", "8", "--precision", "autocast-bf16",
                 "--out", str(tmp_path / "fp.vpf")]) == 0
    st = Fingerprint.load(tmp_path / "fp.vpf").meta["straddle"]
    assert f"straddle: {st['straddling']} of {st['pairs']} pairs" in capsys.readouterr().out


def test_the_straddle_stage_is_planned_and_never_stopped_by_the_clock(
        fashion_model: torch.nn.Module, fashion_data: tuple[Dataset, Dataset], monkeypatch: pytest.MonkeyPatch) -> None:
    import veriprint.pipeline.straddle as straddle
    from veriprint.pipeline.plan import plan_line
    from veriprint.pipeline.straddle import straddle_summary

    calls: list[dict[str, object]] = []
    real = straddle.tighten

    def spy(*a: object, **k: object) -> object:
        calls.append(k)
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(straddle, "tighten", spy)
    # a budget that ends long before the straddle stage would (the old deadline stopped tightening there)
    fp, _, _ = make_fingerprint(fashion_model, fashion_data[1], _cfg(select=8, floor="fixed", precision="bf16",
                                                                     budget="1s"), progress=False)
    st, pl = fp.meta["straddle"], fp.meta["plan"]
    assert calls and all(k.get("deadline") is None for k in calls)
    assert "tighten_rounds" not in st and "tightened" in st
    assert pl["pairs"] == 4 and pl["predicted"]["straddle"] > 0
    if st["pairs"] != 4:  # selection chose more pairs than the plan priced: priced again with them
        assert pl["repriced"]["pairs"] == st["pairs"] and pl["repriced"]["straddle"] > pl["predicted"]["straddle"]
    assert "straddle " in plan_line(pl, stages=fp.meta["stages"])
    # files made when the budget's end stopped tightening still say so
    assert "the time budget stopped tightening after 0 rounds" in straddle_summary({**st, "tighten_rounds": 0})
