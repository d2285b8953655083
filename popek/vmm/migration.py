"""Live migration of a VM between two hosts by pre-copy (docs/snapshots.md, "Live migration").

The source sends the guest's memory while the guest keeps running, then, round after round, the pages written
since they were last sent; when that set is small or stops shrinking it stops the guest, sends the last dirty
pages with the CPU and device state (a snapshot delta), and the target resumes the guest. The guest sees
nothing: it resumes exactly where it stopped, with every request queued on its card.

Dirty pages are found by comparison, not by the cores: the source keeps a copy of every page as it sent it, and
a page is dirty when guest memory differs from that copy (an exact test, a few milliseconds for 64 MiB; no core
changes, so the cores stay bit-for-bit the same). A real hypervisor write-protects pages or reads the MMU's
dirty bits instead; the rounds, the stop condition and the downtime are the same.

Every message is a framed, checksummed piece of bytes (``popek.vmm.snapshot.frame``), so source and target may
be two processes: ``Source`` produces the messages, ``Target`` consumes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from popek.cores import CoreRun
from popek.isa import state as S
from popek.vmm import snapshot
from popek.vmm.host import DEFAULT_CORE, GuestSpec, Host
from popek.vmm.snapshot import PAGE, SnapshotError
from popek.vmm.vm import VM

STOP_PAGES = 16  # a dirty set this small is sent with the guest stopped
MAX_ROUNDS = 30  # a guest that dirties memory faster than it can be sent is stopped after this many rounds


@dataclass
class Round:
    """One pre-copy round: the pages sent, the bytes of its message, how long it took."""

    pages: int
    bytes: int
    seconds: float
    guest_steps: int = 0  # steps the guest ran after this round, before the next


@dataclass
class MigrationReport:
    """What a migration sent and what it cost the guest."""

    rounds: list[Round] = field(default_factory=list)
    final_pages: int = 0
    final_bytes: int = 0
    downtime_s: float = 0.0  # from the guest's stop on the source to its state loaded on the target
    total_s: float = 0.0
    stop_reason: str = ""

    @property
    def bytes(self) -> int:
        """Bytes sent in all."""
        return sum(r.bytes for r in self.rounds) + self.final_bytes

    @property
    def pages(self) -> int:
        """Pages sent in all (a page sent twice counts twice)."""
        return sum(r.pages for r in self.rounds) + self.final_pages

    def as_dict(self) -> dict:
        """The report as plain JSON-ready values."""
        return {"rounds": [r.__dict__ for r in self.rounds], "final_pages": self.final_pages,
                "final_bytes": self.final_bytes, "pages": self.pages, "bytes": self.bytes,
                "downtime_ms": round(self.downtime_s * 1e3, 3), "total_ms": round(self.total_s * 1e3, 3),
                "stop_reason": self.stop_reason}  # fmt: skip


class Source:
    """The sending side: pre-copy rounds of one VM's memory, then the stopped VM's last pages and state."""

    def __init__(self, host: Host, which: int | str = 0) -> None:
        self.host, self.vm = host, host.vm(which)
        self.monitor = host.monitors[host.vms.index(self.vm)]
        self.sent = np.zeros(self.vm.memsize, dtype=np.uint8)  # every page as the target has it (zero at first)
        self.rounds: list[int] = []  # dirty pages found at each round

    def dirty(self) -> np.ndarray:
        """Indexes of the pages that differ from what the target has."""
        mem, sent = self.vm.mem, self.sent
        full = len(mem) // PAGE
        flags = np.zeros(snapshot.page_count(len(mem)), dtype=bool)
        flags[:full] = (mem[: full * PAGE].reshape(full, PAGE) != sent[: full * PAGE].reshape(full, PAGE)).any(axis=1)
        if len(flags) > full:
            flags[full] = (mem[full * PAGE :] != sent[full * PAGE :]).any()
        return np.flatnonzero(flags)

    def _take(self, pages: np.ndarray) -> np.ndarray:
        """Record ``pages`` as sent: the target will hold exactly these bytes."""
        for p in pages.tolist():
            self.sent[p * PAGE : (p + 1) * PAGE] = self.vm.mem[p * PAGE : (p + 1) * PAGE]
        return pages

    def precopy(self) -> tuple[bytes, int]:
        """One round while the guest runs: the message with every dirty page, and how many pages it holds."""
        pages = self._take(self.dirty())
        self.rounds.append(len(pages))
        return snapshot.pages_message(self.sent, pages, self.vm.memsize), len(pages)

    def converged(self, stop_pages: int = STOP_PAGES, max_rounds: int = MAX_ROUNDS) -> str:
        """Why to stop the guest now ('' to go on): few dirty pages, no progress, or too many rounds."""
        if not self.rounds:
            return ""
        last = self.rounds[-1]
        if last <= stop_pages:
            return f"{last} dirty pages (at most {stop_pages})"
        if len(self.rounds) >= 3 and last >= min(self.rounds[1:-1]):
            return "the dirty set stopped shrinking"
        if len(self.rounds) >= max_rounds:
            return f"{max_rounds} rounds"
        return ""

    def final(self) -> tuple[bytes, int]:
        """With the guest stopped: its last dirty pages, CPU and devices, as one message; and the page count."""
        pages = self._take(self.dirty())
        snap = snapshot.capture(self.vm, self.monitor)
        return snapshot.encode(snap, pages=pages), len(pages)


class Target:
    """The receiving side: memory built up from the rounds, then the VM resumed from the final message.

    Given ``host``, the rounds go straight into its VM ``which`` (made ready before the guest stops, as a real
    target allocates the VM first), so the downtime holds only the last pages and the state.
    """

    def __init__(self, memsize: int, host: Host | None = None, which: int | str = 0) -> None:
        self.host, self.which = host, which
        self.mem = host.vm(which).mem if host is not None else np.zeros(memsize, dtype=np.uint8)
        if len(self.mem) != memsize:
            raise SnapshotError(f"the target VM has {len(self.mem)} bytes of memory, the source's {memsize}")

    def accept(self, message: bytes) -> None:
        """Apply one pre-copy round."""
        snapshot.apply_pages_message(message, self.mem)

    def finish(self, message: bytes, core: str | CoreRun = DEFAULT_CORE) -> Host:
        """Resume the VM from the final message: in the target host, or in a new one on ``core``."""
        snap = snapshot.decode(message, base=self.mem)
        if self.host is None:
            return snapshot.restore(snap, core)
        snapshot.restore_into(self.host, self.which, snap)
        return self.host


def migrate(
    source: Host,
    which: int | str = 0,
    core: str | CoreRun = DEFAULT_CORE,
    steps_per_round: int = 200_000,
    run: Callable[[Host, int], None] | None = None,
    stop_pages: int = STOP_PAGES,
    max_rounds: int = MAX_ROUNDS,
) -> tuple[Host, MigrationReport]:
    """Move one VM of ``source`` to a new host by pre-copy; return the new host and what it cost.

    Between two rounds the guest runs ``steps_per_round`` steps on the source (``run(host, steps)`` does it;
    by default ``host.run``), as it would while a round crosses the network. The source's VM is left stopped
    (marked with an error saying where it went), so it cannot run on in two places.
    """
    run = run or (lambda h, n: h.run(n))
    report = MigrationReport()
    t0 = time.perf_counter()
    src = Source(source, which)
    vm = src.vm
    dst = Target(vm.memsize, Host([GuestSpec(vm.name, b"", src.monitor.name, vm.profile, vm.memsize)], core))
    while True:
        t = time.perf_counter()
        message, pages = src.precopy()
        dst.accept(message)
        report.rounds.append(Round(pages, len(message), time.perf_counter() - t))
        before = int(src.vm.vstate[S.STEPS])
        run(source, steps_per_round)  # the guest goes on while the round crosses the network
        report.rounds[-1].guest_steps = int(src.vm.vstate[S.STEPS]) - before
        report.stop_reason = src.converged(stop_pages, max_rounds)
        if report.stop_reason:
            break
    t_stop = time.perf_counter()
    message, report.final_pages = src.final()
    report.final_bytes = len(message)
    host = dst.finish(message)
    stop_source(src.vm, "migrated")
    t_end = time.perf_counter()
    report.downtime_s, report.total_s = t_end - t_stop, t_end - t0
    return host, report


def stop_source(vm: VM, where: str) -> None:
    """Leave the source's copy of a migrated VM stopped for good: it lives on elsewhere."""
    vm.error = f"VM {vm.name} {where}: it runs on another host now"


__all__ = ["MigrationReport", "Round", "Source", "SnapshotError", "Target", "migrate"]
