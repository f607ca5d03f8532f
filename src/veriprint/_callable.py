"""Modules that share their name with their main function can be called like it.

``veriprint.pipeline.generate``, ``veriprint.verification.verify`` and ``veriprint.tamper`` are both a module and
the function that module is about. ``from veriprint import generate`` gives the function
in a fresh process, but once anything has imported the module (``import
veriprint.pipeline`` does), Python's import system binds the name to the module. Making
the module callable keeps the two the same to a caller: ``veriprint.generate(model,
seeds, config)`` runs the function whichever object the name holds.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["callable_module"]


def callable_module(module_name: str, function_name: str) -> None:
    """Make the module ``module_name`` call its attribute ``function_name`` when called."""

    class _CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, function_name)(*args, **kwargs)

    _CallableModule.__doc__ = f"The module {module_name}, callable as its function {function_name}."
    sys.modules[module_name].__class__ = _CallableModule
