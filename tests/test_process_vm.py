"""The process VM (popek/vmm/process.py, docs/abi.md): a user program whose system calls the host serves."""

from __future__ import annotations

import json

import pytest

from popek import guests
from popek.cli import main
from popek.isa.asm import assemble, assemble_file
from popek.vmm.host import run_guest
from popek.vmm.process import KILLED, TICK, ProcessResult, run_process

ABI = guests.path("process/abi.s")
MINUS_1 = 0xFFFFFFFF


def process(body: str, memsize: int = 0x2000, **kw: object) -> ProcessResult:
    """Assemble ``body`` after the ABI's constants and run it as a process."""
    image = assemble(f'.include "{ABI}"\n{body}\n').image
    return run_process(image, memsize, **kw)


@pytest.fixture(scope="module")
def kernel_transcript() -> str:
    return run_guest(assemble_file(guests.path("kernel/kernel.s")).image, "bare").console


@pytest.mark.parametrize("pid", [1, 2, 3])
def test_the_task_program_prints_as_a_process_what_it_prints_under_the_kernel(kernel_transcript: str, pid: int) -> None:
    task = assemble_file(guests.path("process/task.s")).image
    result = run_process(task, pid=pid)
    under_kernel = [line for line in kernel_transcript.splitlines(keepends=True) if line.startswith(f"[{pid}] ")]
    assert result.console == "".join(under_kernel)
    assert (result.exit, result.status) == ("exit", 0)
    assert f"[kernel] task {pid} exited with status 0" in kernel_transcript


def test_exit_ends_the_process_with_its_status() -> None:
    r = process("li r2, 300\nsyscall SYS_EXIT\nli r5, 1\n")
    assert (r.exit, r.status, r.regs[5]) == ("exit", 300, 0)  # nothing after the exit runs


def test_write_returns_the_length_and_writes_the_bytes() -> None:
    r = process('la r2, s\nli r3, 3\nsyscall SYS_WRITE\nmov r5, r2\nli r2, 0\nsyscall SYS_EXIT\ns: .ascii "hey!"')
    assert (r.console, r.regs[5]) == ("hey", 3)


def test_getpid_yield_and_sleep() -> None:
    r = process(
        "syscall SYS_GETPID\nmov r5, r2\nli r2, 77\nsyscall SYS_YIELD\nmov r6, r2\n"
        "syscall SYS_CLOCK\nmov r8, r2\nli r2, 4\nsyscall SYS_SLEEP\nmov r7, r2\nsyscall SYS_CLOCK\nmov r9, r2\n"
        "li r2, 0\nsyscall SYS_EXIT",
        pid=7,
    )
    assert (r.regs[5], r.regs[6], r.regs[7]) == (7, 77, 4)  # yield and sleep leave r2 as it was
    # The clock counts the process's own instructions, and a sleep moves it on by its ticks.
    assert r.regs[9] - r.regs[8] == 4 * TICK + 3
    assert r.clock == r.steps + 4 * TICK and r.syscalls["sleep"] == 1


def test_read_takes_console_input_in_pieces_then_says_zero() -> None:
    body = (
        "li r2, 0x800\nli r3, 4\nsyscall SYS_READ\nmov r5, r2\n"
        "li r2, 0x804\nli r3, 100\nsyscall SYS_READ\nmov r6, r2\n"
        "li r2, 0x900\nli r3, 4\nsyscall SYS_READ\nmov r7, r2\n"
        "li r2, 0x800\nli r3, 10\nsyscall SYS_WRITE\nli r2, 0\nsyscall SYS_EXIT"
    )
    r = process(body, console_input=b"abcdefgh")
    assert (r.regs[5], r.regs[6], r.regs[7]) == (4, 4, 0)
    assert r.console == "abcdefgh\0\0"


@pytest.mark.parametrize("number", [5, 10, 13, 0xFFFF])
def test_an_unknown_call_answers_minus_one(number: int) -> None:
    r = process(f"li r2, 9\nsyscall {number}\nmov r5, r2\nli r2, 0\nsyscall SYS_EXIT")
    assert (r.exit, r.regs[5]) == ("exit", MINUS_1)
    assert r.syscalls["unknown"] == 1


@pytest.mark.parametrize("call", ["SYS_WRITE", "SYS_READ"])
@pytest.mark.parametrize(
    "addr, length",
    [(0x2000, 1), (0x1FFF, 2), (0, 0x2001), (0xFFFFFFFF, 1), (1, 0xFFFFFFFF), (0xFFFFFFF0, 0x20)],
)
def test_a_buffer_outside_the_processs_memory_answers_minus_one(call: str, addr: int, length: int) -> None:
    r = process(
        f"li r2, {addr}\nli r3, {length}\nsyscall {call}\nmov r5, r2\nli r2, 0\nsyscall SYS_EXIT", console_input=b"x"
    )
    assert (r.exit, r.regs[5], r.console) == ("exit", MINUS_1, "")


def test_a_buffer_that_ends_at_the_top_of_memory_is_fine() -> None:
    r = process("li r2, 0x1FFF\nli r3, 1\nsyscall SYS_WRITE\nmov r5, r2\nli r2, 0\nsyscall SYS_EXIT")
    assert r.regs[5] == 1 and r.console == "\0"


@pytest.mark.parametrize(
    "code, cause, badaddr",
    [("li r4, 0x2000\nld r4, 0(r4)", 4, 0x2000), ("halt", 2, 0x49000000), ("hcall 1", 3, 0x42000001), ("brk 5", 7, 5)],
)
def test_any_other_trap_kills_the_process_with_a_message(code: str, cause: int, badaddr: int) -> None:
    r = process(f"li r2, 'a'\n{code}\nli r2, 0\nsyscall SYS_EXIT")
    assert (r.exit, r.status) == ("killed", KILLED + cause)
    assert f"cause {cause} " in r.message and f"badaddr {badaddr:#010x}" in r.message


def test_a_process_that_never_ends_stops_at_the_step_limit() -> None:
    r = process("1: j 1b", max_steps=1000)
    assert (r.exit, r.steps) == ("limit", 1000)


def test_the_cli_runs_a_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--process", str(guests.path("process/echo.s")), "--input", "ok"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK\ntook ") and out.endswith(" instructions\n")
    assert main(["run", "--process", "--json", str(guests.path("process/task.s"))]) == 0
    assert json.loads(capsys.readouterr().out)["console"].endswith("[1] done, hash 31411769\n")


def test_the_cli_reports_a_killed_process_and_refuses_a_monitor(capsys: pytest.CaptureFixture[str]) -> None:
    hello = str(guests.path("programs/hello.s"))
    assert main(["run", "--process", hello]) == KILLED + 2
    assert "killed: cause 2 (PRIV)" in capsys.readouterr().err
    assert main(["run", "--process", "--monitor", "trap", hello]) == 2
    assert "takes no --monitor" in capsys.readouterr().err
