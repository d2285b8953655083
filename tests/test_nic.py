"""The network card (docs/devices.md): the same messages in and out on the bare machine and under every monitor,
and a hostile driver gets device errors that harm neither the host nor the VM next to it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popek.cores import CoreUnavailable, get_core
from popek.isa import state as S
from popek.isa.asm import assemble, assemble_file
from popek.isa.devices import nic as N
from popek.vmm.host import GuestSpec, Host

GUESTS = Path(__file__).resolve().parent.parent / "guests"
NETECHO = GUESTS / "programs" / "netecho.s"


def echo_host(monitor: str, count: int, core: str = "jit", profile: str = "classic") -> Host:
    image = assemble_file(NETECHO, defines={"COUNT": count}).image
    try:
        return Host([GuestSpec("echo", image, monitor, profile, 1 << 16)], core)
    except CoreUnavailable as e:
        pytest.skip(str(e))


@pytest.mark.parametrize(
    "monitor,core",
    [
        ("bare", "jit"),
        ("bare", "c"),
        ("bare", "reference"),
        ("full", "jit"),
        ("trap", "jit"),
        ("trap", "c"),
        ("rewrite", "jit"),
        ("hybrid", "jit"),
    ],  # fmt: skip
)
def test_every_message_comes_back_unchanged_with_its_tag(monitor: str, core: str) -> None:
    host = echo_host(monitor, 4, core)
    first = host.run(200_000)[0]
    assert first.exit == "idle" and "waiting" in first.message  # nothing sent yet: it waits, it is not stuck
    payloads = [b"", b"x", bytes(range(256)) * 4, "żółw".encode()]
    tags = [host.send("echo", 7 + i, p) for i, p in enumerate(payloads)]
    result = host.run(200_000)[0]
    assert result.halted and result.console == "echoed 4\n"
    assert [(m.tag, m.port, m.payload) for m in host.replies("echo")] == [
        (t, 7 + i, p) for i, (t, p) in enumerate(zip(tags, payloads, strict=True))
    ]
    assert len(set(tags)) == 4 and 0 not in tags


@settings(max_examples=10, deadline=None)
@given(payloads=st.lists(st.binary(max_size=1024), min_size=1, max_size=9), monitor=st.sampled_from(["trap", "hybrid"]))
def test_monitors_move_the_same_bytes_at_the_same_guest_steps_as_bare(payloads: list[bytes], monitor: str) -> None:
    runs = []
    for m in ("bare", monitor):
        host = echo_host(m, len(payloads))
        for p in payloads:  # all queued before it starts: the ring takes 4, the rest wait in the card
            host.send(0, 80, p)
        r = host.run(1_000_000)[0]
        runs.append((r.halted, r.steps, r.regs, [m.payload for m in host.replies(0)]))
    assert runs[0] == runs[1]
    assert runs[0][3] == payloads


def test_a_wfi_with_no_card_to_wake_it_is_still_an_error() -> None:
    image = assemble("wfi\nhalt\n").image
    for monitor in ("bare", "trap"):
        r = Host([GuestSpec("g", image, monitor, "classic", 4096)], "jit").run(1000)[0]
        assert not r.halted and r.exit == "idle" and "can never end" in r.message


# --- the card alone, against the layout of docs/devices.md ------------------------------------------------
class Card:
    """A card on 64 KiB of memory with its interrupt line recorded."""

    def __init__(self, size: int = 4) -> None:
        self.mem = np.zeros(1 << 16, dtype=np.uint8)
        self.lines: list[int] = []
        self.nic = N.Nic(self.mem, self.lines.append)
        self.rx, self.tx, self.urx = 0x1000, 0x2000, 0x3000
        for port, value in ((N.NIC_RX, self.rx), (N.NIC_TX, self.tx), (N.NIC_URX, self.urx), (N.NIC_SIZE, size)):
            self.nic.write(port, value)

    def word(self, addr: int) -> int:
        return int(self.mem[addr : addr + 4].view("<u4")[0])

    def put(self, addr: int, *words: int) -> None:
        self.mem[addr : addr + 4 * len(words)] = np.array(words, dtype="<u4").view(np.uint8)


def test_an_arrival_fills_the_posted_descriptor_and_raises_the_interrupt() -> None:
    c = Card()
    c.put(c.rx, 0x8000, 100, 0, N.OWN)
    c.nic.write(N.NIC_CTRL, N.CTRL_ENABLE | N.CTRL_IRQ)
    assert c.lines == []  # nothing to say yet
    tag = c.nic.deliver(4242, b"ping")
    assert [c.word(c.rx + 4 * k) for k in range(4)] == [0x8000, 4, tag, 4242]
    assert bytes(c.mem[0x8000:0x8004]) == b"ping"
    assert c.nic.read(N.NIC_STATUS) == N.EV_RX and c.lines == [N.DEV_NIC]
    c.nic.write(N.NIC_STATUS, N.EV_RX)
    assert c.lines == [N.DEV_NIC, 0]  # acknowledged: the line drops


def test_urgent_messages_use_their_own_ring_and_device_number() -> None:
    c = Card()
    c.put(c.urx, 0x9000, 16, 0, N.OWN)
    c.nic.write(N.NIC_CTRL, N.CTRL_ENABLE | N.CTRL_IRQ)
    c.nic.deliver(5, b"ordinary")  # no receive buffer posted: it waits
    c.nic.deliver(5, b"cancel 1", urgent=True)
    assert c.word(c.urx + 12) == 5 | N.URG and bytes(c.mem[0x9000:0x9008]) == b"cancel 1"
    assert c.lines == [N.DEV_NIC_URGENT] and c.nic.queued == 1


def test_a_message_longer_than_the_buffer_waits_for_a_bigger_one() -> None:
    c = Card()
    c.put(c.rx, 0x8000, 3, 0, N.OWN, 0x8100, 64, 0, N.OWN)
    c.nic.write(N.NIC_CTRL, N.CTRL_ENABLE)
    c.nic.deliver(1, b"too long")
    assert c.word(c.rx + 12) == N.ERR and c.word(c.rx + 4) == 8 and c.nic.read(N.NIC_ERROR) == N.ERR_TOO_SMALL
    assert bytes(c.mem[0x8100:0x8108]) == b"too long" and c.nic.queued == 0


@pytest.mark.parametrize(
    "rx,size",
    [(0x1004, 4), ((1 << 16) - 16, 2), (0x1000, 0), (0x1000, 257), (0xFFFFFFF0, 1)],
)
def test_rings_outside_memory_or_misaligned_leave_the_card_disabled(rx: int, size: int) -> None:
    c = Card()
    c.nic.write(N.NIC_RX, rx)
    c.nic.write(N.NIC_SIZE, size)
    c.nic.write(N.NIC_CTRL, N.CTRL_ENABLE)
    assert not c.nic.enabled and c.nic.read(N.NIC_ERROR) == N.ERR_RING
    assert c.nic.read(N.NIC_STATUS) & N.EV_ERROR


@pytest.mark.parametrize("addr,length", [(0xFFF0, 32), (0xFFFFFFFC, 8), (0x100, N.NIC_MTU + 1)])
def test_a_transmit_descriptor_outside_memory_is_an_error_not_a_read_elsewhere(addr: int, length: int) -> None:
    c = Card()
    c.nic.write(N.NIC_CTRL, N.CTRL_ENABLE)
    c.put(c.tx, addr, length, 9, N.OWN | 3, 0x100, 2, 9, N.OWN | 3)
    c.nic.write(N.NIC_DOORBELL, 0)
    expected = N.ERR_TOO_LONG if length > N.NIC_MTU else N.ERR_BUFFER
    assert c.nic.read(N.NIC_ERROR) == expected and c.word(c.tx + 12) == 3 | N.ERR
    assert [(m.tag, m.payload) for m in c.nic.take_replies()] == [(9, b"\0\0")]  # the next one still went


def test_a_doorbell_storm_costs_at_most_one_ring_per_doorbell() -> None:
    c = Card(size=8)
    c.nic.write(N.NIC_CTRL, N.CTRL_ENABLE)
    for i in range(8):
        c.put(c.tx + 16 * i, 0x100, 1, i, N.OWN)
    for _ in range(1000):
        c.nic.write(N.NIC_DOORBELL, 0)
        for i in range(8):  # the guest hands every descriptor back at once, forever
            c.put(c.tx + 16 * i + 12, N.OWN)
    assert len(c.nic.take_replies()) == 8 * 1000


HOSTILE = """
        li r8, 0x100                    # receive (and urgent) ring of one descriptor at 0x100,
        out 0x12, r8
        out 0x14, r8
        li r5, 0x10000                  # whose buffer lies just past its memory: the neighbour's first bytes
        st r5, 0(r8)
        li r5, 0x800
        st r5, 4(r8)
        li r5, 0x80000000
        st r5, 12(r8)
        li r8, 0xFFF0                   # transmit ring at the very top of its 64 KiB: legal,
        out 0x13, r8
        li r5, 0xFFF8                   # with a message that reads past the end
        st r5, 0(r8)
        li r5, 64
        st r5, 4(r8)
        li r5, 0x80000000
        st r5, 12(r8)
        li r4, 1
        out 0x15, r4
        li r4, 3
        out 0x11, r4
        li r7, 50
