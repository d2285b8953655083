"""The trap demo, the timer demo and the multitasking kernel: their output, timing and equivalence under monitors.

Expected output is built from what the sources chose (addresses, periods, the tasks' work) and from the ISA's
own rules (instruction encodings from ``isa.spec``, the timer arithmetic of ISA §4), not from earlier runs.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from popek.isa import state as S
from popek.isa.asm import Program, assemble_file
from popek.isa.spec import BY_MNEMONIC, CR_NUMBER, DIVZERO, MEM_FAULT, PRIV, decode, encode
from popek.vmm.host import GuestSpec, Host, Machine, RunResult

GUESTS = Path(__file__).resolve().parent.parent / "guests"
TRAPDEMO = GUESTS / "programs" / "trapdemo.s"
TIMER = GUESTS / "programs" / "timer.s"
KERNEL = GUESTS / "kernel" / "kernel.s"
MAX_STEPS = 400_000
BARE_CORE = "reference"  # the executable specification produces the reference transcripts
M32 = 0xFFFFFFFF


@cache
def assemble(path: Path, *defines: str) -> Program:
    return assemble_file(str(path), defines=dict.fromkeys(defines, 1) or None)


@cache
def bare(path: Path, *defines: str) -> tuple[RunResult, Machine]:
    machine = Machine(core=BARE_CORE)
    machine.load(assemble(path, *defines).image)
    result = machine.run(MAX_STEPS)
    assert result.halted, result.message
    return result, machine


# --- trapdemo ---------------------------------------------------------------------------------------------
def test_trapdemo_handles_each_trap_and_exits_with_the_users_status() -> None:
    program = assemble(TRAPDEMO)
    sym = program.symbols
    assert sym["user_start"] == 0x4000  # the user region, run with base 0x4000: virtual pc = offset in it

    def pc(label: str) -> str:
        return f"pc 0x{sym[label] - sym['user_start']:08x}"

    mfcr_psw = encode(BY_MNEMONIC["mfcr"], a=2, imm=CR_NUMBER["psw"])
    assert mfcr_psw == 0x4B200000
    expected = [
        "trapdemo: kernel starting user program",
        "syscall write: hello from user mode",
        f"MEM fault at 0x00005000 (cause {MEM_FAULT}, {pc('u_bad_load')})",
        f"PRIV: instruction 0x{mfcr_psw:08x} (cause {PRIV}, {pc('u_priv')})",
        f"DIVZERO (cause {DIVZERO}, {pc('u_div')})",
        "syscall write: registers intact after every trap",
        "syscall exit: status 3",
    ]
    result, _ = bare(TRAPDEMO)
    assert result.console.splitlines() == expected
    assert result.status == 3


# --- timer --------------------------------------------------------------------------------------------------
def expected_tick_cycles(program: Program) -> list[int]:
    """The `cycle` each handler reads, from the timer rules of ISA §4 (see the comment at the top of timer.s).

    The code before ``arm_timer`` is straight-line, so the `mtcr timer` there is instruction number
    A = address / 4 and the first interrupt comes after it and PERIOD more instructions retire. The handler
    re-arms with its 5th instruction (period PERIOD + 5); a wfi idling until expiry retires one tick after it
    (period PERIOD + 6). The handler's `mfcr cycle` is its 2nd instruction: it reads interrupt cycle + 1.
    """
    period, busy, total = (program.equates[k] for k in ("PERIOD", "BUSY_TICKS", "TOTAL_TICKS"))
    assert (period, busy, total) == (1000, 3, 6)
    arm = program.symbols["arm_timer"] // 4
    for addr in range(0, program.symbols["arm_timer"], 4):  # straight-line: no branch or jump before it
        word = int.from_bytes(program.image[addr : addr + 4], "little")
        assert decode(word).insn.klass != "branch"
    interrupt = arm + 1 + period
    cycles = [interrupt + 1]
    for tick in range(2, total + 1):
        interrupt += period + (5 if tick <= busy else 6)
        cycles.append(interrupt + 1)
    return cycles


def test_timer_ticks_at_the_cycles_the_isa_predicts() -> None:
    program = assemble(TIMER)
    cycles = expected_tick_cycles(program)
    assert cycles[:2] == [1008, 2013]  # A = 6 (la sp: 2 words, la r4: 2, mtcr ivt, addi)
    result, _ = bare(TIMER)
    lines = result.console.splitlines()
    assert lines[:-1] == [f"tick {i} at cycle {c}" for i, c in enumerate(cycles, 1)]
    m = re.fullmatch(r"timer: 6 ticks, busy loop ran (\d+) iterations", lines[-1])
    assert m and int(m.group(1)) > 100
    assert result.status == 0


# --- the kernel ---------------------------------------------------------------------------------------------
def task_hash(pid: int) -> int:
    """What task ``pid`` computes: pid + 2 rounds of 200 * pid steps of h = 33 h + i, from 5381."""
    h = 5381
    for _ in range(pid + 2):
        for i in range(200 * pid):
            h = (h * 33 + i) & M32
    return h


def task_lines(pid: int) -> list[str]:
    return [f"[{pid}] counting {n}" for n in range(1, pid + 3)] + [f"[{pid}] done, hash {task_hash(pid)}"]


def test_kernel_runs_three_tasks_to_completion() -> None:
    result, _ = bare(KERNEL)
    lines = result.console.splitlines()
    assert result.status == 0
    assert lines[0] == "[kernel] starting 3 tasks"
    for pid in (1, 2, 3):
        own = [line for line in lines if line.startswith(f"[{pid}]")]
        assert own == task_lines(pid)  # in order, and the hash proves the registers survived every switch
        exited = lines.index(f"[kernel] task {pid} exited with status 0")
        assert exited == lines.index(own[-1]) + 1
    m = re.fullmatch(r"\[kernel\] all tasks exited after (\d+) ticks \((\d+) idle\)", lines[-1])
    assert m, lines[-1]
    ticks, idle = int(m.group(1)), int(m.group(2))
    assert ticks >= 20 and 0 < idle < ticks  # the idle path (wfi with only a sleeper left) really ran
    assert len(lines) == 1 + sum(len(task_lines(p)) + 1 for p in (1, 2, 3)) + 1


def test_kernel_preempts_a_task_that_never_gives_up_the_processor() -> None:
    lines = bare(KERNEL)[0].console.splitlines()
    # Task 1 never yields or sleeps: another task's line between two of its lines means the timer preempted it.
    own = [i for i, line in enumerate(lines) if line.startswith("[1]")]
    between = [lines[a + 1 : b] for a, b in zip(own, own[1:], strict=False)]
    assert any(line.startswith(("[2]", "[3]")) for chunk in between for line in chunk)


def test_kernel_kills_a_faulting_task_and_runs_the_others() -> None:
    program = assemble(KERNEL, "CRASH")
    result, _ = bare(KERNEL, "CRASH")
    lines = result.console.splitlines()
    pc = program.symbols["t_crash"] - program.symbols["task_image"]  # task code runs at virtual address 0
    killed = f"[kernel] task 2 killed: cause {MEM_FAULT}, badaddr 0x00001000, pc 0x{pc:08x}"
    assert killed in lines
    assert [line for line in lines if line.startswith("[2]")] == task_lines(2)[:-1]
    for pid in (1, 3):
        assert [line for line in lines if line.startswith(f"[{pid}]")] == task_lines(pid)
    assert lines[-1].startswith("[kernel] all tasks exited") and result.status == 0


def test_kernel_layout_fits_its_memory_map() -> None:
    program = assemble(KERNEL)
    sym, equ = program.symbols, program.equates
    assert sym["task_image_end"] - sym["task_image"] <= equ["UBUF"]  # task code stays below its line buffer
    assert len(program.image) <= equ["REGION0"]  # regions do not overlap the kernel


def test_kernel_uses_sensitive_instructions_only_through_the_hal() -> None:
    """Every privileged or sensitive instruction comes from a hal_native.s macro, so a PV HAL can replace it."""
    program = assemble(KERNEL)
    seen = set()
    for entry in program.listing:
        if not isinstance(entry.data, int):
            continue
        d = decode(entry.data)
        if d is not None and d.insn.profile_key is not None:
            assert Path(entry.filename).name == "hal_native.s", f"{entry.filename}:{entry.line}: {entry.source}"
            seen.add(d.insn.mnemonic)
    assert {"mfcr", "mtcr", "iret", "halt", "wfi", "out", "getpsw", "setpsw"} <= seen


# --- equivalence under every monitor ----------------------------------------------------------------------
COMPARED_SLOTS = list(range(S.R0, S.CYCLE + 1)) + [S.PENDING, S.STEPS, S.STATUS]
MONITOR_RUNS = [("full", "reference"), ("trap", "reference"), ("hybrid", "reference"), ("trap", "jit"),
                ("hybrid", "jit"), ("trap", "dbt"), ("hybrid", "dbt")]  # fmt: skip


@pytest.mark.parametrize("guest", [TRAPDEMO, TIMER, KERNEL], ids=lambda p: p.stem)
@pytest.mark.parametrize(("monitor", "core"), MONITOR_RUNS, ids=lambda v: v)
def test_monitor_reproduces_the_bare_machine(guest: Path, monitor: str, core: str) -> None:
    expected, machine = bare(guest)
    host = Host([GuestSpec(guest.stem, assemble(guest).image, monitor, "classic")], core=core)
    result = host.run(MAX_STEPS, slice_steps=997)[0]  # odd host slices: the host's own switching is invisible
    vm = host.vms[0]
    assert result.halted, result.message
    assert result.console == expected.console
    assert result.status == expected.status
    assert result.regs == expected.regs
    assert result.pc == expected.pc
    assert result.steps == expected.steps
    assert result.stats["cycle"] == expected.stats["cycle"]
    diff = [(i, int(machine.state[i]), int(vm.vstate[i])) for i in COMPARED_SLOTS if machine.state[i] != vm.vstate[i]]
    assert not diff, f"state differs (slot, bare, vm): {diff}"
    mismatch = np.flatnonzero(machine.mem != vm.mem)
    assert len(mismatch) == 0, f"memory differs at {mismatch[:10].tolist()}"
