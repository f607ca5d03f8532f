"""Configs reach every command one way: dataclass defaults, then --config FILE.toml, then flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from veriprint.cli.common import fingerprint_config, generation_config
from veriprint.cli.main import build_parser, main
from veriprint.errors import ConfigError
from veriprint.pipeline import FingerprintConfig
from veriprint.pipeline.generate import GenerationConfig


def _args(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(["fingerprint", "--model", "m", "--data", "d", "--out", "o", *argv])


def test_defaults_come_from_the_dataclasses_alone() -> None:
    assert fingerprint_config(_args()) == FingerprintConfig()


def test_every_field_is_reachable_from_the_command_line() -> None:
    cfg = fingerprint_config(_args(
        "--bag", "60", "--seeds", "random", "--select", "6", "--selector", "manc", "--neurons", "all",
        "--threshold", "0.5", "--no-refine", "--refine-factor", "3", "--no-twins", "--safety", "20",
        "--min-floor", "1e-5", "--tolerance", "0.01", "--prob-tolerance", "0.001", "--onnx-noise", "--seed", "4",
        "--steps", "7", "--lr", "0.01", "--eps", "0.1", "--norm", "l2", "--objective", "entropy",
        "--params", "fc.weight,fc.bias", "--outputs", "logits", "--no-log-space", "--entropy-k", "3",
        "--batch-size", "9", "--patience", "0", "--min-delta", "0.5", "--ceiling-share", "0.9", "--max-queries", "20"))
    gen = GenerationConfig(steps=7, lr=0.01, eps=0.1, norm="l2", objective="entropy", params=("fc.weight", "fc.bias"),
                           outputs="logits", log_space=False, entropy_k=3, batch_size=9, patience=0, min_delta=0.5)
    assert cfg == FingerprintConfig(bag=60, seeds="random", select=6, selector="manc", neurons="all", threshold=0.5,
                                    refine=False, refine_factor=3.0, twins=False, safety=20.0, min_floor=1e-5,
                                    tolerance=0.01, prob_tolerance=0.001, calibrate_onnx=True, seed=4, generation=gen,
                                    ceiling_share=0.9, max_queries=20)
    # a query budget given alone is exact: no growth towards the bag's ceiling
    assert fingerprint_config(_args("--queries", "6")).ceiling_share == 0.0
    assert fingerprint_config(_args("--queries", "6", "--coverage", "0.9")).ceiling_share == 0.97


def test_help_lists_every_field_with_its_dataclass_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fingerprint", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for cls in (FingerprintConfig, GenerationConfig):
        for name in cls.__dataclass_fields__:
            if name in ("generation", "version"):
                continue
            assert "--" + name.replace("_", "-") in text, name
    assert "--bag BAG natural seeds to generate from (default: 500)" in text


def test_config_file_then_flags(tmp_path: Path) -> None:
    (tmp_path / "fp.toml").write_text('bag = 60\nselector = "random"\ntwins = false\n[generation]\nsteps = 9\n')
    cfg = fingerprint_config(_args("--config", str(tmp_path / "fp.toml"), "--bag", "70"))
    assert (cfg.bag, cfg.selector, cfg.twins, cfg.generation.steps) == (70, "random", False, 9)
    (tmp_path / "typo.toml").write_text("bagg = 60\n")
    with pytest.raises(ConfigError, match="unknown setting bagg"):
        fingerprint_config(_args("--config", str(tmp_path / "typo.toml")))
    (tmp_path / "new.toml").write_text("version = 9\n")
    with pytest.raises(ConfigError, match="reads versions up to 1, got 9"):
        fingerprint_config(_args("--config", str(tmp_path / "new.toml")))
    gen_args = build_parser().parse_args(["generate", "--model", "m", "--data", "d", "--config",
                                          str(tmp_path / "fp.toml"), "--lr", "0.5"])
    assert generation_config(gen_args) == GenerationConfig(steps=9, lr=0.5)


def test_durations_and_sizes_take_the_one_grammar_on_flags_and_in_files(tmp_path: Path) -> None:
    from veriprint.cli.common import target_options
    from veriprint.cli.main import _apply_settings_file

    parser = build_parser()
    argv = ["verify", "fp.vpf", "--target", "http://h/v2/models/m", "--timeout", "2min", "--backoff", "500ms",
            "--max-response-bytes", "64M", "--retry-timeouts"]
    assert target_options(parser.parse_args(argv)) == {"timeout": 120.0, "backoff": 0.5, "retry_timeouts": True,
                                                       "max_response_bytes": 64 * 2**20}
    (tmp_path / "v.toml").write_text('timeout = "1.5s"\nmax_response_bytes = "1GiB"\n')
    argv = ["verify", "fp.vpf", "--target", "http://h/v2/models/m", "--config", str(tmp_path / "v.toml")]
    args = _apply_settings_file(parser, parser.parse_args(argv), argv)
    assert target_options(args) == {"timeout": 1.5, "max_response_bytes": 2**30}
    (tmp_path / "bad.toml").write_text('max_response_bytes = "lots"\n')
    argv[-1] = str(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match=r"max_response_bytes \(as --max-response-bytes\): expected a byte size "
                                          r"\(bytes, or a number and a unit in powers of 1024: .*got 'lots'"):
        _apply_settings_file(parser, parser.parse_args(argv), argv)
    # a fingerprint's time budget takes every unit too, days included (a long run on a CPU), and refuses 0
    assert fingerprint_config(_args("--budget", "1d", "--max-memory", "512MiB")).budget == "1d"
    with pytest.raises(ConfigError, match=r"FingerprintConfig\.budget: expected a time budget of more than 0 seconds"):
        fingerprint_config(_args("--budget", "0ms"))


def test_generate_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "--model", "veriprint.zoo:digits_mlp", "--data", "digits", "--bag", "6", "--steps", "3",
                 "--eps", "0.125", "--out", str(tmp_path / "g.npz")])
    out = capsys.readouterr().out
    assert code == 0 and "6 samples in" in out
    saved = np.load(tmp_path / "g.npz")
    assert saved["samples"].shape[0] == 6 and set(saved) >= {"samples", "seeds", "log_s", "margin", "psnr"}


def test_bad_settings_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "--model", "veriprint.zoo:digits_mlp", "--data", "digits", "--steps", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "GenerationConfig.steps" in err and len(err.strip().splitlines()) == 1
    code = main(["evaluate", "--quick", "--plan", "full"])
    assert code == 2 and "give one of --config, --quick and --plan" in capsys.readouterr().err


def test_every_command_takes_a_settings_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in commands.items():
        assert any("--config" in a.option_strings for a in sub._actions), name
    (tmp_path / "t.toml").write_text("list = true\n")
    assert main(["tamper", "--config", str(tmp_path / "t.toml")]) == 0
    assert "The paper's attacks" in capsys.readouterr().out
    (tmp_path / "typo.toml").write_text("lst = true\n")
    assert main(["tamper", "--config", str(tmp_path / "typo.toml")]) == 2
    err = capsys.readouterr().err
    assert "unknown setting lst for `veriprint tamper`" in err and len(err.strip().splitlines()) == 1


def test_evaluate_command_runs_a_tiny_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "tiny.toml"
    plan.write_text(
        'name = "tiny"\npool = 20\nbag = 10\nbags = 5\nn_max = 8\nns = [1, 8]\nspecs = ["top1"]\n'
        '[[models]]\nname = "d"\nfactory = "veriprint.zoo:digits_mlp"\ndata = "digits"\nepochs = 2\neps = 0.125\n'
        '[[methods]]\nname = "natural"\nkind = "natural"\nsteps = 0\n'
        '[[attacks]]\nname = "w"\nmodel = "d"\nattack = "weight-edit"\nparams = { layer = "7.weight" }\n'
    )
    code = main(["evaluate", "--config", str(plan), "--out", str(tmp_path / "out"), "--workers", "1",
                 "--no-progress"])
    assert code == 0, capsys.readouterr()
    assert (tmp_path / "out" / "report.md").stat().st_size > 0
