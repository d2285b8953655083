"""What the study runs: the nanobenchmarks (one operation each) and the macrobenchmarks (whole workloads).

Every run goes through ``Host`` like any other caller, and times only ``Host.run`` (and, for the network
workloads, the host's sends), never the assembly or the host's set-up. A run returns a ``Sample``: seconds,
guest instructions, the units of work it did and the VM's statistics, so that one measurement loop serves all.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from popek import guests
from popek.isa.asm import assemble_file
from popek.vmm.host import GuestSpec, Host

FOREVER = 10**12  # no step limit: a run ends when its guest halts or waits for the network card
STRATEGIES = ("bare", "full", "trap", "rewrite", "hybrid", "pv")
PV_MONITORS = ("pv", "pv-noassist")


@dataclass
class Sample:
    """One timed run: wall seconds, guest instructions, units of work done and the VM's statistics."""

    seconds: float
    steps: int
    units: int
    stats: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=256)
def image(rel: str, defines: tuple[tuple[str, int], ...]) -> bytes:
    """Assemble a bundled guest with ``defines`` (cached: the study builds each variant many times)."""
    return assemble_file(str(guests.path(rel)), defines=dict(defines) or None).image


def _defines(base: dict[str, int], monitor: str, pv_build: bool) -> tuple[tuple[str, int], ...]:
    extra = {"PARAVIRT": 1} if pv_build and monitor in PV_MONITORS else {}
    return tuple(sorted({**base, **extra}.items()))


def _run(img: bytes, monitor: str, profile: str, memsize: int = 1 << 20) -> tuple[float, object]:
    host = Host([GuestSpec("bench", img, monitor, profile, memsize)])
    t0 = time.perf_counter()
    result = host.run(FOREVER)[0]
    secs = time.perf_counter() - t0
    if not result.halted or result.status != 0:
        raise RuntimeError(f"{monitor}: the guest did not halt cleanly: {result.message or result.status}")
    return secs, result


# --- nanobenchmarks -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Nano:
    """One nanobenchmark: the operation's define in guests/bench/nano.s and what it stands for."""

    name: str
    define: str
    analogue: str  # the row of Adams & Agesen's nanobenchmarks it mirrors
    pv: bool  # whether a paravirtual build makes sense

    def run(self, monitor: str, profile: str, n: int, with_op: bool) -> Sample:
        """Run the loop of ``n`` iterations with or without the operation."""
        defs = _defines({self.define: 1, "N": n, "WITH": int(with_op)}, monitor, self.pv)
        secs, r = _run(image("bench/nano.s", defs), monitor, profile, 1 << 16)
        return Sample(secs, r.steps, r.regs[11], r.stats)


NANOS = [
    Nano("syscall", "SYSCALL", "syscall", True),
    Nano("in", "IN", "in", False),
    Nano("mtcr", "MTCR", "cr8wr", True),
    Nano("mfcr", "MFCR", "(privileged register read)", True),
    Nano("call/ret", "CALLRET", "call/ret", True),
    Nano("divzero", "DIVZERO", "divzero", True),
    Nano("reloc", "RELOC", "ptemod", False),
    Nano("timer", "TIMER", "(timer interrupt)", True),
]


# --- macrobenchmarks ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Macro:
    """One macrobenchmark: how to run ``size`` units of it under a monitor."""

    name: str
    group: str  # cpu, kernel, syscall, io, serving: what the comparison with the papers matches on
    unit: str
    runner: Callable[[str, str, int], Sample]
    start: int  # a size to start calibrating from


def _guest(rel: str, param: str, fixed: dict[str, int], pv_build: bool) -> Callable[[str, str, int], Sample]:
    """A guest whose work grows linearly with one define: one run of ``size`` units."""

    def run(monitor: str, profile: str, size: int) -> Sample:
        secs, r = _run(image(rel, _defines({**fixed, param: size}, monitor, pv_build)), monitor, profile)
        return Sample(secs, r.steps, size, r.stats)

    return run


def _repeated(rel: str, fixed: dict[str, int], pv_build: bool) -> Callable[[str, str, int], Sample]:
    """A guest of fixed size run ``size`` times from boot, each on a fresh host (the unit is one whole run)."""

    def run(monitor: str, profile: str, size: int) -> Sample:
        img = image(rel, _defines(fixed, monitor, pv_build))
        total, steps, stats = 0.0, 0, {}
        for _ in range(size):
            secs, r = _run(img, monitor, profile)
            total, steps = total + secs, steps + r.steps
            stats = _add_stats(stats, r.stats)
        return Sample(total, steps, size, stats)

    return run


