"""The ``.vpf`` fingerprint file: safetensors tensors plus signed JSON metadata.

Layout (format version 1), one safetensors file:

* tensors: ``samples`` (F32, the queries), ``expected`` (F32, the intact model's raw
  outputs on them), ``seeds`` (F32, the natural inputs they came from), ``log_s``,
  ``margin``, ``psnr`` (F32 per sample) and, for quantized inputs, ``grid`` (U8, I16 or I32,
  the exact grid values sent to 8-bit APIs);
* safetensors metadata (all strings): ``format`` = ``"veriprint.vpf"``,
  ``format_version`` = ``"1"``, ``meta`` (canonical JSON: sorted keys, no spaces),
  ``sha256`` (content hash), ``signature`` and ``public_key`` (hex Ed25519, or empty).

The content hash is SHA-256 over ``b"veriprint.vpf/1\\n"``, the canonical ``meta`` JSON,
then for each tensor in name order its name, dtype, shape and raw bytes. The signature,
when present, is Ed25519 over the 32-byte hash. Editing any byte of a tensor or of the
metadata breaks the hash; replacing the hash breaks the signature.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from veriprint.errors import VeriprintError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "FingerprintFileError",
    "LoadedFile",
    "content_hash",
    "generate_keypair",
    "read_file",
    "write_file",
]

FORMAT = "veriprint.vpf"
FORMAT_VERSION = 1
SignatureStatus = Literal["unsigned", "valid", "not checked"]


class FingerprintFileError(VeriprintError, ValueError):
    """A fingerprint file is unreadable, edited, of another version, or badly signed."""


def canonical_json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=True)


def content_hash(tensors: dict[str, torch.Tensor], meta_json: str) -> bytes:
    """SHA-256 over the format tag, the canonical metadata and every tensor."""
    h = hashlib.sha256()
    h.update(f"{FORMAT}/{FORMAT_VERSION}\n".encode())
    h.update(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(b"\0" + name.encode() + b"\0" + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


def _private_key(path: str | os.PathLike[str]):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(path)
    if not os.fspath(path) or not p.is_file():
        raise FingerprintFileError(f"{os.fspath(path)!r}: expected an Ed25519 private key file (PEM, from "
                                   "`veriprint keygen`)")
    data = p.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:  # TypeError: an encrypted key needs a password
        raise FingerprintFileError(f"{path}: expected an unencrypted Ed25519 private key in PEM "
                                   "(from `veriprint keygen`)") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise FingerprintFileError(f"{path}: expected an Ed25519 key, got {type(key).__name__}")
    return key


def _public_key(path_or_hex: str | os.PathLike[str]):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = os.fspath(path_or_hex)
    if not text.strip():
        raise FingerprintFileError("expected a public key (a PEM file from `veriprint keygen`, or hex), "
                                   "got an empty value")
    path = Path(text)
    if path.is_dir():
        raise FingerprintFileError(f"{path}: expected a public key file (PEM), got a directory")
    if path.exists():
        data = path.read_bytes()
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as e:
            raise FingerprintFileError(f"{path}: expected an Ed25519 public key in PEM") from e
        if not isinstance(key, Ed25519PublicKey):
            raise FingerprintFileError(f"{path}: expected an Ed25519 public key, got {type(key).__name__}")
        return key
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(os.fspath(path_or_hex)))
    except ValueError as e:
        raise FingerprintFileError(f"no public key file at {path_or_hex!r} and not a hex key") from e


def _raw_public(key) -> str:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()  # type: ignore[no-any-return]


def _write_new(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the first byte (never the umask's default).

    Without ``force`` an existing file is refused; with it, the file is replaced atomically
    (a fresh file with ``mode`` is written beside it, then renamed over it).
    """
    if not force:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError as e:
            raise FingerprintFileError(f"{path} already exists; not overwriting it (use --force / "
                                       "force=True to replace it)") from e
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generate_keypair(out: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, Path]:
    """Write an Ed25519 private key to ``out`` (PEM, mode 600) and its public key to ``out.pub``.

    The private key's file is created with mode 600 (it is never readable by others, not
    even for an instant). Existing files are refused unless ``force`` is set.

    Raises:
        FingerprintFileError: ``out`` or ``out.pub`` exists (without ``force``), or ``out``
            is a directory.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    priv = Path(out)
    pub = priv.with_name(priv.name + ".pub")
    if not os.fspath(out) or priv.is_dir():
        raise FingerprintFileError(f"expected a file name for the private key, got {os.fspath(out)!r}")
    if not force:
        for p in (priv, pub):
            if p.exists():
                raise FingerprintFileError(f"{p} already exists; not overwriting a key (use --force "
                                           "to replace it)")
    key = Ed25519PrivateKey.generate()
    _write_new(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600, force)
    os.chmod(priv, 0o600)  # an existing file keeps its mode through O_CREAT; make sure
    _write_new(pub, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo),
               0o644, force)
    return priv, pub


_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.uint8: "U8", torch.int16: "I16",
           torch.int32: "I32", torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16"}


def serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Safetensors bytes with a deterministic header (sorted keys, tensors in name order).

    The library's own writer orders metadata keys arbitrarily, so files would differ run
    to run; this writer pins every byte (readable by any safetensors reader).
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            raise ValueError(f"tensor {name!r}: unsupported dtype {t.dtype}")
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def write_file(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict[str, Any],
               key: str | os.PathLike[str] | None = None) -> str:
    """Write a ``.vpf`` file; returns the hex content hash."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta_json = canonical_json(meta)
    digest = content_hash(tensors, meta_json)
    signature = public = ""
    if key is not None:
        private = _private_key(key)
        signature = private.sign(digest).hex()
        public = _raw_public(private.public_key())
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "meta": meta_json,
        "sha256": digest.hex(),
        "signature": signature,
        "public_key": public,
    }
    Path(path).write_bytes(serialize(tensors, header))
    return digest.hex()


