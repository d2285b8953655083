"""Reusable test material for the cores: programs assembled by popek.isa.asm, random machines.

Every core is held to the reference core by running the same machine (state + memory) on both and comparing
everything after every call.  The strategies here build such machines: random instruction streams (valid
instructions with biased fields, words with stray bits, arbitrary words), placed anywhere in memory, with a
random relocation window, trap vector, timer, pending interrupts, host flags and user-mode profile.
``host_action`` is what a host does between calls so that a differential run can go on after any exit.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from popek.cores import dbt
from popek.isa import spec
from popek.isa import state as S
from popek.isa.asm import assemble
from popek.isa.spec import BY_MNEMONIC, CR_NUMBER, INSNS, encode

M32 = 0xFFFFFFFF
CoreRun = Callable[[np.ndarray, np.ndarray, int], int]


# --- programs, assembled by popek.isa.asm ---------------------------------------------------------------


def asm(source: str, **defines: int) -> bytes:
    """Assemble ``source`` (indented freely) with popek.isa.asm; the image starts at address 0."""
    return assemble(textwrap.dedent(source), defines=defines).image


class Prog:
    """Build a program as assembly text, call by call: ``p.addi(1, 0, imm=5)``, ``p.label("top")``,
    ``p.bne(1, 0, imm="top")``; ``image()`` assembles it with popek.isa.asm.

    Operands are the encoding fields a, b, c (register operands take them in the order the syntax writes them)
    and imm: a label, or a number (a word offset for branches and ``jal``). Every instruction is one word and
    ``li`` two, so ``here`` is known as the program grows. The image starts at ``origin``.
    """

    def __init__(self, origin: int = 0) -> None:
        self.origin = origin
        self.lines: list[str] = []
        self.words = 0

    @property
    def here(self) -> int:
        """The address of the next word."""
        return self.origin + 4 * self.words

    def label(self, name: str) -> None:
        """Define ``name`` as the address of the next word."""
        self.lines.append(f"{name}:")

    def word(self, value: int) -> None:
        """Emit a raw 32-bit word."""
        self.lines.append(f".word {value & M32:#x}")
        self.words += 1

    def emit(self, mnemonic: str, a: int = 0, b: int = 0, c: int = 0, imm: int | str = 0) -> None:
        """Emit one instruction; a string ``imm`` is a label (a word offset for branches and jal)."""
        regs, ops = iter((a, b, c)), []
        for name in filter(None, BY_MNEMONIC[mnemonic].operands.split(",")):
            if name in ("rd", "rs", "rs1", "rs2"):
                ops.append(f"r{next(regs)}")
            elif name == "mem":
                ops.append(f"{imm}(r{next(regs)})")
            elif name in ("br", "j") and not isinstance(imm, str):
                ops.append(f". + {4 * imm}")
            else:
                ops.append(str(imm))
        self.lines.append(f"{mnemonic} {', '.join(ops)}")
        self.words += 1

    def li(self, rd: int, value: int) -> None:
        """Load a 32-bit constant with lui + ori."""
        self.emit("lui", rd, imm=(value >> 16) & 0xFFFF)
        self.emit("ori", rd, rd, imm=value & 0xFFFF)

    def __getattr__(self, mnemonic: str) -> Callable[..., None]:
        if mnemonic not in BY_MNEMONIC:
            raise AttributeError(mnemonic)
        return lambda *args, **kw: self.emit(mnemonic, *args, **kw)

    def image(self) -> bytes:
        """The assembled program as little-endian bytes, from ``origin`` on."""
        return assemble("\n".join([f".org {self.origin}", *self.lines])).image[self.origin :]


def sieve_program(n: int = 65536, reps: int = 1, flags: int = 0x10000) -> bytes:
    """A byte-array sieve of Eratosthenes over ``n`` entries at ``flags``, run ``reps`` times.

    It halts with ``r9`` = number of primes below ``n`` plus 2 (0 and 1 stay marked) and ``r1`` = its low
    byte (the exit status).  Memory must hold ``flags + n`` bytes.
    """
    return asm(
        """
                li      r10, REPS
        outer:  li      r2, FLAGS
                li      r4, N
                addi    r3, r0, 0
                addi    r5, r0, 1
        init:   add     r6, r2, r3          # flags[i] = 1 for every i
                stb     r5, 0(r6)
                addi    r3, r3, 1
                blt     r3, r4, init
                addi    r3, r0, 2
        loop_i: mul     r7, r3, r3
                bge     r7, r4, done_i
                add     r6, r2, r3
                ldbu    r8, 0(r6)
                beq     r8, r0, next_i
        loop_j: add     r6, r2, r7          # clear every multiple of i from i * i on
                stb     r0, 0(r6)
                add     r7, r7, r3
                blt     r7, r4, loop_j
        next_i: addi    r3, r3, 1
                jal     r0, loop_i
        done_i: addi    r3, r0, 0
                addi    r9, r0, 0
        count:  add     r6, r2, r3
                ldbu    r8, 0(r6)
                add     r9, r9, r8
                addi    r3, r3, 1
                blt     r3, r4, count
                addi    r10, r10, -1
                bne     r10, r0, outer
                andi    r1, r9, 0xFF
                halt
        """,
        N=n,
        REPS=reps,
        FLAGS=flags,
    )


def load(mem: np.ndarray, image: bytes, addr: int = 0) -> None:
    """Copy ``image`` into ``mem`` at physical address ``addr``."""
    mem[addr : addr + len(image)] = np.frombuffer(image, dtype=np.uint8)


# --- random instruction words ---------------------------------------------------------------------------

REGS = st.one_of(st.integers(0, 5), st.integers(0, 15))
SMALL_IMM = st.one_of(
    st.integers(-8, 8),
    st.sampled_from([0, 1, 4, 31, 32, 0x7FFF, 0x8000, 0xFFFC, 0xFFFF]),
    st.integers(0, 0xFFFF),
)
BRANCH_OFF = st.integers(0, 9).flatmap(
    lambda k: st.integers(-(1 << 15), (1 << 15) - 1) if k == 9 else st.integers(-6, 6)
)
JUMP_OFF = st.integers(0, 9).flatmap(lambda k: st.integers(-(1 << 19), (1 << 19) - 1) if k == 9 else st.integers(-6, 6))
CRS = st.one_of(
    st.sampled_from([CR_NUMBER[n] for n in ("timer", "cycle", "psw", "base", "bound")]),
    st.integers(0, spec.NUM_CRS - 1),
    st.integers(spec.NUM_CRS, 0xFFFF),
)

_PLAIN = [i for i in INSNS if i.klass != spec.SYSTEM]


@st.composite
def instruction_words(draw: st.DrawFn) -> int:
    """One instruction word: mostly a valid instruction with biased fields, sometimes anything at all."""
    kind = draw(st.integers(0, 19))  # (hypothesis shrinks toward 0: keep the simplest case a plain instruction)
    if kind == 19:
        return draw(st.integers(0, M32))  # any word at all
    if kind == 18:
        return draw(st.integers(0, 0x5F)) << 24 | draw(st.integers(0, 0xFFFFFF))  # any word near the table
    insn = draw(st.sampled_from(_PLAIN) if kind < 10 else st.sampled_from(INSNS))
    a, b, c = draw(REGS), draw(REGS), draw(REGS)
    if insn.klass == spec.BRANCH and insn.mnemonic != "jalr":
        imm = draw(JUMP_OFF if insn.fmt == spec.FMT_J else BRANCH_OFF)
    elif insn.mnemonic == "jalr":
        imm = draw(st.one_of(st.integers(0, 12).map(lambda x: 4 * x), SMALL_IMM))
    elif insn.operands in ("rd,cr", "cr,rs"):
        imm = draw(CRS)
    elif insn.operands in ("rd,port", "port,rs"):
        imm = draw(st.one_of(st.integers(0, 3), st.integers(0, 0xFFFF)))
    else:
        imm = draw(SMALL_IMM)
    word = encode(insn, a, b, c, imm)
    mask = spec.MUST_BE_ZERO.get(insn.operands, 0)  # setting any of these bits makes the word ILLEGAL
    if mask:
        word &= ~mask & M32  # keep the unused fields clear ...
        if draw(st.integers(0, 15)) == 0:
            word |= draw(st.integers(1, M32)) & mask  # ... except now and then (ILLEGAL, if non-zero)
    return word


# A handler at the trap vector so that random programs go on after traps instead of wandering into the
# vector's code: a trap skips the trapping instruction, a fault on the fetch itself (badaddr = epc) restarts
# the program at pc 0, a timer interrupt writes timer = r12 (0 stops it, else it re-arms; with
# ``rearm_timer=False`` it writes 0) and a device interrupt returns with IE off (only the host can lower the
# device line).  It uses r10, r11 and r13.
def skip_handler(rearm_timer: bool = True) -> list[int]:
    """Trap handler words for random machines (see above)."""
    image = asm(
        f"""
                mfcr    r13, cause
                sltiu   r10, r13, 16
                bne     r10, r0, trap
                addi    r10, r0, {spec.TIMER_IRQ}
                bne     r13, r10, device
                mtcr    timer, {"r12" if rearm_timer else "r0"}
                iret
        device: mfcr    r10, epsw
                andi    r10, r10, {spec.PSW_S}
                mtcr    epsw, r10
                iret
        trap:   mfcr    r11, epc
                mfcr    r10, badaddr
                bne     r10, r11, skip
                addi    r11, r0, -4         # the fetch faulted: restart at 0
        skip:   addi    r11, r11, 4
                mtcr    epc, r11
                iret
        """
    )
    return words(image)


def words(image: bytes) -> list[int]:
    """An image as a list of little-endian words."""
    return [int.from_bytes(image[i : i + 4], "little") for i in range(0, len(image), 4)]


# --- random machines ------------------------------------------------------------------------------------


@dataclass
class Machine:
    """A state and memory to run on several cores (each gets its own copy)."""

    state: np.ndarray
    mem: np.ndarray

    def copy(self) -> Machine:
        """An independent copy."""
        return Machine(self.state.copy(), self.mem.copy())


def _u32(draw: st.DrawFn, memsize: int) -> int:
    """A 32-bit value biased toward small numbers and addresses inside memory."""
    return draw(
        st.one_of(
            st.integers(0, 16),
            st.integers(0, memsize + 8),
            st.integers(0, memsize // 4 + 2).map(lambda x: 4 * x),
            st.sampled_from([M32, M32 - 3, 0x80000000, 0x7FFFFFFF, 0xFFFF8000]),
            st.integers(0, M32),
        )
    )


def _rarely(rare: st.SearchStrategy, usual: st.SearchStrategy) -> st.SearchStrategy:
    """``usual`` nine times in ten, else ``rare``."""
    return st.integers(0, 9).flatmap(lambda k: rare if k == 9 else usual)


@st.composite
def machines(draw: st.DrawFn, max_words: int = 48) -> Machine:
    """A random machine: program, data, registers, mode, relocation window, vector, timer, flags, profile."""
    memsize = draw(st.sampled_from([64, 128, 256, 512, 1024, 1026, 4096]))
    mem = np.zeros(memsize, dtype=np.uint8)
    if draw(st.booleans()):
        mem[:] = np.frombuffer(draw(st.binary(min_size=memsize, max_size=memsize)), dtype=np.uint8)

    # The relocation window and pc: mostly a window that holds the program and a pc inside it (the base is
    # often unaligned), sometimes anything at all.
    wild = st.integers(0, M32)
    if draw(st.integers(0, 9)) < 9:
        base = draw(st.one_of(st.just(0), st.integers(0, memsize // 2)))
        bound = draw(st.sampled_from([memsize - base, memsize]))
    else:
        base = draw(st.one_of(st.integers(0, memsize + 8), wild))
        bound = draw(st.one_of(st.integers(0, memsize + 8), wild))
    pc = draw(_rarely(wild, st.one_of(st.just(0), st.integers(0, 8).map(lambda x: 4 * x))))
    program = draw(st.lists(instruction_words(), min_size=min(8, max_words), max_size=max_words))
    end = draw(st.sampled_from(["loop", "loop", "halt", "none"]))
    if end == "loop":
        program.append(encode(BY_MNEMONIC["jal"], 0, imm=-len(program)))
    elif end == "halt":
        program.append(encode(BY_MNEMONIC["halt"]))
    where = base + (pc if pc < memsize else 0)
    for i, w in enumerate(program):
        at = where + 4 * i
        if at + 4 <= memsize:
            mem[at : at + 4] = np.frombuffer(w.to_bytes(4, "little"), dtype=np.uint8)

    # The trap vector, usually just after the program: the handler above, random words, or whatever is there.
    after = (where + 4 * len(program) + 3) & ~3
    usual = (
        st.just(after) if after + 4 * 24 <= memsize else st.integers(0, max(0, memsize // 4 - 24)).map(lambda x: 4 * x)
    )
    ivt = draw(_rarely(wild, usual))
    handler = draw(st.integers(0, 9).map(lambda k: "none" if k == 9 else "random" if k == 8 else "skip"))
    if handler != "none" and ivt < memsize:
        hw = skip_handler() if handler == "skip" else draw(st.lists(instruction_words(), min_size=1, max_size=8))
        for i, w in enumerate(hw):
            at = ivt + 4 * i
            if at + 4 <= memsize:
                mem[at : at + 4] = np.frombuffer(w.to_bytes(4, "little"), dtype=np.uint8)

    state = S.new_state(memsize)
    for r in range(1, 16):
        state[r] = _u32(draw, memsize)
    state[S.PC] = pc
    state[S.PSW] = draw(st.integers(0, 3))
    state[S.EPC] = _u32(draw, memsize)
    state[S.EPSW] = draw(st.one_of(st.integers(0, 3), st.integers(0, M32)))
    state[S.CAUSE] = draw(st.integers(0, 17))
    state[S.BADADDR] = _u32(draw, memsize)
    state[S.IVT] = ivt
    state[S.BASE] = base
    state[S.BOUND] = bound
    state[S.EBASE] = draw(st.one_of(st.just(0), st.just(base), st.integers(0, M32)))
    state[S.EBOUND] = draw(st.one_of(st.just(memsize), st.just(bound), st.integers(0, M32)))
    state[S.TIMER] = draw(st.one_of(st.just(0), st.integers(1, 40), st.integers(0, M32)))
    state[S.SCRATCH] = _u32(draw, memsize)
    state[S.CYCLE] = draw(st.one_of(st.just(0), st.integers(0, 1 << 40)))
    state[S.PENDING] = draw(st.one_of(st.just(0), st.integers(0, 3)))
    state[S.DEVNUM] = draw(st.integers(0, 0xFFFF))
    state[S.FLAGS] = draw(st.integers(0, 3))
    state[S.STEPS] = draw(st.one_of(st.just(0), st.integers(0, 1 << 40)))
    profile = draw(st.lists(st.sampled_from([0, 0, 1, 1, 2, 2, 3]), min_size=len(spec.PROFILE_KEYS),
                            max_size=len(spec.PROFILE_KEYS)))  # fmt: skip
    state[S.PROFILE : S.PROFILE + len(profile)] = profile
    state[12] = draw(st.one_of(st.just(0), st.integers(1, 30), st.integers(0, M32)))  # the handler's timer
    return Machine(state, mem)


BUDGETS = st.lists(st.one_of(st.integers(0, 8), st.integers(0, 400)), min_size=1, max_size=6).map(
    lambda budgets: [*budgets, 1000]  # always a longer run at the end
)


def host_action(state: np.ndarray, code: int, value: int) -> bool:
    """Do what a host would after ``code`` so the machine can go on; False when it should stop (halt)."""
    if code == S.EXIT_HALT or code == S.EXIT_ERROR:
        return False
    if code == S.EXIT_IO:
        S.complete_io(state, value)
    elif code == S.EXIT_HCALL:
        S.retire(state)
    elif code == S.EXIT_TRAP:
        if value & 1:
            state[S.FLAGS] &= ~S.F_TRAPS_TO_HOST  # let the guest take it
        else:
            S.retire(state)  # emulate the instruction as a no-op
    elif code == S.EXIT_IDLE:
        if value & 1:
            state[S.PENDING] |= S.PEND_DEVICE
            state[S.DEVNUM] = value >> 1 & 0xFF
        else:
            state[S.TIMER] = value % 7 + 1
            state[S.FLAGS] &= ~S.F_TRAPS_TO_HOST
    return True


def differential_run(
    machine: Machine, budgets: list[int], values: list[int], core: CoreRun, reference: CoreRun
) -> list[int]:
    """Run ``machine`` on both cores, one call per budget, with the same host actions; assert equality.

    Returns the exit codes seen.  After every call the exit code, every state slot and all of memory must
    be equal.
    """
    a, b = machine.copy(), machine.copy()
    codes = []
    for i, budget in enumerate(budgets):
        ca = reference(a.state, a.mem, budget)
        cb = core(b.state, b.mem, budget)
        assert_same(a, b, ca, cb, f"call {i} (budget {budget})")
        codes.append(ca)
        if not host_action(a.state, ca, values[i % len(values)]):
            break
        host_action(b.state, cb, values[i % len(values)])
    return codes


def assert_same(a: Machine, b: Machine, ca: int, cb: int, where: str = "") -> None:
    """Assert two machines and exit codes are identical, naming the slots that differ."""
    diff = [
        f"{slot_name(i)}: reference {int(a.state[i]):#x}, core {int(b.state[i]):#x}"
        for i in np.flatnonzero(a.state != b.state)
    ]
    memdiff = np.flatnonzero(a.mem != b.mem)
    assert ca == cb and not diff and len(memdiff) == 0, (
        f"{where}: exit reference {S.EXIT_NAMES[ca]}, core {S.EXIT_NAMES[cb] if 0 <= cb < 7 else cb}; "
        f"state differs at {diff}; memory differs at {memdiff[:16].tolist()}"
    )


def slot_name(i: int) -> str:
    """A readable name for a state slot."""
    names = {S.PC: "pc", S.PENDING: "pending", S.DEVNUM: "devnum", S.FLAGS: "flags", S.XCAUSE: "xcause",
             S.XINFO: "xinfo", S.IO_PORT: "io_port", S.IO_WRITE: "io_write", S.IO_VALUE: "io_value",
             S.IO_REG: "io_reg", S.STEPS: "steps", S.STATUS: "status"}  # fmt: skip
    if i < 16:
        return f"r{i}"
    if S.CR0 <= i < S.CR0 + spec.NUM_CRS:
        return spec.CR_NAMES[i - S.CR0]
    if S.PROFILE <= i < S.PROFILE + len(spec.PROFILE_KEYS):
        return "profile." + spec.PROFILE_KEYS[i - S.PROFILE]
    return names.get(i, f"slot{i}")


@contextlib.contextmanager
def translating_after(steps: int) -> Iterator[None]:
    """The translating core translates code once ``steps`` were interpreted from it, so short runs reach
    translated code."""
    hot, dbt.HOT = dbt.HOT, steps
    try:
        yield
    finally:
        dbt.HOT = hot
