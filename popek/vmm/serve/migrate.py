"""Live migration of a serving VM between two ``popek serve`` processes (docs/serve.md, "Live migration").

The source runs the pre-copy rounds of ``popek.vmm.migration`` in its VM's thread, between two slices of the
guest, and posts each round (a framed, checksummed message) to the target's ``/admin/vms/incoming/<id>/round``
while the guest goes on serving. When the dirty set is small or stops shrinking, the VM's thread holds new
requests, lets the guest answer what it has, and takes the last copy; the target resumes the VM from it and
serves it. The source then forwards the held requests, and every later one for that VM, to the target
(``/admin/vms/<id>/message``): a client that keeps the source's address, or a pinned ``X-Popek-VM``, is
answered by the new location without knowing it moved, and ``/resolve`` names the new location.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from urllib.parse import quote, urlsplit

import aiohttp

from popek.vmm.migration import MigrationReport, Round
from popek.vmm.serve.cluster import Call, Cluster, Replica, ReplicaDown, VMProcess
from popek.vmm.serve.config import VMSpec
from popek.vmm.snapshot import SnapshotError

MAX_TRANSFER = 1 << 28  # bytes of one migration message the target accepts (a 256 MiB guest, uncompressed)
TRANSFER_TIMEOUT = 120.0  # seconds one message to the target may take


class MigrationError(Exception):
    """A migration that could not be done: an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Incoming:
    """A VM being received: its spec, its ports, and the VM process that the rounds build it up in."""

    spec: VMSpec
    ports: dict[str, int]
    process: VMProcess
    started: float = field(default_factory=time.monotonic)


