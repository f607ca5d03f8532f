"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse
import os
from typing import Any

from veriprint.units import bytes_flag, duration_flag


def add_model_arguments(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--model", required=required,
                   help="model: package.module:factory, file.py:factory, .pt2, TorchScript or .onnx file")
    p.add_argument("--weights", default=None, help="weights for a factory model (.safetensors or state-dict .pt)")
    p.add_argument("--model-outputs", choices=["logits", "probs"], default="logits",
                   help="what the model returns (probs when its last op is a softmax)")


def add_data_arguments(p: argparse.ArgumentParser, *, default: str | None = None,
                       required: bool | None = None) -> None:
    p.add_argument("--data", default=default, required=default is None if required is None else required,
                   help="natural inputs: fashion-mnist, mnist-5k, digits, an .npz file or an image folder")
    p.add_argument("--split", choices=["train", "test"], default="test", help="split of a built-in data set")
    p.add_argument("--range", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                   help="input range of user data (default: the data set's, else 0 1)")
    p.add_argument("--levels", type=int, default=None,
                   help="quantization levels of user data (default: the data set's, else 255)")


GENERATION_HELP = {
    "steps": "ascent steps (the paper's itr_max)",
    "lr": "Adam learning rate (input units)",
    "eps": "radius of the ball around each seed (input units)",
    "norm": "norm of the ball",
    "objective": "ssf: the paper's sensitivity (Eq. 6); entropy: IBSF top-k entropy",
    "params": "parameters of interest: last, all, or comma-separated names/globs",
    "outputs": "f in Eq. 6",
    "log_space": "ascend log S (keeps its scale on saturated models)",
    "entropy_k": "k of the entropy objective",
    "batch_size": "samples optimized together (bounds memory)",
    "patience": "stop a chunk after this many steps without improvement (0: never)",
    "min_delta": "improvement that resets the patience counter",
}

FINGERPRINT_HELP = {
    "bag": "natural seeds to generate from",
    "seeds": "boundary: the smallest margins, balanced over classes (with refinement); random: as the paper",
    "select": "the query budget: samples the fingerprint keeps, pairs counting two (N_S; --select is the same); "
              "given alone it is exact (no --ceiling-share growth), else the minimum",
    "selector": "reach: samples whose labels reveal the smallest change of every parameter tensor; "
                "manc: the paper's; random; tamper-aware: covers simulated small changes",
    "coverage": "add queries (greedily by reach, at least --queries) until this predicted share of +-5%% "
                "single-parameter changes is revealed, e.g. 0.95; the cap or the bag's ceiling may stop it first",
    "ceiling_share": "without --coverage, add queries (greedily by reach, at least --queries) until their predicted "
                     "coverage is this share of what the whole bag reveals (0: exactly --queries)",
    "max_queries": "most queries --coverage, --ceiling-share and --cover-classes may grow the fingerprint to",
    "cover_classes": "for models with up to 16 classes, add pairs until every class labels a query "
                     "(a top-1 query reveals a decrease of its own label's logit only)",
    "neurons": "MANC's neurons of interest",
    "threshold": "MANC's activation threshold",
    "refine": "refine samples to just above the noise floor (helps label-only APIs)",
    "refine_factor": "refinement target as a multiple of the floor",
    "twins": "store pairs across the decision boundary (else single refined samples)",
    "safety": "factor on the measured noise",
    "min_floor": "smallest margin floor in logits",
    "tolerance": "extra logit noise the deployment may add (GPU, TF32, float16 serving)",
    "prob_tolerance": "extra probability noise likewise",
    "calibrate_onnx": "include onnxruntime in the noise calibration",
    "seed": "seed for drawing the bag and for random selection",
    "pool": "natural inputs examined to draw boundary seeds (0: 20 per seed, up to the data or 20,000)",
    "views": "natural views added when the data is smaller than the bag: auto (shifts; mirrors of colour "
             "images), shifts, shifts+flips, none",
    "budget": "time budget for the run (a duration: 90s, 10m or 10min, 1.5h, 1d; auto: 10 min on a CPU, 60 s on an accelerator; none): "
              "bag, pool and steps are ceilings the plan trims to fit, a run that fits is unchanged",
    "max_memory": "memory for one backward pass's tensors, which caps the batch (a byte size: 512M, 2G, "
                  "2.5GiB; auto: 1G, "
                  "at most 40%% of the machine's; on a GPU, 40%% of its memory)",
    "device": "device the deployment runs on (cpu, cuda, cuda:N): the whole pipeline runs there, and the "
              "expected outputs and floor are computed there",
    "precision": "the deployment's numerics: expected outputs and floor computed under them, pairs moved onto its boundary",
    "floor": "fixed: never below --min-floor; measured: safety x measured noise, down to 2 units of resolution",
}


def add_config_file_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="settings in TOML with the same names as the flags (underscores; a [generation] "
                        "table for generation settings); flags given on the command line win")


def add_generation_arguments(p: argparse.ArgumentParser) -> list[str]:
    """Flags for every :class:`~veriprint.pipeline.generate.GenerationConfig` field; returns their names."""
    from veriprint.configs import add_dataclass_arguments
    from veriprint.pipeline.generate import GenerationConfig

    group = p.add_argument_group("generation (Algorithm 1)")
    return add_dataclass_arguments(group, GenerationConfig, help=GENERATION_HELP)


def add_fingerprint_arguments(p: argparse.ArgumentParser) -> list[str]:
    """Flags for every :class:`~veriprint.pipeline.config.FingerprintConfig` field."""
    from veriprint.configs import add_dataclass_arguments
    from veriprint.pipeline.config import FingerprintConfig

    group = p.add_argument_group("fingerprint")
    return add_dataclass_arguments(group, FingerprintConfig, help=FINGERPRINT_HELP,
                                   aliases={"calibrate_onnx": ("--onnx-noise",), "select": ("--queries",)})


