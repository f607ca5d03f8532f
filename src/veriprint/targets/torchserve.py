"""TorchServe's inference API: ``torchserve+http(s)://HOST:PORT/predictions/NAME[/VERSION]``.

TorchServe has no standard tensor format: what a request body means is up to the model's
handler. veriprint sends JSON (``Content-Type: application/json``):

* ``per_request="batch"`` (default): the whole batch as one nested list ``(n, ...)``;
  the handler answers a nested list with one row per sample (``(n, classes)`` scores,
  or ``n`` labels);
* ``per_request="sample"``: one request per sample, body ``(...)``, answer one row or
  one label (TorchServe's own server-side batching then groups concurrent requests).

An answer may also be an object holding the rows under ``output_name``. A handler that
does this takes about ten lines; ``docs/guide/serving.md`` shows one.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np

from veriprint.errors import ConfigError
from veriprint.targets.base import TargetError
from veriprint.targets.http import HttpTarget, as_array, split_query, with_query

__all__ = ["TorchServeTarget", "parse_torchserve_url"]

_URL = re.compile(r"^torchserve\+(https?://[^/]+)/predictions/([^/]+)(?:/([^/]+))?/?$")


def parse_torchserve_url(url: str) -> tuple[str, str, str | None]:
    """Split ``torchserve+http(s)://HOST:PORT/predictions/NAME[/VERSION]`` into
    ``(base_url, model, version)``."""
    url, query = split_query(url)
    m = _URL.match(url)
    if not m:
        raise ConfigError(
            f"expected torchserve+http(s)://HOST:PORT/predictions/NAME[/VERSION], got {url!r}")
    return with_query(m.group(1), query), m.group(2), m.group(3)


class TorchServeTarget(HttpTarget):
    """A model behind TorchServe's ``/predictions`` API with a JSON handler.

    Args:
        url: ``torchserve+http(s)://HOST:PORT/predictions/NAME[/VERSION]``.
        per_request: ``"batch"`` (default) or ``"sample"``, see the module docs.
        output_name: key of the rows when the handler answers a JSON object
            (default ``None``: the answer is the rows themselves).
        **options: ``output``, ``datatype``, ``max_batch``, ``classes`` and transport options
            of :class:`~veriprint.targets.http.HttpTarget`.
    """

    protocol = "torchserve"

    def __init__(self, url: str, *, per_request: Literal["batch", "sample"] = "batch",
                 output_name: str | None = None, **options: Any) -> None:
        if per_request not in ("batch", "sample"):
            raise ConfigError(f"expected per_request in ('batch', 'sample'), got {per_request!r}")
        base, self.model, self.version = parse_torchserve_url(url)
        super().__init__(base, **options)
        self.path = f"/predictions/{self.model}" + (f"/{self.version}" if self.version else "")
        self.per_request = per_request
        self.output_name = output_name
        self.description = f"torchserve:{url.removeprefix('torchserve+')}"

    def _infer(self, data: np.ndarray) -> np.ndarray:
        if self.per_request == "batch":
            return self._rows(self._post(self.path, data.tolist(), len(data)))
        rows: list[np.ndarray] = []
        for i, sample in enumerate(data):
            row = self._rows(self._post(self.path, sample.tolist(), 1))
            if row.ndim == 2 and row.shape[0] == 1:
                row = row[0]
            if self.output == "labels" and row.size == 1:
                row = row.reshape(())
            elif self.output == "labels" or row.ndim != 1:
                raise TargetError(f"{self.description}: expected one {self.output} answer for "
                                  f"sample {i}, got shape {list(row.shape)}")
            if rows and row.shape != rows[0].shape:
                raise TargetError(f"{self.description}: expected answers of shape "
                                  f"{list(rows[0].shape)}, sample {i} got {list(row.shape)}")
            rows.append(row)
        return np.stack(rows)

    def _rows(self, answer: Any) -> np.ndarray:
        where = self.description
        if self.output_name is not None:
            if not isinstance(answer, dict) or self.output_name not in answer:
                keys = sorted(answer) if isinstance(answer, dict) else type(answer).__name__
                raise TargetError(f"{where}: expected an object with key {self.output_name!r}, got {keys}")
            answer = answer[self.output_name]
        elif isinstance(answer, dict):
            if "error" in answer or "message" in answer:
                raise TargetError(f"{where}: server said: {answer.get('error') or answer.get('message')}")
            raise TargetError(f"{where}: expected a JSON list of rows, got an object with keys "
                              f"{sorted(answer)}; set output_name")
        return as_array(answer, where)
