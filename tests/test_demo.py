"""The demo's shipped artefacts and its command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from veriprint import demo
from veriprint.fingerprint import Fingerprint
from veriprint.models import load_model, model_hash

README = Path(__file__).resolve().parents[1] / "README.md"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "veriprint.cli.main", "demo", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_shipped_files_match_their_manifest() -> None:
    shipped = demo.load_shipped()
    assert shipped.dataset == "fashion-mnist" and shipped.factory == "veriprint.zoo:fashion_cnn"
    assert shipped.weights.stat().st_size < 2_000_000 and shipped.fingerprint.stat().st_size < 200_000
    assert "--export" in shipped.manifest["command"] and shipped.manifest["machine"]
    fp = Fingerprint.load(shipped.fingerprint)
    model = load_model(shipped.factory, weights=shipped.weights)
    assert fp.meta["model_hash"] == model_hash(model)


def test_a_changed_shipped_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "assets"
    shutil.copytree(demo.ASSETS, root)
    raw = bytearray((root / demo.WEIGHTS_FILE).read_bytes())
    raw[-1] ^= 0x01
    (root / demo.WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"SHA-256 .* is not the manifest's"):
        demo.load_shipped(root)
    (root / demo.WEIGHTS_FILE).unlink()
    with pytest.raises(ValueError, match="is missing"):
        demo.load_shipped(root)


def test_export_writes_a_manifest_that_loads(tmp_path: Path) -> None:
    shipped = demo.load_shipped()
    path = demo.export_assets(tmp_path, weights=shipped.weights, fingerprint=shipped.fingerprint,
                              dataset="fashion-mnist", factory=shipped.factory, train_config={"epochs": 1},
                              test_accuracy=0.5, command="veriprint demo --train --export x")
    manifest = json.loads(path.read_text())
    assert manifest["weights"]["sha256"] == shipped.manifest["weights"]["sha256"]
    assert demo.load_shipped(tmp_path).manifest["command"] == "veriprint demo --train --export x"


def test_readme_table_is_what_the_demo_prints(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    shutil.copyfile(README, readme)
    out = _cli("--quiet", "--write-readme", str(readme), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    inner = "\n".join(demo.readme_block_of(README.read_text()).splitlines()[1:-1])
    assert inner in out.stdout, "the README's demo table is stale: run `veriprint demo --write-readme README.md`"
    assert readme.read_text() == README.read_text()


def test_readme_block_needs_its_markers() -> None:
    block = f"{demo.README_BEGIN}\nnew\n{demo.README_END}"
    text = f"before\n{demo.README_BEGIN}\nold\n{demo.README_END}\nafter\n"
    assert demo.replace_readme_block(text, block) == f"before\n{block}\nafter\n"
    assert demo.readme_block_of(text).splitlines()[1] == "old"
    with pytest.raises(ValueError, match="expected the markers"):
        demo.replace_readme_block("no markers here", block)


def test_generation_options_need_regenerate(tmp_path: Path) -> None:
    out = _cli("--bag", "10", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: --bag set how a new fingerprint is made: add --regenerate"]
    out = _cli("--regenerate", "--write-readme", "README.md", cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_regenerate_makes_a_new_fingerprint(tmp_path: Path) -> None:
    out = _cli("--regenerate", "--bag", "20", "--steps", "10", "--select", "4", "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "made on this machine" in out.stdout and (tmp_path / "demo.vpf").exists()
