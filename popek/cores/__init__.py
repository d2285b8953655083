"""The execution cores, all implementing ``run(state, mem, budget) -> exit code`` (see popek/isa/state.py)."""

from __future__ import annotations

from popek.cores.contract import CoreRun, CoreUnavailable

CORE_NAMES = ("jit", "c", "reference")
__all__ = ["CORE_NAMES", "CoreRun", "CoreUnavailable", "get_core"]


def get_core(name: str) -> CoreRun:
    """The ``run`` function of the core called ``name`` (reference, jit or c)."""
    if name == "reference":
        from popek.cores import reference

        return reference.run
    if name == "jit":
        from popek.cores import jit

        return jit.run
    if name == "c":
        from popek.cores import c as c_core

        if not c_core.available():
            raise CoreUnavailable(f"the C core is unavailable: {c_core.unavailable_reason()}")
        return c_core.run
    raise CoreUnavailable(f"unknown core '{name}' (choose from {', '.join(CORE_NAMES)})")
