"""One VM of ``popek serve`` in a process of its own: it boots its guest (or receives it), runs it, and answers.

As QEMU runs each KVM guest in a host process of its own, each VM here is a process that owns one ``Host`` of
one guest. The front-end (the asyncio loop that parses HTTP) shares no lock with guest code or the monitors'
exit handlers, so the front-end and the guests use both processor cores, and a VM that fails, or whose
process is killed, takes nothing else down: the front-end sees its socket close and fails its requests over.

The process talks to the front-end over one end of a socket pair, in frames (a 4-byte length, then a pickled
list): the front-end sends lists of operations, the VM lists of events. Operations carry ids, and the events
that answer them carry the same ids (the front-end keeps the futures). Between the two ends of a pair of
popek's own processes, pickle is the wire format; nothing else ever writes to the socket.

A VM that arrives by live migration starts as an empty VM of the right monitor, profile and memory, ready
before the source stops its guest (as a real target allocates the VM first): it applies the pre-copy rounds
(``("round", message, id)``) and the last copy (``("final", message, id)``), then serves like any other.

Operations: ``("call", id, port, payload, urgent)``, ``("cancel", target id, id)``, ``("abandon", id)``,
``("snapshot", id)``, ``("precopy", id)``, ``("freeze", id)``, ``("release", moved, id)``, ``("stop", id)``,
``("quit",)``. Events: ``("booted", ports)``, ``("reply", id, value, error, cancelled)``, ``("exits", n)``,
``("crashed", reason)``, ``("gone", reason)`` (the process ends as it should: stopped, quit, or moved away).
"""

from __future__ import annotations

import pickle
import signal
import socket
import struct
import time
from dataclasses import dataclass

from popek.isa import state as S
from popek.vmm import migration, snapshot
from popek.vmm.host import GuestSpec, Host
from popek.vmm.serve.services import NAMES_PORT, SERVICES

DRAIN_WAIT = 5.0  # seconds a migrating VM may take to answer what it holds before its last copy
_LENGTH = struct.Struct("<I")


class ReplicaDown(Exception):
    """The VM stopped or crashed before it answered (the request may be retried elsewhere if idempotent)."""


def frame(items: list) -> bytes:
    """One frame of the link: the length, then the pickled list."""
    data = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


