"""``veriprint keygen``: make an Ed25519 key pair for signing fingerprints."""

from __future__ import annotations

import argparse

HELP = "write an Ed25519 private key (PEM) and its public key (KEY.pub) for signing fingerprints"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="private key file; the public key goes to OUT.pub")
    p.add_argument("--force", action="store_true",
                   help="replace existing key files (default: refuse to overwrite a key)")


def run(args: argparse.Namespace) -> int:
    from veriprint.fingerprint.fileformat import generate_keypair

    priv, pub = generate_keypair(args.out, force=args.force)
    print(f"private key: {priv} (keep it secret)\npublic key:  {pub}")
    return 0
