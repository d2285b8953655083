"""The HTTP routes of ``popek serve`` (the contract is docs/serve.md): validation, guest replies to statuses.

Every response carries ``X-Popek-VM``: the VM (or, for a replicated write, the VMs) that produced it, ``-``
for an answer of the front-end alone. A request never waits longer than the configured timeouts, and an
error is one line of text, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from aiohttp import web

from popek.vmm.serve.cluster import Cluster, Replica, ReplicaDown
from popek.vmm.serve.config import ServeConfig
from popek.vmm.serve.dispatch import Dispatcher, Reply, ServeError, estimate_cost
from popek.vmm.serve.migrate import MAX_TRANSFER, MigrationError, Migrations
from popek.vmm.serve.replication import KvReplication
from popek.vmm.serve.services import SERVICES, Request
from popek.vmm.serve.sessions import COOKIE, Sessions

log = logging.getLogger("popek.serve")

VM_HEADER = "X-Popek-VM"
FRONTEND = "-"  # the X-Popek-VM of answers no VM produced
MAX_MESSAGE = 8192  # the guest kernel's message buffers (guests/servers/README.md)
MAX_VALUE = 4096
MAX_KEY = 64
MAX_PRIMES = 10_000_000
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_VM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_HEX8 = re.compile(rb"^[0-9a-f]{8}$")


@dataclass
class Frontend:
    """What the routes need: the cluster, the dispatcher and the stateful services over it."""

    config: ServeConfig
    cluster: Cluster
    dispatcher: Dispatcher
    kv: KvReplication
    sessions: Sessions
    admin_token: str
    migrations: Migrations


FRONTEND_KEY = web.AppKey("frontend", Frontend)


def _text(status: int, body: str | bytes, vm: str = FRONTEND, content_type: str = "text/plain") -> web.Response:
    data = body.encode() if isinstance(body, str) else body
    return web.Response(status=status, body=data, content_type=content_type, headers={VM_HEADER: vm})


def _json(data: dict, vm: str = FRONTEND, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json",
                        headers={VM_HEADER: vm})  # fmt: skip


def _guest_error(reply: Reply, what: str) -> ServeError:
    """A reply the guest should not have given: the VM is misbehaving, not the client."""
    shown = reply.payload[:80].decode("utf-8", "replace")
    return ServeError(502, f"unexpected reply from the {what} service: {shown!r}", reply.vm)


def _request_id(request: web.Request) -> str:
    rid = request.headers.get("X-Request-Id", "")
    if rid and not _REQUEST_ID.match(rid):
        raise ServeError(400, "X-Request-Id must be 1-128 visible ASCII characters")
    return rid


def _pin(request: web.Request) -> str:
    """The VM a client asks for with ``X-Popek-VM`` (it chose it through /resolve), or ''."""
    vm = request.headers.get(VM_HEADER, "")
    if vm and not _VM_ID.match(vm):
        raise ServeError(400, f"{VM_HEADER} must be a VM id (1-32 letters, digits, '-' or '_')")
    return vm


async def _body(request: web.Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (413), arriving within the body timeout (408)."""
    if request.content_length is not None and request.content_length > limit:
        raise ServeError(413, f"the body may have at most {limit} bytes")
    try:
        if request.content.is_eof():  # the body came with the headers: no wait, so no timer
            data = await request.read()
        else:
            async with asyncio.timeout(request.app[FRONTEND_KEY].config.body_timeout):  # no task, unlike wait_for
                data = await request.read()
    except TimeoutError:
        raise ServeError(408, "the request body did not arrive in time") from None
    except web.HTTPRequestEntityTooLarge:
        raise ServeError(413, f"the body may have at most {limit} bytes") from None
    if len(data) > limit:
        raise ServeError(413, f"the body may have at most {limit} bytes")
    return data


# --- compute ------------------------------------------------------------------------------------------------
async def echo(request: web.Request) -> web.Response:
    """POST /echo: the body unchanged."""
    fe, body = request.app[FRONTEND_KEY], await _body(request, MAX_MESSAGE)
    reply = await fe.dispatcher.call(Request("echo", body, cost=estimate_cost("echo", body),
                                             request_id=_request_id(request), vm=_pin(request)))  # fmt: skip
    if reply.payload != body:  # echo's truth is known: anything else is the kernel's error
        raise _guest_error(reply, "echo")
    return _text(200, reply.payload, reply.vm, "application/octet-stream")


async def crc32(request: web.Request) -> web.Response:
    """POST /crc32: zlib's CRC-32 of the body, 8 lowercase hex digits."""
    fe, body = request.app[FRONTEND_KEY], await _body(request, MAX_MESSAGE)
    reply = await fe.dispatcher.call(Request("crc32", body, cost=estimate_cost("crc32", body),
                                             request_id=_request_id(request), vm=_pin(request)))  # fmt: skip
    if not _HEX8.match(reply.payload):
        raise _guest_error(reply, "crc32")
    return _text(200, reply.payload, reply.vm)


