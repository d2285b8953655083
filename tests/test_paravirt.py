"""The paravirtual monitor (``pv``), its HAL and the processor's paravirtual support in every core.

- the cores: random machines with ``F_PV`` set run identically on the reference, JIT and C cores, in any
  budget split and from any state; hand-written machines show each rule (the trap gate and its frame, the
  fast hypercalls, the mask sampled at timer expiry and after hypercalls) with the values the rules predict;
- the guest: the kernel's PV build assembles no sensitive instruction, and its HAL agrees with the monitor;
- the monitor: the PV kernel prints what the native kernel prints on the bare machine (per task), on both
  profiles and every core; the processor's help changes nothing the guest can see, only the exits; every
  hypercall does what docs/paravirt.md says, errors included; a guest without the boot note runs exactly as
  on the bare machine (its hcall is ILLEGAL); and pv takes fewer exits than the monitors that run the native
  builds directly.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from popek.cli import main as popek
from popek.cores import c as c_core
from popek.cores import dbt, jit, reference
from popek.isa import spec
from popek.isa import state as S
from popek.isa.asm import Program, assemble, assemble_file
from popek.isa.spec import ILLEGAL, MEM_FAULT, PSW_IE, PSW_S, SYSCALL, TIMER_IRQ, decode
from popek.vmm.host import GuestSpec, Host
from popek.vmm.host import Machine as BareMachine
from popek.vmm.monitors import paravirt as pv
from tests.strategies import (
    BUDGETS,
    Machine,
    assert_same,
    differential_run,
    instruction_words,
    load,
    machines,
    translating_after,
)
from tests.test_monitors import GUEST_FILES, assert_equivalent, bare_run, vm_run

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "guests"
KERNEL = GUESTS / "kernel" / "kernel.s"
HAL_DIR = GUESTS / "kernel"
M32 = S.MASK32


def dbt_at_once(state: np.ndarray, mem: np.ndarray, budget: int) -> int:
    """The translating core, translating code the first time it is reached (short runs exercise translations)."""
    with translating_after(1):
        return dbt.run(state, mem, budget)


CORES = [("jit", jit.run), ("dbt", dbt_at_once)] + ([("c", c_core.run)] if c_core.available() else [])
CORE_NAMES = ["reference", "jit", "dbt"] + (["c"] if c_core.available() else [])
VALUES = st.lists(st.integers(0, M32), min_size=1, max_size=4)


def hcall(n: int) -> int:
    return spec.encode(spec.BY_MNEMONIC["hcall"], imm=n)


# --- the cores ----------------------------------------------------------------------------------------------


@st.composite
def pv_machines(draw: st.DrawFn) -> Machine:
    """A random machine (tests/strategies.py) with the paravirtual support configured, mostly validly."""
    m = draw(machines())
    s, mem = m.state, m.mem
    memsize = len(mem)
    if draw(st.integers(0, 9)):
        s[S.FLAGS] |= S.F_PV
    valid = st.integers(0, (memsize - S.SH_CORE_BYTES) // 4).map(lambda w: 4 * w)
    invalid = st.sampled_from([-4, 2, memsize - S.SH_CORE_BYTES + 4, memsize, 1 << 40])
    s[S.PV_SHARED] = draw(st.one_of(valid, valid, valid, invalid))
    s[S.PV_ENTRY] = draw(st.one_of(st.integers(0, memsize // 4).map(lambda w: 4 * w), st.integers(0, M32)))
    kbase = draw(st.one_of(st.just(0), st.integers(0, memsize // 2), st.integers(0, M32)))
    s[S.PV_KBASE] = kbase
    s[S.PV_KBOUND] = draw(st.one_of(st.just(max(0, memsize - kbase)), st.just(memsize), st.integers(0, M32)))
    s[S.PV_KMODE] = draw(st.sampled_from([0, 1, 1, 1, 5]))
    causes = [spec.SYSCALL, spec.PRIV, ILLEGAL, MEM_FAULT, spec.ALIGN, spec.DIVZERO, spec.BREAK, TIMER_IRQ]
    s[S.PV_DIRECT] = draw(st.one_of(st.lists(st.sampled_from(causes)).map(lambda cs: sum({1 << c for c in cs})),
                                    st.integers(-(1 << 20), 1 << 20)))  # fmt: skip
    s[S.PV_FAST] = draw(st.one_of(st.just(7), st.integers(0, 7), st.integers(-8, 1 << 10)))
    if 0 <= s[S.PV_SHARED] <= memsize - S.SH_CORE_BYTES and s[S.PV_SHARED] % 4 == 0:
        sh = int(s[S.PV_SHARED])
        frame = [draw(st.sampled_from([0, 1, 7])), draw(st.integers(0, 1)), draw(st.integers(0, 16)) * 4,
                 draw(st.integers(0, 3)), draw(st.integers(0, memsize)), draw(st.integers(0, memsize + 8)),
                 draw(st.integers(0, 20)), draw(st.integers(0, M32))]  # fmt: skip
        load(mem, np.array(frame, dtype="<u4").tobytes(), sh)
    where = (int(s[S.BASE]) & M32) + (int(s[S.PC]) & M32)  # where the program runs (tests/strategies.py)
    for _ in range(draw(st.integers(0, 8))):  # fast hypercalls early in the program, or anywhere
        k = draw(st.one_of(st.integers(0, 4), st.integers(0, memsize // 4)))
        at = where + 4 * k if k <= 4 else 4 * k
        if at + 4 <= memsize:
            load(mem, hcall(draw(st.sampled_from([0, 0, 1, 2, 3]))).to_bytes(4, "little"), at)
    if draw(st.booleans()):  # the guest kernel's entry: the program itself (where the hypercalls are)
        s[S.PV_ENTRY] = (where - kbase) & M32
    return m


def _word(mnemonic: str, a: int = 0, b: int = 0, imm: int = 0) -> int:
    return spec.encode(spec.BY_MNEMONIC[mnemonic], a, b, 0, imm)


@st.composite
def pv_scenarios(draw: st.DrawFn) -> Machine:
    """A guest kernel and a task that do what PV guests do, at random: system calls, the three fast
    hypercalls, the timer, masking and unmasking with plain stores, among ordinary instructions."""
    memsize, sh, task = 2048, 0x700, 0x400
    calls = st.sampled_from([hcall(0), hcall(0), hcall(1), hcall(2), _word("syscall", imm=3)])
    pieces = st.one_of(
        calls,
        calls,
        st.sampled_from([_word("st", 0, 0, sh), _word("st", 5, 0, sh), _word("ld", 6, 0, sh + 4)]),  # mask, pending
        st.integers(0, 40).map(lambda n: _word("addi", 1, 0, n)),  # the timer's argument
        instruction_words(),
    )
    mem = np.zeros(memsize, dtype=np.uint8)
    for at, length in ((0, 24), (0x100, 16), (task, 16)):  # kernel, its entry, the task
        words = draw(st.lists(pieces, min_size=4, max_size=length))
        words.append(_word("jal", imm=-len(words)))
        load(mem, np.array(words, dtype="<u4").tobytes(), at)
    frame = [draw(st.integers(0, 1)), 0, 4 * draw(st.integers(0, 4)), draw(st.integers(0, 3)), task,
             draw(st.sampled_from([0x40, 0x100, memsize])), 0, 0]  # fmt: skip
    load(mem, np.array(frame, dtype="<u4").tobytes(), sh)
    state = S.new_state(memsize)
    state[S.PSW] = draw(st.integers(0, 3))
    state[5] = 1
    state[S.TIMER] = draw(st.one_of(st.just(0), st.integers(1, 60)))
    state[S.FLAGS] = S.F_PV | draw(st.sampled_from([0, 1, 3, 3]))
    state[S.PV_SHARED], state[S.PV_ENTRY], state[S.PV_KBASE], state[S.PV_KBOUND] = sh, 0x100, 0, memsize
    state[S.PV_KMODE] = draw(st.sampled_from([0, 1, 1]))
    state[S.PV_DIRECT] = draw(st.sampled_from([pv.DIRECT, pv.DIRECT, -1, 1 << SYSCALL, 1 << TIMER_IRQ]))
    state[S.PV_FAST] = draw(st.sampled_from([pv.FAST, pv.FAST, 1, 2, 5]))
    if state[S.PV_KMODE] == 0:
        state[S.BASE], state[S.BOUND] = task, 0x100
    return Machine(state, mem)


@pytest.mark.parametrize("name,core", CORES)
@given(m=pv_scenarios(), budgets=BUDGETS, values=VALUES)
def test_random_pv_scenarios_match_reference(name: str, core: object, m: Machine, budgets: list, values: list) -> None:
    differential_run(m, budgets, values, core, reference.run)


@pytest.mark.parametrize("name,core", CORES)
@given(m=pv_machines(), budgets=BUDGETS, values=VALUES)
def test_random_pv_machines_match_reference(name: str, core: object, m: Machine, budgets: list, values: list) -> None:
    differential_run(m, budgets, values, core, reference.run)


@pytest.mark.parametrize("name,core", CORES)
@given(m=pv_machines(), slices=st.lists(st.integers(1, 60), min_size=1, max_size=12))
def test_pv_budget_split_does_not_matter(name: str, core: object, m: Machine, slices: list[int]) -> None:
    whole = m.copy()
    code = reference.run(whole.state, whole.mem, sum(slices))
    split = m.copy()
    for budget in slices:
        c = core(split.state, split.mem, budget)
        if c != S.EXIT_BUDGET:
            break
    assert_same(whole, split, code, c, f"slices {slices}")


@pytest.mark.parametrize("name,core", CORES)
@given(slots=st.lists(st.integers(-(1 << 63), (1 << 63) - 1), min_size=S.NSLOTS, max_size=S.NSLOTS),
       shared=st.integers(0, 56), budget=st.integers(0, 64))  # fmt: skip
def test_pv_arbitrary_state_never_escapes(name: str, core: object, slots: list, shared: int, budget: int) -> None:
    """Any values in the state, the support active: the core stays inside ``mem`` and returns an exit code."""
    state = np.array(slots, dtype=np.int64)
    state[S.STEPS] = 0
    state[S.CYCLE] &= (1 << 40) - 1
    state[S.FLAGS] |= S.F_PV
    state[S.PV_SHARED] = 4 * shared
    mem = np.random.default_rng(budget).integers(0, 256, 256, dtype=np.uint8)
    assert 0 <= core(state, mem, budget) < len(S.EXIT_NAMES)


SH = 0x800  # the shared area of the hand-written machines below
MEMSIZE = 0x1000


def pv_machine(source: str, **slots: int) -> Machine:
    """A bare-metal machine in the paravirtual setting: the kernel context at pc 0, virtual interrupts masked."""
    program = assemble(f".equ SH, {SH}\n" + source)
    mem = np.zeros(MEMSIZE, dtype=np.uint8)
    load(mem, program.image)
    load(mem, (1).to_bytes(4, "little"), SH + S.SH_MASK)
    state = S.new_state(MEMSIZE)
    state[S.PSW] = 0
    state[S.FLAGS] = S.F_TRAPS_TO_HOST | S.F_HCALL_TO_HOST | S.F_PV
    state[S.PV_SHARED], state[S.PV_ENTRY] = SH, program.symbols.get("kentry", 0)
    state[S.PV_KBASE], state[S.PV_KBOUND], state[S.PV_KMODE] = 0, MEMSIZE, 1
    state[S.PV_DIRECT], state[S.PV_FAST] = pv.DIRECT, pv.FAST
    for name, value in slots.items():
        state[getattr(S, name.upper())] = value
    return Machine(state, mem)


def shared_word(m: Machine, offset: int) -> int:
    return int.from_bytes(m.mem[SH + offset : SH + offset + 4].tobytes(), "little")


def run_everywhere(m: Machine, budget: int) -> tuple[int, Machine]:
    """Run on the reference core, then on every other core, which must agree; return the reference's result."""
    ref = m.copy()
    code = reference.run(ref.state, ref.mem, budget)
    for name, core in CORES:
        other = m.copy()
        assert_same(ref, other, code, core(other.state, other.mem, budget), name)
    return code, ref


