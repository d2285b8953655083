"""The bare machine: memory, a state, a console and a core; load an image and run it to ``halt``."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from popek.cores import CoreRun, get_core
from popek.isa import state as S
from popek.isa.devices import Console, PortBus
from popek.isa.profiles import Profile, load_profile
from popek.isa.spec import CAUSE_NAMES

DEFAULT_MEMSIZE = 1 << 20
DEFAULT_CORE = "jit"
SLICE = 1 << 22  # steps per core call between checks of the step limit

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*$")


def parse_size(text: str) -> int:
    """Parse a memory size such as ``65536``, ``64K`` or ``4M`` (binary units)."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"invalid memory size '{text}' (examples: 65536, 64K, 4M)")
    size = int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]
    if not 16 <= size <= 1 << 30 or size % 4:
        raise ValueError(f"memory size {text} must be a multiple of 4 between 16 bytes and 1G")
    return size


@dataclass
class RunResult:
    """What a run produced: console output, exit status and the final machine state."""

    console: str
    status: int
    steps: int
    halted: bool
    regs: list[int]
    pc: int
    exit: str  # halt, limit, idle or error
    message: str = ""  # why the machine stopped, when it did not halt
    stats: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The JSON object of ``popek run --json``."""
        return {"console": self.console, "status": self.status, "steps": self.steps, "halted": self.halted,
                "regs": self.regs, "pc": self.pc, "stats": self.stats}  # fmt: skip


class Machine:
    """A bare P32 machine: ``memsize`` bytes of memory, reset state, a console on port 0."""

    def __init__(
        self,
        memsize: int = DEFAULT_MEMSIZE,
        profile: str | Profile | None = None,
        core: str | CoreRun = DEFAULT_CORE,
        console_input: bytes = b"",
    ) -> None:
        self.profile = load_profile(profile)
        self.mem = np.zeros(memsize, dtype=np.uint8)
        self.state = S.new_state(memsize, self.profile.array())
        self.core = get_core(core) if isinstance(core, str) else core
        self.console = Console(console_input)
        self.bus = PortBus(self.console)
        self.halted = False
        self.io_exits = 0

    def load(self, image: bytes, addr: int = 0) -> None:
        """Copy an image into physical memory at ``addr``."""
        if addr + len(image) > len(self.mem):
            raise ValueError(f"image of {len(image)} bytes does not fit in {len(self.mem)} bytes of memory")
        self.mem[addr : addr + len(image)] = np.frombuffer(bytes(image), dtype=np.uint8)

    def run(
        self, max_steps: int = 100_000_000, on_step: Callable[[Machine, np.ndarray], None] | None = None
    ) -> RunResult:
        """Run until ``halt``, an endless ``wfi`` or ``max_steps`` steps; ``on_step`` traces one step at a time."""
        st = self.state
        start = int(st[S.STEPS])
        exit_name, message = "limit", f"stopped after {max_steps} steps (the step limit; see --max-steps)"
        while not self.halted:
            left = max_steps - (int(st[S.STEPS]) - start)
            if left <= 0:
                break
            before = st.copy() if on_step else None
            code = self.core(st, self.mem, 1 if on_step else min(left, SLICE))
            if code == S.EXIT_IO:
                self.io_exits += 1
                self.bus.complete(st)
            if on_step:
                on_step(self, before)
            if code == S.EXIT_HALT:
                self.halted, exit_name, message = True, "halt", ""
            elif code == S.EXIT_IDLE:
                exit_name = "idle"
                message = f"wfi at {int(st[S.PC]):#010x} can never end: no interrupt pending, timer 0, no device"
                break
            elif code not in (S.EXIT_BUDGET, S.EXIT_IO):
                exit_name, message = "error", f"core stopped with exit code {code} ({_exit_name(code)})"
                break
        return self.result(exit_name, message)

    def result(self, exit_name: str = "halt", message: str = "") -> RunResult:
        """Summarise the machine's current state as a RunResult."""
        st = self.state
        return RunResult(
            console=self.console.text(),
            status=int(st[S.STATUS]) if self.halted else 1,
            steps=int(st[S.STEPS]),
            halted=self.halted,
            regs=[int(x) for x in st[S.R0 : S.R0 + 16]],
            pc=int(st[S.PC]),
            exit=exit_name,
            message=message,
            stats={"cycle": int(st[S.CYCLE]), "io_exits": self.io_exits},
        )


def _exit_name(code: int) -> str:
    return S.EXIT_NAMES[code] if 0 <= code < len(S.EXIT_NAMES) else "unknown"


def cause_name(cause: int) -> str:
    """The name of a trap cause (``SYSCALL``…), or its number."""
    return CAUSE_NAMES.get(cause, str(cause))
