"""The VMs of ``popek serve``, each in a process of its own, as the front-end's asyncio loop sees them.

Each VM runs in its own process (``popek/vmm/serve/vmproc.py``), forked by a fork server
(``popek/vmm/serve/forks.py``) that imported popek once, so a VM starts in milliseconds plus its boot. The
loop talks to a VM process over a socket pair through ``VMProcess`` (an asyncio protocol): the operations of
one turn of the loop go out in one frame, and the events of one guest slice (its replies) come back in one. No
thread of the front-end runs guest code or shares a lock with it, so the front-end parses HTTP on one
processor core while the guests run on the others, and a VM process that dies (a crash, ``kill -9``) fails
its requests over to the other replicas.

``Replica`` is the loop's side of a VM: its state, load and counters, and its process while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from popek import guests
from popek.vmm.host import GuestSpec
from popek.vmm.serve.config import DESIGNS, ServeConfig, VMSpec
from popek.vmm.serve.forks import fork_vm
from popek.vmm.serve.services import SERVICES, services_mask
from popek.vmm.serve.vmproc import Frames, ReplicaDown, Settings, frame

log = logging.getLogger("popek.serve")

BOOTING, RUNNING, STOPPED, CRASHED = "booting", "running", "stopped", "crashed"
CANCEL_PATIENCE = 5.0  # seconds a cancel keeps asking a guest that does not know the request yet
END_WAIT = 10.0  # seconds a VM process may take to end once told to
_ids = itertools.count(1)  # of operations, unique in the front-end


@cache
def _assemble(path: str, defines: tuple[tuple[str, int], ...]) -> bytes:
    from popek.isa.asm import assemble_file

    return assemble_file(path, defines=dict(defines)).image


def build_image(spec: VMSpec) -> bytes:
    """The guest image of a VM: the server kernel built for its services, design and monitor, or its own file."""
    defines = {"SERVICES": services_mask(spec.services)}
    if spec.monitor == "pv":
        defines["PARAVIRT"] = 1
    if spec.guest in DESIGNS:
        if spec.guest == "concurrent":
            defines["CONCURRENT"] = 1
        return _assemble(str(guests.path("servers/server.s")), tuple(sorted(defines.items())))
    if spec.guest.lower().endswith((".s", ".asm")):
        return _assemble(spec.guest, tuple(sorted(defines.items())))
    with open(spec.guest, "rb") as f:
        return f.read()


@dataclass(eq=False)
class Call:
    """One message to a guest port and the future its reply settles."""

    port: int
    payload: bytes
    future: asyncio.Future
    urgent: bool = False
    id: int = 0  # the operation's id, set when it goes to the VM process
    cancel_requested: bool = False  # a `cancel` was sent for it: a `cancelled` reply means just that
    deadline: int = 0  # its slot in ``Deadlines`` while a caller waits for it


class Deadlines:
    """The request timeouts of a VM's calls, on one loop timer per ``GRAIN`` seconds of deadlines.

    A timer per request (``asyncio.timeout``) cost the loop more than the guest's own work on an echo; a call
    times out up to ``GRAIN`` late instead.
    """

    GRAIN = 0.05

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slots: dict[int, dict[Call, None]] = {}  # deadline // GRAIN -> the calls that time out then

    def add(self, call: Call, timeout: float) -> None:
        """Fail ``call``'s future with TimeoutError once ``timeout`` seconds have passed (unless discarded)."""
        slot = math.ceil((self.loop.time() + timeout) / self.GRAIN)
        calls = self.slots.get(slot)
        if calls is None:
            calls = self.slots[slot] = {}
            self.loop.call_at(slot * self.GRAIN, self._expire, slot)
        calls[call] = None
        call.deadline = slot

    def discard(self, call: Call) -> None:
        """``call`` is no longer waited for."""
        calls = self.slots.get(call.deadline)
        if calls is not None:
            calls.pop(call, None)

    def _expire(self, slot: int) -> None:
        for call in self.slots.pop(slot, ()):
            if not call.future.done():
                call.future.set_exception(TimeoutError())


