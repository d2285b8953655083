"""Live migration by pre-copy: the guest moved while it runs ends exactly as if it had stayed, requests queued or
in flight are answered on the target, and the source's copy never runs again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popek.isa import state as S
from popek.isa.asm import assemble_file
from popek.vmm import snapshot
from popek.vmm.host import GuestSpec, Host
from popek.vmm.migration import Source, Target, migrate
from popek.vmm.snapshot import SnapshotError
from tests.test_snapshot import REQUESTS, assert_same, booted_server, image_of

GUESTS = Path(__file__).resolve().parent.parent / "guests"
BIG = 10**10


@pytest.mark.parametrize("monitor", ["bare", "trap", "rewrite", "pv"])
@settings(max_examples=3)
@given(at=st.integers(0, 100_000), per_round=st.integers(1, 30_000))
def test_a_migrated_kernel_ends_as_if_it_had_stayed(monitor: str, at: int, per_round: int) -> None:
    image = image_of("kernel/kernel.s", monitor == "pv")
    total = 400_000

    def fresh() -> Host:
        return Host([GuestSpec("k", image, monitor, "classic", 1 << 20)], "jit")

    whole = fresh()
    whole.run(total)
    host = fresh()
    host.run(at)
    moved, report = migrate(host, core="c", steps_per_round=per_round)
    moved.run(total - int(moved.vms[0].vstate[S.STEPS]))
    assert_same(whole, moved)
    assert report.rounds[0].pages >= 1 and report.downtime_s <= report.total_s
    assert host.vms[0].stopped and "migrated" in host.vms[0].error  # the source's copy is gone for good


@pytest.mark.parametrize("monitor", ["trap", "pv"])
def test_requests_in_flight_are_answered_by_the_target(monitor: str) -> None:
    whole, tags = booted_server(monitor)
    whole.run(BIG)
    expected = {m.tag: m.payload for m in whole.replies(0)}
    host, _ = booted_server(monitor)
    moved, report = migrate(host, steps_per_round=3_000, stop_pages=0)
    got = {m.tag: m.payload for m in host.replies(0)}  # answered on the source before it stopped
    moved.run(BIG)
    got |= {m.tag: m.payload for m in moved.replies(0)}
    assert got == expected and sorted(got) == sorted(tags)
    assert len(report.rounds) >= 2  # it ran between the rounds


def test_an_idle_vm_converges_in_two_rounds_and_sends_no_zero_page() -> None:
    host, _ = booted_server("trap")
    host.run(BIG)
    host.replies(0)
    used = int(snapshot.nonzero_pages(host.vms[0].mem).sum())
    moved, report = migrate(host, stop_pages=0)
    assert [r.pages for r in report.rounds] == [used, 0] and report.final_pages == 0
    assert (moved.vms[0].mem == host.vms[0].mem).all()


def test_the_rounds_can_cross_a_process_boundary_as_bytes() -> None:
    image = assemble_file(str(GUESTS / "kernel/kernel.s")).image
    host = Host([GuestSpec("k", image, "trap", "classic", 1 << 20)], "jit")
    host.run(10_000)
    src, dst = Source(host), Target(1 << 20)
    message, _ = src.precopy()
    dst.accept(bytes(message))
    host.run(10_000)
    final, _ = src.final()
    with pytest.raises(SnapshotError, match="delta"):
        snapshot.decode(final)  # not a snapshot on its own: it needs the pages sent before
    with pytest.raises(SnapshotError):
        dst.accept(message[:-1])
    moved = dst.finish(final, "jit")
    assert np.array_equal(moved.vms[0].mem, host.vms[0].mem)
    assert moved.vms[0].console.text() == host.vms[0].console.text()
    assert REQUESTS  # the shared request list is importable (used by the serve tests of migration)
