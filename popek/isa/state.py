"""The flat machine state shared by every core: one int64 numpy array with named slots.

All 32-bit quantities are stored as unsigned values 0..2**32-1.  ``cycle`` and ``steps`` are full 64-bit
counters (``mfcr cycle`` returns the low 32 bits).  The C core reads this layout from a header that
``popek/cores/c/gen_tables.py`` generates from this file at every build.

Core contract: ``run(state, mem, budget) -> exit code``.  A *step* is one retired instruction or one trap or
interrupt taken into the guest's vector; a core runs at most ``budget`` steps.  Exits that hand something to
the host (EXIT_TRAP, EXIT_IO, EXIT_HCALL, EXIT_IDLE) leave the machine exactly before the instruction
concerned: ``pc`` points at it and nothing has changed, so the host may emulate it and then ``retire``.
The architectural transitions every core's Python side and every monitor use live here too.
"""

from __future__ import annotations

import numpy as np

from popek.isa.spec import CR_CYCLE, CR_TIMER, DEVICE_IRQ, NUM_CRS, PROFILE_KEYS, PSW_IE, PSW_S, TIMER_IRQ

# Slots.
R0 = 0  # r0..r15 at 0..15
PC = 16
CR0 = 17  # control register n at CR0 + n
PSW, EPC, EPSW, CAUSE, BADADDR, IVT, BASE, BOUND, EBASE, EBOUND, TIMER, SCRATCH, CYCLE = range(CR0, CR0 + NUM_CRS)
PENDING = 30  # pending interrupts: bit 0 timer, bit 1 device
DEVNUM = 31  # device number of a pending device interrupt
FLAGS = 32  # host flags, below
XCAUSE = 33  # on EXIT_TRAP: the cause; on EXIT_HCALL: the call number
XINFO = 34  # on EXIT_TRAP: what badaddr would have received
IO_PORT = 35  # on EXIT_IO: the port,
IO_WRITE = 36  # 1 for out, 0 for in,
IO_VALUE = 37  # the value written by out,
IO_REG = 38  # and the register that in reads into
STEPS = 39  # steps run since reset (64-bit)
STATUS = 40  # exit status after halt (r1 & 0xFF)
PROFILE = 48  # one behaviour code (spec.TRAP/EXECUTE/IGNORE) per spec.PROFILE_KEYS entry
# Slots 88-103 belong to the binary-rewriting support, 104-119 to the paravirtual support (their monitors
# document them); 120-127 are free.
REWRITE_SLOTS = 88
PV_SLOTS = 104
NSLOTS = 128

PEND_TIMER = 1
PEND_DEVICE = 2

# Host flags (FLAGS slot).
F_TRAPS_TO_HOST = 1  # every trap and interrupt exits with EXIT_TRAP instead of entering the guest's vector
F_HCALL_TO_HOST = 2  # hcall exits with EXIT_HCALL instead of raising ILLEGAL (a monitor is present)
# Bit 2 (4) is reserved for the binary-rewriting support, bit 3 (8) for the paravirtual support.

# Exit codes.
EXIT_HALT = 0  # halt retired; status in STATUS
EXIT_BUDGET = 1  # budget spent
EXIT_TRAP = 2  # a trap or interrupt for the host (F_TRAPS_TO_HOST); cause in XCAUSE, badaddr in XINFO
EXIT_IO = 3  # in/out for the host to perform; see IO_* slots
EXIT_HCALL = 4  # hcall with F_HCALL_TO_HOST; number in XCAUSE
EXIT_IDLE = 5  # wfi with nothing pending and nothing that could ever make it pending (or F_TRAPS_TO_HOST)
EXIT_ERROR = 6  # the core could not go on (never caused by a guest; a bug)
EXIT_NAMES = ["halt", "budget", "trap", "io", "hcall", "idle", "error"]
# Exit codes 7-9 are reserved for the binary-rewriting support, 10-12 for the paravirtual support.


def exit_name(code: int) -> str:
    """The name of a core exit code (``halt``, ``io``…), or its number when it is not a base exit."""
    return EXIT_NAMES[code] if 0 <= code < len(EXIT_NAMES) else f"exit {code}"


# --- binary-rewriting support (docs/isa.md, "Binary-rewriting support"; popek/vmm/monitors/rewrite.py) ---------
# A monitor keeps a *shadow copy* of a guest's code, rewritten, in its own memory D bytes below the guest.
# The support is active while F_REWRITE is set and 4 <= D <= base: then every store also leaves the marker
# word (RW_OP_XLATE << 24) over the shadow of the words it wrote, and with RW_FETCH set instructions are
# fetched from the shadow, where the monitor-only opcodes RW_OP_XLATE..RW_OP_LAST decode.
F_REWRITE = 4
RW_SHADOW = 88  # D: the shadow of physical address p is at p - D
RW_FETCH = 89  # non-zero: fetch instructions from the shadow
RW_VPEND = 90  # the virtual CPU's pending interrupts (a twin may not enable IE while one is)
VCR0 = 91  # virtual control register n at VCR0 + n; cycle holds an offset to CYCLE, timer a deadline on it
EXIT_XLATE = 7  # fetched a marker: the shadow word at pc is not translated (or is stale); pc at it
EXIT_CALLOUT = 8  # a replaced instruction only the monitor can perform; pc at it, nothing changed
RW_OP_XLATE = 0xC0  # the marker: untranslated or overwritten since its translation
RW_OP_CALLOUT = 0xC1  # "the monitor performs the guest's instruction here"
RW_OP_LAST = 0xDF  # the last monitor-only opcode
RW_TWIN = 0x80  # opcode distance from a system instruction (0x42-0x5F) to its twin (0xC2-0xDF)

