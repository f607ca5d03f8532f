"""Language-model fingerprints: model, objective, search, specs, file, verdicts, tampers, CLI.

Most tests use a tiny randomly initialised Llama of the shipped model's class with the
shipped tokenizer; a few load the shipped ``fortunes-lm`` itself.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from testkit.servers.required import missing
from veriprint.errors import ConfigError, ModelError
from veriprint.fingerprint.fileformat import FingerprintFileError
from veriprint.lm.builder import LmFingerprintConfig, make_lm_fingerprint, shipped_seeds
from veriprint.lm.fingerprint import LmFingerprint, is_lm_file
from veriprint.lm.model import ASSETS, is_lm_source, load_lm, next_token_logits, pad_left, tiny_lm
from veriprint.lm.prompts import SearchConfig, _log_s_from, search_prompts, seed_prompts
from veriprint.lm.specs import ExpectedAnswer, parse_lm_spec
from veriprint.lm.tamper import (
    LmCastConfig,
    LmFineTuneConfig,
    LmLoraConfig,
    LmQuantizeConfig,
    LmSystemPromptConfig,
    LmTorchaoConfig,
    list_lm_attacks,
    lm_attack,
    tamper_lm,
)
from veriprint.lm.target import Completion, LocalCompletions, greedy
from veriprint.lm.verify import verify_lm
from veriprint.noise import NoiseFloor
from veriprint.targets.base import TargetError

SMALL = LmFingerprintConfig(prompts=4, steps=1, candidates=8, top_k=4)


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_lm(0)


@pytest.fixture(scope="module")
def tiny_fp(tiny: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[LmFingerprint, Path]:
    torch.manual_seed(0)
    fp = make_lm_fingerprint(tiny, SMALL, seeds=shipped_seeds()[:8])
    path = tmp_path_factory.mktemp("lm") / "tiny.vpf"
    return fp.save(path), path


# --- model ------------------------------------------------------------------------------


def test_pad_left_masks_and_aligns() -> None:
    ids, mask = pad_left([[5, 6, 7], [8]], 0, extra=1)
    assert ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]]
    assert mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match="at least one"):
        pad_left([], 0)


def test_left_padding_and_batching_move_logits_by_float_noise_only(tiny: Any) -> None:
    seqs = seed_prompts(tiny, shipped_seeds()[:6])
    ref = next_token_logits(tiny.model, seqs, batch_size=32)
    one = torch.cat([next_token_logits(tiny.model, [s]) for s in seqs])
    padded = next_token_logits(tiny.model, seqs, batch_size=3, extra_pad=5)
    assert (ref - one).abs().max() < 1e-4
    assert (ref - padded).abs().max() < 1e-4


def test_seeds_round_trip(tiny: Any) -> None:
    seeds = seed_prompts(tiny, shipped_seeds()[:20], max_tokens=12)
    assert seeds and all(4 <= len(s) <= 12 and tiny.round_trips(s) for s in seeds)


def test_is_lm_source_and_bad_folders(tmp_path: Path) -> None:
    assert is_lm_source("fortunes-lm") and is_lm_source("lm:fortunes-lm-sibling")
    assert not is_lm_source("veriprint.zoo:digits_mlp") and not is_lm_source(str(tmp_path))
    with pytest.raises(ModelError, match="expected a language model"):
        load_lm(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match=r"config\.json"):
        load_lm(str(tmp_path))


def test_shipped_model_matches_its_manifest_and_loads_from_pretrained() -> None:
    lm = load_lm("fortunes-lm")
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in lm.model.parameters()) < 5_000_000
    assert lm.vocab_size == len(lm.tokenizer) == 512
    again = load_lm(str(ASSETS / "fortunes-lm"))  # the folder itself, as a server would read it
    assert again.weights_sha256 == lm.weights_sha256 and again.tokenizer_sha256 == lm.tokenizer_sha256
    assert load_lm("fortunes-lm-sibling").weights_sha256 != lm.weights_sha256


# --- objective and search -----------------------------------------------------------------


def test_closed_form_log_s_is_eq6_over_the_output_layer() -> None:
    torch.manual_seed(0)
    v, h_dim = 11, 5
    w = torch.randn(v, h_dim, dtype=torch.float64)
    h = torch.randn(h_dim, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda m: torch.softmax(m @ h, -1), w)  # (V, V, H)
    exact = float(jac.pow(2).sum())
    got = float(_log_s_from(h[None], (w @ h)[None])[0])
    assert math.isclose(got, math.log(exact), rel_tol=1e-9)


def test_sensitive_search_improves_log_s_within_the_edit_budget(tiny: Any) -> None:
    seeds = seed_prompts(tiny, shipped_seeds()[:3])
    from veriprint.lm.prompts import log_sensitivity

    before = log_sensitivity(tiny, seeds)
    found = search_prompts(tiny, seeds, SearchConfig(steps=3, candidates=16, top_k=8, max_edits=2))
    for c, s, b in zip(found, seeds, before.tolist(), strict=True):
        assert c.log_s >= b - 1e-9
        assert c.edits <= 2 and len(c.ids) == len(s)
        assert tiny.round_trips(c.ids) and c.text == tiny.decode(c.ids)


def test_border_search_keeps_above_lowest(tiny: Any) -> None:
    seeds = seed_prompts(tiny, shipped_seeds()[:3])
    cfg = SearchConfig(objective="border", steps=3, candidates=16, top_k=8, target=1e-2, lowest=1e-3)
    for c in search_prompts(tiny, seeds, cfg):
        if c.edits:
            assert c.margin >= 1e-3


@pytest.mark.parametrize("bad", [{"objective": "x"}, {"steps": -1}, {"candidates": 0}, {"lowest": 1.0, "target": 0.1}])
def test_search_config_refuses(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="expected"):
        SearchConfig(**bad)


# --- specs --------------------------------------------------------------------------------

NOISE = NoiseFloor(logit=1e-6, prob=1e-6, margin=1e-6, variants=("batch=1",))  # floor 1e-4, tolerance 5e-5


def _answer(margins: list[float]) -> ExpectedAnswer:
    tops = [["a", "b", "c"], ["d", "e", "f"]]
    lps = [[-0.1, -0.1 - margins[0], -3.0], [-0.2, -0.2 - margins[1], -4.0]]
    return ExpectedAnswer(tokens=["a", "d"], text="ad", margins=margins, top_tokens=tops, top_logprobs=lps)


def test_top1_token_exact_mismatch_and_near_tie() -> None:
    spec = parse_lm_spec("top1-token")
    decided = _answer([1.0, 1.0])
    assert not spec.compare(decided, "ad", ["a", "d"], None, NOISE).mismatch
    bad = spec.compare(decided, "ae", ["a", "e"], None, NOISE)
    assert bad.mismatch and "token 1" in bad.why
    tie = _answer([1.0, 1e-5])  # step 1 within the floor of a tie: 'e' accepted, marked ambiguous
    c = spec.compare(tie, "ae", ["a", "e"], None, NOISE)
    assert not c.mismatch and c.ambiguous
    assert spec.compare(tie, "af", ["a", "f"], None, NOISE).mismatch  # 'f' is not near the tie
    assert not parse_lm_spec("top1-token:1").compare(decided, "ae", ["a", "e"], None, NOISE).mismatch


def test_tokens_read_off_the_text_when_the_server_gives_none() -> None:
    spec = parse_lm_spec("top1-token")
    exp = _answer([1.0, 1.0])
    assert not spec.compare(exp, "ad", [], None, NOISE).mismatch
    assert spec.compare(exp, "ade", [], None, NOISE).mismatch  # one more character: the last token differs
    assert "token 0" in spec.compare(exp, "xd", [], None, NOISE).why
    assert not parse_lm_spec("top1-token:1").compare(exp, "ax", [], None, NOISE).mismatch


def test_logprobs_within_tolerance_and_beyond() -> None:
    spec = parse_lm_spec("logprobs:2")
    exp = _answer([1.0, 1.0])
    good = [{"a": -0.1 + 1e-5, "b": -1.1}, {"d": -0.2, "e": -1.2}]
    assert not spec.compare(exp, "ad", ["a", "d"], good, NOISE).mismatch
    moved = [{"a": -0.1 + 1e-3, "b": -1.1}, {"d": -0.2, "e": -1.2}]
    assert "logprob" in spec.compare(exp, "ad", ["a", "d"], moved, NOISE).why
    missing = [{"a": -0.1, "z": -1.1}, {"d": -0.2, "e": -1.2}]
    assert spec.compare(exp, "ad", ["a", "d"], missing, NOISE).mismatch


def test_text_spec() -> None:
    spec = parse_lm_spec("text")
    assert not spec.compare(_answer([1.0, 1.0]), "ad", [], None, NOISE).mismatch
    assert spec.compare(_answer([1.0, 1.0]), "ax", [], None, NOISE).mismatch
    amb = spec.compare(_answer([1.0, 1e-5]), "ae", [], None, NOISE)
    assert not amb.mismatch and amb.ambiguous


@pytest.mark.parametrize("text", ["top1", "logprobs", "logprobs:0", "logprobs:10", "top1-token:5", "text:2", 3])
def test_parse_lm_spec_refuses(text: Any) -> None:
    with pytest.raises(ValueError, match=r"expected|unknown"):
        parse_lm_spec(text)


# --- fingerprint file and verdicts ----------------------------------------------------------


def test_fingerprint_file_round_trip(tiny_fp: tuple[LmFingerprint, Path]) -> None:
    fp, path = tiny_fp
    assert is_lm_file(path)
    back = LmFingerprint.load(path)
    assert back.sha256 == fp.sha256 and back.prompts == fp.prompts and len(back) == len(fp) <= 4
    assert back.meta["kind"] == "lm" and back.meta["tokenizer_sha256"] and back.max_tokens == 4
    for i in range(len(back)):
        ids = back.prompt_ids(i)
        assert back.prompts[i] and len(ids) >= 4
    assert back.noise.floor == fp.noise.floor


def test_classifier_loader_names_an_lm_file(tiny_fp: tuple[LmFingerprint, Path]) -> None:
    from veriprint.fingerprint import Fingerprint

    with pytest.raises(FingerprintFileError, match="language-model fingerprint"):
        Fingerprint.load(tiny_fp[1])


def test_edited_file_is_refused(tiny_fp: tuple[LmFingerprint, Path], tmp_path: Path) -> None:
    data = bytearray(tiny_fp[1].read_bytes())
    data[-3] ^= 0xFF
    bad = tmp_path / "bad.vpf"
    bad.write_bytes(bytes(data))
    with pytest.raises(FingerprintFileError, match="hash mismatch"):
        LmFingerprint.load(bad)


def test_crafted_contents_are_refused(tiny_fp: tuple[LmFingerprint, Path], tmp_path: Path) -> None:
    fp = tiny_fp[0]
    crafted = dataclasses.replace(fp, tensors={**fp.tensors, "top_logprobs": fp.tensors["top_logprobs"].abs() + 1})
    crafted.save(tmp_path / "c.vpf")
    with pytest.raises(FingerprintFileError, match="logprobs <= 0"):
        LmFingerprint.load(tmp_path / "c.vpf")
    short = dataclasses.replace(fp, meta={**fp.meta, "prompts": fp.prompts[:-1]})
    short.save(tmp_path / "s.vpf")
    with pytest.raises(FingerprintFileError, match="prompts"):
        LmFingerprint.load(tmp_path / "s.vpf")


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("spec", ["top1-token", "logprobs:5", "text"])
def test_intact_model_is_intact_at_any_batch_size(tiny: Any, tiny_fp: tuple[LmFingerprint, Path], batch: int,
                                                  spec: str) -> None:
    r = verify_lm(tiny_fp[1], LocalCompletions(tiny, batch_size=batch), spec=spec, max_batch=batch)
    assert r.verdict == "INTACT", r.reason
    assert r.queries == len(tiny_fp[0]) and r.exit_code == 0


def test_float16_serving_is_caught_by_logprobs(tiny: Any, tiny_fp: tuple[LmFingerprint, Path]) -> None:
    served = tamper_lm(tiny, LmCastConfig("float16")).lm
    r = verify_lm(tiny_fp[1], LocalCompletions(served), spec="logprobs:5")
    assert r.verdict == "TAMPERED" and r.exit_code == 1


def test_another_model_is_caught(tiny_fp: tuple[LmFingerprint, Path]) -> None:
    # logprobs: with tied embeddings, random models of any seed mostly repeat the last token
    r = verify_lm(tiny_fp[1], LocalCompletions(tiny_lm(1)), spec="logprobs:5")
    assert r.verdict == "TAMPERED" and "first mismatch" in r.summary()


class _Fake:
    description = "fake"

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def complete(self, prompts: Any, *, max_tokens: int, logprobs: int | None = None) -> Any:
        return self.answer(prompts, max_tokens, logprobs)


def _raise(*_: Any) -> Any:
    raise TargetError("connection refused")


@pytest.mark.parametrize("answer, why", [
    (_raise, "connection refused"),
    (lambda p, n, k: [], "expected"),
    (lambda p, n, k: [Completion("x", "not a list", None)] * len(p), "tokens"),  # type: ignore[arg-type]
    (lambda p, n, k: [{"text": 3}] * len(p), "text"),
])
def test_failures_are_inconclusive(tiny_fp: tuple[LmFingerprint, Path], answer: Any, why: str) -> None:
    r = verify_lm(tiny_fp[1], _Fake(answer), spec="top1-token")
    assert r.verdict == "INCONCLUSIVE" and why in r.reason and r.exit_code == 2


def test_missing_logprobs_are_inconclusive(tiny: Any, tiny_fp: tuple[LmFingerprint, Path]) -> None:
    local = LocalCompletions(tiny)

    def no_logprobs(p: Any, n: int, k: int | None) -> Any:
        return [dataclasses.replace(c, top_logprobs=None) for c in local.complete(p, max_tokens=n)]

    r = verify_lm(tiny_fp[1], _Fake(no_logprobs), spec="logprobs:3")
    assert r.verdict == "INCONCLUSIVE"


def test_greedy_with_cache_matches_full_passes(tiny: Any) -> None:
    seqs = seed_prompts(tiny, shipped_seeds()[:4])
    a = greedy(tiny, seqs, 3)
    b = greedy(tiny, seqs, 3, cache=True)
    assert torch.equal(a.ids, b.ids)
    assert (a.top_logprobs - b.top_logprobs).abs().max() < 1e-4


# --- tampers ------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [LmCastConfig("float16"), LmCastConfig("bfloat16"), LmQuantizeConfig(),
                                 LmFineTuneConfig(), LmLoraConfig()], ids=repr)
def test_weight_tampers_change_weights_and_leave_the_caller_alone(tiny: Any, cfg: object) -> None:
    before = tiny.weights_sha256
    res = tamper_lm(tiny, cfg)
    assert tiny.weights_sha256 == before and res.lm.model is not tiny.model
    assert res.changed > 0 and res.lm.weights_sha256 != before


TORCHAO = ("torchao is not installed: pip install 'veriprint[torchao]' (the optional torchao extra; "
           "scripts/setup.sh installs it with the dev extra)")


def _require_torchao() -> None:
    if importlib.util.find_spec("torchao") is None:
        missing(TORCHAO)


@pytest.mark.parametrize("scheme", ["int8-weight", "int4-weight", "int8-dynamic-int4-weight"])
def test_torchao_quantization_runs_on_the_cpu_and_is_caught(tiny: Any, tiny_fp: tuple[LmFingerprint, Path],
                                                             scheme: str) -> None:
    _require_torchao()
    before = tiny.weights_sha256
    res = tamper_lm(tiny, LmTorchaoConfig(scheme, 32))
    assert tiny.weights_sha256 == before and res.lm.model is not tiny.model
    assert res.changed > 0 and res.lm.weights_sha256 != before and 0 < res.max_abs_change < 1
    kinds = {type(m.weight).__name__ for m in res.lm.model.modules() if isinstance(m, torch.nn.Linear)}
    assert kinds == {"Int8Tensor" if scheme == "int8-weight" else "IntxUnpackedToInt8Tensor"}  # torchao's own
    r = verify_lm(tiny_fp[1], LocalCompletions(res.lm), spec="logprobs:5")
    assert r.verdict == "TAMPERED"


def test_torchao_config_refuses() -> None:
    with pytest.raises(ValueError, match="scheme"):
        LmTorchaoConfig("int3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group_size"):
        LmTorchaoConfig(group_size=0)


def test_torchao_group_size_must_divide_the_layers(tiny: Any) -> None:
    _require_torchao()
    with pytest.raises(ValueError, match="divides every linear layer's input width"):
        tamper_lm(tiny, LmTorchaoConfig("int4-weight", 24))


def test_system_prompt_is_caught_through_a_chat_target(tiny: Any, tiny_fp: tuple[LmFingerprint, Path]) -> None:
    res = tamper_lm(tiny, LmSystemPromptConfig())
    assert res.changed == 0 and res.system_prompt
    assert verify_lm(tiny_fp[1], LocalCompletions(tiny, chat=True), spec="logprobs:5").verdict == "INTACT"
    r = verify_lm(tiny_fp[1], LocalCompletions(res.lm, chat=True, system_prompt=res.system_prompt), spec="logprobs:5")
    assert r.verdict == "TAMPERED"


def test_registry_lists_and_builds() -> None:
    names = [n for n, _, _ in list_lm_attacks()]
    assert {"lm-cast", "lm-quantize", "lm-finetune", "lm-lora", "lm-sibling", "lm-system-prompt",
            "lm-torchao"} <= set(names)
    assert lm_attack("lm-quantize", bits=4).bits == 4
    with pytest.raises(ValueError, match="expected an LM attack"):
        lm_attack("nope")
    with pytest.raises(ValueError, match="bits"):
        LmQuantizeConfig(bits=1)


# --- command line -------------------------------------------------------------------------


def test_classifier_fingerprint_still_needs_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from veriprint.cli.main import main

    assert main(["fingerprint", "--model", "veriprint.zoo:digits_mlp", "--out", str(tmp_path / "x.vpf")]) == 2
    assert "expected --data" in capsys.readouterr().err


def test_cli_verify_and_inspect_an_lm_file(tiny_fp: tuple[LmFingerprint, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from veriprint.cli.main import main

    tiny_dir = tmp_path / "tiny"
    lm = tiny_lm(0)
    lm.model.save_pretrained(tiny_dir)
    lm.tokenizer.save_pretrained(tiny_dir)
    assert main(["verify", str(tiny_fp[1]), "--target", str(tiny_dir), "--spec", "logprobs:5",
                 "--report", str(tmp_path / "r.json")]) == 0
    assert "INTACT" in capsys.readouterr().out and (tmp_path / "r.json").is_file()
    assert main(["verify", str(tiny_fp[1]), "--target", "fortunes-lm"]) == 1
    assert main(["verify", str(tiny_fp[1]), "--target", str(tmp_path / "none")]) == 2
    assert main(["inspect", str(tiny_fp[1])]) == 0
    out = capsys.readouterr().out
    assert "kind: language model" in out and "tokenizer sha256" in out


@pytest.mark.slow
def test_cli_fingerprint_of_the_shipped_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from veriprint.cli.main import main

    out = tmp_path / "lm.vpf"
    assert main(["fingerprint", "--model", "fortunes-lm", "--out", str(out), "--prompts", "6",
                 "--search-steps", "2", "--max-tokens", "2"]) == 0
    assert "6 prompts" in capsys.readouterr().out or len(LmFingerprint.load(out)) <= 6
    assert main(["verify", str(out), "--target", "fortunes-lm", "--spec", "logprobs:5"]) == 0
    assert main(["verify", str(out), "--target", "fortunes-lm-sibling", "--spec", "logprobs:5"]) == 1


def test_cli_verify_through_an_openai_url(tiny_fp: tuple[LmFingerprint, Path], monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The URL path builds ``veriprint.targets.openai``'s targets with the served model's name and
    the transport options; a stand-in module of the same shape answers with the tiny model."""
    import sys
    import types

    seen: dict[str, Any] = {}

    class Completions:
        def __init__(self, base_url: str, model: str, *, options: Any = None) -> None:
            seen.update(url=base_url, model=model, options=options, chat=type(self).__name__ == "Chat")
            self.inner = LocalCompletions(tiny_lm(0))
            self.description = f"stand-in({base_url})"

        def complete(self, prompts: Any, *, max_tokens: int, logprobs: int | None = None) -> Any:
            return self.inner.complete(prompts, max_tokens=max_tokens, logprobs=logprobs)

        def models(self) -> list[str]:
            return list(listed)

    class Chat(Completions):
        pass

    listed = ["tiny"]

    fake = types.ModuleType("veriprint.targets.openai")
    fake.OpenAICompletions = Completions  # type: ignore[attr-defined]
    fake.OpenAIChat = Chat  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "veriprint.targets.openai", fake)
    import veriprint.targets

    monkeypatch.setattr(veriprint.targets, "openai", fake, raising=False)
    from veriprint.cli.main import main

    assert main(["verify", str(tiny_fp[1]), "--target", "http://127.0.0.1:9/v1", "--served-model", "tiny",
                 "--spec", "logprobs:5", "--timeout", "5"]) == 0
    assert "INTACT" in capsys.readouterr().out
    assert seen["model"] == "tiny" and not seen["chat"] and seen["options"].timeout == 5
    # without --served-model, the one model the server lists (not the URL's last part, "v1")
    assert main(["verify", str(tiny_fp[1]), "--target", "http://127.0.0.1:9/v1", "--api", "chat"]) == 0
    assert seen["model"] == "tiny" and seen["chat"]
    listed[:] = ["tiny", "other"]
    capsys.readouterr()
    assert main(["verify", str(tiny_fp[1]), "--target", "http://127.0.0.1:9/v1"]) == 2
    out = capsys.readouterr().out
    assert "INCONCLUSIVE" in out and "expected --served-model" in out and "'other'" in out