async def primes(request: web.Request) -> web.Response:
    """GET /primes/<n>: the number of primes below n."""
    fe, n = request.app[FRONTEND_KEY], request.match_info["n"]
    if not (n.isascii() and n.isdigit() and len(n) <= 9) or int(n) > MAX_PRIMES:
        raise ServeError(400, f"n must be a decimal integer from 0 to {MAX_PRIMES}")
    payload = n.encode()
    reply = await fe.dispatcher.call(Request("primes", payload, cost=estimate_cost("primes", payload),
                                             request_id=_request_id(request), vm=_pin(request)))  # fmt: skip
    if not reply.payload.isdigit():
        raise _guest_error(reply, "primes")
    return _text(200, reply.payload, reply.vm)


# --- kv -------------------------------------------------------------------------------------------------------
def _key(request: web.Request) -> bytes:
    """The key of /kv/<key>, percent-decoded to bytes from the raw path (so %2F and %FF survive)."""
    raw = request.raw_path.split("?", 1)[0]
    key = unquote_to_bytes(raw[len("/kv/") :])
    if not 1 <= len(key) <= MAX_KEY or b"\n" in key:
        raise ServeError(400, f"a key has 1-{MAX_KEY} bytes after URL decoding, and no newline")
    return key


_KV_ERRORS = {b"ERR full": (507, "the shard is full (64 keys)"), b"ERR bad key": (400, "bad key"),
              b"ERR value too long": (413, f"a value may have at most {MAX_VALUE} bytes")}  # fmt: skip


def _kv_refusal(reply: Reply) -> ServeError:
    if reply.payload in _KV_ERRORS:
        status, message = _KV_ERRORS[reply.payload]
        return ServeError(status, message, reply.vm)
    return _guest_error(reply, "kv")


async def kv_get(request: web.Request) -> web.Response:
    """GET /kv/<key>: the value, or 404."""
    fe, key = request.app[FRONTEND_KEY], _key(request)
    reply = await fe.kv.get(key, _request_id(request), _pin(request))
    if reply.payload.startswith(b"FOUND\n"):
        return _text(200, reply.payload[6:], reply.vm, "application/octet-stream")
    if reply.payload == b"NOTFOUND":
        return _text(404, "no such key", reply.vm)
    raise _kv_refusal(reply)


async def kv_put(request: web.Request) -> web.Response:
    """PUT /kv/<key>: store the body (at most 4096 bytes) on every replica of the key's shard."""
    fe, key = request.app[FRONTEND_KEY], _key(request)
    reply = await fe.kv.put(key, await _body(request, MAX_VALUE), _request_id(request))
    if reply.payload == b"STORED":
        return web.Response(status=204, headers={VM_HEADER: reply.vm})
    raise _kv_refusal(reply)


async def kv_delete(request: web.Request) -> web.Response:
    """DELETE /kv/<key>: 204, or 404 when there was no such key."""
    fe, key = request.app[FRONTEND_KEY], _key(request)
    reply = await fe.kv.delete(key, _request_id(request))
    if reply.payload == b"DELETED":
        return web.Response(status=204, headers={VM_HEADER: reply.vm})
    if reply.payload == b"NOTFOUND":
        return _text(404, "no such key", reply.vm)
    raise _kv_refusal(reply)


# --- session, names, requests, status -------------------------------------------------------------------------
async def session(request: web.Request) -> web.Response:
    """GET /session: this client's visit count, kept in the guest its cookie names."""
    fe = request.app[FRONTEND_KEY]
    cookie = request.cookies.get(COOKIE, "")
    reply, value = await fe.sessions.visit(cookie, _request_id(request))
    if reply.payload == b"ERR full":
        raise ServeError(507, "the session table is full (256 clients)", reply.vm)
    if not reply.payload.isdigit():
        raise _guest_error(reply, "session")
    response = _text(200, reply.payload, reply.vm)
    if value != cookie:
        response.set_cookie(COOKIE, value, path="/", httponly=True, samesite="Lax")
    return response


def _query_bytes(request: web.Request, name: str) -> bytes:
    for part in request.rel_url.raw_query_string.split("&"):  # raw: a key need not be UTF-8
        k, _, v = part.partition("=")
        if unquote_to_bytes(k) == name.encode():
            return unquote_to_bytes(v.replace("+", " "))
    return b""


async def resolve(request: web.Request) -> web.Response:
    """GET /resolve/<service>[?key=K]: the replicas in the order the policy would pick them."""
    fe, service = request.app[FRONTEND_KEY], request.match_info["service"]
    if service not in SERVICES:
        raise ServeError(404, f"no service '{service}' (services: {', '.join(SERVICES)})")
    key = _query_bytes(request, "key") if service == "kv" else b""
    return _json(fe.dispatcher.names.resolve(Request(service, key=key)))


