"""The results cache: one JSON line per finished cell, keyed by a hash of the cell's config.

``<out>/results.jsonl`` is appended to as cells finish (one writer: the runner's client),
so an interrupted run keeps every finished cell and a rerun skips them. A truncated last
line (the process died mid-write) is ignored.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["ResultCache"]

log = logging.getLogger(__name__)


def _clean(x: Any) -> Any:
    """JSON has no NaN or infinity: write them as strings that :func:`_restore` reads back."""
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _restore(x: Any) -> Any:
    if x in ("nan", "inf", "-inf"):
        return float(x)
    if isinstance(x, dict):
        return {k: _restore(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_restore(v) for v in x]
    return x


class ResultCache:
    """Rows by key, backed by a JSON lines file.

    Args:
        path: the ``.jsonl`` file (created on the first :meth:`put`).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for i, line in enumerate(self.path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = _restore(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("%s:%d: skipping an unreadable line", self.path, i)
                    continue
                if isinstance(row, dict) and "key" in row:
                    self._rows[row["key"]] = row

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._rows.get(key)

    def put(self, row: dict[str, Any]) -> None:
        """Store ``row`` (it must have a ``"key"``) and append it to the file at once."""
        if "key" not in row:
            raise ValueError(f"expected a row with a 'key', got keys {sorted(row)}")
        self._rows[row["key"]] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(_clean(row), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows.values())
