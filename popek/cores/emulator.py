"""The emulator: a compiled software interpreter of a whole P32 machine, the one full emulation runs guests on.

It is deliberately the plain decode-and-dispatch interpreter a Bochs-style monitor is, not the JIT core's
threaded fast loop: every step looks for an interrupt, fetches the word through the relocation checks, decodes
its fields, dispatches on the opcode (one ``switch``), executes, and retires, ticking the timer.  Nothing is
decoded ahead or remembered between steps, and time is counted instruction by instruction, so its cost per
guest instruction is the honest cost of interpretation (docs/monitors.md measures it).

``run(state, mem, budget) -> exit code`` is the core contract and leaves ``state`` and ``mem`` bit for bit as
``reference.run`` does, for any budget and any split of a run into several calls, ``until_user`` included.
``emulate`` adds what a monitor needs: ``out`` to the console port is performed inside the compiled loop, its
bytes going into a caller's buffer (the caller appends them to the console after the call), so a guest that
prints does not return to Python per byte; every other port, and console input, still exits with EXIT_IO.

The virtual CPU of a VM is a plain machine.  The host flags of the base contract (F_TRAPS_TO_HOST,
F_HCALL_TO_HOST) cost nothing on the hot path and are handled here; with the binary-rewriting or paravirtual
support switched on (F_REWRITE, F_PV) the call runs on the reference core instead, which specifies them.

System instructions are decoded through the per-opcode tables that ``popek/cores/c/gen_tables.py`` derives from
the instruction table (``spec.INSNS``), as the other compiled cores do.  The compiled code is cached on disk
(``popek/cores/numba_cache.py``) and dropped when a file compiled into it changes (``DEPENDENCIES``).
"""

from __future__ import annotations

import time

import numpy as np

from popek.cores import numba_cache, reference
from popek.cores.c import gen_tables
from popek.isa import spec
from popek.isa import state as S

# Everything below is a module-level int or array, which Numba freezes into the compiled code as a constant.
M32 = S.MASK32
PC, CR0, PSW, EPC, EPSW, CAUSE, BADADDR = S.PC, S.CR0, S.PSW, S.EPC, S.EPSW, S.CAUSE, S.BADADDR
IVT, BASE, BOUND, EBASE, EBOUND, TIMER, CYCLE = S.IVT, S.BASE, S.BOUND, S.EBASE, S.EBOUND, S.TIMER, S.CYCLE
PENDING, DEVNUM, FLAGS, XCAUSE, XINFO = S.PENDING, S.DEVNUM, S.FLAGS, S.XCAUSE, S.XINFO
IO_PORT, IO_WRITE, IO_VALUE, IO_REG = S.IO_PORT, S.IO_WRITE, S.IO_VALUE, S.IO_REG
STEPS, STATUS, PROFILE, PEND_TIMER, PEND_DEVICE = S.STEPS, S.STATUS, S.PROFILE, S.PEND_TIMER, S.PEND_DEVICE
F_TRAPS_TO_HOST, F_HCALL_TO_HOST = S.F_TRAPS_TO_HOST, S.F_HCALL_TO_HOST
EXIT_HALT, EXIT_BUDGET, EXIT_TRAP, EXIT_IO = S.EXIT_HALT, S.EXIT_BUDGET, S.EXIT_TRAP, S.EXIT_IO
EXIT_HCALL, EXIT_IDLE = S.EXIT_HCALL, S.EXIT_IDLE
PSW_S, PSW_IE, NUM_CRS = spec.PSW_S, spec.PSW_IE, spec.NUM_CRS
CR_PSW, CR_TIMER, CR_CYCLE = spec.CR_PSW, spec.CR_TIMER, spec.CR_CYCLE
SYSCALL, PRIV, ILLEGAL, BREAK = spec.SYSCALL, spec.PRIV, spec.ILLEGAL, spec.BREAK
MEM_FAULT, ALIGN, DIVZERO = spec.MEM_FAULT, spec.ALIGN, spec.DIVZERO
TIMER_IRQ, DEVICE_IRQ = spec.TIMER_IRQ, spec.DEVICE_IRQ
EXECUTE, IGNORE, CONSOLE_PORT = spec.EXECUTE, spec.IGNORE, spec.CONSOLE_PORT
NO_EXIT = -1  # an instruction that retires rather than leaving the loop


