"""The ONNX file this project reads and serves: :func:`export_onnx`.

The legacy TorchScript-based exporter (``dynamo=False``, which needs only the ``onnx``
package), opset 17, input ``"input"`` and output ``"output"`` with a dynamic batch axis,
weights embedded in the file. :mod:`veriprint.models.onnx_import` reads such files back.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["OPSET", "export_onnx"]

#: The opset written (and assumed for graphs that do not say).
OPSET = 17


def export_onnx(model: nn.Module, example_x: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a self-contained ONNX file (opset 17, dynamic batch axis).

    Uses the legacy TorchScript-based exporter (``dynamo=False``), which needs only the
    ``onnx`` package and embeds the weights in the file. The model is exported in eval
    mode (batch norm folded into the convolutions) and left unchanged.

    Args:
        model: the classifier.
        example_x: an example batch ``(N, ...)`` fixing every dimension but the first.
        path: the ``.onnx`` file to write.

    Returns:
        The path written.
    """
    out = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter warns that it is deprecated
        torch.onnx.export(
            model,
            (example_x,),
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            training=torch.onnx.TrainingMode.EVAL,
        )
    return out
