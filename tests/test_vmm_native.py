"""The native hypervisor (guests/vmm, docs/vmm-native.md): P32 code that keeps its guests equivalent to the bare
machine — transcript, registers, control registers and `cycle` — on every core, under itself and under `trap`.
"""

from __future__ import annotations

import numpy as np
import pytest

from popek import guests
from popek.cores import CORE_NAMES, CoreUnavailable, get_core
from popek.isa import state as S
from popek.isa.asm import assemble, assemble_file
from popek.vmm import native
from popek.vmm.checker import check, run_witness_program
from popek.vmm.checker.programs import WMEM
from popek.vmm.host import GuestSpec, Host, RunResult

KERNEL = guests.path("kernel/kernel.s")
KERNEL_MEM = 0x14000


def bare(image: bytes, memsize: int, profile: str = "classic") -> tuple[RunResult, np.ndarray]:
    """A guest's run on the bare machine: its result and final state."""
    host = Host([GuestSpec("bare", image, "bare", profile, memsize)], "jit")
    return host.run()[0], host.vms[0].vstate.copy()


def assert_equivalent(cpu: native.VirtualCPU, console: str, image: bytes, memsize: int) -> None:
    """The guest under the native monitor shows what it shows on the bare machine, `cycle` included."""
    result, state = bare(image, memsize)
    assert console == result.console
    assert (cpu.state, cpu.status) == ("halted", result.status)
    assert (cpu.regs, cpu.pc) == (result.regs, result.pc)
    assert cpu.crs == [int(x) & S.MASK32 for x in state[S.CR0 : S.CR0 + 13]]


@pytest.fixture(scope="module")
def kernels() -> list[bytes]:
    return [assemble_file(KERNEL).image, assemble_file(KERNEL, defines={"CRASH": 1}).image]


@pytest.mark.parametrize("core", CORE_NAMES)
def test_vmm_s_runs_two_kernels_each_exactly_as_on_the_bare_machine(core: str, kernels: list[bytes]) -> None:
    try:
        get_core(core)
    except CoreUnavailable as e:
        pytest.skip(str(e))
    run = native.run(native.default_program(), core=core)
    assert (run.result.exit, run.result.status) == ("halt", 0)
    for n, image in enumerate(kernels, 1):
        assert_equivalent(run.cpus[n - 1], run.consoles[f"vm{n}"], image, KERNEL_MEM)
    assert "[kernel] task 2 killed: cause 4" in run.consoles["vm2"]  # the two guests are different kernels
    assert run.consoles["vmm"].endswith(
        "vm1 halted with status 0 after 46651 instructions\n"
        "vm2 halted with status 0 after 46472 instructions\nall guests stopped\n"
    )


def test_the_guests_share_the_processor_in_time_slices() -> None:
    lines = native.run(native.default_program()).result.console.splitlines()
    tags = [line[:3] for line in lines if line.startswith("vm") and not line.startswith("vmm")]
    switches = sum(a != b for a, b in zip(tags, tags[1:], strict=False))
    assert switches >= 3  # vm1, vm2, vm1, vm2...: neither runs to its end first


@pytest.mark.parametrize("outer", ["bare", "trap"])
def test_the_monitor_runs_under_itself_and_the_innermost_guests_do_not_notice(outer: str, kernels: list[bytes]) -> None:
    run = native.run(native.default_program(nested=True), monitor=outer)
    expected = [bare(k, KERNEL_MEM)[0].console for k in kernels]
    assert run.console("vm1", "vm1") == expected[0]
    assert run.console("vm1", "vm2") == expected[1]
    assert run.console("vm2") == expected[0]  # a kernel beside the inner monitor, one level down
    # The inner monitor itself, a guest here, retired exactly what it retires alone on the bare machine.
    single = native.run(native.default_program()).result
    assert run.cpus[0].cycle == single.stats["cycle"] and run.cpus[0].regs == single.regs
    assert (run.result.exit, run.result.status) == ("halt", 0)


