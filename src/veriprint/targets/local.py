"""Local targets: a PyTorch module, an ONNX file run by onnxruntime, or any callable."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from veriprint.targets.base import OutputForm, QueryBatch, Target, TargetError
from veriprint.targets.contract import to_array

__all__ = ["CallableTarget", "OnnxTarget", "TorchTarget"]


class TorchTarget(Target):
    """A local PyTorch module, run under ``torch.inference_mode``.

    Args:
        model: the module (put in eval mode).
        output: ``"logits"`` (default) or ``"probs"``: what the module returns.
        max_batch: samples per forward pass (default ``None``: the whole batch).
        threads: torch intra-op threads while querying (default: unchanged).
    """

    def __init__(self, model: nn.Module, *, output: OutputForm = "logits", max_batch: int | None = None,
                 threads: int | None = None) -> None:
        self.model = model.eval()
        self.output = output
        self.max_batch = max_batch
        self.threads = threads
        self.description = f"torch:{type(model).__name__}"

    def _answer(self, batch: QueryBatch) -> np.ndarray:
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            x = torch.from_numpy(np.ascontiguousarray(batch.x, dtype=np.float32))
            first = next(iter(self.model.parameters()), None)
            if first is not None and first.device.type != "cpu":
                x = x.to(first.device)  # a model on a GPU is queried there
            with torch.inference_mode():
                out = self.model(x)
        finally:
            torch.set_num_threads(previous)
        if not isinstance(out, torch.Tensor):
            raise TargetError(f"expected the model to return a tensor, got {type(out).__name__}")
        if out.is_floating_point() and out.dtype not in (torch.float32, torch.float64):
            out = out.float()  # float16 and bfloat16, which NumPy cannot hold
        # everything else (float64, integers, booleans, complex) goes to the contract as it
        # came, which takes real numbers only: a cast here would turn booleans into 0/1
        # scores and complex numbers into their real part
        return to_array(out.detach().cpu(), self.description)


class OnnxTarget(Target):
    """An ONNX model run by onnxruntime on the CPU.

    Args:
        path: the ``.onnx`` file.
        output: what the graph's first output is: ``"logits"`` (default) or ``"probs"``.
        input_name: graph input to feed (default: the first).
        threads: intra-op threads (default: onnxruntime's choice).
        max_batch: samples per run (default ``None``).
    """

    def __init__(self, path: str | os.PathLike[str], *, output: OutputForm = "logits",
                 input_name: str | None = None, threads: int | None = None,
                 max_batch: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = input_name or self.session.get_inputs()[0].name
        self.output = output
        self.max_batch = max_batch
        self.description = f"onnxruntime:{Path(path).name}"

    def _answer(self, batch: QueryBatch) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch.x, dtype=np.float32)})
        return np.asarray(out[0])


class CallableTarget(Target):
    """Any function from a float32 batch (NumPy) to outputs (NumPy or tensor).

    Args:
        fn: the function.
        output: the form of its outputs (default ``"logits"``).
        uint8: pass the 8-bit grid values instead of the float samples (default False).
        max_batch: samples per call (default ``None``).
    """

    def __init__(self, fn: Callable[[np.ndarray], Any], *, output: OutputForm = "logits",
                 uint8: bool = False, max_batch: int | None = None) -> None:
        self.fn = fn
        self.output = output
        self.uint8 = uint8
        self.max_batch = max_batch
        self.description = f"callable:{getattr(fn, '__name__', type(fn).__name__)}"

    def _answer(self, batch: QueryBatch) -> np.ndarray:
        if self.uint8:
            if batch.grid is None:
                raise TargetError("this target takes 8-bit inputs but the fingerprint has no grid")
            data = batch.grid
        else:
            data = batch.x
        return to_array(self.fn(data), self.description)
