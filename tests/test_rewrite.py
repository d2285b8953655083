"""The binary-rewriting monitor and its core support.

Core support (docs/isa.md, "Binary-rewriting support"): random machines with a shadow copy below the guest,
full of markers, callouts, twins and plain words, run on the reference, C and JIT cores with identical
results after every call; hand-written cases pin the rules down. Monitor: every bundled guest, the kernel and
random guests give exactly the bare machine's results under ``rewrite`` on ``classic`` and ``x86like``;
self-modifying and freshly loaded code stay coherent; and ``rewrite`` takes fewer exits than ``trap``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from popek.cores import c as c_core
from popek.cores import jit, reference
from popek.isa import spec
from popek.isa import state as S
from popek.isa.asm import assemble, assemble_file
from popek.isa.profiles import load_profile
from popek.isa.spec import BY_MNEMONIC, CR_NUMBER, PSW_IE, PSW_S, encode
from popek.vmm.host import MONITOR_RESERVED, GuestSpec, Host
from popek.vmm.monitors.rewrite import PAGE, BinaryRewriting, listing, plan_for
from tests.strategies import Machine, host_action, load, machines
from tests.test_monitors import GUEST_FILES, MEMSIZE, assert_equivalent, bare_run, guest_programs

GUESTS = Path(__file__).resolve().parent.parent / "guests"
M32 = S.MASK32
XLATE = S.RW_OP_XLATE << 24
CALLOUT = S.RW_OP_CALLOUT << 24
TWIN = S.RW_TWIN << 24
CORE = "jit"  # the monitors run guests on the JIT core, the project's hardware


def w(mnemonic: str, a: int = 0, b: int = 0, c: int = 0, imm: int = 0) -> int:
    return encode(BY_MNEMONIC[mnemonic], a, b, c, imm)


def twin(word: int) -> int:
    return word + TWIN


# --- core support: random machines on every core ----------------------------------------------------------


def other_cores() -> list[tuple[str, object]]:
    """The cores held to the reference: JIT, and C where it is built."""
    out: list[tuple[str, object]] = [("jit", jit.run)]
    if c_core.available():
        out.append(("c", c_core.run))
    return out


@st.composite
def rw_machines(draw: st.DrawFn) -> Machine:
    """A random machine moved up in memory above a shadow copy of itself, with the rewriting support mostly on.

    The copy holds, word by word, the guest's word, its twin, a marker, a callout or any monitor-only word; the
    virtual CPU area holds random values near the real ones.
    """
    m = draw(machines(max_words=32))
    size = len(m.mem)
    pad = (size + 3) & ~3
    mem = np.zeros(pad + size, dtype=np.uint8)
    mem[pad:] = m.mem
    guest = np.zeros(pad, dtype=np.uint8)
    guest[:size] = m.mem
    words = guest.view("<u4").astype(np.int64)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = rng.integers(0, 20, size=len(words))
    op = words >> 24
    shadow = np.where((kind < 14) & (op >= 0x42) & (op <= 0x5F), words + TWIN, words)
    shadow = np.where(kind == 14, XLATE, shadow)
    shadow = np.where(kind == 15, CALLOUT, shadow)
    shadow = np.where(kind == 16, (rng.integers(0xC0, 0xE0, size=len(words)) << 24) | (words & 0xFFFFFF), shadow)
    mem[:pad] = shadow.astype("<u4").view(np.uint8)
    state = m.state
    state[S.BASE] = (int(state[S.BASE]) + pad) & M32
    state[S.FLAGS] |= draw(st.sampled_from([S.F_REWRITE, S.F_REWRITE, S.F_REWRITE, 0]))
    state[S.RW_SHADOW] = draw(st.one_of(st.just(pad), st.just(pad), st.integers(-8, pad + 8), st.integers(0, M32)))
    state[S.RW_FETCH] = draw(st.sampled_from([1, 1, 1, 0, 7]))
    state[S.RW_VPEND] = draw(st.sampled_from([0, 0, 1, 2, 3]))
    for cr in range(spec.NUM_CRS):
        state[S.VCR0 + cr] = draw(st.one_of(st.just(int(state[S.CR0 + cr])), st.integers(0, 64), st.integers(0, M32)))
    state[S.VCR0 + spec.CR_PSW] = draw(st.one_of(st.integers(0, 3), st.integers(0, M32)))
    state[S.VCR0 + spec.CR_CYCLE] = draw(st.one_of(st.integers(-100, 100), st.integers(-(1 << 62), 1 << 62)))
    state[S.VCR0 + spec.CR_TIMER] = draw(
        st.one_of(st.just(0), st.integers(0, 60).map(lambda t: int(state[S.CYCLE]) + t), st.integers(0, 1 << 62))
    )
    return Machine(state, mem)


def rw_host_action(state: np.ndarray, mem: np.ndarray, code: int, value: int) -> bool:
    """What a monitor would do after ``code``: translate the word at pc, perform a callout as a no-op, or as
    tests/strategies.py's host does for the other exits."""
    if code == S.EXIT_XLATE:
        pa = (int(state[S.BASE]) & M32) + int(state[S.PC])
        d = int(state[S.RW_SHADOW])
        word = mem[pa : pa + 4].copy()
        if S.RW_OP_XLATE <= word[3] <= S.RW_OP_LAST:
            word = np.frombuffer(CALLOUT.to_bytes(4, "little"), np.uint8)
        mem[pa - d : pa - d + 4] = word
        return True
    if code == S.EXIT_CALLOUT:
        S.retire(state)
        return True
    return host_action(state, code, value)


