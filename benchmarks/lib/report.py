"""What every benchmark's report shares: writing it, and what it says of the machine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["machine", "write_report"]


def write_report(text: str, out: Path | None) -> None:
    """Write a report to ``out`` (its folder made as needed), or to stdout without one."""
    if out is None:
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def machine() -> dict[str, Any]:
    """What the report says of the machine: the CPU, torch's ATen level, onnxruntime's providers."""
    import platform

    import onnxruntime as ort

    from veriprint.demo import cpu_model

    cpu = cpu_model() or platform.machine()
    return {"cpu": cpu, "aten": torch.backends.cpu.get_cpu_capability(), "onnxruntime": ort.__version__,
            "providers": ort.get_available_providers()}