class Frames:
    """Cuts a byte stream into the lists its frames hold."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list:
        """Add received bytes; return the items of every frame now whole, in order."""
        self.buffer += data
        items, at, buffer = [], 0, self.buffer
        while len(buffer) - at >= 4:
            (n,) = _LENGTH.unpack_from(buffer, at)
            if len(buffer) - at - 4 < n:
                break
            items.extend(pickle.loads(buffer[at + 4 : at + 4 + n]))
            at += 4 + n
        del buffer[:at]
        return items


@dataclass(frozen=True)
class Settings:
    """What a VM process needs of the serve configuration."""

    core: str
    boot_steps: int
    slice_steps: int


class Link:
    """The VM's end of its socket: operations in, events out (sent once per turn of the VM's loop)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames = Frames()
        self.events: list = []

    def receive(self, block: bool) -> list:
        """The operations that arrived (waiting for some when ``block``); ``[("quit",)]`` once the front-end is gone."""
        ops: list = []
        while True:
            try:
                data = self.sock.recv(1 << 16, 0 if block and not ops else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return ops
            except OSError:
                data = b""
            if not data:
                return [*ops, ("quit",)]
            ops.extend(self.frames.feed(data))

    def send(self, *event: object) -> None:
        """Queue an event."""
        self.events.append(event)

    def flush(self) -> None:
        """Send the queued events in one frame."""
        if self.events:
            events, self.events = self.events, []
            try:
                self.sock.sendall(frame(events))
            except OSError:  # the front-end is gone: the next receive says so
                pass


class VMServer:
    """The loop of a VM process: operations from the front-end, slices of the guest, events back."""

    def __init__(self, link: Link, name: str, settings: Settings) -> None:
        self.link, self.name, self.settings = link, name, settings
        self.host: Host | None = None
        self.outstanding: dict[int, int] = {}  # card tag -> call id, for the messages the guest has not answered
        self.tags: dict[int, tuple[int, int]] = {}  # call id -> (card tag, port)
        self.cancelled: set[int] = set()  # calls a `cancel` was sent to the guest for
        self.exits = -1
        # Live migration (popek/vmm/serve/migrate.py): the pre-copy source, and once the guest is frozen for its
        # last copy, the calls that arrived since (held, not lost: the new location answers them).
        self.source: migration.Source | None = None
        self.freezing: tuple[int, float] | None = None  # (id of the last copy's request, drain deadline)
        self.frozen = False
        self.held: list[tuple] = []

    # --- start --------------------------------------------------------------------------------------------
    def boot(self, spec: GuestSpec, services: tuple[str, ...]) -> bool:
        """Boot the guest and ask its names service where its services are; False when it did not come up."""
        try:
            self.host = Host([spec], self.settings.core)
        except Exception as e:  # a profile the monitor refuses, a core that is missing
            self.link.send("gone", f"VM {self.name} did not boot: {e}")
            return False
        self.host.advance(self.settings.boot_steps)
        vm = self.host.vms[0]
        ports = {s: SERVICES[s].port for s in services}
        if vm.waiting:
            tags = {self.host.send(0, NAMES_PORT, s.encode()): s for s in services}
            self.host.advance(self.settings.boot_steps)
            for m in self.host.replies(0):
                if m.tag in tags and m.payload.isdigit():
                    ports[tags[m.tag]] = int(m.payload)
        if vm.halted or vm.error:
            self.link.send("gone", f"VM {self.name} did not boot: {self._down_reason()}")
            return False
        self.link.send("booted", ports)
        self._publish_exits()
        return True

    def receive(self, spec: GuestSpec) -> bool:
        """Be the target of a live migration: an empty VM takes the rounds, then the last copy; False if it fails."""
        try:
            self.host = Host([GuestSpec(self.name, b"", spec.monitor, spec.profile, spec.memsize)], self.settings.core)
        except Exception as e:  # a monitor or profile this host cannot run
            self.link.send("gone", f"cannot host VM {self.name}: {e}")
            return False
        target = migration.Target(spec.memsize, self.host, 0)
        self.link.send("booted", {})
        while True:
            self.link.flush()
            for op in self.link.receive(block=True):
                if op[0] in ("stop", "quit"):  # the migration was given up: nothing is held yet
                    self._handle(op)
                    return False
                try:
                    (target.accept if op[0] == "round" else target.finish)(op[1])
                except snapshot.SnapshotError as e:
                    self._reply(op[2], None, e)
                    if op[0] == "final":
                        self.link.send("gone", f"VM {self.name} did not arrive: {e}")
                        return False
                    continue
                self._reply(op[2], None)
                if op[0] == "final":
                    self._publish_exits()
                    return True

    # --- the loop -----------------------------------------------------------------------------------------
    def serve(self) -> None:
        """Serve operations until stopped, told to quit, moved away, or the guest fails."""
        while True:
            vm = self.host.vms[0]
            idle = self.frozen or (vm.waiting and self.freezing is None)  # block until an operation comes
            self.link.flush()
            for op in self.link.receive(block=idle):
                if not self._handle(op):
                    return
            if not self.frozen:
                if not self._run_slice():
                    return
                if self.freezing is not None:
                    self._maybe_freeze()

    def _handle(self, op: tuple) -> bool:
        """Carry out one operation; False when the process is to end."""
        kind = op[0]
        if kind == "call":
            if self.freezing is not None or self.frozen:  # the VM is being copied for the last time: wait
                self.held.append(op)
            else:
                self._send(*op[1:])
        elif kind == "cancel":  # the guest's urgent `cancel <tag>` for another call
            target, cid = op[1], op[2]
            if target not in self.tags:
                self._reply(cid, b"ERR unknown request")
            else:
                tag, port = self.tags[target]
                self.cancelled.add(target)
                self._send(cid, port, b"cancel %d" % tag, True)
        elif kind == "abandon":  # the front-end timed out: forget the request and free the guest from it
            entry = self.tags.pop(op[1], None)
            if entry is not None:
                self.outstanding.pop(entry[0], None)
                self.cancelled.discard(op[1])
                self.host.send(0, entry[1], b"cancel %d" % entry[0], urgent=True)
        elif kind == "snapshot":  # between two slices: the guest is at an instruction boundary
            self._reply(op[1], snapshot.dumps(self.host))
        elif kind == "precopy":  # one pre-copy round, between two slices of the guest
            if self.source is None:
                self.source = migration.Source(self.host, 0)
            message, pages = self.source.precopy()
            steps = int(self.host.vms[0].vstate[S.STEPS])
            self._reply(op[1], (message, pages, steps, self.source.converged()))
        elif kind == "freeze":  # answer what the guest holds, then take the last copy (see _maybe_freeze)
            self.freezing = (op[1], time.monotonic() + DRAIN_WAIT)
        elif kind == "release":  # the last copy landed (moved) or did not
            return self._release(op[1], op[2])
        elif kind == "stop":
            self._end(f"VM {self.name} was stopped")
            self._reply(op[1], None)
            self.link.send("gone", f"VM {self.name} was stopped")
            return False
        elif kind == "quit":
            self._end("the server is shutting down")
            self.link.send("gone", "the server is shutting down")
            return False
        return True

    def _send(self, cid: int, port: int, payload: bytes, urgent: bool) -> None:
        try:
            tag = self.host.send(0, port, payload, urgent, poll=False)  # the card looks once, before the slice
        except ValueError as e:  # a message the card refuses (too long): the request's fault, not the VM's
            self._reply(cid, None, e)
            return
        self.outstanding[tag] = cid
        self.tags[cid] = (tag, port)

    def _run_slice(self) -> bool:
        host = self.host
        try:
            host.advance(self.settings.slice_steps)  # or until the guest waits, halts or fails
        except Exception as e:  # a monitor that fails on what this guest did: this VM is lost, not the server
            return self._crash(f"monitor error: {type(e).__name__}: {e}")
        for m in host.replies(0):
            cid = self.outstanding.pop(m.tag, None)
            if cid is not None:
                del self.tags[cid]
                self._reply(cid, m.payload)
        self._publish_exits()
        if host.vms[0].halted or host.vms[0].error:
            return self._crash(self._down_reason())
        return True

    def _maybe_freeze(self) -> None:
        """Take the last copy once the guest answered what it held (or the drain time is up)."""
        rid, deadline = self.freezing
        if self.outstanding and time.monotonic() < deadline:
            return
        # Requests still in the guest after the drain would be answered at the new location to nobody: they
        # fail here instead, and the dispatcher (or the client) sends them again.
        self._fail_all(f"VM {self.name} is moving to another host")
        self.freezing, self.frozen = None, True
        if self.source is None:
            self.source = migration.Source(self.host, 0)
        self._reply(rid, self.source.final())

    def _release(self, moved: bool, rid: int) -> bool:
        held, self.held = self.held, []
        self.frozen, self.freezing, self.source = False, None, None
        if moved:  # the front-end forwards the held calls to the new location; this copy is done
            migration.stop_source(self.host.vms[0], "migrated")
            self._reply(rid, [op[1] for op in held])
            self.link.send("gone", f"VM {self.name} moved to another host")
            return False
        for op in held:  # the target refused the VM: it goes on here
            self._send(*op[1:])
        self._reply(rid, [])
        return True

    # --- answers --------------------------------------------------------------------------------------------
    def _reply(self, cid: int, value: object, error: BaseException | None = None) -> None:
        cancelled = cid in self.cancelled
        if cancelled:
            self.cancelled.discard(cid)
        self.link.send("reply", cid, value, error, cancelled)

    def _down_reason(self) -> str:
        vm = self.host.vms[0]
        if vm.halted:
            return f"VM {vm.name}: the guest halted"
        return f"VM {vm.name}: {vm.error}"

    def _publish_exits(self) -> None:
        exits = sum(self.host.vms[0].stats.exits.values())
        if exits != self.exits:
            self.exits = exits
            self.link.send("exits", exits)

    def _crash(self, reason: str) -> bool:
        self._end(reason)
        self.link.send("crashed", reason)
        return False

    def _end(self, reason: str) -> None:
        """Everything the VM holds fails with ``reason``: outstanding calls, held calls, a migration."""
        self._fail_all(reason)
        if self.freezing is not None:
            self._reply(self.freezing[0], None, ReplicaDown(reason))
        self.freezing, self.frozen, self.source = None, False, None
        held, self.held = self.held, []
        for op in held:
            self._reply(op[1], None, ReplicaDown(reason))

    def _fail_all(self, reason: str) -> None:
        calls, self.outstanding, self.tags = list(self.outstanding.values()), {}, {}
        for cid in calls:
            self._reply(cid, None, ReplicaDown(reason))


def warm(core: str, monitor: str) -> None:
    """Load the compiled code a VM on ``core`` under ``monitor`` runs, by running a guest that halts at once.

    The fork server does it once per core and monitor, so the VM processes it forks afterwards inherit that
    code instead of each loading it again from Numba's cache (about 0.4 s a VM).
    """
    from popek.isa.asm import assemble

    try:
        Host([GuestSpec("warm-up", assemble("    halt\n").image, monitor, "classic", 4096)], core).advance(16)
    except Exception:  # an unknown core or monitor: the VM itself will say so when it boots
        pass


def main(sock: socket.socket, name: str, spec: GuestSpec, services: tuple[str, ...], settings: Settings,
         incoming: bool = False) -> None:  # fmt: skip
    """The VM process: boot the guest from ``spec`` (or receive it by live migration), then serve until the end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the front-end's: it tells each VM to quit
    link = Link(sock)
    server = VMServer(link, name, settings)
    try:
        started = server.receive(spec) if incoming else server.boot(spec, services)
        if started:
            server.serve()
    except Exception as e:  # a bug below the front-end: this VM is lost, the server goes on
        server._crash(f"internal error: {type(e).__name__}: {e}")
    link.flush()
    sock.close()