def test_benchmark_report_renders_from_its_numbers() -> None:
    import json

    from benchmarks.studies.lm_tampers import render

    row = {"tamper": "t", "changed": 3, "total": 10, "max_abs_change": 0.1,
           "top1-token": {"verdict": "TAMPERED", "mismatches": 1, "compared": 2, "border": 1, "sensitive": 0},
           "logprobs:5": {"verdict": "TAMPERED", "mismatches": 2, "compared": 2, "border": 1, "sensitive": 1}}
    rep = {"prompts": 2, "border": 1, "sensitive": 1, "max_tokens": 4, "seconds": 1.0, "stages": {"search": 0.5},
           "peak_rss_mib": 1.0, "peak_python_mib": 0.1, "floor": 1e-4, "machine": "m", "rows": [row],
           "false_alarm_checks": 3, "false_alarms": {"top1-token": 0, "logprobs:5": 0}}
    text = render(json.loads(json.dumps(rep)))
    assert "| t | 3 / 10 | TAMPERED | 1 / 2 (1/0) | TAMPERED | 2 / 2 (1/1) |" in text
    assert "false alarms over 3 checks" in text


def test_an_edited_shipped_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import veriprint.lm.model as model_module

    root = tmp_path / "lm"
    shutil.copytree(ASSETS, root)
    weights = root / "fortunes-lm" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(model_module, "ASSETS", root)
    with pytest.raises(ModelError, match="is not the manifest's"):
        load_lm("fortunes-lm")


