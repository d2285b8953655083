"""Messages handed to the card without a look at its rings (``poll=False``) land exactly where they would have.

A host that gives the card several messages before it runs the VM may let the card look at its rings once,
before the VM's next slice (docs/devices.md, When the card acts): the guest does not run in between, so the
descriptors, the card's registers and its interrupt line end the same as with a look per message.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popek import guests
from popek.isa import state as S
from popek.isa.asm import assemble_file
from popek.isa.devices import nic as N
from popek.vmm.host import GuestSpec, Host

RX, TX, URX = 0x100, 0x200, 0x300
REGISTERS = ("ctrl", "status", "error", "line", "rx_i", "urx_i", "tx_i", "next_tag")


def card(buffers: list[tuple[int, int, bool]]) -> tuple[N.Nic, np.ndarray, list[int]]:
    """A card over 64 KiB whose two receive rings hold ``buffers`` (address, capacity, posted)."""
    mem = np.zeros(1 << 16, dtype=np.uint8)
    lines: list[int] = []
    nic = N.Nic(mem, lines.append)
    words = mem.view("<u4")
    for ring, apart in ((RX, 0), (URX, 0x4000)):  # the rings' buffers apart, as a driver's are
        for i, (addr, cap, posted) in enumerate(buffers):
            d = (ring + N.DESC * i) // 4
            words[d : d + 4] = (addr + (apart if addr < 0x8000 else 0), cap, 0, N.OWN if posted else 0)
    for port, value in ((N.NIC_RX, RX), (N.NIC_TX, TX), (N.NIC_URX, URX), (N.NIC_SIZE, len(buffers))):
        nic.write(port, value)
    nic.write(N.NIC_CTRL, N.CTRL_ENABLE | N.CTRL_IRQ)
    return nic, mem, lines


buffer = st.tuples(st.sampled_from([0x1000, 0x2000, 0xFFF0, 0x10000, 0x120]), st.integers(0, 64), st.booleans())
message = st.tuples(st.binary(max_size=48), st.booleans())


@settings(max_examples=60, deadline=None)
@given(buffers=st.lists(buffer, min_size=1, max_size=6), messages=st.lists(message, min_size=1, max_size=8))
def test_one_look_after_several_messages_moves_what_a_look_per_message_moves(
    buffers: list[tuple[int, int, bool]], messages: list[tuple[bytes, bool]]
) -> None:
    ends = []
    for poll in (True, False):
        nic, mem, lines = card(buffers)
        tags = [nic.deliver(7, payload, urgent, poll=poll) for payload, urgent in messages]
        if not poll:
            nic.poll()
        ends.append((tags, mem.tobytes(), {k: getattr(nic, k) for k in REGISTERS}, list(nic.inbox),
                     list(nic.urgent_inbox), lines[-1:]))  # fmt: skip
    if len({urgent for _, urgent in messages}) == 2:
        # A look takes the urgent ring first: when both rings fail, the error register keeps the ordinary
        # ring's code where looks per message may have ended on an urgent one.
        for end in ends:
            del end[2]["error"]
    assert ends[0] == ends[1]


def test_a_payload_over_its_own_descriptor_keeps_its_bytes() -> None:
    """The card writes a received descriptor's len, tag and ctl after the bytes, never its address word."""
    nic, mem, _ = card([(RX, 64, True)])  # the buffer is the ring itself
    nic.deliver(9, b"ABCDEFGH")
    assert bytes(mem[RX : RX + 4]) == b"ABCD"
    assert mem[RX : RX + 16].view("<u4")[1:].tolist() == [8, 1, 9]


def server(monitor: str) -> Host:
    defines = {"SERVICES": 1, "CONCURRENT": 1} | ({"PARAVIRT": 1} if monitor == "pv" else {})
    image = assemble_file(str(guests.path("servers/server.s")), defines=defines).image
    host = Host([GuestSpec("s", image, monitor, "classic", 4 << 20)], "jit")  # the size popek serve gives it
    host.advance(50_000_000)
    assert host.vms[0].waiting
    return host


@pytest.mark.parametrize("monitor", ["bare", "trap", "pv"])
def test_the_server_answers_a_batch_the_same_whether_the_card_looks_per_message_or_once(monitor: str) -> None:
    runs = []
    for poll in (True, False):
        host = server(monitor)
        vm = host.vms[0]
        replies = []
        for k in (1, 5, 3):
            tags = [host.send(0, 7, bytes([k, i]) * 33, poll=poll) for i in range(k)]
            assert vm.waiting is not poll  # without a look the card has not woken the guest yet
            host.advance(500_000)
            replies += [(tags.index(m.tag), m.port, m.payload) for m in host.replies(0)]
        runs.append((replies, vm.vstate.tolist(), vm.mem.tobytes()))
    assert runs[0] == runs[1]
    assert [r[2] for r in runs[0][0]] == [bytes([k, i]) * 33 for k in (1, 5, 3) for i in range(k)]
    assert runs[0][1][S.STEPS] > 0