def _ops(mnemonics: str) -> tuple[int, ...]:
    return tuple(spec.BY_MNEMONIC[m].opcode for m in mnemonics.split())


OP_ADD, OP_SUB, OP_AND, OP_OR, OP_XOR, OP_SHL, OP_SHR, OP_SAR = _ops("add sub and or xor shl shr sar")
OP_MUL, OP_DIV, OP_DIVU, OP_REM, OP_REMU, OP_SLT, OP_SLTU = _ops("mul div divu rem remu slt sltu")
OP_LUI, OP_ADDI, OP_ANDI, OP_ORI, OP_XORI, OP_SHLI, OP_SHRI, OP_SARI = _ops("lui addi andi ori xori shli shri sari")
OP_SLTI, OP_SLTIU, OP_LD, OP_LDB, OP_LDBU, OP_ST, OP_STB = _ops("slti sltiu ld ldb ldbu st stb")
OP_BEQ, OP_BNE, OP_BLT, OP_BGE, OP_BLTU, OP_BGEU, OP_JAL, OP_JALR = _ops("beq bne blt bge bltu bgeu jal jalr")
OP_SYSCALL, OP_BRK, OP_HCALL, OP_IRET, OP_HALT, OP_WFI = _ops("syscall brk hcall iret halt wfi")
OP_MFCR, OP_MTCR, OP_IN, OP_OUT, OP_GETPSW, OP_SETPSW, OP_GETBASE = _ops("mfcr mtcr in out getpsw setpsw getbase")
assert {v for k, v in globals().items() if k.startswith("OP_")} == set(spec.BY_OPCODE), (
    "every instruction of spec.INSNS needs a case in interpret"
)

_TABLES = gen_tables.opcode_tables()
MUST_BE_ZERO = np.array(_TABLES["must_be_zero"], dtype=np.int64)  # stray bits: ILLEGAL
PROFILE_KEY = np.array(_TABLES["profile_key"], dtype=np.int64)  # the profile key deciding it in user mode, or -1
CR_OPERAND = np.array(_TABLES["cr_operand"], dtype=np.int64)  # the immediate names a CR (add it to the key)

_COMPILED: list = []  # every function compiled here, for numba_cache.drop_stale_cache


def _compiled(fn):
    return numba_cache.cached_njit(fn, _COMPILED)


@_compiled
def _signed(x):
    """A 32-bit value as a signed number."""
    return (x ^ 0x80000000) - 0x80000000


@_compiled
def _load(mem, pa, n):
    """The little-endian value of ``n`` (1 or 4) bytes at physical address ``pa``."""
    if n == 1:
        return np.int64(mem[pa])
    return np.int64(mem[pa]) | np.int64(mem[pa + 1]) << 8 | np.int64(mem[pa + 2]) << 16 | np.int64(mem[pa + 3]) << 24


@_compiled
def _store(mem, pa, n, value):
    """Write the low ``n`` (1 or 4) bytes of ``value`` at physical address ``pa``, little-endian."""
    for i in range(n):
        mem[pa + i] = (value >> (8 * i)) & 0xFF


@_compiled
def _fault(va, n, base, bound, memsize):
    """The trap an access of ``n`` bytes at ``va`` raises (ISA §2: ALIGN, then MEM), or 0 when it is allowed."""
    if n == 4 and va & 3:
        return ALIGN
    if va + n > bound or base + va + n > memsize:
        return MEM_FAULT
    return 0


@_compiled
def enter_vector(state: np.ndarray, memsize: int, cause: int, info: int, epc: int) -> None:
    """Take a trap into the guest's vector (ISA §4, ``state.enter_trap``); callable from compiled code."""
    state[EPC] = epc & M32
    state[EPSW] = state[PSW]
    state[EBASE] = state[BASE]
    state[EBOUND] = state[BOUND]
    state[CAUSE] = cause
    state[BADADDR] = info & M32
    state[PSW] = PSW_S
    state[BASE] = 0
    state[BOUND] = memsize
    state[PC] = state[IVT]


