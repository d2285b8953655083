"""The monitors, one file each, behind one interface (``vmm.monitors.base.Monitor``)."""

from __future__ import annotations

from popek.cores import CoreRun
from popek.vmm.monitors.bare import Bare
from popek.vmm.monitors.base import Monitor
from popek.vmm.monitors.full_emulation import FullEmulation
from popek.vmm.monitors.hybrid import Hybrid
from popek.vmm.monitors.paravirt import Paravirt, ParavirtNoAssist
from popek.vmm.monitors.rewrite import BinaryRewriting
from popek.vmm.monitors.trap_emulate import TrapAndEmulate

# Every monitor by name; the first six are the strategies a user compares, pv-noassist is pv without the
# processor's help (a benchmark's baseline).
MONITORS: dict[str, type[Monitor]] = {
    m.name: m for m in (Bare, FullEmulation, TrapAndEmulate, BinaryRewriting, Hybrid, Paravirt, ParavirtNoAssist)
}
STRATEGIES = ("bare", "full", "trap", "rewrite", "hybrid", "pv")


def get_monitor(name: str, core: str | CoreRun = "jit") -> Monitor:
    """A monitor by name (full, trap, hybrid, ...) running guests on ``core``."""
    if name not in MONITORS:
        raise ValueError(f"unknown monitor '{name}' (choose from {', '.join(MONITORS)})")
    return MONITORS[name](core)
