"""Selecting: how a fingerprint's samples are chosen.

One module per selector (see :mod:`.base` for the registry), the algorithms they call in
:mod:`.algorithms` (MANC, event cover, reach cover), how many queries in :mod:`.budget`, and
what coverage a selection predicts in :mod:`.prediction`.
"""

from __future__ import annotations

from veriprint.selectors import manc, random, reach, tamper_aware
from veriprint.selectors.base import (
           SelectionContext,
           Selector,
           get_selector,
           list_selectors,
           register,
)

__all__ = ["SelectionContext", "Selector", "get_selector", "list_selectors", "manc", "random", "reach",
           "register", "tamper_aware"]
