"""The guest services the front-end knows: their well-known ports, build masks, and what a request to one is.

Ports and formats are those of guests/servers/README.md; a VM's own names service (port 53) may say otherwise
at boot (``Replica.ports``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

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


@dataclass
class Request:
    """A request to one guest service, with what the policies look at."""

    service: str
    payload: bytes = b""
    key: bytes = b""  # kv: the key (chooses the shard)
    cost: int = 1  # estimated guest work in thousands of instructions (the content policy weighs by it)
    request_id: str = ""  # the client's X-Request-Id, for DELETE /requests/<id>
    vm: str = ""  # the client's X-Popek-VM: serve on this VM only, no failover (the client retries itself)


def services_mask(services: tuple[str, ...]) -> int:
    """The ``-D SERVICES=mask`` value of a build that serves ``services``."""
    return sum(SERVICES[s].mask for s in services)


def shard_of(key: bytes, shards: list[int]) -> int:
    """The shard that holds ``key``: a stable hash (CRC-32) of the key over the sorted shard numbers."""
    return shards[zlib.crc32(key) % len(shards)]
