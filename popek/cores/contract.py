"""What every core is: ``run(state, mem, budget) -> exit code`` (popek/isa/state.py states the contract)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CoreRun = Callable[[np.ndarray, np.ndarray, int], int]


class CoreUnavailable(RuntimeError):
    """The requested core cannot run on this machine (the message says why)."""


def check_vm_slice(host_mem: np.ndarray, offset: int, memsize: int, counters: np.ndarray, ncounters: int) -> None:
    """Refuse a VM-exit loop call whose slice is not in host memory or whose counters are too few."""
    if not 0 <= offset <= offset + memsize <= len(host_mem) or len(counters) < ncounters:
        raise ValueError("the VM's slice must lie in host memory and the counters hold NCOUNTERS slots")
