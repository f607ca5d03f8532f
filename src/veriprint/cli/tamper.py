"""``veriprint tamper``: run one integrity attack and write the tampered model.

The output has the input's form where possible: a factory model gets ``.safetensors``
weights (load with ``--model FACTORY --weights OUT``), a ``.pt2`` model a ``.pt2``; any
other model (TorchScript, ONNX) becomes a ``torch.export`` archive (``.pt2``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from veriprint.cli.common import add_model_arguments

HELP = "tamper with a model: the paper's integrity attacks and BIVBench's tampering types"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list", action="store_true", help="list every attack with its parameters and defaults")
    add_model_arguments(p, required=False)
    p.add_argument("--attack", default=None, help="attack name (see --list)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="attack parameter (repeatable); nested attack configs as attack=NAME, attack.NAME=VALUE")
    p.add_argument("--data", default=None,
                   help="attacker's data: fashion-mnist, mnist-5k, digits (train split; measured on the test "
                        "split), an .npz file or an image folder")
    p.add_argument("--limit", type=int, default=None, help="use only the first LIMIT samples of the attacker's data")
    p.add_argument("--eval-data", default=None,
                   help="labelled data for the reported measures (default: the test split of a built-in "
                        "data set, else --data)")
    p.add_argument("--eval-limit", type=int, default=None, help="use only the first EVAL_LIMIT evaluation samples")
    p.add_argument("--out", default=None, help="where to write the tampered model (.safetensors or .pt2)")
    p.add_argument("--report", default=None, help="write the attack report as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        from veriprint.tamper import attack_info

        return attack_info(value).name
    return repr(value) if isinstance(value, str) else str(value)


def render_list() -> str:
    """Every attack with its parameters and defaults, grouped by family (pure)."""
    from veriprint.tamper import list_attacks

    titles = {"paper": "The paper's attacks (He, Zhang, Lee, CVPR 2019)", "bivbench": "BIVBench tampering types",
              "subtle": "Further subtle changes"}
    lines: list[str] = []
    family = None
    for info in list_attacks():
        if info.family != family:
            if lines:
                lines.append("")
            family = info.family
            lines.append(f"{titles[family]}:")
        lines.append(f"  {info.name:<22} {info.summary}")
        config = info.config_type()
        params = " ".join(f"{f.name}={_fmt(getattr(config, f.name))}" for f in dataclasses.fields(config))
        lines += textwrap.wrap(params, width=100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    from veriprint.lm.tamper import list_lm_attacks

    lines += ["", "Language-model attacks (in the library: veriprint.lm.tamper.tamper_lm; measured by "
                  "benchmarks.studies.lm_tampers):"]
    for name, summary, settings in list_lm_attacks():
        lines.append(f"  {name:<22} {summary}")
        params = " ".join(f"{k}={_fmt(v)}" for k, v in settings.items())
        lines += textwrap.wrap(params, width=100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def _parse_scalar(text: str, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        for choice in typing.get_args(hint):
            if str(choice) == text:
                return choice
        raise ValueError(f"expected one of {list(typing.get_args(hint))}, got {text!r}")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if type(None) in options and text.lower() in ("none", "null"):
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _parse_scalar(text, option)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if hint is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if hint is float:
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                return float(num) / float(den)
            return float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"expected a number, got {text!r}") from None
    if hint is str:
        return text
    raise ValueError(f"cannot parse {text!r} as {hint}")


def build_config(name: str, params: list[str]) -> object:
    """The config of attack ``name`` with ``NAME=VALUE`` overrides (nested: ``attack.NAME``)."""
    from veriprint.tamper import attack_info

    info = attack_info(name)
    hints = typing.get_type_hints(info.config_type)
    fields = {f.name for f in dataclasses.fields(info.config_type)}
    top: dict[str, str] = {}
    nested: dict[str, list[str]] = {}
    for item in params:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"expected --param NAME=VALUE, got {item!r}")
        head, dot, rest = key.partition(".")
        if head not in fields:
            raise ValueError(f"attack {name!r} has no parameter {head!r}; it has {sorted(fields)}")
        if dot:
            nested.setdefault(head, []).append(f"{rest}={value}")
        else:
            top[head] = value
    kwargs: dict[str, Any] = {}
    defaults = info.config_type()
    for key in fields:
        hint = hints[key]
        if hint is object:  # a nested attack config
            if key not in top and key not in nested:
                continue
            inner = top.get(key) or attack_info(getattr(defaults, key)).name
            kwargs[key] = build_config(inner, nested.get(key, []))
        elif key in nested:
            raise ValueError(f"parameter {key!r} of {name!r} is not a nested config")
        elif key in top:
            try:
                kwargs[key] = _parse_scalar(top[key], hint)
            except ValueError as e:
                raise ValueError(f"--param {key}: {e}") from None
    return info.config_type(**kwargs)


def _load_data(args: argparse.Namespace) -> tuple[Any, Any]:
    from veriprint.data import BUILTIN_DATASETS, load_data

    builtin = args.data in BUILTIN_DATASETS
    data = load_data(args.data, split="train" if builtin else "test", limit=args.limit)
    if args.eval_data is not None:
        eval_data = load_data(args.eval_data, split="test", limit=args.eval_limit)
    elif builtin:
        eval_data = load_data(args.data, split="test", limit=args.eval_limit)
    else:
        eval_data = data if args.eval_limit is None else data.subset(slice(0, args.eval_limit))
    return data, eval_data


def save_tampered(model: Any, source: str, out: Path, example: Any) -> str:
    """Write ``model`` in the form of ``source`` where possible; return how to load it."""
    import torch

    from veriprint.models import save_weights

    is_factory = ":" in source and not Path(source).exists()
    if is_factory and out.suffix != ".pt2":
        save_weights(model, out)
        return f"--model {source} --weights {out}"
    if out.suffix != ".pt2":
        raise ValueError(f"expected --out to end in .pt2 for a {Path(source).suffix or 'file'} model, got {out}")
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example[:2],), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(out))
    return f"--model {out}"


def summary(report: Any, data_name: str, n_eval: int) -> str:
    """A few lines describing an attack report (pure)."""
    lines = [
        f"attack {report.attack}: clean accuracy {report.clean_accuracy_before:.2%} -> "
        f"{report.clean_accuracy_after:.2%} on {data_name} ({n_eval} samples)",
    ]
    if report.success is not None:
        value = report.success
        if report.success_name == "compression":
            shown = f"{value:.2f}x"
        elif abs(value) <= 1:
            shown = f"{value:.2%}"
        else:
            shown = f"{value:.6g}"
        lines.append(f"  {report.success_name}: {shown}")
    if report.size_saving is not None:
        lines.append(f"  size saving: {report.size_saving:.1%}")
    lines.append(
        f"  changed {report.changed_params} of {report.total_params} weights "
        f"(L2 {report.l2_change:.4g}, max {report.max_abs_change:.4g}); top-1 flips {report.flip_rate:.2%}; "
        f"{report.seconds:.1f} s"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(render_list())
        return 0
    missing = [flag for flag, value in (("--model", args.model), ("--attack", args.attack), ("--data", args.data),
                                        ("--out", args.out)) if value is None]
    if missing:
        print(f"error: tamper needs {', '.join(missing)} (or --list)", file=sys.stderr)
        return 2

    from veriprint.models import load_model
    from veriprint.tamper import tamper

    config = build_config(args.attack, args.param)
    model = load_model(args.model, weights=args.weights)
    data, eval_data = _load_data(args)
    result = tamper(model, config, data=data, eval_data=eval_data, progress=not args.no_progress)
    out = Path(args.out)
    how = save_tampered(result.model, args.model, out, data.x)
    print(summary(result.report, eval_data.name, len(eval_data)))
    print(f"wrote {out} (load with {how})")
    if args.report:
        payload = {"model": args.model, "weights": args.weights, "data": args.data, "out": str(out),
                   **result.report.to_dict()}
        Path(args.report).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.report}")
    return 0