def _settle(future: asyncio.Future, value: object, error: BaseException | None) -> None:
    """Complete a future from the loop thread, unless the front-end gave up on it already."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class VMProcess(asyncio.Protocol):
    """The front-end's end of one VM process: operations out, events in, futures settled (loop thread only)."""

    def __init__(self, replica: Replica) -> None:
        self.replica, self.loop = replica, replica.loop
        self.frames = Frames()
        self.transport: asyncio.Transport | None = None
        self.pid = 0  # of the process, once started
        self.batch: list[tuple] = []  # operations not yet sent: they go out together at the end of this turn
        self.waiting: dict[int, asyncio.Future] = {}  # operation id -> the future its answer settles
        self.calls: dict[int, Call] = {}  # the calls among them
        self.releases: set[int] = set()  # ids of `release` operations (answered with ids of held calls)
        self.booted: asyncio.Future = self.loop.create_future()
        self.ended: asyncio.Future = self.loop.create_future()  # set once the socket closed
        self.gone = ""  # why the process ended, when it said so

    async def start(self, spec: VMSpec, image: bytes, config: ServeConfig, incoming: bool = False) -> dict[str, int]:
        """Start the process, booting ``image`` (its service ports), or ready to receive the VM (``incoming``)."""
        ours, theirs = socket.socketpair()
        settings = Settings(config.core, config.boot_steps, config.slice_steps)
        args = (spec.id, GuestSpec(spec.id, image, spec.monitor, spec.profile, spec.mem), spec.services, settings,
                incoming)  # fmt: skip
        try:
            self.pid = await asyncio.to_thread(fork_vm, theirs, args)
        except Exception as e:  # no fork server, no process: the VM cannot run here
            ours.close()
            raise ReplicaDown(f"VM {spec.id}: its process did not start: {type(e).__name__}: {e}") from None
        finally:
            theirs.close()
        await self.loop.create_connection(lambda: self, sock=ours)
        return await self.booted

    # --- operations ------------------------------------------------------------------------------------
    def _submit(self, op: tuple) -> None:
        # The operations of one turn of the loop reach the process together: it wakes once and runs the guest
        # once for all of them.
        self.batch.append(op)
        if len(self.batch) == 1:
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send the queued operations now."""
        if self.batch and self.transport is not None:  # (before the link is up, connection_made sends them)
            batch, self.batch = self.batch, []
            if not self.ended.done():
                self.transport.write(frame(batch))

    def _down(self) -> ReplicaDown:
        return ReplicaDown(self.gone or f"VM {self.replica.id}: its process ended")

    def _track(self, future: asyncio.Future) -> int | None:
        """A new operation id whose answer settles ``future``; None (``future`` failed) once the process ended."""
        if self.ended.done():
            _settle(future, None, self._down())
            return None
        rid = next(_ids)
        self.waiting[rid] = future
        return rid

    def call(self, call: Call) -> None:
        """Hand a message to the guest; its reply settles ``call.future``."""
        if (rid := self._track(call.future)) is not None:
            call.id = rid
            self.calls[rid] = call
            self._submit(("call", rid, call.port, call.payload, call.urgent))

    def cancel(self, target: Call, call: Call) -> None:
        """Send the guest ``cancel <tag>`` for ``target``; its answer settles ``call.future``."""
        if (rid := self._track(call.future)) is not None:
            call.id = rid
            self._submit(("cancel", target.id, rid))

    def abandon(self, call: Call) -> None:
        """The front-end gave up on ``call``: the guest is told to drop it."""
        if self.waiting.pop(call.id, None) is not None:
            self.calls.pop(call.id, None)
            self._submit(("abandon", call.id))

    def request(self, kind: str, *args: object) -> asyncio.Future:
        """An operation on the VM (snapshot, precopy, freeze, release, stop); its answer settles the future."""
        future = self.loop.create_future()
        if (rid := self._track(future)) is not None:
            if kind == "release":
                self.releases.add(rid)
            self._submit((kind, *args, rid))
        return future

    def quit(self) -> None:
        """Tell the process to fail what it holds and end."""
        if not self.ended.done():
            self._submit(("quit",))
            self.flush()

    async def end(self) -> None:
        """Wait for the process to end, and kill it if it does not in time (the fork server reaps it)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.ended), END_WAIT)
        if self.transport is not None:
            self.transport.close()
        if not self.ended.done() and self.pid:  # it did not end when told
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)

    # --- events (asyncio.Protocol) ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The link is up: send what was queued meanwhile."""
        self.transport = transport
        self.flush()

    def data_received(self, data: bytes) -> None:
        """Act on the events of whole frames."""
        for event in self.frames.feed(data):
            kind = event[0]
            if kind == "reply":
                _, rid, value, error, cancelled = event
                future = self.waiting.pop(rid, None)
                call = self.calls.pop(rid, None)
                if call is not None:
                    call.cancel_requested = cancelled
                if rid in self.releases:  # the held calls: now the front-end's to forward
                    self.releases.discard(rid)
                    value = [c for c in (self._take(i) for i in value or ()) if c is not None]
                if future is not None:
                    _settle(future, value, error)
            elif kind == "booted":
                _settle(self.booted, event[1], None)
            elif kind in ("crashed", "gone"):
                self.gone = event[1]
                if kind == "crashed" and self.replica.process is self:  # (not a migration's VM still arriving)
                    log.warning("%s: marked crashed", event[1])
                    self.replica.crashed(event[1])
            elif kind == "exits":
                self.replica.exits = event[1]

    def _take(self, rid: int) -> Call | None:
        self.waiting.pop(rid, None)
        return self.calls.pop(rid, None)

    def connection_lost(self, exc: Exception | None) -> None:
        """The process ended: whatever it held fails over; an end it did not announce is a crash."""
        if not self.gone:
            self.gone = f"VM {self.replica.id}: its process ended unexpectedly"
            if self.replica.process is self:  # (not a migration's VM still arriving)
                log.warning("%s: marked crashed", self.gone)
                self.replica.crashed(self.gone)
        waiting, self.waiting, self.calls = self.waiting, {}, {}
        for future in waiting.values():
            _settle(future, None, self._down())
        _settle(self.booted, None, self._down())
        _settle(self.ended, None, None)


