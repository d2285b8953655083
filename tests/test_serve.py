"""``popek serve`` over real HTTP on loopback: every endpoint against an independent truth (zlib, a Python
sieve, a dict), the policies' choices through ``/resolve``, kv replication with a replica stopped through the
admin API, failover, cancel, timeouts, crashed guests, and malformed HTTP. Every server started is stopped.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest

from popek.vmm.serve import BackgroundServer, ConfigError, ServeConfig, VMSpec, build_config
from popek.vmm.serve.services import shard_of

TOKEN = "test-admin-token"
COMPUTE = ("echo", "crc32", "primes", "session")
ROOT = Path(__file__).resolve().parent.parent


def config(vms: list[VMSpec], **settings: object) -> ServeConfig:
    """A configuration on a free loopback port with short client timeouts."""
    values = {"port": 0, "admin_token": TOKEN, "body_timeout": 1.0, "idle_timeout": 1.5, **settings}
    return ServeConfig(vms=vms, **values).check()


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, url: str, timeout: float = 60) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        self.cookie = ""

    def __call__(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                 ) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        headers = dict(headers or {})
        if self.cookie:
            headers["Cookie"] = self.cookie
        self.conn.request(method, path, body=body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        cookie = r.getheader("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def close(self) -> None:
        self.conn.close()


def admin(url: str, vm: str, action: str, token: str | None = TOKEN) -> tuple[int, dict, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Client(url)("POST", f"/admin/vms/{vm}/{action}", headers=headers)


def status(url: str) -> dict:
    return json.loads(Client(url)("GET", "/status")[2])


def resolve(url: str, service: str, key: bytes = b"") -> list[str]:
    path = f"/resolve/{service}" + (f"?key={quote_from_bytes(key, safe='')}" if key else "")
    code, _, body = Client(url)("GET", path)
    assert code == 200
    return [r["vm"] for r in json.loads(body)["replicas"] if r["state"] == "running"]


def wait_outstanding(url: str, vm: str, n: int = 1, limit: float = 30) -> None:
    """Wait until ``vm`` holds ``n`` requests (bounded)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if next(v for v in status(url)["vms"] if v["vm"] == vm)["outstanding"] >= n:
            return
        time.sleep(0.005)
    raise AssertionError(f"{vm} never held {n} requests")


@contextmanager
def in_background(fn, *args):
    """Run ``fn(*args)`` in a thread; yield a list that holds its result once joined."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    t.start()
    try:
        yield out
    finally:
        t.join(60)


@contextmanager
def serve_log() -> Iterator[list[logging.LogRecord]]:
    """Collect what the front-end logs meanwhile."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("popek.serve")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def primes_below(n: int) -> int:
    if n < 3:
        return 0
    sieve = bytearray([1]) * n
    sieve[0] = sieve[1] = 0
    for i in range(2, int(n**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, n, i)))
    return sum(sieve)


# --- one cluster for the endpoints ------------------------------------------------------------------------------
CLUSTER = [
    VMSpec("c-full", COMPUTE, "concurrent", "full"),  # slow enough that a request is still in flight when we look
    VMSpec("c-pv", COMPUTE, "concurrent", "pv"),
    VMSpec("kv0-a", ("kv",), "iterative", "trap", shard=0),
    VMSpec("kv0-b", ("kv",), "iterative", "pv", shard=0),
    VMSpec("kv1-a", ("kv",), "iterative", "hybrid", shard=1),
]


@pytest.fixture(scope="module")
def url():
    with BackgroundServer(config(CLUSTER)) as server:
        yield server.url


@pytest.fixture
def client(url: str):
    c = Client(url)
    yield c
    c.close()


def test_echo_returns_the_body_unchanged_over_one_kept_alive_connection(client: Client) -> None:
    rng = random.Random(7)
    for body in [b"", b"hello", bytes(range(256)) * 32, b"ERR service failed", rng.randbytes(3000)]:
        code, headers, data = client("POST", "/echo", body)
        assert (code, data) == (200, body)
        assert headers["x-popek-vm"] in ("c-full", "c-pv")
    assert client("POST", "/echo", b"x" * 8193)[0] == 413