def rw_differential(m: Machine, budgets: list[int], value: int) -> list[int]:
    """Run ``m`` on every core, one call per budget, with the same host actions; assert equality after each."""
    ref = m.copy()
    others = [(name, run, m.copy()) for name, run in other_cores()]
    codes = []
    for i, budget in enumerate(budgets):
        code = reference.run(ref.state, ref.mem, budget)
        codes.append(code)
        for name, run, o in others:
            got = run(o.state, o.mem, budget)
            diff = [(int(s), int(ref.state[s]), int(o.state[s])) for s in np.flatnonzero(ref.state != o.state)]
            mdiff = np.flatnonzero(ref.mem != o.mem)[:8].tolist()
            assert got == code and not diff and not mdiff, (
                f"{name}, call {i} (budget {budget}): exit {got} != {code}; slots (slot, ref, core) {diff}; "
                f"memory at {mdiff}"
            )
        if not rw_host_action(ref.state, ref.mem, code, value):
            break
        for _, _, o in others:
            rw_host_action(o.state, o.mem, code, value)
    return codes


BUDGETS = st.lists(st.one_of(st.integers(0, 6), st.integers(0, 300)), min_size=1, max_size=8).map(lambda b: [*b, 600])


@given(rw_machines(), BUDGETS, st.integers(0, M32))
def test_rewriting_support_agrees_on_every_core(m: Machine, budgets: list[int], value: int) -> None:
    rw_differential(m, budgets, value)


# --- core support: the rules, case by case ----------------------------------------------------------------

GUEST = 0x400  # hand-written machines: the shadow copy at 0, the guest's memory (0x400 bytes) above it
D = GUEST


def rw_machine(code: list[int], shadow: list[int] | None = None, fetch: int = 1, **slots: int) -> Machine:
    """A guest at GUEST running ``code`` from its shadow copy ``shadow`` (default: ``code`` itself)."""
    mem = np.zeros(2 * GUEST, dtype=np.uint8)
    load(mem, b"".join(x.to_bytes(4, "little") for x in code), GUEST)
    load(mem, b"".join(x.to_bytes(4, "little") for x in (code if shadow is None else shadow)), 0)
    state = S.new_state(len(mem))
    state[S.BASE], state[S.BOUND] = GUEST, GUEST
    state[S.FLAGS] = S.F_TRAPS_TO_HOST | S.F_REWRITE
    state[S.RW_SHADOW], state[S.RW_FETCH] = D, fetch
    state[S.PSW] = 0  # the guest kernel runs in real user mode; its virtual mode is VCR psw
    state[S.VCR0 + spec.CR_PSW] = PSW_S
    for name, value in slots.items():  # r1=..., vcr_epc=..., or a slot name of popek/isa/state.py
        if name.startswith("vcr_"):
            state[S.VCR0 + CR_NUMBER[name[4:]]] = value
        elif name[0] == "r" and name[1:].isdigit():
            state[int(name[1:])] = value
        else:
            state[getattr(S, name.upper())] = value
    return Machine(state, mem)


