"""Paravirtualization (Xen style): a guest kernel ported to hypercalls, helped by the processor.

A paravirtual (PV) guest announces itself with a boot note at the start of its image (``PV_MAGIC`` in word 1,
the guest-physical address of its shared area in word 2), as Xen's domain builder reads a kernel's ELF notes.
Its kernel uses no sensitive instruction: its trap state, virtual interrupt mask and console buffer live in
the shared area, which it reads and writes with plain loads and stores, and everything else is a hypercall
(``hcall N``; docs/paravirt.md has the table). Kernel and tasks alike run on the core in real user mode.

The processor does the common work without an exit (``F_PV``, popek/cores/reference.py): it delivers the tasks'
system calls and the virtual timer interrupt straight into the guest kernel's registered entry, and performs
HC_IRET, HC_SET_TIMER and HC_IRQ itself. What is left for this file is rare: registration, console output
(one exit per buffer of text), blocking, halting, batches (HC_MULTICALL) and traps the processor does not
deliver (faults, which are bounced into the guest kernel the same way). The guest's state lives in the real
CPU state for the whole run and is copied to the virtual CPU (``vm.vstate``) when ``run`` returns, so an exit
costs a core call and a handful of plain-int accesses.

A guest without the boot note runs exactly as under ``trap`` (trap-and-emulate); its ``hcall`` raises
ILLEGAL, which is reflected into it as on the bare machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from time import perf_counter
from weakref import WeakKeyDictionary

import numpy as np

from popek.cores import CoreRun, pv_exit_loop, vmexit
from popek.isa import state as S
from popek.isa.devices import nic as N
from popek.isa.spec import BY_MNEMONIC, DEVICE_IRQ, ILLEGAL, PSW_IE, PSW_S, SYSCALL, TIMER_IRQ, cause_name, encode
from popek.vmm.monitors.trap_emulate import TrapAndEmulate
from popek.vmm.vm import VM

M32 = S.MASK32
PV_MAGIC = 0xF0505632  # word 1 of a PV image (opcode 0xF0 is no instruction, so no program starts so by chance)

# The shared area: the processor's words (popek/isa/state.py SH_*), then the monitor's (byte offsets, defined
# with the compiled loop that reads them too, popek/cores/vmexit.py):
# SH_FEATURES   written by the monitor at start: bit n = hypercall n is performed without an exit
# SH_CONS_LEN   bytes the guest has put in the console buffer; the monitor drains them and writes 0
# SH_MC_COUNT   entries queued for HC_MULTICALL; the monitor writes 0 after performing them
# SH_NET_EVENTS network card events (nic.EV_*) the monitor posted; the guest clears the word to take them
# SH_MC         MC_MAX entries of MC_ENTRY bytes: number, argument 1, argument 2, result
# SH_CONS_BUF   the console buffer, CONS_SIZE bytes
SH_FEATURES, SH_CONS_LEN, SH_MC_COUNT, SH_NET_EVENTS, SH_MC = (
    vmexit.SH_FEATURES, vmexit.SH_CONS_LEN, vmexit.SH_MC_COUNT, vmexit.SH_NET_EVENTS, vmexit.SH_MC,
)  # fmt: skip
MC_MAX, MC_ENTRY = vmexit.MC_MAX, vmexit.MC_ENTRY
MC_OP, MC_ARG1, MC_ARG2, MC_RESULT = 0, 4, 8, 12
SH_CONS_BUF, CONS_SIZE, SH_SIZE = vmexit.SH_CONS_BUF, vmexit.CONS_SIZE, vmexit.SH_SIZE

# Hypercall numbers (docs/paravirt.md). The first three can be performed by the processor.
HC_IRET, HC_SET_TIMER, HC_IRQ = S.HC_IRET, S.HC_SET_TIMER, S.HC_IRQ
HC_SET_TRAP_ENTRY = 3
HC_CONSOLE_WRITE = 4
HC_CONSOLE_FLUSH = vmexit.HC_CONSOLE_FLUSH
HC_BLOCK = vmexit.HC_BLOCK
HC_HALT = 7
HC_CYCLE = 8
HC_MULTICALL = 9
HC_NET_SETUP = 10
HC_NET_NOTIFY = 11
HC_NAMES = {HC_IRET: "iret", HC_SET_TIMER: "set_timer", HC_IRQ: "irq", HC_SET_TRAP_ENTRY: "set_trap_entry",
            HC_CONSOLE_WRITE: "console_write", HC_CONSOLE_FLUSH: "console_flush", HC_BLOCK: "block",
            HC_HALT: "halt", HC_CYCLE: "cycle", HC_MULTICALL: "multicall", HC_NET_SETUP: "net_setup",
            HC_NET_NOTIFY: "net_notify"}  # fmt: skip
CONTROL = (HC_IRET, HC_BLOCK, HC_HALT)  # calls that do not return to the caller's next instruction
EFAULT, EINVAL, ENOSYS = 14, 22, 38  # errors come back as -errno in r1, as Xen's do

DIRECT = (1 << SYSCALL) | (1 << TIMER_IRQ)  # causes the processor delivers into the guest kernel itself
FAST = (1 << HC_IRET) | (1 << HC_SET_TIMER) | (1 << HC_IRQ)  # hypercalls the processor performs itself
HCALL_WORD = encode(BY_MNEMONIC["hcall"])  # hcall 0; badaddr of an hcall made from a task is this | number
_MASK, _PENDING, _EPC, _EPSW, _EBASE, _EBOUND, _CAUSE, _BADADDR = range(8)  # word indexes of the SH_* words
_FEATURES, _CONS_LEN, _MC_COUNT, _NET_EVENTS = SH_FEATURES // 4, SH_CONS_LEN // 4, SH_MC_COUNT // 4, SH_NET_EVENTS // 4
NET_BLOCK = 16  # bytes of the block HC_NET_SETUP reads: the receive, transmit and urgent rings, descriptors per ring
NET_UPCALL = vmexit.NET_UPCALL  # events that interrupt the guest (completions it reads from the ring)
_HOST_ADDRESSES = (S.BASE, S.PV_SHARED, S.PV_KBASE)  # real-CPU slots that hold host addresses in the VM's slice
_UNSTARTED = object()  # a VM the monitor has not looked at yet
_HC_KEYS = {n: f"hcall {name}" for n, name in HC_NAMES.items()}  # statistics: hypercall exits by number
_COUNTERS = [("traps delivered by the core", S.PV_NTRAPS), ("interrupts delivered by the core", S.PV_NIRQS)] + [
    (f"hcall {HC_NAMES[n]} (core)", S.PV_NCALLS + n) for n in range(S.HC_FAST_LIMIT)
]


# What ``_sync`` copies from the real CPU as it is: the registers, time, status and pending interrupts.
_SYNC_SLOTS = np.array([*range(S.R0, S.PC + 1), S.CYCLE, S.STEPS, S.STATUS, S.TIMER, S.PENDING])
assert (_EPC, _EPSW, _EBASE, _EBOUND, _CAUSE, _BADADDR) == tuple(range(_EPC, _BADADDR + 1))  # one slice of sw
_COUNTER_FIRST, _COUNTER_LAST = min(slot for _, slot in _COUNTERS), max(slot for _, slot in _COUNTERS)
assert [slot for _, slot in _COUNTERS] == list(range(_COUNTER_FIRST, _COUNTER_LAST + 1))  # one slice of rstate


def boot_note(image: bytes | np.ndarray, memsize: int) -> int | None:
    """The guest-physical address of the shared area named by a PV image's boot note, or None if it has none."""
    words = np.frombuffer(bytes(image[:12]), dtype="<u4") if len(image) >= 12 else ()
    if len(words) < 3 or int(words[1]) != PV_MAGIC:
        return None
    shared = int(words[2])
    return shared if shared % 4 == 0 and shared + SH_SIZE <= memsize else None


