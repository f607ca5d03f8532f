"""The flat public API: every exported name resolves, and names shared with modules stay callable."""

from __future__ import annotations

import subprocess
import sys

import veriprint


def test_every_export_resolves() -> None:
    for name in veriprint.__all__:
        assert getattr(veriprint, name) is not None, name


def test_names_shared_with_modules_behave_the_same_in_any_import_order() -> None:
    code = (
        "import veriprint.pipeline, veriprint.verification.verify, veriprint.tamper\n"
        "from veriprint import generate, verify, tamper, GenerationConfig\n"
        "import torch\n"
        "net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))\n"
        "res = generate(net, torch.rand(2, 1, 2, 2), GenerationConfig(steps=2), progress=False)\n"
        "assert len(res) == 2 and callable(verify) and callable(tamper)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_no_import_cycle_between_models_and_onnx() -> None:
    code = "import veriprint.models.onnx_import, veriprint.models; print(veriprint.models.ModelError.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "veriprint.errors", out.stderr
