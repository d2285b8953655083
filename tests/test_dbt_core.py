"""The translating core (popek/cores/dbt.py) against the reference core: same exit codes, state and memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popek.cores import CORE_NAMES, dbt, get_core, reference
from popek.isa import spec
from popek.isa import state as S
from popek.isa.asm import assemble_file
from popek.vmm.host import Machine as HostMachine
from tests.strategies import BUDGETS, Machine, asm, differential_run, machines, sieve_program, translating_after
from tests.test_jit_core import _machine

M32 = 0xFFFFFFFF
VALUES = st.lists(st.integers(0, M32), min_size=1, max_size=4)
GUESTS = Path(__file__).resolve().parent.parent / "guests"


@pytest.fixture(autouse=True)
def translate_at_once() -> Iterator[None]:
    """Translate code the first time it is reached, so short runs exercise translated code."""
    with translating_after(1):
        yield


def _both(m: Machine, budgets: list[int]) -> list[int]:
    return differential_run(m, budgets, [0], dbt.run, reference.run)


def test_registered() -> None:
    assert "dbt" in CORE_NAMES and get_core("dbt") is dbt.run


@given(machines(), BUDGETS, VALUES)
def test_random_machines_match_reference(m: Machine, budgets: list[int], values: list[int]) -> None:
    differential_run(m, budgets, values, dbt.run, reference.run)


@given(machines(), st.lists(st.integers(1, 7), min_size=1, max_size=40), VALUES)
def test_small_budgets_split_blocks(m: Machine, budgets: list[int], values: list[int]) -> None:
    # Run once so the blocks are translated, then again from the start in slices that end mid-block.
    warm = m.copy()
    dbt.run(warm.state, warm.mem, 200)
    differential_run(m, [*budgets, 300], values, dbt.run, reference.run)


@given(machines(), st.integers(0, 3))
def test_random_machines_twice_with_a_warm_cache(m: Machine, rounds: int) -> None:
    # The same machine run repeatedly: every run after the first finds its blocks translated.
    for _ in range(rounds + 1):
        differential_run(m, [500], [0], dbt.run, reference.run)


def test_sieve_matches_reference_and_runs_translated() -> None:
    m = _machine(sieve_program(n=600, flags=0x400), memsize=0x400 + 600)
    before = dbt.stats()
    assert _both(m, [10_000_000]) == [S.EXIT_HALT]
    after = dbt.stats()
    assert after.block_insns > before.block_insns


def test_self_modifying_code() -> None:
    """A store over an instruction that already ran (and was translated); looping back runs the new one."""
    patch = int.from_bytes(asm("addi r1, r1, 100"), "little")
    image = asm(
        f"""
                addi    r2, r0, 3
        top:
        patched:
                addi    r1, r1, 1
                li      r3, {patch:#x}
                st      r3, patched(r0)
                addi    r2, r2, -1
                bne     r2, r0, top
                halt
        """
    )
    m = _machine(image)
    before = dbt.stats().invalidations
    assert _both(m, [1000]) == [S.EXIT_HALT]
    assert dbt.stats().invalidations > before
    m2 = _machine(bytes(3) + image, base=3, bound=len(image))
    differential_run(m2, [3, 1, 2, 1000], [0], dbt.run, reference.run)


def test_store_into_a_later_word_of_the_same_block() -> None:
    """A store that rewrites an instruction further down the block being run."""
    patch = int.from_bytes(asm("addi r1, r1, 100"), "little")
    image = asm(
        f"""
                addi    r2, r0, 3
                li      r3, {patch:#x}
        top:    addi    r1, r1, 1
                st      r3, later(r0)
                addi    r4, r4, 1
        later:  addi    r1, r1, 1
                st      r0, later(r0)       # zero: the next pass...
                li      r5, {int.from_bytes(asm("addi r1, r1, 1"), "little"):#x}
                st      r5, later(r0)       # ...restored before it runs
                addi    r2, r2, -1
                bne     r2, r0, top
                halt
        """
    )
    assert _both(_machine(image), [1000]) == [S.EXIT_HALT]


def test_store_into_another_regions_code() -> None:
    """One translated region patches a routine that is another region (reached only through ``jalr``)."""
    patch = int.from_bytes(asm("addi r1, r1, 100"), "little")
    image = asm(
        f"""
                addi    r2, r0, 6
                li      r3, {patch:#x}
                addi    r4, r0, 3
        top:    la      r8, fn
                jalr    r15, 0(r8)
                addi    r2, r2, -1
                bne     r2, r4, skip
                st      r3, fn(r0)
        skip:   bne     r2, r0, top
                halt
        fn:     addi    r1, r1, 1
                jalr    r0, 0(r15)
        """
    )
    before = dbt.stats().invalidations
    m = _machine(image)
    assert _both(m, [100_000]) == [S.EXIT_HALT]
    assert dbt.stats().invalidations > before


@given(st.lists(st.integers(1, 3000), min_size=1, max_size=30))
def test_budgets_that_end_inside_translated_loops(budgets: list[int]) -> None:
    # A warm cache first, so that every slice starts and ends inside translated regions.
    m = _machine(sieve_program(n=400, flags=0x400), memsize=0x400 + 400)
    warm = m.copy()
    dbt.run(warm.state, warm.mem, 1 << 30)
    differential_run(m, [*budgets, 1 << 30], [0], dbt.run, reference.run)


def test_a_guest_that_rewrites_its_code_forever_stops_being_translated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the process's translation limit the core interprets, still exactly."""
    patch = int.from_bytes(asm("addi r1, r1, 100"), "little")
    image = asm(
        f"""
                addi    r2, r0, 40
        top:
        patched:
                addi    r1, r1, 1
                li      r3, {patch:#x}
                add     r3, r3, r2              # a different word every pass
                st      r3, patched(r0)
                addi    r2, r2, -1
                bne     r2, r0, top
                halt
        """
    )
    monkeypatch.setattr(dbt, "MAX_TRANSLATIONS", 0)  # as if this process had translated its fill already
    dbt.reset_stats()
    assert _both(_machine(image), [100_000]) == [S.EXIT_HALT]
    assert dbt.stats().translations == 0 and dbt.stats().refused > 0


def test_byte_store_into_the_next_instruction() -> None:
    image = asm(
        """
                addi    r4, r0, HALT
                stb     r4, 4 * 3 + 3(r0)
                addi    r1, r0, 7
                addi    r1, r0, 9
                halt
        """,
        HALT=spec.BY_MNEMONIC["halt"].opcode,
    )
    _both(_machine(image, ivt=4 * 4), [100])


def test_faults_inside_a_block_trap_exactly() -> None:
    """Loads, stores and divisions that trap in the middle of translated blocks: epc and badaddr exact."""
    image = asm(
        """
                jal     r0, main
        handler:
                mfcr    r9, epc
                addi    r9, r9, 4
                mtcr    epc, r9
                addi    r10, r10, 1
                iret
        main:   addi    r7, r0, handler
                mtcr    ivt, r7
                addi    r2, r0, 20
        loop:   addi    r1, r1, 1
                ld      r3, 2(r0)           # ALIGN
                addi    r1, r1, 1
                ld      r3, -4(r0)          # MEM
                divu    r4, r1, r0          # DIVZERO
                st      r1, 0x100(r0)
                stb     r1, 0x7FFF(r0)      # MEM
                addi    r2, r2, -1
                bne     r2, r0, loop
                halt
        """
    )
    for budgets in ([100_000], [5, 7, 3, 11, 100_000]):
        assert _both(_machine(image), budgets)[-1] == S.EXIT_HALT


@pytest.mark.parametrize("period", [2, 3, 5, 7, 11, 40])
def test_timer_interrupts_at_the_same_instruction(period: int) -> None:
    image = asm(
        """
                jal     r0, main
        handler:
                addi    r5, r5, 1
                mfcr    r4, cycle
                add     r8, r8, r4
                mtcr    timer, r6
                iret
        main:   addi    r7, r0, handler
                mtcr    ivt, r7
                addi    r6, r0, PERIOD
                mtcr    timer, r6
                addi    r9, r0, 3           # supervisor, interrupts on
                mtcr    psw, r9
                addi    r2, r0, 2000
        loop:   addi    r1, r1, 3
                xor     r3, r3, r1
                shli    r3, r3, 1
                addi    r2, r2, -1
                bne     r2, r0, loop
                halt
        """,
        PERIOD=period,
    )
    assert _both(_machine(image), [1_000_000])[-1] == S.EXIT_HALT


def test_flags_for_rewriting_and_paravirtual_support_interpret() -> None:
    m = _machine(sieve_program(n=200, flags=0x400), memsize=0x400 + 200, flags=S.F_REWRITE)
    assert _both(m, [10_000_000]) == [S.EXIT_HALT]


def test_stats_report_translation_apart() -> None:
    dbt.reset_stats()
    m = _machine(sieve_program(n=300, flags=0x400), memsize=0x400 + 300)
    dbt.run(m.state, m.mem, 1 << 30)
    s = dbt.stats()
    assert s.translations >= 1 and s.translate_seconds > 0 and s.block_runs > 0
    assert "translations" in dbt.stats_line()


def test_cold_code_is_not_translated() -> None:
    dbt.HOT = 1 << 30
    dbt.reset_stats()
    m = _machine(sieve_program(n=300, flags=0x400), memsize=0x400 + 300)
    assert _both(m, [10_000_000]) == [S.EXIT_HALT]
    assert dbt.stats().translations == 0


BUILDS = sorted(
    [(p.relative_to(GUESTS).as_posix(), {}) for p in (GUESTS / "programs").glob("*.s") if p.name != "lib.s"]
    + [("kernel/kernel.s", {}), ("kernel/kernel.s", {"CRASH": 1}), ("kernel/kernel.s", {"PARAVIRT": 1})],
    key=str,
)


@pytest.mark.parametrize("path, defines", BUILDS, ids=[f"{p}{''.join(f'-{k}' for k in d)}" for p, d in BUILDS])
def test_bundled_guests_run_as_on_the_reference_core(path: str, defines: dict) -> None:
    image = assemble_file(str(GUESTS / path), defines=defines or None).image
    runs = {}
    for core in ("reference", "dbt"):
        machine = HostMachine(core=core)
        machine.load(image)
        runs[core] = (machine, machine.run(100_000))
    (ref, rres), (got, gres) = runs["reference"], runs["dbt"]
    assert np.array_equal(got.state, ref.state) and np.array_equal(got.mem, ref.mem)
    assert (gres.console, gres.exit, gres.halted) == (rres.console, rres.exit, rres.halted)


# --- random structured programs: loops, branches, calls, memory, patches, interrupts ----------------------
_R_OPS = ["add", "sub", "and", "or", "xor", "shl", "shr", "sar", "mul", "slt", "sltu", "div", "divu", "rem", "remu"]
_I_OPS = ["addi", "andi", "ori", "xori", "shli", "shri", "sari", "slti", "sltiu"]
_BRANCHES = ["beq", "bne", "blt", "bge", "bltu", "bgeu"]
_WORK = range(3, 10)  # registers the random body computes with; r1 counts handler runs, r2 the loop


@st.composite
def _body(draw: st.DrawFn, depth: int = 0) -> list[str]:
    """Random straight-line code with forward branches, memory accesses (some faulting) and a nested loop."""
    lines: list[str] = []
    reg = st.sampled_from(list(_WORK))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["r", "r", "i", "i", "ld", "st", "skip", "loop", "call"]))
        if kind == "r":
            lines.append(f"{draw(st.sampled_from(_R_OPS))} r{draw(reg)}, r{draw(reg)}, r{draw(reg)}")
        elif kind == "i":
            lines.append(f"{draw(st.sampled_from(_I_OPS))} r{draw(reg)}, r{draw(reg)}, {draw(st.integers(-40, 40))}")
        elif kind in ("ld", "st"):
            # An address in the data area, sometimes misaligned or past the end of memory (traps).
            mask = draw(st.sampled_from([0xFC, 0xFF, 0x3FFF]))
            op = draw(st.sampled_from(["ld", "ldb", "ldbu"] if kind == "ld" else ["st", "stb"]))
            lines += [f"andi r10, r{draw(reg)}, {mask}", f"{op} r{draw(reg)}, data(r10)"]
        elif kind == "skip" and depth < 3:  # numeric labels, one digit per depth: 2-4 forward, 5-6 back
            lines.append(f"{draw(st.sampled_from(_BRANCHES))} r{draw(reg)}, r{draw(reg)}, {2 + depth}f")
            lines += [*draw(_body(depth + 1)), f"{2 + depth}:"]
        elif kind == "loop" and depth < 2:
            count = 11 + depth
            lines += [f"addi r{count}, r0, {draw(st.integers(1, 4))}", f"{5 + depth}:", *draw(_body(depth + 1))]
            lines += [f"addi r{count}, r{count}, -1", f"bne r{count}, r0, {5 + depth}b"]
        elif kind == "call" and depth < 2:
            lines.append("jal r15, routine")
    return lines


@st.composite
def structured_programs(draw: st.DrawFn) -> str:
    """A loop around a random body, a routine it calls, a patch of one of its instructions, maybe a timer."""
    timer = draw(st.sampled_from([0, 0, 3, 17, 101]))
    patch = draw(st.sampled_from(["addi r3, r3, 7", "xor r4, r4, r5", "shli r6, r6, 3"]))
    patched_at = draw(st.integers(1, 6))
    return f"""
                jal     r0, main
        handler:                            # traps skip the instruction, the timer re-arms
                addi    r1, r1, 1
                mfcr    r14, cause
                addi    r13, r0, CAUSE_TIMER
                beq     r14, r13, tick
                mfcr    r14, epc
                addi    r14, r14, 4
                mtcr    epc, r14
                iret
        tick:   addi    r14, r0, {timer}
                mtcr    timer, r14
                iret
        routine:
                {chr(10).join(draw(_body(2)))}
                jalr    r0, 0(r15)
        main:   addi    r14, r0, handler
                mtcr    ivt, r14
                addi    r14, r0, {timer}
                mtcr    timer, r14
                addi    r14, r0, 3              # supervisor, interrupts on
                mtcr    psw, r14
                li      r3, {draw(st.integers(0, M32))}
                li      r4, {draw(st.integers(0, M32))}
                li      r5, {draw(st.integers(0, M32))}
                addi    r2, r0, {draw(st.integers(2, 8))}
        top:
        patched:
                addi    r9, r9, 1
                {chr(10).join(draw(_body()))}
                addi    r2, r2, -1
                addi    r14, r0, {patched_at}
                bne     r2, r14, 1f
                li      r14, {int.from_bytes(asm(patch), "little")}
                st      r14, patched(r0)
        1:      bne     r2, r0, top
                halt
                .align  4
        data:   .space  256
    """


@settings(max_examples=max(12, settings.default.max_examples // 3))  # each example compiles a dozen regions
@given(structured_programs(), st.lists(st.integers(1, 300), min_size=0, max_size=8))
def test_structured_programs_match_reference(source: str, budgets: list[int]) -> None:
    """Loops, calls, forward branches, faults, a patched instruction and timer interrupts: as on the reference."""
    image = asm(source, CAUSE_TIMER=int(spec.Cause.TIMER))
    codes = differential_run(_machine(image, memsize=1 << 14), [*budgets, 400_000], [0], dbt.run, reference.run)
    assert codes[-1] in (S.EXIT_HALT, S.EXIT_BUDGET)
