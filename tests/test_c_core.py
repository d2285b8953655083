"""The C core (popek/cores/c/core.c) against the reference core, and the JIT core where it imports.

The differential tests run random programs from random machine states under random profiles on every core
and require identical exit codes, states and memory after every call, including the host's part of the
contract (completing I/O, hypercalls and host-delivered traps) between calls. Random machines come from
this file's strategies and from those shared with the JIT core's tests (tests/strategies.py). Tests that
need the compiled module skip, with the reason, where it could not be built.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from popek.cores import c as c_core
from popek.cores import reference
from popek.cores.c.gen_tables import VM_LOOP, header_text
from popek.isa import spec
from popek.isa import state as S
from popek.isa.spec import encode
from tests.strategies import BUDGETS, Machine, asm, differential_run, load, machines, sieve_program

needs_c = pytest.mark.skipif(not c_core.available(), reason=f"C core unavailable: {c_core.unavailable_reason()}")

try:
    from popek.cores import jit as _jit

    JIT_RUN = _jit.run
except Exception:  # the JIT core is optional here: compare with it only where it imports
    JIT_RUN = None

NATIVE = Path(c_core.__file__).resolve().parent
M32 = S.MASK32


def cores() -> list[tuple[str, object]]:
    """The cores to compare with the reference: always C, and the JIT core when it imports."""
    out = [("c", c_core.run)]
    if JIT_RUN is not None:
        out.append(("jit", JIT_RUN))
    return out


# --- constants and decode tables (p32_tables.h, generated from popek/isa by gen_tables.py) -----------------------


def _python_value(name: str) -> int:
    """The Python value a ``P32_*`` name of the generated header stands for."""
    short = name.removeprefix("P32_")
    if short.startswith("OP_"):
        return spec.BY_MNEMONIC[short[3:].lower()].opcode
    if short == "NUM_PROFILE_KEYS":
        return len(spec.PROFILE_KEYS)
    if short.startswith("K_"):
        key = short[2:].lower()
        return spec.PROFILE_INDEX[{"mfcr": "mfcr.psw", "mtcr": "mtcr.psw"}.get(key, key)]
    for module in (S, spec):
        if hasattr(module, short):
            return getattr(module, short)
    if short in VM_LOOP:  # the compiled VM-exit loop's results and counters
        return VM_LOOP[short]
    raise AssertionError(f"{name} has no Python counterpart in isa.state, isa.spec or gen_tables.VM_LOOP")


def _header_constants() -> dict[str, int]:
    """The ``#define P32_<NAME> <number>`` lines of the header the generator writes now, read as text."""
    defines = re.finditer(r"^#define (P32_[A-Z0-9_]+) +(-?(?:0x[0-9a-fA-F]+|\d+))u?$", header_text(), re.MULTILINE)
    return {m[1]: int(m[2], 0) for m in defines}


def test_generated_header_matches_python() -> None:
    """The generated header, read as text: runs even where the C core could not be built."""
    text = header_text()
    assert "DO NOT MODIFY" in text.split("*/")[0] and "gen_tables.py" in text.split("*/")[0]
    consts = _header_constants()
    for name, value in consts.items():
        assert value == _python_value(name), name
    # every slot, flag, exit code and constant of popek/isa/state.py and spec.py, and every opcode, is there
    for module in (S, spec):
        wanted = [n for n, v in vars(module).items() if n.isupper() and type(v) is int]
        assert sorted(n for n in wanted if f"P32_{n}" not in consts) == []
    assert sorted(n for n in (f"P32_OP_{i.mnemonic.upper()}" for i in spec.INSNS) if n not in consts) == []
    assert all(consts["P32_K_MFCR"] + i == spec.PROFILE_INDEX[f"mfcr.{cr}"] for i, cr in enumerate(spec.CR_NAMES))
    assert all(consts["P32_K_MTCR"] + i == spec.PROFILE_INDEX[f"mtcr.{cr}"] for i, cr in enumerate(spec.CR_NAMES))
    ops = re.findall(r"X\(P32_OP_(\w+), (\w+)\)", text)
    assert [(name, handler) for name, handler in ops] == [(i.mnemonic.upper(),) * 2 for i in spec.INSNS]


def test_c_sources_keep_no_copy_of_a_generated_constant() -> None:
    """core.h and core.c define none of the header's names: a spec constant has one home."""
    generated = set(_header_constants())
    for source in ("core.h", "core.c"):
        defined = set(re.findall(r"^\s*#\s*define\s+(\w+)", (NATIVE / source).read_text(), re.MULTILINE))
        assert defined & generated == set(), source


