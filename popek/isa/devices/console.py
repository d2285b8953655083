"""The console (port 0, docs/devices.md): bytes out to the host, bytes in from it."""

from __future__ import annotations

from collections.abc import Callable

NO_DEVICE = 0xFFFFFFFF
OUTPUT_CAP = 16 << 20  # bytes of a guest's console output the host keeps; the rest is counted, not stored


class Output(bytearray):
    """A guest's console output: kept up to ``cap`` bytes, each piece also handed to ``sink`` as it comes.

    Whoever produces output (a core's console buffer, a monitor's hypercall, a port write) appends with ``+=``
    or ``append``; the cap and the sink apply to all of them alike, so a flooding guest cannot grow the host's
    memory and a watcher sees its lines while it runs.
    """

    def __init__(self, cap: int = OUTPUT_CAP) -> None:
        super().__init__()
        self.cap = cap
        self.dropped = 0  # bytes beyond the cap
        self.sink: Callable[[bytes], None] | None = None

    def __iadd__(self, data: bytes) -> Output:  # type: ignore[override]
        data = bytes(data)
        if self.sink is not None and data:
            self.sink(data)
        room = self.cap - len(self)
        if len(data) > room:
            self.dropped += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        super().__iadd__(data)
        return self

    def append(self, value: int) -> None:
        """Append one byte."""
        self += bytes((value,))


class Console:
    """Port 0: bytes written go to ``output``; reads take the next input byte or 0xFFFFFFFF."""

    def __init__(self, input_bytes: bytes = b"", cap: int = OUTPUT_CAP) -> None:
        self.output = Output(cap)
        self.input = bytearray(input_bytes)

    def read(self) -> int:
        """The next input byte, or 0xFFFFFFFF when there is none."""
        return self.input.pop(0) if self.input else NO_DEVICE

    def write(self, value: int) -> None:
        """Append the low byte of ``value`` to the output."""
        self.output.append(value & 0xFF)

    def text(self) -> str:
        """The output so far, decoded as UTF-8 (undecodable bytes replaced), with a mark where it was cut."""
        text = self.output.decode("utf-8", errors="replace")
        if self.output.dropped:
            text += f"\n[output truncated: {self.output.dropped} more bytes not kept]\n"
        return text
