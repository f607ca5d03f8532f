"""veriprint as a user gets it: the wheel built, installed in a fresh virtual environment, and
run from outside the checkout (the demo's shipped files, the monitor's templates and
migrations all come from the installed package).

The fresh environment borrows the third-party libraries of the test's own environment
through a path file (a path file's lines are not site directories, so the checkout that
environment installs in editable mode is not seen): what is tested is the project's own
wheel, not its dependencies' installation.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from benchmarks.lib import ROOT
from veriprint import demo

pytestmark = pytest.mark.slow  # a wheel build, a venv and the demo: ~40 s


def _run(cmd: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**clean, **env})


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("installed")
    built = _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                  "-w", str(work / "dist"), "-q"], cwd=work)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next((work / "dist").glob("veriprint-*.whl"))
    env = work / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(env)], cwd=work)
    assert made.returncode == 0, made.stderr
    purelib = Path(_run([str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=work).stdout.strip())
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()] or [sysconfig.get_paths()["purelib"]]
    (purelib / "_borrowed_dependencies.pth").write_text("\n".join(ours) + "\n")
    inst = _run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "--no-deps", "-q",
                 str(wheel)], cwd=work)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    return env


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    r = _run([str(installed / "bin" / "python"), "-c", "import veriprint; print(veriprint.__file__)"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert str(installed) in r.stdout and str(ROOT / "src") not in r.stdout, r.stdout


def test_the_installed_demo_prints_the_readme_table(installed: Path, tmp_path: Path) -> None:
    r = _run([str(installed / "bin" / "veriprint"), "demo", "--quiet"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    inner = "\n".join(demo.readme_block_of((ROOT / "README.md").read_text()).splitlines()[1:-1])
    assert inner in r.stdout, r.stdout


def test_an_installed_monitor_round_migrates_its_database_and_checks(installed: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from testkit.servers.fake_oip import FakeOip, torch_model
    from veriprint.models import load_model

    shipped = demo.load_shipped()
    model = load_model(shipped.factory, weights=shipped.weights)
    with FakeOip({"cnn": torch_model(model)}, (1, 28, 28)) as fake:
        cfg = tmp_path / "monitor.toml"
        cfg.write_text(f'[monitor]\ndatabase = "sqlite:///{tmp_path / "m.db"}"\n[[endpoints]]\nname = "cnn"\n'
                       f'target = "{fake.url("cnn")}"\nfingerprint = "{shipped.fingerprint}"\npairs_per_check = 0\n')
        r = _run([str(installed / "bin" / "veriprint"), "monitor", "--config", str(cfg), "--once"], cwd=tmp_path)
    assert r.returncode == 0 and "cnn: INTACT" in r.stdout, r.stdout + r.stderr
    assert (tmp_path / "m.db").exists()
