"""A virtual machine: a slice of the host's memory, a virtual CPU, virtual devices and statistics.

The virtual CPU (``vstate``) is a full P32 state in the shared layout: exactly what the same guest would have
in its state array on a bare machine of ``memsize`` bytes. Monitors keep it up to date; the equivalence tests
compare it, and ``mem``, with a bare run. ``rstate`` is the real processor state the monitor loads into the
core when it runs the guest directly (real user mode, relocation composed with the slice, host flags set).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from popek.cores import CoreRun, emulator, vmexit
from popek.isa import state as S
from popek.isa.devices import Console, Nic, PortBus
from popek.isa.profiles import Profile, load_profile
from popek.isa.spec import CR_NAMES, INSNS, PSW_IE, PSW_S, cause_name

CONSOLE_BUFFER = 4096  # console bytes one emulator call may write before it stops for the host to take them


@dataclass
class VMStats:
    """Everything a monitor did for one VM."""

    exits: Counter = field(default_factory=Counter)  # by cause: PRIV, SYSCALL, io, idle, hcall, ...
    emulated: int = 0  # guest instructions the monitor executed in software
    reflected: int = 0  # traps reflected into the guest kernel
    injected: int = 0  # virtual interrupts delivered
    monitor_seconds: float = 0.0  # wall time spent in the monitor's own (Python) code
    extra: Counter = field(default_factory=Counter)  # monitor-specific counts (translations, hypercalls...)

    def as_dict(self) -> dict:
        """The statistics as plain JSON-ready values."""
        return {"exits": dict(self.exits), "total_exits": sum(self.exits.values()), "emulated": self.emulated,
                "reflected": self.reflected, "injected": self.injected,
                "monitor_seconds": round(self.monitor_seconds, 6), **dict(self.extra)}  # fmt: skip


def _counter_names() -> dict[int, str]:
    """The ``extra`` statistic each counter of a compiled exit loop adds to (binary rewriting's callouts).

    Named as the rewriting monitor names them from the word that called out (rewrite.callout_name).
    """
    names = {vmexit.CNT_BATCHED: "callouts_batched", vmexit.CNT_CALLOUT_OTHER: "callout.other"}
    for insn in INSNS:
        i = insn.opcode - vmexit.CALLOUT_OP0
        if 0 <= i < 32 and insn.operands not in ("rd,cr", "cr,rs"):
            names[vmexit.CNT_CALLOUT_OP + i] = f"callout.{insn.mnemonic}"
    for cr, cr_name in enumerate(CR_NAMES):
        names[vmexit.CNT_CALLOUT_CR + cr] = f"callout.mfcr.{cr_name}"
        names[vmexit.CNT_CALLOUT_CR + 16 + cr] = f"callout.mtcr.{cr_name}"
    return names


_COUNTER_NAMES = _counter_names()


class VM:
    """One guest: ``memsize`` bytes at ``offset`` in the host memory ``host_mem``, its CPU and console."""

    def __init__(
        self,
        name: str,
        host_mem: np.ndarray,
        offset: int,
        memsize: int,
        profile: str | Profile | None = None,
        console_input: bytes = b"",
    ) -> None:
        if offset < 0 or offset + memsize > len(host_mem):
            raise ValueError(f"VM {name}: slice [{offset:#x}, {offset + memsize:#x}) is outside host memory")
        self.name, self.host_mem, self.offset, self.memsize = name, host_mem, offset, memsize
        self.mem = host_mem[offset : offset + memsize]  # a view: the guest's physical memory, no copy
        self.profile = load_profile(profile)
        self.vstate = S.new_state(memsize, self.profile.array())
        self.rstate = S.new_state(len(host_mem), self.profile.array())
        self.console = Console(console_input)
        self.nic = Nic(self.mem, self.device_interrupt)
        self.bus = PortBus(self.console, self.nic)
        self.console_out = np.zeros(CONSOLE_BUFFER, dtype=np.uint8)  # console bytes of one emulator call
        self.counters = np.zeros(vmexit.NCOUNTERS, dtype=np.int64)  # what a compiled exit loop did (CNT_*)
        self.batch_end = 0  # the step count at which a batch of callouts the loop left to the monitor must end
        self.stats = VMStats()
        self.host_io: list[tuple[int, bool, int]] = []  # untrapped port I/O that reached the host's devices
        self.halted = False
        self.error = ""  # why the VM stopped, when it did not halt
        self.waiting = False  # in wfi until the network card has something for it (docs/devices.md, Waiting)
        self.image_sha256 = hashlib.sha256(b"").hexdigest()  # the image as loaded: a snapshot names it

    @property
    def stopped(self) -> bool:
        """True once the guest halted, stopped with an error, or waits for the network card."""
        return self.halted or bool(self.error) or self.waiting

    def device_interrupt(self, devnum: int) -> None:
        """The device interrupt line of the virtual machine: raised with a device number, 0 withdraws it."""
        v = self.vstate
        if devnum:  # plain ints through item(): numpy's in-place operators on one slot cost several times more
            v[S.PENDING] = v.item(S.PENDING) | S.PEND_DEVICE
            v[S.DEVNUM] = devnum
            self.waiting = False
        else:
            v[S.PENDING] = v.item(S.PENDING) & ~S.PEND_DEVICE

    def send(self, port: int, payload: bytes, urgent: bool = False, poll: bool = True) -> int:
        """Hand the network card a message for guest ``port``; return its tag (wakes a waiting guest).

        With ``poll`` False the card looks at its rings (and wakes the guest) at its next ``poll`` instead.
        """
        return self.nic.deliver(port, payload, urgent, poll)

    def load(self, image: bytes, addr: int = 0) -> None:
        """Copy an image into guest-physical memory at ``addr``."""
        if addr + len(image) > self.memsize:
            raise ValueError(f"VM {self.name}: image of {len(image)} bytes does not fit in {self.memsize} bytes")
        self.mem[addr : addr + len(image)] = np.frombuffer(bytes(image), dtype=np.uint8)
        self.image_sha256 = hashlib.sha256(bytes(image)).hexdigest()

    # --- the virtual CPU -------------------------------------------------------------------------------
    @property
    def supervisor(self) -> bool:
        """True when the guest is in virtual supervisor mode."""
        return bool(self.vstate[S.PSW] & PSW_S)

    def interrupt_due(self) -> tuple[int, int] | None:
        """The virtual interrupt the guest would take now, if any."""
        return S.pending_interrupt(self.vstate)

    def inject(self, cause: int, info: int) -> None:
        """Deliver a virtual interrupt: a trap into the guest's vector at the next instruction."""
        S.enter_trap(self.vstate, self.memsize, cause, info, int(self.vstate[S.PC]))
        self.vstate[S.STEPS] += 1
        self.stats.injected += 1

    def reflect(self, cause: int, info: int) -> None:
        """Deliver a trap the guest caused to the guest kernel's own vector, as the bare machine would."""
        S.enter_trap(self.vstate, self.memsize, cause, info, int(self.vstate[S.PC]))
        self.vstate[S.STEPS] += 1
        self.stats.reflected += 1

    def emulate(self, budget: int, until_user: bool = False) -> int:
        """Interpret up to ``budget`` guest steps in software on the virtual CPU; return the steps run.

        With ``until_user`` it stops as soon as the guest is in virtual user mode (the hybrid monitor).
        """
        v = self.vstate
        start = int(v[S.STEPS])
        done = 0
        while not self.stopped and done < budget and not (until_user and not self.supervisor):
            self.interpret(budget - done, until_user)
            done = int(v[S.STEPS]) - start
        self.stats.emulated += done
        return done

    def emulate_one(self) -> int:
        """Emulate one step of the guest (an instruction, or a pending interrupt); return the steps it took."""
        before = int(self.vstate[S.STEPS])
        self.interpret(1)
        steps = int(self.vstate[S.STEPS]) - before  # 0 when it stopped the guest (an endless wfi)
        self.stats.emulated += steps
        return steps

    def interpret(self, budget: int, until_user: bool = False) -> None:
        """One call of the compiled emulator on the virtual CPU, then what stopped it on the virtual devices."""
        code, n = emulator.emulate(self.vstate, self.mem, budget, until_user, self.console_out)
        if n:  # console bytes the emulator wrote: before whatever I/O it stopped for, as they came
            self.console.output += self.console_out[:n].tobytes()
        self.device_exit(code)

    def device_exit(self, code: int | None) -> None:
        """Finish what stopped the virtual CPU: port I/O on the virtual devices, halt, or an endless wfi."""
        v = self.vstate
        if code == S.EXIT_IO:
            self.bus.complete(v)
        elif code == S.EXIT_HALT:
            self.halted = True
        elif code == S.EXIT_IDLE:
            self.idle()
        elif code == S.EXIT_HCALL:  # only with F_HCALL_TO_HOST, which the virtual CPU never has
            self.error = "unexpected hypercall exit"

    def idle(self) -> None:
        """The guest waits in ``wfi`` with nothing pending: for the network card, or forever (an error)."""
        self.nic.poll()
        if self.vstate[S.PENDING]:
            return  # something arrived: the wfi ends as soon as it runs again
        if self.nic.can_wake():
            self.waiting = True
        else:
            pc = int(self.vstate[S.PC])
            self.error = f"wfi at {pc:#010x} can never end: no interrupt pending, timer 0, no device that could wake it"

    def take_counters(self) -> int:
        """Merge what a compiled exit loop counted into the statistics, console bytes into the console.

        Returns the exit code it left for the monitor (``CNT_CODE``); the counters start again from zero.
        """
        c = self.counters
        slots = c.nonzero()[0].tolist()  # a method call, not np.flatnonzero: this runs after every exit loop call
        if not slots:
            return 0
        counts = c.tolist()
        c.fill(0)
        code = 0
        exits, extra = self.stats.exits, self.stats.extra
        for slot in slots:
            n = counts[slot]
            if vmexit.CNT_CAUSE <= slot < vmexit.CNT_CAUSE + vmexit.CNT_CAUSES:
                exits[cause_name(slot - vmexit.CNT_CAUSE)] += n
            elif slot == vmexit.CNT_CODE:
                code = n
            elif slot in _COUNTER_NAMES:
                extra[_COUNTER_NAMES[slot]] += n
            elif slot == vmexit.CNT_CONSOLE:  # before whatever exit the loop stopped for, as they came
                self.console.output += self.console_out[:n].tobytes()
            elif slot == vmexit.CNT_TIMER:
                exits["TIMER"] += n
            elif slot == vmexit.CNT_EMULATED:
                self.stats.emulated += n
            elif slot == vmexit.CNT_REFLECTED:
                self.stats.reflected += n
            elif slot == vmexit.CNT_INJECTED:
                self.stats.injected += n
            elif slot == vmexit.CNT_CALLOUTS:
                exits["callout"] += n
            elif slot == vmexit.CNT_BATCH_END:
                self.batch_end = n
        return code

    # --- direct execution ------------------------------------------------------------------------------
    def load_real_state(self, flags: int) -> None:
        """Prepare the real CPU to run the guest directly: guest registers, real user mode, composed R."""
        v, r = self.vstate, self.rstate
        r[S.R0 : S.PC + 1] = v[S.R0 : S.PC + 1]
        vbase, vbound = int(v[S.BASE]), int(v[S.BOUND])
        room = self.memsize - vbase
        # Composed relocation: the guest's own R, further confined to its slice of host memory.
        r[S.BASE] = self.offset + vbase if room > 0 else self.offset
        r[S.BOUND] = min(vbound, room) if room > 0 else 0
        r[S.PSW] = v[S.PSW] & PSW_IE  # always real user mode; IE mirrors the guest's own
        r[S.TIMER] = r[S.PENDING] = 0  # virtual time is kept by the monitor, not the real timer
        r[S.FLAGS] = flags

    def save_real_state(self, cycle0: int) -> int:
        """Copy the guest's registers back from the real CPU and account retired instructions to virtual time."""
        v, r = self.vstate, self.rstate
        v[S.R0 : S.PC + 1] = r[S.R0 : S.PC + 1]
        retired = int(r[S.CYCLE]) - cycle0
        v[S.CYCLE] += retired
        v[S.STEPS] += retired
        timer = int(v[S.TIMER])
        if timer:
            timer = max(0, timer - retired)  # the monitor never runs the guest past the timer's expiry
            v[S.TIMER] = timer
            if timer == 0:
                v[S.PENDING] |= S.PEND_TIMER
        return retired

    def enter_direct(self, flags: int, budget: int) -> tuple[int, int]:
        """Load the real CPU to run the guest; return (budget cut at the virtual timer's expiry, real cycle)."""
        self.load_real_state(flags)
        timer = int(self.vstate[S.TIMER])
        if timer:
            budget = min(budget, timer)  # stop exactly where the virtual timer expires
        return budget, int(self.rstate[S.CYCLE])

    def leave_direct(self, code: int, cycle0: int) -> int:
        """Take the guest back from the real CPU after the core returned ``code``; return the retirements."""
        if code == S.EXIT_HALT:
            self.vstate[S.STATUS] = self.rstate[S.STATUS]
            self.halted = True
        return self.save_real_state(cycle0)

    def run_direct(self, core: CoreRun, budget: int, flags: int = S.F_TRAPS_TO_HOST) -> tuple[int, int]:
        """Run the guest on the core until it exits, at most ``budget`` retirements; return (exit, retired)."""
        budget, cycle0 = self.enter_direct(flags, budget)
        code = core(self.rstate, self.host_mem, budget)
        return code, self.leave_direct(code, cycle0)


class Stopwatch:
    """Accumulates wall time into a VM's ``monitor_seconds`` (use as a context manager)."""

    def __init__(self, stats: VMStats) -> None:
        self.stats = stats

    def __enter__(self) -> Stopwatch:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stats.monitor_seconds += time.perf_counter() - self.t0