@dataclass(frozen=True)
class LoadedFile:
    """A checked fingerprint file: tensors, metadata, hash and signature status."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    sha256: str
    signature: SignatureStatus
    public_key: str


def read_file(path: str | os.PathLike[str], pubkey: str | os.PathLike[str] | None = None) -> LoadedFile:
    """Read and check a ``.vpf`` file.

    Args:
        path: the file.
        pubkey: an Ed25519 public key (PEM file or hex); when given, the file must carry a
            valid signature by it.

    Raises:
        FingerprintFileError: unreadable or truncated file, another format or version, a
            content hash that does not match, a missing or invalid signature.
    """
    from safetensors import safe_open

    p = Path(path)
    if not os.fspath(path):
        raise FingerprintFileError("expected the path of a .vpf fingerprint file, got ''")
    if not p.exists():
        raise FileNotFoundError(f"fingerprint file not found: {p}")
    if not p.is_file():
        kind = "a directory" if p.is_dir() else "not a regular file"
        raise FingerprintFileError(f"{p}: expected a .vpf fingerprint file, got {kind}")
    try:
        with safe_open(os.fspath(p), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:
        raise FingerprintFileError(
            f"{p}: not a readable fingerprint file (expected a safetensors .vpf): {type(e).__name__}: {e}"
        ) from e
    if header.get("format") != FORMAT:
        raise FingerprintFileError(f"{p}: expected format {FORMAT!r}, got {header.get('format')!r}")
    if header.get("format_version") != str(FORMAT_VERSION):
        raise FingerprintFileError(
            f"{p}: expected format version {FORMAT_VERSION}, got {header.get('format_version')!r}; "
            "this veriprint cannot read it"
        )
    meta_json = header.get("meta", "")
    try:
        meta = json.loads(meta_json)
    except json.JSONDecodeError as e:
        raise FingerprintFileError(f"{p}: metadata is not valid JSON: {e}") from e
    digest = content_hash(tensors, meta_json)
    if digest.hex() != header.get("sha256"):
        raise FingerprintFileError(
            f"{p}: content hash mismatch (file says {header.get('sha256')!r}, content hashes to "
            f"{digest.hex()!r}): the file was edited or corrupted"
        )
    signature, public = header.get("signature", ""), header.get("public_key", "")
    status: SignatureStatus = "unsigned"
    if signature:
        status = "not checked"
    if pubkey is not None:
        if not signature:
            raise FingerprintFileError(f"{p}: a public key was given but the file is not signed")
        key = _public_key(pubkey)
        from cryptography.exceptions import InvalidSignature

        try:
            key.verify(bytes.fromhex(signature), digest)
        except (InvalidSignature, ValueError) as e:
            raise FingerprintFileError(f"{p}: signature does not verify with the given public key") from e
        status = "valid"
    return LoadedFile(tensors, meta, digest.hex(), status, public)
