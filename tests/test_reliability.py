"""Bad input and hostile guests end in a prompt, clear, bounded result: an error message and an exit status,
never a traceback, a hang or a host that runs out of memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from popek.cli import main as popek
from popek.isa.asm import assemble_file
from popek.isa.files import MAX_SOURCE
from popek.vmm.host import GuestSpec, Host, available_memory

GUESTS = Path(__file__).resolve().parent.parent / "guests"
HELLO = str(GUESTS / "programs" / "hello.s")


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = popek(args)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize("command", ["asm", "run", "disasm"])
def test_a_device_or_a_folder_is_not_read_as_input(command: str, capsys: pytest.CaptureFixture) -> None:
    for path in ("/dev/zero", str(GUESTS)):
        code, _, err = run_cli([command, path], capsys)
        assert code == 2 and "not a regular file" in err


def test_a_missing_file_is_a_usage_error_for_every_command(capsys: pytest.CaptureFixture) -> None:
    for command in ("asm", "run", "disasm"):
        code, _, err = run_cli([command, "/no/such/file.s"], capsys)
        assert code == 2 and "no such file" in err


def test_a_source_larger_than_any_real_one_is_refused_without_reading_it_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    big = tmp_path / "big.s"
    with big.open("wb") as f:
        f.truncate(MAX_SOURCE + 1)  # sparse: costs no disk
    code, _, err = run_cli(["asm", str(big)], capsys)
    assert code == 1 and "more than" in err and "MiB" in err


def test_a_deep_extends_chain_is_an_error_not_a_recursion_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for i in range(300):
        parent = f"p{i + 1}.toml" if i < 299 else "classic"
        (tmp_path / f"p{i}.toml").write_text(f'extends = "{parent}"\n')
    code, _, err = run_cli(["run", HELLO, "--profile", str(tmp_path / "p0.toml")], capsys)
    assert code == 2 and "chain deeper than" in err


@pytest.mark.parametrize(
    "args", [["run", HELLO, "--max-steps", "-1"], ["run", HELLO, "--max-steps", "0"], ["host", HELLO, "--slice", "0"]]
)
def test_limits_must_be_positive(args: list[str], capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "must be at least 1" in err


def test_guests_that_need_more_memory_than_the_machine_has_are_refused_before_allocating(
    capsys: pytest.CaptureFixture,
) -> None:
    count = available_memory() // (1 << 30) + 2
    code, _, err = run_cli(["host", "--mem", "1G", *[HELLO] * count], capsys)
    assert code == 2 and "host memory" in err


@pytest.mark.parametrize("monitor", ["bare", "full", "trap", "hybrid", "rewrite"])
def test_an_empty_image_is_reported_as_a_trap_loop_at_once(monitor: str) -> None:
    result = Host([GuestSpec("empty", b"", monitor, "classic", 4096)]).run()[0]
    assert result.exit == "trap-loop" and result.steps <= 100_000
    assert "trap loop at pc 0x00000000, cause ILLEGAL" in result.message


def test_a_trap_loop_beside_a_good_guest_leaves_it_its_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    code, out, _ = run_cli(["host", HELLO, f"{empty}:trap", "--json"], capsys)
    results = json.loads(out)
    assert code == 1 and results["hello-1"]["console"] == "Hello from P32!\n" and results["hello-1"]["exit"] == "halt"
    assert results["empty-2"]["exit"] == "trap-loop" and "trap loop" in results["empty-2"]["message"]


def test_a_spinning_guest_stops_at_the_time_limit() -> None:
    spin = assemble_file(GUESTS / "demos" / "spin.s").image
    host = Host([GuestSpec("spin", spin, "trap", "classic", 4096)])
    result = host.run(max_steps=10**12, timeout=0.2)[0]
    assert result.exit == "timeout" and not result.halted and result.steps > 0


def test_console_output_is_capped_with_a_mark_and_streamed_whole() -> None:
    from popek.isa.devices import Console

    seen = bytearray()
    console = Console(cap=10)
    console.output.sink = seen.extend
    console.output += b"0123456789abcdef"  # a core's buffer of console bytes
    console.write(ord("!"))  # a port write
    assert bytes(console.output) == b"0123456789" and console.output.dropped == 7
    assert console.text() == "0123456789\n[output truncated: 7 more bytes not kept]\n"
    assert bytes(seen) == b"0123456789abcdef!"  # the watcher sees everything as it comes


def test_a_flooding_guest_keeps_host_memory_bounded() -> None:
    from popek.isa.asm import assemble
    from popek.isa.devices.console import OUTPUT_CAP

    flood = assemble("li r4, 'x'\n1: out 0, r4\n j 1b\n").image
    host = Host([GuestSpec("flood", flood, "bare", "classic", 4096)])
    host.vms[0].console.output.cap = 1000
    result = host.run(max_steps=300_000)[0]
    assert result.exit == "limit" and len(host.vms[0].console.output) == 1000 <= OUTPUT_CAP
    assert result.console.endswith("more bytes not kept]\n") and host.vms[0].console.output.dropped > 50_000


# --- the command line: JSON always parses, traces stay off stdout, guests cannot drive the terminal ---------
@pytest.mark.parametrize(
    "args",
    [
        ["run", "/no/such.s", "--json"],
        ["run", HELLO, "--json", "--max-steps", "-1"],
        ["run", HELLO, "--json", "--profile", "nosuchprofile"],
        ["run", str(GUESTS / "demos" / "spin.s"), "--json", "--max-steps", "1000"],
        ["run", HELLO, "--json", "--trace"],
        ["host", HELLO, "/dev/zero", "--json"],
    ],
)
def test_json_mode_prints_one_json_object_whatever_happens(args: list[str], capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(args, capsys)
    data = json.loads(out)
    assert isinstance(data, dict)
    if "error" in data:
        assert data["status"] == code != 0 and data["exit"] in ("error", "usage")
    elif "exit" in data:
        assert data["exit"] in ("halt", "limit") and (data["exit"] == "halt") == (code == 0)


def test_a_guests_escape_sequences_are_shown_not_obeyed_beside_another_guest(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    forger = tmp_path / "forger.s"
    forged = "\rhello-2 | I am hello\x1b[2J\n"
    forger.write_text("".join(f"li r4, {ord(c)}\nout 0, r4\n" for c in forged) + "li r1, 0\nhalt\n")
    code, out, _ = run_cli(["host", str(forger), HELLO], capsys)
    assert code == 0
    assert out.splitlines() == ["forger-1 | \\x0dhello-2 | I am hello\\x1b[2J", "hello-2  | Hello from P32!"]


# --- hostile guests beside a good one ----------------------------------------------------------------------
HOSTILE = {
    "storm": "",  # an empty image: every fetch is ILLEGAL, and so is the vector's
    "spin": "li r4, 1\nmtcr psw, r4\n1: j 1b\n",  # interrupts off, forever
    "flood": "li r4, 'x'\n1: out 0, r4\nj 1b\n",
    "hcalls": "li r5, 0\n1: hcall 3\nhcall 9\nhcall 0x7FF\naddi r5, r5, 1\nj 1b\n",
    "device": "".join(f"li r4, {v}\nout {p}, r4\n" for p in range(0x10, 0x19) for v in (0, 3, 0xFFFFFFF0, 0x100000))
    + "1: out 0x16, r0\nj 1b\n",  # every NIC register with garbage, then a doorbell storm
    "escape": "li r4, 0\nmtcr base, r4\nli r4, -1\nmtcr bound, r4\nli r4, 0\nmtcr psw, r4\n"
    "li r5, 0x200000\nst r5, 0(r5)\nld r6, 4(r5)\nhalt\n",  # drop to user mode with R opened wide, then reach out
    "terminal": "".join(f"li r4, {ord(c)}\nout 0, r4\n" for c in "\x1b]0;pwned\x07\x1b[2J\rhello-1 | fake\n")
    + "halt\n",
}


@pytest.mark.parametrize("monitor", ["bare", "full", "trap", "rewrite", "hybrid"])
def test_hostile_guests_are_contained_and_the_good_one_finishes_exactly(
    monitor: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from popek.isa.asm import assemble

    guests = []
    for name, source in HOSTILE.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(assemble(source).image if source else b"")
        guests.append(f"{path}:{monitor}")
    code, out, _ = run_cli(
        ["host", f"{HELLO}:{monitor}", *guests, "--json", "--max-steps", "300000", "--mem", "64K"], capsys
    )
    results = json.loads(out)
    hello = results["hello-1"]
    assert hello["exit"] == "halt" and hello["console"] == "Hello from P32!\n" and code == 1
    assert (
        hello["steps"]
        == json.loads(run_cli(["run", HELLO, "--monitor", monitor, "--json", "--mem", "64K"], capsys)[1])["steps"]
    )  # exactly what it does alone
    assert results["storm-2"]["exit"] == "trap-loop"
    assert results["spin-3"]["exit"] == "limit" and results["flood-4"]["exit"] == "limit"
    assert len(results["flood-4"]["console"]) < 400_000  # bounded by the steps it was given
    assert out.count("\n") == 1 and "\x1b" not in out  # one JSON line: the escapes are inside its strings


def test_profile_files_of_random_bytes_give_clear_errors(tmp_path: Path) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from popek.isa.profiles import ProfileError, load_profile

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
    def check(data: bytes) -> None:
        path = tmp_path / "p.toml"
        path.write_bytes(data)
        try:
            load_profile(str(path))
        except ProfileError as e:
            assert str(e).startswith(str(path))

    check()


def test_a_line_without_end_is_shown_in_pieces_not_held_whole() -> None:
    import io

    from popek.terminal import LINE_MAX, Stream

    out = io.StringIO()
    stream = Stream(out, prefix="vm | ")
    for _ in range(10):
        stream(b"x" * 1000)
    assert out.getvalue() == f"vm | {'x' * LINE_MAX}\n" * 2 and len(stream.partial) == 10_000 - 2 * LINE_MAX
    stream.close()
    assert out.getvalue().endswith(f"vm | {'x' * (10_000 - 2 * LINE_MAX)}\n")