SYSCALLS = """
        li      r4, 0x400                   # a task at 0x400: R = (0x400, 0x100), user mode, IE
        st      r4, SH + 16(zero)
        li      r4, 0x100
        st      r4, SH + 20(zero)
        st      zero, SH + 8(zero)
        li      r4, 2
        st      r4, SH + 12(zero)
        hcall   0                           # HC_IRET
kentry: addi    r9, r9, 1                   # a system call: count it, return after it
        ld      r4, SH + 8(zero)
        addi    r4, r4, 4
        st      r4, SH + 8(zero)
        hcall   0
        .org    0x400
        syscall 5
        syscall 6
        syscall 7
1:      j       1b
"""


def test_syscalls_enter_the_guest_kernel_and_return_without_exits() -> None:
    code, m = run_everywhere(pv_machine(SYSCALLS), 40)
    s = m.state
    assert code == S.EXIT_BUDGET and s[9] == 3  # three system calls, no exit
    assert s[S.PV_NTRAPS] == 3 and s[S.PV_NCALLS + S.HC_IRET] == 4
    assert (s[S.BASE], s[S.BOUND], s[S.PV_KMODE]) == (0x400, 0x100, 0)  # back in the task, relocated
    assert s[S.PSW] == PSW_IE and shared_word(m, S.SH_MASK) == 0  # the task's virtual IE
    frame = [shared_word(m, o) for o in (S.SH_EPC, S.SH_EPSW, S.SH_EBASE, S.SH_EBOUND, S.SH_CAUSE, S.SH_BADADDR)]
    assert frame == [12, PSW_IE, 0x400, 0x100, SYSCALL, 7]  # the last call's frame (epc moved on by the kernel)


