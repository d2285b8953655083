"""Snapshots: a guest saved at any step and resumed, on any core and under its monitor, ends exactly as if it had
never stopped (console, registers, every control register with ``cycle``, pending interrupts, steps, memory); a
server resumed with requests in flight answers them as it would have; a bad snapshot is refused with a clear
error and nothing is built from it.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popek.cli import main as popek
from popek.cores import CoreUnavailable, get_core
from popek.isa import state as S
from popek.isa.asm import assemble_file
from popek.vmm import snapshot
from popek.vmm.host import GuestSpec, Host
from popek.vmm.snapshot import SnapshotError
from tests.test_monitors import COMPARED, MEMSIZE, guest_programs

GUESTS = Path(__file__).resolve().parent.parent / "guests"
KV, ECHO, CRC32, PRIMES = 34, 7, 32, 33
BIG = 10**10
SERVER_MEM = 4 << 20


def has_core(name: str) -> bool:
    """True when this machine has the core (the C core may be missing on a developer's machine)."""
    try:
        return get_core(name) is not None
    except (CoreUnavailable, ImportError):
        return False


def cores() -> list[str]:
    """The cores to resume on, in the order JIT -> C -> reference."""
    return [name for name in ("jit", "c", "reference") if has_core(name)]


def assert_same(a: Host, b: Host) -> None:
    va, vb = a.vms[0], b.vms[0]
    diff = [(i, int(va.vstate[i]), int(vb.vstate[i])) for i in COMPARED
            if va.vstate[i] != vb.vstate[i]]  # fmt: skip
    assert not diff, f"state differs (slot, uninterrupted, resumed): {diff}"
    assert va.console.text() == vb.console.text()
    assert (va.halted, va.error, va.waiting) == (vb.halted, vb.error, vb.waiting)
    mismatch = np.flatnonzero(va.mem != vb.mem)
    assert len(mismatch) == 0, f"memory differs at {mismatch[:10].tolist()}"


def run(image: bytes, monitor: str, steps: int, profile: str = "classic", memsize: int = MEMSIZE) -> Host:
    host = Host([GuestSpec("g", image, monitor, profile, memsize)], "jit")
    host.run(steps, slice_steps=97)
    return host


# --- exactness ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("monitor", ["bare", "full", "trap", "hybrid", "rewrite"])
@given(image=guest_programs(), total=st.integers(1, 500), cut=st.floats(0, 1), cut2=st.floats(0, 1))
def test_random_guests_resume_exactly_on_every_core(
    monitor: str, image: bytes, total: int, cut: float, cut2: float
) -> None:
    whole = run(image, monitor, total)
    first = int(total * cut)
    second = first + int((total - first) * cut2)
    host = run(image, monitor, first)
    # Saved on the JIT core, resumed on the next core, saved again there, resumed on the last: JIT -> C -> reference.
    for core, until in zip(cores()[1:] or ["jit"], [second, total], strict=False):
        host = snapshot.restore(snapshot.dumps(host), core)
        host.run(until - int(host.vms[0].vstate[S.STEPS]), slice_steps=89)
    host.run(total - int(host.vms[0].vstate[S.STEPS]))
    assert_same(whole, host)


@pytest.mark.parametrize("saved,resumed", [("trap", "full"), ("full", "trap"), ("bare", "trap"), ("trap", "bare")])
@given(image=guest_programs(), total=st.integers(1, 500), cut=st.floats(0, 1))
def test_a_guest_moves_between_monitors_on_classic(
    saved: str, resumed: str, image: bytes, total: int, cut: float
) -> None:
    whole = run(image, saved, total)
    host = run(image, saved, int(total * cut))
    host = snapshot.restore(snapshot.dumps(host), "jit", monitor=resumed)
    assert host.monitors[0].name == resumed
    host.run(total - int(host.vms[0].vstate[S.STEPS]))
    assert_same(whole, host)


@cache
def image_of(path: str, paravirt: bool = False) -> bytes:
    return assemble_file(str(GUESTS / path), defines={"PARAVIRT": 1} if paravirt else None).image


@pytest.mark.parametrize("monitor", ["bare", "full", "trap", "hybrid", "rewrite", "pv"])
@settings(max_examples=4)
@given(at=st.integers(0, 120_000))
def test_the_kernel_resumes_exactly_under_its_monitor(monitor: str, at: int) -> None:
    image = image_of("kernel/kernel.s", monitor == "pv")
    total = 150_000
    whole = run(image, monitor, total, memsize=1 << 20)
    host = run(image, monitor, at, memsize=1 << 20)
    for core in cores()[:2]:
        host = snapshot.restore(snapshot.dumps(host), core)
        host.run((total - at) // 2 if core == "jit" else BIG)
        host.run(total - int(host.vms[0].vstate[S.STEPS]))
    assert_same(whole, host)


REQUESTS = [(ECHO, b"hello"), (CRC32, b"abc" * 300), (PRIMES, b"20000"), (KV, b"PUT a\n1"), (KV, b"GET a"),
            (ECHO, b"x" * 2000)]  # fmt: skip


def booted_server(monitor: str, design: str = "iterative") -> tuple[Host, list[int]]:
    """A server booted until it waits, then handed every request at once (none answered yet)."""
    defines = {"CONCURRENT": 1} if design == "concurrent" else {}
    if monitor == "pv":
        defines["PARAVIRT"] = 1
    image = server_image(tuple(sorted(defines.items())))
    host = Host([GuestSpec("server", image, monitor, "classic", SERVER_MEM)], "jit")
    host.run(BIG)
    return host, [host.send(0, port, payload) for port, payload in REQUESTS]


@cache
def server_image(defines: tuple[tuple[str, int], ...]) -> bytes:
    return assemble_file(str(GUESTS / "servers/server.s"), defines=dict(defines) or None).image


@pytest.mark.parametrize("monitor", ["bare", "trap", "rewrite", "pv"])
@pytest.mark.parametrize("design", ["iterative", "concurrent"])
@settings(max_examples=4)
@given(at=st.integers(0, 150_000))
def test_a_server_resumed_with_requests_in_flight_answers_them(monitor: str, design: str, at: int) -> None:
    whole, tags = booted_server(monitor, design)
    whole.run(BIG)
    expected = {m.tag: m.payload for m in whole.replies(0)}
    assert sorted(expected) == sorted(tags)
    host, _ = booted_server(monitor, design)
    host.run(at)
    early = {m.tag: m.payload for m in host.replies(0)}  # replies already taken stay taken: not in the snapshot
    for core in cores()[:2]:
        host = snapshot.restore(snapshot.dumps(host), core)
    host.run(BIG)
    got = early | {m.tag: m.payload for m in host.replies(0)}
    assert got == expected
    assert_same(whole, host)


# --- state recovery ----------------------------------------------------------------------------------------
def test_the_kv_service_restarted_from_its_last_snapshot_has_its_data(tmp_path: Path) -> None:
    host, _ = booted_server("trap")
    host.run(BIG)
    host.replies(0)
    for i in range(20):
        host.send(0, KV, b"PUT key%d\nvalue %d" % (i, i))
    host.run(BIG)
    assert all(m.payload == b"STORED" for m in host.replies(0))
    snapshot.save(host, tmp_path / "kv.snap")
    host.send(0, KV, b"PUT late\nlost")  # after the last snapshot: lost with the crash
    host.run(BIG)
    del host  # the crash: the VM and everything in it are gone
    back = snapshot.restore(snapshot.read(tmp_path / "kv.snap"), "jit")
    tags = {back.send(0, KV, b"GET key%d" % i): i for i in range(20)}
    late = back.send(0, KV, b"GET late")
    back.run(BIG)
    got = {m.tag: m.payload for m in back.replies(0)}
    assert all(got[t] == b"FOUND\nvalue %d" % i for t, i in tags.items())
    assert got[late] == b"NOTFOUND"


# --- refusal -----------------------------------------------------------------------------------------------
@cache
def kernel_snapshot() -> bytes:
    return snapshot.dumps(run(image_of("kernel/kernel.s"), "trap", 30_000, memsize=1 << 20))


@given(data=st.data())
def test_a_truncated_snapshot_is_refused(data: st.DataObject) -> None:
    blob = kernel_snapshot()
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(SnapshotError, match="truncated|magic"):
        snapshot.decode(blob[:cut])


@given(data=st.data())
def test_a_corrupt_snapshot_is_refused(data: st.DataObject) -> None:
    blob = bytearray(kernel_snapshot())
    where = data.draw(st.integers(0, len(blob) - 1))
    blob[where] ^= data.draw(st.integers(1, 255))
    with pytest.raises(SnapshotError):
        snapshot.decode(bytes(blob))


def _resign(body: bytes) -> bytes:
    """A snapshot file around ``body`` with a valid prefix: only the contents can be wrong."""
    return struct.pack("<8sIQ32s", snapshot.MAGIC, snapshot.VERSION, len(body), hashlib.sha256(body).digest()) + body


def _header(blob: bytes) -> tuple[dict, bytes]:
    body = blob[52:]
    (n,) = struct.unpack_from("<I", body)
    return json.loads(zlib.decompress(body[4 : 4 + n])), body[4 + n :]


def _rebuild(header: dict, memory: bytes) -> bytes:
    head = zlib.compress(json.dumps(header).encode())
    return _resign(struct.pack("<I", len(head)) + head + memory)


@pytest.mark.parametrize(
    "change",
    [
        lambda h, m: (h | {"vstate": h["vstate"][:-1]}, m),
        lambda h, m: (h | {"memsize": 12345}, m),
        lambda h, m: (h | {"monitor": "vmware"}, m),
        lambda h, m: (h | {"profile": {"name": "x", "behaviour": {"halt": 9}}}, m),
        lambda h, m: (h | {"nic": h["nic"] | {"inbox": [[1, 2, "***", False]]}}, m),
        lambda h, m: (h | {"console": "nothing"}, m),
        lambda h, m: ({k: v for k, v in h.items() if k != "stats"}, m),
        lambda h, m: (h, m[:-7]),
        lambda h, m: (h, zlib.compress(b"\1" * (1 << 22))),
        lambda h, m: ([1, 2, 3], m),
    ],
)
def test_a_well_signed_snapshot_with_bad_contents_is_refused(change) -> None:
    header, memory = _header(kernel_snapshot())
    with pytest.raises(SnapshotError):
        snapshot.decode(_rebuild(*change(header, memory)))
    with pytest.raises(SnapshotError):
        snapshot.decode(_resign(b"\xff\xff\xff\x7fjunk"))


def test_a_foreign_snapshot_is_refused() -> None:
    blob = kernel_snapshot()
    with pytest.raises(SnapshotError, match="magic"):
        snapshot.decode(b"NOTPOPEK" + blob[8:])
    with pytest.raises(SnapshotError, match="version 7"):
        snapshot.decode(blob[:8] + struct.pack("<I", 7) + blob[12:])
    snap = snapshot.decode(blob)
    snapshot.check(snap, image=image_of("kernel/kernel.s"), profile="classic")
    with pytest.raises(SnapshotError, match="another image"):
        snapshot.check(snap, image=image_of("programs/hello.s"))
    with pytest.raises(SnapshotError, match="profile"):
        snapshot.check(snap, profile="x86like")


def test_a_paravirtual_guest_resumes_only_under_its_monitor() -> None:
    host = run(image_of("kernel/kernel.s", True), "pv", 20_000, memsize=1 << 20)
    blob = snapshot.dumps(host)
    with pytest.raises(SnapshotError, match="resume it under 'pv'"):
        snapshot.restore(blob, "jit", monitor="trap")


def test_a_snapshot_is_restored_into_a_vm_of_an_existing_host() -> None:
    image = image_of("kernel/kernel.s")
    whole = run(image, "trap", 100_000, memsize=1 << 20)
    saved = run(image, "trap", 40_000, memsize=1 << 20)
    host = Host([GuestSpec("other", image_of("programs/hello.s"), "trap", "classic", 1 << 20),
                 GuestSpec("target", b"", "trap", "classic", 1 << 20)], "jit")  # fmt: skip
    host.run(1000)
    vm = snapshot.restore_into(host, "target", snapshot.dumps(saved))
    host.run(60_000)
    assert vm.console.text() == whole.vms[0].console.text()
    assert (vm.mem == whole.vms[0].mem).all() and (vm.vstate[COMPARED] == whole.vms[0].vstate[COMPARED]).all()


def test_memory_pages_of_zeros_cost_nothing() -> None:
    small = snapshot.dumps(run(image_of("programs/hello.s"), "bare", 10, memsize=1 << 20))
    large = snapshot.dumps(run(image_of("programs/hello.s"), "bare", 10, memsize=64 << 20))
    assert len(large) - len(small) < 64 * 1024 // 8 + 64  # one bit per page more, and no page data


# --- the command line --------------------------------------------------------------------------------------
def test_run_save_at_then_resume_prints_the_whole_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    kernel, snap = str(GUESTS / "kernel/kernel.s"), str(tmp_path / "k.snap")
    code = popek(["run", kernel])
    whole = capsys.readouterr().out
    assert popek(["run", kernel, "--save-at", "40000", "--snapshot", snap]) == 0
    first = capsys.readouterr()
    assert "saved step 40000" in first.err
    assert popek(["resume", snap, "--core", cores()[-1] if len(cores()) < 3 else "c"]) == code
    assert first.out + capsys.readouterr().out == whole
    assert popek(["resume", snap, "--monitor", "full", "--json"]) == code
    assert json.loads(capsys.readouterr().out)["console"] == whole


BAD_COMMANDS = [
    ["resume", "{tmp}/none.snap"],
    ["resume", "{kernel}"],
    ["resume", "{tmp}/bad.snap"],
    ["run", "{kernel}", "--save-at", "5"],
    ["resume", "{tmp}/k.snap", "--profile", "x86like"],
    ["resume", "{tmp}/k.snap", "--image", "{hello}"],
]


@pytest.mark.parametrize("argv", BAD_COMMANDS)
def test_resume_refuses_bad_input_without_a_traceback(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "bad.snap").write_bytes(kernel_snapshot()[:-1])
    (tmp_path / "k.snap").write_bytes(kernel_snapshot())
    subs = {"tmp": str(tmp_path), "kernel": str(GUESTS / "kernel/kernel.s"), "hello": str(GUESTS / "programs/hello.s")}
    assert popek([a.format(**subs) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "popek: error:" in err and "Traceback" not in err
