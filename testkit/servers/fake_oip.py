"""A small in-process Open Inference Protocol v2 server on 127.0.0.1, for the monitor's tests.

It serves any number of models by name from one port (``/v2/models/NAME``), each a
function from a float32 batch to logits, and can be told per model to fail: answer HTTP
500, hang (until released), or slow down. A ``hits`` counter records what was asked, and
``inputs`` each request's rows.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

Model = Callable[[np.ndarray], np.ndarray]


class FakeOip:
    """Models behind one OIP REST server; use as a context manager."""

    def __init__(self, models: dict[str, Model], shape: tuple[int, ...]) -> None:
        self.models = dict(models)
        self.shape = shape
        self.faults: dict[str, str] = {}
        self.delay: dict[str, float] = {}
        self.hits: Counter[str] = Counter()
        self.samples: Counter[str] = Counter()
        self.inputs: dict[str, list[np.ndarray]] = {}
        self.release = threading.Event()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, obj: object) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                name = parts[2] if len(parts) >= 3 else ""
                if name not in fake.models:
                    return self._send(404, {"error": f"model {name} not found"})
                self._send(200, {"name": name, "inputs": [{"name": "input", "datatype": "FP32",
                                                           "shape": [-1, *fake.shape]}]})

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                req = json.loads(self.rfile.read(n) or b"{}")
                parts = self.path.strip("/").split("/")
                name = parts[2] if len(parts) >= 3 else ""
                with fake.lock:
                    fake.hits[name] += 1
                fault = fake.faults.get(name)
                if name not in fake.models:
                    return self._send(404, {"error": f"model {name} not found"})
                if fault == "500":
                    return self._send(500, {"error": "worker crashed"})
                if fault == "hang":
                    fake.release.wait(60)
                    return self._send(503, {"error": "released"})
                if fake.delay.get(name):
                    time.sleep(fake.delay[name])
                inp = req["inputs"][0]
                x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
                with fake.lock:
                    fake.samples[name] += len(x)
                    fake.inputs.setdefault(name, []).append(x.copy())
                z = np.asarray(fake.models[name](x), dtype=np.float32)
                self._send(200, {"model_name": name, "id": req.get("id"), "outputs": [
                    {"name": "logits", "datatype": "FP32", "shape": list(z.shape), "data": z.reshape(-1).tolist()}]})

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.origin}/v2/models/{name}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeOip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def torch_model(model: object) -> Model:
    """A torch module as a :data:`Model` (no gradients, one thread is enough here)."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()  # type: ignore[operator, no-any-return]

    return run
