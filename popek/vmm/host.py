"""Several VMs on one host machine: memory slices, round-robin scheduling in budget slices, isolation.

The host's memory begins with a region reserved for the monitor (as a real hypervisor keeps its own memory),
grown by whatever a VM's monitor asks for (``Monitor.host_bytes``), followed by one slice per VM. Each VM
runs under its own monitor and profile; the host gives each a slice of guest steps in turn, so a guest
spinning with interrupts off cannot hold the machine (the preemption is invisible to the guest: its virtual
time only counts its own instructions).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

import numpy as np

from popek.cores import CoreRun
from popek.isa import state as S
from popek.isa.devices import Message
from popek.isa.profiles import Profile
from popek.isa.spec import EXECUTE, cause_name
from popek.vmm.monitors import get_monitor
from popek.vmm.monitors.bare import Bare, StepHook
from popek.vmm.monitors.base import DirectExecution, Monitor
from popek.vmm.vm import VM

MONITOR_RESERVED = 64 * 1024
DEFAULT_SLICE = 100_000
SOLO_SLICE = 4_000_000  # steps a lone VM runs between two looks (about 5 ms on the JIT core)
TRAP_LOOP_STEPS = 10_000  # a slice of at least this many steps that retired nothing is a trap loop
DEFAULT_MEMSIZE = 1 << 20
DEFAULT_CORE = os.environ.get("POPEK_CORE") or "jit"  # e.g. POPEK_CORE=dbt runs everything translated
DEFAULT_MAX_STEPS = 100_000_000

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*$")


def available_memory() -> int:
    """Bytes of memory the host can still give its guests (MemAvailable; all of it where that is unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 1 << 62  # nothing to go by: let the allocation itself decide


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
    """What a run produced, under any monitor: console output, exit status and the final guest state."""

    console: str
    status: int
    steps: int
    halted: bool
    regs: list[int]
    pc: int
    exit: str  # halt, limit, idle or error
    message: str = ""  # why the guest stopped, when it did not halt
    stats: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The JSON object of ``popek run --json``."""
        return {"exit": self.exit, "message": self.message, "console": self.console, "status": self.status,
                "steps": self.steps, "halted": self.halted, "regs": self.regs, "pc": self.pc,
                "stats": self.stats}  # fmt: skip


@dataclass
class GuestSpec:
    """What to run in one VM."""

    name: str
    image: bytes
    monitor: str = "trap"
    profile: str | Profile | None = None
    memsize: int = DEFAULT_MEMSIZE
    console_input: bytes = b""


# Instructions that, if a profile lets user mode execute them, change the real processor's mode or relocation:
# a guest run directly (in real user mode) could then leave its slice. iret only restores what the
# e-registers hold, so it matters only together with a user-mode write to one of them.
_ESCAPES = ("setpsw", "mtcr.psw", "mtcr.base", "mtcr.bound")
_ESCAPES_WITH_IRET = ("mtcr.epsw", "mtcr.ebase", "mtcr.ebound")


def confinement_leak(profile: Profile) -> str:
    """Which user-mode instructions of ``profile`` could free a directly executed guest ('' when none)."""
    b = profile.behaviour
    leaks = [k for k in _ESCAPES if b[k] == EXECUTE]
    if b["iret"] == EXECUTE:
        leaks += [f"iret after {k}" for k in _ESCAPES_WITH_IRET if b[k] == EXECUTE]
    return ", ".join(leaks)


class Host:
    """A host machine running several VMs, each with its own monitor, profile, memory and console."""

    def __init__(self, guests: list[GuestSpec], core: str | CoreRun = DEFAULT_CORE) -> None:
        self.monitors: list[Monitor] = [get_monitor(g.monitor, core) for g in guests]
        # The monitor region grows by what the monitors ask for (the rewriting monitor's shadow copies).
        areas = [-(-m.host_bytes(g.memsize) // 4) * 4 for m, g in zip(self.monitors, guests, strict=True)]
        total = MONITOR_RESERVED + sum(areas) + sum(g.memsize for g in guests)
        room = available_memory()
        if total > room:
            raise ValueError(
                f"the guests need {total / 2**20:,.0f} MiB of host memory, more than the {room / 2**20:,.0f} MiB "
                "this machine has free; give them less --mem or run fewer at once"
            )
        self.mem = np.zeros(total, dtype=np.uint8)
        self.vms: list[VM] = []
        area, offset = MONITOR_RESERVED, MONITOR_RESERVED + sum(areas)
        for g, mon, size in zip(guests, self.monitors, areas, strict=True):
            vm = VM(g.name, self.mem, offset, g.memsize, g.profile, g.console_input)
            vm.load(g.image)
            mon.attach(vm, area)
            self.vms.append(vm)
            area += size
            offset += g.memsize
        self.steps = [0] * len(guests)
        self.timed_out = False
        if len(self.vms) > 1:
            self._check_confinement()

    def _check_confinement(self) -> None:
        """Refuse to share the machine with a guest that direct execution could not keep in its slice."""
        for vm, mon in zip(self.vms, self.monitors, strict=True):
            leak = confinement_leak(vm.profile) if isinstance(mon, DirectExecution) else ""
            if leak:
                raise ValueError(
                    f"VM {vm.name}: profile '{vm.profile.name}' lets user mode run {leak} without trapping, so "
                    f"the '{mon.name}' monitor could not keep it inside its memory; run it under 'full' or alone"
                )

    def run(
        self, max_steps: int = DEFAULT_MAX_STEPS, slice_steps: int = DEFAULT_SLICE, timeout: float | None = None
    ) -> list[RunResult]:
        """Run every VM round-robin until all stop, each ran ``max_steps`` more steps or ``timeout`` seconds
        passed; return their results."""
        self.advance(max_steps, slice_steps, timeout)
        return [self.result(i) for i in range(len(self.vms))]

    def advance(
        self, max_steps: int = DEFAULT_MAX_STEPS, slice_steps: int = DEFAULT_SLICE, timeout: float | None = None
    ) -> None:
        """``run`` without building the results: for a caller that runs a VM in many short slices (a server)."""
        solo = len(self.vms) == 1  # nobody to share the machine with: slices grow, to look early and then rarely
        deadline = None if timeout is None else time.monotonic() + timeout
        steps = self.steps = [0] * len(self.vms)  # steps of this call: a later call may run each VM as far again
        self.timed_out = False
        machines = list(enumerate(zip(self.vms, self.monitors, strict=True)))
        while True:
            progressed = False
            for i, (vm, mon) in machines:
                nic = vm.nic
                if nic.queued:
                    nic.poll()  # the card looks at its rings between two of the VM's time slices
                if vm.stopped or steps[i] >= max_steps:
                    continue
                cycle = vm.vstate.item(S.CYCLE)
                ran = mon.run(vm, min(slice_steps, max_steps - steps[i]))
                steps[i] += ran
                if ran >= TRAP_LOOP_STEPS and vm.vstate.item(S.CYCLE) == cycle and not vm.stopped:
                    v = vm.vstate
                    vm.error = (
                        f"trap loop at pc {int(v[S.EPC]):#010x}, cause {cause_name(int(v[S.CAUSE]))}: "
                        f"{ran} traps taken and not one instruction retired"
                    )
                progressed = True
            if not progressed:
                break
            if solo:
                slice_steps = min(2 * slice_steps, SOLO_SLICE)
            if deadline is not None and time.monotonic() > deadline:
                self.timed_out = True
                break

    def vm(self, which: int | str) -> VM:
        """A VM by index or by name."""
        if isinstance(which, int):
            return self.vms[which]
        for vm in self.vms:
            if vm.name == which:
                return vm
        raise KeyError(f"no VM named '{which}'")

    def send(self, which: int | str, port: int, payload: bytes, urgent: bool = False, poll: bool = True) -> int:
        """Give a VM's network card a message for guest ``port``; return its tag, which its reply carries.

        With ``poll`` False the card takes the message into its rings at the next ``advance`` (before the VM's
        next slice) instead of now: a caller that sends several messages before it runs the VM saves the card a
        look at its rings per message, and the guest sees exactly the same (it does not run in between).
        """
        return self.vm(which).send(port, payload, urgent, poll)

    def replies(self, which: int | str) -> list[Message]:
        """Take the messages a VM's guest sent since the last call (each with the tag of the request answered)."""
        return self.vm(which).nic.take_replies()

    def result(self, i: int) -> RunResult:
        """The result of VM number ``i`` in the same shape as a bare machine's."""
        vm, v = self.vms[i], self.vms[i].vstate
        if vm.halted:
            exit_name, message = "halt", ""
        elif vm.error:
            kind = "trap-loop" if vm.error.startswith("trap loop") else "idle" if "wfi" in vm.error else "error"
            exit_name, message = kind, vm.error
        elif vm.waiting:
            exit_name, message = "idle", f"waiting in wfi at {int(v[S.PC]):#010x} for a message on the network card"
        elif self.timed_out:
            exit_name, message = "timeout", f"stopped after {self.steps[i]} steps by the time limit (see --timeout)"
        else:
            exit_name, message = "limit", f"stopped after {self.steps[i]} steps (the step limit; see --max-steps)"
        stats = {"monitor": self.monitors[i].name, "cycle": int(v[S.CYCLE]), **vm.stats.as_dict()}
        return RunResult(
            console=vm.console.text(),
            status=int(v[S.STATUS]) if vm.halted else 1,
            steps=int(v[S.STEPS]),
            halted=vm.halted,
            regs=[int(x) for x in v[S.R0 : S.R0 + 16]],
            pc=int(v[S.PC]),
            exit=exit_name,
            message=message,
            stats=stats,
        )


def run_guest(
    image: bytes,
    monitor: str = "bare",
    profile: str | Profile | None = None,
    core: str | CoreRun = DEFAULT_CORE,
    memsize: int = DEFAULT_MEMSIZE,
    console_input: bytes = b"",
    max_steps: int = DEFAULT_MAX_STEPS,
    name: str = "guest",
) -> RunResult:
    """Run one guest image to halt under ``monitor`` (``bare`` for the machine alone): the one way to run a guest."""
    return Host([GuestSpec(name, image, monitor, profile, memsize, console_input)], core).run(max_steps)[0]


class Machine:
    """The bare machine: one guest alone on the hardware, its state and memory open to inspection.

    A host of one VM under the ``bare`` monitor, so it runs and reports exactly as every monitored guest does.
    """

    def __init__(
        self,
        memsize: int = DEFAULT_MEMSIZE,
        profile: str | Profile | None = None,
        core: str | CoreRun = DEFAULT_CORE,
        console_input: bytes = b"",
    ) -> None:
        self.host = Host([GuestSpec("machine", b"", "bare", profile, memsize, console_input)], core)
        self.vm = self.host.vms[0]
        self.monitor: Bare = self.host.monitors[0]
        self.state, self.mem, self.console, self.profile = self.vm.vstate, self.vm.mem, self.vm.console, self.vm.profile

    @property
    def halted(self) -> bool:
        """True once the guest executed ``halt``."""
        return self.vm.halted

    def load(self, image: bytes, addr: int = 0) -> None:
        """Copy an image into physical memory at ``addr``."""
        self.vm.load(image, addr)

    def run(self, max_steps: int = DEFAULT_MAX_STEPS, on_step: StepHook | None = None) -> RunResult:
        """Run until ``halt``, an endless ``wfi`` or ``max_steps`` more steps; ``on_step`` traces each step."""
        self.monitor.on_step = on_step
        return self.host.run(max_steps)[0]

    def result(self) -> RunResult:
        """The machine's current state as a RunResult."""
        return self.host.result(0)
