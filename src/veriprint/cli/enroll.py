"""``veriprint enroll``: query a fresh deployment with a pool, keep its stable candidates and
write the fingerprint of what this deployment answers (exit 0 written, 2 refused or error).

A pool that is a language model's fingerprint takes :func:`veriprint.cli.lm.enroll_lm_cli`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from veriprint.cli.common import (
    add_target_arguments,
    positive_int,
    same_file,
    target_options,
    write_report,
)

HELP = ("trust on deploy: query a just-deployed endpoint with a pool fingerprint, keep the stably "
        "answered samples and write an enrolled fingerprint; exit 0 written, 2 refused or error")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pool", help="the pool .vpf file (a fingerprint made with many more samples than kept)")
    p.add_argument("--target", required=True, action="append",
                   help="the deployment: server URL, model file or factory; repeat for replicas "
                        "(the rounds go to them in turn)")
    p.add_argument("--target-weights", default=None, help="weights for a factory target")
    p.add_argument("--out", required=True, help="enrolled fingerprint to write (.vpf)")
    p.add_argument("--spec", default=None,
                   help="what the API reveals: top1 (default), topk:K, probs, probs:N, top1-prob:N, logits; for a "
                        "language model top1-token (default), top1-token:N, logprobs:K, text")
    p.add_argument("--model", default=None,
                   help="the local intact model (factory or file): reselection by reach, model hash check")
    p.add_argument("--weights", default=None, help="weights for a factory --model")
    p.add_argument("--rounds", type=positive_int, default=6, help="answers recorded per candidate (>= 2)")
    p.add_argument("--batch-sizes", default="1,7,0",
                   help="batch size of each round, cycled, comma-separated (0: the whole pool)")
    p.add_argument("--keep", type=positive_int, default=8, help="queries to keep (a pair counts two)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="logit noise the deployment may add (bfloat16, float16, TF32 serving); logprob noise for a "
                        "language model")
    p.add_argument("--prob-tolerance", type=float, default=0.0, help="probability noise likewise")
    p.add_argument("--interval", type=float, default=0.0, help="seconds to wait between rounds")
    p.add_argument("--seed", type=int, default=0, help="seed of the rounds' query orders")
    p.add_argument("--key", default=None, help="Ed25519 private key to sign the enrolled file")
    p.add_argument("--pubkey", default=None, help="Ed25519 public key the pool must be signed with")
    p.add_argument("--report", default=None, help="write the enrollment report (JSON) here")
    add_target_arguments(p, max_batch=True)
    from veriprint.cli.lm import add_lm_verify_arguments

    add_lm_verify_arguments(p)


def batch_sizes(text: str) -> tuple[int, ...]:
    from veriprint.errors import ConfigError

    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"expected --batch-sizes as whole numbers separated by commas, got {text!r}") from None
    return sizes


def run(args: argparse.Namespace) -> int:
    import os

    from veriprint.enrollment import EnrollmentError, enroll
    from veriprint.fingerprint import Fingerprint
    from veriprint.lm.fingerprint import is_lm_file

    for path, what in ((args.out, "--out"), (args.report, "--report")):
        if path and (same_file(path, args.pool) or same_file(path, args.pubkey) or same_file(path, args.key)):
            print(f"error: {what} {path!r} is an input file; refusing to overwrite it", file=sys.stderr)
            return 2
        if path and os.path.isdir(path):
            print(f"error: {what} {path!r} is a directory; expected a file name", file=sys.stderr)
            return 2
    if is_lm_file(args.pool):
        from veriprint.cli.lm import enroll_lm_cli

        return enroll_lm_cli(args)
    options = target_options(args, include_max_batch=True)
    if args.target_weights:
        options["weights"] = args.target_weights
    pool = Fingerprint.load(args.pool, pubkey=args.pubkey)
    model = None
    if args.model:
        from veriprint.models import load_model

        model = load_model(args.model, weights=args.weights)
    try:
        rep = enroll(pool, args.target, spec=args.spec or "top1", rounds=args.rounds,
                     batch_sizes=batch_sizes(args.batch_sizes), seed=args.seed, keep=args.keep, model=model,
                     tolerance=args.tolerance, prob_tolerance=args.prob_tolerance, interval=args.interval, **options)
    except EnrollmentError as e:
        return refused(args, e)
    fp = rep.fingerprint.save(args.out, key=args.key)
    print(rep.summary())
    print(f"wrote {args.out}: {len(fp)} queries, sha256 {fp.sha256[:16]}..., "
          f"{'signed' if args.key else 'unsigned'}; verify with: veriprint verify {args.out} --target URL "
          f"--spec {rep.spec}")
    return written(args, {**rep.to_dict(), "sha256": fp.sha256})


def refused(args: argparse.Namespace, e: Any) -> int:
    """Say why enrollment was refused (one line) and write the numbers behind it to ``--report``."""
    import json

    from veriprint.redact import redact

    print(f"error: enrollment refused: {redact(' '.join(str(e).split()))}", file=sys.stderr)
    if args.report:
        try:
            write_report(args.report, json.dumps({"refused": redact(str(e)), **e.details}, indent=2))
        except OSError as err:
            print(f"error: could not write the report to {args.report!r}: {err.strerror or err}", file=sys.stderr)
    return 2


def written(args: argparse.Namespace, report: dict[str, Any]) -> int:
    """Write the enrollment report to ``--report`` (exit 2 when it cannot be written)."""
    import json

    if args.report:
        try:
            write_report(args.report, json.dumps(report, indent=2))
        except OSError as e:
            print(f"error: could not write the report to {args.report!r}: {e.strerror or e}", file=sys.stderr)
            return 2
    return 0
