"""A client stub for ``popek serve``: calls that look local, over HTTP to a cluster that may move and fail.

The lecture's client-side transparency, one mechanism each:

- **access**: ``echo``, ``crc32``, ``primes``, ``get``/``put``/``delete``, ``session`` are method calls; the
  stub builds the HTTP request and turns the answer into a value or a ``PopekError``;
- **location**: the stub asks the name service (``GET /resolve/<service>``) where a service runs, caches the
  answer, and sends each request to that VM (``X-Popek-VM``), so the front-end does no choosing of its own;
- **replication**: a kv key's shard is computed from the key (``crc32(key) mod shards``, docs/serve.md), and
  any replica of that shard may answer a read; writes go to the front-end, which replicates them;
- **failure**: an idempotent request whose VM is down (503), too slow (504, or no answer within ``timeout``),
  or whose front-end refuses the connection is sent to the next replica or front-end, after a fresh
  ``/resolve``; a request that may not be repeated (``session``) is retried only when it never left.

Optionally the stub caches idempotent GETs (``cache_ttl``): ``primes`` answers never change, a kv value may be
stale for at most ``cache_ttl`` seconds when another client writes it (this client's own writes invalidate it).

It speaks HTTP/1.1 with keep-alive through the standard library and imports nothing else of popek. One
``Client`` is not shared between threads (one connection per front-end).
"""

from __future__ import annotations

import http.client
import json
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote_from_bytes, urlsplit

VM_HEADER = "X-Popek-VM"
SESSION_COOKIE = "popek-session"
RETRY_STATUSES = (503, 504)  # the VM is down or too slow: another replica may answer
STALE_STATUSES = (421,)  # the VM does not serve that any more: the cached location is wrong


class PopekError(Exception):
    """An answer that is not the value asked for: the HTTP status, the one-line message, the VM that gave it."""

    def __init__(self, status: int, message: str, vm: str = "-") -> None:
        super().__init__(f"{status} {message}" + (f" (VM {vm})" if vm not in ("", "-") else ""))
        self.status, self.message, self.vm = status, message, vm


class Unavailable(PopekError):
    """No replica or front-end answered after every retry (status 0 when none could be reached at all)."""


@dataclass
class Response:
    """One HTTP answer: status, body, headers (lower-case names) and where it came from."""

    status: int
    body: bytes
    headers: dict[str, str]
    endpoint: str
    vm: str = "-"


@dataclass
class Location:
    """Where a service runs: a front-end and one of its VMs."""

    endpoint: str
    vm: str
    shard: int | None = None


@dataclass
class _Resolved:
    """A cached ``/resolve`` answer of one front-end: the running VMs of a service, by kv shard (None: all)."""

    when: float
    by_shard: dict[int | None, list[str]] = field(default_factory=dict)