1:      out 0x16, r0                    # a doorbell storm
        addi r7, r7, -1
        bnez r7, 1b
        in r1, 0x18                     # the error code it got
        halt
"""


@pytest.mark.parametrize("monitor", ["bare", "full", "trap", "rewrite", "hybrid"])
def test_a_hostile_driver_gets_device_errors_and_its_neighbour_is_untouched(monitor: str) -> None:
    hostile = assemble(HOSTILE).image
    echo = assemble_file(NETECHO, defines={"COUNT": 1}).image
    alone = Host([GuestSpec("n", echo, "trap", "classic", 1 << 16)], "jit")
    host = Host(
        [GuestSpec("h", hostile, monitor, "classic", 1 << 16), GuestSpec("n", echo, "trap", "classic", 1 << 16)]
    )
    for h in (alone, host):
        h.send("n", 1, b"neighbour")
        # the hostile guest's receive buffer points at the neighbour's memory: a message for it must not land
        if h is host:
            h.send("h", 1, b"X" * 0x800)
    r_alone = alone.run(100_000)[0]
    r_h, r_n = host.run(100_000)
    assert r_h.halted and r_h.status in (N.ERR_BUFFER, N.ERR_TOO_SMALL)
    assert host.replies("h") == []  # the transmit past its end sent nothing
    assert (r_n.console, r_n.steps, r_n.regs) == (r_alone.console, r_alone.steps, r_alone.regs)
    assert np.array_equal(host.vm("n").mem, alone.vm("n").mem)
    assert [m.payload for m in host.replies("n")] == [b"neighbour"]


def test_cores_take_the_device_interrupt_alike() -> None:
    """A guest with IE on takes DEVICE (cause 17) with badaddr = the device number on every core."""
    src = """
        la r4, handler
        mtcr ivt, r4
        li r8, 0x100
        out 0x12, r8
        out 0x13, r8
        out 0x14, r8
        li r4, 1
        out 0x15, r4
        li r5, 0x200
        st r5, 0(r8)
        li r5, 16
        st r5, 4(r8)
        li r5, 0x80000000
        st r5, 12(r8)
        li r4, 3
        out 0x11, r4
        li r4, 3                        # supervisor, interrupts on
        mtcr psw, r4
        wfi
        halt
