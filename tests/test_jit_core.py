"""The JIT core (popek/cores/jit.py) against the reference core: same exit codes, state and memory, always."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from popek.cores import jit, numba_cache, reference
from popek.cores.c import gen_tables
from popek.isa import spec
from popek.isa import state as S
from tests.strategies import (
    BUDGETS,
    Machine,
    asm,
    assert_same,
    differential_run,
    host_action,
    load,
    machines,
    sieve_program,
    skip_handler,
)

M32 = 0xFFFFFFFF
VALUES = st.lists(st.integers(0, M32), min_size=1, max_size=4)


def _machine(image: bytes, memsize: int = 4096, **slots: int) -> Machine:
    mem = np.zeros(memsize, dtype=np.uint8)
    load(mem, image)
    state = S.new_state(memsize)
    for name, value in slots.items():
        state[getattr(S, name.upper())] = value
    return Machine(state, mem)


def _both(m: Machine, budgets: list[int]) -> list[int]:
    """Run on both cores with the given budgets (stopping at halt); compare after every call."""
    return differential_run(m, budgets, [0], jit.run, reference.run)


# --- random programs ------------------------------------------------------------------------------------


@given(machines(), BUDGETS, VALUES)
def test_random_machines_match_reference(m: Machine, budgets: list[int], values: list[int]) -> None:
    differential_run(m, budgets, values, jit.run, reference.run)


@given(machines(), st.lists(st.integers(1, 60), min_size=1, max_size=12))
def test_budget_split_does_not_matter(m: Machine, slices: list[int]) -> None:
    """Running in slices gives what one run of the whole budget gives on the reference core."""
    whole = m.copy()
    code = reference.run(whole.state, whole.mem, sum(slices))
    split = m.copy()
    for budget in slices:
        c = jit.run(split.state, split.mem, budget)
        if c != S.EXIT_BUDGET:
            break
    assert_same(whole, split, code, c, f"slices {slices}")


@given(machines(), st.integers(0, M32))
def test_user_mode_system_instructions(m: Machine, value: int) -> None:
    """A user-mode machine running system instructions under random profiles, traps going to the host."""
    m.state[S.PSW] &= ~spec.PSW_S
    differential_run(m, [50, 50, 50, 50], [value], jit.run, reference.run)


@given(st.lists(st.integers(-(1 << 63), (1 << 63) - 1), min_size=S.NSLOTS, max_size=S.NSLOTS), st.integers(0, 64))
def test_arbitrary_state_never_escapes(slots: list[int], budget: int) -> None:
    """Any values at all in the state: the core stays inside ``mem`` and returns an exit code."""
    state = np.array(slots, dtype=np.int64)
    state[S.STEPS] = 0
    state[S.CYCLE] &= (1 << 40) - 1  # keep the 64-bit counters from overflowing in the reference core too
    mem = np.random.default_rng(budget).integers(0, 256, 256, dtype=np.uint8)
    code = jit.run(state, mem, budget)
    assert 0 <= code < len(S.EXIT_NAMES)


@given(machines(), st.integers(0, 200))
def test_weird_control_registers_match_reference(m: Machine, budget: int) -> None:
    """Out-of-range values in CR slots (negative, above 32 bits) are read as the reference reads them."""
    rng = np.random.default_rng(budget)
    for slot in (S.PC, S.BASE, S.BOUND, S.IVT, S.EPC, S.EBASE, S.EBOUND, S.EPSW, S.PSW):
        if rng.integers(0, 4) == 0:
            m.state[slot] = int(rng.integers(-(1 << 40), 1 << 40))
    _both(m, [budget, budget])


# --- fixed programs ---------------------------------------------------------------------------------------


def test_sieve_matches_reference() -> None:
    m = _machine(sieve_program(n=600, flags=0x400), memsize=0x400 + 600)
    codes = _both(m, [10_000_000])
    assert codes == [S.EXIT_HALT]


def test_sieve_counts_primes() -> None:
    mem = np.zeros(0x10000 + 65536, dtype=np.uint8)
    load(mem, sieve_program())
    state = S.new_state(len(mem))
    assert jit.run(state, mem, 1 << 40) == S.EXIT_HALT
    assert state[9] == 6542 + 2 and state[S.STATUS] == (6542 + 2) & 0xFF


def test_self_modifying_code() -> None:
    """A store over an instruction that already ran; looping back executes the new instruction."""
    patch = int.from_bytes(asm("addi r1, r1, 100"), "little")
    image = asm(
        f"""
                addi    r2, r0, 2       # two passes
        top:
        patched:
                addi    r1, r1, 1       # pass 1: r1 += 1; then overwritten by "addi r1, r1, 100"
                li      r3, {patch:#x}
                st      r3, patched(r0)
                addi    r2, r2, -1
                bne     r2, r0, top
                halt
        """
    )
    m = _machine(image)
    assert _both(m, [1000]) == [S.EXIT_HALT]
    ref = m.copy()
    reference.run(ref.state, ref.mem, 1000)
    assert ref.state[1] == 101
    # The same with a relocated, unaligned window and the patch in the middle of a budget slice.
    m2 = _machine(bytes(3) + image, base=3, bound=len(image))
    differential_run(m2, [3, 1, 2, 1000], [0], jit.run, reference.run)


def test_byte_store_into_the_next_instruction() -> None:
    """stb changing the opcode byte of the very next instruction."""
    image = asm(
        """
                addi    r4, r0, HALT
                stb     r4, 4 * 3 + 3(r0)   # the opcode byte of the next instruction but one
                addi    r1, r0, 7
                addi    r1, r0, 9           # becomes halt with stray bits in the low 24: ILLEGAL
                halt
        """,
        HALT=spec.BY_MNEMONIC["halt"].opcode,
    )
    m = _machine(image, ivt=4 * 4)
    _both(m, [100])


def _timer_program(period: int, reload: int, spins: int, ie: int, user: bool) -> bytes:
    """A periodic timer and its interrupt handler, a loop reading cycle and timer, then wfi until idle."""
    source = """
                jal     r0, main
        handler:                            # count interrupts in r5, re-arm the timer with r6, return
                addi    r5, r5, 1
                mfcr    r4, timer
                mtcr    timer, r6
                iret
        main:   addi    r7, r0, handler
                mtcr    ivt, r7
                addi    r6, r0, PERIOD
                mtcr    timer, r6
                addi    r6, r0, RELOAD
        # with USER, drop to user mode (the profile lets it read cycle and timer) at "work"
        .if USER
                li      r8, 0
                mtcr    ebase, r8
                li      r8, 0x1000
                mtcr    ebound, r8
                li      r8, IE
                mtcr    epsw, r8
                addi    r9, r0, work
                mtcr    epc, r9
                iret
        .else
                addi    r8, r0, PSW_S | IE
                mtcr    psw, r8
        .endif
        work:   addi    r9, r0, SPINS
        spin:   mfcr    r10, cycle
                mfcr    r11, timer
                addi    r9, r9, -1
                bge     r9, r0, spin
                wfi
                wfi
                mfcr    r12, cycle
                addi    r6, r0, 0           # the next interrupt stops the timer
                wfi
                wfi                         # nothing can end this one unless interrupts are off: EXIT_IDLE
                halt
    """
    return asm(source, PERIOD=period, RELOAD=reload, SPINS=spins, IE=ie, USER=int(user), PSW_S=spec.PSW_S)


def test_timer_interrupts_and_wfi() -> None:
    """A periodic timer with an interrupt handler, reads of cycle and timer, and wfi skipping ahead."""
    m = _machine(_timer_program(7, 7, 40, spec.PSW_IE, False))
    for budgets in ([10_000], [1] * 400, [5, 3, 17, 2, 1, 1000]):
        codes = _both(m.copy(), budgets)
        assert S.EXIT_IDLE in codes


@given(
    st.integers(0, 40),
    st.integers(0, 40),
    st.integers(0, 30),
    st.sampled_from([0, spec.PSW_IE]),
    st.booleans(),
    st.integers(0, 3),
    BUDGETS,
)
def test_random_timer_programs(
    period: int, reload: int, spins: int, ie: int, user: bool, flags: int, budgets: list[int]
) -> None:
    m = _machine(_timer_program(period, reload, spins, ie, user), flags=flags)
    m.state[S.PROFILE : S.PROFILE + len(spec.PROFILE_KEYS)] = spec.EXECUTE
    differential_run(m, budgets, [1, 2, 3], jit.run, reference.run)


def test_wfi_with_traps_to_host_and_pending_device() -> None:
    image = asm("wfi\nwfi\nhalt")
    for flags, pending, timer in [(1, 0, 5), (0, 2, 0), (0, 0, 9), (1, 2, 0), (0, 0, 0), (2, 1, 3)]:
        m = _machine(image, flags=flags, pending=pending, timer=timer, psw=1, devnum=77)
        _both(m, [1, 1, 1, 5, 5])


@pytest.mark.parametrize("flags", [0, S.F_TRAPS_TO_HOST, S.F_HCALL_TO_HOST, 3])
def test_traps_host_flags_and_io(flags: int) -> None:
    image = asm(
        """
                addi    r1, r0, 65
                out     0, r1
                in      r2, 0
                hcall   42
                syscall 7
                brk     9
                .word   0               # ILLEGAL
                div     r3, r1, r0      # DIVZERO
                ld      r3, 0(r1)       # ALIGN (65)
                ld      r3, -4(r0)      # MEM
                jalr    r0, 2(r0)       # to a misaligned address: the fetch raises ALIGN
        """
    )
    m = _machine(image, flags=flags, ivt=0x800)
    load(m.mem, b"".join(w.to_bytes(4, "little") for w in _skip_handler()), 0x800)
    differential_run(m, [3, 50, 50, 50, 50, 50, 50, 50, 50, 50], [5, 3, 6], jit.run, reference.run)


def _skip_handler() -> list[int]:
    return skip_handler(rearm_timer=False)


def test_relocated_user_program_with_profiles() -> None:
    """User mode inside a window; every profile key set to each behaviour in turn."""
    every_cr = "\n".join(f"mfcr r1, {cr}\nmtcr {cr}, r2" for cr in spec.CR_NAMES)
    image = asm(every_cr + "\ngetpsw r3\ngetbase r3\nsetpsw r4\nin r5, 1\nout 1, r5\nwfi\niret\nhalt")
    for behaviour in (spec.TRAP, spec.EXECUTE, spec.IGNORE):
        m = _machine(bytes(0x100) + image, memsize=0x100 + len(image) + 64, base=0x100, bound=len(image), psw=0,
                     ivt=0x40, timer=50, ebase=0x100, ebound=len(image))  # fmt: skip
        m.state[S.PROFILE : S.PROFILE + len(spec.PROFILE_KEYS)] = behaviour
        m.state[2] = 0x10  # mtcr writes: small values (timer 16, psw 0, base/bound 16, ...)
        load(m.mem, b"".join(w.to_bytes(4, "little") for w in _skip_handler()), 0x40)
        differential_run(m, [20] * 30, [1, 2], jit.run, reference.run)


def test_budget_zero_and_negative() -> None:
    m = _machine(sieve_program(n=64, flags=0x400), memsize=0x400 + 64, pending=1, psw=3)
    _both(m, [0, -5, 1, 0, 2])


def test_r0_stays_zero() -> None:
    image = asm(
        """
                addi    r0, r0, 5
                lui     r0, 1
                jal     r0, next
        next:   ldbu    r0, 0(r0)
                mfcr    r0, cycle
                add     r1, r0, r0
                halt
        """
    )
    m = _machine(image)
    _both(m, [100])


# --- the core as a compiled, cached function --------------------------------------------------------------


def test_exit_codes_are_plain_ints_and_budget_types() -> None:
    m = _machine(sieve_program(n=64, flags=0x400), memsize=0x400 + 64)
    assert isinstance(jit.run(m.state, m.mem, np.int64(3)), int)
    assert jit.run(m.state, m.mem, 10**6) == S.EXIT_HALT


def test_warmup_returns_seconds() -> None:
    assert jit.warmup() >= 0.0


def test_second_process_loads_from_cache() -> None:
    """After a compile, a new process takes the core from the on-disk cache instead of compiling it."""
    jit.warmup()  # compiled (and saved) in this process, if it was not already cached
    code = textwrap.dedent(
        """
        from popek.cores import jit
        jit.warmup()
        print(len(jit.run.stats.cache_hits), len(jit.run.stats.cache_misses))
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, check=True)
    hits, misses = map(int, out.stdout.split())
    assert hits >= 1 and misses == 0, out.stdout + out.stderr