def test_crc32_is_zlibs(client: Client) -> None:
    rng = random.Random(32)
    for body in [b"", b"123456789", bytes(range(256)), *(rng.randbytes(rng.randrange(8192)) for _ in range(8))]:
        code, _, data = client("POST", "/crc32", body)
        assert (code, data) == (200, b"%08x" % zlib.crc32(body))


def test_primes_counts_as_a_python_sieve_and_refuses_what_is_not_a_number_up_to_ten_million(client: Client) -> None:
    for n in [0, 1, 2, 3, 4, 100, 99_991, 1_000_003, 10_000_000]:
        code, headers, data = client("GET", f"/primes/{n}")
        assert (code, data) == (200, str(primes_below(n)).encode()), n
    for bad in ["-1", "10000001", "99999999999", "abc", "1e3", "%201", "+5", "", "%D9%A1%D9%A2"]:
        code, headers, _ = client("GET", f"/primes/{bad}")
        assert code in (400, 404) if bad == "" else code == 400, bad
        assert headers["x-popek-vm"] == "-"


def test_kv_answers_as_a_dict_with_keys_sharded_and_any_bytes_in_keys_and_values(client: Client) -> None:
    rng = random.Random(34)
    keys = [b"a", b"colour", b"k/with/slashes", b"\xff\xfe", b"sp ace", b"x" * 64, b"q?x=1#y"]
    truth: dict[bytes, bytes] = {}
    for _ in range(120):
        key, op = rng.choice(keys), rng.choice(["PUT", "GET", "GET", "DELETE"])
        path = "/kv/" + quote_from_bytes(key, safe="")
        if op == "PUT":
            value = rng.randbytes(rng.choice([0, 5, 4096]))
            truth[key] = value
            assert client("PUT", path, value)[0] == 204
        elif op == "GET":
            code, headers, data = client("GET", path)
            assert (code, data if code == 200 else None) == ((200, truth[key]) if key in truth else (404, None))
            shard = shard_of(key, [0, 1])
            assert headers["x-popek-vm"].startswith(f"kv{shard}-")
        else:
            assert client("DELETE", path)[0] == (204 if truth.pop(key, None) is not None else 404)
    for path, body, code in [("/kv/", b"", 400), ("/kv/" + "y" * 65, b"v", 400), ("/kv/%0A", b"v", 400),
                             ("/kv/big", b"v" * 4097, 413)]:  # fmt: skip
        assert client("PUT", path, body)[0] == code, path
    assert client("GET", "/kv/" + "y" * 65)[0] == 400


def test_session_counts_each_clients_visits_in_the_guest_its_cookie_names(url: str) -> None:
    alice, bob = Client(url), Client(url)
    code, headers, data = alice("GET", "/session")
    assert (code, data) == (200, b"1") and "popek-session=" in headers["set-cookie"]
    vm = headers["x-popek-vm"]
    for n in (2, 3, 4):
        code, headers, data = alice("GET", "/session")
        assert (code, data, headers["x-popek-vm"]) == (200, str(n).encode(), vm)
        assert "set-cookie" not in headers  # the cookie is set once
    assert bob("GET", "/session")[2] == b"1"
    assert Client(url)("GET", "/session", headers={"Cookie": "popek-session=garbage"})[2] == b"1"


def test_a_session_whose_vm_is_stopped_starts_over_on_another_with_a_new_cookie(url: str) -> None:
    alice = Client(url)
    alice("GET", "/session")
    vm = alice("GET", "/session")[1]["x-popek-vm"]
    assert admin(url, vm, "stop")[0] == 200
    try:
        code, headers, data = alice("GET", "/session")
        assert (code, data) == (200, b"1") and headers["x-popek-vm"] != vm and "set-cookie" in headers
        assert alice("GET", "/session")[2] == b"2"
    finally:
        assert admin(url, vm, "start")[0] == 200


