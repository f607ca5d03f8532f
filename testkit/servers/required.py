"""What a test needs from the machine: skipped where it is missing, a failure under CI.

``scripts/setup.sh`` installs every one of these (serving environments, PostgreSQL,
Chromium, the pretrained wheels), so on a CI run (``CI=true``) a missing one is a broken
set-up, not a reason to skip.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(msg: str) -> NoReturn:
    """Skip with ``msg`` (what is missing and how to install it); fail instead under CI."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg)
    pytest.skip(msg)
