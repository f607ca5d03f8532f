"""Open Inference Protocol v2 over gRPC, through NVIDIA's ``tritonclient`` (optional extra).

URL: ``grpc://HOST:PORT/NAME[/versions/V]`` (``grpcs://`` for TLS). Install with
``pip install 'veriprint[grpc]'``. Inputs go as raw tensor contents; answers are read
from ``raw_output_contents`` or from the typed ``contents`` fields (servers differ: Triton
answers raw, MLServer answers raw to raw requests), then checked like the REST answers;
a URL naming a version needs an answer naming that version.
Retries (with backoff) are made only when the server was unreachable (``UNAVAILABLE``);
a timeout (``DEADLINE_EXCEEDED``) is not retried unless ``retry_timeouts`` is set.
"""

from __future__ import annotations

import itertools
import logging
import re
from typing import Any

import numpy as np

from veriprint.errors import ConfigError
from veriprint.redact import redact, refuse_url_credentials
from veriprint.targets.base import OutputForm, QueryBatch, Target, TargetError
from veriprint.targets.contract import check_identity, pick_output
from veriprint.targets.http import HttpOptions, InputDatatype, check_target_options
from veriprint.targets.oip import FLOAT_TYPES, INT_TYPES, batch_limit_hint, input_name_hint
from veriprint.targets.transport import Retryable, transport_options, with_retries

__all__ = ["GrpcOipTarget", "parse_grpc_url"]

log = logging.getLogger(__name__)

_URL = re.compile(r"^(grpcs?)://([^/]+)/([^/]+)(?:/versions/([^/]+))?/?$")
_ids = itertools.count(1)
_CONTENTS = {  # datatype -> (typed contents field, NumPy dtype)
    "FP32": ("fp32_contents", np.float32), "FP64": ("fp64_contents", np.float64),
    "INT8": ("int_contents", np.int8), "INT16": ("int_contents", np.int16),
    "INT32": ("int_contents", np.int32), "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint8), "UINT16": ("uint_contents", np.uint16),
    "UINT32": ("uint_contents", np.uint32), "UINT64": ("uint64_contents", np.uint64),
    "FP16": ("", np.float16),
}


def parse_grpc_url(url: str) -> tuple[bool, str, str, str | None]:
    """Split ``grpc(s)://HOST:PORT/NAME[/versions/V]`` into ``(tls, address, model, version)``."""
    if "?" in url or "#" in url:
        raise ConfigError(f"expected grpc://HOST:PORT/NAME[/versions/V] (or grpcs://) without a query string "
                          f"(gRPC has none; put credentials in --auth-env), got {redact(url)!r}")
    m = _URL.match(url)
    if not m:
        raise ConfigError(f"expected grpc://HOST:PORT/NAME[/versions/V] (or grpcs://), got {url!r}")
    return m.group(1) == "grpcs", m.group(2), m.group(3), m.group(4)


