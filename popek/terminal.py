"""Showing guests' console output to a person: as it is produced, decoded, and with control characters made
visible, so that a guest cannot move the cursor, recolour the terminal or forge another VM's line."""

from __future__ import annotations

import codecs
import re
from typing import TextIO

LINE_MAX = 4096  # characters of one unfinished line held back before it is shown anyway
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but \t and \n


def escape(text: str) -> str:
    """``text`` with every control character except tab and newline shown as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def escape_for(out: TextIO, text: str) -> str:
    """``text`` escaped when ``out`` is a terminal, as it is otherwise (a file or a pipe gets the guest's bytes)."""
    return escape(text) if out.isatty() else text


class Stream:
    """A console sink: decodes a guest's bytes as they come and writes them to ``out``, line by line with
    ``prefix`` when one is given (then always escaped, since lines of several VMs interleave)."""

    def __init__(self, out: TextIO, prefix: str = "", always_escape: bool = False) -> None:
        self.out, self.prefix = out, prefix
        self.escape = always_escape or out.isatty()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.partial = ""
        self.lines = 0

    def __call__(self, data: bytes) -> None:
        """Take the next bytes of output."""
        self.write(self.decoder.decode(data))

    def write(self, text: str) -> None:
        """Write decoded text: at once without a prefix, by whole lines with one."""
        if self.escape:
            text = escape(text)
        if not self.prefix:
            self.out.write(text)
            self.out.flush()
            return
        *lines, self.partial = (self.partial + text).split("\n")
        while len(self.partial) > LINE_MAX:  # a line without end is shown in pieces, not kept whole
            lines.append(self.partial[:LINE_MAX])
            self.partial = self.partial[LINE_MAX:]
        if lines:
            self.out.write("".join(f"{self.prefix}{line}\n" for line in lines))
            self.out.flush()
            self.lines += len(lines)

    def close(self) -> None:
        """Write what is left: an unfinished last line, or the prefix alone for a guest that wrote nothing."""
        self.write(self.decoder.decode(b"", final=True))
        if self.prefix and (self.partial or not self.lines):
            self.out.write(f"{self.prefix}{self.partial}\n")
            self.partial = ""
        self.out.flush()