class Replica:
    """A VM as the front-end sees it: spec, state, load and counters, and its process (loop thread only)."""

    def __init__(self, spec: VMSpec, config: ServeConfig, loop: asyncio.AbstractEventLoop,
                 image: bytes | None = None) -> None:  # fmt: skip
        self.spec, self.config, self.loop = spec, config, loop
        self.image = build_image(spec) if image is None else image
        self.state = STOPPED
        self.reason = ""  # why it is crashed
        self.ports = {s: SERVICES[s].port for s in spec.services}
        self.outstanding = 0  # requests sent and not yet answered
        self.pending_cost = 0  # their estimated guest work (the content policy weighs by it)
        self.served = 0  # requests answered
        self.failovers = 0  # requests it lost (stopped or crashed under them), handed to the next replica
        self.exits = 0  # VM exits so far (the VM process reports them)
        self.boots = 0
        self.process: VMProcess | None = None  # while the VM runs (or boots)
        self.on_boot: Callable[[Replica], None] = lambda r: None  # replays state before the VM takes requests
        # Where the VM lives now when it was migrated away (docs/serve.md, "Live migration"): its requests are
        # forwarded there, with the admin token of that front-end.
        self.remote = ""
        self.remote_token = ""
        self.forward: Callable[[Replica, Call], None] | None = None
        self.deadlines = Deadlines(loop)

    @property
    def id(self) -> str:
        """The VM id (``X-Popek-VM``)."""
        return self.spec.id

    @property
    def running(self) -> bool:
        """True when the VM takes requests."""
        return self.state == RUNNING

    def describe(self) -> dict:
        """The VM in ``/resolve`` and ``/status``."""
        out = {"vm": self.id, "services": list(self.spec.services), "shard": self.spec.shard if
               "kv" in self.spec.services else None, "monitor": self.spec.monitor, "profile": self.spec.profile,
               "design": self.spec.design, "state": self.state, "outstanding": self.outstanding}  # fmt: skip
        if self.process is not None and self.process.pid and not self.process.ended.done():
            out["pid"] = self.process.pid
        if self.remote:
            out["location"] = self.remote
        return out

    def submit(self, port: int, payload: bytes, cost: int = 1, urgent: bool = False) -> Call:
        """Hand a message to the VM; wait for its reply with ``wait``."""
        if not self.running:
            raise ReplicaDown(f"VM {self.id} is {self.state}")
        call = Call(port, payload, self.loop.create_future(), urgent)
        self.outstanding += 1
        self.pending_cost += cost
        call.future.add_done_callback(lambda f: self._done(f, cost))
        if self.remote and self.forward is not None:
            self.forward(self, call)
        else:
            self.process.call(call)
        return call

    def _done(self, future: asyncio.Future, cost: int) -> None:
        self.outstanding -= 1
        self.pending_cost -= cost
        if not future.cancelled() and future.exception() is None:
            self.served += 1

    async def wait(self, call: Call, timeout: float) -> bytes:
        """The guest's reply to ``call``; TimeoutError after ``timeout`` seconds (the guest is told to drop it)."""
        self.deadlines.add(call, timeout)
        try:
            return await call.future
        except TimeoutError:
            if not self.remote and self.process is not None:
                self.process.abandon(call)
            raise
        finally:
            self.deadlines.discard(call)

    async def cancel(self, target: Call, timeout: float) -> bytes:
        """Send the guest ``cancel <tag>`` for ``target`` on the urgent channel; return its answer."""
        end = self.loop.time() + min(timeout, CANCEL_PATIENCE)
        while True:
            if self.process is None:
                raise ReplicaDown(f"VM {self.id} is {self.state}")
            call = Call(target.port, b"", self.loop.create_future(), urgent=True)
            self.process.cancel(target, call)
            answer = await asyncio.wait_for(call.future, timeout)
            # The kernel serves its urgent ring before it takes ordinary messages from the card, so a request
            # sent just before may not be known yet: ask again until it is, it is answered, or time is up.
            if answer != b"ERR unknown request" or target.future.done() or self.loop.time() > end:
                return answer
            await asyncio.sleep(0.01)

    async def request(self, kind: str, *args: object) -> object:
        """An operation on the running VM (``vmproc``): snapshot, precopy, freeze or release; ReplicaDown if none."""
        if self.process is None:
            raise ReplicaDown(f"VM {self.id} is {self.state}")
        return await self.process.request(kind, *args)

    async def start(self) -> None:
        """Boot the VM from its image (a fresh guest) in a new process."""
        if self.state in (RUNNING, BOOTING):
            return
        self.state, self.reason, self.remote = BOOTING, "", ""
        self.process = process = VMProcess(self)
        try:
            ports = await process.start(self.spec, self.image, self.config)
        except ReplicaDown as e:
            if self.process is process:
                self.process = None
                self.crashed(str(e))
            await process.end()
            return
        if self.state != BOOTING or self.process is not process:
            return  # stopped while it booted
        self.ports = ports
        self.boots += 1
        self.on_boot(self)  # queued before any request, so the guest has its state back first
        self.state = RUNNING

    async def stop(self) -> None:
        """Power the VM off: requests it holds fail over to other replicas; its guest state is gone."""
        if self.state == STOPPED:
            return
        self.state, self.remote = STOPPED, ""
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ReplicaDown):
                await process.request("stop")
            await process.end()

    async def snapshot(self) -> bytes:
        """The VM saved as it runs (docs/snapshots.md): its guest state, requests in flight included."""
        return await self.request("snapshot")

    def crashed(self, reason: str) -> None:
        """The VM process found the guest halted or failed, or the process itself ended."""
        if self.state in (RUNNING, BOOTING):
            self.state, self.reason = CRASHED, reason