def test_without_the_flag_or_with_a_bad_shared_area_the_hcall_exits() -> None:
    for slots in ({"flags": S.F_TRAPS_TO_HOST | S.F_HCALL_TO_HOST}, {"pv_shared": SH + 2}, {"pv_shared": MEMSIZE - 28},
                  {"pv_fast": 0}, {"pv_kmode": 0}):  # fmt: skip
        code, m = run_everywhere(pv_machine(SYSCALLS, **slots), 40)
        assert code == S.EXIT_HCALL and m.state[S.XCAUSE] == 0 and m.state[S.PC] == 28, slots


MASKED_TIMER = """
        li      r1, 5
        hcall   1                           # HC_SET_TIMER: expires after 5 more retirements, masked
        nop
        nop
        nop
        nop
        nop                                 # the 5th: the timer expires
        ld      r6, SH + 4(zero)            # the shared pending word says so
        st      zero, SH + 0(zero)          # unmask with a plain store: nothing happens yet
        nop
        li      r7, 1
        hcall   2                           # HC_IRQ: the interrupt is taken after it
        li      r7, 2
kentry: j       kentry
"""


def test_a_masked_timer_waits_for_the_guest_to_ask() -> None:
    code, m = run_everywhere(pv_machine(MASKED_TIMER), 30)
    s = m.state
    assert code == S.EXIT_BUDGET and (s[6], s[7]) == (1, 1)
    assert s[S.PC] == m.state[S.PV_ENTRY] and s[S.PV_NIRQS] == 1 and s[S.PENDING] & S.PEND_TIMER
    frame = [shared_word(m, o) for o in (S.SH_EPC, S.SH_EPSW, S.SH_CAUSE, S.SH_MASK)]
    assert frame == [4 * 12, PSW_S | PSW_IE, TIMER_IRQ, 1]  # taken after the hcall, from the unmasked kernel