def _add_stats(a: dict, b: dict) -> dict:
    """The statistics of two runs added up (counts added, exits by cause merged)."""
    out = dict(b)
    for k, v in a.items():
        if k == "exits":
            out[k] = {c: v.get(c, 0) + b.get(k, {}).get(c, 0) for c in {*v, *b.get(k, {})}}
        elif isinstance(v, int | float) and not isinstance(v, bool) and k in b:
            out[k] = v + b[k]
    return out


def _netecho(monitor: str, profile: str, size: int) -> Sample:
    """netecho.s echoes ``size`` messages, all sent at the start; the host polls the card between its runs."""
    img = image("programs/netecho.s", (("COUNT", size),))
    host = Host([GuestSpec("bench", img, monitor, profile, 1 << 16)])
    host.run(FOREVER)  # up to its first wait for the card: set-up, not the workload
    vm, base = host.vms[0], host.result(0)
    t0 = time.perf_counter()
    for i in range(size):
        host.send(0, 7, b"%d" % i + b"x" * 60)
    while not vm.halted:
        result = host.run(FOREVER)[0]
        if vm.error:
            raise RuntimeError(f"{monitor}: netecho stopped: {vm.error}")
    secs = time.perf_counter() - t0
    if len(host.replies(0)) != size:
        raise RuntimeError(f"{monitor}: netecho answered fewer messages than it was sent")
    return Sample(secs, result.steps - base.steps, size, _diff_stats(result.stats, base.stats))


def _diff_stats(after: dict, before: dict) -> dict:
    """What a VM's statistics counted between two readings."""
    out = dict(after)
    for k, v in after.items():
        if k == "exits":
            out[k] = {c: n - before.get(k, {}).get(c, 0) for c, n in v.items() if n - before.get(k, {}).get(c, 0)}
        elif isinstance(v, int | float) and not isinstance(v, bool) and k in before:
            out[k] = v - before[k]
    return out


SERVER_MEM = 4 << 20
ECHO, CRC32, KV = 7, 32, 34


def _requests(n: int) -> list[tuple[int, bytes]]:
    """A mix of short requests: echo, kv put and get, crc32 of 1 KiB."""
    mix = []
    for i in range(n):
        k = i % 4
        if k == 0:
            mix.append((ECHO, b"x" * 64))
        elif k == 1:
            mix.append((KV, b"PUT k%d\nvalue %d" % (i % 32, i)))
        elif k == 2:
            mix.append((KV, b"GET k%d" % (i % 32)))
        else:
            mix.append((CRC32, bytes(range(256)) * 4))
    return mix


def _serving(monitor: str, profile: str, size: int) -> Sample:
    """The iterative server kernel booted (not timed), then ``size`` requests sent at once and served."""
    img = image("servers/server.s", _defines({}, monitor, True))
    host = Host([GuestSpec("bench", img, monitor, profile, SERVER_MEM)])
    base = host.run(FOREVER)[0]
    if "waiting" not in base.message:
        raise RuntimeError(f"{monitor}: the server did not come up: {base.message}")
    t0 = time.perf_counter()
    tags = [host.send(0, port, payload) for port, payload in _requests(size)]
    result = host.run(FOREVER)[0]
    secs = time.perf_counter() - t0
    if sorted(m.tag for m in host.replies(0)) != sorted(tags):
        raise RuntimeError(f"{monitor}: a request went unanswered")
    return Sample(secs, result.steps - base.steps, size, _diff_stats(result.stats, base.stats))


MACROS = [
    Macro("sieve", "cpu", "sieve of 10^4", _guest("programs/primes.s", "REPEAT", {}, False), 4),
    Macro("crc32", "cpu", "CRC-32 of 1 KiB", _guest("programs/crc32.s", "REPEAT", {}, False), 4),
    Macro("sort", "cpu", "insertion sort of 1,000 words", _repeated("programs/sort.s", {"COUNT": 1000}, False), 1),
    Macro("kernel", "kernel", "kernel run (3 tasks, boot to halt)", _repeated("kernel/kernel.s", {}, True), 1),
    Macro("syscalls", "syscall", "system call", _guest("programs/syscalls.s", "COUNT", {}, True), 200),
    Macro("console", "io", "31-byte console line", _guest("bench/console.s", "COUNT", {}, True), 20),
    Macro("nic", "io", "message echoed by the card", _netecho, 8),
    Macro("serving", "serving", "request (echo, kv, crc32 mix)", _serving, 8),
]