def test_noise_floor_of_the_intact_model_is_float_noise(tiny: Any) -> None:
    from veriprint.lm.noise import LM_VARIANTS, calibrate_lm_noise

    seqs = seed_prompts(tiny, shipped_seeds()[:4])
    ref = greedy(tiny, seqs, 2)
    noise = calibrate_lm_noise(tiny, seqs, ref)
    assert noise.variants == LM_VARIANTS
    assert noise.logit < 1e-4 and noise.margin < 1e-4 and noise.floor == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="variants"):
        calibrate_lm_noise(tiny, seqs, ref, variants=("gpu",))


def test_chat_fingerprint_answers_as_a_chat_api(tiny: Any, tmp_path: Path) -> None:
    cfg = dataclasses.replace(SMALL, prompts=2, chat=True)
    fp = make_lm_fingerprint(tiny, cfg, seeds=shipped_seeds()[:4]).save(tmp_path / "chat.vpf")
    assert fp.meta["api"] == "chat"
    assert verify_lm(fp, LocalCompletions(tiny, chat=True), spec="logprobs:5").verdict == "INTACT"
    assert verify_lm(fp, LocalCompletions(tiny, chat=True, system_prompt="Be brief."),
                     spec="logprobs:5").verdict == "TAMPERED"


def test_builder_config_refuses() -> None:
    for bad in ({"prompts": 0}, {"max_tokens": 5}, {"border_share": 2.0}, {"border_factor": 20.0}):
        with pytest.raises(ValueError, match="expected"):
            LmFingerprintConfig(**bad)  # type: ignore[arg-type]


