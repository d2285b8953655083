"""Devices behind the port I/O instructions (ISA §6). Only the host models devices; cores exit to it."""

from __future__ import annotations

import numpy as np

from popek.isa import state as S
from popek.isa.spec import CONSOLE_PORT

NO_DEVICE = 0xFFFFFFFF


class Console:
    """Port 0: bytes written go to ``output``; reads take the next input byte or 0xFFFFFFFF."""

    def __init__(self, input_bytes: bytes = b"") -> None:
        self.output = bytearray()
        self.input = bytearray(input_bytes)

    def read(self) -> int:
        """The next input byte, or 0xFFFFFFFF when there is none."""
        return self.input.pop(0) if self.input else NO_DEVICE

    def write(self, value: int) -> None:
        """Append the low byte of ``value`` to the output."""
        self.output.append(value & 0xFF)

    def text(self) -> str:
        """The output so far, decoded as UTF-8 (undecodable bytes replaced)."""
        return self.output.decode("utf-8", errors="replace")


class PortBus:
    """Maps port numbers to devices; a port with no device reads 0xFFFFFFFF and ignores writes."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def read(self, port: int) -> int:
        """Read a port."""
        return self.console.read() if port == CONSOLE_PORT else NO_DEVICE

    def write(self, port: int, value: int) -> None:
        """Write a port."""
        if port == CONSOLE_PORT:
            self.console.write(value)

    def complete(self, state: np.ndarray) -> None:
        """Perform the in/out a core exited for (EXIT_IO, described by the IO slots) and retire it."""
        port = int(state[S.IO_PORT])
        if state[S.IO_WRITE]:
            self.write(port, int(state[S.IO_VALUE]))
            S.complete_io(state)
        else:
            S.complete_io(state, self.read(port))