class Cluster:
    """Every VM of the configuration, each in its process while it runs."""

    def __init__(self, config: ServeConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.replicas = [Replica(spec, config, loop) for spec in config.vms]

    def adopt(self, process: VMProcess, ports: dict[str, int]) -> Replica:
        """Serve a VM that arrived by live migration: its process (``VMProcess.start(incoming=True)``) runs it."""
        replica = process.replica
        if replica not in self.replicas:
            self.replicas.append(replica)  # the same list the name service reads: /resolve names it at once
        replica.process, replica.ports, replica.remote = process, dict(ports), ""
        replica.state, replica.reason = RUNNING, ""
        replica.boots += 1
        return replica

    def arriving(self, spec: VMSpec) -> Replica:
        """The replica a VM arriving by live migration will be: the one it left from here, or a new one."""
        replica = self.replica(spec.id)
        if replica is not None:
            return replica
        try:
            image = build_image(spec)  # for a later restart from the image
        except OSError:  # a guest file that is only on the source's machine
            image = b""
        return Replica(spec, self.config, asyncio.get_running_loop(), image)

    def replica(self, vm_id: str) -> Replica | None:
        """The replica with this id, or None."""
        return next((r for r in self.replicas if r.id == vm_id), None)

    async def start(self) -> None:
        """Boot every VM (in parallel)."""
        await asyncio.gather(*(r.start() for r in self.replicas))

    async def shutdown(self) -> None:
        """Fail what is outstanding and end every VM process."""
        processes = [r.process for r in self.replicas if r.process is not None]
        for r in self.replicas:
            r.state, r.process = STOPPED, None
        for p in processes:
            p.quit()
        await asyncio.gather(*(p.end() for p in processes))