def test_resolve_names_the_replicas_of_a_service_and_a_keys_shard(url: str) -> None:
    assert sorted(resolve(url, "primes")) == ["c-full", "c-pv"]
    assert sorted(resolve(url, "kv")) == ["kv0-a", "kv0-b", "kv1-a"]
    for key in (b"a", b"b", b"colour", b"\xff"):
        assert {vm[:3] for vm in resolve(url, "kv", key)} == {f"kv{shard_of(key, [0, 1])}"}
    code, headers, body = Client(url)("GET", "/resolve/nope")
    assert code == 404 and headers["x-popek-vm"] == "-"
    entry = json.loads(Client(url)("GET", "/resolve/kv?key=a")[2])["replicas"][0]
    assert {"vm", "monitor", "profile", "state"} <= set(entry)


def test_status_reports_every_vm_and_totals(client: Client) -> None:
    client("POST", "/echo", b"count me")
    code, headers, body = client("GET", "/status")
    st = json.loads(body)
    assert code == 200 and headers["x-popek-vm"] == "-" and st["policy"] == "content"
    assert [v["vm"] for v in st["vms"]] == [s.id for s in CLUSTER]
    for v in st["vms"]:
        assert {"services", "monitor", "profile", "design", "served", "exits", "outstanding", "state"} <= set(v)
    assert st["totals"]["served"] == sum(v["served"] for v in st["vms"]) > 0
    assert st["totals"]["exits"] > 0 and st["totals"]["running"] == len(CLUSTER)


def test_unknown_paths_and_wrong_methods_and_admin_without_the_token(client: Client, url: str) -> None:
    for method, path, code in [("GET", "/nope", 404), ("GET", "/echo", 405), ("POST", "/status", 405),
                               ("PATCH", "/kv/a", 405), ("POST", "/admin/vms/c-pv/reboot", 404)]:  # fmt: skip
        got, headers, _ = client(method, path)
        assert got == code and headers["x-popek-vm"] == "-", (method, path)
    assert admin(url, "c-pv", "stop", token=None)[0] == 401
    assert admin(url, "c-pv", "stop", token="wrong")[0] == 403
    assert admin(url, "no-such-vm", "stop")[0] == 404
    assert client("POST", "/echo", b"x", headers={"X-Request-Id": "bad id"})[0] == 400
    assert client("DELETE", "/requests/nobody")[0] == 404


def test_kv_replicas_serve_while_one_is_stopped_and_a_restarted_one_gets_every_write_back(url: str) -> None:
    c = Client(url)
    keys = [k for k in (b"r%d" % i for i in range(40)) if shard_of(k, [0, 1]) == 0][:6]
    for k in keys[:3]:
        assert c("PUT", f"/kv/{k.decode()}", b"before-" + k)[0] == 204
    assert admin(url, "kv0-a", "stop")[0] == 200
    assert resolve(url, "kv", keys[0]) == ["kv0-b"]
    for k in keys[3:]:  # writes while kv0-a is down
        code, headers, _ = c("PUT", f"/kv/{k.decode()}", b"during-" + k)
        assert (code, headers["x-popek-vm"]) == (204, "kv0-b")
    assert c("DELETE", f"/kv/{keys[0].decode()}")[0] == 204
    assert c("GET", f"/kv/{keys[1].decode()}")[:3:2] == (200, b"before-" + keys[1])
    code, _, body = admin(url, "kv0-a", "start")
    assert (code, json.loads(body)["state"]) == (200, "running")
    assert admin(url, "kv0-b", "stop")[0] == 200  # now only the restarted replica can answer
    try:
        for k in keys:
            code, headers, data = c("GET", f"/kv/{k.decode()}")
            assert headers["x-popek-vm"] == "kv0-a"
            want = None if k == keys[0] else (b"before-" if k in keys[:3] else b"during-") + k
            assert (code, data if code == 200 else None) == ((200, want) if want else (404, None)), k
    finally:
        assert admin(url, "kv0-b", "start")[0] == 200
    assert c("GET", f"/kv/{keys[4].decode()}")[2] == b"during-" + keys[4]


