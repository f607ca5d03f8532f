"""``veriprint verify``: check a deployed model against a fingerprint (exit 0 intact, 1 tampered, 2 otherwise)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

TRANSPORT_HELP = {
    "timeout": "seconds per request, whole: connect, TLS, headers and body",
    "retries": "further attempts after a failure that is safe to retry",
    "backoff": "seconds before the first retry, doubled for each next one",
    "retry_timeouts": "also retry requests that timed out (the server may have run them)",
    "verify_tls": "check the server's certificate and host name",
    "ca_file": "PEM bundle of trusted certificates; none: the system's",
    "auth_env": "name of an environment variable holding the auth header value (never the value itself)",
    "auth_header": "header that carries it",
    "max_response_bytes": "largest answer read",
}

HELP = "query a target with a fingerprint; exit 0 INTACT, 1 TAMPERED, 2 INCONCLUSIVE or error"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("fingerprint", help="the .vpf file")
    p.add_argument("--target", required=True,
                   help="model file or factory, .onnx (onnxruntime), or a server URL (see docs/serving.md)")
    p.add_argument("--weights", default=None, help="weights for a factory target")
    p.add_argument("--spec", default="top1",
                   help="what the API reveals: top1, topk:K, probs, probs:N, top1-prob:N, logits")
    p.add_argument("--output", default=None, choices=["logits", "probs", "labels", "topk", "top1-prob"],
                   help="what the target returns (default: logits for local models)")
    p.add_argument("--max-batch", type=_positive_int, default=None, help="most samples per request (>= 1)")
    p.add_argument("--input-name", default=None, help="input tensor name (remote targets)")
    p.add_argument("--output-name", default=None, help="output tensor name (remote targets)")
    p.add_argument("--datatype", default=None, choices=["FP32", "UINT8"], help="input datatype (remote targets)")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates (as --no-verify-tls)")
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="transport settings in TOML with the flags' names (underscores); flags win")
    from veriprint.configs import add_dataclass_arguments
    from veriprint.targets.transport import TransportOptions

    add_dataclass_arguments(p.add_argument_group("transport (remote targets)"), TransportOptions,
                            help=TRANSPORT_HELP)
    p.add_argument("--decoys", type=int, default=0,
                   help="natural decoy queries to mix among the fingerprint's (needs --decoy-data)")
    p.add_argument("--decoy-data", default=None,
                   help="natural inputs to draw decoys from: fashion-mnist, mnist-5k, digits or an .npz file")
    p.add_argument("--report", default=None, help="write the full JSON report here")
    p.add_argument("--pubkey", default=None, help="Ed25519 public key the fingerprint must be signed with")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _same_file(a: str, b: str | None) -> bool:
    if not b:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _write_report(path: str, text: str) -> None:
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


def run(args: argparse.Namespace) -> int:
    from veriprint.redact import redact
    from veriprint.verify import verify

    if args.report:
        for other, what in ((args.fingerprint, "the fingerprint"), (args.pubkey, "the public key")):
            if _same_file(args.report, other):
                print(f"error: --report {args.report!r} is {what} file; refusing to overwrite it",
                      file=sys.stderr)
                return 2
        if os.path.isdir(args.report):
            print(f"error: --report {args.report!r} is a directory; expected a file name", file=sys.stderr)
            return 2
    from veriprint.configs import load_toml, set_values
    from veriprint.targets.transport import TransportOptions

    options: dict[str, Any] = load_toml(args.config) if args.config else {}
    options.update(set_values(args, list(TransportOptions.__dataclass_fields__)))
    for name in ("input_name", "output_name", "datatype"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if args.insecure:
        options["verify_tls"] = False
    if args.weights:
        options["weights"] = args.weights
    if args.output:
        options["output"] = args.output
    target: object = args.target
    if args.decoys:
        if not args.decoy_data:
            print("error: --decoys needs --decoy-data (natural inputs to mix in)", file=sys.stderr)
            return 2
        from veriprint.data import load_data
        from veriprint.fingerprint import Fingerprint
        from veriprint.targets import open_target
        from veriprint.targets.decoys import DecoyTarget

        fp = Fingerprint.load(args.fingerprint, pubkey=args.pubkey)
        try:
            inner = open_target(args.target, **options)
            target = DecoyTarget.from_dataset(inner, load_data(args.decoy_data), ratio=args.decoys / len(fp))
        except Exception as e:
            print(f"error: could not set up decoys: {type(e).__name__}: {redact(str(e))}", file=sys.stderr)
            return 2
        options = {}
    report = verify(args.fingerprint, target, spec=args.spec, pubkey=args.pubkey,  # type: ignore[arg-type]
                    max_batch=args.max_batch, **options)
    print(report.summary())
    if args.report:
        try:
            _write_report(args.report, report.to_json())
        except OSError as e:
            # The verdict stands: its exit code must not depend on writing the report.
            print(f"error: could not write the report to {args.report!r}: {e.strerror or e}",
                  file=sys.stderr)
    return report.exit_code
