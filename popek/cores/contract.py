"""What every core is: ``run(state, mem, budget) -> exit code`` (popek/isa/state.py states the contract)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

CoreRun = Callable[[np.ndarray, np.ndarray, int], int]


class CoreUnavailable(RuntimeError):
    """The requested core cannot run on this machine (the message says why)."""
