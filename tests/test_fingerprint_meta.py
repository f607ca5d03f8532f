"""The fingerprint's metadata, typed and versioned (veriprint.fingerprint.meta)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from veriprint.fingerprint import Fingerprint
from veriprint.fingerprint.fileformat import FingerprintFileError, read_file, write_file
from veriprint.fingerprint.meta import META_VERSION, FingerprintMeta, MetaError

DEMO = Path(__file__).resolve().parents[1] / "src" / "veriprint" / "assets" / "demo" / "fingerprint.vpf"


def _rewritten(tmp_path: Path, **changes: Any) -> Path:
    """The shipped demo fingerprint with metadata entries changed, re-hashed by the writer."""
    f = read_file(DEMO)
    meta = json.loads(json.dumps(f.meta))
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    out = tmp_path / "fp.vpf"
    write_file(out, dict(f.tensors), meta)
    return out


def test_the_shipped_demo_reads_typed() -> None:
    info = Fingerprint.load(DEMO).info
    assert info.version == 1  # written before the key existed: what it holds is version 1
    assert info.model_outputs == "logits" and info.domain.levels == 255
    assert info.num_classes == 10 and info.input_shape == (1, 28, 28)
    assert info.selection is not None and info.selection.method == "reach" and info.pairs == 4
    assert info.labels is not None and len(info.labels) == 8
    assert info.reach is not None and info.reach.deltas == (0.05, 0.01)
    revealed = info.revealed(0.05)
    assert revealed is not None and set(revealed) == set(info.reach.tensors)
    assert info.setting("generation", "eps") == pytest.approx(8 / 255)
    assert info.setting("no", "such") is None and info.revealed(0.5) is None
    assert info.extra == {}


def test_a_newer_version_is_refused_by_name(tmp_path: Path) -> None:
    path = _rewritten(tmp_path, meta_version=META_VERSION + 1)
    with pytest.raises(FingerprintFileError, match=rf"version {META_VERSION} or older, got version "
                                                   rf"{META_VERSION + 1}: the file was written by a newer"):
        Fingerprint.load(path)


@pytest.mark.parametrize(("entry", "value", "words"), [
    ("meta_version", "1", "expected meta_version to be a version number"),
    ("meta_version", 0, "expected meta_version to be a version number"),
    ("labels", ["a"], "expected labels to be a list of class indices"),
    ("seconds", "fast", "expected seconds to be a number"),
    ("plan", [1], "expected plan to be an object"),
    ("model_hash", 7, "expected model_hash to be a string"),
    ("reach", {"deltas": [0.05], "all": [0.5], "tensors": ["w"], "sizes": [3], "share": [[0.1, 0.2]]},
     "expected reach.share to be 1 lists of 1 numbers"),
    ("subset_of", {"sha256": "x", "size": 3}, "expected subset_of.indices to be a list of positions"),
    ("selection", {"pairs": -1}, "expected selection.pairs to be a count"),
])
def test_a_mistyped_entry_is_refused_on_load(tmp_path: Path, entry: str, value: Any, words: str) -> None:
    with pytest.raises(FingerprintFileError, match=words.replace("[", r"\[")):
        Fingerprint.load(_rewritten(tmp_path, **{entry: value}))


def test_unknown_entries_are_kept_and_written_back(tmp_path: Path) -> None:
    fp = Fingerprint.load(_rewritten(tmp_path, later_entry={"x": 1}))
    assert fp.info.extra == {"later_entry": {"x": 1}}
    fp.save(tmp_path / "again.vpf")
    again = Fingerprint.load(tmp_path / "again.vpf")
    assert again.meta["later_entry"] == {"x": 1}


def test_a_file_with_only_the_required_entries_reads() -> None:
    meta = FingerprintMeta.from_dict({"domain": {"lo": 0.0, "hi": 1.0, "levels": None}, "model_outputs": "probs"})
    assert meta.version == 1 and meta.selection is None and meta.pairs == 0 and meta.reach is None
    with pytest.raises(MetaError, match="expected a metadata entry 'model_outputs'"):
        FingerprintMeta.from_dict({"domain": {"lo": 0.0, "hi": 1.0}})
    with pytest.raises(MetaError, match="a language model's file"):
        FingerprintMeta.from_dict({"kind": "lm", "domain": {}, "model_outputs": "logits"})


def test_new_fingerprints_record_the_version(digits_fingerprint: Fingerprint) -> None:
    assert digits_fingerprint.meta["meta_version"] == META_VERSION
    assert digits_fingerprint.info.version == META_VERSION
