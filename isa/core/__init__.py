"""The execution cores, all implementing ``run(state, mem, budget) -> exit code`` (see isa/state.py)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CoreRun = Callable[[np.ndarray, np.ndarray, int], int]
CORE_NAMES = ("jit", "c", "reference")


class CoreUnavailable(RuntimeError):
    """The requested core cannot run on this machine (the message says why)."""


def get_core(name: str) -> CoreRun:
    """The ``run`` function of the core called ``name`` (reference, jit or c)."""
    if name == "reference":
        from isa.core import reference

        return reference.run
    if name == "jit":
        from isa.core import jit

        return jit.run
    if name == "c":
        import native

        if not native.available():
            raise CoreUnavailable(f"the C core is unavailable: {native.unavailable_reason()}")
        return native.run
    raise CoreUnavailable(f"unknown core '{name}' (choose from {', '.join(CORE_NAMES)})")