class Client:
    """A stub for one or more ``popek serve`` front-ends (their base URLs, e.g. ``http://127.0.0.1:8023``)."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = 30.0,
        attempts: int = 4,
        location_ttl: float = 30.0,
        cache_ttl: float = 0.0,
        cache_size: int = 1024,
        pin: bool = True,
    ) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not self.endpoints:
            raise ValueError("a client needs at least one endpoint")
        for e in self.endpoints:
            parts = urlsplit(e)
            if parts.scheme != "http" or not parts.hostname or parts.port is None:
                raise ValueError(f"endpoint {e!r}: expected http://HOST:PORT")
        self.timeout, self.attempts, self.location_ttl = timeout, attempts, location_ttl
        self.cache_ttl, self.cache_size, self.pin = cache_ttl, cache_size, pin
        self.stats: Counter = Counter()  # requests, retries, resolves, cache_hits, endpoint_failures
        self._conns: dict[str, http.client.HTTPConnection] = {}
        self._resolved: dict[tuple[str, str], _Resolved] = {}  # (endpoint, service) -> running VMs
        self._bad: dict[tuple[str, str], float] = {}  # (endpoint, vm) -> until when it is avoided
        self._down: dict[str, float] = {}  # endpoint -> until when it is avoided
        self._cookies: dict[str, str] = {}  # endpoint -> session cookie (it names a VM of that front-end)
        self._cache: OrderedDict[str, tuple[float, Response]] = OrderedDict()
        self.last: Response | None = None  # the last answer, for a caller that wants its headers

    # --- the stubs --------------------------------------------------------------------------------------------
    def echo(self, data: bytes) -> bytes:
        """The bytes back, from a guest."""
        return self._value(self.call("POST", "/echo", data, service="echo"), 200)

    def crc32(self, data: bytes) -> int:
        """zlib's CRC-32 of ``data``, computed by a guest."""
        return int(self._value(self.call("POST", "/crc32", data, service="crc32"), 200), 16)

    def primes(self, n: int) -> int:
        """The number of primes below ``n`` (0 <= n <= 10,000,000)."""
        return int(self._value(self.call("GET", f"/primes/{int(n)}", service="primes"), 200))

    def get(self, key: bytes | str) -> bytes | None:
        """The value stored under ``key``, or None."""
        key = _bytes(key)
        r = self.call("GET", _kv_path(key), service="kv", key=key)
        return None if r.status == 404 and r.vm != "-" else self._value(r, 200)

    def put(self, key: bytes | str, value: bytes) -> None:
        """Store ``value`` under ``key`` (on every replica of the key's shard)."""
        key = _bytes(key)
        self._value(self.call("PUT", _kv_path(key), value, service="kv", key=key), 204)

    def delete(self, key: bytes | str) -> bool:
        """Delete ``key``; False when there was no such key."""
        key = _bytes(key)
        r = self.call("DELETE", _kv_path(key), service="kv", key=key)
        if r.status == 404 and r.vm != "-":
            return False
        self._value(r, 204)
        return True

    def session(self) -> int:
        """This client's visit count (the cookie is kept per front-end: it names a VM of that front-end)."""
        return int(self._value(self.call("GET", "/session", service="session", idempotent=False), 200))

    def status(self) -> dict:
        """``GET /status`` of the first front-end that answers."""
        return json.loads(self._value(self.call("GET", "/status"), 200))

    def resolve(self, service: str, key: bytes | str | None = None) -> list[Location]:
        """Where ``service`` (and ``key``'s shard for kv) runs now, in the order this client will try it."""
        key = None if key is None else _bytes(key)
        out = []
        for endpoint in self._live_endpoints():
            try:
                out += self._locations(endpoint, service, key)
            except (_NotSent, _Lost):
                self._down[endpoint] = time.monotonic() + self.location_ttl
        return out

    def close(self) -> None:
        """Close every connection."""
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one call, with its retries ---------------------------------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        service: str | None = None,
        key: bytes | None = None,
        idempotent: bool | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Send one request to where ``service`` runs, retrying elsewhere when that is safe; the final answer."""
        if idempotent is None:
            idempotent = method in ("GET", "PUT", "DELETE") or service in ("echo", "crc32")
        cacheable = self.cache_ttl > 0 and method == "GET" and service in ("primes", "kv")
        if cacheable:
            hit = self._cache.get(path)
            if hit is not None and time.monotonic() - hit[0] < self.cache_ttl:
                self.stats["cache_hits"] += 1
                return hit[1]
        if method != "GET" and service == "kv":
            self._cache.pop(path, None)  # our own write: the cached value is no longer ours to give
        # Only reads are sent to a VM of our choosing: a kv write must reach every replica (the front-end does
        # that), a session visit the VM its cookie names.
        pinned = self.pin and (service in ("echo", "crc32", "primes") or (service == "kv" and method == "GET"))
        last_error: PopekError | None = None
        for attempt in range(self.attempts):
            if attempt:
                self.stats["retries"] += 1
                time.sleep(0.02 * (attempt - 1))  # a VM that is booting, a front-end that restarts
            target = self._target(service, key) if pinned else Location(self._live_endpoints()[0], "")
            if target is None:
                break
            h = dict(headers or {})
            if pinned:
                h[VM_HEADER] = target.vm
            if service == "session" and target.endpoint in self._cookies:
                h["Cookie"] = self._cookies[target.endpoint]
            try:
                r = self._send(target.endpoint, method, path, body, h)
            except _NotSent as e:  # the front-end is unreachable: nothing happened there, any request may go on
                self._down[target.endpoint] = time.monotonic() + self.location_ttl
                self.stats["endpoint_failures"] += 1
                last_error = Unavailable(0, f"{target.endpoint}: {e}")
                continue
            except _Lost as e:  # sent, no answer: it may have been done; repeat it only if that is harmless
                last_error = Unavailable(0, f"{target.endpoint}: {e}")
                if not idempotent:
                    raise last_error from None
                self._avoid(target)
                continue
            if service == "session" and "set-cookie" in r.headers:
                self._cookies[target.endpoint] = r.headers["set-cookie"].split(";", 1)[0]
            if r.status not in (*RETRY_STATUSES, *STALE_STATUSES) or r.body == b"cancelled":
                self.last = r
                if cacheable and r.status in (200, 404):
                    self._cache[path] = (time.monotonic(), r)
                    self._cache.move_to_end(path)
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
                return r
            last_error = PopekError(r.status, _line(r.body), r.vm)
            untouched = r.status == 421 or (r.status == 503 and r.vm == "-")  # no guest saw the request
            if pinned and r.status != 421:
                self._avoid(target)  # that VM is down or slow: its replicas next
            elif r.status == 421:
                self._forget(target.endpoint)  # our idea of that front-end's VMs is out of date
            elif r.status == 503 and r.vm == "-":
                self._down[target.endpoint] = time.monotonic() + self.location_ttl  # no replica there: next
            if not (idempotent or untouched):
                raise last_error
        if last_error is None:
            raise Unavailable(0, f"no running replica of {service or 'the front-end'} on {', '.join(self.endpoints)}")
        raise Unavailable(last_error.status, last_error.message, last_error.vm)

    # --- locations --------------------------------------------------------------------------------------------
    def _live_endpoints(self) -> list[str]:
        now = time.monotonic()
        live = [e for e in self.endpoints if self._down.get(e, 0) <= now]
        return live or list(self.endpoints)  # every one failed lately: try them again rather than give up

    def _target(self, service: str, key: bytes | None) -> Location | None:
        """The first location of ``service`` not avoided now (re-resolving a front-end whose answer is old)."""
        now = time.monotonic()
        for endpoint in self._live_endpoints():
            try:
                locations = self._locations(endpoint, service, key)
            except (_NotSent, _Lost):
                self._down[endpoint] = now + self.location_ttl
                self.stats["endpoint_failures"] += 1
                continue
            fresh = [loc for loc in locations if self._bad.get((endpoint, loc.vm), 0) <= now]
            if fresh:
                return fresh[0]
            if locations:  # every VM of it failed lately: look again now, they may be back
                self._forget(endpoint)
                locations = self._locations(endpoint, service, key)
                fresh = [loc for loc in locations if self._bad.get((endpoint, loc.vm), 0) <= now]
                if fresh:
                    return fresh[0]
        return None

    def _locations(self, endpoint: str, service: str, key: bytes | None) -> list[Location]:
        resolved = self._resolved.get((endpoint, service))
        if resolved is None or time.monotonic() - resolved.when > self.location_ttl:
            resolved = self._resolve(endpoint, service)
        if service == "kv" and key is not None:
            shards = sorted(s for s in resolved.by_shard if s is not None)
            if not shards:
                return []
            shard = shards[zlib.crc32(key) % len(shards)]  # docs/serve.md: where a key lives
            return [Location(endpoint, vm, shard) for vm in resolved.by_shard[shard]]
        return [Location(endpoint, vm, s) for s, vms in resolved.by_shard.items() for vm in vms]

    def _resolve(self, endpoint: str, service: str) -> _Resolved:
        self.stats["resolves"] += 1
        r = self._send(endpoint, "GET", f"/resolve/{service}", None, {})
        if r.status != 200:
            raise PopekError(r.status, _line(r.body), r.vm)
        answer = json.loads(r.body)
        resolved = _Resolved(time.monotonic())
        for replica in answer["replicas"]:
            shard = replica.get("shard") if service == "kv" else None
            vms = resolved.by_shard.setdefault(shard, [])
            if replica.get("state") == "running":
                vms.append(replica["vm"])
        self._resolved[(endpoint, service)] = resolved
        return resolved

    def _avoid(self, location: Location) -> None:
        """Leave this VM alone for a while and look the service up again before the next try."""
        self._bad[(location.endpoint, location.vm)] = time.monotonic() + self.location_ttl
        self._forget(location.endpoint)

    def _forget(self, endpoint: str) -> None:
        for k in [k for k in self._resolved if k[0] == endpoint]:
            del self._resolved[k]

    # --- HTTP -------------------------------------------------------------------------------------------------
    def _send(self, endpoint: str, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Response:
        """One exchange on the endpoint's kept-alive connection (reopened once if the server closed it idle)."""
        self.stats["requests"] += 1
        for fresh in (False, True):
            conn = self._conns.get(endpoint)
            reused = conn is not None and not fresh
            if conn is None or fresh:
                if conn is not None:
                    conn.close()
                parts = urlsplit(endpoint)
                conn = self._conns[endpoint] = http.client.HTTPConnection(parts.hostname, parts.port,
                                                                          timeout=self.timeout)  # fmt: skip
                try:
                    conn.connect()
                except OSError as e:
                    conn.close()
                    del self._conns[endpoint]
                    raise _NotSent(_reason(e)) from None
            try:
                conn.request(method, path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
            except TimeoutError as e:
                conn.close()
                del self._conns[endpoint]
                raise _Lost(f"no answer within {self.timeout:g} s") from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                del self._conns[endpoint]
                if reused:  # the server closed an idle kept-alive connection before it read this: send again
                    continue
                raise _Lost(_reason(e)) from None
            if answer.getheader("Connection", "").lower() == "close":
                conn.close()
                del self._conns[endpoint]
            hdrs = {k.lower(): v for k, v in answer.getheaders()}
            return Response(answer.status, data, hdrs, endpoint, hdrs.get(VM_HEADER.lower(), "-"))
        raise _Lost("the connection was closed twice")  # not reached: the second try is on a fresh connection

    @staticmethod
    def _value(r: Response, ok: int) -> bytes:
        if r.status != ok:
            raise PopekError(r.status, _line(r.body), r.vm)
        return r.body


class _NotSent(Exception):
    """The request never reached the front-end (no connection)."""


class _Lost(Exception):
    """The request was sent, and no answer came back."""


def _bytes(key: bytes | str) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


def _kv_path(key: bytes) -> str:
    return "/kv/" + quote_from_bytes(key, safe="")


def _line(body: bytes) -> str:
    return body[:200].decode("utf-8", "replace").strip()


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__
