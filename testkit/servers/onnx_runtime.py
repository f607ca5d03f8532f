"""An MLServer runtime that serves an ONNX file with onnxruntime (runs in .venv-serving).

model-settings.json: ``"implementation": "onnx_runtime.OnnxRuntime"``,
``"parameters": {"uri": "./model.onnx", "threads": 1}``. Each output of the graph is
returned under its own name, with the datatype and shape onnxruntime gives it.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        threads = (self.settings.parameters.model_extra or {}).get("threads")
        if threads:
            opts.intra_op_num_threads = int(threads)
        path = await get_model_uri(self.settings)
        self._session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name: i.type for i in self._session.get_inputs()}
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {}
        for request_input in payload.inputs:
            if request_input.name not in self._inputs:
                raise ValueError(f"expected inputs {sorted(self._inputs)}, got {request_input.name!r}")
            feeds[request_input.name] = np.ascontiguousarray(NumpyCodec.decode_input(request_input))
        names = [o.name for o in self._session.get_outputs()]
        results = self._session.run(None, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(n, r) for n, r in zip(names, results, strict=True)],
        )
