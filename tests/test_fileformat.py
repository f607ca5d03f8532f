"""The .vpf file: round trip, pinned bytes, and refusal of edited, truncated or foreign files."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch

from veriprint.fingerprint import Fingerprint
from veriprint.fingerprint.fileformat import (
    FingerprintFileError,
    generate_keypair,
    read_file,
    write_file,
)

GOLDEN_SHA256 = "31b052fc889e0b2f206b1bbd37a4c709dc5900c7e21cd24954c68c3716678388"


def _tiny() -> tuple[dict[str, torch.Tensor], dict]:  # type: ignore[type-arg]
    tensors = {
        "samples": torch.arange(6, dtype=torch.float32).view(2, 3) / 8,
        "expected": torch.tensor([[1.0, -1.0], [0.5, 0.25]]),
        "grid": torch.tensor([[0, 32, 64], [96, 128, 160]], dtype=torch.uint8),
    }
    return tensors, {"created": "2026-01-01T00:00:00Z", "b": [1, 2], "a": {"x": 0.5}}


def test_golden_bytes(tmp_path: Path) -> None:
    tensors, meta = _tiny()
    path = tmp_path / "golden.vpf"
    digest = write_file(path, tensors, meta)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert header["__metadata__"]["format"] == "veriprint.vpf"
    assert header["__metadata__"]["format_version"] == "1"
    assert header["__metadata__"]["meta"] == '{"a":{"x":0.5},"b":[1,2],"created":"2026-01-01T00:00:00Z"}'
    assert header["__metadata__"]["sha256"] == digest
    assert header["grid"]["dtype"] == "U8" and header["grid"]["shape"] == [2, 3]
    assert header["samples"]["dtype"] == "F32" and header["expected"]["shape"] == [2, 2]
    # The whole file is pinned byte for byte.
    assert hashlib.sha256(raw).hexdigest() == GOLDEN_SHA256


def test_round_trip_and_signature(tmp_path: Path) -> None:
    tensors, meta = _tiny()
    key, pub = generate_keypair(tmp_path / "key")
    path = tmp_path / "fp.vpf"
    write_file(path, tensors, meta, key=key)
    f = read_file(path, pubkey=pub)
    assert f.signature == "valid"
    assert f.meta == meta
    for k, v in tensors.items():
        assert torch.equal(f.tensors[k], v)
    assert read_file(path).signature == "not checked"
    _, other_pub = generate_keypair(tmp_path / "other")
    with pytest.raises(FingerprintFileError, match="signature does not verify"):
        read_file(path, pubkey=other_pub)
    unsigned = tmp_path / "unsigned.vpf"
    write_file(unsigned, tensors, meta)
    with pytest.raises(FingerprintFileError, match="not signed"):
        read_file(unsigned, pubkey=pub)


def _flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))


def test_edited_payload_is_refused(tmp_path: Path) -> None:
    tensors, meta = _tiny()
    path = tmp_path / "fp.vpf"
    write_file(path, tensors, meta)
    _flip_last_byte(path)
    with pytest.raises(FingerprintFileError, match="hash mismatch"):
        read_file(path)


def test_edited_metadata_is_refused(tmp_path: Path) -> None:
    tensors, meta = _tiny()
    path = tmp_path / "fp.vpf"
    write_file(path, tensors, meta)
    raw = path.read_bytes().replace(b'\\"x\\":0.5', b'\\"x\\":0.7')
    path.write_bytes(raw)
    with pytest.raises(FingerprintFileError, match="hash mismatch"):
        read_file(path)


def test_truncated_and_foreign_files_are_refused(tmp_path: Path) -> None:
    tensors, meta = _tiny()
    path = tmp_path / "fp.vpf"
    write_file(path, tensors, meta)
    raw = path.read_bytes()
    cut = tmp_path / "cut.vpf"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FingerprintFileError, match="not a readable fingerprint"):
        read_file(cut)
    junk = tmp_path / "junk.vpf"
    junk.write_bytes(b"hello world, not a fingerprint")
    with pytest.raises(FingerprintFileError):
        read_file(junk)
    from safetensors.torch import save_file

    other = tmp_path / "other.vpf"
    save_file(tensors, str(other), metadata={"format": "veriprint.vpf", "format_version": "99"})
    with pytest.raises(FingerprintFileError, match="format version"):
        read_file(other)
    with pytest.raises(FileNotFoundError):
        read_file(tmp_path / "missing.vpf")


def test_fingerprint_round_trip(tmp_path: Path, digits_fingerprint: Fingerprint) -> None:
    saved = digits_fingerprint.save(tmp_path / "d.vpf")
    back = Fingerprint.load(tmp_path / "d.vpf")
    assert back.sha256 == saved.sha256
    assert torch.equal(back.samples, digits_fingerprint.samples)
    assert torch.equal(back.expected, digits_fingerprint.expected)
    assert back.grid is not None and torch.equal(back.grid, digits_fingerprint.grid)  # type: ignore[arg-type]
    assert back.noise == digits_fingerprint.noise
    assert back.meta["model_source"] == "veriprint.zoo:digits_mlp"
    assert back.meta["config"]["generation"]["steps"] == 40
