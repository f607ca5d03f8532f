"""Open Inference Protocol v2 over REST JSON (KServe, NVIDIA Triton, Seldon MLServer).

URL: ``http(s)://HOST:PORT/v2/models/NAME[/versions/V]``. One query batch is one or more
``POST .../infer`` requests::

    {"id": "...", "inputs": [{"name": "input", "shape": [8, 1, 28, 28],
      "datatype": "FP32", "data": [...]}], "outputs": [{"name": "logits"}]}

and every answer is checked: HTTP status, ``model_name`` and ``id`` when the server
echoes them, ``model_version`` when the URL names a version (a server that ignores the
version answers with another model), the output's presence, ``datatype``, ``shape``,
element count and values.
The input name, when not given, is read once from the model's metadata
(``GET /v2/models/NAME``), falling back to ``"input"``. JSON tensors only: Triton's
binary-tensor extension is not used (MLServer does not implement it).
"""

from __future__ import annotations

import itertools
import logging
import re
from typing import Any

import numpy as np

from veriprint.errors import ConfigError
from veriprint.targets.base import TargetError
from veriprint.targets.contract import check_identity, pick_output
from veriprint.targets.http import HttpTarget, as_array, split_query, with_query

__all__ = ["OipTarget", "batch_limit_hint", "input_name_hint", "parse_oip_url"]

log = logging.getLogger(__name__)

_URL = re.compile(r"^(https?://[^/]+)/v2/models/([^/]+)(?:/versions/([^/]+))?/?$")
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_ids = itertools.count(1)
_BATCH_LIMIT = re.compile(r"batch-size must be <= (\d+)")  # Triton's refusal of a request too large


def batch_limit_hint(said: str, sent: int) -> str:
    """What to add to a server's refusal when it names a batch limit (Triton's ``max_batch_size``).

    Args:
        said: the server's error text.
        sent: the samples in the refused request.

    Returns:
        ``"; expected at most N samples per request, sent M: set --max-batch N ..."``, or
        ``""`` when the text names no limit.
    """
    m = _BATCH_LIMIT.search(said)
    if m is None:
        return ""
    limit = int(m.group(1))
    return (f"; expected at most {limit} samples per request (the model's max_batch_size), sent {sent}: "
            f"set --max-batch {limit} (max_batch={limit})")


def input_name_hint(said: str, sent: str | None, names: list[str]) -> str:
    """What to add to a server's refusal of an input name it does not know (Triton's
    "unexpected inference input"), given the input names of the model's metadata.

    Returns:
        ``"; expected the input 'image' (the model's metadata), sent 'pixels': ..."``, or
        ``""`` when the text is another error or the metadata names no input.
    """
    if "unexpected inference input" not in said or not names:
        return ""
    names = [n[:64] for n in names[:8]]  # what a server names is shown, never more than a line of it
    want = f"the input {names[0]!r}" if len(names) == 1 else f"one of the inputs {names}"
    fix = f"set --input-name {names[0]} or leave it out" if len(names) == 1 else "set --input-name"
    return f"; expected {want} (the model's metadata), sent {sent!r}: {fix}"


def parse_oip_url(url: str) -> tuple[str, str, str | None]:
    """Split an OIP v2 model URL into ``(base_url, model, version)``.

    Raises:
        ValueError: the URL is not ``http(s)://HOST:PORT/v2/models/NAME[/versions/V]``.
    """
    url, query = split_query(url)
    m = _URL.match(url)
    if not m:
        raise ConfigError(f"expected http(s)://HOST:PORT/v2/models/NAME[/versions/V], got {url!r}")
    return with_query(m.group(1), query), m.group(2), m.group(3)