def test_the_monitor_runs_as_a_guest_of_the_trap_monitor(kernels: list[bytes]) -> None:
    run = native.run(native.default_program(), monitor="trap")
    for n, image in enumerate(kernels, 1):
        assert run.consoles[f"vm{n}"] == bare(image, KERNEL_MEM)[0].console
    assert run.result.stats["exits"]["PRIV"] > 0  # every privileged instruction of the monitor trapped


PROGRAMS = ["hello", "syscalls", "timer", "trapdemo"]


def test_on_classic_bundled_programs_behave_as_on_the_bare_machine() -> None:
    memsize = 0x10000
    images = [assemble_file(guests.path(f"programs/{p}.s")).image for p in PROGRAMS]
    run = native.run(native.build([native.GuestImage(i, memsize) for i in images]))
    for n, image in enumerate(images, 1):
        assert_equivalent(run.cpus[n - 1], run.consoles.get(f"vm{n}", ""), image, memsize)


def witness_summary(run: native.NativeRun) -> tuple:
    """A witness's run under the native monitor, in the checker's terms (RunSummary.key)."""
    cpu = run.cpus[0]
    end = {"halted": "halt", "stopped": "idle"}.get(cpu.state, "limit")
    return (end, cpu.status if end == "halt" else 0, run.consoles.get("vm1", ""), tuple(cpu.regs))


def test_on_x86like_every_witness_diverges_as_under_the_trap_monitor() -> None:
    report = check("x86like", core="jit")
    theorem1 = [w for w in report.witnesses if w.theorem == 1]
    assert [w.instruction for w in theorem1] == ["getpsw", "setpsw", "getbase"]
    for w in theorem1:
        program = native.build([native.GuestImage(w.image, WMEM)])
        run = native.run(program, profile=report.profile)
        under_trap = run_witness_program(w.image, report.profile, "trap", w.input, "jit")
        assert witness_summary(run) == under_trap.key() != w.bare.key(), w.instruction
        classic = native.run(program, profile="classic")  # the same program is exact where it traps
        assert witness_summary(classic) == run_witness_program(w.image, "classic", "bare", w.input, "jit").key()


def guest(body: str) -> bytes:
    return assemble(body).image


def test_a_hostile_or_broken_guest_stops_alone() -> None:
    forever = guest("wfi\n")  # timer off, nothing pending, no device: it can never wake
    spin = guest("la r1, 1f\nmtcr epc, r1\nli r1, 0x1000\nmtcr ebound, r1\nli r1, 2\nmtcr epsw, r1\niret\n1: j 1b\n")
    # Its vector is outside its memory: every trap faults again at once, retiring nothing, for ever.
    storm = guest("li r1, 0x10000\nmtcr ivt, r1\nbrk 0\n")
    hello = assemble_file(guests.path("programs/hello.s")).image
    program = native.build([native.GuestImage(g, 0x1000) for g in (forever, spin, storm, hello)])
    run = native.run(program, max_steps=5_000_000)
    assert run.cpus[0].state == "stopped" and "vm1 stopped: wfi at 0x00000000 can never end" in run.consoles["vmm"]
    assert run.cpus[1].state == run.cpus[2].state == "running"  # they never stop, and never hold the others up
    assert run.cpus[2].crs[S.CAUSE - S.CR0] == 4 and run.cpus[2].pc == 0x10000
    assert run.consoles["vm4"] == bare(hello, 0x1000)[0].console and run.cpus[3].state == "halted"
    assert run.result.exit == "limit"


def test_a_long_line_is_cut_and_still_reads_back_exactly() -> None:
    text = "x" * 450 + "\nend without newline"
    body = "la r2, s\n1: ldbu r3, 0(r2)\nbeqz r3, 2f\nout 0, r3\naddi r2, r2, 1\nj 1b\n2: li r1, 0\nhalt\n"
    image = guest(body + 's: .asciz "' + text.replace("\n", "\\n") + '"\n')
    run = native.run(native.build([native.GuestImage(image, 0x1000)]))
    assert run.consoles["vm1"] == text
    assert "vm1 + " in run.result.console


def test_too_little_memory_is_reported() -> None:
    run = native.run(native.default_program(), memsize=0x30000)  # the image fits, the second region does not
    assert run.result.status == 1 and "not enough memory: the guests need 229376 bytes" in run.result.console
