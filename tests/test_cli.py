"""The popek command as a user meets it: the demo, JSON output, exit statuses and errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from popek.cli import main as popek

GUESTS = Path(__file__).resolve().parent.parent / "guests"


def test_demo_runs_and_every_comparison_holds(capsys: pytest.CaptureFixture) -> None:
    assert popek(["demo"]) == 0
    out = capsys.readouterr().out
    assert "Hello from P32!" in out and "the kernel runs in user mode" in out and "NO" not in out


def test_run_json(capsys: pytest.CaptureFixture) -> None:
    assert popek(["run", str(GUESTS / "programs/primes.s"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["console"] == "1229\n" and data["halted"] and data["status"] == 0
    assert len(data["regs"]) == 16 and data["steps"] == data["stats"]["cycle"]


def test_run_json_under_a_monitor_has_exit_statistics(capsys: pytest.CaptureFixture) -> None:
    assert popek(["run", str(GUESTS / "programs/syscalls.s"), "--monitor", "trap", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    assert stats["exits"]["SYSCALL"] == 1001 and stats["total_exits"] == sum(stats["exits"].values())


def test_stats_on_the_translating_core_report_translation(capsys: pytest.CaptureFixture) -> None:
    from popek.cores import dbt

    dbt.reset_stats()
    assert popek(["run", str(GUESTS / "programs/primes.s"), "-D", "REPEAT=200", "--core", "dbt", "--stats"]) == 0
    out, err = capsys.readouterr()
    assert out == "1229\n"
    line = next(line for line in err.splitlines() if "translating core:" in line)
    assert dbt.stats().translations >= 1 and f"{dbt.stats().translations} translations" in line


def test_step_limit_and_endless_wfi(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert popek(["run", str(GUESTS / "demos/spin.s"), "--max-steps", "1000"]) == 124
    wfi = tmp_path / "wfi.s"
    wfi.write_text("wfi\n")
    assert popek(["run", str(wfi)]) == 125
    assert "can never end" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, status, message",
    [
        (["run", "missing.s"], 2, "no such file"),
        (["run", str(GUESTS / "programs/hello.s"), "--profile", "vax"], 2, "unknown profile 'vax'"),
        (["run", str(GUESTS / "programs/hello.s"), "--mem", "lots"], 2, "invalid memory size"),
        (["run", str(GUESTS / "programs/hello.s"), "--mem", "64"], 2, "does not fit"),
        (["check", "--profile", "nope.toml"], 2, "nope.toml"),
        (["run", "/"], 2, "/: not a regular file"),
        (["asm", str(GUESTS / "programs/hello.s"), "-o", "/nonexistent/dir/x.bin"], 2, "/nonexistent/dir/x.bin"),
    ],
)
def test_user_errors_are_one_clear_line(argv: list[str], status: int, message: str, capsys) -> None:
    assert popek(argv) == status
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_asm_errors_have_place_and_caret(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.s"
    bad.write_text("add r1, r2\nnop\nbeq r1, r2, nowhere\n")
    assert popek(["asm", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:1:" in err and f"{bad}:3:13: error: undefined symbol 'nowhere'" in err and "^" in err


def test_host_prefixes_each_console(capsys: pytest.CaptureFixture) -> None:
    hello, primes = str(GUESTS / "programs/hello.s"), str(GUESTS / "programs/primes.s")
    assert popek(["host", f"{hello}:trap", f"{primes}:full:x86like", "--max-steps", "400000"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "hello-1  | Hello from P32!" in out and "primes-2 | 1229" in out  # names padded to one width