@needs_c
def test_c_constants_match_python() -> None:
    """The constants as compiled into the extension module are the header's (so, Python's)."""
    assert c_core.constants() == _header_constants()


def _words_to_decode(insn: spec.Insn) -> list[int]:
    """Words of ``insn``'s opcode: plain ones, every field, each stray bit, every control register and beyond."""
    words = [spec.encode(insn, a, b, c, imm) for a, b, c, imm in [(0, 0, 0, 0), (15, 15, 15, 0xFFFF), (1, 2, 3, 4)]]
    words += [spec.encode(insn, imm=cr) for cr in range(spec.NUM_CRS + 2)] + [spec.encode(insn, imm=0xFFFF)]
    return words + [words[0] | 1 << bit for bit in range(24)]


@needs_c
def test_c_decode_tables_match_spec() -> None:
    """Decoding any word through the compiled per-opcode tables, as core.c does, agrees with spec.decode and
    with the profile key the reference core looks up."""
    tables = c_core.tables()
    assert set(tables) == {"must_be_zero", "profile_key", "cr_operand"}
    assert all(len(t) == 256 for t in tables.values())
    for op in range(256):
        if op not in spec.BY_OPCODE:  # unknown: dispatch makes it ILLEGAL, and no key may let it run
            assert (tables["must_be_zero"][op], tables["profile_key"][op], tables["cr_operand"][op]) == (0, -1, 0)
    for insn in spec.INSNS:
        op = insn.opcode
        for word in _words_to_decode(insn):
            imm = word & 0xFFFF
            illegal = bool(word & tables["must_be_zero"][op]) or bool(tables["cr_operand"][op] and imm >= spec.NUM_CRS)
            d = spec.decode(word)
            assert illegal == (d is None), f"{word:#010x}"
            if d is None:
                continue
            key, first = reference.profile_key(d), tables["profile_key"][op]
            got = -1 if first < 0 else first + (imm if tables["cr_operand"][op] else 0)
            assert got == (-1 if key is None else spec.PROFILE_INDEX[key]), f"{word:#010x}"


# --- running the cores side by side ------------------------------------------------------------------------


def host_continue(st_: np.ndarray, memsize: int, code: int, in_value: int) -> bool:
    """Do the host's part after an exit so the run can go on; False when the run is over."""
    if code == S.EXIT_IO:
        S.complete_io(st_, in_value)
    elif code == S.EXIT_HCALL:
        S.retire(st_)
    elif code == S.EXIT_TRAP:  # deliver it into the guest, as a monitor reflecting the trap would
        S.enter_trap(st_, memsize, int(st_[S.XCAUSE]), int(st_[S.XINFO]), int(st_[S.PC]))
        st_[S.STEPS] += 1
    elif code != S.EXIT_BUDGET:
        return False
    return True


def run_all(
    state0: np.ndarray, mem0: np.ndarray, budgets: list[int], in_value: int = 0x41, max_steps: int = 400
) -> tuple[list[int], np.ndarray]:
    """Run every core through the same calls (budgets cycled until ``max_steps`` are asked for or the machine
    stops); assert identical results after each call; return the exit codes and the final reference state."""
    ref_state, ref_mem = state0.copy(), mem0.copy()
    others = [(name, run, state0.copy(), mem0.copy()) for name, run in cores()]
    codes: list[int] = []
    spent = 0
    while spent < max_steps:  # the budgets again and again: host exits end calls early
        budget = budgets[len(codes) % len(budgets)]
        spent += max(budget, 1)
        code = reference.run(ref_state, ref_mem, budget)
        codes.append(code)
        for name, run, st_, mem in others:
            got = run(st_, mem, budget)
            assert got == code, f"{name}: exit {got} != reference {code}"
            diff = np.nonzero(st_ != ref_state)[0]
            assert diff.size == 0, f"{name}: slots {diff.tolist()} differ: {st_[diff]} != {ref_state[diff]}"
            assert np.array_equal(mem, ref_mem), f"{name}: memory differs"
        if not host_continue(ref_state, len(ref_mem), code, in_value):
            break
        for _, _, st_, mem in others:
            host_continue(st_, len(mem), code, in_value)
    return codes, ref_state