# --- paravirtual support (docs/paravirt.md; popek/vmm/monitors/paravirt.py) -------------------------------------
# With F_PV the processor delivers chosen traps straight into a paravirtual guest's kernel, performs a few
# hypercalls itself and samples the guest's virtual interrupt mask (the reference core says exactly how).
# The guest's trap state lives in a shared area of its memory whose first SH_CORE_BYTES hold these words.
F_PV = 8
PV_SHARED = 104  # host address of the shared area (aligned; the support is inactive where it does not fit)
PV_ENTRY = 105  # the guest kernel's trap entry, in its kernel context
PV_KBASE = 106  # the kernel context's relocation (the guest's memory slice); a user context's R in the
PV_KBOUND = 107  # frame is composed with it
PV_KMODE = 108  # non-zero while the guest's kernel context runs
PV_DIRECT = 109  # bit c: the processor delivers trap or interrupt cause c into the guest kernel itself
PV_FAST = 110  # bit n (n < HC_FAST_LIMIT): the processor performs hypercall n itself, from the kernel context
PV_NTRAPS = 111  # traps the processor delivered (counter)
PV_NIRQS = 112  # interrupts the processor delivered (counter)
PV_NCALLS = 113  # hypercall n performed by the processor, counted at PV_NCALLS + n
SH_MASK = 0  # virtual interrupts masked (non-zero) or enabled (0)
SH_PENDING = 4  # 1 once the timer expired, 0 after HC_SET_TIMER
SH_EPC = 8  # the frame of the last trap delivered into the guest kernel
SH_EPSW = 12  # its virtual psw: S = it came from the kernel context, IE = interrupts were unmasked
SH_EBASE = 16  # its relocation, relative to PV_KBASE
SH_EBOUND = 20
SH_CAUSE = 24
SH_BADADDR = 28
SH_CORE_BYTES = 32
HC_IRET = 0  # hypercalls the processor can perform: return to the context in the frame,
HC_SET_TIMER = 1  # timer <- r1 (clears a pending timer interrupt and SH_PENDING),
HC_IRQ = 2  # re-read the mask (a pending interrupt is then taken if it is clear)
HC_FAST_LIMIT = 3

MASK32 = 0xFFFFFFFF
assert CYCLE == CR0 + CR_CYCLE and TIMER == CR0 + CR_TIMER and PROFILE + len(PROFILE_KEYS) <= NSLOTS


def new_state(memsize: int, profile: np.ndarray | None = None) -> np.ndarray:
    """A state at reset (ISA §1): supervisor mode, IE off, R = (0, memsize), pc 0."""
    state = np.zeros(NSLOTS, dtype=np.int64)
    state[PSW] = PSW_S
    state[BOUND] = memsize
    if profile is not None:
        state[PROFILE : PROFILE + len(PROFILE_KEYS)] = profile
    return state


# --- architectural transitions (ISA §4), the one home of what every core's Python side and monitor does ---
# They work on a state array or on the reference core's list copy of it alike.


def enter_trap(s: np.ndarray, memsize: int, cause: int, info: int, epc: int) -> None:
    """Take a trap into the guest's vector (ISA §4): save PSW, PC and R, go to supervisor mode at ivt."""
    s[EPC], s[EPSW], s[EBASE], s[EBOUND] = epc & MASK32, s[PSW], s[BASE], s[BOUND]
    s[CAUSE], s[BADADDR] = cause, info & MASK32
    s[PSW], s[BASE], s[BOUND], s[PC] = PSW_S, 0, memsize, s[IVT]


def pending_interrupt(s: np.ndarray) -> tuple[int, int] | None:
    """The interrupt the machine takes before its next instruction (cause, badaddr), or None."""
    if not s[PSW] & PSW_IE:
        return None
    if s[PENDING] & PEND_TIMER:
        return TIMER_IRQ, 0
    if s[PENDING] & PEND_DEVICE:
        return DEVICE_IRQ, int(s[DEVNUM])
    return None


def retire(s: np.ndarray, next_pc: int | None = None, tick: bool = True) -> bool:
    """Retire an instruction: pc moves on, cycle and steps count it, the timer ticks (ISA §4, Time).

    Returns True when the timer expired at this retirement (its interrupt is then pending).
    """
    s[PC] = (int(s[PC]) + 4 if next_pc is None else next_pc) & MASK32
    s[CYCLE] += 1
    s[STEPS] += 1
    if tick and s[TIMER]:
        s[TIMER] -= 1
        if s[TIMER] == 0:
            s[PENDING] |= PEND_TIMER
            return True
    return False


def complete_io(s: np.ndarray, value: int = 0) -> None:
    """Finish an EXIT_IO: store what ``in`` read into its register, then retire the instruction."""
    if not s[IO_WRITE]:
        reg = int(s[IO_REG])
        if reg:
            s[R0 + reg] = value & MASK32
    retire(s)
