"""The compiled VM-exit loop does exactly what the monitors' Python exit path does: same guest state, memory,
console and statistics (exits by cause, emulated, reflected, injected), on the bundled guests and on random
guests and profiles, for every direct-execution monitor and both compiled cores.

The Python path (``compiled_exits = False``) is the specification; the equivalence tests elsewhere hold both to
the bare machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from popek.cores import CoreUnavailable, exit_loop, get_core
from popek.isa.asm import assemble, assemble_file
from popek.isa.profiles import Profile
from popek.isa.spec import EXECUTE, IGNORE, PROFILE_KEYS, TRAP
from popek.vmm.host import GuestSpec, Host
from tests.test_monitors import GUEST_FILES, MEMSIZE, guest_programs

GUESTS = Path(__file__).resolve().parent.parent / "guests"
SERVER = GUESTS / "servers" / "server.s"
MONITORS = ["trap", "hybrid", "pv", "rewrite"]


def core_or_skip(core: str) -> str:
    try:
        run = get_core(core)
    except (CoreUnavailable, ImportError) as e:
        pytest.skip(str(e))
    if exit_loop(run) is None:
        pytest.skip(f"the {core} core has no compiled exit loop")
    return core


def host(image: bytes, monitor: str, profile: str | Profile, core: str, compiled: bool, memsize: int) -> Host:
    h = Host([GuestSpec("g", image, monitor, profile, memsize)], core)
    h.monitors[0].compiled_exits = compiled
    return h


def stats(h: Host) -> dict:
    d = h.vms[0].stats.as_dict()
    del d["monitor_seconds"]
    return d


def assert_same_run(a: Host, b: Host) -> None:
    """Everything the guest and the monitor's statistics can show is the same in both hosts."""
    va, vb = a.vms[0], b.vms[0]
    diff = np.flatnonzero(va.vstate != vb.vstate)
    assert len(diff) == 0, f"virtual CPU differs at slots {diff.tolist()}"
    assert np.array_equal(va.rstate, vb.rstate), "real CPU state differs"
    assert np.array_equal(a.mem, b.mem), "memory differs"
    assert va.console.output == vb.console.output
    assert (va.halted, va.error, va.waiting) == (vb.halted, vb.error, vb.waiting)
    assert va.host_io == vb.host_io
    assert stats(a) == stats(b)


def both(image: bytes, monitor: str, profile: str | Profile, core: str, steps: int, memsize: int, slice_: int) -> None:
    runs = []
    for compiled in (False, True):
        h = host(image, monitor, profile, core, compiled, memsize)
        h.run(steps, slice_steps=slice_)
        runs.append(h)
    assert_same_run(*runs)


@pytest.mark.parametrize("core", ["jit", "c"])
@pytest.mark.parametrize("monitor", MONITORS)
@pytest.mark.parametrize("path", GUEST_FILES)
def test_bundled_guests_count_the_same_exits(core: str, monitor: str, path: str) -> None:
    core_or_skip(core)
    image = assemble_file(str(GUESTS / path)).image
    both(image, monitor, "classic", core, 300_000, 1 << 20, 100_000)


@pytest.mark.parametrize("core", ["jit", "c"])
@pytest.mark.parametrize(("monitor", "defines"), [(m, None) for m in MONITORS] + [("pv", {"PARAVIRT": 1})])
def test_a_server_counts_the_same_exits(core: str, monitor: str, defines: dict | None) -> None:
    """The server kernel: network card doorbells and waiting come back to the monitor, the rest does not (the PV
    build: blocks with the timer off and the card's events)."""
    core_or_skip(core)
    image = assemble_file(str(SERVER), defines=defines).image
    runs = []
    for compiled in (False, True):
        h = host(image, monitor, "classic", core, compiled, 4 << 20)
        h.run(10**9)
        for i in range(5):
            h.send(0, 7, b"hello %d" % i)
        h.send(0, 32, b"some bytes to checksum")
        h.run(10**9)
        runs.append(h)
        assert len(h.replies(0)) == 6
    assert_same_run(*runs)


@st.composite
def profiles(draw: st.DrawFn) -> Profile:
    """classic, x86like, or each key with a random behaviour (trap-heavy at times)."""
    kind = draw(st.integers(0, 2))
    if kind < 2:
        return ("classic", "x86like")[kind]
    traps = draw(st.sampled_from([1, 4, 16]))
    choice = st.sampled_from([TRAP] * traps + [EXECUTE, IGNORE])
    return Profile("random", {k: draw(choice) for k in PROFILE_KEYS})


@pytest.mark.parametrize("core", ["jit", "c"])
@pytest.mark.parametrize("monitor", MONITORS)
@given(image=guest_programs(), profile=profiles(), steps=st.integers(1, 600), slice_=st.sampled_from([7, 97, 10**6]))
def test_random_guests_count_the_same_exits(
    core: str, monitor: str, image: bytes, profile: str | Profile, steps: int, slice_: int
) -> None:
    core_or_skip(core)
    both(image, monitor, profile, core, steps, MEMSIZE, slice_)


# --- binary rewriting: what the compiled loop hands back to the monitor in the middle of its work ----------
CONSOLE_CALLOUTS = """
        in      r1, 0                   # a callout that stops for the console: the monitor finishes it
        out     0, r1                   # ... and performs these in the same exit, as the Python path does
        li      r4, 0
        mtcr    timer, r4
        in      r2, 0
        out     0, r2
        halt
"""


