"""kv replication: a write goes to every running replica of the key's shard, a read to one.

The front-end keeps, per shard, the last value written under each live key (at most what the guests hold:
64 keys of 4 KiB a shard). A replica that boots — at the start, or after it was stopped or crashed — gets
those writes replayed before any request, so a replica brought back never answers from a stale or empty
store. Replicas apply one shard's writes in the same order: the front-end hands a write to all of them
before it waits for any, and each VM takes its queue in order.
"""

from __future__ import annotations

import asyncio

from popek.vmm.serve.cluster import Call, Replica, ReplicaDown
from popek.vmm.serve.dispatch import Dispatcher, Reply, ServeError, estimate_cost
from popek.vmm.serve.services import Request, shard_of

_ABSENT = object()


class KvReplication:
    """The kv service over sharded, replicated guests."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.names = dispatcher.names
        self.logs: dict[int, dict[bytes, bytes]] = {}  # shard -> key -> last value written
        for r in self.names.serving("kv"):
            r.on_boot = self.replay

    def replay(self, replica: Replica) -> None:
        """Queue the shard's live keys to a replica that just booted (before it takes any request)."""
        if "kv" not in replica.spec.services:
            return
        port = replica.ports["kv"]
        for key, value in self.logs.get(replica.spec.shard, {}).items():
            call = Call(port, b"PUT " + key + b"\n" + value, replica.loop.create_future())  # nobody awaits it
            replica.process.call(call)

    async def get(self, key: bytes, request_id: str = "", vm: str = "") -> Reply:
        """``GET <key>`` on one replica of its shard (another if that one goes down), or on ``vm`` only."""
        request = Request("kv", b"GET " + key, key, estimate_cost("kv", b""), request_id, vm)
        return await self.dispatcher.call(request)

    async def put(self, key: bytes, value: bytes, request_id: str = "") -> Reply:
        """``PUT <key>\\n<value>`` on every running replica of the key's shard."""
        return await self._write(key, value, b"PUT " + key + b"\n" + value, request_id)

    async def delete(self, key: bytes, request_id: str = "") -> Reply:
        """``DELETE <key>`` on every running replica of the key's shard."""
        return await self._write(key, None, b"DELETE " + key, request_id)

    async def _write(self, key: bytes, value: bytes | None, payload: bytes, request_id: str) -> Reply:
        shard = shard_of(key, self.names.shards())
        replicas = [r for r in self.names.serving("kv", shard) if r.running]
        if not replicas:
            raise ServeError(503, f"no running replica of kv shard {shard}")
        request = Request("kv", payload, key, estimate_cost("kv", payload), request_id)
        log = self.logs.setdefault(shard, {})
        before = log.get(key, _ABSENT)
        if value is None:
            log.pop(key, None)
        else:
            log[key] = value
        calls = []
        for r in replicas:  # all handed over before any wait: every replica sees writes in one order
            try:
                calls.append((r, self.dispatcher.submit(r, request)))
            except ReplicaDown:
                pass
        results = await asyncio.gather(*(self.dispatcher.wait(r, c, request) for r, c in calls),
                                       return_exceptions=True)  # fmt: skip
        done = [(r, p) for (r, _), p in zip(calls, results, strict=True) if isinstance(p, bytes)]
        good = [(r, p) for r, p in done if not p.startswith(b"ERR ")]
        if not good:  # nobody applied it: the log must not claim it
            if log.get(key, _ABSENT) == (value if value is not None else _ABSENT):
                if before is _ABSENT:
                    log.pop(key, None)
                else:
                    log[key] = before
            if done:
                return Reply(done[0][0].id, done[0][1])  # the guest's refusal (ERR full, ...)
            errors = [e for e in results if isinstance(e, ServeError)]
            if errors:
                raise errors[0]
            raise ServeError(503, f"every replica of kv shard {shard} went down")
        good.sort(key=lambda rp: rp[1] == b"NOTFOUND")  # a replica that had the key speaks first
        return Reply(",".join(r.id for r, _ in good), good[0][1])
