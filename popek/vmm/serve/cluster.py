"""The VMs of ``popek serve`` and their threads: one thread per VM drives its own ``Host`` of one guest.

Each VM is a Host of one, owned by its thread alone (the card, the monitor and the memory are not shared, so
they need no lock). The core runs without the GIL (the JIT core is ``nogil``, the C core's cffi calls release
it), so two VMs execute guest code on two processor cores at once. The asyncio loop talks to a thread only
through its operation queue, and the thread answers through ``loop.call_soon_threadsafe`` on futures. A thread
whose guest waits for the card with nothing queued blocks on its queue: an idle VM costs nothing.

``Replica`` is the loop's side of a VM (its state, load and counters; touched by the loop thread only, except
``exits`` which the VM thread writes); ``Worker`` is the thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from popek import guests
from popek.isa import state as S
from popek.vmm import migration, snapshot
from popek.vmm.host import GuestSpec, Host
from popek.vmm.serve.config import DESIGNS, ServeConfig, VMSpec
from popek.vmm.serve.services import NAMES_PORT, SERVICES, services_mask

log = logging.getLogger("popek.serve")

BOOTING, RUNNING, STOPPED, CRASHED = "booting", "running", "stopped", "crashed"
CANCEL_PATIENCE = 5.0  # seconds a cancel keeps asking a guest that does not know the request yet
DRAIN_WAIT = 5.0  # seconds a migrating VM may take to answer what it holds before its last copy


class ReplicaDown(Exception):
    """The VM stopped or crashed before it answered (the request may be retried elsewhere if idempotent)."""


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


def time_now() -> float:
    """A monotonic clock in seconds."""
    return time.monotonic()


def _run_for(host: Host, steps: int) -> None:
    """Run the host's one VM for at most ``steps`` more guest steps (or until it waits, halts or fails)."""
    host.advance(steps)  # the step limit counts from here


@dataclass(eq=False)
class Call:
    """One message to a guest port and the future its reply settles."""

    port: int
    payload: bytes
    future: asyncio.Future
    urgent: bool = False
    tag: int = 0  # the card's tag, set by the VM thread when it hands the message over
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


def _settle_all(results: list[tuple[asyncio.Future, object, BaseException | None]]) -> None:
    """Complete several futures at once (one wake-up of the loop for a whole slice's replies)."""
    for future, value, error in results:
        _settle(future, value, error)


