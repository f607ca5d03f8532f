"""``veriprint verify``: check a deployed model against a fingerprint (exit 0 intact, 1 tampered, 2 otherwise)."""

from __future__ import annotations

import argparse
import os

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
    p.add_argument("--max-batch", type=int, default=None, help="most samples per request")
    p.add_argument("--timeout", type=float, default=None, help="seconds per request (remote targets)")
    p.add_argument("--retries", type=int, default=None, help="retries with backoff (remote targets)")
    p.add_argument("--input-name", default=None, help="input tensor name (remote targets)")
    p.add_argument("--output-name", default=None, help="output tensor name (remote targets)")
    p.add_argument("--datatype", default=None, choices=["FP32", "UINT8"], help="input datatype (remote targets)")
    p.add_argument("--auth-env", default=None,
                   help="name of an environment variable holding the Authorization header value")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    p.add_argument("--decoys", type=int, default=0,
                   help="natural decoy queries to mix among the fingerprint's (needs --decoy-data)")
    p.add_argument("--decoy-data", default=None,
                   help="natural inputs to draw decoys from: fashion-mnist, mnist-5k, digits or an .npz file")
    p.add_argument("--report", default=None, help="write the full JSON report here")
    p.add_argument("--pubkey", default=None, help="Ed25519 public key the fingerprint must be signed with")


def run(args: argparse.Namespace) -> int:
    from veriprint.fileformat import FingerprintFileError
    from veriprint.verify import verify

    options = {}
    for name in ("timeout", "retries", "input_name", "output_name", "datatype", "auth_env"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if args.insecure:
        options["verify_tls"] = False
    if args.weights:
        options["weights"] = args.weights
    if args.output:
        options["output"] = args.output
    target = args.target
    if args.decoys:
        if not args.decoy_data:
            print("error: --decoys needs --decoy-data (natural inputs to mix in)")
            return 2
        from veriprint.data import load_data
        from veriprint.fingerprint import Fingerprint
        from veriprint.targets import open_target
        from veriprint.targets.decoys import DecoyTarget

        try:
            n = len(Fingerprint.load(args.fingerprint, pubkey=args.pubkey))
            inner = open_target(args.target, **options)
            target = DecoyTarget.from_dataset(inner, load_data(args.decoy_data), ratio=args.decoys / n)
        except Exception as e:
            print(f"error: could not set up decoys: {type(e).__name__}: {e}")
            return 2
        options = {}
    try:
        report = verify(args.fingerprint, target, spec=args.spec, pubkey=args.pubkey,
                        max_batch=args.max_batch, **options)
    except (FingerprintFileError, FileNotFoundError) as e:
        print(f"error: fingerprint refused: {e}")
        return 2
    except TypeError as e:
        print(f"error: option not supported by this target: {e}")
        return 2
    print(report.summary())
    if args.report:
        with open(os.fspath(args.report), "w") as f:
            f.write(report.to_json())
    return report.exit_code