def test_an_unmasked_timer_is_taken_where_it_expires() -> None:
    source = MASKED_TIMER.replace(
        "nop                                 # the 5th: the timer expires", "st zero, SH(zero)"
    )
    code, m = run_everywhere(pv_machine(source), 30)
    assert code == S.EXIT_BUDGET and m.state[6] == 0  # interrupted before the load
    assert shared_word(m, S.SH_EPC) == 4 * 7 and shared_word(m, S.SH_PENDING) == 1


def test_hc_set_timer_clears_a_pending_timer_and_does_not_tick_itself() -> None:
    source = "li r1, 3\nhcall 1\nnop\nnop\nnop\nli r1, 2\nhcall 1\nkentry: j kentry\n"
    code, m = run_everywhere(pv_machine(source, psw=PSW_IE), 5)
    assert (m.state[S.TIMER], m.state[S.PENDING], shared_word(m, S.SH_PENDING)) == (0, 1, 1)  # expired, masked
    assert m.state[S.PSW] == 0  # the mask was sampled when it expired
    code, m = run_everywhere(pv_machine(source), 7)
    assert (m.state[S.TIMER], m.state[S.PENDING], shared_word(m, S.SH_PENDING), m.state[S.CYCLE]) == (2, 0, 0, 7)


def test_traps_not_in_pv_direct_go_to_the_host() -> None:
    source = "li r4, 0x400\nst r4, SH+16(zero)\nli r4, 0x100\nst r4, SH+20(zero)\nhcall 0\nkentry: j kentry\n"
    source += ".org 0x400\nbrk 9\n"
    code, m = run_everywhere(pv_machine(source), 40)
    assert code == S.EXIT_TRAP and (m.state[S.XCAUSE], m.state[S.XINFO]) == (spec.BREAK, 9)
    assert m.state[S.PV_KMODE] == 0 and m.state[S.BASE] == 0x400  # nothing changed: the monitor bounces it


# --- the guest ----------------------------------------------------------------------------------------------


@cache
def build(path: Path, *defines: str, **values: int) -> Program:
    return assemble_file(str(path), defines={**dict.fromkeys(defines, 1), **values} or None)


def test_pv_kernel_uses_no_sensitive_instruction() -> None:
    program = build(KERNEL, "PARAVIRT")
    used = set()
    for entry in program.listing:
        if isinstance(entry.data, int) and (d := decode(entry.data)) is not None:
            assert d.insn.profile_key is None, f"{entry.filename}:{entry.line}: {entry.source}"
            used.add(d.insn.mnemonic)
    assert "hcall" in used
    assert pv.boot_note(program.image, 1 << 20) == program.symbols["hal_shared"]
    assert pv.boot_note(build(KERNEL).image, 1 << 20) is None


