"""A process VM: one user-mode P32 program and no guest kernel; the host serves its system calls.

As qemu-user runs a Linux binary by serving its system calls itself, this runs a program written for the guest
kernel's system-call ABI (docs/abi.md) with the host in the kernel's place. The program runs on the core in
real user mode with ``F_TRAPS_TO_HOST``: every ``syscall`` leaves the core and is served here in Python against
the program's memory, and any other trap ends the process with a message, as the kernel kills a task. A bad
call number or a buffer outside the program's memory gets the kernel's answer, -1, never a host exception.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from popek.cores import CoreRun, get_core
from popek.isa import state as S
from popek.isa.profiles import Profile, load_profile
from popek.isa.spec import SYSCALL, cause_name

SYS_EXIT, SYS_WRITE, SYS_GETPID, SYS_YIELD, SYS_SLEEP = 0, 1, 2, 3, 4  # the guest kernel's calls
SYS_READ, SYS_CLOCK = 11, 12  # the process ABI's own (5-10 belong to the kernel's server build)
SYSCALL_NAMES = {SYS_EXIT: "exit", SYS_WRITE: "write", SYS_GETPID: "getpid", SYS_YIELD: "yield",
                 SYS_SLEEP: "sleep", SYS_READ: "read", SYS_CLOCK: "clock"}  # fmt: skip
TICK = 500  # instructions per clock tick: the guest kernel's time slice, so `sleep n` means the same there
DEFAULT_MEMSIZE = 1 << 20
DEFAULT_MAX_STEPS = 100_000_000
ERROR = 0xFFFFFFFF  # -1, the kernel's answer to a bad call or a bad buffer
KILLED = 128  # exit status of a killed process: 128 + the cause, as a shell reports a signal


@dataclass
class ProcessResult:
    """How a process ended (``exit``, ``killed``, ``limit``), what it wrote, and its final registers."""

    console: str
    status: int
    exit: str
    message: str
    steps: int  # instructions the process retired
    clock: int  # its clock at the end: instructions retired plus the ticks it slept
    regs: list[int]
    pc: int
    syscalls: Counter = field(default_factory=Counter)

    def to_json(self) -> dict:
        """The JSON object of ``popek run --process --json``."""
        return {"console": self.console, "status": self.status, "exit": self.exit, "message": self.message,
                "steps": self.steps, "clock": self.clock, "regs": self.regs, "pc": self.pc,
                "syscalls": dict(self.syscalls)}  # fmt: skip


class Process:
    """One program in real user mode at virtual address 0, with ``memsize`` bytes and the stack at the top."""

    def __init__(
        self,
        image: bytes,
        memsize: int = DEFAULT_MEMSIZE,
        core: str | CoreRun = "jit",
        console_input: bytes = b"",
        pid: int = 1,
        profile: str | Profile | None = None,
    ) -> None:
        if len(image) > memsize:
            raise ValueError(f"the program ({len(image)} bytes) does not fit in {memsize} bytes of memory")
        self.core = get_core(core) if isinstance(core, str) else core
        self.memsize, self.pid, self.input = memsize, pid, bytes(console_input)
        self.mem = np.zeros(memsize, dtype=np.uint8)
        self.mem[: len(image)] = np.frombuffer(bytes(image), dtype=np.uint8)
        self.state = S.new_state(memsize, load_profile(profile).array())
        self.state[S.PSW] = 0  # user mode, interrupts off: nothing but its own traps ever stops it
        self.state[S.R0 + 14] = memsize  # sp: the stack grows down from the top, as in a kernel's task region
        self.state[S.FLAGS] = S.F_TRAPS_TO_HOST
        self.output = bytearray()
        self.slept = 0  # clock ticks spent in sleep, in instructions
        self.syscalls: Counter = Counter()
        self.exit, self.status, self.message = "", 0, ""

    def run(self, max_steps: int = DEFAULT_MAX_STEPS) -> ProcessResult:
        """Run until the program exits, is killed, or retired ``max_steps`` more instructions."""
        s = self.state
        start = int(s[S.CYCLE])
        while not self.exit:
            left = max_steps - (int(s[S.CYCLE]) - start)
            if left <= 0:
                self.exit, self.message = "limit", f"stopped after {max_steps} instructions (the step limit)"
                break
            code = self.core(s, self.mem, left)
            if code == S.EXIT_TRAP and int(s[S.XCAUSE]) == SYSCALL:
                self.syscall(int(s[S.XINFO]))
            elif code == S.EXIT_TRAP:
                cause = int(s[S.XCAUSE])
                self.kill(cause, f"cause {cause} ({cause_name(cause)}), badaddr {int(s[S.XINFO]):#010x}")
            elif code == S.EXIT_HALT:  # only where a profile lets user mode halt: the program stopped the machine
                self.exit, self.status = "exit", int(s[S.STATUS])
            elif code == S.EXIT_IO:  # only where a profile lets user mode do port I/O: a process has no devices
                self.kill(0, f"port I/O on port {int(s[S.IO_PORT]):#x}: a process has no devices")
            elif code == S.EXIT_IDLE:
                self.kill(0, "wfi with nothing to wait for")
            elif code != S.EXIT_BUDGET:
                self.kill(0, f"the core stopped with exit {S.exit_name(code)}")
        return self.result()

    def kill(self, cause: int, why: str) -> None:
        """End the process as the kernel ends a task that traps: with a message, status 128 + cause."""
        self.exit, self.status = "killed", KILLED + cause
        self.message = f"process {self.pid} killed: {why}, pc {int(self.state[S.PC]):#010x}"

    def buffer(self, addr: int, length: int) -> slice | None:
        """The memory a (virtual address, length) argument names, or None where the kernel would answer -1."""
        if length > self.memsize or addr > self.memsize - length:  # the kernel's test, in the same order
            return None
        return slice(addr, addr + length)

    def syscall(self, number: int) -> None:
        """Serve ``syscall number`` with the arguments in r2 and r3; the result goes to r2, then pc moves on."""
        s = self.state
        r2, r3 = int(s[S.R0 + 2]), int(s[S.R0 + 3])
        self.syscalls[SYSCALL_NAMES.get(number, "unknown")] += 1
        s[S.PC] = (int(s[S.PC]) + 4) & S.MASK32  # return after the syscall, as the kernel does
        result = r2
        if number == SYS_EXIT:
            self.exit, self.status = "exit", r2
            return
        if number in (SYS_WRITE, SYS_READ):
            where = self.buffer(r2, r3)
            if where is None:
                result = ERROR
            elif number == SYS_WRITE:
                self.output += self.mem[where].tobytes()
                result = r3
            else:
                data, self.input = self.input[:r3], self.input[r3:]
                self.mem[r2 : r2 + len(data)] = np.frombuffer(data, dtype=np.uint8)
                result = len(data)
        elif number == SYS_GETPID:
            result = self.pid
        elif number == SYS_SLEEP:
            self.slept += r2 * TICK
        elif number == SYS_CLOCK:
            result = self.clock() & S.MASK32
        elif number != SYS_YIELD:
            result = ERROR
        s[S.R0 + 2] = result

    def clock(self) -> int:
        """The process's time in instructions: those it retired, and the ticks it slept."""
        return int(self.state[S.CYCLE]) + self.slept

    def result(self) -> ProcessResult:
        """The process's end as a ProcessResult."""
        s = self.state
        return ProcessResult(
            console=self.output.decode("utf-8", "replace"),
            status=self.status,
            exit=self.exit or "limit",
            message=self.message,
            steps=int(s[S.CYCLE]),
            clock=self.clock(),
            regs=[int(x) for x in s[S.R0 : S.R0 + 16]],
            pc=int(s[S.PC]),
            syscalls=self.syscalls,
        )


def run_process(
    image: bytes,
    memsize: int = DEFAULT_MEMSIZE,
    core: str | CoreRun = "jit",
    console_input: bytes = b"",
    max_steps: int = DEFAULT_MAX_STEPS,
    pid: int = 1,
    profile: str | Profile | None = None,
) -> ProcessResult:
    """Run a user-mode program as a process, its system calls served by the host (docs/abi.md)."""
    return Process(image, memsize, core, console_input, pid, profile).run(max_steps)