@dataclass
class PVGuest:
    """What the monitor keeps about one PV guest."""

    shared: int  # guest-physical address of the shared area
    sw: np.ndarray  # the shared area as little-endian words (a view of guest memory)
    registered: bool = False  # HC_SET_TRAP_ENTRY has succeeded
    next_pc: int | None = None  # set by a hypercall that does not return to the next instruction
    shown: int = 0  # bytes of the console buffer already shown on the VM's console
    tick: bool = True  # False when the hypercall wrote the timer (it does not tick the timer it writes)
    seen: list[int] = field(default_factory=lambda: [0] * len(_COUNTERS))  # processor counters already counted
    line: int = 0  # the network card's interrupt line as the card last set it (its events not yet posted)
    counters: np.ndarray = field(default_factory=lambda: np.zeros(vmexit.NPVC, dtype=np.int64))  # run_pv's
    # The real CPU state and the shared words as memoryviews of the same memory: the exit paths read and write
    # single slots through them at half the cost of ndarray.item and numpy's item assignment.
    regs: memoryview = field(default=memoryview(b""), repr=False, compare=False)
    words: memoryview = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.words = memoryview(self.sw)


class Paravirt(TrapAndEmulate):
    """Hypercalls for PV guests, with the processor's help; trap-and-emulate for every other guest."""

    name = "pv"
    description = "paravirtual guest kernels make hypercalls; the core delivers their system calls and timer"
    direct = DIRECT  # what the processor is asked to do (a subclass may ask for less)
    fast = FAST
    features = None  # what the guest is told the processor does (None: the truth, ``fast``)

    def __init__(self, core: str | CoreRun = "jit") -> None:
        super().__init__(core)
        self._guests: WeakKeyDictionary[VM, PVGuest | None] = WeakKeyDictionary()
        self._calls: dict[int, Callable[[VM, PVGuest, int, int], int | None]] = {
            HC_IRET: self._iret, HC_SET_TIMER: self._set_timer, HC_IRQ: self._irq,
            HC_SET_TRAP_ENTRY: self._set_trap_entry, HC_CONSOLE_WRITE: self._console_write,
            HC_CONSOLE_FLUSH: self._console_flush, HC_BLOCK: self._block, HC_HALT: self._halt,
            HC_CYCLE: self._cycle, HC_NET_SETUP: self._net_setup, HC_NET_NOTIFY: self._net_notify,
        }  # fmt: skip

    def run(self, vm: VM, budget: int) -> int:
        """Advance the guest by at most ``budget`` steps."""
        g = self._guests.get(vm, _UNSTARTED)  # one lookup: a weak dictionary's are not cheap
        if g is _UNSTARTED:
            g = self._guests[vm] = self._start(vm)
        if g is None:
            return super().run(vm, budget)  # not a PV guest: trap-and-emulate
        return self._run_pv(vm, g, budget)

    # --- snapshots ---------------------------------------------------------------------------------------
    def save_vm(self, vm: VM) -> dict:
        """Whether the guest was started and, for a PV guest, its registration and its real CPU (offset-free)."""
        if vm not in self._guests:
            return {"started": False}
        g = self._guests[vm]
        if g is None:
            return {"started": True, "guest": None}
        r = [int(x) for x in vm.rstate]
        for slot in _HOST_ADDRESSES:  # host addresses become slice offsets: the VM may come back elsewhere
            r[slot] = (r[slot] - vm.offset) & M32
        return {"started": True, "guest": {"shared": g.shared, "registered": g.registered, "next_pc": g.next_pc,
                                           "shown": g.shown, "tick": g.tick, "seen": list(g.seen), "line": g.line,
                                           "rstate": r}}  # fmt: skip

    def restore_vm(self, vm: VM, state: dict) -> None:
        """Rebuild the PV guest's registration and load its real CPU (the guest's state lives there)."""
        self._guests.pop(vm, None)
        vm.nic.interrupt = vm.device_interrupt
        if not state.get("started"):
            return  # never run: the boot note is read at the first run, as for a fresh guest
        saved = state.get("guest")
        if saved is None:
            self._guests[vm] = None
            return
        shared = int(saved["shared"])
        if not (shared % 4 == 0 and 0 <= shared and shared + SH_SIZE <= vm.memsize):
            raise ValueError(f"shared area at {shared:#x} does not fit in {vm.memsize} bytes")
        rstate = np.array([int(x) for x in saved["rstate"]], dtype=np.int64)
        if len(rstate) != S.NSLOTS:
            raise ValueError(f"the real CPU has {len(rstate)} slots, not {S.NSLOTS}")
        seen = [int(x) for x in saved["seen"]]
        if len(seen) != len(_COUNTERS):
            raise ValueError("wrong number of counters")
        next_pc = saved["next_pc"]
        g = PVGuest(shared, vm.mem[shared : shared + SH_SIZE].view("<u4"), bool(saved["registered"]),
                    None if next_pc is None else int(next_pc), int(saved["shown"]), bool(saved["tick"]), seen,
                    int(saved["line"]))  # fmt: skip
        for slot in _HOST_ADDRESSES:
            rstate[slot] = (int(rstate[slot]) + vm.offset) & M32
        vm.rstate[:] = rstate
        g.regs = memoryview(vm.rstate)
        self._guests[vm] = g
        vm.nic.interrupt = partial(self._nic_line, vm, g)

    # --- start and the run loop --------------------------------------------------------------------------
    def _start(self, vm: VM) -> PVGuest | None:
        """Read the boot note; for a PV guest, load the real CPU with its reset state in the kernel context."""
        shared = boot_note(vm.mem, vm.memsize)
        if shared is None or vm.vstate[S.STEPS]:
            return None
        g = PVGuest(shared, vm.mem[shared : shared + SH_SIZE].view("<u4"), regs=memoryview(vm.rstate))
        v, r = vm.vstate, vm.rstate
        r[S.R0 : S.PC + 1] = v[S.R0 : S.PC + 1]
        r[S.CYCLE], r[S.STEPS], r[S.TIMER], r[S.PENDING] = v[S.CYCLE], v[S.STEPS], v[S.TIMER], v[S.PENDING]
        r[S.PSW], r[S.BASE], r[S.BOUND] = 0, vm.offset, vm.memsize  # real user mode, the guest's whole slice
        r[S.FLAGS] = S.F_TRAPS_TO_HOST | S.F_HCALL_TO_HOST | S.F_PV
        r[S.PV_SHARED], r[S.PV_ENTRY], r[S.PV_KBASE], r[S.PV_KBOUND] = vm.offset + shared, 0, vm.offset, vm.memsize
        r[S.PV_KMODE], r[S.PV_DIRECT], r[S.PV_FAST] = 1, 0, self.fast  # no delivery before an entry is registered
        r[S.PV_NTRAPS : S.PV_NCALLS + S.HC_FAST_LIMIT] = 0
        g.sw[_FEATURES] = self.fast if self.features is None else self.features
        vm.nic.interrupt = partial(self._nic_line, vm, g)  # the card interrupts through the monitor (_net_events)
        self._sync_ie(vm, g)
        return g

    def pv_loop(self) -> Callable[..., int] | None:
        """The compiled loop that performs the common PV exits (``vmexit.run_pv``), or None to do them in Python."""
        return self.companion(pv_exit_loop) if self.compiled_exits else None

    def _run_pv(self, vm: VM, g: PVGuest, budget: int) -> int:
        r, core, mem, stats, regs = vm.rstate, self.core, vm.host_mem, vm.stats, g.regs
        start = regs[S.STEPS]
        end = start + budget
        left = budget
        if g.line or g.words[_NET_EVENTS]:
            self._net_events(vm, g)  # what the card did since the last slice (the host gave it messages)
        loop = self.pv_loop()
        while left > 0 and not vm.stopped:
            if loop is not None and not g.line:  # the card's line changes only in Python: none while it runs
                g.counters[vmexit.PVC_SHOWN] = g.shown
                code = loop(r, mem, left, g.registered, g.counters, vm.console_out)
                self._take_counters(vm, g)
            else:
                code = core(r, mem, left)
            if code == S.EXIT_BUDGET:
                break
            t0 = perf_counter()
            if code == S.EXIT_HCALL:
                stats.exits["hcall"] += 1
                self._hcall(vm, g, regs[S.XCAUSE])
            elif code == S.EXIT_TRAP:
                cause = regs[S.XCAUSE]
                stats.exits[cause_name(cause)] += 1
                self._bounce(vm, g, cause, regs[S.XINFO])
            else:
                self._other_exit(vm, g, code)
            if g.line:
                self._net_events(vm, g)
            stats.monitor_seconds += perf_counter() - t0
            left = end - regs[S.STEPS]
        self._sync(vm, g)
        return regs[S.STEPS] - start

    @staticmethod
    def _take_counters(vm: VM, g: PVGuest) -> None:
        """Merge what the compiled loop did into the statistics and the console; take back ``shown``."""
        c = g.counters
        g.shown = c.item(vmexit.PVC_SHOWN)
        c[vmexit.PVC_SHOWN] = 0
        slots = c.nonzero()[0].tolist()  # a method call, not np.flatnonzero: this runs after every loop call
        if not slots:
            return
        counts = c.tolist()
        c.fill(0)
        stats = vm.stats
        for slot in slots:
            n = counts[slot]
            if slot < vmexit.PVC_HCALL:
                stats.exits[cause_name(slot - vmexit.PVC_CAUSE)] += n
            elif slot == vmexit.PVC_HCALL:
                stats.exits["hcall"] += n
            elif slot < vmexit.PVC_REFLECTED:
                k = slot - vmexit.PVC_HC
                stats.extra[_HC_KEYS.get(k) or f"hcall {k}"] += n
            elif slot == vmexit.PVC_REFLECTED:
                stats.reflected += n
            elif slot == vmexit.PVC_INJECTED:
                stats.injected += n
            elif slot == vmexit.PVC_CONSOLE:  # before the exit the loop stopped for, as they came
                vm.console.output += vm.console_out[:n].tobytes()

    def _other_exit(self, vm: VM, g: PVGuest, code: int) -> None:
        """What a profile lets a PV guest's user mode execute: halt, in/out (host devices), wfi."""
        r = vm.rstate
        if code == S.EXIT_HALT:
            vm.halted = True
            return
        vm.stats.exits[S.exit_name(code)] += 1
        if code == S.EXIT_IO:  # reaches the host's devices, not the guest's console (as under trap)
            vm.host_io.append((r.item(S.IO_PORT), bool(r.item(S.IO_WRITE)), r.item(S.IO_VALUE)))
            if not r.item(S.IO_WRITE) and r.item(S.IO_REG):
                r[S.R0 + r.item(S.IO_REG)] = M32
            self._retire(vm, g)
        elif code == S.EXIT_IDLE:
            vm.error = (
                f"wfi at {r.item(S.PC):#010x} ran untrapped on the real processor, which has no interrupt to wake it"
            )
        else:
            vm.error = f"unexpected exit {S.exit_name(code)} from the core"

    # --- what the processor does, done in software ------------------------------------------------------
    def _sync_ie(self, vm: VM, g: PVGuest) -> None:
        """IE <- the guest's mask word is 0."""
        r = g.regs
        r[S.PSW] = (r[S.PSW] & PSW_S) | (0 if g.words[_MASK] else PSW_IE)

    def _retire(self, vm: VM, g: PVGuest) -> None:
        """Retire the instruction at pc as the core would: pc, cycle, steps, the timer and its expiry."""
        if S.retire(vm.rstate, g.next_pc, g.tick):
            g.sw[_PENDING] = 1
            self._sync_ie(vm, g)
        g.next_pc, g.tick = None, True

    def _bounce(self, vm: VM, g: PVGuest, cause: int, info: int) -> None:
        """Deliver a trap or interrupt into the guest kernel's entry, exactly as the processor does."""
        r, sw = g.regs, g.words
        if not g.registered:
            vm.error = f"{cause_name(cause)} (cause {cause}) before the guest registered its trap entry"
            return
        kbase = r[S.PV_KBASE] & M32
        sw[_EPSW] = (PSW_S if r[S.PV_KMODE] else 0) | (0 if sw[_MASK] else PSW_IE)
        sw[_EPC], sw[_EBASE], sw[_EBOUND] = r[S.PC] & M32, ((r[S.BASE] & M32) - kbase) & M32, r[S.BOUND] & M32
        sw[_CAUSE], sw[_BADADDR], sw[_MASK] = cause, info & M32, 1
        r[S.PSW], r[S.BASE], r[S.BOUND], r[S.PC] = 0, kbase, r[S.PV_KBOUND] & M32, r[S.PV_ENTRY] & M32
        r[S.PV_KMODE] = 1
        r[S.STEPS] = r[S.STEPS] + 1
        if cause >= TIMER_IRQ:
            vm.stats.injected += 1
        else:
            vm.stats.reflected += 1

    # --- hypercalls --------------------------------------------------------------------------------------
    def _hcall(self, vm: VM, g: PVGuest, n: int) -> None:
        """Perform hypercall ``n`` at the guest's pc (args r1, r2; result r1), then retire it."""
        r = g.regs
        if not r[S.PV_KMODE]:  # a task may not make hypercalls: ILLEGAL, as on the bare machine
            self._bounce(vm, g, ILLEGAL, HCALL_WORD | n)
            return
        vm.stats.extra[_HC_KEYS.get(n) or f"hcall {n}"] += 1
        if n == HC_MULTICALL:
            self._multicall(vm, g)
        else:
            call = self._calls.get(n)
            result = call(vm, g, r[1], r[2]) if call else -ENOSYS
            if result is not None:
                r[1] = result & M32
        if vm.error or vm.waiting:  # a block that can never end, or that waits for the card: it does not retire
            return
        self._sync_ie(vm, g)
        self._retire(vm, g)

    def _multicall(self, vm: VM, g: PVGuest) -> None:
        """Perform the queued entries in order, each result in its entry; a control transfer only as the last."""
        sw, extra = g.sw, vm.stats.extra
        count = min(sw.item(_MC_COUNT), MC_MAX)
        sw[_MC_COUNT] = 0
        for i in range(count):
            e = SH_MC + i * MC_ENTRY  # byte offset of the entry; sw holds words
            n = sw.item((e + MC_OP) // 4)
            call = self._calls.get(n)
            if call is None or (n in CONTROL and i != count - 1):
                result = -EINVAL if call else -ENOSYS
            else:
                extra[f"batched {HC_NAMES[n]}"] += 1
                extra["batched ops"] += 1
                result = call(vm, g, sw.item((e + MC_ARG1) // 4), sw.item((e + MC_ARG2) // 4))
            sw[(e + MC_RESULT) // 4] = (0 if result is None else result) & M32
            if vm.error or vm.waiting:
                return

    def _iret(self, vm: VM, g: PVGuest, a1: int, a2: int) -> None:
        r, sw = vm.rstate, g.sw
        epsw, ebase, ebound = sw.item(_EPSW), sw.item(_EBASE), sw.item(_EBOUND)
        kbase, kbound = r.item(S.PV_KBASE) & M32, r.item(S.PV_KBOUND) & M32
        if ebase < kbound:
            r[S.BASE], r[S.BOUND] = (kbase + ebase) & M32, min(ebound, kbound - ebase)
        else:
            r[S.BASE], r[S.BOUND] = kbase, 0
        r[S.PV_KMODE] = epsw & PSW_S
        sw[_MASK] = 0 if epsw & PSW_IE else 1
        g.next_pc = sw.item(_EPC)

    def _set_timer(self, vm: VM, g: PVGuest, a1: int, a2: int) -> None:
        r = vm.rstate
        r[S.TIMER] = a1 & M32
        r[S.PENDING] = r.item(S.PENDING) & ~S.PEND_TIMER
        g.sw[_PENDING] = 0
        g.tick = False

    def _irq(self, vm: VM, g: PVGuest, a1: int, a2: int) -> None:
        return None  # re-reading the mask is what every hypercall does before it retires

    def _set_trap_entry(self, vm: VM, g: PVGuest, a1: int, a2: int) -> int:
        if a1 % 4 or a1 >= vm.memsize:
            return -EINVAL
        r = vm.rstate
        r[S.PV_ENTRY], r[S.PV_DIRECT] = a1, self.direct
        g.registered = True
        return 0

    def _console_write(self, vm: VM, g: PVGuest, a1: int, a2: int) -> int:
        if a1 + a2 > vm.memsize:
            return -EFAULT
        self._drain(vm, g)
        vm.console.output += vm.mem[a1 : a1 + a2].tobytes()
        return a2

    def _console_flush(self, vm: VM, g: PVGuest, a1: int, a2: int) -> int:
        return self._drain(vm, g)

    def _block(self, vm: VM, g: PVGuest, a1: int, a2: int) -> None:
        r = g.regs
        if r[S.PENDING] or g.words[_NET_EVENTS] & NET_UPCALL:
            return
        timer = r[S.TIMER]
        if not timer:
            vm.nic.poll()  # the card looks at its rings while the guest waits, as for wfi
            self._net_events(vm, g, deliver=False)
            if g.words[_NET_EVENTS] & NET_UPCALL:
                return
            if vm.nic.can_wake():
                vm.waiting = True  # until the host gives the card a message; then the block runs again
                return
            vm.error = f"hcall block at {r[S.PC]:#010x} can never end: nothing pending and the timer is off"
            return
        r[S.CYCLE] = r[S.CYCLE] + timer  # idle until the timer expires (wfi's time), then retire
        r[S.TIMER] = 0
        r[S.PENDING] = r[S.PENDING] | S.PEND_TIMER
        g.words[_PENDING] = 1

    def _halt(self, vm: VM, g: PVGuest, a1: int, a2: int) -> None:
        vm.rstate[S.STATUS] = a1 & 0xFF
        self._drain(vm, g)
        vm.halted = True

    def _cycle(self, vm: VM, g: PVGuest, a1: int, a2: int) -> int:
        return vm.rstate.item(S.CYCLE) & M32

    # --- the network card -------------------------------------------------------------------------------
    def _net_setup(self, vm: VM, g: PVGuest, a1: int, a2: int) -> int:
        """Program the VM's card with the rings named by the block at ``a1`` and start it, its interrupt on."""
        if a1 % 4 or a1 + NET_BLOCK > vm.memsize:
            return -EFAULT
        rx, tx, urx, size = (int(w) for w in vm.mem[a1 : a1 + NET_BLOCK].view("<u4"))
        nic = vm.nic
        nic.write(N.NIC_CTRL, 0)  # stopped first: the ring registers take writes only then
        for port, value in ((N.NIC_RX, rx), (N.NIC_TX, tx), (N.NIC_URX, urx), (N.NIC_SIZE, size)):
            nic.write(port, value)
        nic.write(N.NIC_CTRL, N.CTRL_ENABLE | N.CTRL_IRQ)
        return 0 if nic.enabled else -EINVAL

    def _net_notify(self, vm: VM, g: PVGuest, a1: int, a2: int) -> int:
        """The doorbell: the card sends what the transmit ring holds (and looks at the receive rings)."""
        vm.nic.write(N.NIC_DOORBELL, 0)
        return 0

    @staticmethod
    def _nic_line(vm: VM, g: PVGuest, devnum: int) -> None:
        """The card's interrupt line, for a PV guest: noted here, posted to the guest by ``_net_events``."""
        g.line = devnum
        if devnum:
            vm.waiting = False

    def _net_events(self, vm: VM, g: PVGuest, deliver: bool = True) -> None:
        """Post the card's events to the shared area and, where the guest can take it, interrupt it.

        The monitor acknowledges the card itself (as Xen's netback does for a netfront): the guest clears the
        shared word instead, with a store, so taking an event costs it no exit. The virtual DEVICE interrupt is
        delivered through the mask when the monitor has control (a slice's start, an exit); a guest that is
        masked then finds the events when it next looks (it acknowledges before it reads its rings).
        """
        nic, sw = vm.nic, g.words
        events = nic.status
        if events:
            nic.write(N.NIC_STATUS, events)
            sw[_NET_EVENTS] = sw[_NET_EVENTS] | events
        pending = sw[_NET_EVENTS] & NET_UPCALL
        if deliver and pending and g.registered and not sw[_MASK] and not vm.stopped:
            vm.stats.extra["net interrupts"] += 1
            self._bounce(vm, g, DEVICE_IRQ, N.DEV_NIC_URGENT if pending & N.EV_URGENT else N.DEV_NIC)

    # --- the console and the virtual CPU -----------------------------------------------------------------
    def _drain(self, vm: VM, g: PVGuest) -> int:
        """Consume the guest's console buffer (at a hypercall); return how many bytes it held."""
        n = self._peek(vm, g)
        g.sw[_CONS_LEN] = 0
        g.shown = 0
        return n

    def _peek(self, vm: VM, g: PVGuest) -> int:
        """Show what the console buffer holds beyond what was shown already, leaving the buffer to the guest.

        Only the guest writes the length word (after the byte), except when a hypercall empties the buffer:
        so the monitor may look at any time, and how often it does (the host's slices) changes nothing the
        guest can see.
        """
        n = min(g.words[_CONS_LEN], CONS_SIZE)
        if n > g.shown:
            start = g.shared + SH_CONS_BUF
            vm.console.output += vm.mem[start + g.shown : start + n].tobytes()
            g.shown = n
        return n

    def _sync(self, vm: VM, g: PVGuest) -> None:
        """Copy the guest's state to the virtual CPU and count the processor's work; drain the console."""
        r, v, regs = vm.rstate, vm.vstate, g.regs
        v[_SYNC_SLOTS] = r[_SYNC_SLOTS]  # one gather and one scatter instead of a numpy access per slot
        v[S.EPC], v[S.EPSW], v[S.EBASE], v[S.EBOUND], v[S.CAUSE], v[S.BADADDR] = g.words[_EPC : _BADADDR + 1]
        v[S.PSW] = (PSW_S if regs[S.PV_KMODE] else 0) | (regs[S.PSW] & PSW_IE)
        v[S.BASE], v[S.BOUND] = (regs[S.BASE] - vm.offset) & M32, regs[S.BOUND]
        v[S.IVT] = regs[S.PV_ENTRY]
        counts = regs[_COUNTER_FIRST : _COUNTER_LAST + 1].tolist()
        if counts != g.seen:
            extra = vm.stats.extra
            for i, ((name, _), count) in enumerate(zip(_COUNTERS, counts, strict=True)):
                if count != g.seen[i]:
                    extra[name] += count - g.seen[i]
                    g.seen[i] = count
        self._peek(vm, g)


class ParavirtNoAssist(Paravirt):
    """``pv`` without the processor's help: every system call, timer interrupt and hypercall is an exit."""

    name = "pv-noassist"
    description = "paravirtual guests, every trap and hypercall through the monitor"
    direct = 0
    fast = 0

    def pv_loop(self) -> None:
        """None: every exit of a PV guest goes through Python, what the processor's help is measured against."""
        return None
