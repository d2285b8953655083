"""The network card (ports 0x10-0x18, docs/devices.md): descriptor rings in guest memory, moved by DMA.

The host side queues messages for guest ports (``deliver``) and collects the guest's replies (``replies``);
the guest side is port I/O and the rings. Every memory access is checked against the guest's memory, so a
hostile driver gets an error code, never a host exception or a write outside its slice.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

NIC_BASE = 0x10
NIC_ID, NIC_CTRL, NIC_RX, NIC_TX, NIC_URX, NIC_SIZE, NIC_DOORBELL, NIC_STATUS, NIC_ERROR = range(0x10, 0x19)
NIC_LAST = NIC_ERROR
NIC_MAGIC = 0x4E494331  # "NIC1"
NIC_MTU = 65536
MAX_RING = 256

CTRL_ENABLE, CTRL_IRQ = 1, 2
EV_RX, EV_TX, EV_URGENT, EV_ERROR = 1, 2, 4, 8
OWN, URG, ERR = 1 << 31, 1 << 30, 1 << 29
DESC = 16  # bytes per descriptor: addr, len, tag, ctl
ERR_RING, ERR_BUFFER, ERR_TOO_LONG, ERR_TOO_SMALL = 1, 2, 3, 4
DEV_NIC, DEV_NIC_URGENT = 1, 2  # device numbers of its two interrupts (badaddr of a DEVICE trap)
M32 = 0xFFFFFFFF
_U32 = struct.Struct("<I")  # descriptor words, through the array's buffer: ~5x cheaper than numpy slices
_DESC4 = struct.Struct("<4I")  # a whole descriptor in one read: addr, len, tag, ctl
_DESC3 = struct.Struct("<3I")  # len, tag, ctl


@dataclass(frozen=True)
class Message:
    """A datagram between the host side and a guest port; ``tag`` names the request it is or answers."""

    tag: int
    port: int
    payload: bytes
    urgent: bool = False


class Nic:
    """The card of one machine: ``mem`` is that machine's memory, ``interrupt(devnum)`` (0: none) its line."""

    def __init__(self, mem: np.ndarray, interrupt: Callable[[int], None]) -> None:
        self.mem = mem
        self.buf = memoryview(mem)  # the same bytes: copies through it cost a third of numpy's slice assignment
        self.interrupt = interrupt
        self.ctrl = self.rx = self.tx = self.urx = self.status = self.error = 0
        self.size = 1
        self.rx_i = self.tx_i = self.urx_i = 0
        self.inbox: deque[Message] = deque()  # ordinary messages not yet in the receive ring
        self.urgent_inbox: deque[Message] = deque()
        self.replies: list[Message] = []  # what the guest sent, in order
        self.next_tag = 1
        self.line = 0  # the device number asserted on the interrupt line, 0 for none

    # --- the host side ---------------------------------------------------------------------------------
    def deliver(self, port: int, payload: bytes, urgent: bool = False, poll: bool = True) -> int:
        """Queue a message for guest ``port``; return its tag (the request id its reply will carry).

        With ``poll`` False the card does not look at its rings now but at the next ``poll`` (a host that hands
        it several messages at once looks once, before the VM's next slice): the same messages land in the same
        descriptors either way, since the guest does not run in between.
        """
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"guest port {port} is not in 0..65535")
        if len(payload) > NIC_MTU:
            raise ValueError(f"a message of {len(payload)} bytes is longer than the card's {NIC_MTU}")
        tag = self.next_tag
        self.next_tag = self.next_tag % M32 + 1  # never 0: 0 is "answers nothing"
        (self.urgent_inbox if urgent else self.inbox).append(Message(tag, port, bytes(payload), urgent))
        if poll:
            self.poll()
        return tag

    def take_replies(self) -> list[Message]:
        """The messages the guest sent since the last call."""
        out, self.replies = self.replies, []
        return out

    @property
    def enabled(self) -> bool:
        """True while the card is enabled."""
        return bool(self.ctrl & CTRL_ENABLE)

    def can_wake(self) -> bool:
        """True when the card may yet interrupt a waiting guest (enabled with its interrupt on)."""
        return self.ctrl & (CTRL_ENABLE | CTRL_IRQ) == CTRL_ENABLE | CTRL_IRQ

    @property
    def queued(self) -> int:
        """Messages waiting for a receive descriptor."""
        return len(self.inbox) + len(self.urgent_inbox)

    # --- ports ------------------------------------------------------------------------------------------
    def read(self, port: int) -> int:
        """``in`` from one of the card's ports."""
        return {
            NIC_ID: NIC_MAGIC, NIC_CTRL: self.ctrl, NIC_RX: self.rx, NIC_TX: self.tx, NIC_URX: self.urx,
            NIC_SIZE: self.size, NIC_DOORBELL: 0, NIC_STATUS: self.status, NIC_ERROR: self.error,
        }[port]  # fmt: skip

    def write(self, port: int, value: int) -> None:
        """``out`` to one of the card's ports."""
        value &= M32
        if port == NIC_STATUS:  # the common ports first: a served request acknowledges twice and rings once
            self.status &= ~value
        elif port == NIC_DOORBELL:
            self._transmit()
            self.poll()
            return  # poll set the line
        elif port == NIC_CTRL:
            self._control(value)
        elif port in (NIC_RX, NIC_TX, NIC_URX, NIC_SIZE):
            if not self.enabled:  # the ring registers are fixed while the card runs
                name = {NIC_RX: "rx", NIC_TX: "tx", NIC_URX: "urx", NIC_SIZE: "size"}[port]
                setattr(self, name, value)
        elif port == NIC_ERROR:
            self.error = 0
        self._update_line()

    def _control(self, value: int) -> None:
        was_enabled = self.enabled
        self.ctrl = value & (CTRL_ENABLE | CTRL_IRQ)
        if self.enabled and not was_enabled:
            if not 1 <= self.size <= MAX_RING or not all(self._ring_ok(r) for r in (self.rx, self.tx, self.urx)):
                self.ctrl &= ~CTRL_ENABLE
                self._fail(ERR_RING)
                return
            self.rx_i = self.tx_i = self.urx_i = 0
            self.poll()
        elif not self.enabled:
            self.rx_i = self.tx_i = self.urx_i = 0

    def _ring_ok(self, ring: int) -> bool:
        return ring % DESC == 0 and ring + DESC * self.size <= len(self.mem)

    # --- DMA --------------------------------------------------------------------------------------------
    def _buffer_ok(self, addr: int, length: int) -> bool:
        return addr + length <= len(self.mem)

    def _fail(self, code: int) -> None:
        self.error = code
        self.status |= EV_ERROR

    def poll(self) -> None:
        """Look at the receive rings now: move waiting messages into the descriptors the guest posted."""
        if self.enabled:
            if self.urgent_inbox:
                self.urx_i = self._receive(self.urgent_inbox, self.urx, self.urx_i, EV_URGENT, URG)
            if self.inbox:
                self.rx_i = self._receive(self.inbox, self.rx, self.rx_i, EV_RX, 0)
        self._update_line()

    def _receive(self, inbox: deque[Message], ring: int, i: int, event: int, flags: int) -> int:
        buf, size, put = self.buf, self.size, _U32.pack_into
        for _ in range(size):  # at most one pass over the ring per look
            if not inbox:
                break
            d = ring + DESC * i
            addr, cap, _tag, ctl = _DESC4.unpack_from(buf, d)
            if not ctl & OWN:
                break
            msg = inbox[0]
            n = len(msg.payload)
            if not self._buffer_ok(addr, cap):
                put(buf, d + 12, ERR)
                self._fail(ERR_BUFFER)
            elif n > cap:
                put(buf, d + 4, n)
                put(buf, d + 12, ERR)
                self._fail(ERR_TOO_SMALL)
            else:
                inbox.popleft()
                buf[addr : addr + n] = msg.payload
                _DESC3.pack_into(buf, d + 4, n, msg.tag, msg.port | flags)  # not addr: the payload may cover it
                self.status |= event
            i = (i + 1) % size
        return i

    def _transmit(self) -> None:
        if not self.enabled:
            return
        buf, size, tx, put = self.buf, self.size, self.tx, _U32.pack_into
        sent = False
        for _ in range(size):  # at most N descriptors per doorbell: a storm costs the host little
            d = tx + DESC * self.tx_i
            addr, length, tag, ctl = _DESC4.unpack_from(buf, d)
            if not ctl & OWN:
                break
            if length > NIC_MTU:
                put(buf, d + 12, (ctl & 0xFFFF) | ERR)
                self._fail(ERR_TOO_LONG)
            elif not self._buffer_ok(addr, length):
                put(buf, d + 12, (ctl & 0xFFFF) | ERR)
                self._fail(ERR_BUFFER)
            else:
                self.replies.append(Message(tag, ctl & 0xFFFF, bytes(buf[addr : addr + length])))
                put(buf, d + 12, ctl & 0xFFFF)
            sent = True
            self.tx_i = (self.tx_i + 1) % size
        if sent:
            self.status |= EV_TX

    def _update_line(self) -> None:
        line = 0
        if self.status and self.ctrl & CTRL_IRQ:
            line = DEV_NIC_URGENT if self.status & EV_URGENT else DEV_NIC
        if line != self.line:
            self.line = line
            self.interrupt(line)