def test_cli_refuses_bad_lm_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from veriprint.cli.main import main

    assert main(["fingerprint", "--model", "fortunes-lm", "--out", str(tmp_path / "x.vpf"), "--max-tokens", "9"]) == 2
    assert "max_tokens" in capsys.readouterr().err
    assert not (tmp_path / "x.vpf").exists()


def test_tamper_list_names_the_language_model_attacks_too() -> None:
    from veriprint.cli.tamper import render_list
    from veriprint.lm.tamper import list_lm_attacks

    text = render_list()
    assert "Language-model attacks" in text
    for name, _, settings in list_lm_attacks():
        assert f"  {name} " in text
        for key in settings:
            assert f"{key}=" in text


# --- enrollment -----------------------------------------------------------------------------
# A small pool of the shipped model (6 prompts, 2 tokens each) made once; the deployments
# are local completions targets: the model itself, a bfloat16 copy (lm-cast), its sibling
# checkpoint (lm-sibling), and a server whose logprobs move between calls.


@pytest.fixture(scope="module")
def fortunes() -> Any:
    return load_lm("fortunes-lm")


@pytest.fixture(scope="module")
def fortunes_pool(fortunes: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[LmFingerprint, Path]:
    cfg = LmFingerprintConfig(prompts=6, steps=1, candidates=8, top_k=4, max_tokens=2)
    fp = make_lm_fingerprint(fortunes, cfg, seeds=shipped_seeds()[:8])
    path = tmp_path_factory.mktemp("lm-enroll") / "pool.vpf"
    return fp.save(path), path


@pytest.fixture(scope="module")
def bf16(fortunes: Any) -> LocalCompletions:
    return LocalCompletions(tamper_lm(fortunes, LmCastConfig("bfloat16")).lm)


@pytest.fixture(scope="module")
def sibling(fortunes: Any) -> LocalCompletions:
    from veriprint.lm.tamper import LmSiblingConfig

    return LocalCompletions(tamper_lm(fortunes, LmSiblingConfig()).lm)


class _Jittery:
    """The model behind a server whose logprobs of ``prompts`` move by +/- ``shift`` on
    alternate asks (every listed token alike, so the greedy tokens stay)."""

    description = "jittery"

    def __init__(self, inner: LocalCompletions, prompts: list[str], shift: float) -> None:
        self.inner, self.prompts, self.shift = inner, set(prompts), shift
        self.asked: dict[str, int] = {}

    def complete(self, prompts: Any, *, max_tokens: int, logprobs: int | None = None) -> Any:
        out = []
        for p, c in zip(prompts, self.inner.complete(prompts, max_tokens=max_tokens, logprobs=logprobs), strict=True):
            k = self.asked[p] = self.asked.get(p, 0) + 1
            if p in self.prompts and c.top_logprobs:
                s = self.shift if k % 2 else -self.shift
                c = dataclasses.replace(c, top_logprobs=[{t: min(0.0, v + s) for t, v in d.items()}
                                                         for d in c.top_logprobs])
            out.append(c)
        return out


def test_enroll_a_bfloat16_lm_deployment_under_logprobs(fortunes: Any, fortunes_pool: tuple[LmFingerprint, Path],
                                                        bf16: LocalCompletions, sibling: LocalCompletions) -> None:
    from veriprint.enrollment import LmEnrollmentReport, enroll

    pool, _ = fortunes_pool
    assert verify_lm(pool, bf16, spec="logprobs:5").verdict == "TAMPERED"  # why it needs enrolling
    rep = enroll(pool, bf16, spec="logprobs:5", tolerance=0.3, rounds=3, keep=4)
    assert isinstance(rep, LmEnrollmentReport) and 1 <= rep.kept <= 4 and rep.queries == 3 * len(pool)
    fp = rep.fingerprint
    info = fp.meta["enrollment"]
    assert info["expected_from"] == "endpoint" and info["logprobs_stored"] == 6 and info["spec"] == "logprobs:5"
    assert info["pool"]["sha256"] == pool.sha256 and info["kept"] == len(fp) == rep.kept
    assert fp.tensors["top_logprobs"].shape[2] == 6 and fp.meta["subset_of"]["size"] == len(pool)
    kept = fp.meta["subset_of"]["indices"]
    assert fp.prompts == [pool.prompts[i] for i in kept] and fp.meta["tokens"] == [pool.meta["tokens"][i] for i in kept]
    served = bf16.complete(fp.prompts, max_tokens=2, logprobs=1)
    assert [float(fp.tensors["top_logprobs"][j, 0, 0]) for j in range(len(fp))] == pytest.approx(
        [next(iter(c.top_logprobs[0].values())) for c in served], abs=1e-6)  # the deployment's own logprobs
    assert "prompts kept" in rep.summary()
    for batch in (1, 3):
        r = verify_lm(fp, LocalCompletions(bf16.lm, batch_size=batch), spec="logprobs:5", max_batch=batch)
        assert r.verdict == "INTACT", r.reason
    assert verify_lm(fp, LocalCompletions(fortunes), spec="logprobs:5").verdict == "TAMPERED"  # float32 is not it
    assert verify_lm(fp, sibling, spec="logprobs:5").verdict == "TAMPERED"
    with pytest.raises(ConfigError, match="below the 6 logprobs per token"):
        verify_lm(fp, bf16, spec="logprobs:6")


def test_enroll_refuses_an_lm_deployment_beyond_the_tolerance(fortunes_pool: tuple[LmFingerprint, Path],
                                                              bf16: LocalCompletions,
                                                              sibling: LocalCompletions) -> None:
    from veriprint.enrollment import EnrollmentError, enroll

    pool, _ = fortunes_pool
    with pytest.raises(EnrollmentError, match=r"on \d of \d prompts under spec logprobs:5: greedy tokens or logprobs "
                                              r"differ .* has logprob .*, expected .*\(tolerance"):
        enroll(pool, bf16, spec="logprobs:5", rounds=2)
    with pytest.raises(EnrollmentError, match="it may not serve this model") as e:
        enroll(pool, sibling, spec="logprobs:5", tolerance=0.3, rounds=2)
    assert e.value.details["disagreeing"] and e.value.details["spec"] == "logprobs:5"
    with pytest.raises(EnrollmentError, match=r"greedy tokens differ where the local margin clears the floor.*token 0"):
        enroll(pool, sibling, rounds=2)
    for kw, msg in (({"model": torch.nn.Linear(1, 1)}, "no local model"), ({"prob_tolerance": 0.1}, "prob_tolerance"),
                    ({"output": "probs"}, "target options"), ({"spec": "logprobs:10"}, "logprobs:K"),
                    ({"spec": "top1"}, "unknown LM output spec"), ({"rounds": 1}, "rounds")):
        with pytest.raises(ConfigError, match=msg):
            enroll(pool, bf16, **kw)


def test_enroll_lm_under_top1_token_keeps_the_local_answers(fortunes_pool: tuple[LmFingerprint, Path],
                                                            bf16: LocalCompletions) -> None:
    from veriprint.enrollment import enroll

    pool, _ = fortunes_pool
    rep = enroll(pool, bf16, spec="top1-token", tolerance=0.05, rounds=2)
    fp = rep.fingerprint
    kept = fp.meta["subset_of"]["indices"]
    assert torch.equal(fp.tensors["top_logprobs"], pool.tensors["top_logprobs"][kept])  # nothing revealed them
    info = fp.meta["enrollment"]
    assert info["expected_from"] == "local model (tokens agree)" and fp.noise.floor >= 0.1
    assert all(float(fp.tensors["margins"][j, 0]) >= fp.noise.floor for j in range(len(fp)))
    assert info["serves"] == ["top1-token"] and "floor" in info["grown"]  # the declared tolerance widened the floor
    assert verify_lm(fp, bf16, spec="top1-token").verdict == "INTACT"
    with pytest.raises(ConfigError, match="expected a spec this enrolled fingerprint serves"):
        verify_lm(fp, bf16, spec="text")


def test_enroll_lm_drops_prompts_a_deployment_answers_unstably(fortunes: Any,
                                                               fortunes_pool: tuple[LmFingerprint, Path]) -> None:
    from veriprint.enrollment import enroll

    pool, _ = fortunes_pool
    flaky = pool.prompts[:2]
    rep = enroll(pool, _Jittery(LocalCompletions(fortunes), flaky, 0.15), spec="logprobs:3", tolerance=0.2, rounds=4)
    states = {c.prompt: c.why for c in rep.candidates}
    assert all(states[p] == "unstable" for p in flaky) and rep.kept == len(pool) - 2
    assert not set(flaky) & set(rep.fingerprint.prompts) and rep.noise["logprob"] < 1e-3
    target = _Jittery(LocalCompletions(fortunes), flaky, 0.15)
    assert all(verify_lm(rep.fingerprint, target, spec="logprobs:3").verdict == "INTACT" for _ in range(4))
    # a spread within the tolerance on every prompt: all kept, and the floor holds what was measured
    rep = enroll(pool, _Jittery(LocalCompletions(fortunes), pool.prompts, 0.01), spec="logprobs:3", tolerance=0.2,
                 rounds=4)
    fp = rep.fingerprint
    assert rep.kept == len(pool) and rep.noise["logprob"] == pytest.approx(0.02, abs=1e-4)
    assert fp.noise.logit_tolerance >= 0.02 and "logprob" in fp.meta["enrollment"]["grown"]
    target = _Jittery(LocalCompletions(fortunes), pool.prompts, 0.01)
    assert all(verify_lm(fp, target, spec="logprobs:3").verdict == "INTACT" for _ in range(4))


def test_cli_enroll_an_lm_pool_then_verify(fortunes_pool: tuple[LmFingerprint, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from veriprint.cli.main import main

    _, pool = fortunes_pool
    out, report = tmp_path / "enrolled.vpf", tmp_path / "enroll.json"
    assert main(["enroll", str(pool), "--target", "fortunes-lm", "--spec", "logprobs:5", "--rounds", "2",
                 "--keep", "3", "--out", str(out), "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert "3 prompts kept" in text and "--spec logprobs:5" in text
    assert json.loads(report.read_text())["kept"] == 3 and len(LmFingerprint.load(out)) == 3
    assert main(["verify", str(out), "--target", "fortunes-lm", "--spec", "logprobs:5"]) == 0
    assert main(["inspect", str(out)]) == 0
    assert "enrolled:" in capsys.readouterr().out
    assert main(["enroll", str(pool), "--target", "fortunes-lm-sibling", "--rounds", "2",
                 "--out", str(tmp_path / "no.vpf"), "--report", str(report)]) == 2
    assert "enrollment refused" in capsys.readouterr().err and not (tmp_path / "no.vpf").exists()
    assert json.loads(report.read_text())["disagreeing"]
    assert main(["enroll", str(pool), "--target", "fortunes-lm", "--model", "veriprint.zoo:fashion_cnn",
                 "--out", str(tmp_path / "no.vpf")]) == 2
    assert "--model is for a classifier's pool" in capsys.readouterr().err