def test_host_action_is_shared_with_other_core_tests() -> None:
    """host_action (tests/strategies.py) keeps a machine going after every kind of exit."""
    state = S.new_state(64)
    assert host_action(state, S.EXIT_BUDGET, 0)
    assert not host_action(state, S.EXIT_HALT, 0)


def test_cache_dir_fallbacks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Numba's own cache places first; a popek directory when neither is writable; no cache when nothing is."""
    monkeypatch.setattr(numba_cache.numba.config, "CACHE_DIR", "")
    monkeypatch.setattr(numba_cache, "writable", lambda path: True)
    assert numba_cache.fallback_cache_dir() is None  # the package's __pycache__
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(numba_cache, "writable", lambda path: path.startswith(str(tmp_path / "popek")))
    assert numba_cache.fallback_cache_dir() == str(tmp_path / "popek" / "numba")
    monkeypatch.setattr(numba_cache, "writable", lambda path: False)
    assert numba_cache.fallback_cache_dir() == ""
    monkeypatch.setattr(numba_cache.numba.config, "CACHE_DIR", str(tmp_path))
    assert numba_cache.fallback_cache_dir() is None  # NUMBA_CACHE_DIR set: Numba uses it


def test_a_changed_dependency_drops_the_cache(tmp_path: Path) -> None:
    """Code compiled in from another file (the IR fast loop, constants) invalidates the cache when it changes."""
    flushed = []

    class FakeCache:
        cache_path = str(tmp_path)

        def flush(self) -> None:
            flushed.append(True)

    function = SimpleNamespace(_cache=FakeCache())
    dependency = tmp_path / "dependency.py"
    dependency.write_text("A = 1\n")
    module = SimpleNamespace(__file__=str(dependency))
    assert numba_cache.drop_stale_cache([function], (module,), "jit")  # no digest recorded yet
    assert not numba_cache.drop_stale_cache([function], (module,), "jit")
    dependency.write_text("A = 2\n")
    assert numba_cache.drop_stale_cache([function], (module,), "jit") and len(flushed) == 2


def test_the_core_records_what_its_cache_was_built_from() -> None:
    """The digest kept beside the cache covers every file compiled in: the IR fast loop, the instruction
    table, the state layout and the decode tables."""
    assert set(jit.DEPENDENCIES) == {jit.threaded, spec, S, gen_tables}
    cache_path = jit.run._cache.cache_path
    if not isinstance(cache_path, str):
        pytest.skip("compiled without an on-disk cache here")
    sources = b"".join(Path(m.__file__).read_bytes() for m in jit.DEPENDENCIES)
    assert (Path(cache_path) / "jit.dependencies").read_text() == hashlib.sha256(sources).hexdigest()
