"""The bundled guest programs, checked against truths computed outside P32 (zlib, Python's own arithmetic)."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from popek.isa.asm import assemble_file
from popek.vmm.host import Machine

PROGRAMS = Path(__file__).resolve().parent.parent / "guests" / "programs"


def run_program(name: str, core: str = "jit", **defines: int) -> tuple[str, int, object]:
    program = assemble_file(str(PROGRAMS / name), defines=defines or None)
    machine = Machine(core=core)
    machine.load(program.image)
    result = machine.run(max_steps=50_000_000)
    assert result.halted, result.message
    return result.console, result.status, program


def test_hello() -> None:
    console, status, _ = run_program("hello.s")
    assert (console, status) == ("Hello from P32!\n", 0)


def test_primes_below_10000() -> None:
    console, status, _ = run_program("primes.s")
    assert console == "1229\n" and status == 0  # pi(10^4) = 1229


def test_primes_repeated_gives_same_count() -> None:
    assert run_program("primes.s", N=1000, REPEAT=3)[0] == "168\n"  # pi(10^3) = 168


def test_crc32_matches_zlib() -> None:
    console, status, program = run_program("crc32.s")
    data = program.image[program.symbols["message"] : program.symbols["message_end"]]
    assert len(data) > 40
    assert console == f"0x{zlib.crc32(data):08x}\n" and status == 0


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def test_fibonacci() -> None:
    console, status, _ = run_program("fib.s")
    first, second = console.splitlines()
    assert first.split() == [str(_fib(i)) for i in range(20)]
    assert second == f"fib(N) = {_fib(20)}" and status == 0


def test_sort_matches_python() -> None:
    count = 500
    x, values = 12345, []
    for _ in range(count):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        values.append((x >> 16) & 0x7FFF)
    ordered = sorted(values)
    checksum = sum((i + 1) * v for i, v in enumerate(ordered)) & 0xFFFFFFFF
    console, status, _ = run_program("sort.s")
    assert console == f"{ordered[0]} {ordered[-1]} {checksum}\n" and status == 0


@pytest.mark.parametrize("name", ["hello.s", "fib.s", "crc32.s"])
def test_reference_core_agrees(name: str) -> None:
    assert run_program(name, core="reference")[:2] == run_program(name)[:2]


def test_arith_loop_matches_python() -> None:
    x, acc, m = 0x12345678, 0, 0xFFFFFFFF
    for _ in range(1000):
        x ^= (x << 13) & m
        x ^= x >> 17
        x ^= (x << 5) & m
        p = (x * 0x9E3779B1) & m
        acc = (acc + p) & m
        acc = (acc + (acc < p)) & m
    assert run_program("arith.s", ROUNDS=1000)[0] == f"0x{acc:08x}\n"