@_compiled
def interpret(state: np.ndarray, mem: np.ndarray, budget: int, until_user: bool, out: np.ndarray) -> tuple[int, int]:
    """Run at most ``budget`` steps; return (exit code, console bytes written into ``out``). Callable from
    compiled code (the VM-exit loop, popek/cores/vmexit.py); from Python, ``emulate`` is the entry."""
    memsize = np.int64(mem.shape[0])
    room = np.int64(out.shape[0])
    nout = np.int64(0)
    left = max(np.int64(budget), np.int64(0))
    # The counters the interpreter touches at every step live in locals and go back into state on the way out.
    pc = state[PC]
    cycle = state[CYCLE]
    steps = state[STEPS]
    timer = state[TIMER]
    code = EXIT_BUDGET
    while left > 0:
        psw = state[PSW]
        if until_user and not (psw & PSW_S):
            break
        left -= 1
        cause = np.int64(0)  # a trap or interrupt to take at pc (0: none) ...
        info = np.int64(0)  # ... and its badaddr
        exit_code = NO_EXIT
        npc = pc + 4
        tick = True
        pending = state[PENDING]
        if psw & PSW_IE and pending & (PEND_TIMER | PEND_DEVICE):  # interrupts, between instructions
            if pending & PEND_TIMER:
                cause = TIMER_IRQ
            else:
                cause = DEVICE_IRQ
                info = state[DEVNUM]
        else:
            # ---- fetch ----
            base = state[BASE] & M32
            bound = state[BOUND] & M32
            va = pc & M32
            cause = _fault(va, 4, base, bound, memsize)
            if cause != 0:
                info = va
            else:
                w = _load(mem, base + va, 4)
                # ---- decode: stray bits and unknown CRs first, then the profile in user mode ----
                op = w >> 24
                a = (w >> 20) & 15
                b = (w >> 16) & 15
                c = (w >> 12) & 15
                imm = w & 0xFFFF
                simm = imm - ((imm & 0x8000) << 1)
                behaviour = EXECUTE
                if w & MUST_BE_ZERO[op] or (CR_OPERAND[op] != 0 and imm >= NUM_CRS):
                    cause = ILLEGAL
                    info = w
                elif PROFILE_KEY[op] >= 0 and not (psw & PSW_S):
                    behaviour = state[PROFILE + PROFILE_KEY[op] + (imm if CR_OPERAND[op] != 0 else 0)]
                    if behaviour != EXECUTE and behaviour != IGNORE:
                        cause = PRIV
                        info = w
                if cause == 0 and behaviour == EXECUTE:
                    # ---- dispatch and execute ----
                    x = state[b]
                    v = np.int64(0)  # the value for rd ...
                    wr = False  # ... when the instruction writes one
                    if op == OP_ADD:
                        v = x + state[c]
                        wr = True
                    elif op == OP_SUB:
                        v = x - state[c]
                        wr = True
                    elif op == OP_AND:
                        v = x & state[c]
                        wr = True
                    elif op == OP_OR:
                        v = x | state[c]
                        wr = True
                    elif op == OP_XOR:
                        v = x ^ state[c]
                        wr = True
                    elif op == OP_SHL:
                        v = x << (state[c] & 31)
                        wr = True
                    elif op == OP_SHR:
                        v = x >> (state[c] & 31)
                        wr = True
                    elif op == OP_SAR:
                        v = _signed(x) >> (state[c] & 31)
                        wr = True
                    elif op == OP_MUL:
                        v = x * state[c]  # int64 wraps: the low 32 bits are exact
                        wr = True
                    elif op == OP_DIV or op == OP_DIVU or op == OP_REM or op == OP_REMU:
                        # Registers hold 32-bit values; reducing the operands anyway keeps any state, however
                        # corrupt, from dividing INT64_MIN by -1, which would stop the process.
                        x &= M32
                        y = state[c] & M32
                        if y == 0:
                            cause = DIVZERO
                        elif op == OP_DIVU:
                            v = x // y
                            wr = True
                        elif op == OP_REMU:
                            v = x % y
                            wr = True
                        else:  # signed, truncating toward zero (INT_MIN / -1 wraps to INT_MIN when masked)
                            sx = _signed(x)
                            sy = _signed(y)
                            q = abs(sx) // abs(sy)
                            if (sx < 0) != (sy < 0):
                                q = -q
                            v = q if op == OP_DIV else sx - q * sy
                            wr = True
                    elif op == OP_SLT:
                        v = 1 if _signed(x) < _signed(state[c]) else 0
                        wr = True
                    elif op == OP_SLTU:
                        v = 1 if x < state[c] else 0
                        wr = True
                    elif op == OP_LUI:
                        v = imm << 16
                        wr = True
                    elif op == OP_ADDI:
                        v = x + simm
                        wr = True
                    elif op == OP_ANDI:
                        v = x & imm
                        wr = True
                    elif op == OP_ORI:
                        v = x | imm
                        wr = True
                    elif op == OP_XORI:
                        v = x ^ imm
                        wr = True
                    elif op == OP_SHLI:
                        v = x << (imm & 31)
                        wr = True
                    elif op == OP_SHRI:
                        v = x >> (imm & 31)
                        wr = True
                    elif op == OP_SARI:
                        v = _signed(x) >> (imm & 31)
                        wr = True
                    elif op == OP_SLTI:
                        v = 1 if _signed(x) < simm else 0
                        wr = True
                    elif op == OP_SLTIU:
                        v = 1 if x < (simm & M32) else 0
                        wr = True
                    elif op == OP_LD or op == OP_LDB or op == OP_LDBU or op == OP_ST or op == OP_STB:
                        ea = (x + simm) & M32
                        n = 4 if op == OP_LD or op == OP_ST else 1
                        cause = _fault(ea, n, base, bound, memsize)
                        if cause != 0:
                            info = ea
                        elif op == OP_ST or op == OP_STB:
                            _store(mem, base + ea, n, state[a])
                        else:
                            v = _load(mem, base + ea, n)
                            if op == OP_LDB:
                                v = (v ^ 0x80) - 0x80
                            wr = True
                    elif op == OP_BEQ:
                        if state[a] == x:
                            npc = pc + 4 * simm
                    elif op == OP_BNE:
                        if state[a] != x:
                            npc = pc + 4 * simm
                    elif op == OP_BLT:
                        if _signed(state[a]) < _signed(x):
                            npc = pc + 4 * simm
                    elif op == OP_BGE:
                        if _signed(state[a]) >= _signed(x):
                            npc = pc + 4 * simm
                    elif op == OP_BLTU:
                        if state[a] < x:
                            npc = pc + 4 * simm
                    elif op == OP_BGEU:
                        if state[a] >= x:
                            npc = pc + 4 * simm
                    elif op == OP_JAL:
                        off = w & 0xFFFFF
                        npc = pc + 4 * (off - ((off & 0x80000) << 1))
                        v = pc + 4
                        wr = True
                    elif op == OP_JALR:
                        npc = x + simm  # the target is taken before rd is written (jalr r1, 0(r1))
                        v = pc + 4
                        wr = True
                    elif op == OP_SYSCALL:
                        cause = SYSCALL
                        info = imm
                    elif op == OP_BRK:
                        cause = BREAK
                        info = imm
                    elif op == OP_HCALL:
                        if state[FLAGS] & F_HCALL_TO_HOST:
                            state[XCAUSE] = imm
                            exit_code = EXIT_HCALL
                        else:
                            cause = ILLEGAL
                            info = w
                    elif op == OP_IRET:
                        npc = state[EPC] & M32
                        state[PSW] = state[EPSW] & 3
                        state[BASE] = state[EBASE]
                        state[BOUND] = state[EBOUND]
                    elif op == OP_HALT:  # retires, then leaves
                        state[STATUS] = state[1] & 0xFF
                        exit_code = EXIT_HALT
                    elif op == OP_WFI:
                        if state[PENDING] == 0:
                            if timer == 0 or state[FLAGS] & F_TRAPS_TO_HOST:
                                exit_code = EXIT_IDLE
                            else:  # idle until the timer fires, then retire (one more tick)
                                cycle += timer
                                timer = 0
                                state[PENDING] |= PEND_TIMER
                    elif op == OP_MFCR:
                        if imm == CR_CYCLE:
                            v = cycle & M32
                        elif imm == CR_TIMER:
                            v = timer & M32
                        else:
                            v = state[CR0 + imm] & M32
                        wr = True
                    elif op == OP_MTCR:
                        y = state[a]
                        if imm == CR_TIMER:  # clears a pending timer interrupt; not ticked by its own retirement
                            state[PENDING] &= ~PEND_TIMER
                            timer = y
                            tick = False
                        elif imm == CR_PSW:
                            state[PSW] = y & 3
                        elif imm != CR_CYCLE:
                            state[CR0 + imm] = y
                    elif op == OP_IN or op == OP_OUT:
                        state[IO_PORT] = imm
                        state[IO_WRITE] = 1 if op == OP_OUT else 0
                        state[IO_VALUE] = state[a] if op == OP_OUT else 0
                        state[IO_REG] = a if op == OP_IN else 0
                        if op == OP_OUT and imm == CONSOLE_PORT and nout < room:
                            out[nout] = state[a] & 0xFF  # the console write the host would make; then it retires
                            nout += 1
                        else:
                            exit_code = EXIT_IO
                    elif op == OP_GETPSW:
                        v = state[PSW] & M32
                        wr = True
                    elif op == OP_SETPSW:
                        state[PSW] = state[a] & 3
                    elif op == OP_GETBASE:
                        v = state[BASE] & M32
                        wr = True
                    else:
                        cause = ILLEGAL
                        info = w
                    if wr and a != 0:
                        state[a] = v & M32
        if cause != 0:  # take the trap or interrupt: into the guest's vector, or out to the host
            if state[FLAGS] & F_TRAPS_TO_HOST:
                state[XCAUSE] = cause
                state[XINFO] = info & M32
                code = EXIT_TRAP
                break
            enter_vector(state, memsize, cause, info, pc)
            pc = state[IVT]
            steps += 1
            continue
        if exit_code != NO_EXIT and exit_code != EXIT_HALT:
            code = exit_code  # the host completes it: pc stays at the instruction
            break
        # ---- retire ----
        pc = npc & M32
        cycle += 1
        steps += 1
        if tick and timer != 0:
            timer -= 1
            if timer == 0:
                state[PENDING] |= PEND_TIMER
        if exit_code == EXIT_HALT:
            code = EXIT_HALT
            break
    state[PC] = pc
    state[CYCLE] = cycle
    state[STEPS] = steps
    state[TIMER] = timer
    return code, nout


