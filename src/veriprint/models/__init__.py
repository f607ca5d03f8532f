"""Models: loading them in every form a user has, and training the zoo's.

* :mod:`veriprint.models.load`: factories, weights, ``.pt2``, TorchScript and ONNX files, and
  locating a classifier's last layer (the names below);
* :mod:`veriprint.models.onnx_import`, :mod:`~veriprint.models.onnx_ops`: an ONNX file as a
  differentiable module, one translation per operator;
* :mod:`veriprint.models.onnx_export`: the ONNX files this project serves;
* :mod:`veriprint.models.train`: the training loop of the zoo's models and of the attacks
  that retrain.
"""

from __future__ import annotations

from veriprint.models.load import (
    LastLayer,
    ModelError,
    OutputKind,
    load_model,
    model_device,
    model_hash,
    save_weights,
    split_last_layer,
)

__all__ = ["LastLayer", "ModelError", "OutputKind", "load_model", "model_device", "model_hash", "save_weights",
           "split_last_layer"]
