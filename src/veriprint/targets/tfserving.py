"""TensorFlow Serving's REST predict API.

URL: ``tfserving+http(s)://HOST:PORT/v1/models/NAME[/versions/V | /labels/L]``. Each
request is ``POST ...:predict`` in the columnar format::

    {"signature_name": "serving_default", "inputs": {"input": [[...], ...]}}

(``"inputs": [[...]]`` when no input name is given) and the answer is
``{"outputs": [[...]]}`` or ``{"outputs": {"name": [[...]], ...}}``; row-format answers
(``{"predictions": ...}``) are read too. ``{"error": "..."}`` is reported as is.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from veriprint.errors import ConfigError
from veriprint.targets.base import TargetError
from veriprint.targets.http import HttpTarget, as_array, split_query, with_query

__all__ = ["TfServingTarget", "parse_tfserving_url"]

_URL = re.compile(r"^tfserving\+(https?://[^/]+)(/v1/models/[^/:]+(?:/(?:versions|labels)/[^/:]+)?)/?$")


def parse_tfserving_url(url: str) -> tuple[str, str]:
    """Split ``tfserving+http(s)://HOST:PORT/v1/models/NAME[...]`` into ``(base_url, path)``."""
    url, query = split_query(url)
    m = _URL.match(url)
    if not m:
        raise ConfigError("expected tfserving+http(s)://HOST:PORT/v1/models/NAME"
                         f"[/versions/V|/labels/L], got {url!r}")
    return with_query(m.group(1), query), m.group(2)


class TfServingTarget(HttpTarget):
    """A model behind TensorFlow Serving's REST ``:predict`` API.

    Args:
        url: ``tfserving+http(s)://HOST:PORT/v1/models/NAME[/versions/V|/labels/L]``.
        input_name: the signature's input (default ``None``: the model's only input).
        output_name: the output to read when the signature has several (default ``None``).
        signature_name: the signature to call (default ``None``: the server's default).
        **options: ``output``, ``datatype``, ``max_batch``, ``classes`` and transport options
            of :class:`~veriprint.targets.http.HttpTarget`.
    """

    protocol = "tfserving"

    def __init__(self, url: str, *, input_name: str | None = None, output_name: str | None = None,
                 signature_name: str | None = None, **options: Any) -> None:
        base, self.path = parse_tfserving_url(url)
        super().__init__(base, **options)
        self.input_name = input_name
        self.output_name = output_name
        self.signature_name = signature_name
        self.description = f"tfserving:{url.removeprefix('tfserving+')}"

    def _infer(self, data: np.ndarray) -> np.ndarray:
        values = data.tolist()
        payload: dict[str, Any] = {"inputs": {self.input_name: values} if self.input_name else values}
        if self.signature_name:
            payload["signature_name"] = self.signature_name
        answer = self._post(self.path + ":predict", payload, len(data))
        where = self.description
        if not isinstance(answer, dict):
            raise TargetError(f"{where}: expected a JSON object, got {type(answer).__name__}")
        if "error" in answer:
            raise TargetError(f"{where}: server said: {answer['error']}")
        key = "outputs" if "outputs" in answer else "predictions" if "predictions" in answer else None
        if key is None:
            raise TargetError(f"{where}: expected 'outputs' or 'predictions', got keys {sorted(answer)}")
        out = answer[key]
        if key == "predictions" and isinstance(out, list) and out and isinstance(out[0], dict):
            if self.output_name is None:
                raise TargetError(f"{where}: the signature has outputs {sorted(out[0])}; "
                                  "name the one to use with output_name")
            try:
                out = [row[self.output_name] for row in out]
            except (KeyError, TypeError) as e:
                raise TargetError(f"{where}: expected output {self.output_name!r} in every row") from e
        elif isinstance(out, dict):
            if self.output_name is None:
                if len(out) != 1:
                    raise TargetError(f"{where}: the signature has outputs {sorted(out)}; "
                                      "name the one to use with output_name")
                out = next(iter(out.values()))
            elif self.output_name in out:
                out = out[self.output_name]
            else:
                raise TargetError(f"{where}: expected output {self.output_name!r}, "
                                  f"server sent {sorted(out)}")
        return as_array(out, where)