def test_a_service_with_no_running_replica_answers_503_until_one_starts(url: str) -> None:
    key = next(k for k in (b"s%d" % i for i in range(40)) if shard_of(k, [0, 1]) == 1)
    assert admin(url, "kv1-a", "stop")[0] == 200
    try:
        for method in ("GET", "PUT", "DELETE"):
            code, headers, _ = Client(url)(method, f"/kv/{key.decode()}", b"v" if method == "PUT" else None)
            assert (code, headers["x-popek-vm"]) == (503, "-")
    finally:
        assert admin(url, "kv1-a", "start")[0] == 200
    assert Client(url)("PUT", f"/kv/{key.decode()}", b"v")[0] == 204


def test_an_idempotent_request_on_a_vm_stopped_under_it_is_answered_by_another(url: str) -> None:
    for _ in range(3):  # the policy's turn moves with each request: make the slow VM next
        if resolve(url, "primes")[0] == "c-full":
            break
        Client(url)("GET", "/primes/1")
    first, other = "c-full", "c-pv"
    assert resolve(url, "primes")[0] == first
    with in_background(Client(url), "GET", "/primes/10000000") as out:
        wait_outstanding(url, first)
        assert admin(url, first, "stop")[0] == 200
    try:
        code, headers, data = out[0]
        assert (code, data, headers["x-popek-vm"]) == (200, b"664579", other)
        assert next(v for v in status(url)["vms"] if v["vm"] == first)["failovers"] >= 1
    finally:
        assert admin(url, first, "start")[0] == 200


def test_a_vm_process_killed_under_a_request_is_a_crash_the_others_answer_for(url: str) -> None:
    for _ in range(3):  # make the slow VM the policy's next choice, as above
        if resolve(url, "primes")[0] == "c-full":
            break
        Client(url)("GET", "/primes/1")
    first, other = "c-full", "c-pv"
    pid = next(v for v in status(url)["vms"] if v["vm"] == first)["pid"]
    assert pid not in (None, os.getpid())
    with in_background(Client(url), "GET", "/primes/10000000") as out:
        wait_outstanding(url, first)
        os.kill(pid, signal.SIGKILL)  # the VM's host process dies, as a QEMU killed by the OOM killer would
    try:
        code, headers, data = out[0]
        assert (code, data, headers["x-popek-vm"]) == (200, b"664579", other)
        vm = next(v for v in status(url)["vms"] if v["vm"] == first)
        assert vm["state"] == "crashed" and "process ended" in vm["reason"] and "pid" not in vm
        assert Client(url)("POST", "/echo", b"still here")[2] == b"still here"
    finally:
        assert admin(url, first, "start")[0] == 200
    again = next(v for v in status(url)["vms"] if v["vm"] == first)
    assert again["state"] == "running" and again["pid"] != pid
    assert Client(url)("GET", "/primes/100", headers={"X-Popek-VM": first})[2] == b"25"


