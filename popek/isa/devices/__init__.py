"""Devices behind the port I/O instructions (ISA §6, docs/devices.md). Only the host models devices; cores exit
to it. One file per device; ``PortBus`` maps the ports to them.
"""

from __future__ import annotations

import numpy as np

from popek.isa import state as S
from popek.isa.devices.console import NO_DEVICE, Console
from popek.isa.devices.nic import NIC_BASE, NIC_LAST, Message, Nic
from popek.isa.spec import CONSOLE_PORT

__all__ = ["NO_DEVICE", "Console", "Message", "Nic", "PortBus"]


class PortBus:
    """Maps port numbers to devices; a port with no device reads 0xFFFFFFFF and ignores writes."""

    def __init__(self, console: Console, nic: Nic | None = None) -> None:
        self.console = console
        self.nic = nic

    def read(self, port: int) -> int:
        """Read a port."""
        if port == CONSOLE_PORT:
            return self.console.read()
        if self.nic is not None and NIC_BASE <= port <= NIC_LAST:
            return self.nic.read(port)
        return NO_DEVICE

    def write(self, port: int, value: int) -> None:
        """Write a port."""
        if port == CONSOLE_PORT:
            self.console.write(value)
        elif self.nic is not None and NIC_BASE <= port <= NIC_LAST:
            self.nic.write(port, value)

    def complete(self, state: np.ndarray) -> None:
        """Perform the in/out a core exited for (EXIT_IO, described by the IO slots) and retire it."""
        port = int(state[S.IO_PORT])
        if state[S.IO_WRITE]:
            self.write(port, int(state[S.IO_VALUE]))
            S.complete_io(state)
        else:
            S.complete_io(state, self.read(port))