def _file_settings(args: argparse.Namespace) -> dict[str, Any]:
    from veriprint.configs import load_toml

    return load_toml(args.config) if getattr(args, "config", None) else {}


def _generation_from(settings: dict[str, Any], args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from veriprint.configs import from_mapping, set_values
    from veriprint.pipeline.generate import GenerationConfig

    values = {**settings, **set_values(args, list(GENERATION_HELP))}
    text = values.get("params")
    if isinstance(text, str) and text not in ("last", "all"):
        values["params"] = tuple(s.strip() for s in text.split(",") if s.strip())
    return from_mapping(GenerationConfig, values)


def generation_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The :class:`GenerationConfig` of ``--config`` (its ``[generation]`` table, or the top
    level) and the flags given."""
    settings = _file_settings(args)
    table = settings.get("generation", settings)
    return _generation_from(dict(table) if isinstance(table, dict) else {}, args)


def fingerprint_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The :class:`FingerprintConfig` of ``--config`` and the flags given (flags win)."""
    from veriprint.configs import from_mapping, set_values
    from veriprint.errors import ConfigError
    from veriprint.pipeline.config import FingerprintConfig

    settings = _file_settings(args)
    gen = settings.pop("generation", {})
    if not isinstance(gen, dict):
        raise ConfigError(f"--config: expected [generation] to be a table, got {type(gen).__name__}")
    if "queries" in settings:  # the user-facing name of ``select``
        queries = settings.pop("queries")
        if "select" in settings and settings["select"] != queries:
            raise ConfigError(f"--config: queries ({queries!r}) and select ({settings['select']!r}) name the same "
                              "setting; give one")
        settings["select"] = queries
    values = {**settings, **set_values(args, list(FINGERPRINT_HELP))}
    if "select" in values and "coverage" not in values and "ceiling_share" not in values:
        values["ceiling_share"] = 0.0  # N queries asked for: N (and class coverage), not grown to the ceiling
    values["generation"] = _generation_from(gen, args)
    return from_mapping(FingerprintConfig, values)


def load_data_from(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from veriprint.data import InputDomain, load_data

    domain = None
    if args.range is not None or args.levels is not None:
        lo, hi = args.range if args.range is not None else (0.0, 1.0)
        domain = InputDomain(lo, hi, args.levels if args.levels is not None else 255)
    return load_data(args.data, split=args.split, domain=domain)


TRANSPORT_HELP = {
    "timeout": "time per request, whole: connect, TLS, headers and body (a duration: 30, 30s, 500ms, 2min)",
    "retries": "further attempts after a failure that is safe to retry",
    "backoff": "time before the first retry, doubled for each next one (a duration)",
    "retry_timeouts": "also retry requests that timed out (the server may have run them)",
    "verify_tls": "check the server's certificate and host name",
    "ca_file": "PEM bundle of trusted certificates; none: the system's",
    "auth_env": "name of an environment variable holding the auth header value (never the value itself)",
    "auth_header": "header that carries it",
    "max_response_bytes": "largest answer read (a byte size: 1000000, 64M, 1GiB)",
}


#: The parser of each transport option given as text (a flag or a ``--config`` value).
TRANSPORT_TYPES = {"timeout": duration_flag, "backoff": duration_flag, "max_response_bytes": bytes_flag}


def add_target_arguments(p: argparse.ArgumentParser, *, max_batch: bool = True) -> None:
    """The flags that say how to reach a target: its output form, request size, tensor
    names, datatype, TLS, ``--config`` and every transport option (from
    :class:`~veriprint.targets.transport.TransportOptions`)."""
    from veriprint.configs import add_dataclass_arguments
    from veriprint.targets.transport import TransportOptions

    p.add_argument("--output", default=None, choices=["logits", "probs", "labels", "topk", "top1-prob"],
                   help="what the target returns (default: logits for local models)")
    if max_batch:
        p.add_argument("--max-batch", type=positive_int, default=None, help="most samples per request (>= 1)")
    p.add_argument("--input-name", default=None, help="input tensor name (remote targets)")
    p.add_argument("--output-name", default=None, help="output tensor name (remote targets)")
    p.add_argument("--datatype", default=None, choices=["FP32", "UINT8"], help="input datatype (remote targets)")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates (as --no-verify-tls)")
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="defaults for this command's options (transport settings included), in TOML with the "
                        "flags' names (underscores); each value is parsed as its flag's; flags given win")
    p.set_defaults(_settings_parser=p)
    add_dataclass_arguments(p.add_argument_group("transport (remote targets)"), TransportOptions,
                            help=TRANSPORT_HELP, types=TRANSPORT_TYPES)


def target_options(args: argparse.Namespace, *, include_max_batch: bool = False) -> dict[str, Any]:
    """The target options of :func:`add_target_arguments`'s flags and ``--config``: only
    what was set."""
    from veriprint.configs import set_values
    from veriprint.targets.transport import TransportOptions

    # a --config file's values are already the flags' defaults (veriprint.cli.main), parsed
    # by each flag's own type: the file is not read again here
    options: dict[str, Any] = set_values(args, list(TransportOptions.__dataclass_fields__))
    names = ["input_name", "output_name", "datatype", "output"] + (["max_batch"] if include_max_batch else [])
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    if args.insecure:
        options["verify_tls"] = False
    return options


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def same_file(a: str, b: str | None) -> bool:
    if not b:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def write_report(path: str, text: str) -> None:
    """Write the report atomically (a half-written report is never left behind)."""
    target = os.path.abspath(path)
    tmp = f"{target}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
