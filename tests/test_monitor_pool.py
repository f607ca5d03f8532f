"""Query rotation: consecutive checks spend different twin pairs of a signed pool."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import itertools

from testkit.servers.digits import digits_models, tampered_copy
from testkit.servers.monitor_kit import pool_files
from veriprint.fingerprint import Fingerprint
from veriprint.fingerprint.fileformat import FingerprintFileError
from veriprint.monitor.pool import Pool
from veriprint.verification.verify import verify


def test_units_are_the_stored_twin_pairs() -> None:
    _path, _pub, fp = pool_files()
    assert fp.units() == [(2 * i, 2 * i + 1) for i in range(12)]
    single = Fingerprint(**{**fp.__dict__, "meta": {**fp.meta, "selection": {**fp.meta["selection"], "pairs": 0}}})
    assert single.units() == [(i,) for i in range(24)]


def test_consecutive_checks_do_not_repeat_queries_until_the_pool_is_spent() -> None:
    _, _, fp = pool_files()
    pool = Pool(fp, per_check=4, on_exhausted="wrap")
    assert pool.rotates and pool.checks_per_cycle == 3
    cycle, pos, seen = 0, 0, []
    draws = []
    for _ in range(6):
        d = pool.draw(cycle, pos)
        draws.append(d)
        cycle, pos = d.cycle, d.end
        seen.append(set(d.indices))
    assert [d.checks_left for d in draws] == [2, 1, 0, 2, 1, 0]
    assert [d.wrapped for d in draws] == [False, False, False, True, False, False]
    first = seen[:3]
    assert set().union(*first) == set(range(24)) and sum(len(s) for s in first) == 24
    for a, b in itertools.pairwise(seen):
        assert not a & b  # consecutive checks never share a query
    assert [d.units for d in draws[3:]] != [d.units for d in draws[:3]]  # a new order after wrapping
    assert set().union(*seen[3:]) == set(range(24))


def test_refuse_and_no_rotation() -> None:
    _, _, fp = pool_files()
    pool = Pool(fp, per_check=5, on_exhausted="refuse")
    assert pool.draw(0, 10).refused and pool.draw(0, 10).indices == ()
    whole = Pool(fp, per_check=0)
    d = whole.draw(0, 0)
    assert not whole.rotates and d.indices == tuple(range(24)) and d.checks_left is None


def test_a_subset_is_verified_after_the_whole_file_is_signature_checked(tmp_path: Path) -> None:
    path, pub, _ = pool_files()
    fp = Fingerprint.load(path, pubkey=pub)
    assert fp.signature == "valid"
    m = digits_models()
    part = fp.subset([4, 5, 10, 11])
    assert len(part) == 4 and part.sha256 == fp.sha256 and part.meta["subset_of"]["indices"] == [4, 5, 10, 11]
    r = verify(part, m.model, spec="top1")
    assert r.verdict == "INTACT" and r.queries == 4
    assert r.fingerprint["signature"] == "valid"
    assert any(verify(fp.subset(list(u)), tampered_copy(m.model, 4), spec="probs").verdict == "TAMPERED"
               for u in fp.units())
    edited = tmp_path / "edited.vpf"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 1
    edited.write_bytes(bytes(raw))
    with pytest.raises(FingerprintFileError):
        Fingerprint.load(edited, pubkey=pub)
    with pytest.raises(ValueError, match=r"expected sample indices in \[0, 24\), got \[24\]"):
        fp.subset([24])
