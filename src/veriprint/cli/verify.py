"""``veriprint verify``: check a deployed model against a fingerprint (exit 0 intact, 1 tampered, 2 otherwise)."""

from __future__ import annotations

import argparse
import os
import secrets
import sys

from veriprint.cli.common import add_target_arguments, same_file, target_options, write_report

HELP = "query a target with a fingerprint; exit 0 INTACT, 1 TAMPERED, 2 INCONCLUSIVE or error"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("fingerprint", help="the .vpf file")
    p.add_argument("--target", required=True,
                   help="model file or factory, .onnx (onnxruntime), or a server URL (see docs/guide/serving.md)")
    p.add_argument("--weights", default=None, help="weights for a factory target")
    p.add_argument("--spec", default=None,
                   help="what the API reveals: top1 (default), topk:K, probs, probs:N, top1-prob:N, logits; for a "
                        "language model top1-token (default), top1-token:N, logprobs:K, text")
    add_target_arguments(p)
    p.add_argument("--decoys", type=int, default=0,
                   help="natural decoy queries to mix among the fingerprint's (needs --decoy-data)")
    p.add_argument("--decoy-data", default=None,
                   help="natural inputs to draw decoys from: fashion-mnist, mnist-5k, digits or an .npz file")
    p.add_argument("--decoy-seed", type=int, default=None,
                   help="seed of the decoys' choice and order (default: drawn from the OS on every run, so "
                        "repeated checks never send the same mix)")
    p.add_argument("--report", default=None, help="write the full JSON report here")
    p.add_argument("--pubkey", default=None, help="Ed25519 public key the fingerprint must be signed with")
    from veriprint.cli.lm import add_lm_verify_arguments

    add_lm_verify_arguments(p)


def run(args: argparse.Namespace) -> int:
    from veriprint.redact import redact
    from veriprint.verification.verify import verify

    if args.report:
        for other, what in ((args.fingerprint, "the fingerprint"), (args.pubkey, "the public key")):
            if same_file(args.report, other):
                print(f"error: --report {args.report!r} is {what} file; refusing to overwrite it",
                      file=sys.stderr)
                return 2
        if os.path.isdir(args.report):
            print(f"error: --report {args.report!r} is a directory; expected a file name", file=sys.stderr)
            return 2
    from veriprint.lm.fingerprint import is_lm_file

    if is_lm_file(args.fingerprint):
        from veriprint.cli.lm import verify_lm_cli

        return verify_lm_cli(args)
    options = target_options(args)
    if args.weights:
        options["weights"] = args.weights
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
            seed = args.decoy_seed if args.decoy_seed is not None else secrets.randbits(63)
            target = DecoyTarget.from_dataset(inner, load_data(args.decoy_data), ratio=args.decoys / len(fp),
                                              seed=seed)
        except Exception as e:
            print(f"error: could not set up decoys: {type(e).__name__}: {redact(str(e))}", file=sys.stderr)
            return 2
        options = {}
    report = verify(args.fingerprint, target, spec=args.spec or "top1", pubkey=args.pubkey,  # type: ignore[arg-type]
                    max_batch=args.max_batch, **options)
    print(report.summary())
    if args.report:
        try:
            write_report(args.report, report.to_json())
        except OSError as e:
            # The verdict stands: its exit code must not depend on writing the report.
            print(f"error: could not write the report to {args.report!r}: {e.strerror or e}",
                  file=sys.stderr)
    return report.exit_code
