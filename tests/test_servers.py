"""The server kernel and its services (guests/servers/README.md): every answer against an independent truth
(zlib, a numpy sieve, a Python dict, a Counter), byte for byte the same on the bare machine and under every
monitor, in both designs; concurrency and the urgent channel measured in guest instructions.
"""

from __future__ import annotations

import zlib
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popek.cores import CoreUnavailable, get_core
from popek.isa.asm import Program, assemble, assemble_file
from popek.isa.spec import decode
from popek.vmm.host import GuestSpec, Host
from popek.vmm.monitors import paravirt as pv

SERVER = Path(__file__).resolve().parent.parent / "guests" / "servers" / "server.s"
MEM = 4 << 20
ECHO, CRC32, PRIMES, KV, SESSION, NAMES = 7, 32, 33, 34, 35, 53
DESIGNS = ["iterative", "concurrent"]
BIG = 10**10  # a step limit no test reaches: runs end when the server waits for the card


@cache
def build(design: str, paravirt: bool = False, **values: int) -> Program:
    defines = {"CONCURRENT": 1} if design == "concurrent" else {}
    if paravirt:
        defines["PARAVIRT"] = 1
    return assemble_file(str(SERVER), defines={**defines, **values} or None)


def boot(monitor: str = "bare", core: str = "jit", design: str = "iterative", **values: int) -> Host:
    """A host of one server guest, booted until it waits for its first request (pv runs the PV build)."""
    try:
        get_core(core)
    except (CoreUnavailable, ImportError) as e:
        pytest.skip(str(e))
    image = build(design, monitor == "pv", **values).image
    host = Host([GuestSpec("server", image, monitor, "classic", MEM)], core)
    result = host.run(BIG)[0]
    assert result.exit == "idle" and "waiting" in result.message, result.message
    return host


def serve(host: Host, requests: list[tuple[int, bytes]], urgent: bool = False) -> list[bytes]:
    """Send the requests at once, run until the server waits again, return the replies in request order."""
    tags = [host.send(0, port, payload, urgent) for port, payload in requests]
    result = host.run(BIG)[0]
    assert result.exit == "idle", result.message
    got = {m.tag: m for m in host.replies(0)}
    assert sorted(got) == sorted(tags)  # one reply per request, nothing else
    assert all(got[t].port == port for t, (port, _) in zip(tags, requests, strict=True))
    return [got[t].payload for t in tags]


# --- the truths ------------------------------------------------------------------------------------------------
def crc_truth(data: bytes) -> bytes:
    return b"%08x" % zlib.crc32(data)