def test_hal_pv_agrees_with_the_monitor_and_the_cores() -> None:
    equ = build(KERNEL, "PARAVIRT").equates
    for name, value in vars(pv).items():
        if re.fullmatch(r"(SH|MC|HC)_[A-Z_]+|CONS_SIZE|PV_MAGIC", name) and name in equ:
            assert equ[name] == value, name
    for name in ("SH_MASK", "SH_PENDING", "SH_EPC", "SH_EPSW", "SH_EBASE", "SH_EBOUND", "SH_CAUSE", "SH_BADADDR"):
        assert equ[name] == getattr(S, name), name
    assert all(equ[f"HC_{n.upper()}"] == number for number, n in pv.HC_NAMES.items())
    sym = build(KERNEL, "PARAVIRT").symbols
    assert sym["hal_shared"] == 12 and sym["hal_pv_end"] - sym["hal_shared"] >= pv.SH_SIZE  # after the boot note


def test_native_build_of_the_syscall_guest() -> None:
    """The syscall guest's native build runs on the bare machine: no boot note, no hypercall."""
    a = BareMachine(core="jit")
    a.load(build(GUESTS / "programs" / "syscalls.s", COUNT=300).image)
    ra = a.run()
    assert ra.console == f"sum of the answers: {42 * 300}\n" and ra.status == 0


# --- the monitor ----------------------------------------------------------------------------------------------


def pv_host(image: bytes, profile: str = "classic", core: str = "jit", monitor: type | None = None) -> Host:
    host = Host([GuestSpec("g", image, "pv", profile)], core)
    if monitor is not None:
        host.monitors[0] = monitor(core)
    return host


def per_task(console: str) -> dict[int, list[str]]:
    lines = console.splitlines()
    return {p: [x for x in lines if x.startswith((f"[{p}]", f"[kernel] task {p} "))] for p in (1, 2, 3)}


@cache
def bare_kernel(*defines: str) -> str:
    machine = BareMachine(core="jit")
    machine.load(build(KERNEL, *defines).image)
    result = machine.run()
    assert result.halted and result.status == 0
    return result.console


@pytest.mark.parametrize("profile", ["classic", "x86like"])
@pytest.mark.parametrize("core", CORE_NAMES)
@pytest.mark.parametrize("defines", [(), ("CRASH",)], ids=["kernel", "crash"])
def test_pv_kernel_prints_what_the_native_kernel_prints(profile: str, core: str, defines: tuple) -> None:
    expected = bare_kernel(*defines)
    result = pv_host(build(KERNEL, "PARAVIRT", *defines).image, profile, core).run(2_000_000)[0]
    assert result.halted and result.status == 0, result.message
    assert per_task(result.console) == per_task(expected)
    lines = result.console.splitlines()
    assert lines[0] == expected.splitlines()[0] and len(lines) == len(expected.splitlines())
    assert re.fullmatch(r"\[kernel\] all tasks exited after \d+ ticks \(\d+ idle\)", lines[-1])
    st_ = result.stats
    crash = "CRASH" in defines  # its fault is bounced into the guest kernel by the monitor: one more exit
    assert st_["total_exits"] == st_["exits"]["hcall"] + crash <= 20  # registration, blocks, console, halt
    assert st_["traps delivered by the core"] == 30 - 2 * crash  # the tasks' system calls (a killed task makes 2 fewer)


@pytest.mark.parametrize("monitor", [pv.Paravirt, pv.ParavirtNoAssist])
def test_a_longer_pv_kernel_fills_its_console_buffer_inside_writes(monitor: type) -> None:
    """Dozens of console flushes, most in the middle of a task's line: every line as on the bare machine."""
    machine = BareMachine(core="jit")
    machine.load(build(KERNEL, ROUNDS=30).image)
    expected = machine.run().console
    result = pv_host(build(KERNEL, "PARAVIRT", ROUNDS=30).image, monitor=monitor).run(10_000_000)[0]
    assert result.halted and result.status == 0, result.message
    assert per_task(result.console) == per_task(expected) and len(per_task(expected)[1]) == 33
    assert result.stats["hcall console_flush"] >= 5


@pytest.mark.parametrize("length", [0, 12, 256])
def test_the_pv_build_of_the_system_call_workload_prints_what_the_native_build_prints(length: int) -> None:
    machine = BareMachine(core="jit")
    machine.load(build(GUESTS / "programs" / "syswrite.s", COUNT=300, LEN=length).image)
    expected = machine.run()
    calls, written = 2 * 300 + 1, 300 * length
    assert expected.halted and expected.status == 0
    assert expected.console.startswith(f"calls {calls}, bytes written {written}, pipe hash ")
    assert expected.console.endswith(f", sum of the answers {300 + written}\n")
    image = build(GUESTS / "programs" / "syswrite.s", "PARAVIRT", COUNT=300, LEN=length).image
    result = pv_host(image).run(10_000_000)[0]
    assert result.halted and result.status == 0 and result.console == expected.console
    assert result.stats["total_exits"] == 2 and result.stats["traps delivered by the core"] == calls


