"""Selectors: how a fingerprint's samples are chosen (one module each, see :mod:`.base`)."""

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
