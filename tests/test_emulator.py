"""The emulator (popek/cores/emulator.py) against the reference core: same exits, state, memory and console.

It is held to the reference core three ways: as a core (``run``) on random machines, budgets and profiles; as
the virtual CPU of a VM (``VM.emulate``, console output inside the compiled loop) against the reference core
driven the way ``VM.emulate`` drove it before; and on every bundled guest, run to its end.
"""

from __future__ import annotations

import functools
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

from popek.cores import emulator, numba_cache, reference
from popek.cores.c import gen_tables
from popek.isa import spec
from popek.isa import state as S
from popek.isa.asm import assemble_file
from popek.vmm.host import GuestSpec, Host
from popek.vmm.host import Machine as BareMachine
from popek.vmm.vm import VM
from tests.strategies import BUDGETS, Machine, asm, assert_same, differential_run, load, machines, sieve_program

M32 = 0xFFFFFFFF
VALUES = st.lists(st.integers(0, M32), min_size=1, max_size=4)
ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "guests"


def _machine(image: bytes, memsize: int = 4096, **slots: int) -> Machine:
    mem = np.zeros(memsize, dtype=np.uint8)
    load(mem, image)
    state = S.new_state(memsize)
    for name, value in slots.items():
        state[getattr(S, name.upper())] = value
    return Machine(state, mem)


# --- as a core: run(state, mem, budget) -----------------------------------------------------------------


@pytest.mark.parametrize("until_user", [False, True], ids=["run", "until_user"])
@given(machines(), BUDGETS, VALUES)
def test_random_machines_match_reference(until_user: bool, m: Machine, budgets: list[int], values: list[int]) -> None:
    """Random machines in either mode, under random profiles and host flags, run in several calls; with
    ``until_user`` also the hybrid monitor's stop before the first step in user mode."""
    core = functools.partial(emulator.run, until_user=until_user)
    differential_run(m, budgets, values, core, functools.partial(reference.run, until_user=until_user))


@given(machines(), st.lists(st.integers(1, 60), min_size=1, max_size=12))
def test_budget_split_does_not_matter(m: Machine, slices: list[int]) -> None:
    """Running in slices gives what one run of the whole budget gives on the reference core."""
    whole = m.copy()
    code = reference.run(whole.state, whole.mem, sum(slices))
    split = m.copy()
    for budget in slices:
        c = emulator.run(split.state, split.mem, budget)
        if c != S.EXIT_BUDGET:
            break
    assert_same(whole, split, code, c, f"slices {slices}")


@given(machines(), st.integers(0, M32))
def test_user_mode_system_instructions_follow_the_profile(m: Machine, value: int) -> None:
    m.state[S.PSW] &= ~spec.PSW_S
    differential_run(m, [50, 50, 50, 50], [value], emulator.run, reference.run)


@given(machines(), st.integers(0, 200))
def test_weird_control_registers_match_reference(m: Machine, budget: int) -> None:
    """Out-of-range values in CR slots (negative, above 32 bits) are read as the reference reads them."""
    rng = np.random.default_rng(budget)
    for slot in (S.PC, S.BASE, S.BOUND, S.IVT, S.EPC, S.EBASE, S.EBOUND, S.EPSW, S.PSW):
        if rng.integers(0, 4) == 0:
            m.state[slot] = int(rng.integers(-(1 << 40), 1 << 40))
    differential_run(m, [budget, budget], [0], emulator.run, reference.run)


@given(st.lists(st.integers(-(1 << 63), (1 << 63) - 1), min_size=S.NSLOTS, max_size=S.NSLOTS), st.integers(0, 64))
def test_arbitrary_state_never_escapes(slots: list[int], budget: int) -> None:
    """Any values at all in the state: the emulator stays inside ``mem`` and returns an exit code."""
    state = np.array(slots, dtype=np.int64)
    state[S.FLAGS] &= ~(S.F_REWRITE | S.F_PV)  # those run on the reference core
    mem = np.random.default_rng(budget).integers(0, 256, 256, dtype=np.uint8)
    assert 0 <= emulator.run(state, mem, budget) < len(S.EXIT_NAMES)


@pytest.mark.parametrize("flags", [S.F_REWRITE, S.F_PV])
def test_processor_extensions_run_on_the_reference_core(flags: int) -> None:
    m = _machine(sieve_program(n=64, flags=0x400), memsize=0x400 + 64, flags=flags)
    differential_run(m, [7, 100, 10_000], [0], emulator.run, reference.run)


