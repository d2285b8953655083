"""The console (port 0, docs/devices.md): bytes out to the host, bytes in from it."""

from __future__ import annotations

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