class NoAssistSameFeatures(pv.ParavirtNoAssist):
    """Every trap and hypercall through the monitor, the guest told the processor performs them."""

    features = pv.FAST


@pytest.mark.parametrize("core", CORE_NAMES)
@pytest.mark.parametrize("defines", [(), ("CRASH",)], ids=["kernel", "crash"])
def test_the_processors_help_is_invisible_to_the_guest(core: str, defines: tuple) -> None:
    """Fast paths or the monitor, any host slices: the same guest state, memory and console, other exits."""
    image = build(KERNEL, "PARAVIRT", *defines).image
    runs = []
    for monitor, slice_steps in ((pv.Paravirt, 100_000), (NoAssistSameFeatures, 997), (pv.Paravirt, 613)):
        host = pv_host(image, core=core, monitor=monitor)
        runs.append((host.run(2_000_000, slice_steps)[0], host.vms[0]))
    (first, vm0), *others = runs
    for result, vm in others:
        assert result.console == first.console and result.halted
        assert np.array_equal(vm.vstate, vm0.vstate) and np.array_equal(vm.mem, vm0.mem)
    assert others[0][0].stats["total_exits"] > 10 * first.stats["total_exits"]


def test_without_the_processors_help_the_hal_batches_timer_and_return() -> None:
    result = pv_host(build(KERNEL, "PARAVIRT").image, monitor=pv.ParavirtNoAssist).run(2_000_000)[0]
    assert result.halted and per_task(result.console) == per_task(bare_kernel())
    st_ = result.stats
    assert st_["hcall multicall"] == st_["batched set_timer"] == st_["batched iret"] + st_["batched block"]
    assert st_["batched ops"] == 2 * st_["hcall multicall"] and st_["exits"]["SYSCALL"] == 30
    assert "traps delivered by the core" not in st_ and st_["reflected"] == 30


@pytest.mark.parametrize("path", GUEST_FILES)
def test_guests_without_the_boot_note_run_as_on_the_bare_machine(path: str) -> None:
    image = assemble_file(str(GUESTS / path)).image
    assert_equivalent(bare_run(image, "classic", 300_000, 1 << 20), vm_run(image, "pv", "classic", 300_000, 1 << 20))


NOT_PV = """
        la      r4, handler
        mtcr    ivt, r4
        hcall   3
        li      r1, 99
        halt
handler:
        mfcr    r1, cause
        halt
"""


def test_an_hcall_from_a_guest_without_the_boot_note_is_illegal() -> None:
    image = assemble(NOT_PV).image
    bare = bare_run(image, "classic", 100)
    assert bare.halted and bare.state[S.STATUS] == ILLEGAL and bare.state[S.BADADDR] == hcall(3)
    assert_equivalent(bare, vm_run(image, "pv", "classic", 100))


def pv_guest(body: str, tail: str = "") -> bytes:
    """A small PV guest on the kernel's HAL: registers ``entry``, runs ``body``; a trap halts with its cause."""
    source = f"""
        .include "hal_pv.s"
        la      sp, stack
        la      r4, entry
        HAL_SET_IVT r4
{body}
entry:  HAL_GET_CAUSE r1
        HAL_HALT
{tail}
        .align  4
        .space  64
stack:
"""
    return assemble(source, str(HAL_DIR / "test.s"), include_dirs=[HAL_DIR]).image


def run_pv(image: bytes, core: str = "jit", monitor: type | None = None, steps: int = 100_000) -> tuple:
    host = pv_host(image, core=core, monitor=monitor)
    return host.run(steps)[0], host.vms[0]


def neg(errno: int) -> int:
    return -errno & M32


@pytest.mark.parametrize("monitor", [pv.Paravirt, pv.ParavirtNoAssist])
def test_hypercalls_and_their_errors(monitor: type) -> None:
    body = """
        li      r1, 2
        hcall   3                           # HC_SET_TRAP_ENTRY, misaligned
        mov     r5, r1
        la      r1, msg
        li      r2, 6
        hcall   4                           # HC_CONSOLE_WRITE: "hello\\n"
        mov     r6, r1
        li      r1, 0xFFFF0
        li      r2, 0x100
        hcall   4                           # beyond memory
        mov     r7, r1
        hcall   99                          # no such call
        mov     r8, r1
        hcall   8                           # HC_CYCLE
        mov     r9, r1
        li      r4, 'x'
        HAL_PUTC r4
        hcall   5                           # HC_CONSOLE_FLUSH: one byte
        mov     r10, r1
        li      r1, 42
        hcall   7                           # HC_HALT
"""
    result, vm = run_pv(pv_guest(body, 'msg: .ascii "hello\\n"'), monitor=monitor)
    regs = result.regs
    assert result.halted and result.status == 42 and result.console == "hello\nx"
    assert regs[5:11] == [neg(pv.EINVAL), 6, neg(pv.EFAULT), neg(pv.ENOSYS), regs[9], 1]
    assert 10 < regs[9] < 40  # the cycle count before the hcall: the instructions above
    assert result.stats["hcall console_write"] == 2 and result.stats["hcall 99"] == 1


