"""Keyed randomness: draws an owner can repeat and a provider cannot predict.

Every random choice a check makes in front of the provider (which decoys, where the
fingerprint's samples sit among them, how the batch is split into requests, which natural
seeds a fresh check starts from) is derived from a secret only the owner holds and the
names of the check (endpoint, slot, purpose): ``HMAC-SHA256(secret, "veriprint/" + parts)``.
Knowing the algorithm (Kerckhoffs) and every earlier query does not tell the provider the
next draw; the owner, holding the secret, can re-derive what any past check sent.

The secret is read from a file: an Ed25519 private key from ``veriprint keygen`` (the key
is never used as is: a separate subkey is derived from it under its own label), or any file
of at least 16 bytes (``head -c 32 /dev/urandom > schedule.key``). It never appears in a
message, a log line or a report.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import numpy as np

from veriprint.errors import ConfigError

__all__ = ["keyed_int", "keyed_permutation", "keyed_rng", "load_secret"]

MIN_SECRET_BYTES = 16
_LABEL = b"veriprint/keyed-randomness/v1"


def load_secret(path: str | os.PathLike[str]) -> bytes:
    """The owner's secret for keyed draws, read from ``path``.

    Raises:
        ConfigError: the file is missing, unreadable, or holds fewer than 16 bytes (the
            message names the file, never its contents).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"expected a secret key file at {os.fspath(path)!r}: {e.strerror or e}") from None
    if b"PRIVATE KEY" in data[:100]:
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_private_key(data, password=None)
            raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
        except (ValueError, TypeError):
            raise ConfigError(f"{os.fspath(path)!r}: expected an unencrypted Ed25519 private key in PEM "
                              "(from `veriprint keygen`) or a file of random bytes") from None
        return hmac.new(raw, _LABEL, hashlib.sha256).digest()
    if len(data.strip()) < MIN_SECRET_BYTES:
        raise ConfigError(f"{os.fspath(path)!r}: expected a secret of at least {MIN_SECRET_BYTES} bytes, "
                          f"got {len(data.strip())} (make one with `head -c 32 /dev/urandom > FILE`)")
    return hmac.new(data, _LABEL, hashlib.sha256).digest()


def _digest(secret: bytes, parts: tuple[object, ...]) -> bytes:
    if not isinstance(secret, bytes | bytearray) or len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"expected a secret of at least {MIN_SECRET_BYTES} bytes (see load_secret)")
    msg = "/".join(str(p) for p in ("veriprint", *parts)).encode()
    return hmac.new(bytes(secret), msg, hashlib.sha256).digest()


def keyed_int(secret: bytes, *parts: object) -> int:
    """A 64-bit integer fixed by ``secret`` and ``parts`` (e.g. ``"decoys", endpoint, slot``)."""
    return int.from_bytes(_digest(secret, parts)[:8], "big")


def keyed_rng(secret: bytes, *parts: object) -> np.random.Generator:
    """A NumPy generator seeded from all 256 bits of ``HMAC(secret, parts)``."""
    words = np.frombuffer(_digest(secret, parts), dtype=">u4").astype(np.uint32)
    return np.random.default_rng(np.random.SeedSequence(words.tolist()))


def keyed_permutation(secret: bytes, n: int, *parts: object) -> np.ndarray:
    """A permutation of ``range(n)`` fixed by ``secret`` and ``parts``."""
    if n < 0:
        raise ConfigError(f"expected n >= 0 items to permute, got {n}")
    return keyed_rng(secret, "permutation", n, *parts).permutation(n)
