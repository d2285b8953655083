"""The reference core: P32 in plain Python, written for clarity. It is the executable specification.

Every other core must leave ``state`` and ``mem`` exactly as this one does (docs/isa.md states the rules).
Each instruction is one small semantics function registered against its mnemonic in the table.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from popek.isa import spec
from popek.isa import state as S
from popek.isa.spec import CR_NAMES, EXECUTE, IGNORE, PROFILE_INDEX, PSW_IE, PSW_S, decode, sext

M32 = S.MASK32


class Trap(Exception):
    """Raised inside one step to abandon the instruction and take a trap (precise: nothing was changed)."""

    def __init__(self, cause: int, info: int) -> None:
        self.cause, self.info = cause, info & M32


class HostExit(Exception):
    """Raised inside one step when the instruction must be completed by the host."""

    def __init__(self, code: int) -> None:
        self.code = code


class Cpu:
    """The machine being interpreted: the state as a Python list while it runs, memory, and helpers.

    ``pull`` copies the flat state into a list (Python ints are far cheaper to touch than numpy scalars) and
    ``push`` writes it back; ``run`` and ``step`` do both around their work.
    """

    def __init__(self, state: np.ndarray, mem: np.ndarray) -> None:
        self.state, self.mem, self.memsize = state, mem, len(mem)
        self.mv = memoryview(mem).cast("B")
        self.s: list[int] = []
        self.next_pc = 0
        self.word = 0  # the instruction word being executed
        self.tick_timer = True

    def pull(self) -> None:
        """Load the flat state into ``self.s``."""
        self.s = self.state.tolist()

    def push(self) -> None:
        """Write ``self.s`` back into the flat state (only the architectural slots, unless a host flag's
        support may have written its own slots: converting the whole list costs more than a step)."""
        if self.s[S.FLAGS] & (S.F_REWRITE | S.F_PV):
            self.state[:] = self.s
        else:
            self.state[:_WRITTEN] = self.s[:_WRITTEN]

    def reg(self, n: int) -> int:
        return self.s[n]

    def set_reg(self, n: int, value: int) -> None:
        if n:
            self.s[n] = value & M32

    def cr(self, n: int) -> int:
        return self.s[S.CR0 + n] & M32

    def translate(self, va: int, n: int) -> int:
        """Relocate a virtual address (ISA §2); raise ALIGN or MEM."""
        va &= M32
        if n == 4 and va % 4:
            raise Trap(spec.ALIGN, va)
        base = self.s[S.BASE] & M32
        if va + n > self.s[S.BOUND] & M32 or base + va + n > self.memsize:
            raise Trap(spec.MEM_FAULT, va)
        return base + va

    def load(self, va: int, n: int) -> int:
        pa = self.translate(va, n)
        return int.from_bytes(self.mv[pa : pa + n], "little")

    def store(self, va: int, n: int, value: int) -> None:
        pa = self.translate(va, n)
        self.mv[pa : pa + n] = (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little")
        if self.s[S.FLAGS] & S.F_REWRITE:  # binary-rewriting support: the shadow of these words is stale
            _rw_mark(self, pa, n)


cached_decode = lru_cache(maxsize=1 << 16)(decode)  # decoding is pure: remember the words seen
_WRITTEN = S.STATUS + 1  # without F_REWRITE or F_PV a step writes no slot past STATUS

Semantics = Callable[[Cpu, spec.Decoded, int], None]
SEMANTICS: dict[str, Semantics] = {}


def semantics(*mnemonics: str) -> Callable[[Semantics], Semantics]:
    """Register one function as the meaning of the given mnemonics."""

    def register(fn: Semantics) -> Semantics:
        for m in mnemonics:
            SEMANTICS[m] = fn
        return fn

    return register


def _signed(x: int) -> int:
    return x - (1 << 32) if x & 0x80000000 else x


def _div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


_ALU: dict[str, Callable[[int, int], int]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "and": lambda a, b: a & b,
    "or": lambda a, b: a | b,
    "xor": lambda a, b: a ^ b,
    "shl": lambda a, b: a << (b & 31),
    "shr": lambda a, b: a >> (b & 31),
    "sar": lambda a, b: _signed(a) >> (b & 31),
    "mul": lambda a, b: a * b,
    "div": lambda a, b: _div(_signed(a), _signed(b)),
    "divu": lambda a, b: a // b,
    "rem": lambda a, b: _signed(a) - _div(_signed(a), _signed(b)) * _signed(b),
    "remu": lambda a, b: a % b,
    "slt": lambda a, b: int(_signed(a) < _signed(b)),
    "sltu": lambda a, b: int(a < b),
}
_IMM_ALU = {"addi": ("add", True), "andi": ("and", False), "ori": ("or", False), "xori": ("xor", False),
            "shli": ("shl", False), "shri": ("shr", False), "sari": ("sar", False), "slti": ("slt", True),
            "sltiu": ("sltu", True)}  # fmt: skip
_BRANCH: dict[str, Callable[[int, int], bool]] = {
    "beq": lambda a, b: a == b,
    "bne": lambda a, b: a != b,
    "blt": lambda a, b: _signed(a) < _signed(b),
    "bge": lambda a, b: _signed(a) >= _signed(b),
    "bltu": lambda a, b: a < b,
    "bgeu": lambda a, b: a >= b,
}


@semantics(*_ALU)
def _alu(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    b = cpu.reg(d.c)
    if d.insn.mnemonic in ("div", "divu", "rem", "remu") and b == 0:
        raise Trap(spec.DIVZERO, 0)
    cpu.set_reg(d.a, _ALU[d.insn.mnemonic](cpu.reg(d.b), b))


@semantics(*_IMM_ALU)
def _alu_imm(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    op, signed = _IMM_ALU[d.insn.mnemonic]
    imm = sext(d.imm, 16) & M32 if signed else d.imm
    cpu.set_reg(d.a, _ALU[op](cpu.reg(d.b), imm))


@semantics("lui")
def _lui(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    cpu.set_reg(d.a, d.imm << 16)


@semantics("ld", "ldb", "ldbu")
def _load(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    va = cpu.reg(d.b) + sext(d.imm, 16)
    if d.insn.mnemonic == "ld":
        cpu.set_reg(d.a, cpu.load(va, 4))
    else:
        byte = cpu.load(va, 1)
        cpu.set_reg(d.a, sext(byte, 8) if d.insn.mnemonic == "ldb" else byte)


@semantics("st", "stb")
def _store(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    cpu.store(cpu.reg(d.b) + sext(d.imm, 16), 4 if d.insn.mnemonic == "st" else 1, cpu.reg(d.a))


@semantics(*_BRANCH)
def _branch(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    if _BRANCH[d.insn.mnemonic](cpu.reg(d.a), cpu.reg(d.b)):
        cpu.next_pc = pc + 4 * sext(d.imm, 16)


@semantics("jal")
def _jal(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    cpu.set_reg(d.a, pc + 4)
    cpu.next_pc = pc + 4 * sext(d.imm, 20)


@semantics("jalr")
def _jalr(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    cpu.next_pc = cpu.reg(d.b) + sext(d.imm, 16)
    cpu.set_reg(d.a, pc + 4)


@semantics("syscall")
def _syscall(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    raise Trap(spec.SYSCALL, d.imm)


@semantics("brk")
def _brk(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    raise Trap(spec.BREAK, d.imm)


@semantics("hcall")
def _hcall(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    if _pv_hcall(cpu, d.imm):  # paravirtual support: a hypercall the processor performs itself
        return
    if not cpu.s[S.FLAGS] & S.F_HCALL_TO_HOST:
        raise Trap(spec.ILLEGAL, cpu.word)
    cpu.s[S.XCAUSE] = d.imm
    raise HostExit(S.EXIT_HCALL)


@semantics("iret")
def _iret(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    s = cpu.s
    cpu.next_pc = cpu.cr(spec.CR_EPC)
    s[S.PSW], s[S.BASE], s[S.BOUND] = s[S.EPSW] & 3, s[S.EBASE], s[S.EBOUND]


@semantics("halt")
def _halt(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    cpu.s[S.STATUS] = cpu.reg(1) & 0xFF
    raise HostExit(S.EXIT_HALT)  # retired by the step loop before it exits


@semantics("wfi")
def _wfi(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    s = cpu.s
    if s[S.PENDING]:
        return
    if s[S.TIMER] == 0 or s[S.FLAGS] & S.F_TRAPS_TO_HOST:
        raise HostExit(S.EXIT_IDLE)
    s[S.CYCLE] += s[S.TIMER]  # idle until the timer fires, then retire (one more tick)
    s[S.TIMER] = 0
    s[S.PENDING] |= S.PEND_TIMER
    _pv_timer_expired(cpu)  # paravirtual support


@semantics("mfcr")
def _mfcr(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    cpu.set_reg(d.a, cpu.cr(d.imm))


@semantics("mtcr")
def _mtcr(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    value = cpu.reg(d.a)
    if d.imm == spec.CR_CYCLE:
        return
    if d.imm == spec.CR_PSW:
        value &= 3
    elif d.imm == spec.CR_TIMER:
        cpu.s[S.PENDING] &= ~S.PEND_TIMER
        cpu.tick_timer = False
    cpu.s[S.CR0 + d.imm] = value


@semantics("in", "out")
def _io(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    s = cpu.s
    s[S.IO_PORT], s[S.IO_WRITE] = d.imm, int(d.insn.mnemonic == "out")
    s[S.IO_VALUE], s[S.IO_REG] = (cpu.reg(d.a), 0) if d.insn.mnemonic == "out" else (0, d.a)
    raise HostExit(S.EXIT_IO)


@semantics("getpsw")
def _getpsw(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    cpu.set_reg(d.a, cpu.cr(spec.CR_PSW))


@semantics("setpsw")
def _setpsw(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    cpu.s[S.PSW] = cpu.reg(d.a) & 3


@semantics("getbase")
def _getbase(cpu: Cpu, d: spec.Decoded, pc: int) -> None:
    cpu.set_reg(d.a, cpu.cr(spec.CR_BASE))


assert set(SEMANTICS) == set(spec.BY_MNEMONIC), "every instruction needs semantics"


def profile_key(d: spec.Decoded) -> str | None:
    """The profile key governing this decoded instruction in user mode (``mfcr.base``…), if any."""
    key = d.insn.profile_key
    if key in ("mfcr", "mtcr"):
        return f"{key}.{CR_NAMES[d.imm]}"
    return key


def _trap(s: np.ndarray, memsize: int, cause: int, info: int) -> int | None:
    """Deliver a trap at the current pc: to the host (an exit code) or into the guest (None)."""
    if s[S.FLAGS] & S.F_TRAPS_TO_HOST:
        s[S.XCAUSE], s[S.XINFO] = cause, info & M32
        return S.EXIT_TRAP
    S.enter_trap(s, memsize, cause, info, int(s[S.PC]))
    s[S.STEPS] += 1
    return None


def step(cpu: Cpu) -> int | None:
    """Run one step of the machine behind ``cpu``; return an exit code when the core must stop, else None."""
    cpu.pull()
    code = _step(cpu)
    cpu.push()
    return code


def _step(cpu: Cpu) -> int | None:
    s = cpu.s
    irq = S.pending_interrupt(s)
    if irq is not None:
        return _pv_trap(cpu, *irq)  # paravirtual support: _trap, or delivery into a PV guest kernel
    pc = int(s[S.PC])
    try:
        word = cpu.load(pc, 4)
        if s[S.FLAGS] & S.F_REWRITE and _rw_fetching(s):  # binary-rewriting support: run the shadow copy
            word = _rw_fetch(cpu, pc)
            if S.RW_OP_XLATE <= word >> 24 <= S.RW_OP_LAST:
                return _rw_execute(cpu, word, pc)
        d = cached_decode(word)
        if d is None:
            raise Trap(spec.ILLEGAL, word)
        cpu.word = word
        behaviour = EXECUTE
        key = profile_key(d)
        if key is not None and not s[S.PSW] & PSW_S:
            behaviour = int(s[S.PROFILE + PROFILE_INDEX[key]])
            if behaviour not in (EXECUTE, IGNORE):
                raise Trap(spec.PRIV, word)
        cpu.next_pc, cpu.tick_timer = pc + 4, True
        exit_code = None
        if behaviour == EXECUTE:
            try:
                SEMANTICS[d.insn.mnemonic](cpu, d, pc)
            except HostExit as e:
                if e.code != S.EXIT_HALT:
                    return e.code
                exit_code = e.code
    except Trap as t:
        return _pv_trap(cpu, t.cause, t.info)  # paravirtual support: _trap, or delivery into a PV guest kernel
    _retire(cpu)
    return exit_code


def _retire(cpu: Cpu) -> None:
    if S.retire(cpu.s, cpu.next_pc, cpu.tick_timer):
        _pv_timer_expired(cpu)  # paravirtual support


def run(state: np.ndarray, mem: np.ndarray, budget: int, until_user: bool = False) -> int:
    """Run at most ``budget`` steps of the machine in ``state``/``mem``; return the exit code.

    With ``until_user`` it also stops (EXIT_BUDGET) before the first step in user mode: the hybrid monitor
    interprets only what the guest runs in supervisor mode.
    """
    cpu = Cpu(state, mem)
    cpu.pull()
    s, code = cpu.s, S.EXIT_BUDGET
    for _ in range(max(0, int(budget))):
        if until_user and not s[S.PSW] & PSW_S:
            break
        code = _step(cpu)
        if code is not None:
            break
        code = S.EXIT_BUDGET
    cpu.push()
    return code


# --- binary-rewriting support ----------------------------------------------------------------------------
# A monitor keeps a rewritten *shadow copy* of guest code D = state[RW_SHADOW] bytes below it in memory
# (docs/isa.md, "Binary-rewriting support").  The support is active while F_REWRITE is set and
# 4 <= D <= base, which keeps every shadow access inside memory whatever the state holds.


def _rw_active(s: list[int]) -> bool:
    return bool(s[S.FLAGS] & S.F_REWRITE) and 4 <= s[S.RW_SHADOW] <= s[S.BASE] & M32


def _rw_fetching(s: list[int]) -> bool:
    return _rw_active(s) and s[S.RW_FETCH] != 0


_RW_MARK = (S.RW_OP_XLATE << 24).to_bytes(4, "little")


def _rw_mark(cpu: Cpu, pa: int, n: int) -> None:
    """A store wrote bytes pa..pa+n-1: leave the marker over the shadow words holding its first and last byte."""
    if _rw_active(cpu.s):
        d = cpu.s[S.RW_SHADOW]
        for m in {(pa - d) & ~3, (pa + n - 1 - d) & ~3}:
            cpu.mv[m : m + 4] = _RW_MARK


def _rw_vcr(s: list[int], cr: int) -> int:
    """A virtual control register as the twins read it (cycle and timer are kept relative to CYCLE)."""
    if cr == spec.CR_CYCLE:
        return (s[S.CYCLE] + s[S.VCR0 + cr]) & M32
    if cr == spec.CR_TIMER:
        return (s[S.VCR0 + cr] - s[S.CYCLE]) & M32 if s[S.VCR0 + cr] else 0
    return s[S.VCR0 + cr] & M32


def _rw_fetch(cpu: Cpu, pc: int) -> int:
    """The word at pc in the shadow copy (pc has passed the fetch checks)."""
    pa = cpu.translate(pc, 4) - cpu.s[S.RW_SHADOW]
    return int.from_bytes(cpu.mv[pa : pa + 4], "little")


def _rw_execute(cpu: Cpu, word: int, pc: int) -> int | None:
    """A monitor-only word fetched from the shadow copy (any other word there runs as usual).

    The marker exits with EXIT_XLATE and the callout with EXIT_CALLOUT, changing nothing.  A *twin* (opcode
    0xC2-0xDF) is the system instruction 0x80 opcodes below it, performed on the virtual control registers
    in the virtual mode (VCR psw): the profile decides in virtual user mode (a trap reports the original
    word); mfcr/getpsw/getbase read a virtual CR; mtcr/setpsw write one, except that base, bound and timer,
    a psw that changes the mode or enables IE while RW_VPEND is set, iret, halt, wfi, in and out exit with
    EXIT_CALLOUT for the monitor to perform.
    """
    s = cpu.s
    op = word >> 24
    if op == S.RW_OP_XLATE:
        return S.EXIT_XLATE
    if op == S.RW_OP_CALLOUT:
        return S.EXIT_CALLOUT
    orig = word - (S.RW_TWIN << 24)
    d = cached_decode(orig)
    if d is None or d.insn.profile_key is None:
        raise Trap(spec.ILLEGAL, orig)
    m = d.insn.mnemonic
    if not s[S.VCR0 + spec.CR_PSW] & PSW_S:  # virtual user mode
        behaviour = s[S.PROFILE + PROFILE_INDEX[profile_key(d)]]
        if behaviour not in (EXECUTE, IGNORE):
            raise Trap(spec.PRIV, orig)
        if behaviour == IGNORE:
            m = "ignored"
    if m in ("mfcr", "getpsw", "getbase"):
        cpu.set_reg(d.a, _rw_vcr(s, d.imm if m == "mfcr" else spec.CR_PSW if m == "getpsw" else spec.CR_BASE))
    elif m in ("mtcr", "setpsw"):
        cr, value = (d.imm if m == "mtcr" else spec.CR_PSW), cpu.reg(d.a)
        if cr == spec.CR_PSW:
            value &= 3
            if (value ^ s[S.VCR0]) & PSW_S or (value & PSW_IE and s[S.RW_VPEND]):
                return S.EXIT_CALLOUT
            s[S.VCR0] = value
        elif cr in (spec.CR_BASE, spec.CR_BOUND, spec.CR_TIMER):
            return S.EXIT_CALLOUT
        elif cr != spec.CR_CYCLE:
            s[S.VCR0 + cr] = value
    elif m != "ignored":  # iret halt wfi in out
        return S.EXIT_CALLOUT
    cpu.next_pc, cpu.tick_timer = pc + 4, True
    _retire(cpu)
    return None


# --- paravirtual support ---------------------------------------------------------------------------------
# With the host flag F_PV the processor helps a paravirtual guest the way x86 helped Xen's 32-bit guests
# (docs/paravirt.md).  The guest's kernel context and its user contexts all run in real user mode; the
# guest's trap state lives in a *shared area* of its memory (the SH_* words at host address PV_SHARED) that
# both sides read and write with plain accesses.  The processor
# - delivers a trap or interrupt whose cause has its bit in PV_DIRECT straight into the guest kernel (a
#   trap gate): it writes the frame (epc, epsw, ebase, ebound, cause, badaddr) to the shared area, masks
#   virtual interrupts, and enters the kernel context (R = PV_KBASE/PV_KBOUND, pc = PV_ENTRY, IE off);
# - performs the hypercalls HC_IRET, HC_SET_TIMER and HC_IRQ itself, from the kernel context, when their bit
#   is set in PV_FAST (as VMFUNC performs what the hypervisor enabled, without an exit);
# - keeps IE equal to "the mask word is 0" at the moments an interrupt could become deliverable: when the
#   timer expires (which also sets the shared pending word) and after every hypercall it performs.  A guest
#   that clears the mask with a plain store while an interrupt is pending makes a hypercall to have it
#   delivered (Xen's protocol).
# The support is active while F_PV is set and the shared area's core words fit in memory at an aligned
# address, so no state can make the processor touch anything outside memory.


def _pv_active(cpu: Cpu) -> bool:
    s = cpu.s
    sh = s[S.PV_SHARED]
    return bool(s[S.FLAGS] & S.F_PV) and sh >= 0 and sh % 4 == 0 and sh + S.SH_CORE_BYTES <= cpu.memsize


def _pv_get(cpu: Cpu, offset: int) -> int:
    pa = cpu.s[S.PV_SHARED] + offset
    return int.from_bytes(cpu.mv[pa : pa + 4], "little")


def _pv_put(cpu: Cpu, offset: int, value: int) -> None:
    pa = cpu.s[S.PV_SHARED] + offset
    cpu.mv[pa : pa + 4] = (value & M32).to_bytes(4, "little")


def _pv_sync_ie(cpu: Cpu) -> None:
    """IE <- the shared mask word is 0 (the guest's virtual interrupt flag)."""
    s = cpu.s
    s[S.PSW] = (s[S.PSW] & PSW_S) | (0 if _pv_get(cpu, S.SH_MASK) else PSW_IE)


def _pv_timer_expired(cpu: Cpu) -> None:
    """The timer just reached zero: tell the guest (shared pending word) and sample its mask."""
    if _pv_active(cpu):
        _pv_put(cpu, S.SH_PENDING, 1)
        _pv_sync_ie(cpu)


def _pv_trap(cpu: Cpu, cause: int, info: int) -> int | None:
    """Deliver a trap or interrupt at the current pc into a PV guest kernel if PV_DIRECT says so, else _trap."""
    s = cpu.s
    if not (_pv_active(cpu) and s[S.PV_DIRECT] >> cause & 1):
        return _trap(s, cpu.memsize, cause, info)
    kbase = s[S.PV_KBASE] & M32
    epsw = (PSW_S if s[S.PV_KMODE] else 0) | (0 if _pv_get(cpu, S.SH_MASK) else PSW_IE)
    frame = {S.SH_EPC: s[S.PC], S.SH_EPSW: epsw, S.SH_EBASE: (s[S.BASE] & M32) - kbase, S.SH_EBOUND: s[S.BOUND],
             S.SH_CAUSE: cause, S.SH_BADADDR: info, S.SH_MASK: 1}  # fmt: skip
    for offset, value in frame.items():
        _pv_put(cpu, offset, value)
    s[S.PSW], s[S.BASE], s[S.BOUND], s[S.PC] = 0, kbase, s[S.PV_KBOUND] & M32, s[S.PV_ENTRY] & M32
    s[S.PV_KMODE] = 1
    s[S.PV_NIRQS if cause >= spec.TIMER_IRQ else S.PV_NTRAPS] += 1
    s[S.STEPS] += 1
    return None


def _pv_hcall(cpu: Cpu, n: int) -> bool:
    """Perform hypercall n in the processor if PV_FAST enables it and the kernel context makes it."""
    s = cpu.s
    if not (n < S.HC_FAST_LIMIT and s[S.PV_FAST] >> n & 1 and s[S.PV_KMODE] and _pv_active(cpu)):
        return False
    if n == S.HC_IRET:  # return to the context in the frame: psw, R (composed with the kernel's), pc
        epsw, ebase, ebound = (_pv_get(cpu, o) for o in (S.SH_EPSW, S.SH_EBASE, S.SH_EBOUND))
        kbase, kbound = s[S.PV_KBASE] & M32, s[S.PV_KBOUND] & M32
        s[S.BASE], s[S.BOUND] = ((kbase + ebase) & M32, min(ebound, kbound - ebase)) if ebase < kbound else (kbase, 0)
        s[S.PV_KMODE] = epsw & PSW_S
        _pv_put(cpu, S.SH_MASK, 0 if epsw & PSW_IE else 1)
        cpu.next_pc = _pv_get(cpu, S.SH_EPC)
    elif n == S.HC_SET_TIMER:  # timer <- r1, as mtcr timer (clears a pending timer, not ticked by itself)
        s[S.TIMER] = s[1]
        s[S.PENDING] &= ~S.PEND_TIMER
        _pv_put(cpu, S.SH_PENDING, 0)
        cpu.tick_timer = False
    _pv_sync_ie(cpu)  # HC_IRQ does only this
    s[S.PV_NCALLS + n] += 1
    return True