def test_multicall_performs_entries_in_order_and_a_control_transfer_only_last() -> None:
    body = """
        la      r4, hal_shared
        li      r5, 4                       # four entries
        st      r5, SH_MC_COUNT(r4)
        li      r5, HC_SET_TIMER            # 0: timer <- 1000
        st      r5, SH_MC(r4)
        li      r5, 1000
        st      r5, SH_MC + 4(r4)
        li      r5, HC_HALT                 # 1: halt, but not last: -EINVAL
        st      r5, SH_MC + 16(r4)
        li      r5, HC_CONSOLE_WRITE        # 2: "hello\\n"
        st      r5, SH_MC + 32(r4)
        la      r5, msg
        st      r5, SH_MC + 36(r4)
        li      r5, 6
        st      r5, SH_MC + 40(r4)
        li      r5, 77                      # 3: no such call
        st      r5, SH_MC + 48(r4)
        li      r1, 5
        hcall   HC_MULTICALL
        ld      r6, SH_MC + 12(r4)
        ld      r7, SH_MC + 28(r4)
        ld      r8, SH_MC + 44(r4)
        ld      r9, SH_MC + 60(r4)
        ld      r10, SH_MC_COUNT(r4)
        mov     r11, r1
        hcall   HC_HALT
"""
    result, vm = run_pv(pv_guest(body, 'msg: .ascii "hello\\n"'))
    assert result.halted and result.status == 5 and result.console == "hello\n"
    assert result.regs[6:12] == [0, neg(pv.EINVAL), 6, neg(pv.ENOSYS), 0, 5]  # r1 untouched by the multicall
    assert result.stats["batched ops"] == 2 and vm.vstate[S.TIMER] > 900


def test_an_hcall_from_a_task_is_illegal_in_the_guest_kernel() -> None:
    body = """
        li      r4, 0x2000
        HAL_SET_EBASE r4
        li      r4, 0x100
        HAL_SET_EBOUND r4
        HAL_SET_EPC zero
        HAL_SET_EPSW zero
        HAL_ENTER_USER
"""
    tail = """
        .org    0x2000
        hcall   7                           # a task may not halt the machine
"""
    image = pv_guest(body, tail)
    result, vm = run_pv(image)
    assert result.halted and result.status == ILLEGAL and vm.vstate[S.BADADDR] == hcall(7)
    assert vm.vstate[S.EPC] == 0 and vm.vstate[S.EBASE] == 0x2000 and result.stats["reflected"] == 1


def test_a_block_that_can_never_end_stops_the_guest() -> None:
    result, vm = run_pv(pv_guest("        HAL_WFI\n"))
    assert not result.halted and "can never end" in result.message


def test_a_trap_before_registration_stops_the_guest() -> None:
    program = assemble('.include "hal_pv.s"\n    .word 0\n', str(HAL_DIR / "t.s"), include_dirs=[HAL_DIR])
    result, vm = run_pv(program.image)
    assert not result.halted and "before the guest registered its trap entry" in result.message


def test_hal_macros_change_only_the_registers_they_name() -> None:
    fill = "\n".join(f"        li r{n}, {n << 8 | 0x40 + n}" for n in range(1, 14))
    body = f"""
{fill}
        HAL_TIMER_SET r4
        HAL_PUTC r5
        HAL_CYCLE r6
        HAL_IRQ_ENABLE r7
        HAL_IRQ_DISABLE r8
        HAL_SCRATCH_SAVE r9
        HAL_SCRATCH_LOAD r10
        HAL_SET_IVT r11
        HAL_TIMER_SET r1
        HAL_PUTC r2
        HAL_CYCLE r2
        li      r12, 1
        la      r13, entry
        HAL_SET_IVT r13
        hcall   HC_HALT
"""
    for monitor in (pv.Paravirt, pv.ParavirtNoAssist):
        result, _ = run_pv(pv_guest(body), monitor=monitor)
        regs = result.regs
        assert result.halted and result.console == "EB" and result.status == 0x41
        assert regs[1] == 0x141 and regs[3:6] == [0x343, 0x444, 0x545] and regs[9:12] == [0x949, 0x949, 0xB4B]
        assert regs[7] == 0 and regs[8] == 1  # the temporaries the IRQ macros name
        assert 0 < regs[6] < regs[2]  # cycle counts, in order


