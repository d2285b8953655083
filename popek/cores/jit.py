"""The Numba core: P32 compiled to machine code, with exactly the reference core's semantics.

``run(state, mem, budget) -> exit code`` leaves ``state`` and ``mem`` bit for bit as ``reference.run`` does,
for any budget and any split of a run into several calls (docs/isa.md).  It is the project's "hardware", so
it is written for speed:

- two loops: the fast one (``popek/cores/threaded.py``, emitted as LLVM IR so that every handler ends with a
  dispatch jump of its own, as C's computed goto gives; a function of its own so that only its few values
  compete for machine registers) runs everything but system instructions (ALU, loads, stores, branches,
  jumps) and returns on a trap, on a system instruction and when ``r`` reaches ``stop``.  The outer loop in
  ``run`` delivers traps, fires the timer, checks the budget, takes interrupts, and runs the system
  instructions; interrupts are therefore looked at only after something that could make one deliverable;
- the hot state lives in local variables: ``pc``, the relocation base and ``lim = min(bound, memsize -
  base)``, so that a bounds check is a single comparison.  The registers stay in ``state[0:16]`` (their
  home); every other CR is read from and written to ``state`` by the rare instructions that touch it;
- time is lazy: ``r`` counts instructions retired in this call and the timer is kept as the value of ``r``
  at which it reaches zero (``tdead``), so one comparison per instruction (``r < stop``) covers the budget
  and the timer; ``cycle``, ``timer``, ``steps`` and ``pc`` are written back on exit;
- memory is indexed with unsigned offsets, words are moved with one unaligned 32-bit access (a relocation
  base need not be a multiple of 4), and every access is checked against ``lim`` first, so no guest value
  and no value in ``state`` can reach outside ``mem``;
- every instruction word is fetched from memory at every step, so self-modifying code needs no care.

System instructions are decoded through per-opcode tables (must-be-zero bits, profile key, control-register
operand) that ``popek/cores/c/gen_tables.py`` derives from the instruction table for the C core as well.

Numba keys its on-disk cache on this file alone; ``numba_cache.drop_stale_cache`` also drops it when a file
compiled into it (``threaded.py``, ``popek/isa/spec.py``, ``popek/isa/state.py``, ``popek/cores/c/gen_tables.py``)
has changed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from popek.cores import numba_cache, threaded
from popek.cores.c import gen_tables
from popek.cores.threaded import SYSTEM_MARK, fast_loop, fast_loop_rw
from popek.isa import spec
from popek.isa import state as S

# Everything below is a module-level int, which Numba freezes into the compiled code as a constant.
M32 = 0xFFFFFFFF
PC = S.PC
PSW, EPC, EPSW, CAUSE, BADADDR, IVT, BASE, BOUND = S.PSW, S.EPC, S.EPSW, S.CAUSE, S.BADADDR, S.IVT, S.BASE, S.BOUND
EBASE, EBOUND, TIMER, CYCLE, CR0 = S.EBASE, S.EBOUND, S.TIMER, S.CYCLE, S.CR0
PENDING, DEVNUM, FLAGS, XCAUSE, XINFO = S.PENDING, S.DEVNUM, S.FLAGS, S.XCAUSE, S.XINFO
IO_PORT, IO_WRITE, IO_VALUE, IO_REG, STEPS, STATUS = S.IO_PORT, S.IO_WRITE, S.IO_VALUE, S.IO_REG, S.STEPS, S.STATUS
F_TRAPS_TO_HOST, F_HCALL_TO_HOST = S.F_TRAPS_TO_HOST, S.F_HCALL_TO_HOST
EXIT_HALT, EXIT_BUDGET, EXIT_TRAP, EXIT_IO = S.EXIT_HALT, S.EXIT_BUDGET, S.EXIT_TRAP, S.EXIT_IO
EXIT_HCALL, EXIT_IDLE = S.EXIT_HCALL, S.EXIT_IDLE
EXECUTE, IGNORE, CONSOLE_PORT = spec.EXECUTE, spec.IGNORE, spec.CONSOLE_PORT
NUM_CRS, CR_PSW, CR_BASE, CR_BOUND = spec.NUM_CRS, spec.CR_PSW, spec.CR_BASE, spec.CR_BOUND
CR_TIMER, CR_CYCLE = spec.CR_TIMER, spec.CR_CYCLE
SYSCALL, PRIV, ILLEGAL, BREAK = spec.SYSCALL, spec.PRIV, spec.ILLEGAL, spec.BREAK
TIMER_IRQ, DEVICE_IRQ = spec.TIMER_IRQ, spec.DEVICE_IRQ
PROFILE = S.PROFILE
_OP = {insn.mnemonic: insn.opcode for insn in spec.INSNS}
OP_SYSCALL, OP_BRK, OP_HCALL, OP_IRET, OP_HALT, OP_WFI = (_OP[m] for m in "syscall brk hcall iret halt wfi".split())
OP_MFCR, OP_MTCR, OP_IN, OP_OUT, OP_GETPSW, OP_SETPSW, OP_GETBASE = (
    _OP[m] for m in "mfcr mtcr in out getpsw setpsw getbase".split()
)
# Per-opcode decode tables (gen_tables.opcode_tables, as the C core has them); Numba freezes global arrays into
# the compiled code as constants.
_TABLES = gen_tables.opcode_tables()
MUST_BE_ZERO = np.array(_TABLES["must_be_zero"], dtype=np.int64)
PROFILE_KEY = np.array(_TABLES["profile_key"], dtype=np.int64)
CR_OPERAND = np.array(_TABLES["cr_operand"], dtype=np.bool_)
# binary-rewriting support (popek/isa/state.py; the reference core's _rw_* functions are the specification)
F_REWRITE, RW_SHADOW, RW_FETCH, RW_VPEND, VCR0 = S.F_REWRITE, S.RW_SHADOW, S.RW_FETCH, S.RW_VPEND, S.VCR0
EXIT_XLATE, EXIT_CALLOUT, RW_TWIN = S.EXIT_XLATE, S.EXIT_CALLOUT, S.RW_TWIN
RW_OP_XLATE, RW_OP_CALLOUT = S.RW_OP_XLATE, S.RW_OP_CALLOUT
RW_RETIRE, RW_CALL_OUT = -1, -2  # what _rw_twin tells run to do (else: the cause of a trap)
MAX_BUDGET = 1 << 62  # more steps than any run can take; keeps the step arithmetic far from overflow


# --- Numba's on-disk cache (popek/cores/numba_cache.py: where it is kept, and dropping it when a file
# compiled in changes; the marker keeps the name "jit", so caches written before stay valid) -------------
_COMPILED: list = []  # every function compiled here, for numba_cache.drop_stale_cache


def _compiled(fn: Callable) -> Callable:
    """``njit`` with the on-disk cache, releasing the GIL while it runs."""
    return numba_cache.cached_njit(fn, _COMPILED)


# --- unaligned little-endian word access -------------------------------------------------------------
# A relocation base need not be a multiple of 4, so an aligned virtual word may sit at any physical
# address.  These intrinsics load and store it with one unaligned 32-bit access, as C's memcpy would,
# where four byte accesses cost several instructions that LLVM does not merge on the load side.

_BIG_ENDIAN = sys.byteorder == "big"


def _word_ptr(context, builder, aryty, ary, idx):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [idx]), ir.IntType(32).as_pointer())


@intrinsic
def _load32(typingctx, arr, idx):
    """``mem[idx:idx+4]`` as a little-endian unsigned word (int64); no bounds check."""

    def codegen(context, builder, sig, args):
        v = builder.load(_word_ptr(context, builder, sig.args[0], args[0], args[1]), align=1)
        return builder.zext(builder.bswap(v) if _BIG_ENDIAN else v, ir.IntType(64))

    return types.int64(arr, idx), codegen


@intrinsic
def _store32(typingctx, arr, idx, val):
    """Store the low 32 bits of ``val`` little-endian at ``mem[idx:idx+4]``; no bounds check."""

    def codegen(context, builder, sig, args):
        v = builder.trunc(args[2], ir.IntType(32))
        builder.store(
            builder.bswap(v) if _BIG_ENDIAN else v, _word_ptr(context, builder, sig.args[0], args[0], args[1]), align=1
        )
        return context.get_dummy_value()

    return types.void(arr, idx, val), codegen


@_compiled
def _leave(state, pc, r, r_mark, traps, skip, cyc0, tact, tdead):
    """Write the lazily kept time and pc back into ``state`` before the core returns."""
    if tact and r == tdead:  # the last retired instruction (halt) made the timer reach zero
        state[PENDING] |= 1
        tact = False
    state[TIMER] = tdead - r if tact else 0
    state[CYCLE] = cyc0 + skip + r
    state[STEPS] += r + traps
    if r > r_mark:  # something retired since the last trap entry (which wrote pc itself)
        state[PC] = pc


# --- paravirtual support ---------------------------------------------------------------------------------
# The processor's help for a paravirtual guest under the host flag F_PV, exactly as popek/cores/reference.py
# describes it: a trap gate into the guest kernel (PV_DIRECT), three hypercalls performed in the core
# (PV_FAST) and IE kept equal to "the shared mask word is 0" at timer expiry and after those hypercalls.
# ``run`` decides once whether the support is active (``pv``); everything here runs only then.
F_PV, PV_SHARED, PV_ENTRY, PV_KBASE, PV_KBOUND = S.F_PV, S.PV_SHARED, S.PV_ENTRY, S.PV_KBASE, S.PV_KBOUND
PV_KMODE, PV_DIRECT, PV_FAST, PV_NTRAPS, PV_NIRQS = S.PV_KMODE, S.PV_DIRECT, S.PV_FAST, S.PV_NTRAPS, S.PV_NIRQS
PV_NCALLS, SH_MASK, SH_PENDING, SH_EPC, SH_EPSW = S.PV_NCALLS, S.SH_MASK, S.SH_PENDING, S.SH_EPC, S.SH_EPSW
SH_EBASE, SH_EBOUND, SH_CAUSE, SH_BADADDR = S.SH_EBASE, S.SH_EBOUND, S.SH_CAUSE, S.SH_BADADDR
SH_CORE_BYTES, HC_IRET, HC_SET_TIMER, HC_FAST_LIMIT = S.SH_CORE_BYTES, S.HC_IRET, S.HC_SET_TIMER, S.HC_FAST_LIMIT


@_compiled
def pv_active(state: np.ndarray, memsize: int) -> bool:
    """The paravirtual support is on and its shared area fits in ``memsize`` bytes."""
    sh = state[PV_SHARED]
    return (state[FLAGS] & F_PV) != 0 and sh >= 0 and (sh & 3) == 0 and sh <= memsize - SH_CORE_BYTES


@_compiled
def pv_get(state: np.ndarray, mem: np.ndarray, offset: int) -> int:
    """The word at ``offset`` in the shared area (no bounds check: ``pv_active`` first)."""
    return _load32(mem, np.uint64(state[PV_SHARED] + offset))


@_compiled
def pv_put(state: np.ndarray, mem: np.ndarray, offset: int, value: int) -> None:
    """Store ``value`` at ``offset`` in the shared area (no bounds check: ``pv_active`` first)."""
    _store32(mem, np.uint64(state[PV_SHARED] + offset), value & M32)


@_compiled
def pv_sync_ie(state: np.ndarray, mem: np.ndarray) -> None:
    """IE <- the shared mask word is 0."""
    state[PSW] = (state[PSW] & 1) | (0 if pv_get(state, mem, SH_MASK) else 2)


@_compiled
def pv_expired(state: np.ndarray, mem: np.ndarray) -> None:
    """The timer just reached zero: set the shared pending word and sample the mask."""
    pv_put(state, mem, SH_PENDING, 1)
    pv_sync_ie(state, mem)


@_compiled
def _pv_enter(state, mem, pc, cause, info):
    """Deliver a trap or interrupt into the guest kernel: the frame to the shared area, then its context."""
    kbase = state[PV_KBASE] & M32
    epsw = (1 if state[PV_KMODE] != 0 else 0) | (0 if pv_get(state, mem, SH_MASK) else 2)
    pv_put(state, mem, SH_EPC, pc)
    pv_put(state, mem, SH_EPSW, epsw)
    pv_put(state, mem, SH_EBASE, (state[BASE] & M32) - kbase)
    pv_put(state, mem, SH_EBOUND, state[BOUND])
    pv_put(state, mem, SH_CAUSE, cause)
    pv_put(state, mem, SH_BADADDR, info)
    pv_put(state, mem, SH_MASK, 1)
    state[PSW] = 0
    state[BASE] = kbase
    state[BOUND] = state[PV_KBOUND] & M32
    state[PC] = state[PV_ENTRY] & M32
    state[PV_KMODE] = 1
    if cause >= TIMER_IRQ:
        state[PV_NIRQS] += 1
    else:
        state[PV_NTRAPS] += 1


@_compiled
def _pv_iret(state, mem):
    """HC_IRET: psw, R (composed with the kernel's) and mask from the frame; returns the pc to go to."""
    epsw = pv_get(state, mem, SH_EPSW)
    ebase = pv_get(state, mem, SH_EBASE)
    ebound = pv_get(state, mem, SH_EBOUND)
    kbase = state[PV_KBASE] & M32
    kbound = state[PV_KBOUND] & M32
    if ebase < kbound:
        state[BASE] = (kbase + ebase) & M32
        state[BOUND] = min(ebound, kbound - ebase)
    else:
        state[BASE] = kbase
        state[BOUND] = 0
    state[PV_KMODE] = epsw & 1
    pv_put(state, mem, SH_MASK, 0 if epsw & 2 else 1)
    return pv_get(state, mem, SH_EPC)


@_compiled
def _fast_plain(state, mem, pc, r, stop, lim, base):
    """The fast loop (popek/cores/threaded.py) without binary-rewriting support."""
    return fast_loop(state, mem, pc, r, stop, lim, base, base, np.int64(0))


@_compiled
def _fast_rw(state, mem, pc, r, stop, lim, base, fbase, rwd):
    """The fast loop with binary-rewriting support: fetches at ``fbase + pc``, stores mark the shadow copy."""
    return fast_loop_rw(state, mem, pc, r, stop, lim, base, fbase, rwd)


@_compiled
def _profile_slot(w):
    """Decode the system instruction ``w``: the state slot of the profile key that decides it in user mode, or
    -1 when it is ILLEGAL (unknown opcode, stray bits, unknown control register) or has no profile key."""
    op = w >> 24
    key = PROFILE_KEY[op]
    if key < 0 or (w & MUST_BE_ZERO[op]) != 0:
        return -1
    if CR_OPERAND[op]:
        cr = w & 0xFFFF
        if cr >= NUM_CRS:
            return -1
        key += cr
    return PROFILE + key


@_compiled
def _rw_twin(state, w, cycle):
    """Binary-rewriting support: perform the twin ``w`` on the virtual CPU (reference.py, _rw_execute).

    ``cycle`` is the real cycle count before it.  Returns RW_RETIRE, RW_CALL_OUT, or the cause of the trap
    it raises (whose badaddr is the original word).
    """
    orig = w - (RW_TWIN << 24)
    oop = orig >> 24
    a = (orig >> 20) & 15
    imm = orig & 0xFFFF
    slot = _profile_slot(orig)  # the original must be a system instruction with a profile key
    if slot < 0:
        return ILLEGAL
    if not (state[VCR0 + CR_PSW] & 1):  # virtual user mode: the profile decides
        behaviour = state[slot]
        if behaviour == IGNORE:
            return RW_RETIRE
        if behaviour != EXECUTE:
            return PRIV
    if oop == OP_MFCR or oop == OP_GETPSW or oop == OP_GETBASE:  # read a virtual CR
        cr = imm if oop == OP_MFCR else (CR_PSW if oop == OP_GETPSW else CR_BASE)
        if cr == CR_CYCLE:
            v = (cycle + state[VCR0 + cr]) & M32
        elif cr == CR_TIMER:
            v = (state[VCR0 + cr] - cycle) & M32 if state[VCR0 + cr] != 0 else 0
        else:
            v = state[VCR0 + cr] & M32
        if a:
            state[a] = v
        return RW_RETIRE
    if oop == OP_MTCR or oop == OP_SETPSW:  # write a virtual CR, or leave it to the monitor
        cr = imm if oop == OP_MTCR else CR_PSW
        x = state[a]
        if cr == CR_PSW:
            x &= 3
            if ((x ^ state[VCR0 + CR_PSW]) & 1) != 0 or ((x & 2) != 0 and state[RW_VPEND] != 0):
                return RW_CALL_OUT
            state[VCR0 + CR_PSW] = x
        elif cr == CR_BASE or cr == CR_BOUND or cr == CR_TIMER:
            return RW_CALL_OUT
        elif cr != CR_CYCLE:
            state[VCR0 + cr] = x
        return RW_RETIRE
    return RW_CALL_OUT  # iret halt wfi in out


@_compiled
def _run(state, mem, budget, out, nout):
    """Run at most ``budget`` steps; return (exit code, console bytes in ``out``, ``nout`` of them before).

    ``out`` to the console port retires inside the call while ``out`` has room, its byte stored at
    ``out[nout]``; every other port, and console input, exits with EXIT_IO.
    """
    memsize = np.int64(mem.shape[0])
    lim_steps = min(max(np.int64(budget), 0), MAX_BUDGET)  # retirements the budget allows: budget - traps
    pc = state[PC] & M32
    base = state[BASE] & M32
    lim = min(state[BOUND] & M32, memsize - base)  # an access of n bytes at va is valid iff va + n <= lim
    cyc0 = state[CYCLE]
    tdead = state[TIMER]  # the value of r at which the timer reaches 0 (r starts at 0)
    tact = tdead != 0  # the timer is counting
    r = np.int64(0)  # instructions retired in this call
    traps = np.int64(0)  # traps and interrupts entered in this call (steps that do not retire)
    skip = np.int64(0)  # cycles skipped by wfi
    r_mark = np.int64(0)  # r at the last trap entry
    tc = np.int64(0)  # a trap to deliver: its cause (0 = none) ...
    ti = np.int64(0)  # ... and its badaddr
    w = np.int64(0)
    pv = pv_active(state, memsize)  # paravirtual support

    while True:
        # ---- between steps: deliver a trap, fire the timer, check the budget, take an interrupt ----
        if tc != 0:
            if pv and (state[PV_DIRECT] >> tc) & 1:  # paravirtual support: a trap gate into the guest kernel
                _pv_enter(state, mem, pc, tc, ti)
                pc = state[PC]
                base = state[BASE]
                lim = min(state[BOUND], memsize - base)
                traps += 1
                lim_steps -= 1
                r_mark = r
                tc = 0
                continue
            if state[FLAGS] & F_TRAPS_TO_HOST:
                state[XCAUSE] = tc
                state[XINFO] = ti & M32
                _leave(state, pc, r, r_mark, traps, skip, cyc0, tact, tdead)
                return EXIT_TRAP, nout
            state[EPC] = pc
            state[EPSW] = state[PSW]
            state[EBASE] = state[BASE]
            state[EBOUND] = state[BOUND]
            state[CAUSE] = tc
            state[BADADDR] = ti & M32
            state[PSW] = 1
            state[BASE] = 0
            state[BOUND] = memsize
            state[PC] = state[IVT]
            pc = state[IVT] & M32
            base = np.int64(0)
            lim = memsize
            traps += 1
            lim_steps -= 1
            r_mark = r
            tc = 0
        if tact and r == tdead:
            state[PENDING] |= 1
            tact = False
            if pv:  # paravirtual support
                pv_expired(state, mem)
        if r >= lim_steps:
            _leave(state, pc, r, r_mark, traps, skip, cyc0, tact, tdead)
            return EXIT_BUDGET, nout
        if state[PSW] & 2:
            pend = state[PENDING]
            if pend & 1:
                tc = TIMER_IRQ
                ti = 0
                continue
            if pend & 2:
                tc = DEVICE_IRQ
                ti = state[DEVNUM]
                continue
        stop = lim_steps
        if tact and tdead > r and tdead < stop:
            stop = tdead

        # binary-rewriting support: while active, stores leave markers and fetches may read the shadow copy
        rwd = state[RW_SHADOW]
        rwa = (state[FLAGS] & F_REWRITE) != 0 and rwd >= 4 and rwd <= base

        # ---- the fast loop ----
        if rwa:
            fbase = base - rwd if state[RW_FETCH] != 0 else base
            pc, r, tc, ti, w = _fast_rw(state, mem, pc, r, stop, lim, base, fbase, rwd)
        else:
            pc, r, tc, ti, w = _fast_plain(state, mem, pc, r, stop, lim, base)

        if tc < SYSTEM_MARK:
            continue  # a trap to deliver, or r reached stop (tc = 0)

        # ---- system instructions: w is the word at pc, already fetched ----
        tc = 0
        op = w >> 24
        a = (w >> 20) & 15
        npc = pc + 4
        if op >= RW_OP_XLATE:  # binary-rewriting support: a monitor-only word of the shadow copy
            if op == RW_OP_XLATE or op == RW_OP_CALLOUT:
                _leave(state, pc, r, r_mark, traps, skip, cyc0, tact, tdead)
                return (EXIT_XLATE if op == RW_OP_XLATE else EXIT_CALLOUT), nout
            what = _rw_twin(state, w, cyc0 + skip + r)
            if what == RW_RETIRE:
                pc = npc & M32
                r += 1
            elif what == RW_CALL_OUT:
                _leave(state, pc, r, r_mark, traps, skip, cyc0, tact, tdead)
                return EXIT_CALLOUT, nout
            else:
                tc = what
                ti = w - (RW_TWIN << 24)
            continue
        if op == OP_SYSCALL or op == OP_BRK:
            if w & MUST_BE_ZERO[op]:
                tc = ILLEGAL
                ti = w
            else:
                tc = SYSCALL if op == OP_SYSCALL else BREAK
                ti = w & 0xFFFF
            continue
        if op == OP_HCALL:
            stray = (w & MUST_BE_ZERO[op]) != 0
            n = w & 0xFFFF  # paravirtual support: a hypercall the processor performs itself
            if pv and not stray and n < HC_FAST_LIMIT and (state[PV_FAST] >> n) & 1 and state[PV_KMODE]:
                if n == HC_IRET:
                    npc = _pv_iret(state, mem)
                    base = state[BASE]
                    lim = min(state[BOUND], memsize - base)
                elif n == HC_SET_TIMER:  # as mtcr timer
                    state[PENDING] &= ~1
                    tact = state[1] != 0
                    tdead = r + 1 + state[1]
                    pv_put(state, mem, SH_PENDING, 0)
                pv_sync_ie(state, mem)
                state[PV_NCALLS + n] += 1
                pc = npc & M32
                r += 1
                continue
            if stray or not (state[FLAGS] & F_HCALL_TO_HOST):
                tc = ILLEGAL
                ti = w
                continue
            state[XCAUSE] = w & 0xFFFF
            _leave(state, pc, r, r_mark, traps, skip, cyc0, tact, tdead)
            return EXIT_HCALL, nout
        # Decode (unknown opcode, stray bits, unknown CR), then the profile decides what it does in user mode.
        slot = _profile_slot(w)
        if slot < 0:
            tc = ILLEGAL
            ti = w
            continue
        if not (state[PSW] & 1):
            behaviour = state[slot]
            if behaviour == IGNORE:  # retires with no other effect
                pc = npc & M32
                r += 1
                continue
            if behaviour != EXECUTE:
                tc = PRIV
                ti = w
                continue
        if op == OP_MFCR:
            cr = w & 0xFFFF
            if cr == CR_CYCLE:
                v = (cyc0 + skip + r) & M32
            elif cr == CR_TIMER:
                v = (tdead - r) & M32 if tact else 0
            else:
                v = state[CR0 + cr] & M32
            if a:
                state[a] = v
        elif op == OP_MTCR:
            cr = w & 0xFFFF
            x = state[a]
            if cr == CR_TIMER:  # not ticked by its own retirement; clears a pending timer interrupt
                state[PENDING] &= ~1
                tact = x != 0
                tdead = r + 1 + x
            elif cr == CR_PSW:
                state[PSW] = x & 3
            elif cr != CR_CYCLE:
                state[CR0 + cr] = x
                if cr == CR_BASE or cr == CR_BOUND:
                    base = state[BASE] & M32
                    lim = min(state[BOUND] & M32, memsize - base)
        elif op == OP_IRET:
            npc = state[EPC] & M32
            state[PSW] = state[EPSW] & 3
            state[BASE] = state[EBASE]
            state[BOUND] = state[EBOUND]
            base = state[BASE] & M32
            lim = min(state[BOUND] & M32, memsize - base)
        elif op == OP_HALT:  # retires, then leaves
            state[STATUS] = state[1] & 0xFF
            if pv and tact and r + 1 == tdead:  # paravirtual support: its retirement expires the timer
                pv_expired(state, mem)
            _leave(state, npc & M32, r + 1, r_mark, traps, skip, cyc0, tact, tdead)
            return EXIT_HALT, nout
        elif op == OP_WFI:
            if state[PENDING] == 0:
                if not tact or (state[FLAGS] & F_TRAPS_TO_HOST):
                    _leave(state, pc, r, r_mark, traps, skip, cyc0, tact, tdead)
                    return EXIT_IDLE, nout
                skip += tdead - r  # idle until the timer fires, then retire (one more tick)
                tact = False
                state[PENDING] |= 1
                if pv:  # paravirtual support
                    pv_expired(state, mem)
        elif op == OP_IN or op == OP_OUT:  # the host performs them and retires them
            state[IO_PORT] = w & 0xFFFF
            state[IO_WRITE] = 1 if op == OP_OUT else 0
            state[IO_VALUE] = state[a] if op == OP_OUT else 0
            state[IO_REG] = a if op == OP_IN else 0
            if op == OP_OUT and (w & 0xFFFF) == CONSOLE_PORT and nout < out.shape[0]:
                out[nout] = state[a] & 0xFF  # the console write the host would make; then it retires
                nout += 1
            else:
                _leave(state, pc, r, r_mark, traps, skip, cyc0, tact, tdead)
                return EXIT_IO, nout
        elif op == OP_GETPSW:
            if a:
                state[a] = state[PSW] & M32
        elif op == OP_SETPSW:
            state[PSW] = state[a] & 3
        else:  # getbase
            if a:
                state[a] = state[BASE] & M32
        pc = npc & M32  # retire
        r += 1


@_compiled
def run(state: np.ndarray, mem: np.ndarray, budget: int) -> int:
    """Run at most ``budget`` steps of the machine in ``state``/``mem``; return the exit code."""
    return _run(state, mem, budget, mem[0:0], np.int64(0))[0]  # no console buffer: every out exits


@_compiled
def run_console(state: np.ndarray, mem: np.ndarray, budget: int, out: np.ndarray) -> tuple[int, int]:
    """``run``, console output into ``out`` while it has room; return (exit code, bytes written there)."""
    return _run(state, mem, budget, out, np.int64(0))


DEPENDENCIES = (threaded, spec, S, gen_tables)  # the modules whose code or constants are compiled in here
numba_cache.drop_stale_cache(_COMPILED, DEPENDENCIES, "jit")


def warmup() -> float:
    """Compile (or load from the cache) the core for the usual argument types; return the seconds it took."""
    t0 = time.perf_counter()
    state = S.new_state(16)
    mem = np.zeros(16, dtype=np.uint8)
    mem[0:4] = np.frombuffer(spec.encode(spec.BY_MNEMONIC["halt"]).to_bytes(4, "little"), np.uint8)
    run(state, mem, 1)
    return time.perf_counter() - t0