async def cancel(request: web.Request) -> web.Response:
    """DELETE /requests/<id>: cancel the in-flight request tagged X-Request-Id: <id>."""
    fe, rid = request.app[FRONTEND_KEY], request.match_info["id"]
    status, body, vms = await fe.dispatcher.cancel(rid)
    return _text(status, body, vms)


async def status(request: web.Request) -> web.Response:
    """GET /status: every VM's service, monitor, state and counters; the policy; totals."""
    fe = request.app[FRONTEND_KEY]
    vms = []
    for r in fe.cluster.replicas:
        vms.append({**r.describe(), "served": r.served, "failovers": r.failovers, "exits": r.exits,
                    "boots": r.boots, "ports": r.ports, **({"reason": r.reason} if r.reason else {})})  # fmt: skip
    totals = {k: sum(v[k] for v in vms) for k in ("served", "failovers", "exits", "outstanding")}
    totals.update(vms=len(vms), running=sum(v["state"] == "running" for v in vms))
    return _json({"policy": fe.dispatcher.policy.name, "core": fe.config.core, "vms": vms, "totals": totals})


def _admin_replica(request: web.Request) -> tuple[Frontend, Replica]:
    """The front-end and the VM the path names, for an admin request (401/403 without the token, 404 no VM)."""
    fe = _authorize(request)
    replica = fe.cluster.replica(request.match_info["id"])
    if replica is None:
        raise ServeError(404, f"no VM {request.match_info['id']}")
    return fe, replica


def _authorize(request: web.Request) -> Frontend:
    """The front-end, if the request carries its admin token (401 without one, 403 with a wrong one)."""
    fe = request.app[FRONTEND_KEY]
    auth = request.headers.get("Authorization", "")
    if not auth:
        raise web.HTTPUnauthorized(text="an admin token is required (Authorization: Bearer <token>)",
                                   headers={"WWW-Authenticate": "Bearer", VM_HEADER: FRONTEND})  # fmt: skip
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), fe.admin_token.encode()):
        raise ServeError(403, "wrong admin token")
    return fe


async def admin(request: web.Request) -> web.Response:
    """POST /admin/vms/<id>/stop|start: power a VM off, or boot it afresh (admin token required)."""
    _, replica = _admin_replica(request)
    if request.match_info["action"] == "stop":
        await replica.stop()
    else:
        await replica.start()
    return _json(replica.describe(), replica.id)


async def save(request: web.Request) -> web.Response:
    """POST /admin/vms/<id>/snapshot: the VM saved while it serves, as a snapshot file (`popek resume` runs it)."""
    _, replica = _admin_replica(request)
    try:
        data = await replica.snapshot()
    except ReplicaDown as e:
        raise ServeError(409, str(e)) from None
    return web.Response(body=data, content_type="application/octet-stream", headers={VM_HEADER: replica.id})


# --- live migration (popek/vmm/serve/migrate.py) ---------------------------------------------------------------
async def _transfer_body(request: web.Request) -> bytes:
    """A migration message: larger than any request, so read past the application's body limit, to a cap."""
    if request.content_length is None or not 0 < request.content_length <= MAX_TRANSFER:
        raise ServeError(413 if (request.content_length or 0) > MAX_TRANSFER else 411,
                         f"a migration message needs a Content-Length of 1-{MAX_TRANSFER} bytes")  # fmt: skip
    try:
        async with asyncio.timeout(request.app[FRONTEND_KEY].config.request_timeout):
            return await request.content.readexactly(request.content_length)
    except (TimeoutError, asyncio.IncompleteReadError):
        raise ServeError(408, "the migration message did not arrive whole in time") from None


async def migrate(request: web.Request) -> web.Response:
    """POST /admin/vms/<id>/migrate {"to": URL[, "token": T]}: move the VM, serving, to another front-end."""
    fe, replica = _admin_replica(request)
    try:
        body = json.loads(await _body(request, MAX_MESSAGE))
        to, token = body["to"], body.get("token", "")
        if not isinstance(to, str) or not isinstance(token, str):
            raise TypeError("'to' and 'token' are strings")
        report = await fe.migrations.move(replica, to, token)
    except (ValueError, KeyError, TypeError) as e:
        raise ServeError(400, f'expected {{"to": "http://HOST:PORT"}}: {e}') from None
    except MigrationError as e:
        raise ServeError(e.status, e.message, replica.id) from None
    return _json(report, replica.id)