@pytest.mark.parametrize("core", ["jit", "c"])
def test_a_callout_that_reads_the_console_goes_on_with_its_batch(core: str) -> None:
    core_or_skip(core)
    image = assemble(CONSOLE_CALLOUTS).image
    runs = []
    for compiled in (False, True):
        h = Host([GuestSpec("g", image, "rewrite", "classic", 1 << 16, b"AB")], core)
        h.monitors[0].compiled_exits = compiled
        h.run(1000)
        runs.append(h)
    assert_same_run(*runs)
    vm = runs[1].vms[0]
    assert vm.console.output == b"AB" and vm.halted
    assert vm.stats.extra["callouts_batched"] >= 4 and vm.stats.extra["callout.in"] == 2


UNALIGNED_KERNEL = """
        li      r4, 2
        mtcr    ebase, r4
        li      r4, 0x1000
        mtcr    ebound, r4
        li      r4, 1                   # supervisor mode, interrupts off
        mtcr    epsw, r4
        li      r4, 0x100
        mtcr    epc, r4
        iret                            # the kernel goes on at base 2: the copy's word grid does not fit
"""


@pytest.mark.parametrize("core", ["jit", "c"])
def test_a_kernel_at_an_unaligned_base_is_interpreted_by_the_monitor(core: str) -> None:
    core_or_skip(core)
    tail = assemble("addi r1, r0, 5\nmfcr r2, psw\nmtcr scratch, r1\nhalt\n").image
    image = bytearray(assemble(UNALIGNED_KERNEL).image.ljust(0x102, b"\0"))
    image[0x102 : 0x102 + len(tail)] = tail
    runs = []
    for compiled in (False, True):
        h = host(bytes(image), "rewrite", "classic", core, compiled, 1 << 16)
        h.run(1000)
        runs.append(h)
    assert_same_run(*runs)
    vm = runs[1].vms[0]
    assert vm.halted and vm.vstate[1] == 5 and vm.stats.extra["interpreted"] == 4


PV_GUESTS = [
    ("kernel/kernel.s", {"PARAVIRT": 1}),
    ("kernel/kernel.s", {"PARAVIRT": 1, "CRASH": 1}),
    ("kernel/kernel.s", {"PARAVIRT": 1, "ROUNDS": 40}),  # 40 console flushes: more than one call's buffer
    ("programs/syscalls.s", {"PARAVIRT": 1, "COUNT": 2000}),
    ("programs/syswrite.s", {"PARAVIRT": 1}),
]


@pytest.mark.parametrize("slice_", [97, 5_000, 10**7])
@pytest.mark.parametrize(("path", "defines"), PV_GUESTS)
def test_pv_guests_count_the_same_exits(path: str, defines: dict, slice_: int) -> None:
    """The compiled loop's console flushes, blocks and bounced traps are those of paravirt.py, in any slices."""
    core = core_or_skip("jit")
    image = assemble_file(str(GUESTS / path), defines=defines).image
    runs = []
    for compiled in (False, True):
        h = host(image, "pv", "classic", core, compiled, 1 << 20)
        h.run(3_000_000, slice_steps=slice_)
        runs.append(h)
    assert_same_run(*runs)
    assert runs[1].monitors[0].pv_loop() is not None and runs[0].monitors[0].pv_loop() is None
    vm = runs[1].vms[0]
    assert vm.halted and vm.stats.exits["hcall"] > 0
    if "CRASH" in defines:
        assert vm.stats.exits["MEM"] == 1 and vm.stats.reflected == 1


# Pieces of a random PV guest's kernel: the hypercalls the compiled loop performs (console_flush, block) in
# every state the shared area can be in, faults it bounces, the timer, the mask, the processor's own work.
PV_PIECES = [
    "hcall HC_CONSOLE_FLUSH",
    "hcall HC_BLOCK",
    "li r5, {n}\n st r5, HAL_CONS_LEN(zero)",  # any length, even beyond the buffer
    "li r5, {n}\n HAL_TIMER_SET r5",
    "li r5, {n}\n HAL_PUTC r5",
    "st zero, HAL_MASK(zero)",
    "li r5, 1\n st r5, HAL_MASK(zero)",
    "HAL_IRQ_ENABLE r5",
    "li r5, {ev}\n st r5, HAL_NET_EVENTS(zero)",
    "ld r5, -4(zero)",  # a fault, bounced into the entry
    "syscall {ev}",  # delivered by the processor
    "hcall 14",  # no such hypercall: back to the monitor
    "addi r6, r6, {n}",
]
PV_ENTRY = """
entry:  HAL_GET_CAUSE r7                # count the traps; step over a fault or a call, not an interrupt
        addi r8, r8, 1
        li r9, 16
        bgeu r7, r9, 1f
        HAL_GET_EPC r9
        addi r9, r9, 4
        HAL_SET_EPC r9
1:      HAL_ENTER_USER
"""


@st.composite
def pv_kernels(draw: st.DrawFn) -> bytes:
    """A PV guest that registers an entry, then runs random pieces in its kernel context."""
    pieces = draw(st.lists(st.sampled_from(PV_PIECES), min_size=1, max_size=40))
    body = "\n".join(
        p.format(n=draw(st.sampled_from([0, 1, 3, 40, 255, 256, 300, 2000])), ev=draw(st.integers(0, 15)))
        for p in pieces
    )
    source = f"""
        .include "hal_pv.s"
        la      r4, entry
        HAL_SET_IVT r4
{body}
        li      r1, 0
        HAL_HALT
{PV_ENTRY}
"""
    return assemble(source, str(GUESTS / "kernel" / "test.s"), include_dirs=[GUESTS / "kernel"]).image


@given(image=pv_kernels(), steps=st.integers(1, 3000), slice_=st.sampled_from([1, 7, 97, 10**6]))
def test_random_pv_guests_count_the_same_exits(image: bytes, steps: int, slice_: int) -> None:
    core = core_or_skip("jit")
    both(image, "pv", "classic", core, steps, MEMSIZE, slice_)
