"""Dispatch: which replica serves a request (the policies), failover to another, and the in-flight registry.

Where state lives is not a policy's choice: a kv key always goes to its shard (``names.shard_of``) and a
session to the VM its cookie names, under every policy, or the HTTP contract would break. A policy orders the
running replicas that may serve a request:

- ``round-robin``: each in turn (per service, per kv shard);
- ``least-outstanding``: fewest requests in flight first (ties in turn);
- ``content``: looks into the request: compute requests go where the least estimated guest work is pending
  (a ``primes 10000000`` weighs as much as thousands of ``echo``), a kv key is read from the same replica of
  its shard each time (rendezvous hashing, so a replica's loss moves only its keys), and a new session goes
  to the least loaded VM.

An idempotent request whose VM stops or crashes before answering is sent to the next replica in that order;
one that is not (``session``) fails with 502, so nothing is lost silently.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass

from popek.vmm.serve.cluster import Call, Replica, ReplicaDown
from popek.vmm.serve.names import NameService
from popek.vmm.serve.services import SERVICES, Request, shard_of


class ServeError(Exception):
    """An HTTP error answer: status, a one-line body, and the VM that produced it ('-' for the front-end)."""

    def __init__(self, status: int, message: str, vm: str = "-") -> None:
        super().__init__(message)
        self.status, self.message, self.vm = status, message, vm


@dataclass
class Reply:
    """A guest's answer and the VM(s) that gave it."""

    vm: str
    payload: bytes


def estimate_cost(service: str, payload: bytes) -> int:
    """Guest work of a request in thousands of instructions, roughly as measured (docs/serve.md)."""
    base = 5  # the kernel's receive, hand-over and reply
    if service == "primes" and payload.isdigit():
        return base + int(payload) * 5 // 2000  # the sieve: about 2.5 instructions per number
    if service == "crc32":
        return base + len(payload) * 10 // 1000
    return base + len(payload) // 1000


class Policy:
    """Orders the running replicas that may serve a request."""

    name = ""

    def __init__(self) -> None:
        self.turn: Counter = Counter()  # per service (and kv shard): whose turn it is

    def rotate(self, replicas: list[Replica], request: Request, advance: bool) -> list[Replica]:
        """The replicas starting from the one whose turn it is."""
        if not replicas:
            return []
        group = (request.service, replicas[0].spec.shard if request.service == "kv" else 0)
        i = self.turn[group] % len(replicas)
        if advance:
            self.turn[group] += 1
        return replicas[i:] + replicas[:i]

    def order(self, replicas: list[Replica], request: Request, advance: bool = True) -> list[Replica]:
        """The order to try ``replicas`` in; ``advance`` False only looks (``/resolve``)."""
        raise NotImplementedError


class RoundRobin(Policy):
    """Each replica in turn."""

    name = "round-robin"

    def order(self, replicas: list[Replica], request: Request, advance: bool = True) -> list[Replica]:
        """The replicas from the one whose turn it is."""
        return self.rotate(replicas, request, advance)


class LeastOutstanding(Policy):
    """Fewest requests in flight first; ties in turn."""

    name = "least-outstanding"

    def order(self, replicas: list[Replica], request: Request, advance: bool = True) -> list[Replica]:
        """The replicas by requests in flight (a stable sort keeps the turn among equals)."""
        return sorted(self.rotate(replicas, request, advance), key=lambda r: r.outstanding)


class ContentAware(Policy):
    """Looks at the request: estimated work for compute, the key for kv reads."""

    name = "content"

    def order(self, replicas: list[Replica], request: Request, advance: bool = True) -> list[Replica]:
        """kv: rendezvous hash of the key; otherwise least pending guest work first."""
        if request.service == "kv" and request.key:
            return sorted(replicas, key=lambda r: zlib.crc32(request.key + b"@" + r.id.encode()), reverse=True)
        return sorted(self.rotate(replicas, request, advance), key=lambda r: (r.pending_cost, r.outstanding))


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (RoundRobin, LeastOutstanding, ContentAware)}