async def incoming(request: web.Request) -> web.Response:
    """POST /admin/vms/incoming {"spec": ..., "ports": ...}: make a VM ready to receive; its transfer id."""
    fe = _authorize(request)
    try:
        body = json.loads(await _body(request, MAX_MESSAGE))
        transfer = await fe.migrations.open(body["spec"], body["ports"])
    except (ValueError, KeyError, TypeError) as e:
        raise ServeError(400, f"a bad migration request: {e}") from None
    except MigrationError as e:
        raise ServeError(e.status, e.message) from None
    return _text(200, transfer)


async def incoming_step(request: web.Request) -> web.Response:
    """POST /admin/vms/incoming/<transfer>/round|final: one pre-copy round, or the last copy (then it serves)."""
    fe = _authorize(request)
    transfer, message = request.match_info["transfer"], await _transfer_body(request)
    try:
        if request.match_info["step"] == "round":
            await fe.migrations.round(transfer, message)
            return _text(200, "applied")
        replica = await fe.migrations.finish(transfer, message)
    except MigrationError as e:
        raise ServeError(e.status, e.message) from None
    return _json(replica.describe(), replica.id)


async def message(request: web.Request) -> web.Response:
    """POST /admin/vms/<id>/message?port=N: one guest message to the VM, its raw reply (forwarded requests)."""
    fe, replica = _admin_replica(request)
    port = request.query.get("port", "")
    if not (port.isascii() and port.isdigit() and int(port) < 65536):
        raise ServeError(400, "port must be a number below 65536")
    body = await _body(request, MAX_MESSAGE)
    try:
        call = replica.submit(int(port), body)
        return _text(200, await replica.wait(call, fe.config.request_timeout), replica.id)
    except ReplicaDown as e:
        raise ServeError(503, str(e), replica.id) from None
    except TimeoutError:
        raise ServeError(504, f"VM {replica.id} did not answer in time", replica.id) from None


# --- the application ------------------------------------------------------------------------------------------
def _answers(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Callable:
    """The route's errors as one-line answers; anything unexpected is logged in one line and answered 500.

    A wrapper per route rather than an aiohttp middleware: the middleware machinery cost about 7 µs a request.
    """

    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ServeError as e:
            response = _text(e.status, e.message, e.vm)
            if e.status in (408, 413):  # the rest of the body may still come: it must not be read as a request
                response.force_close()
            return response
        except web.HTTPException as e:  # the admin routes' 401
            e.headers.setdefault(VM_HEADER, FRONTEND)
            raise
        except ConnectionError:  # the client went away mid-request (aiohttp's "Connection lost"): nobody to tell
            return _text(400, "the connection was lost")
        except Exception as e:
            log.error("%s %s: internal error: %s: %s", request.method, request.path, type(e).__name__, e)
            return _text(500, "internal error")

    return answer


async def no_route(request: web.Request) -> web.Response:
    """Whatever no route takes: 405 (with Allow) when the path has routes for other methods, else 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed, headers={VM_HEADER: FRONTEND})
    raise web.HTTPNotFound(headers={VM_HEADER: FRONTEND})


def make_app(frontend: Frontend) -> web.Application:
    """The aiohttp application of the front-end."""
    app = web.Application(client_max_size=MAX_MESSAGE)
    app[FRONTEND_KEY] = frontend
    routes = [
        web.post("/echo", echo),
        web.post("/crc32", crc32),
        web.get("/primes/{n}", primes, allow_head=False),
        web.get("/kv/{key:[\\s\\S]*}", kv_get, allow_head=False),
        web.put("/kv/{key:[\\s\\S]*}", kv_put),
        web.delete("/kv/{key:[\\s\\S]*}", kv_delete),
        web.get("/session", session, allow_head=False),
        web.get("/resolve/{service}", resolve),
        web.delete("/requests/{id}", cancel),
        web.get("/status", status),
        web.post("/admin/vms/{id}/{action:stop|start}", admin),
        web.post("/admin/vms/incoming", incoming),
        web.post("/admin/vms/incoming/{transfer}/{step:round|final}", incoming_step),
        web.post("/admin/vms/{id}/migrate", migrate),
        web.post("/admin/vms/{id}/snapshot", save),
        web.post("/admin/vms/{id}/message", message),
        web.route("*", "/{path:[\\s\\S]*}", no_route),  # last: the 404s and 405s, with X-Popek-VM
    ]  # fmt: skip
    app.add_routes([web.RouteDef(r.method, r.path, _answers(r.handler), r.kwargs) for r in routes])
    return app


def make_frontend(config: ServeConfig, cluster: Cluster, admin_token: str) -> Frontend:
    """Wire the dispatcher, kv replication and sessions over a cluster."""
    dispatcher = Dispatcher(cluster.replicas, config.policy, config.request_timeout)
    kv = KvReplication(dispatcher)
    frontend = Frontend(config, cluster, dispatcher, kv, Sessions(dispatcher), admin_token,
                        Migrations(cluster, admin_token, kv.replay))  # fmt: skip
    return frontend