def run_all(m: Machine, budget: int) -> tuple[int, Machine]:
    """Run on the reference core and check that the other cores agree; return the exit and the machine."""
    codes = rw_differential(m, [budget], 0)
    ref = m.copy()
    reference.run(ref.state, ref.mem, budget)
    return codes[0], ref


def test_fetch_reads_the_shadow_copy_and_data_reads_the_guest() -> None:
    code = [w("ld", 1, 0, imm=0), w("addi", 2, 0, imm=1), w("halt")]
    shadow = [code[0], w("addi", 2, 0, imm=2), twin(w("halt"))]
    exit_, m = run_all(rw_machine(code, shadow), 10)
    assert exit_ == S.EXIT_CALLOUT and m.state[S.PC] == 8
    assert m.state[1] == code[0] and m.state[2] == 2  # ld saw the guest's word, the fetch the copy's
    exit_, m = run_all(rw_machine(code, shadow, fetch=0), 10)
    assert exit_ == S.EXIT_TRAP and m.state[2] == 1 and m.state[S.XCAUSE] == spec.PRIV  # the guest's own code


def test_stores_leave_markers_over_the_words_they_touch() -> None:
    code = [w("addi", 1, 0, imm=-1), w("st", 1, 0, imm=0x100), w("stb", 1, 0, imm=0x105), w("stb", 1, 0, imm=0x20B)]
    code += [w("halt")]
    exit_, m = run_all(rw_machine(code), 10)
    words = m.mem[:GUEST].view("<u4")
    assert words[0x100 // 4] == XLATE and words[0x104 // 4] == XLATE and words[0x208 // 4] == XLATE
    assert words[0x10C // 4] == 0 and words[0x200 // 4] == 0
    # With the support off (the flag clear, or D beyond base) nothing is marked.
    for slots in ({"flags": S.F_TRAPS_TO_HOST}, {"rw_shadow": GUEST + 4}, {"rw_shadow": 3}):
        _, m = run_all(rw_machine(code, fetch=0, **slots), 10)
        assert not (m.mem[:GUEST].view("<u4") == XLATE).any()


def test_a_word_store_through_an_unaligned_base_marks_both_words_it_overlaps() -> None:
    code = [w("addi", 1, 0, imm=-1), w("st", 1, 0, imm=0x100), w("brk")]
    m = rw_machine([], [], bound=GUEST - 4, base=GUEST + 2)
    load(m.mem, b"".join(x.to_bytes(4, "little") for x in code), GUEST + 2)
    load(m.mem, b"".join(x.to_bytes(4, "little") for x in code), 2)
    exit_, m = run_all(m, 10)
    assert exit_ == S.EXIT_TRAP and m.state[S.XCAUSE] == spec.BREAK
    words = m.mem[:GUEST].view("<u4")
    assert words[0x100 // 4] == XLATE and words[0x104 // 4] == XLATE and words[0x108 // 4] != XLATE


def test_store_over_the_next_instruction_is_seen_at_once() -> None:
    code = [w("lui", 1, imm=0x1100), w("st", 1, 0, imm=8), w("addi", 2, 0, imm=1), w("halt")]
    exit_, m = run_all(rw_machine(code), 10)
    assert exit_ == S.EXIT_XLATE and m.state[S.PC] == 8 and m.state[2] == 0


def test_marker_and_callout_change_nothing() -> None:
    for word, code in ((XLATE, S.EXIT_XLATE), (CALLOUT | 0x123456, S.EXIT_CALLOUT)):
        exit_, m = run_all(rw_machine([w("addi", 1, 0, imm=5), w("halt")], [w("addi", 1, 0, imm=5), word]), 10)
        assert exit_ == code and m.state[S.PC] == 4 and m.state[S.CYCLE] == 1 and m.state[S.STEPS] == 1


def test_twins_read_and_write_the_virtual_control_registers() -> None:
    code = [w("mfcr", 1, imm=CR_NUMBER["epc"]), w("mtcr", 1, imm=CR_NUMBER["scratch"]), w("getpsw", 2),
            w("getbase", 3), w("mfcr", 4, imm=CR_NUMBER["cycle"]), w("mfcr", 5, imm=CR_NUMBER["timer"]),
            w("mtcr", 0, imm=CR_NUMBER["cycle"]), w("halt")]  # fmt: skip
    m = rw_machine(code, [twin(x) for x in code], vcr_epc=0x1234, vcr_base=0x40, vcr_cycle=1000, vcr_timer=50,
                   cycle=7, epc=0x999)  # fmt: skip
    exit_, m = run_all(m, 20)
    s = m.state
    assert exit_ == S.EXIT_CALLOUT and s[S.PC] == 28
    assert (s[1], s[S.VCR0 + spec.CR_SCRATCH], s[2], s[3]) == (0x1234, 0x1234, PSW_S, 0x40)
    assert s[4] == 1000 + 7 + 4 and s[5] == 50 - (7 + 5)  # cycle = CYCLE + offset, timer = deadline - CYCLE
    assert s[S.EPC] == 0x999 and s[S.SCRATCH] == 0  # the real registers are untouched


@pytest.mark.parametrize(
    "word,slots,calls_out",
    [
        (w("mtcr", 1, imm=CR_NUMBER["psw"]), {"r1": PSW_S | PSW_IE}, False),  # IE on, nothing pending
        (w("mtcr", 1, imm=CR_NUMBER["psw"]), {"r1": PSW_S | PSW_IE, "rw_vpend": 1}, True),
        (w("setpsw", 1), {"r1": 0}, True),  # leaves virtual supervisor mode
        (w("setpsw", 1), {"r1": PSW_S}, False),
        (w("mtcr", 1, imm=CR_NUMBER["timer"]), {}, True),
        (w("mtcr", 1, imm=CR_NUMBER["base"]), {}, True),
        (w("mtcr", 1, imm=CR_NUMBER["bound"]), {}, True),
        (w("iret"), {}, True),
        (w("halt"), {}, True),
        (w("wfi"), {}, True),
        (w("out", 1, imm=0), {}, True),
        (w("in", 1, imm=0), {}, True),
    ],
)
def test_twins_call_out_where_only_the_monitor_can_act(word: int, slots: dict, calls_out: bool) -> None:
    got, m = run_all(rw_machine([word, w("brk", imm=1)], [twin(word), w("brk", imm=1)], **slots), 10)
    if calls_out:
        assert got == S.EXIT_CALLOUT and m.state[S.PC] == 0 and m.state[S.CYCLE] == 0
    else:
        assert got == S.EXIT_TRAP and m.state[S.XCAUSE] == spec.BREAK and m.state[S.PC] == 4
        assert m.state[S.VCR0 + spec.CR_PSW] == int(slots["r1"]) & 3


def test_twins_in_virtual_user_mode_follow_the_profile() -> None:
    word = w("getbase", 1)
    for behaviour in (spec.TRAP, spec.EXECUTE, spec.IGNORE):
        m = rw_machine([word, w("brk")], [twin(word), w("brk")], vcr_psw=0, vcr_base=0x80, r1=5)
        m.state[S.PROFILE + spec.PROFILE_INDEX["getbase"]] = behaviour
        got, m = run_all(m, 10)
        assert got == S.EXIT_TRAP
        if behaviour == spec.TRAP:
            assert m.state[S.XCAUSE] == spec.PRIV and m.state[S.XINFO] == word and m.state[S.PC] == 0
        else:
            assert m.state[S.XCAUSE] == spec.BREAK and m.state[1] == (0x80 if behaviour == spec.EXECUTE else 5)


def test_monitor_only_words_are_illegal_elsewhere() -> None:
    for word in (XLATE, CALLOUT, twin(w("halt")), 0xDF000000):
        for fetch, flags in ((0, S.F_TRAPS_TO_HOST | S.F_REWRITE), (1, S.F_TRAPS_TO_HOST)):
            got, m = run_all(rw_machine([word], fetch=fetch, flags=flags), 10)
            assert got == S.EXIT_TRAP and m.state[S.XCAUSE] == spec.ILLEGAL and m.state[S.XINFO] == word


def test_malformed_twins_are_illegal_with_the_original_word() -> None:
    for orig in (w("halt") | 1, w("mfcr", 1, imm=spec.NUM_CRS), w("hcall", imm=3), 0x4F000000, 0x5F000000):
        got, m = run_all(rw_machine([0], [orig + TWIN]), 10)
        assert got == S.EXIT_TRAP and m.state[S.XCAUSE] == spec.ILLEGAL and m.state[S.XINFO] == orig


# --- the monitor ------------------------------------------------------------------------------------------


def rewrite_run(image: bytes, profile: str, max_steps: int, memsize: int = MEMSIZE, core: str = CORE) -> Host:
    host = Host([GuestSpec("g", image, "rewrite", profile, memsize)], core)
    host.run(max_steps, slice_steps=97)  # odd slices: host preemption must be invisible
    return host


def test_plan_follows_the_checker() -> None:
    classic, x86 = plan_for(load_profile("classic")), plan_for(load_profile("x86like"))
    assert {"iret", "wfi", "halt", "mfcr.epc", "mtcr.timer", "getpsw", "setpsw", "getbase"} <= classic.forms
    assert classic.forms <= x86.forms and not classic.user_copy and x86.user_copy  # getbase does not trap there
    assert not {"add", "ld", "st", "syscall", "brk", "hcall", "jal"} & x86.forms


def test_shadow_copy_lives_in_monitor_memory_before_the_vms() -> None:
    image = assemble_file(str(GUESTS / "programs/hello.s")).image
    specs = [GuestSpec("a", image, "trap", memsize=8192), GuestSpec("b", image, "rewrite", memsize=8192)]
    host = Host(specs, CORE)
    a, b = host.vms
    assert a.offset == MONITOR_RESERVED + 8192 and b.offset == a.offset + 8192  # after both regions
    assert b.rstate[S.RW_SHADOW] == b.offset - MONITOR_RESERVED
    results = host.run()
    assert results[0].console == results[1].console == "Hello from P32!\n"


@pytest.mark.parametrize("profile", ["classic", "x86like"])
@pytest.mark.parametrize("path", GUEST_FILES)
def test_guests_match_the_bare_machine(path: str, profile: str) -> None:
    image = assemble_file(str(GUESTS / path)).image
    memsize, max_steps = 1 << 20, 300_000
    assert_equivalent(bare_run(image, profile, max_steps, memsize), rewrite_run(image, profile, max_steps, memsize))


def test_kernel_to_the_end_on_both_profiles_and_the_c_core() -> None:
    image = assemble_file(str(GUESTS / "kernel/kernel.s")).image
    for profile, core in (("classic", "jit"), ("x86like", "jit"), ("x86like", "c")):
        if core == "c" and not c_core.available():
            continue
        bare = bare_run(image, profile, 5_000_000, 1 << 20)
        assert bare.halted
        assert_equivalent(bare, rewrite_run(image, profile, 5_000_000, 1 << 20, core))


def test_whoami_on_x86like_where_trap_diverges() -> None:
    image = assemble_file(str(GUESTS / "demos/whoami.s")).image
    bare = bare_run(image, "x86like", 10_000, 1 << 20)
    vm = rewrite_run(image, "x86like", 10_000, 1 << 20)
    assert vm.vms[0].console.text() == "the kernel runs in supervisor mode\n"
    assert_equivalent(bare, vm)


@pytest.mark.parametrize("profile", ["classic", "x86like"])
@given(image=guest_programs(), steps=st.integers(1, 600))
def test_random_guests_match_the_bare_machine(profile: str, image: bytes, steps: int) -> None:
    assert_equivalent(bare_run(image, profile, steps), rewrite_run(image, profile, steps))


# --- coherence --------------------------------------------------------------------------------------------

SELF_MODIFYING = """
        li      r5, 3                   # three passes over 'patch'
loop:   call    patch
        add     r6, r6, r1              # r6: sum of what patch returned
        la      r2, patch
        ld      r3, 0(r2)               # patch's first word, plus one: addi r1, r0, N -> N+1
        addi    r3, r3, 1
        st      r3, 0(r2)
        addi    r5, r5, -1
        bnez    r5, loop
        la      r2, fresh               # freshly loaded code: copy 'template' over 'fresh', then run it
        la      r3, template
        ld      r4, 0(r3)
        st      r4, 0(r2)
        ld      r4, 4(r3)
        st      r4, 4(r2)
        call    fresh
        add     r6, r6, r1
        la      r2, next                # a byte store into the very next instruction's immediate
        li      r4, 40
        stb     r4, 0(r2)
next:   addi    r6, r6, 1               # becomes addi r6, r6, 40
        mfcr    r7, scratch             # a sensitive instruction on a page that was rewritten again
        mov     r1, r6
        halt
        .align  4
patch:  addi    r1, r0, 10
        ret
fresh:  addi    r1, r0, 1               # translated with its page, overwritten before it ever runs
        ret
template:
        mfcr    r1, cycle
        ret
"""


@pytest.mark.parametrize("profile", ["classic", "x86like"])
def test_self_modifying_and_freshly_loaded_code_stay_coherent(profile: str) -> None:
    image = assemble(SELF_MODIFYING).image
    bare = bare_run(image, profile, 10_000)
    assert bare.halted and bare.state[7] == 0  # r7: scratch, read by a twin
    host = rewrite_run(image, profile, 10_000)
    assert_equivalent(bare, host)
    # patch ran three times (10, 11, 12), fresh read the cycle count, and the byte store made +1 into +40
    cycle = int(bare.state[1]) - (10 + 11 + 12 + 40)
    assert 0 < cycle < 200
    assert host.vms[0].stats.extra["invalidations"] >= 4  # the two re-patches, the fresh code, the byte store


def test_user_task_writing_kernel_code_is_seen_by_the_kernel() -> None:
    """A user task whose window covers the kernel patches a kernel routine; the kernel then runs the new code."""
    source = """
        la      r4, handler
        mtcr    ivt, r4
        call    routine                 # translated now
        mov     r8, r1
        li      r4, 0x1000
        mtcr    ebound, r4              # the user window: all of the kernel, base 0
        la      r4, user
        mtcr    epc, r4
        mtcr    epsw, zero
        iret
handler:
        call    routine                 # the patched routine
        add     r1, r1, r8
        halt
routine:
        addi    r1, r0, 1
        ret
user:   la      r2, routine
        li      r3, 0x11100007          # addi r1, r0, 7
        st      r3, 0(r2)
        syscall 0
"""
    image = assemble(source).image
    for profile in ("classic", "x86like"):
        bare = bare_run(image, profile, 1000)
        assert bare.halted and bare.state[S.STATUS] == 8
        host = rewrite_run(image, profile, 1000)
        assert_equivalent(bare, host)
        assert host.vms[0].stats.extra["invalidations"] >= 1


# --- costs ------------------------------------------------------------------------------------------------


def _exits_per_1000(image: bytes, monitor: str) -> float:
    host = Host([GuestSpec("g", image, monitor, "classic")], CORE)
    r = host.run()[0]
    assert r.halted
    return 1000 * r.stats["total_exits"] / r.steps


@pytest.mark.parametrize(
    "path,defines,factor",
    [
        ("kernel/kernel.s", None, 2),  # the acceptance workloads: fewer than half trap's exits
        ("programs/syscalls.s", {"COUNT": 500}, 2),
        ("programs/ticks.s", {"PERIOD": 100, "WORK": 20000}, 1.4),  # mtcr timer + iret: one exit, not two
    ],
)
def test_rewrite_exits_less_than_trap(path: str, defines: dict | None, factor: float) -> None:
    image = assemble_file(str(GUESTS / path), defines=defines).image
    trap, rewrite = _exits_per_1000(image, "trap"), _exits_per_1000(image, "rewrite")
    assert rewrite * factor < trap, (trap, rewrite)


def test_statistics_and_listing() -> None:
    image = assemble_file(str(GUESTS / "programs/syscalls.s"), defines={"COUNT": 20}).image
    host = Host([GuestSpec("g", image, "rewrite", "classic")], CORE)
    r = host.run()[0]
    s = r.stats
    assert s["exits"]["SYSCALL"] == 21 and s["exits"]["callout"] >= 21 and s["callout.iret"] == 21
    assert s["translations"] >= 1 and s["replaced"] >= 8 and "xlate" in s["exits"]
    vm, mon = host.vms[0], host.monitors[0]
    assert isinstance(mon, BinaryRewriting)
    lines = listing(vm, mon, 0, PAGE)
    assert any("mfcr r4, cause" in line and "twin" in line for line in lines)
    assert any("iret" in line and "twin" in line for line in lines)