handler:
        mfcr r1, cause
        mfcr r2, badaddr
        in r3, 0x17
        halt
"""
    image = assemble(src).image
    results = []
    for core in ("reference", "jit", "c"):
        try:
            get_core(core)
        except CoreUnavailable:
            continue
        host = Host([GuestSpec("g", image, "bare", "classic", 1 << 12)], core)
        host.run(1000)
        host.send(0, 3, b"hi")
        r = host.run(1000)[0]
        results.append((r.halted, r.regs[1:4], r.steps, host.vm(0).vstate[S.CYCLE]))
    assert results[0][:2] == (True, [17, N.DEV_NIC, N.EV_RX])
    assert all(r == results[0] for r in results)


def test_the_drivers_constants_are_the_device_models() -> None:
    """guests/kernel/nic.s, which every driver includes, says what popek/isa/devices/nic.py does."""
    symbols = assemble_file(GUESTS / "kernel" / "nic.s").equates
    names = ["NIC_CTRL", "NIC_RX", "NIC_TX", "NIC_URX", "NIC_SIZE", "NIC_DOORBELL", "NIC_STATUS", "NIC_ERROR"]
    assert {n: symbols[n] for n in names} == {n: getattr(N, n) for n in names}
    all_events = N.EV_RX | N.EV_TX | N.EV_URGENT | N.EV_ERROR
    assert (symbols["NIC_EV_TX"], symbols["NIC_EV_ALL"], symbols["NIC_OWN"]) == (N.EV_TX, all_events, N.OWN)
