"""Equivalence: every monitor where theory says it works gives exactly the bare machine's results.

Console, status, registers, pc, every control register (``cycle`` included, so interrupts came at the same
instructions), pending interrupts, step count and guest memory must all be equal after the same number of
steps. On ``x86like`` the trap-and-emulate monitor must diverge on a program that reads the PSW.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from popek.cli import main as popek
from popek.isa import state as S
from popek.isa.asm import assemble_file
from popek.isa.spec import CR_NUMBER, PSW_IE, PSW_S
from popek.vmm.host import GuestSpec, Host, Machine
from tests.strategies import Prog, instruction_words, skip_handler

GUESTS = Path(__file__).resolve().parent.parent / "guests"
MEMSIZE = 8192
HANDLER, USER_BASE, BODY = 0x1000, 0x1800, 0x400
COMPARED = list(range(S.R0, S.CYCLE + 1)) + [S.PENDING, S.STEPS, S.STATUS]


def bare_run(image: bytes, profile: str, max_steps: int, memsize: int = MEMSIZE) -> Machine:
    machine = Machine(memsize, profile, "jit")
    machine.load(image)
    machine.run(max_steps)
    return machine


def vm_run(image: bytes, monitor: str, profile: str, max_steps: int, memsize: int = MEMSIZE) -> Host:
    host = Host([GuestSpec("g", image, monitor, profile, memsize)], "jit")
    host.run(max_steps, slice_steps=97)  # odd slices: host preemption must be invisible
    return host


def assert_equivalent(machine: Machine, host: Host) -> None:
    vm = host.vms[0]
    diff = [(i, int(machine.state[i]), int(vm.vstate[i])) for i in COMPARED if machine.state[i] != vm.vstate[i]]
    assert not diff, f"state differs (slot, bare, vm): {diff}"
    assert machine.console.text() == vm.console.text()
    assert machine.halted == vm.halted
    mismatch = np.flatnonzero(machine.mem != vm.mem)
    assert len(mismatch) == 0, f"memory differs at {mismatch[:10].tolist()}"


@st.composite
def guest_programs(draw: st.DrawFn) -> bytes:
    """A supervisor-mode program: set up a vector, the timer and IE, maybe enter user mode, then random code."""
    p = Prog()
    p.li(2, HANDLER)
    p.mtcr(2, imm=CR_NUMBER["ivt"])
    timer = draw(st.one_of(st.just(0), st.integers(1, 60)))
    p.addi(12, 0, imm=draw(st.integers(1, 50)))  # the handler re-arms the timer with r12
    if timer:
        p.addi(2, 0, imm=timer)
        p.mtcr(2, imm=CR_NUMBER["timer"])
    if draw(st.booleans()):
        p.addi(2, 0, imm=PSW_S | PSW_IE)
        p.mtcr(2, imm=CR_NUMBER["psw"])
    if draw(st.booleans()):  # enter user mode at the body, relocated
        bound = draw(st.sampled_from([0x100, 0x400, 0x800, MEMSIZE]))
        p.li(2, USER_BASE)
        p.mtcr(2, imm=CR_NUMBER["ebase"])
        p.li(2, bound)
        p.mtcr(2, imm=CR_NUMBER["ebound"])
        p.mtcr(0, imm=CR_NUMBER["epc"])
        p.addi(2, 0, imm=draw(st.sampled_from([0, PSW_IE])))
        p.mtcr(2, imm=CR_NUMBER["epsw"])
        p.iret()
    else:
        p.jal(0, imm=(BODY - p.here) // 4)
    image = bytearray(p.image().ljust(MEMSIZE, b"\0"))
    handler = skip_handler(rearm_timer=True)
    image[HANDLER : HANDLER + 4 * len(handler)] = b"".join(w.to_bytes(4, "little") for w in handler)
    body = draw(st.lists(instruction_words(), min_size=4, max_size=40))
    for where in (BODY, USER_BASE):
        image[where : where + 4 * len(body)] = b"".join(w.to_bytes(4, "little") for w in body)
    return bytes(image)


@pytest.mark.parametrize("monitor,profile", [("full", "classic"), ("full", "x86like"), ("trap", "classic"),
                                             ("hybrid", "classic")])  # fmt: skip
@given(image=guest_programs(), steps=st.integers(1, 600))
def test_random_guests_match_the_bare_machine(monitor: str, profile: str, image: bytes, steps: int) -> None:
    assert_equivalent(bare_run(image, profile, steps), vm_run(image, monitor, profile, steps))


# Every runnable guest (included files such as lib.s, task.s and the HALs are not programs of their own).
GUEST_FILES = sorted(
    [p.relative_to(GUESTS).as_posix() for p in (GUESTS / "programs").glob("*.s") if p.name != "lib.s"]
    + [p.relative_to(GUESTS).as_posix() for p in (GUESTS / "demos").glob("*.s")]
    + ["kernel/kernel.s"]
)


@pytest.mark.parametrize("path", GUEST_FILES)
@pytest.mark.parametrize("monitor", ["full", "trap", "hybrid"])
def test_guests_match_the_bare_machine(path: str, monitor: str) -> None:
    image = assemble_file(str(GUESTS / path)).image
    memsize = 1 << 20
    max_steps = 300_000 if monitor == "trap" else 60_000  # the software monitors interpret: keep them short
    assert_equivalent(
        bare_run(image, "classic", max_steps, memsize), vm_run(image, monitor, "classic", max_steps, memsize)
    )


def test_x86like_trap_diverges_where_full_does_not() -> None:
    image = assemble_file(str(GUESTS / "demos/whoami.s")).image
    bare = bare_run(image, "x86like", 10_000, 1 << 20)
    assert bare.console.text() == "the kernel runs in supervisor mode\n"
    assert_equivalent(bare, vm_run(image, "full", "x86like", 10_000, 1 << 20))
    trapped = vm_run(image, "trap", "x86like", 10_000, 1 << 20).vms[0]
    assert trapped.console.text() == "the kernel runs in user mode\n"
    assert_equivalent(bare_run(image, "classic", 10_000, 1 << 20), vm_run(image, "trap", "classic", 10_000, 1 << 20))


def test_cli_shows_the_x86like_divergence(capsys: pytest.CaptureFixture) -> None:
    path = str(GUESTS / "demos/whoami.s")
    assert popek(["run", path, "--monitor", "trap", "--profile", "x86like"]) == 0
    assert capsys.readouterr().out == "the kernel runs in user mode\n"
    assert popek(["run", path, "--profile", "x86like"]) == 1
    assert capsys.readouterr().out == "the kernel runs in supervisor mode\n"


def test_host_isolation_and_resource_control() -> None:
    kernel = assemble_file(str(GUESTS / "kernel/kernel.s")).image
    solo = vm_run(kernel, "trap", "classic", 5_000_000, 1 << 20).vms[0]
    assert solo.halted
    spin = assemble_file(str(GUESTS / "demos/spin.s")).image
    snoop = assemble_file(str(GUESTS / "demos/snoop.s")).image
    specs = [GuestSpec("spin", spin, "trap"), GuestSpec("snoop", snoop, "trap"), GuestSpec("kernel", kernel, "trap")]
    host = Host(specs, "jit")
    before = {vm.name: vm.mem.copy() for vm in host.vms}
    results = host.run(max_steps=5_000_000, slice_steps=10_000)
    spin_r, snoop_r, kernel_r = results
    assert kernel_r.halted and kernel_r.console == solo.console.text() and kernel_r.status == solo.vstate[S.STATUS]
    assert spin_r.exit == "limit" and spin_r.steps == 5_000_000  # preempted, never halted, others ran anyway
    assert snoop_r.halted and snoop_r.status == 4  # four accesses beyond its memory, four faults inside it
    assert snoop_r.stats["reflected"] == 4
    # the hostile guest's stores landed nowhere: the spinner's memory is unchanged, the kernel's transcript equal
    assert np.array_equal(host.vms[0].mem, before["spin"])


def test_host_refuses_a_guest_direct_execution_cannot_confine(tmp_path: Path) -> None:
    leaky = tmp_path / "leaky.toml"
    leaky.write_text('name = "leaky"\nextends = "classic"\n[user]\nsetpsw = "execute"\n')
    hello = assemble_file(str(GUESTS / "programs/hello.s")).image
    with pytest.raises(ValueError, match="setpsw"):
        Host([GuestSpec("a", hello, "trap", str(leaky)), GuestSpec("b", hello, "trap")], "jit")
    Host([GuestSpec("a", hello, "full", str(leaky)), GuestSpec("b", hello, "trap")], "jit")  # interpreted: safe
    # user mode sets S, raises its bound and stores one past its slice: alone it harms nobody but itself
    src = "addi r2, r0, 1\nsetpsw r2\naddi r3, r0, -1\nmtcr bound, r3\nlui r3, 0x10\nstb r2, 0(r3)\nhalt\n"
    from popek.isa.asm import assemble

    image = bytearray(1 << 20)
    user = assemble(src).image
    kernel = assemble("li r2, 0x1000\nmtcr ebase, r2\nli r2, 0x1000\nmtcr ebound, r2\nmtcr epc, zero\n"
                      "mtcr epsw, zero\niret\n").image  # fmt: skip
    image[: len(kernel)] = kernel
    image[0x1000 : 0x1000 + len(user)] = user
    with pytest.raises(ValueError, match="could not keep it inside its memory"):
        Host([GuestSpec("a", bytes(image), "trap", str(leaky)), GuestSpec("b", hello, "full")], "jit")