CONS_WRITE = """
.ifdef PARAVIRT
        .include "hal_pv.s"
.else
        .include "hal_native.s"
.endif
        la      r4, entry
        HAL_SET_IVT r4
        li      r1, 0x41
        li      r3, 0x33
        li      r2, '>'
        HAL_PUTC r2
        la      r10, text
        la      r11, text_end
        HAL_CONS_WRITE r10, r11, r2
        HAL_CONS_WRITE r10, r11, r2     # nothing left to write
        li      r2, '<'
        HAL_PUTC r2
        HAL_HALT
entry:  HAL_GET_CAUSE r1
        HAL_HALT
text:   .ascii  "TEXT"
        .align  4
text_end:
"""


def test_hal_cons_write_writes_what_the_native_hal_writes() -> None:
    """A buffer of more than two consoles' worth, copied into the PV console buffer in one macro."""
    text = "".join(chr(48 + i % 75) for i in range(700)).replace("\\", "/")
    source = CONS_WRITE.replace("TEXT", text)
    native = assemble(source, str(HAL_DIR / "t.s"), include_dirs=[HAL_DIR]).image
    bare = bare_run(native, "classic", 100_000)
    assert bare.halted and bare.console.text() == ">" + text + "<"
    paravirt = assemble(source, str(HAL_DIR / "t.s"), include_dirs=[HAL_DIR], defines={"PARAVIRT": 1}).image
    for monitor in (pv.Paravirt, pv.ParavirtNoAssist):
        result, vm = run_pv(paravirt, monitor=monitor)
        assert result.halted and result.console == bare.console.text() and result.status == 0x41
        assert result.regs[3] == 0x33 and result.regs[10] == result.regs[11]
        assert vm.stats.extra["hcall console_flush"] == 2


def test_popek_run_reports_the_hypercalls(capsys: pytest.CaptureFixture) -> None:
    assert popek(["run", str(KERNEL), "-D", "PARAVIRT", "--monitor", "pv", "--stats"]) == 0
    captured = capsys.readouterr()
    assert "[kernel] all tasks exited" in captured.out
    assert re.search(r"exits: \d+ \(hcall \d+\)", captured.err)
    assert "hcall block 9" in captured.err and "traps delivered by the core 30" in captured.err


@pytest.mark.parametrize("workload", ["kernel", "syscalls"])
def test_pv_takes_fewer_exits_than_the_monitors_that_run_guests_directly(workload: str) -> None:
    if workload == "kernel":
        native_image, pv_image = build(KERNEL).image, build(KERNEL, "PARAVIRT").image
    else:
        native_image = build(GUESTS / "programs" / "syscalls.s", COUNT=2000).image
        pv_image = build(GUESTS / "programs" / "syscalls.s", "PARAVIRT", COUNT=2000).image
    pv_result = pv_host(pv_image).run(5_000_000)[0]
    assert pv_result.halted
    for name in ("trap", "rewrite", "hybrid"):  # full emulation never runs the guest on the core: no exits
        other = Host([GuestSpec("g", native_image, name)], "jit").run(5_000_000)[0]
        assert other.halted
        if workload == "syscalls":
            assert other.console == pv_result.console == f"sum of the answers: {42 * 2000}\n"
        assert pv_result.stats["total_exits"] < other.stats["total_exits"], name


def test_a_pv_guest_cannot_reach_outside_its_memory() -> None:
    """A task window the kernel sets past the end of its memory is confined to it, as under trap."""
    body = """
        li      r4, 0xFF000                 # the task's base: 4 KiB below the end of the guest's 1 MiB
        HAL_SET_EBASE r4
        li      r4, 0x100000                # and a bound of 1 MiB, past the end
        HAL_SET_EBOUND r4
        HAL_SET_EPC zero
        HAL_SET_EPSW zero
        HAL_ENTER_USER
"""
    tail = """
        .org    0xFF000
        li      r5, 0x1000                  # the first byte past the guest's memory: the neighbour's
        ld      r6, 0(r5)
        st      r6, 0(r5)
"""
    image = pv_guest(body, tail)
    neighbour = assemble("halt\n").image
    host = Host([GuestSpec("pv", image, "pv"), GuestSpec("other", neighbour, "pv")], "jit")
    before = host.vms[1].mem.copy()
    pv_result, other = host.run(100_000)
    assert pv_result.halted and pv_result.status == MEM_FAULT and host.vms[0].vstate[S.BADADDR] == 0x1000
    assert other.halted and np.array_equal(host.vms[1].mem, before)
    assert host.vms[0].vstate[S.EBOUND] == 0x1000  # the window as the processor ran it
