"""Serve ONNX classifiers with NVIDIA Triton through PyTriton, on the CPU.

Runs in the Triton environment (``scripts/setup-triton.sh`` makes ``.venv-triton`` with
Debian's ``/usr/bin/python3.11``, ``nvidia-pytriton`` and ``onnxruntime``), never in the
project's ``.venv``: it imports neither torch nor veriprint. Each ``--model`` is one ONNX
file bound under a name, with one FP32 (or UINT8) input and one FP32 output, run by
onnxruntime on one thread; Triton's ``max_batch_size`` is the largest request it accepts::

    .venv-triton/bin/python testkit/servers/triton_app.py --http-port 8000 --grpc-port 8001 \\
        --model fashion-cnn=cnn.onnx --max-batch-size 16

It prints ``ready`` on a line of its own once every model is loaded, and stops on SIGTERM
or SIGINT. The metrics endpoint is off (it would take a fixed port).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

_DTYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}


def _infer_fn(session: ort.InferenceSession, input_name: str, output_name: str) -> Any:
    onnx_input = session.get_inputs()[0].name

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        out = session.run(None, {onnx_input: inputs[input_name]})[0]
        return {output_name: np.asarray(out, dtype=np.float32)}

    return infer


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _bind(triton: Triton, name: str, path: Path, args: argparse.Namespace, max_batch_size: int) -> None:
    session = _session(path)
    spec = session.get_inputs()[0]
    dtype = _DTYPES.get(spec.type)
    if dtype is None:
        raise SystemExit(f"{path}: expected a float32 or uint8 input, got {spec.type}")
    shape = tuple(int(d) for d in spec.shape[1:])  # the batch axis is Triton's
    classes = int(session.get_outputs()[0].shape[-1])
    triton.bind(model_name=name, infer_func=_infer_fn(session, args.input_name, args.output_name),
                inputs=[Tensor(name=args.input_name, dtype=dtype, shape=shape)],
                outputs=[Tensor(name=args.output_name, dtype=np.float32, shape=(classes,))],
                config=ModelConfig(max_batch_size=max_batch_size), strict=True)


def _model(text: str) -> tuple[str, Path, int | None]:
    """``NAME=FILE.onnx`` or ``NAME=FILE.onnx@MAX_BATCH_SIZE``."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.onnx[@MAX_BATCH_SIZE], got {text!r}")
    file, at, size = rest.partition("@")
    if at and not size.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole MAX_BATCH_SIZE after '@', got {size!r}")
    return name, Path(file), int(size) if at else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=_model, action="append", required=True,
                   help="NAME=FILE.onnx[@MAX_BATCH_SIZE], once per model served")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--max-batch-size", type=int, default=16, help="Triton's limit per request (default 16)")
    p.add_argument("--input-name", default="image", help="the served input tensor's name (default image)")
    p.add_argument("--output-name", default="logits", help="the served output tensor's name (default logits)")
    p.add_argument("--workspace", type=Path, default=None, help="PyTriton's folder for sockets and the model store")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    config = TritonConfig(http_address=args.host, http_port=args.http_port, grpc_address=args.host,
                          grpc_port=args.grpc_port, allow_metrics=False, allow_cpu_metrics=False,
                          allow_gpu_metrics=False, exit_on_error=True, log_verbose=0)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with Triton(config=config, workspace=args.workspace) as triton:
        for name, path, size in args.model:
            _bind(triton, name, path, args, size or args.max_batch_size)
        triton.run()  # starts the server and loads the models; returns once they are ready
        print("ready", flush=True)
        while not stop.wait(0.5):
            if not triton.is_alive():
                print("Triton stopped on its own", file=sys.stderr, flush=True)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