class GrpcOipTarget(Target):
    """A model served with the Open Inference Protocol v2 over gRPC.

    Args:
        url: ``grpc(s)://HOST:PORT/NAME[/versions/V]``.
        input_name: the model's input (default: from metadata, else ``"input"``).
        output_name: the output to read (default: the only one).
        output: what the server returns (default ``"logits"``).
        datatype: ``"FP32"`` (default) or ``"UINT8"`` (grid values).
        max_batch: most samples per request (default ``None``).
        classes: expected number of classes (default ``None``: not checked).
        http: transport options (``timeout``, ``retries``, ``backoff``, ``retry_timeouts``,
            ``ca_file`` for grpcs, ``auth_env``/``auth_header`` sent as gRPC metadata);
            or give them as keyword arguments. ``verify_tls=False`` is not available.

    Attributes:
        requests_sent: requests made for queries, retries included.
        samples_sent: samples sent in them, retries included.
    """

    protocol = "oip-grpc"

    def __init__(self, url: str, *, input_name: str | None = None, output_name: str | None = None,
                 output: OutputForm = "logits", datatype: InputDatatype = "FP32",
                 max_batch: int | None = None, classes: int | None = None,
                 http: HttpOptions | None = None, **http_options: Any) -> None:
        check_target_options(output, datatype, max_batch)
        refuse_url_credentials(url)
        tls, address, self.model, version = parse_grpc_url(url)
        self.options = transport_options(http, http_options, type(self).__name__)
        if not self.options.verify_tls:
            raise ConfigError("verify_tls=False is not supported for gRPC; give ca_file instead")
        try:
            import tritonclient.grpc as grpcclient
        except ImportError as e:
            raise TargetError("gRPC targets need tritonclient: pip install 'veriprint[grpc]'") from e
        certs = None
        if tls and self.options.ca_file:
            with open(self.options.ca_file, "rb") as f:
                certs = f.read()
        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(url=address, ssl=tls, root_certificates=certs)
        self._headers = {k.lower(): v for k, v in self.options.auth_headers().items()}
        self.version = version or ""
        self.input_name = input_name
        self.output_name = output_name
        self.output = output
        self.datatype = datatype
        self.max_batch = max_batch
        self.classes = classes
        self.description = f"oip-grpc:{url}"
        self.requests_sent = 0
        self.samples_sent = 0
        self._attempts = 0

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        """One gRPC call under the call deadline, through the shared retry loop."""
        from tritonclient.utils import InferenceServerException

        def attempt() -> Any:
            self._attempts += 1
            try:
                return fn(*args, headers=self._headers or None, client_timeout=self.options.timeout, **kw)
            except InferenceServerException as e:
                status = str(e.status() or "")
                text = redact(e.message() or str(e))
                if "DEADLINE" in status:
                    text = f"no answer within the {self.options.timeout:g} s timeout"
                message = f"{self.description}: {what} failed: {status} {text}"
                if "UNAVAILABLE" in status or (self.options.retry_timeouts and "DEADLINE" in status):
                    raise Retryable(message) from e
                raise TargetError(message) from e

        return with_retries(attempt, self.options)

    def _prepare(self) -> None:
        if self.input_name is not None:
            return
        name = "input"
        try:
            meta = self._call("metadata", self._client.get_model_metadata, self.model, self.version)
            if len(meta.inputs) == 1:
                name = meta.inputs[0].name
            elif len(meta.inputs) > 1:
                raise TargetError(f"{self.description}: the model has {len(meta.inputs)} inputs "
                                  f"{[i.name for i in meta.inputs]}; name the one to use with input_name")
        except TargetError as e:
            if "input_name" in str(e):
                raise
            log.info("no usable metadata (%s); sending the input as %r", e, name)
        self.input_name = name

    keep_precision = False  # the wire carries float32 (FP32) answers
    _counts_itself = True  # every gRPC attempt, retries included (see _infer)

    def _answer(self, batch: QueryBatch) -> np.ndarray:
        if self.datatype == "UINT8":
            if batch.grid is None:
                raise TargetError("this target takes UINT8 inputs but the fingerprint's samples have no "
                                  "8-bit grid values; use datatype='FP32'")
            data = np.asarray(batch.grid).astype(np.uint8)
        else:
            data = np.asarray(batch.x, dtype=np.float32)
        return self._infer(data)

    def _infer(self, data: np.ndarray) -> np.ndarray:
        inp = self._grpc.InferInput(self.input_name, list(data.shape), self.datatype)
        inp.set_data_from_numpy(np.ascontiguousarray(data))
        outputs = [self._grpc.InferRequestedOutput(self.output_name)] if self.output_name else None
        rid = f"veriprint-{next(_ids)}"
        before = self._attempts
        try:
            try:
                result = self._call("infer", self._client.infer, self.model, [inp], model_version=self.version,
                                    outputs=outputs, request_id=rid)
            finally:
                sent = self._attempts - before
                self.requests_sent += sent
                self.samples_sent += sent * len(data)
        except TargetError as e:  # counted above: a metadata request for the hint is not a query
            hint = batch_limit_hint(str(e), len(data)) or self._input_hint(str(e))
            if hint:
                raise TargetError(f"{e}{hint}") from e
            raise
        return self._decode(result.get_response(), rid)

    def _input_hint(self, said: str) -> str:
        if "unexpected inference input" not in said:
            return ""
        try:
            meta = self._call("metadata", self._client.get_model_metadata, self.model, self.version)
        except TargetError:
            return ""
        return input_name_hint(said, self.input_name, [i.name for i in meta.inputs])

    def _decode(self, resp: Any, rid: str) -> np.ndarray:
        where = self.description
        check_identity(where, model=self.model, version=self.version, request_id=rid,
                       name=resp.model_name or None, got_version=resp.model_version, got_id=resp.id)
        i = pick_output([o.name for o in resp.outputs], self.output_name, where)
        out = resp.outputs[i]
        where = f"{where} output {out.name!r}"
        allowed = FLOAT_TYPES if self.output in ("logits", "probs", "top1-prob") else INT_TYPES | FLOAT_TYPES
        if out.datatype not in allowed or out.datatype not in _CONTENTS:
            raise TargetError(f"{where}: expected datatype in {sorted(allowed & set(_CONTENTS))} for "
                              f"{self.output}, got {out.datatype!r}")
        field, dtype = _CONTENTS[out.datatype]
        shape = [int(d) for d in out.shape]
        if len(resp.raw_output_contents) == len(resp.outputs):
            raw = resp.raw_output_contents[i]
            if len(raw) % np.dtype(dtype).itemsize:
                raise TargetError(f"{where}: {len(raw)} bytes is not a whole number of {out.datatype} values")
            arr = np.frombuffer(raw, dtype=dtype)
        elif field:
            arr = np.asarray(getattr(out.contents, field), dtype=dtype)
        else:
            raise TargetError(f"{where}: expected raw contents for {out.datatype}, got none")
        count = int(np.prod(shape)) if shape else 1
        if arr.size != count:
            raise TargetError(f"{where}: shape {shape} needs {count} values, got {arr.size}")
        return arr.reshape(shape).astype(np.float64 if arr.dtype.kind == "f" else np.int64)

    def close(self) -> None:
        self._client.close()