def test_timer_wfi_and_cycle_reads() -> None:
    """wfi skipping ahead to the timer, interrupts at the same instruction, cycle and timer as mfcr reads them."""
    image = asm(
        """
                la      r1, handler
                mtcr    ivt, r1
                addi    r1, r0, 3               # S | IE
                mtcr    psw, r1
                addi    r2, r0, 9
                mtcr    timer, r2
                mfcr    r3, timer
                mfcr    r4, cycle
                wfi                             # skips to the timer's expiry
                addi    r2, r0, 5
                mtcr    timer, r2
        spin:   addi    r5, r5, 1
                addi    r6, r0, 40
                blt     r5, r6, spin
                mtcr    timer, r0
                addi    r1, r0, 1               # S, IE off
                mtcr    psw, r1
                wfi                             # nothing can end it: EXIT_IDLE
                halt
        handler:
                mfcr    r7, cycle
                addi    r8, r8, 1
                mtcr    timer, r2
                iret
        """
    )
    for budgets in ([10_000], [1] * 300, [5, 3, 17, 2, 1, 1000]):
        m = _machine(image)
        assert S.EXIT_IDLE in differential_run(m, budgets, [0], emulator.run, reference.run)


@pytest.mark.parametrize("flags", [0, S.F_TRAPS_TO_HOST, S.F_HCALL_TO_HOST, S.F_TRAPS_TO_HOST | S.F_HCALL_TO_HOST])
def test_every_trap_and_exit(flags: int) -> None:
    image = asm(
        """
                addi    r1, r0, 65
                out     0, r1
                in      r2, 0
                out     7, r1
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
    handler = asm(
        """
                mfcr    r11, epc
                addi    r11, r11, 4
                mtcr    epc, r11
                iret
        """
    )
    m = _machine(image, flags=flags, ivt=0x800)
    load(m.mem, handler, 0x800)
    differential_run(m, [3, 50, 50, 50, 50, 50, 50, 50, 50, 50], [5, 3, 6], emulator.run, reference.run)


def test_division_corners_and_r0() -> None:
    image = asm(
        """
                lui     r1, 0x8000              # INT_MIN
                addi    r2, r0, -1
                div     r3, r1, r2
                rem     r4, r1, r2
                divu    r5, r1, r2
                remu    r6, r2, r1
                addi    r7, r0, -7
                addi    r8, r0, 2
                div     r9, r7, r8
                rem     r10, r7, r8
                sar     r11, r1, r8
                sari    r12, r7, 1
                slti    r13, r7, -6
                sltiu   r14, r7, -6
                addi    r0, r0, 5
                ldb     r15, 0(r0)
                add     r1, r0, r0
                halt
        """
    )
    differential_run(_machine(image), [100], [0], emulator.run, reference.run)


# --- as the virtual CPU of a VM: VM.emulate, with the console inside the compiled loop --------------------


def _vm(m: Machine, console_input: bytes) -> VM:
    vm = VM("guest", m.mem.copy(), 0, len(m.mem), console_input=console_input)
    vm.vstate[:] = m.state
    vm.vstate[S.FLAGS] = 0  # a virtual CPU has no host flags
    return vm


def _reference_emulate(vm: VM, budget: int, until_user: bool) -> int:
    """VM.emulate as it was before the emulator: the reference core, every out leaving it for the host."""
    v = vm.vstate
    start, done = int(v[S.STEPS]), 0
    while not vm.stopped and done < budget and not (until_user and not vm.supervisor):
        vm.device_exit(reference.run(v, vm.mem, budget - done, until_user))
        done = int(v[S.STEPS]) - start
    return done


def _same_vms(a: VM, b: VM, where: str) -> None:
    assert_same(Machine(a.vstate, a.mem), Machine(b.vstate, b.mem), 0, 0, where)
    assert a.console.output == b.console.output, where
    assert (a.halted, a.error, a.waiting) == (b.halted, b.error, b.waiting), where


@given(machines(), BUDGETS, st.binary(max_size=6), st.booleans(), st.sampled_from([1, 3, 4096]))
def test_vm_emulation_matches_the_reference_host(
    m: Machine, budgets: list[int], console_input: bytes, until_user: bool, room: int
) -> None:
    """Console output written inside the compiled loop (in buffers of any size) comes out in the same order, with
    the same state, as the reference core exiting to the host for every ``out``."""
    ref, emu = _vm(m, console_input), _vm(m, console_input)
    emu.console_out = np.zeros(room, dtype=np.uint8)
    for i, budget in enumerate(budgets):
        assert emu.emulate(budget, until_user) == _reference_emulate(ref, budget, until_user)
        _same_vms(ref, emu, f"call {i} (budget {budget})")


def test_console_output_and_input_keep_their_order() -> None:
    """Bytes written before an ``in`` reach the console before the host performs the ``in``; a full buffer
    hands the next byte to the host, which writes it after those already buffered."""
    image = asm(
        """
                la      r2, text
        loop:   ldbu    r1, 0(r2)
                beq     r1, r0, echo
                out     0, r1
                addi    r2, r2, 1
                jal     r0, loop
        echo:   in      r1, 0
                blt     r1, r0, done            # 0xFFFFFFFF < 0 as signed: no more input
                addi    r1, r1, 1
                out     0, r1
                jal     r0, echo
        done:   halt
        text:   .asciz  "0123456789"
        """
    )
    for room in (1, 4, 4096):
        ref, emu = _vm(_machine(image), b"abc"), _vm(_machine(image), b"abc")
        emu.console_out = np.zeros(room, dtype=np.uint8)
        ref_steps, emu_steps = _reference_emulate(ref, 10_000, False), emu.emulate(10_000)
        assert emu.console.output == b"0123456789bcd" and emu.halted and emu_steps == ref_steps
        _same_vms(ref, emu, f"room {room}")


def test_emulate_one_is_one_step() -> None:
    """The monitors' single-instruction emulation: one step per call, the console written in the call."""
    image = asm("addi r1, r0, 72\nout 0, r1\nsyscall 3\n.org 0x100\nhalt")
    vm = _vm(_machine(image, ivt=0x100), b"")
    assert [vm.emulate_one() for _ in range(4)] == [1, 1, 1, 1]
    assert vm.console.output == b"H" and vm.halted and vm.stats.emulated == 4


# --- every bundled guest, to its end --------------------------------------------------------------------

GUEST_FILES = sorted(p.relative_to(GUESTS).as_posix() for p in (GUESTS / "programs").glob("*.s") if p.name != "lib.s")


@pytest.mark.parametrize("path", [*GUEST_FILES, "kernel/kernel.s"])
def test_bundled_guests_under_full_emulation_match_the_reference_core(path: str) -> None:
    """Each guest to its end (halt, or waiting for the network card): console, every state slot, memory."""
    image = assemble_file(str(GUESTS / path)).image
    memsize = 1 << 20
    bare = BareMachine(memsize, "classic", "reference")
    bare.load(image)
    expected = bare.run()
    host = Host([GuestSpec("guest", image, "full", "classic", memsize)])
    result = host.run()[0]
    vm = host.vms[0]
    assert (result.exit, result.console, result.status) == (expected.exit, expected.console, expected.status)
    assert_same(Machine(bare.state, bare.mem), Machine(vm.vstate, vm.mem), 0, 0, path)


# --- compiled once, cached on disk ----------------------------------------------------------------------


def test_second_process_loads_the_emulator_from_the_cache() -> None:
    emulator.warmup()  # compiled (and saved) in this process, if it was not already cached
    code = textwrap.dedent(
        """
        from popek.cores import emulator
        emulator.warmup()
        print(len(emulator.interpret.stats.cache_hits), len(emulator.interpret.stats.cache_misses))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    hits, misses = map(int, out.stdout.split())
    assert hits >= 1 and misses == 0, out.stdout + out.stderr


def test_the_emulator_records_what_its_cache_was_built_from() -> None:
    assert set(emulator.DEPENDENCIES) == {spec, S, gen_tables}
    cache_path = emulator.interpret._cache.cache_path
    if not isinstance(cache_path, str):
        pytest.skip("compiled without an on-disk cache here")
    sources = b"".join(Path(m.__file__).read_bytes() for m in emulator.DEPENDENCIES)
    assert (Path(cache_path) / "emulator.dependencies").read_text() == hashlib.sha256(sources).hexdigest()


def test_a_changed_dependency_drops_the_cache(tmp_path: Path) -> None:
    """Each set of compiled functions keeps its own digest, so two cores in one directory do not drop each other's."""
    flushed = []

    class FakeCache:
        cache_path = str(tmp_path)

        def flush(self) -> None:
            flushed.append(True)

    function = SimpleNamespace(_cache=FakeCache())
    dependency = tmp_path / "dependency.py"
    dependency.write_text("A = 1\n")
    module = SimpleNamespace(__file__=str(dependency))
    assert numba_cache.drop_stale_cache([function], (module,), "one")  # no digest recorded yet
    assert not numba_cache.drop_stale_cache([function], (module,), "one")
    assert numba_cache.drop_stale_cache([function], (module,), "two")  # another name: its own digest
    assert not numba_cache.drop_stale_cache([function], (module,), "one")
    dependency.write_text("A = 2\n")
    assert numba_cache.drop_stale_cache([function], (module,), "one") and len(flushed) == 3