class Dispatcher:
    """Sends requests to replicas chosen by the policy, fails over, and finds in-flight requests by id."""

    def __init__(self, replicas: list[Replica], policy: str, timeout: float) -> None:
        self.policy = POLICIES[policy]()
        self.names = NameService(replicas, self.policy)
        self.timeout = timeout
        self.inflight: dict[str, list[tuple[Replica, Call]]] = {}  # X-Request-Id -> where it is

    async def call(self, request: Request) -> Reply:
        """Serve ``request`` on the first replica in policy order that answers; fail over if idempotent."""
        if request.vm:
            return await self.call_pinned(request)
        candidates = self.names.candidates(request)
        if not candidates:
            raise ServeError(503, f"no running replica of {request.service}")
        reason = ""
        for replica in candidates:
            try:
                return Reply(replica.id, await self.one(replica, request))
            except ReplicaDown as e:
                if not SERVICES[request.service].idempotent:
                    raise ServeError(502, f"{e}; the request was not retried (not idempotent)", replica.id) from None
                reason = str(e)
                if replica is not candidates[-1]:
                    replica.failovers += 1  # handed to the next replica
        raise ServeError(503, f"every replica of {request.service} went down ({reason})")

    async def call_pinned(self, request: Request) -> Reply:
        """Serve ``request`` on the VM the client named (``X-Popek-VM``): 421 if that VM cannot, 503 if it is down.

        A client that chose the VM through ``/resolve`` does its own failover, so the front-end does none.
        """
        shard = shard_of(request.key, self.names.shards()) if request.service == "kv" else None
        replica = next((r for r in self.names.serving(request.service, shard) if r.id == request.vm), None)
        if replica is None:
            where = f" shard {shard}" if shard is not None else ""
            raise ServeError(421, f"VM {request.vm} does not serve {request.service}{where}")
        if not replica.running:
            raise ServeError(503, f"VM {replica.id} is {replica.state}", replica.id)
        try:
            return Reply(replica.id, await self.one(replica, request))
        except ReplicaDown as e:
            raise ServeError(503, str(e), replica.id) from None

    async def call_on(self, replica: Replica, request: Request) -> Reply:
        """Serve ``request`` on this replica only (it holds the request's state): 502 if it goes down."""
        try:
            return Reply(replica.id, await self.one(replica, request))
        except ReplicaDown as e:
            raise ServeError(502, f"{e}; the request was not retried", replica.id) from None

    async def one(self, replica: Replica, request: Request) -> bytes:
        """Serve ``request`` on ``replica``; ReplicaDown if it is (or goes) down, ServeError 504/503 otherwise."""
        return await self.wait(replica, self.submit(replica, request), request)

    def submit(self, replica: Replica, request: Request) -> Call:
        """Hand ``request`` to ``replica`` now (so several submits keep their order); see ``wait``."""
        call = replica.submit(replica.ports[request.service], request.payload, request.cost)
        if request.request_id:
            self.inflight.setdefault(request.request_id, []).append((replica, call))
        return call

    async def wait(self, replica: Replica, call: Call, request: Request) -> bytes:
        """The reply to a submitted call: 504 when the guest is too slow, 503 ``cancelled`` when cancelled."""
        try:
            payload = await replica.wait(call, self.timeout)
        except TimeoutError:
            raise ServeError(504, f"VM {replica.id} did not answer within {self.timeout:g} s", replica.id) from None
        finally:
            where = self.inflight.get(request.request_id)
            if where is not None:
                where.remove((replica, call))
                if not where:
                    del self.inflight[request.request_id]
        if call.cancel_requested and payload == b"cancelled":
            raise ServeError(503, "cancelled", replica.id)
        return payload

    async def cancel(self, request_id: str) -> tuple[int, str, str]:
        """Cancel the requests tagged ``request_id`` through the guests' urgent channel: (status, body, vms)."""
        where = list(self.inflight.get(request_id, []))
        if not where:
            return 404, f"no request {request_id} in flight", "-"
        answers = []
        for replica, call in where:
            try:
                answers.append(await replica.cancel(call, self.timeout))
            except (TimeoutError, ReplicaDown):
                answers.append(b"ERR unknown request")
        vms = ",".join(r.id for r, _ in where)
        if b"OK" in answers:
            return 200, "cancelled", vms
        if b"ERR not cancellable" in answers:
            return 409, "the request is in progress and cannot be cancelled", vms
        return 404, f"no request {request_id} in flight", vms