def check_url(url: str) -> str:
    """A target front-end's base URL (``http://HOST:PORT``), without a trailing slash; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None or parts.path not in ("", "/"):
        raise ValueError(f"expected http://HOST:PORT, not {url!r}")
    return url.rstrip("/")


class Migrations:
    """Both sides of live migration for one front-end: moving VMs out, receiving them, forwarding to them."""

    def __init__(self, cluster: Cluster, admin_token: str, on_boot: Callable[[Replica], None]) -> None:
        self.cluster, self.admin_token, self.on_boot = cluster, admin_token, on_boot
        self.incoming: dict[str, Incoming] = {}
        self._ids = itertools.count(1)
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()

    def http(self) -> aiohttp.ClientSession:
        """The kept-alive HTTP client to other front-ends (made on first use, in the loop)."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TRANSFER_TIMEOUT))
        return self._http

    async def _post(self, url: str, token: str, data: bytes | dict) -> bytes:
        """POST to another front-end's admin API; MigrationError unless it answers 200."""
        headers = {"Authorization": f"Bearer {token}"}
        kwargs = {"json": data} if isinstance(data, dict) else {"data": data}
        try:
            async with self.http().post(url, headers=headers, **kwargs) as r:
                body = await r.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise MigrationError(502, f"{url}: {type(e).__name__}: {e}") from None
        if r.status != 200:
            raise MigrationError(502, f"{url} answered {r.status}: {body[:200].decode(errors='replace')}")
        return body

    # --- the source ---------------------------------------------------------------------------------------
    async def move(self, replica: Replica, url: str, token: str = "") -> dict:
        """Move ``replica``'s VM to the front-end at ``url`` while it serves; return what it cost."""
        url, token = check_url(url), token or self.admin_token
        if not replica.running or replica.remote:
            raise MigrationError(409, f"VM {replica.id} is {'elsewhere' if replica.remote else replica.state}")
        report = MigrationReport()
        t0 = time.perf_counter()
        spec = {**asdict(replica.spec), "services": list(replica.spec.services)}
        opened = await self._post(f"{url}/admin/vms/incoming", token, {"spec": spec, "ports": replica.ports})
        path = f"{url}/admin/vms/incoming/{opened.decode()}"
        last_steps = 0
        try:
            while True:
                t = time.perf_counter()
                message, pages, steps, reason = await replica.request("precopy")
                await self._post(f"{path}/round", token, message)  # the guest serves on meanwhile
                report.rounds.append(Round(pages, len(message), time.perf_counter() - t))
                if len(report.rounds) > 1:
                    report.rounds[-2].guest_steps = steps - last_steps
                last_steps = steps
                if reason:
                    report.stop_reason = reason
                    break
            t_stop = time.perf_counter()
            message, report.final_pages = await replica.request("freeze")
        except ReplicaDown as e:
            raise MigrationError(409, f"VM {replica.id} went down during the migration: {e}") from None
        report.final_bytes = len(message)
        try:
            await self._post(f"{path}/final", token, message)
        except MigrationError:
            await replica.request("release", False)  # the VM goes on here, with what it held
            raise
        replica.remote, replica.remote_token, replica.forward = url, token, self.forward
        for call in await replica.request("release", True):
            self.forward(replica, call)
        t_end = time.perf_counter()
        report.downtime_s, report.total_s = t_end - t_stop, t_end - t0
        return {"vm": replica.id, "to": url, **report.as_dict()}

    def forward(self, replica: Replica, call: Call) -> None:
        """Send one guest message of a migrated VM to where it lives now; its reply settles ``call``."""
        task = replica.loop.create_task(self._forward(replica, call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, replica: Replica, call: Call) -> None:
        url = f"{replica.remote}/admin/vms/{replica.id}/message?port={call.port}"
        try:
            reply, error = await self._post(url, replica.remote_token, call.payload), None
        except MigrationError as e:
            reply, error = None, ReplicaDown(f"VM {replica.id} at {replica.remote}: {e.message}")
        if not call.future.done():
            if error is not None:
                call.future.set_exception(error)
            else:
                call.future.set_result(reply)

    # --- the target ---------------------------------------------------------------------------------------
    async def open(self, spec: dict, ports: dict) -> str:
        """Make a VM ready to receive (before the source stops its guest); the id of this transfer."""
        try:
            vm = VMSpec(str(spec["id"]), tuple(spec["services"]), str(spec["guest"]), str(spec["monitor"]),
                        str(spec["profile"]), int(spec["mem"]), int(spec["shard"]))  # fmt: skip
            ports = {str(k): int(v) for k, v in ports.items()}
        except (KeyError, TypeError, ValueError) as e:
            raise MigrationError(400, f"a bad VM description: {e}") from None
        here = self.cluster.replica(vm.id)
        if (here is not None and not here.remote) or any(i.spec.id == vm.id for i in self.incoming.values()):
            raise MigrationError(409, f"there is a VM {vm.id} here already")
        if here is not None and here.spec != vm:
            raise MigrationError(409, f"VM {here.id} here is not the VM that comes back")
        process = VMProcess(self.cluster.arriving(vm))
        try:
            await process.start(vm, b"", self.cluster.config, incoming=True)
        except ReplicaDown as e:  # a monitor or profile this host cannot run
            await process.end()
            raise MigrationError(400, str(e)) from None
        transfer = str(next(self._ids))
        self.incoming[transfer] = Incoming(vm, ports, process)
        return transfer

    def _incoming(self, transfer: str) -> Incoming:
        if transfer not in self.incoming:
            raise MigrationError(404, f"no incoming migration {transfer}")
        return self.incoming[transfer]

    async def round(self, transfer: str, message: bytes) -> None:
        """Apply one pre-copy round to the waiting VM's memory."""
        try:
            await self._incoming(transfer).process.request("round", message)
        except SnapshotError as e:
            raise MigrationError(400, f"a bad round: {e}") from None
        except ReplicaDown as e:
            self.incoming.pop(transfer, None)
            raise MigrationError(409, f"the receiving VM went down: {e}") from None

    async def finish(self, transfer: str, message: bytes) -> Replica:
        """Resume the VM from the last message and serve it."""
        incoming = self._incoming(transfer)
        del self.incoming[transfer]  # whatever happens now, this transfer is over
        try:
            await incoming.process.request("final", message)
        except SnapshotError as e:  # the VM process ends: nothing was resumed
            await incoming.process.end()
            raise MigrationError(400, f"a bad final message: {e}") from None
        except ReplicaDown as e:
            raise MigrationError(409, f"the receiving VM went down: {e}") from None
        replica = self.cluster.adopt(incoming.process, incoming.ports)
        replica.on_boot = self.on_boot  # a later restart from the image gets the shard's writes back
        return replica

    async def close(self) -> None:
        """Give up the migrations still arriving, and close the HTTP client."""
        incoming, self.incoming = list(self.incoming.values()), {}
        for i in incoming:
            i.process.quit()
        await asyncio.gather(*(i.process.end() for i in incoming))
        if self._http is not None:
            await self._http.close()
            self._http = None


def request_move(source: str, vm: str, target: str, token: str, timeout: float = 600.0) -> dict:
    """Ask the front-end at ``source`` to move ``vm`` to ``target`` (``popek migrate``); ValueError if refused."""
    source, target = check_url(source), check_url(target)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    req = urllib.request.Request(f"{source}/admin/vms/{quote(vm, safe='')}/migrate", method="POST",
                                 data=json.dumps({"to": target}).encode(), headers=headers)  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise ValueError(f"{source} refused: {e.code} {e.read()[:300].decode(errors='replace').strip()}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ValueError(f"{source}: {getattr(e, 'reason', e)}") from None


def format_report(report: dict) -> str:
    """A migration report in a few lines, for ``popek migrate``."""
    pages = ", ".join(str(r["pages"]) for r in report["rounds"])
    return (f"moved {report['vm']} to {report['to']}\n"
            f"rounds {len(report['rounds'])} (pages {pages}), final pages {report['final_pages']}, "
            f"bytes {report['bytes']:,}\n"
            f"downtime {report['downtime_ms']:.1f} ms, total {report['total_ms']:.1f} ms "
            f"({report['stop_reason']})")  # fmt: skip


__all__ = ["MAX_TRANSFER", "MigrationError", "Migrations", "check_url", "format_report", "request_move"]