DEPENDENCIES = (spec, S, gen_tables)  # the modules whose constants are compiled in here
numba_cache.drop_stale_cache(_COMPILED, DEPENDENCIES, "emulator")

_EXTENSIONS = S.F_REWRITE | S.F_PV  # processor support the reference core specifies and this one leaves to it
_NO_CONSOLE = np.zeros(0, dtype=np.uint8)  # no room for console output: every out exits with EXIT_IO


def emulate(state: np.ndarray, mem: np.ndarray, budget: int, until_user: bool, console: np.ndarray) -> tuple[int, int]:
    """Run at most ``budget`` steps, console output into ``console``; return (exit code, bytes written there).

    ``out`` to the console port retires inside the call while ``console`` has room (as the host's EXIT_IO
    handling would have retired it); with ``until_user`` the run stops (EXIT_BUDGET) before a step in user mode.
    """
    if state[FLAGS] & _EXTENSIONS:
        return reference.run(state, mem, budget, until_user), 0
    code, n = interpret(state, mem, int(budget), bool(until_user), console)
    return int(code), int(n)


def run(state: np.ndarray, mem: np.ndarray, budget: int, until_user: bool = False) -> int:
    """Run at most ``budget`` steps of the machine in ``state``/``mem``; return the exit code (the core contract)."""
    return emulate(state, mem, budget, until_user, _NO_CONSOLE)[0]


def warmup() -> float:
    """Compile (or load from the cache) the emulator for the usual argument types; return the seconds it took."""
    t0 = time.perf_counter()
    run(S.new_state(16), np.zeros(16, dtype=np.uint8), 1)  # one call compiles the loop and all it calls
    return time.perf_counter() - t0
