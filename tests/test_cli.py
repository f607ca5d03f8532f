"""The command line end to end, in subprocesses, with its exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from veriprint.models import save_weights


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "veriprint.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_help_lists_every_command(tmp_path: Path) -> None:
    out = _cli("--help", cwd=tmp_path)
    assert out.returncode == 0
    for name in ("fingerprint", "verify", "inspect", "keygen", "demo"):
        assert name in out.stdout
    sub = _cli("fingerprint", "--help", cwd=tmp_path)
    assert "--bag" in sub.stdout and "default: 500" in sub.stdout
    assert "--budget" in sub.stdout and "--max-memory" in sub.stdout and "--views" in sub.stdout


def test_fingerprint_verify_inspect_round_trip(tmp_path: Path, digits_model: torch.nn.Module) -> None:
    weights = tmp_path / "w.safetensors"
    save_weights(digits_model, weights)
    tampered = torch.nn.Module()
    import copy

    tampered = copy.deepcopy(digits_model)
    with torch.no_grad():
        tampered[-1].weight.mul_(1.01)
    bad_weights = tmp_path / "bad.safetensors"
    save_weights(tampered, bad_weights)

    key = _cli("keygen", "--out", "key", cwd=tmp_path)
    assert key.returncode == 0, key.stderr
    fp = _cli("fingerprint", "--model", "veriprint.zoo:digits_mlp", "--weights", str(weights), "--data", "digits",
              "--out", "fp.vpf", "--bag", "40", "--steps", "20", "--eps", "0.125", "--lr", "0.01",
              "--key", "key", "--quiet", cwd=tmp_path)
    assert fp.returncode == 0, fp.stderr
    assert "wrote fp.vpf" in fp.stdout
    assert "time budget 600 s: predicted" in fp.stdout and "nothing trimmed" in fp.stdout

    ok = _cli("verify", "fp.vpf", "--target", "veriprint.zoo:digits_mlp", "--weights", str(weights),
              "--spec", "probs", "--pubkey", "key.pub", "--report", "r.json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "INTACT" in ok.stdout
    assert json.loads((tmp_path / "r.json").read_text())["verdict"] == "INTACT"

    mixed = _cli("verify", "fp.vpf", "--target", "veriprint.zoo:digits_mlp", "--weights", str(weights),
                 "--spec", "top1", "--decoys", "8", "--decoy-data", "digits", "--report", "d.json", cwd=tmp_path)
    assert mixed.returncode == 0, mixed.stdout + mixed.stderr
    mixed_report = json.loads((tmp_path / "d.json").read_text())
    from veriprint.fingerprint import Fingerprint

    made = Fingerprint.load(tmp_path / "fp.vpf")
    # the default budget: 8 queries, more until every one of the 10 classes labels a query (the bag allowing)
    assert len(made) == made.meta["budget"]["queries"] >= 8
    assert mixed_report["decoys"] == 8 and mixed_report["queries"] == len(made)

    bad = _cli("verify", "fp.vpf", "--target", "veriprint.zoo:digits_mlp", "--weights", str(bad_weights),
               "--spec", "probs", cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "TAMPERED" in bad.stdout

    raw = bytearray((tmp_path / "fp.vpf").read_bytes())
    raw[-3] ^= 0xFF
    (tmp_path / "edited.vpf").write_bytes(bytes(raw))
    edited = _cli("verify", "edited.vpf", "--target", "veriprint.zoo:digits_mlp", "--weights", str(weights),
                  cwd=tmp_path)
    assert edited.returncode == 2
    assert "hash mismatch" in edited.stdout + edited.stderr

    missing = _cli("verify", "fp.vpf", "--target", "nowhere.onnx", cwd=tmp_path)
    assert missing.returncode == 2

    shown = _cli("inspect", "fp.vpf", "--pubkey", "key.pub", "--png", "img", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "signature: valid" in shown.stdout
    assert "reach (first order)" in fp.stdout and "reach (first order)" in shown.stdout
    assert (tmp_path / "img" / "samples.png").stat().st_size > 1000


def test_a_reader_that_stops_early_ends_the_command_quietly() -> None:
    """`veriprint inspect FILE | head`: exit 141 (never a verdict's 0, 1 or 2), no error line."""
    demo = Path(__file__).resolve().parents[1] / "src" / "veriprint" / "assets" / "demo" / "fingerprint.vpf"
    for unbuffered in ("", "1"):
        p = subprocess.Popen([sys.executable, "-m", "veriprint.cli.main", "inspect", str(demo)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONUNBUFFERED": unbuffered})
        assert p.stdout is not None and p.stderr is not None
        p.stdout.close()  # the reader is gone before the first line is written
        err = p.stderr.read().decode()
        code = p.wait(timeout=120)
        assert code == 141 and "BrokenPipe" not in err and "Traceback" not in err, (unbuffered, code, err)