def primes_truth(n: int) -> bytes:
    if n < 3:
        return b"0"
    sieve = np.ones(n, dtype=bool)
    sieve[:2] = False
    for i in range(2, int(n**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = False
    return str(int(sieve.sum())).encode()


class KvModel:
    """The kv service's contract on a dict."""

    def __init__(self) -> None:
        self.d: dict[bytes, bytes] = {}

    def __call__(self, request: bytes) -> bytes:
        if request.startswith(b"PUT "):
            key, newline, value = request[4:].partition(b"\n")
            if not newline:
                return b"ERR bad request"
            if len(value) > 4096:
                return b"ERR value too long"
            if not 1 <= len(key) <= 64:
                return b"ERR bad key"
            if key not in self.d and len(self.d) == 64:
                return b"ERR full"
            self.d[key] = value
            return b"STORED"
        for command in (b"GET ", b"DELETE "):
            if request.startswith(command):
                key = request[len(command) :]
                if not 1 <= len(key) <= 64:
                    return b"ERR bad key"
                if key not in self.d:
                    return b"NOTFOUND"
                if command == b"GET ":
                    return b"FOUND\n" + self.d[key]
                del self.d[key]
                return b"DELETED"
        return b"ERR bad request"


def truths(requests: list[tuple[int, bytes]]) -> list[bytes]:
    """What each request must get, computed in Python alone."""
    kv, visits, out = KvModel(), Counter(), []
    for port, payload in requests:
        if port == ECHO:
            out.append(payload)
        elif port == CRC32:
            out.append(crc_truth(payload))
        elif port == PRIMES:
            out.append(primes_truth(int(payload)))
        elif port == KV:
            out.append(kv(payload))
        elif port == SESSION:
            visits[payload] += 1
            out.append(str(visits[payload]).encode())
    return out


SMALL = [(ECHO, b"hello"), (ECHO, b""), (CRC32, b"123456789"), (CRC32, bytes(range(256))), (PRIMES, b"0"),
         (PRIMES, b"3"), (PRIMES, b"1000"), (KV, b"PUT k\nvalue"), (KV, b"GET k"), (KV, b"PUT k\n"), (KV, b"GET k"),
         (KV, b"GET nope"), (KV, b"DELETE k"), (KV, b"DELETE k"), (SESSION, b"alice"), (SESSION, b"bob"),
         (SESSION, b"alice"), (ECHO, bytes(range(256)) * 3)]  # fmt: skip


@cache
def bare_replies(design: str) -> tuple[bytes, ...]:
    return tuple(serve(boot("bare", "jit", design), SMALL))


def test_the_bare_machine_answers_every_service_as_python_does() -> None:
    for design in DESIGNS:
        assert list(bare_replies(design)) == truths(SMALL), design


RUNS = [("bare", "c"), ("bare", "reference"), ("full", "jit"), ("trap", "jit"), ("trap", "c"), ("rewrite", "jit"),
        ("rewrite", "c"), ("hybrid", "jit"), ("hybrid", "c"), ("pv", "jit"), ("pv", "c")]  # fmt: skip


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize(("monitor", "core"), RUNS, ids=lambda v: v)
def test_every_monitor_and_core_gives_the_bare_machines_replies(monitor: str, core: str, design: str) -> None:
    assert serve(boot(monitor, core, design), SMALL) == list(bare_replies(design))


@pytest.mark.parametrize(("monitor", "core"), [("bare", "jit"), ("trap", "jit"), ("pv", "jit"), ("bare", "c")])
def test_primes_counts_exactly_up_to_ten_million(monitor: str, core: str) -> None:
    host = boot(monitor, core)
    ns = [0, 1, 2, 3, 4, 31, 32, 33, 65, 99_991, 1_000_003]
    if monitor == "bare":
        ns.append(10_000_000)
    replies = serve(host, [(PRIMES, str(n).encode()) for n in ns])
    assert replies == [primes_truth(n) for n in ns]
    assert serve(host, [(PRIMES, b"10000001"), (PRIMES, b"1234567890"), (PRIMES, b"12a"), (PRIMES, b"")]) == [
        b"ERR too large", b"ERR too large", b"ERR bad number", b"ERR bad number"
    ]  # fmt: skip


# --- properties against the truths, on a server booted once per design ------------------------------------------
@cache
def shared(design: str) -> Host:
    return boot("bare", "jit", design)


@settings(max_examples=25)
@given(data=st.lists(st.binary(max_size=3000), min_size=1, max_size=4), design=st.sampled_from(DESIGNS))
def test_crc32_is_zlibs(data: list[bytes], design: str) -> None:
    assert serve(shared(design), [(CRC32, d) for d in data]) == [crc_truth(d) for d in data]


@settings(max_examples=15)
@given(ns=st.lists(st.integers(0, 300_000), min_size=1, max_size=3), design=st.sampled_from(DESIGNS))
def test_primes_matches_a_numpy_sieve(ns: list[int], design: str) -> None:
    assert serve(shared(design), [(PRIMES, str(n).encode()) for n in ns]) == [primes_truth(n) for n in ns]


@settings(max_examples=25)
@given(data=st.lists(st.binary(max_size=8192), min_size=1, max_size=4), design=st.sampled_from(DESIGNS))
def test_echo_returns_every_byte(data: list[bytes], design: str) -> None:
    assert serve(shared(design), [(ECHO, d) for d in data]) == data


KEYS = st.sampled_from([b"a", b"b", b"key", b"k\x00y", b"x" * 64, b"\xff\xfe", b"x" * 65, b""])
VALUES = st.one_of(st.binary(max_size=40), st.binary(min_size=4090, max_size=4100))
KV_OPS = st.one_of(
    st.builds(lambda k, v: b"PUT " + k + b"\n" + v, KEYS, VALUES),
    st.builds(lambda k: b"GET " + k, KEYS),
    st.builds(lambda k: b"DELETE " + k, KEYS),
    st.sampled_from([b"PUT nonewline", b"", b"PUT", b"GET", b"FROB x", b"DELETEx"]),
)


@settings(max_examples=20)
@given(ops=st.lists(KV_OPS, min_size=1, max_size=12), design=st.sampled_from(DESIGNS))
def test_kv_behaves_like_a_dict(ops: list[bytes], design: str) -> None:
    host = boot("bare", "jit", design)  # a fresh store for each sequence
    assert serve(host, [(KV, op) for op in ops]) == truths([(KV, op) for op in ops])


@settings(max_examples=15)
@given(ids=st.lists(st.sampled_from([b"a", b"b", b"c" * 32, b"\x00"]), min_size=1, max_size=10))
def test_session_counts_each_clients_visits(ids: list[bytes]) -> None:
    host = boot("bare", "jit", "concurrent")
    assert serve(host, [(SESSION, i) for i in ids]) == truths([(SESSION, i) for i in ids])


def test_a_full_store_says_so_and_a_delete_makes_room() -> None:
    host = shared("iterative")
    serve(host, [(KV, b"DELETE " + bytes([i])) for i in range(1, 100)])
    puts = [(KV, b"PUT %d\n%d" % (i, i)) for i in range(64)]
    assert serve(host, puts) == [b"STORED"] * 64
    assert serve(host, [(KV, b"PUT new\nv"), (KV, b"PUT 5\nfive"), (KV, b"GET 5")]) == [
        b"ERR full", b"STORED", b"FOUND\nfive"
    ]  # fmt: skip
    assert serve(host, [(KV, b"DELETE 7"), (KV, b"PUT new\nv"), (KV, b"GET new")]) == [
        b"DELETED",
        b"STORED",
        b"FOUND\nv",
    ]
    serve(host, [(KV, b"DELETE %d" % i) for i in range(64)] + [(KV, b"DELETE new")])


def test_bad_requests_get_errors_and_the_server_goes_on() -> None:
    host = boot("bare", "jit", "concurrent")
    requests = [(SESSION, b""), (SESSION, b"x" * 33), (KV, b"PUT k\n" + b"v" * 4097), (KV, b"GET " + b"k" * 65),
                (99, b"nobody"), (ECHO, b"still here")]  # fmt: skip
    errors = [b"ERR bad client id", b"ERR bad client id", b"ERR value too long", b"ERR bad key", b"ERR no such port"]
    assert serve(host, requests) == [*errors, b"still here"]
    sessions = serve(host, [(SESSION, b"%d" % i) for i in range(257)])
    assert sessions[:256] == [b"1"] * 256 and sessions[256] == b"ERR full"


@pytest.mark.parametrize("monitor", ["bare", "trap", "pv"])
def test_messages_too_long_for_the_drivers_buffers_are_refused_and_the_rest_get_through(monitor: str) -> None:
    host = boot(monitor, "jit", "iterative")
    sizes = [8193, 10, 65536, 8192, 2, 9000, 9000, 3]  # the card's limit is 65536, a service's 8192
    replies = serve(host, [(ECHO, b"y" * n) for n in sizes])
    assert replies == [b"y" * n if n <= 8192 else b"ERR message too long" for n in sizes]
    urgent = [b"x" * 1000, b"status", b"y" * 300, b"status"]  # the urgent ring's buffers hold 256 bytes
    unknown, status = b"ERR unknown command", b"in progress:; queued: 0"
    assert serve(host, [(0, m) for m in urgent], urgent=True) == [unknown, status, unknown, status]


# --- names ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("design", DESIGNS)
def test_the_names_service_knows_well_known_and_dynamic_endpoints(design: str) -> None:
    host = shared(design)
    names = [b"echo", b"crc32", b"primes", b"kv", b"session", b"names", b"w.kv", b"nobody", b"", b"x" * 16]
    replies = serve(host, [(NAMES, n) for n in names])
    assert replies[:6] == [b"7", b"32", b"33", b"34", b"35", b"53"]
    if design == "concurrent":  # the workers registered dynamic endpoints from 1024 up
        assert int(replies[6]) >= 1024
    else:
        assert replies[6] == b"ERR not found"
    assert replies[7:] == [b"ERR not found"] * 3


def test_services_can_be_chosen_at_build_time() -> None:
    host = boot("bare", "jit", "concurrent", SERVICES=1 | 4)  # echo and primes only
    assert serve(host, [(ECHO, b"e"), (PRIMES, b"10"), (KV, b"GET k"), (NAMES, b"kv")]) == [
        b"e", b"4", b"ERR no such port", b"ERR not found"
    ]  # fmt: skip
    assert build("iterative", SERVICES=8).symbols.get("primes_below") is None


# --- concurrency and the urgent channel, counted in guest instructions -------------------------------------------
def steps_to_reply(host: Host, tag: int, limit: int, chunk: int = 10_000) -> tuple[int, list]:
    """Run in chunks until ``tag`` is answered; return the guest steps it took and every reply seen."""
    steps, seen = 0, []
    while steps < limit:
        host.run(chunk)
        steps += host.steps[0]
        seen += host.replies(0)
        if any(m.tag == tag for m in seen):
            return steps, seen
    return limit, seen


LONG = b"3000000"  # about 25 million guest instructions of sieve


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("monitor", ["bare", "pv"])
def test_only_the_concurrent_design_answers_a_short_echo_during_a_long_primes(monitor: str, design: str) -> None:
    host = boot(monitor, "jit", design)
    long_tag = host.send(0, PRIMES, LONG)
    host.run(50_000)
    echo = host.send(0, ECHO, b"quick")
    steps, seen = steps_to_reply(host, echo, 100_000_000, chunk=10_000 if design == "concurrent" else 1_000_000)
    if design == "concurrent":
        assert steps < 100_000  # a few quanta, not the sieve's millions
        assert [m.tag for m in seen] == [echo]
        host.run(BIG)
        assert [m.payload for m in host.replies(0)] == [primes_truth(int(LONG))]
    else:
        assert steps > 5_000_000  # the echo waited for the whole sieve
        assert [(m.tag, m.payload) for m in seen] == [(long_tag, primes_truth(int(LONG))), (echo, b"quick")]


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize("monitor", ["bare", "trap", "pv"])
def test_urgent_status_and_cancel_are_served_during_a_long_request(monitor: str, design: str) -> None:
    host = boot(monitor, "jit", design)
    serve(host, [(KV, b"PUT kept\nstate")])
    long_tag = host.send(0, PRIMES, LONG)
    host.run(100_000)
    status = host.send(0, 0, b"status", urgent=True)
    steps, seen = steps_to_reply(host, status, 200_000)
    assert steps < 100_000
    assert [m.payload for m in seen if m.tag == status] == [b"in progress: %d; queued: 0" % long_tag]
    cancel = host.send(0, 0, b"cancel %d" % long_tag, urgent=True)
    steps, seen = steps_to_reply(host, cancel, 200_000)
    assert {m.tag: m.payload for m in seen} == {long_tag: b"cancelled", cancel: b"OK"}
    assert serve(host, [(ECHO, b"after"), (KV, b"GET kept"), (PRIMES, b"100")]) == [b"after", b"FOUND\nstate", b"25"]
    commands = [b"cancel %d" % long_tag, b"status", b"reboot", b"cancel 0", b"cancel x"]
    assert serve(host, [(0, c) for c in commands], urgent=True) == [
        b"ERR unknown request", b"in progress:; queued: 0", b"ERR unknown command", b"ERR unknown request",
        b"ERR unknown command",
    ]  # fmt: skip


def test_cancel_of_a_request_that_is_not_cancellable_or_still_queued() -> None:
    host = boot("bare", "jit", "iterative")
    crc = host.send(0, CRC32, bytes(8192))  # some 80,000 instructions; its port is not bound to be cancellable
    host.run(20_000)
    long_tag = host.send(0, PRIMES, LONG)
    queued = host.send(0, ECHO, b"waits behind the others")
    host.run(10_000)
    refused = host.send(0, 0, b"cancel %d" % crc, urgent=True)
    cancel = host.send(0, 0, b"cancel %d" % queued, urgent=True)
    steps, seen = steps_to_reply(host, cancel, 200_000)
    assert {m.tag: m.payload for m in seen} == {refused: b"ERR not cancellable", queued: b"cancelled", cancel: b"OK"}
    host.run(BIG)
    assert [m.payload for m in host.replies(0)] == [crc_truth(bytes(8192)), primes_truth(int(LONG))] and long_tag


# --- the build --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("design", DESIGNS)
def test_sensitive_instructions_come_only_from_the_hal(design: str) -> None:
    for paravirt, allowed in ((False, {"hal_native.s"}), (True, set())):
        program = build(design, paravirt)
        for entry in program.listing:
            if isinstance(entry.data, int) and (d := decode(entry.data)) is not None and d.insn.profile_key:
                assert Path(entry.filename).name in allowed, f"{entry.filename}:{entry.line}: {entry.source}"
    assert pv.boot_note(build(design, True).image, MEM) == build(design, True).symbols["hal_shared"]


def test_memory_map_holds() -> None:
    for design in DESIGNS:
        p = build(design)
        sym, equ = p.symbols, p.equates
        assert len(p.image) <= equ["TXBUFS"]  # the kernel stays below the card's buffers
        assert sym["task_image_end"] - sym["task_image"] <= equ["S_CODE_MAX"]
        assert equ["RXBUFS"] + equ["RX_COUNT"] * equ["MSG_MAX"] <= equ["UBUFS"]
        assert equ["BIGBUF"] + equ["NIC_MTU"] <= equ["REGION0"]
        assert equ["KV_BASE"] + equ["KV_SLOTS"] * equ["KV_SLOT"] <= min(equ["SIEVE"], equ["REGION_KV"])
        assert equ["SESSION_BASE"] + equ["SESSION_MAX"] * equ["SESSION_ENTRY"] <= min(
            equ["KV_BASE"], equ["REGION_SESSION"]
        )
        assert equ["SIEVE"] + equ["PRIMES_MAX"] // 16 <= equ["REGION_BIG"]
        table = [int(w) for w in np.frombuffer(p.image, "<u4")[sym["task_table"] // 4 :][: 2 * equ["NTASKS"] : 2]]
        assert equ["REGION0"] + sum(table) <= MEM


def test_hal_pv_net_interface_agrees_with_the_monitor() -> None:
    equ = build("iterative", True).equates
    assert (equ["SH_NET_EVENTS"], equ["HC_NET_SETUP"], equ["HC_NET_NOTIFY"]) == (
        pv.SH_NET_EVENTS, pv.HC_NET_SETUP, pv.HC_NET_NOTIFY
    )  # fmt: skip
    assert pv.SH_NET_EVENTS + 4 <= pv.SH_MC  # a word the monitor's area had free


NET_SETUP_ERRORS = """
    .include "hal_pv.s"
    la r1, good + 2         # a misaligned block
    hcall HC_NET_SETUP
    mov r10, r1
    li r1, 0xFFFFFFF0       # a block past the end of memory
    hcall HC_NET_SETUP
    mov r11, r1
    la r1, bad_rings        # rings the card refuses (misaligned, size 0)
    hcall HC_NET_SETUP
    mov r12, r1
    la r1, good
    hcall HC_NET_SETUP
    mov r13, r1
    hcall HC_NET_NOTIFY     # an empty transmit ring: nothing sent
    mov r9, r1
    li r1, 0
    hcall HC_HALT
    .align 16
rings: .space 48
good: .word rings, rings + 16, rings + 32, 1
bad_rings: .word rings + 4, rings, rings, 0
"""


def test_pv_net_setup_refuses_bad_blocks_and_rings_with_errors() -> None:
    program = assemble(NET_SETUP_ERRORS, include_dirs=[str(SERVER.parent.parent / "kernel")])
    host = Host([GuestSpec("g", program.image, "pv", "classic", 1 << 16)], "jit")
    result = host.run(10_000)[0]
    assert result.halted, result.message
    minus = lambda e: -e & 0xFFFFFFFF  # noqa: E731
    assert result.regs[10:14] == [minus(pv.EFAULT), minus(pv.EFAULT), minus(pv.EINVAL), 0] and result.regs[9] == 0
    assert host.vms[0].nic.enabled and host.replies(0) == []


def test_pv_replies_are_batched_and_events_cost_no_exit() -> None:
    host = boot("pv", "jit", "iterative")
    before = dict(host.result(0).stats)
    assert serve(host, [(ECHO, b"%d" % i) for i in range(20)]) == [b"%d" % i for i in range(20)]
    stats = host.result(0).stats
    notifies = stats["hcall net_notify"] - before.get("hcall net_notify", 0)
    assert 1 <= notifies <= 3  # twenty replies, one notification per ring of sixteen at most
    assert stats["total_exits"] - before["total_exits"] <= 6


def test_two_server_guests_under_different_monitors_share_a_host() -> None:
    specs = [GuestSpec("native", build("concurrent").image, "trap", "classic", MEM),
             GuestSpec("paravirtual", build("iterative", True).image, "pv", "classic", MEM)]  # fmt: skip
    host = Host(specs, "jit")
    host.run(BIG)
    tags = {name: [host.send(name, CRC32, b"abc"), host.send(name, KV, b"GET x")] for name in ("native", "paravirtual")}
    host.run(BIG)
    for name, sent in tags.items():
        assert [(m.tag, m.payload) for m in host.replies(name)] == [
            (sent[0], crc_truth(b"abc")),
            (sent[1], b"NOTFOUND"),
        ]
