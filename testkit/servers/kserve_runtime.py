"""A KServe model server for ONNX files, run with .venv-kserve's Python (scripts/setup-kserve.sh).

``python kserve_runtime.py --http-port P --grpc-port Q NAME=FILE.onnx ...`` starts one
``kserve.ModelServer`` with one :class:`OnnxModel` (a custom ``kserve.Model``) per
``NAME=FILE``, answering the Open Inference Protocol v2 over REST and gRPC. Each output of
the graph is returned under its own name, with the datatype and shape onnxruntime gives it;
the metadata (``GET /v2/models/NAME``) lists the graph's inputs and outputs.

KServe 0.21 binds its REST server to ``0.0.0.0`` and its gRPC server to ``[::]`` with no
setting for the host; both are bound to 127.0.0.1 here instead (:func:`loopback_only`).
"""

from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

import kserve
import numpy as np
import onnxruntime as ort
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

HOST = "127.0.0.1"
_DATATYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
              "tensor(uint8)": "UINT8", "tensor(int8)": "INT8", "tensor(int32)": "INT32",
              "tensor(int64)": "INT64"}


def _dims(shape: list[object]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


class OnnxModel(kserve.Model):
    """One ONNX file, run by onnxruntime on the CPU with ``threads`` intra-op threads."""

    def __init__(self, name: str, path: str, threads: int = 1) -> None:
        super().__init__(name)
        self.path, self.threads = path, threads
        self.session: ort.InferenceSession | None = None

    def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        self.ready = True
        return self.ready

    def _types(self, args: list[ort.NodeArg]) -> list[dict[str, object]]:
        return [{"name": a.name, "datatype": _DATATYPES.get(a.type, a.type), "shape": _dims(a.shape)}
                for a in args]

    def get_input_types(self) -> list[dict[str, object]]:
        assert self.session is not None
        return self._types(self.session.get_inputs())

    def get_output_types(self) -> list[dict[str, object]]:
        assert self.session is not None
        return self._types(self.session.get_outputs())

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
        assert self.session is not None
        wanted = {i.name: i for i in self.session.get_inputs()}
        feeds = {}
        for tensor in payload.inputs:
            spec = wanted.get(tensor.name)
            if spec is None:
                raise InvalidInput(f"expected inputs {sorted(wanted)}, got {tensor.name!r}")
            if tensor.datatype != _DATATYPES.get(spec.type):
                raise InvalidInput(f"expected {tensor.name!r} as {_DATATYPES.get(spec.type)}, got {tensor.datatype}")
            x = np.ascontiguousarray(tensor.as_numpy())
            want = _dims(spec.shape)
            if x.ndim != len(want) or any(w not in (-1, d) for w, d in zip(want, x.shape, strict=True)):
                raise InvalidInput(f"expected {tensor.name!r} of shape {want}, got {list(x.shape)}")
            feeds[tensor.name] = x
        names = [o.name for o in self.session.get_outputs()]
        outputs = []
        for name, y in zip(names, self.session.run(None, feeds), strict=True):
            y = np.asarray(y)
            out = InferOutput(name=name, shape=list(y.shape), datatype=_DATATYPES[f"tensor({_np_name(y)})"])
            out.set_data_from_numpy(y, binary_data=False)
            outputs.append(out)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)


def _np_name(y: np.ndarray) -> str:
    return {"float32": "float", "float64": "double"}.get(y.dtype.name, y.dtype.name)


def loopback_only() -> None:
    """Bind KServe's REST and gRPC servers to 127.0.0.1 (KServe 0.21 hard-codes all addresses)."""
    import kserve.model_server as ms
    from grpc import aio
    from kserve.protocol.grpc import server as grpc_server

    class LoopbackREST(ms.RESTServer):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.config.host = HOST

    real_server = aio.server

    def loopback_server(*args: object, **kwargs: object) -> aio.Server:
        srv = real_server(*args, **kwargs)
        add = srv.add_insecure_port
        srv.add_insecure_port = lambda address: add(address.replace("[::]", HOST, 1))
        return srv

    ms.RESTServer = LoopbackREST
    grpc_server.aio = SimpleNamespace(server=loopback_server)  # the module's only use of grpc.aio


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("models", nargs="+", metavar="NAME=FILE.onnx")
    a = p.parse_args(argv)
    loopback_only()
    models = []
    for spec in a.models:
        name, _, path = spec.partition("=")
        m = OnnxModel(name, path, a.threads)
        m.load()
        models.append(m)
    kserve.ModelServer(http_port=a.http_port, grpc_port=a.grpc_port, workers=1,
                       enable_latency_logging=False, grace_period=5).start(models)


if __name__ == "__main__":
    main(sys.argv[1:])
