"""The name service: which VMs serve a service, in the order the current policy would pick them (``/resolve``).

The guest kernels have their own names service on port 53; each VM is asked for its services' ports when it
boots (``Replica.ports``). This one sits above them: it knows every VM of the cluster, and asks the policy.
"""

from __future__ import annotations

from typing import Protocol

from popek.vmm.serve.cluster import Replica
from popek.vmm.serve.services import SERVICES, Request, shard_of


class Orders(Protocol):
    """What the name service needs of a policy (popek/vmm/serve/dispatch.py)."""

    name: str

    def order(self, replicas: list[Replica], request: Request, advance: bool = True) -> list[Replica]:
        """The order to try ``replicas`` in."""
        ...


class NameService:
    """Services to replicas, in the order the policy would pick them."""

    def __init__(self, replicas: list[Replica], policy: Orders) -> None:
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
