"""The name service: which services exist, on which guest ports, and which VMs serve each (``/resolve``).

The guest kernels have their own names service on port 53; each VM is asked for its services' ports when it
boots (``Replica.ports``), and the well-known ports of guests/servers/README.md stand in for a guest that
does not answer. This module names the replicas of a service in the order the current policy would try them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from popek.vmm.serve.cluster import Replica
    from popek.vmm.serve.dispatch import Policy, Request

NAMES_PORT = 53


@dataclass(frozen=True)
class Service:
    """A guest service: its well-known port, its bit in the build's ``SERVICES`` mask, whether a retry is safe."""

    name: str
    port: int
    mask: int
    idempotent: bool


SERVICES: dict[str, Service] = {
    "echo": Service("echo", 7, 1, True),
    "crc32": Service("crc32", 32, 2, True),
    "primes": Service("primes", 33, 4, True),
    "kv": Service("kv", 34, 8, True),  # GET, and PUT/DELETE of a whole value, may be repeated
    "session": Service("session", 35, 16, False),  # a repeat would count the visit twice
}
GROUPS = {"compute": ("echo", "crc32", "primes")}


def services_mask(services: tuple[str, ...]) -> int:
    """The ``-D SERVICES=mask`` value of a build that serves ``services``."""
    return sum(SERVICES[s].mask for s in services)


def shard_of(key: bytes, shards: list[int]) -> int:
    """The shard that holds ``key``: a stable hash (CRC-32) of the key over the sorted shard numbers."""
    return shards[zlib.crc32(key) % len(shards)]


class NameService:
    """Services to replicas, in the order the policy would pick them."""

    def __init__(self, replicas: list[Replica], policy: Policy) -> None:
        self.replicas, self.policy = replicas, policy

    def serving(self, service: str, shard: int | None = None) -> list[Replica]:
        """Every replica (in any state) configured for ``service`` (and ``shard`` for kv)."""
        return [r for r in self.replicas if service in r.spec.services and (shard is None or r.spec.shard == shard)]

    def shards(self) -> list[int]:
        """The kv shard numbers, sorted."""
        return sorted({r.spec.shard for r in self.serving("kv")})

    def candidates(self, request: Request, advance: bool = True) -> list[Replica]:
        """The running replicas that may serve ``request``, in the order to try them."""
        shard = shard_of(request.key, self.shards()) if request.service == "kv" and request.key else None
        running = [r for r in self.serving(request.service, shard) if r.running]
        return self.policy.order(running, request, advance)

    def resolve(self, request: Request) -> dict:
        """The JSON answer of ``GET /resolve/<service>``: running replicas in policy order, then the others."""
        shard = shard_of(request.key, self.shards()) if request.service == "kv" and request.key else None
        order = self.candidates(request, advance=False)
        rest = [r for r in self.serving(request.service, shard) if r not in order]
        out = {"service": request.service, "policy": self.policy.name, "port": SERVICES[request.service].port,
               "replicas": [r.describe() for r in [*order, *rest]]}  # fmt: skip
        if shard is not None:
            out["shard"] = shard
        return out
