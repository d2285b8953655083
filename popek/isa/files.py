"""Reading a user's input files: regular files of a sane size only, so /dev/zero or a fifo cannot hang or
exhaust the host."""

from __future__ import annotations

import os
from pathlib import Path

MAX_SOURCE = 8 << 20  # bytes of one assembly source or profile: far above any real one
MAX_IMAGE_FILE = 1 << 30  # bytes of a binary image: the largest machine memory popek makes


class InputError(OSError):
    """An input that is not a regular file or is too large; ``reason`` says which."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def read_input(path: str | os.PathLike[str], limit: int = MAX_SOURCE) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; InputError otherwise."""
    p = Path(path)
    if not p.is_file():
        raise InputError(path, "not a regular file" if p.exists() else "no such file")
    size = p.stat().st_size
    if size > limit:
        raise InputError(path, f"{size} bytes is more than the {_human(limit)} an input may have")
    with p.open("rb") as f:
        data = f.read(limit + 1)  # the file may have grown since the stat
    if len(data) > limit:
        raise InputError(path, f"more than the {_human(limit)} an input may have")
    return data


def _human(n: int) -> str:
    return f"{n >> 30} GiB" if n >= 1 << 30 else f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"