# --- strategies ----------------------------------------------------------------------------------------------

# A trap handler that skips the instruction that trapped (r13 is its scratch register).
SKIP_HANDLER = asm("mfcr r13, epc\naddi r13, r13, 4\nmtcr epc, r13\niret")

_INTERESTING = [0, 1, 2, 3, 4, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFC, 0xFFFF, 0x8000, 31, 32]
word32 = st.one_of(st.sampled_from(_INTERESTING), st.integers(0, M32))
small_reg = st.integers(0, 15)


@st.composite
def instruction(draw: st.DrawFn, memsize: int) -> int:
    """One instruction word: usually a valid one with plausible fields, sometimes stray bits or noise."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(st.integers(1, M32))  # noise: mostly ILLEGAL
    insn = draw(st.sampled_from(spec.INSNS))
    a, b, c = draw(small_reg), draw(small_reg), draw(small_reg)
    if insn.klass == spec.MEM and draw(st.booleans()):
        b = 0  # an absolute address: imm(r0)
    if insn.klass == spec.BRANCH:
        imm = draw(st.integers(-8, 8))
    elif insn.klass == spec.MEM:
        imm = draw(st.one_of(st.integers(-4, memsize // 4).map(lambda w: 4 * w), st.integers(-16, memsize + 16),
                             st.integers(-0x8000, 0x7FFF)))  # fmt: skip
    elif insn.mnemonic in ("mfcr", "mtcr"):
        imm = draw(st.integers(0, spec.NUM_CRS))  # NUM_CRS itself is an unknown CR
    elif insn.mnemonic in ("in", "out", "syscall", "brk", "hcall"):
        imm = draw(st.integers(0, 0x20))
    else:
        imm = draw(st.one_of(st.integers(0, 40), st.integers(0, 0xFFFF)))
    if insn.operands in ("rd,imm", "rd,cr", "cr,rs", "rd,port", "port,rs"):
        b = 0
    elif insn.operands == "uimm":
        a = b = 0
    elif insn.operands in ("rd", "rs"):
        b = imm = 0
    word = encode(insn, a, b, c, imm)
    if kind == 1:
        word ^= 1 << draw(st.integers(0, 23))  # a stray bit: ILLEGAL for some formats, a new operand for others
    return word


def address(memsize: int) -> st.SearchStrategy[int]:
    """An address: mostly an aligned one inside memory, sometimes any byte near it, sometimes anything."""
    return st.one_of(
        st.integers(0, memsize // 4 - 1).map(lambda w: 4 * w),
        st.integers(0, memsize + 8),
        st.sampled_from([memsize - 4, memsize - 1, memsize, M32 - 3]),
    )


@st.composite
def machine(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """A memory filled with a random program (repeated) and a random, valid machine state."""
    memsize = draw(st.sampled_from([64, 256, 1024, 1022, 16]))
    program = draw(st.lists(instruction(memsize), min_size=1, max_size=40))
    words = np.array(program, dtype="<u4")
    mem = np.resize(words.view(np.uint8), memsize).astype(np.uint8)
    profile = np.array(draw(st.lists(st.integers(0, 2), min_size=len(spec.PROFILE_KEYS),
                                     max_size=len(spec.PROFILE_KEYS))), dtype=np.int64)  # fmt: skip
    state = S.new_state(memsize, profile)
    for r in range(1, 16):
        state[r] = draw(st.one_of(address(memsize), st.integers(0, 64), word32))
    state[S.PC] = draw(st.one_of(st.sampled_from([0, 4, 8]), address(memsize)))
    state[S.PSW] = draw(st.integers(0, 3))
    for cr in (S.EPC, S.EPSW, S.CAUSE, S.BADADDR, S.SCRATCH):
        state[cr] = draw(st.one_of(address(memsize), word32))
    if memsize >= 64 and draw(st.integers(0, 7)):  # mostly a handler that skips what trapped, so runs go on
        state[S.IVT] = ivt = (memsize - 16) & ~3
        load(mem, SKIP_HANDLER, ivt)
    else:
        state[S.IVT] = draw(st.one_of(st.sampled_from([0, 4, 8, 16]), address(memsize)))
    if draw(st.integers(0, 3)) == 0:  # a relocation window other than all of memory
        state[S.BASE] = draw(st.sampled_from([4, 8, memsize // 2, memsize - 4, memsize, 0xFFFFFFF0]))
        state[S.BOUND] = draw(st.sampled_from([memsize, 0, 8, memsize // 2, memsize + 4, M32]))
    state[S.EBASE] = draw(st.sampled_from([0, 0, 4, memsize // 2, M32]))
    state[S.EBOUND] = draw(st.sampled_from([memsize, memsize, 0, 16, M32]))
    state[S.TIMER] = draw(st.one_of(st.just(0), st.integers(1, 40), st.just(M32)))
    state[S.CYCLE] = draw(st.one_of(st.integers(0, 100), st.just(M32 - 3), st.integers(0, 1 << 40)))
    state[S.PENDING] = draw(st.sampled_from([0, 0, 0, 1, 2, 3]))  # pending with IE: an interrupt storm
    state[S.DEVNUM] = draw(st.integers(0, 5))
    state[S.FLAGS] = draw(st.integers(0, 3))
    state[S.STEPS] = draw(st.integers(0, 1000))
    return state, mem


# Call budgets, cycled by run_all; the last one is large, so every example also runs for a while.
budgets = st.lists(st.one_of(st.integers(0, 3), st.integers(1, 300)), min_size=1, max_size=5).map(lambda b: b + [250])


@needs_c
@given(m=machine(), budgets=budgets, in_value=st.sampled_from([0, 0x41, M32]))
def test_random_programs_agree(m: tuple[np.ndarray, np.ndarray], budgets: list[int], in_value: int) -> None:
    state, mem = m
    steps0 = int(state[S.STEPS])
    codes, final = run_all(state, mem, budgets, in_value)
    event(f"last exit: {S.EXIT_NAMES[codes[-1]]}")
    event(f"steps run: {min(int(final[S.STEPS]) - steps0, 100) // 25 * 25}+")


@needs_c
@given(m=machine(), budget=st.integers(1, 150), cut=st.integers(0, 150))
def test_split_run_equals_one_run(m: tuple[np.ndarray, np.ndarray], budget: int, cut: int) -> None:
    """Two calls of the C core (a budget split anywhere) leave exactly what one call leaves."""
    state, mem = m
    state[S.FLAGS] = 0  # no host exits other than I/O, idle and halt
    one_state, one_mem = state.copy(), mem.copy()
    code_one = c_core.run(one_state, one_mem, budget)
    two_state, two_mem = state.copy(), mem.copy()
    first = min(cut, budget)
    code = c_core.run(two_state, two_mem, first)
    if code == S.EXIT_BUDGET:
        code = c_core.run(two_state, two_mem, budget - first)
    assert code == code_one
    assert np.array_equal(one_state, two_state) and np.array_equal(one_mem, two_mem)


VALUES = st.lists(st.integers(0, M32), min_size=1, max_size=4)


@needs_c
@given(machines(), BUDGETS, VALUES)
def test_shared_random_machines_match_reference(m: Machine, budgets: list[int], values: list[int]) -> None:
    """The machines of tests/strategies.py (wild windows, vectors, profiles, host actions) on the C core."""
    differential_run(m, budgets, values, c_core.run, reference.run)


@needs_c
def test_long_sieve_counts_primes_and_matches_jit() -> None:
    """A run too long for the reference core: the prime count is right, and the JIT core ends identically."""
    mem = np.zeros(0x10000 + 4096, dtype=np.uint8)
    load(mem, sieve_program(n=4096, reps=3, flags=0x10000))
    state = S.new_state(len(mem))
    m = Machine(state, mem)
    if JIT_RUN is not None:
        differential_run(m, [50_000, 1 << 30], [0], c_core.run, JIT_RUN)
    assert c_core.run(state, mem, 1 << 30) == S.EXIT_HALT
    assert state[9] == 564 + 2  # pi(4096) = 564, plus the two flags of 0 and 1


# --- hand-written cases the random programs may rarely reach ----------------------------------------------------


def program(source: str) -> np.ndarray:
    """A 1 KiB memory holding ``source``, assembled at address 0."""
    mem = np.zeros(1024, dtype=np.uint8)
    load(mem, asm(source))
    return mem


CASES = {
    "division edge cases": """
        lui     r1, 0x8000
        addi    r2, r0, -1
        div     r3, r1, r2
        rem     r4, r1, r2
        addi    r5, r0, -7
        addi    r6, r0, 2
        div     r7, r5, r6
        rem     r8, r5, r6
        divu    r9, r5, r6
        remu    r10, r5, r6
        div     r11, r5, r0
    """,
    "shifts and compares": """
        addi    r1, r0, -5
        addi    r2, r0, 33
        sar     r3, r1, r2
        shr     r4, r1, r2
        shl     r5, r1, r2
        slt     r6, r1, r0
        sltu    r7, r1, r0
        slti    r8, r1, 0xFFFF
        sltiu   r9, r1, 0xFFFF
        sari    r10, r1, 0xFFFF
        ori     r11, r0, 0xFFFF
        mul     r12, r1, r1
        halt
    """,
    "memory and faults": """
        addi    r1, r0, 0x200
        addi    r2, r0, -2
        st      r2, 4(r1)
        stb     r2, 9(r1)
        ld      r3, 4(r1)
        ldb     r4, 9(r1)
        ldbu    r5, 9(r1)
        ld      r6, 2(r1)
        ld      r7, 0x7FFC(r1)
        halt
    """,
    "timer, wfi and interrupts": """
        addi    r1, r0, 5
        mtcr    timer, r1
        mfcr    r2, timer
        wfi
        mfcr    r3, cycle
        addi    r4, r0, 3
        mtcr    psw, r4
        addi    r0, r0, 0
        halt
    """,
    "user mode and iret": """
        addi    r1, r0, 0x100
        mtcr    ebase, r1
        addi    r1, r0, 0x100
        mtcr    ebound, r1
        addi    r1, r0, 0
        mtcr    epsw, r1
        mtcr    epc, r0
        iret
    """,
    "io and hcall": """
        addi    r1, r0, 0x48
        out     0, r1
        in      r2, 0
        hcall   7
        syscall 3
    """,
}


@needs_c
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("profile", ["classic", "x86like", "all-execute", "all-ignore"])
@pytest.mark.parametrize("flags", [0, S.F_TRAPS_TO_HOST | S.F_HCALL_TO_HOST])
def test_hand_written_cases_agree(name: str, profile: str, flags: int) -> None:
    from popek.isa.profiles import load_profile

    if profile.startswith("all-"):
        prof = np.full(len(spec.PROFILE_KEYS), spec.EXECUTE if profile == "all-execute" else spec.IGNORE)
    else:
        prof = load_profile(profile).array()
    mem = program(CASES[name])
    mem[0x100:0x140] = mem[0:0x40]  # the user-mode copy that "user mode and iret" jumps into
    load(mem, SKIP_HANDLER, 0x300)
    state = S.new_state(len(mem), prof)
    state[S.FLAGS] = flags
    state[S.IVT] = 0x300
    run_all(state, mem, [7, 1, 40, 3, 200], max_steps=600)


@needs_c
def test_wfi_skips_ahead_exactly() -> None:
    mem = program("addi r1, r0, 50\nmtcr timer, r1\nwfi\nhalt")
    state = S.new_state(len(mem))
    assert c_core.run(state, mem, 100) == S.EXIT_HALT
    assert state[S.CYCLE] == 2 + 51 + 1 and state[S.STEPS] == 4 and state[S.PENDING] == S.PEND_TIMER


@needs_c
def test_endless_wfi_exits_idle() -> None:
    mem = program("wfi")
    state = S.new_state(len(mem))
    assert c_core.run(state, mem, 100) == S.EXIT_IDLE and state[S.PC] == 0 and state[S.STEPS] == 0


@needs_c
def test_run_rejects_wrong_buffers() -> None:
    mem = np.zeros(64, dtype=np.uint8)
    with pytest.raises(ValueError):
        c_core.run(np.zeros(S.NSLOTS, dtype=np.int32), mem, 1)
    with pytest.raises(ValueError):
        c_core.run(S.new_state(64), np.zeros(64, dtype=np.int8), 1)
    with pytest.raises(ValueError):
        c_core.run(S.new_state(64), np.zeros(128, dtype=np.uint8)[::2], 1)  # not contiguous
    state = S.new_state(64)
    state.flags.writeable = False
    with pytest.raises((ValueError, TypeError)):
        c_core.run(state, mem, 1)


@needs_c
def test_run_writes_in_place_without_copies() -> None:
    mem = program("addi r1, r0, 7\nstb r1, 0x80(r0)\nhalt")
    state = S.new_state(len(mem))
    assert c_core.run(state, mem, 10) == S.EXIT_HALT
    assert state[1] == 7 and mem[0x80] == 7 and state[S.STATUS] == 7
