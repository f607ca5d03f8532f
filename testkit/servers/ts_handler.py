"""A TorchServe handler that runs an ONNX file with onnxruntime (runs in .venv-serving).

Request body: JSON, one sample ``(...)`` or a batch ``(n, ...)``; answer: the graph's first
output for it (a row, or ``n`` rows). The model directory holds ``model.onnx``.
"""

import json
import os

import numpy as np
import onnxruntime as ort

_state = {}


def _session(context):
    if "session" not in _state:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("VERIPRINT_TS_THREADS", "1"))
        path = os.path.join(context.system_properties["model_dir"], "model.onnx")
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        _state["session"] = sess
        _state["input"] = sess.get_inputs()[0]
    return _state["session"], _state["input"]


def handle(data, context):
    sess, inp = _session(context)
    if data is None:  # the load-time call
        return None
    dtype = np.uint8 if inp.type == "tensor(uint8)" else np.float32
    answers = []
    for request in data:
        body = request.get("body", request.get("data"))
        if isinstance(body, (bytes, bytearray)):
            body = json.loads(body)
        x = np.asarray(body, dtype=dtype)
        single = x.ndim == len(inp.shape) - 1
        y = sess.run(None, {inp.name: x[None] if single else x})[0]
        answers.append((y[0] if single else y).tolist())
    return answers