class Worker(threading.Thread):
    """The thread of one VM: boots it, hands it requests, runs it, and returns its replies."""

    def __init__(self, replica: Replica, image: bytes, config: ServeConfig, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name=f"vm-{replica.spec.id}", daemon=True)
        self.replica, self.image, self.config, self.loop = replica, image, config, loop
        self.ops: queue.SimpleQueue = queue.SimpleQueue()  # lists of operations, in order
        self.host: Host | None = None
        self.outstanding: dict[int, Call] = {}  # tag -> call, for the messages the guest has not answered
        self._batch: list[tuple] = []  # operations the loop has not handed over yet (loop thread only)
        # Live migration (popek/vmm/serve/migrate.py): the pre-copy source, and once the guest is frozen for its
        # last copy, the calls that arrived since (held, not lost: the new location answers them).
        self.source: migration.Source | None = None
        self.freezing: tuple[asyncio.Future, float] | None = None  # (future of the last copy, drain deadline)
        self.frozen = False
        self.held: list[Call] = []

    def submit(self, op: tuple) -> None:
        """Queue an operation for the thread (loop thread; handed over at the end of this turn of the loop)."""
        # The requests of one turn of the loop reach the thread together: it wakes once and runs the guest once
        # for all of them, rather than waking per request and fighting the loop for the GIL in between.
        self._batch.append(op)
        if len(self._batch) == 1:
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand the queued operations to the thread now."""
        if self._batch:
            self.ops.put(self._batch)
            self._batch = []

    # --- the thread -------------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve operations until told to quit; never let an exception end the thread unnoticed."""
        try:
            self._serve()
        except Exception as e:  # a bug below the front-end: the VM is lost, the server goes on
            self._crash(f"internal error: {type(e).__name__}: {e}")
            self._serve_dead()

    def _serve(self) -> None:
        while True:
            vm = self.host.vms[0] if self.host else None
            idle = vm is None or self.frozen or (vm.waiting and self.freezing is None)  # block until an op comes
            try:
                ops = self.ops.get(block=idle)
            except queue.Empty:
                ops = None
            while ops is not None:
                for op in ops:
                    if op[0] == "quit":
                        self._fail_all("the server is shutting down")
                        self._fail_held("the server is shutting down")
                        return
                    self._handle(op)
                try:
                    ops = self.ops.get_nowait()
                except queue.Empty:
                    ops = None
            if self.host is not None and not self.frozen:
                self._run_slice()
                if self.freezing is not None and self.host is not None:
                    self._maybe_freeze()

    def _serve_dead(self) -> None:
        """After an internal error: answer every operation as if the VM were down, until quit."""
        while True:
            for op in self.ops.get():
                if op[0] == "quit":
                    return
                if op[0] in ("call", "cancel"):
                    self._reply(op[-1], None, ReplicaDown(f"VM {self.replica.spec.id} is down"))
                elif op[0] in ("boot", "stop"):
                    self._reply_future(op[1], None, ReplicaDown(f"VM {self.replica.spec.id} failed"))

    def _handle(self, op: tuple) -> None:
        kind = op[0]
        if kind == "boot":
            self._boot(op[1])
        elif kind == "stop":
            self._fail_all(f"VM {self.replica.spec.id} was stopped")
            self._end_migration(f"VM {self.replica.spec.id} was stopped")
            self.host = None
            self._reply_future(op[1], None, None)
        elif kind == "call":
            call: Call = op[1]
            if call.future.done():
                return  # the front-end gave up before the guest saw it
            if self.freezing is not None or self.frozen:  # the VM is being copied for the last time: wait
                self.held.append(call)
                return
            if self.host is None:
                self._reply(call, None, ReplicaDown(f"VM {self.replica.spec.id} is {self.replica.state}"))
                return
            self._send(call)
        elif kind == "snapshot":  # between two slices: the guest is at an instruction boundary
            if self.host is None:
                self._reply_future(op[1], None, ReplicaDown(f"VM {self.replica.spec.id} is {self.replica.state}"))
            else:
                self._reply_future(op[1], snapshot.dumps(self.host), None)
        elif kind == "adopt":  # the VM came back by live migration: serve it here again
            self.host = op[1]
        elif kind == "precopy":  # one pre-copy round, between two slices of the guest
            self._precopy(op[1])
        elif kind == "freeze":  # answer what the guest holds, then take the last copy (see _maybe_freeze)
            self.freezing = (op[1], time_now() + DRAIN_WAIT)
        elif kind == "release":  # (release, moved, future): the last copy landed (moved) or did not
            self._release(op[1], op[2])
        elif kind == "cancel":  # (cancel, target call, reply call): the guest's urgent `cancel <tag>`
            target, call = op[1], op[2]
            if self.host is None or target.tag not in self.outstanding:
                self._reply(call, b"ERR unknown request", None)
                return
            target.cancel_requested = True
            call.payload = b"cancel %d" % target.tag
            self._send(call)
        elif kind == "abandon":  # the front-end timed out: forget the request and free the guest from it
            target = op[1]
            if self.host is not None and self.outstanding.pop(target.tag, None) is not None:
                self.host.send(0, target.port, b"cancel %d" % target.tag, urgent=True)

    def _precopy(self, future: asyncio.Future) -> None:
        if self.host is None:
            self._reply_future(future, None, ReplicaDown(f"VM {self.replica.spec.id} is {self.replica.state}"))
            return
        if self.source is None:
            self.source = migration.Source(self.host, 0)
        message, pages = self.source.precopy()
        steps = int(self.host.vms[0].vstate[S.STEPS])
        self._reply_future(future, (message, pages, steps, self.source.converged()), None)

    def _maybe_freeze(self) -> None:
        """Take the last copy once the guest answered what it held (or the drain time is up)."""
        future, deadline = self.freezing
        if self.outstanding and time_now() < deadline:
            return
        # Requests still in the guest after the drain would be answered at the new location to nobody: they
        # fail here instead, and the dispatcher (or the client) sends them again.
        self._fail_all(f"VM {self.replica.spec.id} is moving to another host")
        self.freezing, self.frozen = None, True
        if self.source is None:
            self.source = migration.Source(self.host, 0)
        message, pages = self.source.final()
        self._reply_future(future, (message, pages), None)

    def _release(self, moved: bool, future: asyncio.Future) -> None:
        held, self.held = self.held, []
        self.frozen, self.freezing, self.source = False, None, None
        if moved:
            migration.stop_source(self.host.vms[0], "migrated")
            self.host = None
            self._reply_future(future, held, None)  # the loop forwards them to the new location
            return
        for call in held:  # the target refused the VM: it goes on here
            if not call.future.done():
                self._send(call)
        self._reply_future(future, [], None)

    def _send(self, call: Call) -> None:
        try:
            call.tag = self.host.send(0, call.port, call.payload, call.urgent)
        except ValueError as e:  # a message the card refuses (too long): the request's fault, not the VM's
            self._reply(call, None, e)
            return
        self.outstanding[call.tag] = call

    def _boot(self, future: asyncio.Future) -> None:
        spec, config = self.replica.spec, self.config
        self._fail_all(f"VM {spec.id} was restarted")
        try:
            self.host = Host([GuestSpec(spec.id, self.image, spec.monitor, spec.profile, spec.mem)], config.core)
            _run_for(self.host, config.boot_steps)
        except Exception as e:  # a profile the monitor refuses, a core that is missing
            self.host = None
            self._reply_future(future, None, ReplicaDown(f"VM {spec.id} did not boot: {e}"))
            return
        vm = self.host.vms[0]
        ports = {s: SERVICES[s].port for s in spec.services}
        if vm.waiting:  # ask the guest's own names service where its services are
            tags = {self.host.send(0, NAMES_PORT, s.encode()): s for s in spec.services}
            _run_for(self.host, config.boot_steps)
            for m in self.host.replies(0):
                if m.tag in tags and m.payload.isdigit():
                    ports[tags[m.tag]] = int(m.payload)
        if vm.halted or vm.error:
            reason = self._down_reason()
            self.host = None
            self._reply_future(future, None, ReplicaDown(reason))
            return
        self._publish_exits()
        self._reply_future(future, ports, None)

    def _run_slice(self) -> None:
        host = self.host
        try:
            _run_for(host, self.config.slice_steps)
        except Exception as e:  # a monitor that fails on what this guest did: this VM is lost, not the server
            self._crash(f"monitor error: {type(e).__name__}: {e}")
            return
        # One hand-over per slice, not per reply: each call_soon_threadsafe wakes the loop (a write to its
        # self-pipe, and a wait for the GIL), which under load cost more than the guest's own work.
        done = []
        for m in host.replies(0):
            call = self.outstanding.pop(m.tag, None)
            if call is not None:
                done.append((call.future, m.payload, None))
        if done:
            self._settle_all(done)
        self._publish_exits()
        if host.vms[0].halted or host.vms[0].error:
            self._crash(self._down_reason())

    def _down_reason(self) -> str:
        vm = self.host.vms[0]
        if vm.halted:
            return f"VM {vm.name}: the guest halted"
        return f"VM {vm.name}: {vm.error}"

    def _publish_exits(self) -> None:
        stats = self.host.vms[0].stats
        self.replica.exits = sum(stats.exits.values())  # one int: the loop thread reads it as it is

    def _crash(self, reason: str) -> None:
        log.warning("%s: marked crashed", reason)
        self.host = None
        self._fail_all(reason)
        self._end_migration(reason)
        self.loop.call_soon_threadsafe(self.replica.crashed, reason)

    def _end_migration(self, reason: str) -> None:
        """The VM went down while it was being moved: the move fails, what it held fails over."""
        if self.freezing is not None:
            self._reply_future(self.freezing[0], None, ReplicaDown(reason))
        self.freezing, self.frozen, self.source = None, False, None
        self._fail_held(reason)

    def _fail_held(self, reason: str) -> None:
        held, self.held = self.held, []
        if held:
            self._settle_all([(call.future, None, ReplicaDown(reason)) for call in held])

    def _fail_all(self, reason: str) -> None:
        calls, self.outstanding = list(self.outstanding.values()), {}
        if calls:
            self._settle_all([(call.future, None, ReplicaDown(reason)) for call in calls])

    def _settle_all(self, results: list[tuple[asyncio.Future, object, BaseException | None]]) -> None:
        try:
            self.loop.call_soon_threadsafe(_settle_all, results)
        except RuntimeError:  # the loop is closed: the server is gone, nobody waits
            pass

    def _reply(self, call: Call, payload: bytes | None, error: BaseException | None) -> None:
        self._reply_future(call.future, payload, error)

    def _reply_future(self, future: asyncio.Future, value: object, error: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(_settle, future, value, error)
        except RuntimeError:  # the loop is closed: the server is gone, nobody waits
            pass


class Replica:
    """A VM as the front-end sees it: spec, state, load and counters (loop thread only)."""

    def __init__(self, spec: VMSpec, config: ServeConfig, loop: asyncio.AbstractEventLoop,
                 image: bytes | None = None) -> None:  # fmt: skip
        self.spec = spec
        self.state = STOPPED
        self.reason = ""  # why it is crashed
        self.ports = {s: SERVICES[s].port for s in spec.services}
        self.outstanding = 0  # requests sent and not yet answered
        self.pending_cost = 0  # their estimated guest work (the content policy weighs by it)
        self.served = 0  # requests answered
        self.failovers = 0  # requests it lost (stopped or crashed under them), handed to the next replica
        self.exits = 0  # VM exits so far (written by the VM thread)
        self.boots = 0
        self.on_boot: Callable[[Replica], None] = lambda r: None  # replays state before the VM takes requests
        self.worker = Worker(self, build_image(spec) if image is None else image, config, loop)
        self.loop = loop
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
        if self.remote:
            out["location"] = self.remote
        return out

    def submit(self, port: int, payload: bytes, cost: int = 1, urgent: bool = False) -> Call:
        """Hand a message to the VM's thread; wait for its reply with ``wait``."""
        if not self.running:
            raise ReplicaDown(f"VM {self.id} is {self.state}")
        call = Call(port, payload, self.loop.create_future(), urgent)
        self.outstanding += 1
        self.pending_cost += cost
        call.future.add_done_callback(lambda f: self._done(f, cost))
        if self.remote and self.forward is not None:
            self.forward(self, call)
        else:
            self.worker.submit(("call", call))
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
            if not self.remote:
                self.worker.submit(("abandon", call))
            raise
        finally:
            self.deadlines.discard(call)

    async def cancel(self, target: Call, timeout: float) -> bytes:
        """Send the guest ``cancel <tag>`` for ``target`` on the urgent channel; return its answer."""
        end = self.loop.time() + min(timeout, CANCEL_PATIENCE)
        while True:
            call = Call(target.port, b"", self.loop.create_future(), urgent=True)
            self.worker.submit(("cancel", target, call))
            answer = await asyncio.wait_for(call.future, timeout)
            # The kernel serves its urgent ring before it takes ordinary messages from the card, so a request
            # sent just before may not be known yet: ask again until it is, it is answered, or time is up.
            if answer != b"ERR unknown request" or target.future.done() or self.loop.time() > end:
                return answer
            await asyncio.sleep(0.01)

    async def start(self) -> None:
        """Boot the VM from its image (a fresh guest), then let it take requests."""
        if self.state in (RUNNING, BOOTING):
            return
        self.state, self.reason, self.remote = BOOTING, "", ""
        future = self.loop.create_future()
        self.worker.submit(("boot", future))
        try:
            self.ports = await future
        except ReplicaDown as e:
            self.crashed(str(e))
            return
        if self.state != BOOTING:
            return  # stopped while it booted
        self.boots += 1
        self.on_boot(self)  # queued before any request, so the guest has its state back first
        self.state = RUNNING

    async def stop(self) -> None:
        """Power the VM off: requests it holds fail over to other replicas; its guest state is gone."""
        if self.state == STOPPED:
            return
        self.state, self.remote = STOPPED, ""
        future = self.loop.create_future()
        self.worker.submit(("stop", future))
        await future

    async def snapshot(self) -> bytes:
        """The VM saved as it runs (docs/snapshots.md): its guest state, requests in flight included."""
        future = self.loop.create_future()
        self.worker.submit(("snapshot", future))
        return await future

    def crashed(self, reason: str) -> None:
        """The VM thread found the guest halted or failed (loop thread)."""
        if self.state in (RUNNING, BOOTING):
            self.state, self.reason = CRASHED, reason


class Cluster:
    """Every VM of the configuration, each with its thread."""

    def __init__(self, config: ServeConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.replicas = [Replica(spec, config, loop) for spec in config.vms]

    def adopt(self, spec: VMSpec, host: Host, ports: dict[str, int]) -> Replica:
        """Serve a VM that arrived by live migration: its host is already running the guest."""
        back = self.replica(spec.id)
        if back is not None:  # it had moved away from here: the same replica serves it again
            back.worker.submit(("adopt", host))
            back.remote, back.state, back.ports = "", RUNNING, dict(ports)
            return back
        try:
            image = build_image(spec)  # for a later restart from the image
        except OSError:  # a guest file that is only on the source's machine
            image = b""
        replica = Replica(spec, self.config, asyncio.get_running_loop(), image)
        replica.worker.host, replica.ports = host, dict(ports)
        replica.state, replica.boots = RUNNING, 1
        replica.worker.start()
        self.replicas.append(replica)  # the same list the name service reads: /resolve names it at once
        return replica

    def replica(self, vm_id: str) -> Replica | None:
        """The replica with this id, or None."""
        return next((r for r in self.replicas if r.id == vm_id), None)

    async def start(self) -> None:
        """Start the threads and boot every VM (in parallel)."""
        for r in self.replicas:
            r.worker.start()
        await asyncio.gather(*(r.start() for r in self.replicas))

    async def shutdown(self) -> None:
        """Fail what is outstanding and end every thread."""
        for r in self.replicas:
            r.state = STOPPED
            r.worker.submit(("quit",))
            r.worker.flush()
        await asyncio.to_thread(lambda: [r.worker.join(timeout=10) for r in self.replicas])
