"""The execution cores, all implementing ``run(state, mem, budget) -> exit code`` (see popek/isa/state.py)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from popek.cores.contract import CoreRun, CoreUnavailable

CORE_NAMES = ("jit", "c", "reference", "dbt")
__all__ = ["CORE_NAMES", "ConsoleRun", "CoreRun", "CoreUnavailable", "ExitLoop", "console_run", "exit_loop", "get_core",
           "pv_exit_loop"]  # fmt: skip

# run_vm(vstate, rstate, host_mem, offset, memsize, budget, flags, mode, counters, console) -> VMX_* code
ExitLoop = Callable[..., int]
# run_console(state, mem, budget, console) -> (exit code, console bytes written into console)
ConsoleRun = Callable[..., tuple[int, int]]


def get_core(name: str) -> CoreRun:
    """The ``run`` function of the core called ``name`` (reference, jit, c or dbt)."""
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
    if name == "dbt":
        from popek.cores import dbt

        return dbt.run
    raise CoreUnavailable(f"unknown core '{name}' (choose from {', '.join(CORE_NAMES)})")


def _companion(core: CoreRun, jit_module: str, name: str) -> Callable | None:
    """The function ``name`` that goes with ``core``: from ``jit_module`` for the JIT core, from the C core's."""
    jit = sys.modules.get("popek.cores.jit")  # a core that was never loaded cannot be the one asked about
    if jit is not None and core is jit.run:
        return getattr(importlib.import_module(jit_module), name)
    c_core = sys.modules.get("popek.cores.c")
    if c_core is not None and c_core.available() and core is c_core.run:
        return getattr(c_core, name, None)
    return None


def exit_loop(core: CoreRun) -> ExitLoop | None:
    """The compiled VM-exit loop next to ``core`` (popek/cores/vmexit.py), or None where it has none."""
    return _companion(core, "popek.cores.vmexit", "run_vm")


def pv_exit_loop(core: CoreRun) -> Callable[..., int] | None:
    """The compiled loop for paravirtual guests next to ``core`` (``vmexit.run_pv``), or None where it has none."""
    return _companion(core, "popek.cores.vmexit", "run_pv")


def console_run(core: CoreRun) -> ConsoleRun | None:
    """``core``'s run with console output into a buffer instead of an exit per byte, or None where it has none."""
    return _companion(core, "popek.cores.jit", "run_console")