class OipTarget(HttpTarget):
    """A model served with the Open Inference Protocol v2 (REST).

    Args:
        url: ``http(s)://HOST:PORT/v2/models/NAME[/versions/V]``.
        input_name: the model's input tensor (default: from metadata, else ``"input"``).
        output_name: the output tensor to read (default: the only one the server returns).
        **options: ``output``, ``datatype`` (``"FP32"``/``"UINT8"``), ``max_batch``,
            ``classes`` and the transport options of :class:`~veriprint.targets.http.HttpTarget`.
    """

    protocol = "oip-rest"

    def __init__(self, url: str, *, input_name: str | None = None, output_name: str | None = None,
                 **options: Any) -> None:
        base, self.model, self.version = parse_oip_url(url)
        super().__init__(base, **options)
        self.path = f"/v2/models/{self.model}" + (f"/versions/{self.version}" if self.version else "")
        self.input_name = input_name
        self.output_name = output_name
        self.description = f"oip:{url}"

    def metadata(self) -> dict[str, Any]:
        """The model's metadata (``GET /v2/models/NAME``)."""
        meta = self.client.get_json(self.path)
        if not isinstance(meta, dict):
            raise TargetError(f"{self.description}: expected model metadata as a JSON object, "
                              f"got {type(meta).__name__}")
        return meta

    def _prepare(self) -> None:
        if self.input_name is not None:
            return
        name = "input"
        try:
            inputs = self.metadata().get("inputs") or []
            if len(inputs) == 1 and isinstance(inputs[0], dict) and isinstance(inputs[0].get("name"), str):
                name = inputs[0]["name"]
            elif len(inputs) > 1:
                names = [i.get("name") for i in inputs if isinstance(i, dict)]
                raise TargetError(f"{self.description}: the model has {len(inputs)} inputs {names}; "
                                  "name the one to use with input_name")
        except TargetError as e:
            if "input_name" in str(e):
                raise
            log.info("no usable metadata (%s); sending the input as %r", e, name)
        self.input_name = name

    def _infer(self, data: np.ndarray) -> np.ndarray:
        request_id = f"veriprint-{next(_ids)}"
        payload: dict[str, Any] = {
            "id": request_id,
            "inputs": [{"name": self.input_name, "shape": list(data.shape),
                        "datatype": self.datatype, "data": data.reshape(-1).tolist()}],
        }
        if self.output_name:
            payload["outputs"] = [{"name": self.output_name}]
        try:
            answer = self._post(self.path + "/infer", payload, len(data))
        except TargetError as e:
            hint = batch_limit_hint(str(e), len(data)) or self._input_hint(str(e))
            if hint:
                raise TargetError(f"{e}{hint}") from e
            raise
        return self._decode(answer, request_id)

    def _input_hint(self, said: str) -> str:
        if "unexpected inference input" not in said:
            return ""
        try:
            inputs = self.metadata().get("inputs") or []
        except TargetError:
            return ""
        names = [i["name"] for i in inputs if isinstance(i, dict) and isinstance(i.get("name"), str)]
        return input_name_hint(said, self.input_name, names)

    def _decode(self, answer: Any, request_id: str) -> np.ndarray:
        where = self.description
        if not isinstance(answer, dict):
            raise TargetError(f"{where}: expected an inference response object, got {type(answer).__name__}")
        if "error" in answer:
            raise TargetError(f"{where}: server said: {answer['error']}")
        check_identity(where, model=self.model, version=self.version, request_id=request_id,
                       name=answer.get("model_name"), got_version=answer.get("model_version"), got_id=answer.get("id"))
        outputs = answer.get("outputs")
        if not isinstance(outputs, list) or not outputs:
            raise TargetError(f"{where}: expected a non-empty 'outputs' list, got {outputs!r:.200}")
        names = [o.get("name") if isinstance(o, dict) else None for o in outputs]
        tensor = outputs[pick_output(names, self.output_name, where)]
        label = tensor.get("name") if isinstance(tensor, dict) else None
        return _tensor(tensor, self.output, f"{where} output {label!r}")


def _tensor(tensor: Any, form: str, where: str) -> np.ndarray:
    """Decode one OIP v2 JSON tensor, checking datatype, shape and element count."""
    if not isinstance(tensor, dict):
        raise TargetError(f"{where}: expected a tensor object, got {type(tensor).__name__}")
    if (tensor.get("parameters") or {}).get("binary_data_size") is not None:
        raise TargetError(f"{where}: expected JSON data, got a binary tensor (not supported)")
    datatype = tensor.get("datatype")
    allowed = FLOAT_TYPES if form in ("logits", "probs", "top1-prob") else INT_TYPES | FLOAT_TYPES
    if datatype not in allowed:
        raise TargetError(f"{where}: expected datatype in {sorted(allowed)} for {form}, got {datatype!r}")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                               and d >= 0 for d in shape)):
        raise TargetError(f"{where}: expected 'shape' to be a list of sizes, got {shape!r}")
    if "data" not in tensor:
        raise TargetError(f"{where}: expected a 'data' field, got keys {sorted(tensor)}")
    arr = as_array(tensor["data"], where)
    count = int(np.prod(shape)) if shape else 1
    if arr.size != count:
        raise TargetError(f"{where}: shape {shape} needs {count} values, got {arr.size}")
    return arr.reshape(shape)