def test_a_vm_boots_again_after_the_fork_server_itself_was_killed(url: str) -> None:
    def fork_servers() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                command = (stat.parent / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == os.getpid() and b"popek.vmm.serve.forks" in command:
                found.append(int(stat.parent.name))
        return found

    servers = fork_servers()
    assert len(servers) == 1
    os.kill(servers[0], signal.SIGKILL)
    assert admin(url, "c-pv", "stop")[0] == 200
    assert admin(url, "c-pv", "start")[0] == 200  # a new fork server forks it
    assert next(v for v in status(url)["vms"] if v["vm"] == "c-pv")["state"] == "running"
    assert Client(url)("POST", "/echo", b"back", headers={"X-Popek-VM": "c-pv"})[2] == b"back"
    assert len(fork_servers()) == 1 and fork_servers() != servers


def test_a_request_that_names_its_vm_is_served_there_and_not_failed_over(url: str) -> None:
    c = Client(url)
    for vm in ("c-full", "c-pv"):
        code, headers, data = c("GET", "/primes/100", headers={"X-Popek-VM": vm})
        assert (code, data, headers["x-popek-vm"]) == (200, b"25", vm)
    key = next(k for k in (b"p%d" % i for i in range(40)) if shard_of(k, [0, 1]) == 0)
    assert c("PUT", f"/kv/{key.decode()}", b"v", headers={"X-Popek-VM": "kv1-a"})[0] == 204  # writes: every replica
    assert c("GET", f"/kv/{key.decode()}", headers={"X-Popek-VM": "kv0-b"})[1]["x-popek-vm"] == "kv0-b"
    for vm, path in [("kv1-a", f"/kv/{key.decode()}"), ("kv0-a", "/primes/5"), ("nobody", "/primes/5")]:
        code, headers, _ = c("GET", path, headers={"X-Popek-VM": vm})
        assert (code, headers["x-popek-vm"]) == (421, "-"), vm
    assert c("GET", "/primes/5", headers={"X-Popek-VM": "bad id!"})[0] == 400
    assert admin(url, "c-pv", "stop")[0] == 200
    try:
        code, headers, body = c("POST", "/echo", b"x", headers={"X-Popek-VM": "c-pv"})
        assert (code, headers["x-popek-vm"]) == (503, "c-pv") and b"stopped" in body
    finally:
        assert admin(url, "c-pv", "start")[0] == 200


# --- policies -------------------------------------------------------------------------------------------------
# "a" comes first in every policy's order while nothing is in flight, and under full emulation a long request
# on it is still in flight when the test looks.
TWO = [VMSpec("a", COMPUTE, "concurrent", "full"), VMSpec("b", COMPUTE, "concurrent", "trap"),
       VMSpec("k-a", ("kv",), "iterative", "trap"), VMSpec("k-b", ("kv",), "iterative", "pv")]  # fmt: skip


def test_round_robin_takes_each_replica_in_turn() -> None:
    with BackgroundServer(config(TWO, policy="round-robin")) as s:
        c = Client(s.url)
        for _ in range(3):
            nxt = resolve(s.url, "echo")[0]
            assert c("POST", "/echo", b"x")[1]["x-popek-vm"] == nxt
            assert resolve(s.url, "echo")[0] != nxt
        vms = [c("GET", "/kv/k")[1]["x-popek-vm"] for _ in range(4)]
        assert vms[0] != vms[1] and vms[:2] == vms[2:]


def test_least_outstanding_avoids_the_vm_that_holds_a_request() -> None:
    with BackgroundServer(config(TWO, policy="least-outstanding")) as s:
        busy = resolve(s.url, "primes")[0]
        with in_background(Client(s.url), "GET", "/primes/10000000") as out:
            wait_outstanding(s.url, busy)
            assert resolve(s.url, "echo")[-1] == busy
            assert Client(s.url)("POST", "/echo", b"x")[1]["x-popek-vm"] != busy
        assert out[0][2] == b"664579"


def test_content_weighs_requests_by_their_work_and_reads_a_key_from_one_replica() -> None:
    with BackgroundServer(config(TWO, policy="content")) as s:
        busy = resolve(s.url, "primes")[0]
        with in_background(Client(s.url), "GET", "/primes/10000000") as out:
            wait_outstanding(s.url, busy)
            c = Client(s.url)
            for _ in range(3):  # small requests keep going to the idle VM
                assert c("POST", "/crc32", b"x" * 100)[1]["x-popek-vm"] != busy
        assert out[0][2] == b"664579"
        c = Client(s.url)
        for key in (b"p", b"q", b"r"):
            c("PUT", f"/kv/{key.decode()}", b"v")
            home = resolve(s.url, "kv", key)[0]
            assert {c("GET", f"/kv/{key.decode()}")[1]["x-popek-vm"] for _ in range(3)} == {home}


# --- cancel, timeouts, crashes -----------------------------------------------------------------------------------
def test_cancel_drops_a_queued_request_and_aborts_one_in_progress_through_the_urgent_channel() -> None:
    with BackgroundServer(config([VMSpec("it", ("primes",), "iterative", "full")])) as s:
        blocker, queued = Client(s.url), Client(s.url)
        with in_background(blocker, "GET", "/primes/10000000", None, {"X-Request-Id": "blocker"}) as first:
            wait_outstanding(s.url, "it", 1)
            with in_background(queued, "GET", "/primes/9999999", None, {"X-Request-Id": "queued-1"}) as second:
                wait_outstanding(s.url, "it", 2)
                code, headers, _ = Client(s.url)("DELETE", "/requests/queued-1")  # waiting behind the blocker
                assert (code, headers["x-popek-vm"]) == (200, "it")
            assert second[0][:3:2] == (503, b"cancelled")
            assert Client(s.url)("DELETE", "/requests/blocker")[0] == 200  # in progress: primes is cancellable
        assert first[0][:3:2] == (503, b"cancelled")
        assert Client(s.url)("DELETE", "/requests/blocker")[0] == 404  # nothing by that id any more
        assert Client(s.url)("GET", "/primes/1000")[2] == b"168"  # the guest serves on


def test_a_guest_that_never_answers_gives_504_and_one_that_halts_is_marked_crashed(tmp_path: Path) -> None:
    spin, halt = tmp_path / "spin.s", tmp_path / "halt.s"
    spin.write_text("loop:\n    j loop\n")
    halt.write_text("    halt\n")
    vms = [VMSpec("spin", ("echo",), str(spin), "trap"), VMSpec("dead", ("kv",), str(halt), "trap"),
           VMSpec("ok", ("crc32",), "iterative", "pv")]  # fmt: skip
    with BackgroundServer(config(vms, request_timeout=0.5, boot_steps=10_000)) as s:
        code, headers, _ = Client(s.url)("POST", "/echo", b"anyone?")
        assert (code, headers["x-popek-vm"]) == (504, "spin")
        dead = next(v for v in status(s.url)["vms"] if v["vm"] == "dead")
        assert dead["state"] == "crashed" and "halted" in dead["reason"]
        assert Client(s.url)("GET", "/kv/x")[0] == 503
        assert Client(s.url)("POST", "/crc32", b"a")[:3:2] == (200, b"%08x" % zlib.crc32(b"a"))


# --- malformed HTTP -----------------------------------------------------------------------------------------------
def raw(url: str, data: bytes, wait: float = 10) -> bytes:
    """Send raw bytes; return what the server answers before it closes (or ``wait`` seconds pass)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the server may close before it read everything
            pass
        out = b""
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                return out
            out += chunk
        return out + b"<open>"


def test_malformed_requests_get_400_413_408_or_a_closed_connection_and_others_are_still_served(url: str) -> None:
    assert raw(url, b"\x00\xff garbage \r\n\r\n").split(b" ", 2)[1] == b"400"
    huge_header = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (10 << 20) + b"\r\n\r\n"
    assert raw(url, huge_header)[:12] in (b"HTTP/1.0 400", b"HTTP/1.1 400", b"")
    slow = raw(url, b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: a")  # never finishes its headers
    assert not slow.endswith(b"<open>")  # closed by the idle timeout
    short_body = raw(url, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly this")
    assert short_body.startswith(b"HTTP/1.1 408") and not short_body.endswith(b"<open>")
    long_body = raw(url, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGARBAGE\r\n\r\n")
    # the bytes past Content-Length are no request: 400 (the parser may see them before "abc" is answered)
    assert long_body.split(b" ", 2)[1] in (b"200", b"400") and b" 400 " in long_body
    assert b"abcG" not in long_body.partition(b"\r\n\r\n")[2][:4] and not long_body.endswith(b"<open>")
    big = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n" + b"z" * (1 << 20)
    assert raw(url, big).startswith(b"HTTP/1.1 413")
    chunked_big = b"POST /crc32 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"2000\r\n" + b"z" * 8192
    assert raw(url, chunked_big + b"\r\n1\r\nz\r\n0\r\n\r\n").startswith(b"HTTP/1.1 413")
    assert Client(url)("GET", "/status")[0] == 200


def test_a_client_that_goes_away_in_the_middle_of_its_body_is_not_an_internal_error(url: str) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with serve_log() as records:
        for _ in range(5):
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b")
                time.sleep(0.05)
        assert Client(url)("GET", "/status")[0] == 200
        time.sleep(0.1)
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []


# --- the command ----------------------------------------------------------------------------------------------------
def test_the_serve_command_prints_its_cluster_serves_and_stops_on_sigterm_without_a_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.toml"
    cfg.write_text('policy = "round-robin"\nadmin_token = "t"\nidle_timeout = 1.0\n'
                   '[[vm]]\nid = "pv-1"\nservices = ["compute", "session"]\nmonitor = "pv"\n'
                   '[[vm]]\nid = "kv-1"\nservice = "kv"\nguest = "iterative"\n')  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "popek", "serve", "--port", "0", "--config", str(cfg)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        lines = []
        for line in proc.stdout:  # the banner ends with the address and the token
            lines.append(line.decode())
            if line.startswith(b"admin token"):
                break
        text = "".join(lines)
        assert "pv-1" in text and "kv-1" in text and "round-robin" in text
        url = next(w for w in text.split() if w.startswith("http://127.0.0.1:"))
        assert Client(url)("POST", "/crc32", b"123456789")[2] == b"cbf43926"
        assert Client(url)("PUT", "/kv/a", b"b")[0] == 204
        raw(url, b"\x16\x03\x01 not http at all\r\n\r\n", wait=3)
        raw(url, b"GET /status HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", wait=3)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err


@pytest.mark.parametrize(("vm_args", "policy"), [(["kv=iterative:nope"], None), (["kv.x=iterative"], None),
                                             (["frob=iterative"], None), (["kv"], None), (["kv=no-such-guest"], None),
                                             (["kv=iterative"], "fastest")])  # fmt: skip
def test_a_bad_cluster_is_a_configuration_error(vm_args: list[str], policy: str | None) -> None:
    with pytest.raises(ConfigError):
        build_config(None, vm_args, policy=policy)


def test_a_bad_configuration_file_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    for text in ('[[vm]]\nservice = "kv"\nmonitor = "nope"\n', "port = 'x'\n", "[[vm]\n", 'frob = 1\n',
                 '[[vm]]\nservice = "kv"\ncolour = "red"\n', "[[vm]]\nservices = [1]\n"):  # fmt: skip
        cfg = tmp_path / "bad.toml"
        cfg.write_text(text)
        with pytest.raises(ConfigError, match="bad.toml"):
            build_config(str(cfg))
    r = subprocess.run([sys.executable, "-m", "popek", "serve", "--config", str(cfg)], cwd=ROOT,
                       capture_output=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and r.stderr.startswith(b"popek: error:") and r.stderr.count(b"\n") == 1, r.stderr


def test_a_snapshot_of_a_serving_kv_vm_resumes_elsewhere_with_its_data(url: str) -> None:
    from popek.vmm import snapshot
    from popek.vmm.serve.services import SERVICES

    c = Client(url)
    key = next(k for k in (b"snap%d" % i for i in range(40)) if shard_of(k, [0, 1]) == 0)
    assert c("PUT", f"/kv/{key.decode()}", b"kept in the guest")[0] == 204
    code, headers, data = admin(url, "kv0-a", "snapshot")
    assert (code, headers["x-popek-vm"], admin(url, "kv0-a", "snapshot", token="wrong")[0]) == (200, "kv0-a", 403)
    host = snapshot.restore(data)  # the saved VM, now a host of its own in this process
    tag = host.send(0, SERVICES["kv"].port, b"GET " + key)
    host.run(10**9)
    assert [(m.tag, m.payload) for m in host.replies(0)] == [(tag, b"FOUND\nkept in the guest")]
