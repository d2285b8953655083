"""The client stub (popek/client.py) against live ``popek serve`` front-ends on loopback: its answers against
zlib, a sieve and a dict; one resolve for many calls; a replica stopped through the admin API under it, a
request in flight on a VM that is stopped, a VM that never answers, a front-end that goes away; cached GETs.
"""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

import pytest

from popek.client import Client, PopekError, Unavailable
from popek.vmm.serve import BackgroundServer, VMSpec
from popek.vmm.serve.services import shard_of
from tests.test_serve import CLUSTER, admin, config, primes_below, status, wait_outstanding


@pytest.fixture(scope="module")
def url():
    # c-full comes first in /resolve's order, and is slow enough that a request is still in flight when we look
    with BackgroundServer(config(CLUSTER)) as server:
        yield server.url


def test_the_stubs_answer_as_zlib_a_sieve_and_a_dict(url: str) -> None:
    with Client(url) as c:
        for data in (b"", b"hello", bytes(range(256)) * 8):
            assert c.echo(data) == data
            assert c.crc32(data) == zlib.crc32(data)
        for n in (0, 2, 1000, 99_991):
            assert c.primes(n) == primes_below(n)
        truth = {}
        for i, key in enumerate([b"a", "colour", b"\xff/slash", b"k" * 64]):
            c.put(key, b"v%d" % i)
            truth[key if isinstance(key, bytes) else key.encode()] = b"v%d" % i
        for key, value in truth.items():
            assert c.get(key) == value
        assert c.delete(b"a") is True and c.delete(b"a") is False and c.get(b"a") is None
        assert [c.session() for _ in range(3)] == [1, 2, 3]
        with pytest.raises(PopekError) as e:
            c.primes(10_000_001)
        assert e.value.status == 400


def test_the_client_resolves_once_and_sends_each_call_to_the_vm_it_resolved(url: str) -> None:
    with Client(url) as c:
        first = c.resolve("echo")[0].vm
        before = c.stats["resolves"]
        for i in range(20):
            assert c.echo(b"%d" % i) == b"%d" % i
            assert c.last.vm == first
        key = b"home"
        c.put(key, b"x")
        home = c.resolve("kv", key)
        assert {loc.shard for loc in home} == {shard_of(key, [0, 1])}
        for _ in range(5):
            assert c.get(key) == b"x" and c.last.vm == home[0].vm
        assert c.stats["resolves"] - before == 1  # kv once; echo was cached from the first resolve
        assert c.stats["retries"] == 0


def test_a_replica_stopped_through_the_admin_api_mid_way_is_left_for_another_and_no_call_fails(url: str) -> None:
    keys = [k for k in (b"m%d" % i for i in range(40)) if shard_of(k, [0, 1]) == 0][:4]
    with Client(url) as c:
        for k in keys:
            c.put(k, b"value-" + k)
        stopped = []
        try:
            for i in range(60):
                if i == 20:  # stop the VMs this client is using now
                    for vm in (c.resolve("primes")[0].vm, c.resolve("kv", keys[0])[0].vm):
                        assert admin(url, vm, "stop")[0] == 200
                        stopped.append(vm)
                assert c.primes(1000 + i) == primes_below(1000 + i)
                assert c.last.vm not in stopped
                k = keys[i % len(keys)]
                assert c.get(k) == b"value-" + k
                assert c.last.vm not in stopped
        finally:
            for vm in stopped:
                assert admin(url, vm, "start")[0] == 200
        assert c.stats["retries"] >= 1  # the first call after the stop found its VM down; the rest resolved anew


def test_a_request_in_flight_on_a_vm_that_is_stopped_is_answered_by_another_replica(url: str) -> None:
    with Client(url) as c:
        assert c.resolve("primes")[0].vm == "c-full"
        out: list = []
        t = threading.Thread(target=lambda: out.append((c.primes(10_000_000), c.last.vm)), daemon=True)
        t.start()
        try:
            wait_outstanding(url, "c-full")
            assert admin(url, "c-full", "stop")[0] == 200
            t.join(60)
        finally:
            assert admin(url, "c-full", "start")[0] == 200
        assert out == [(664579, "c-pv")]
        assert c.stats["retries"] == 1


def test_a_vm_that_does_not_answer_in_time_is_left_for_another(tmp_path: Path) -> None:
    spin = tmp_path / "spin.s"
    spin.write_text("loop:\n    j loop\n")
    vms = [VMSpec("spin", ("echo",), str(spin), "trap"), VMSpec("ok", ("echo",), "iterative", "pv")]
    with BackgroundServer(config(vms, request_timeout=5.0, boot_steps=10_000)) as s, Client(s.url, timeout=0.5) as c:
        assert c.resolve("echo")[0].vm == "spin"
        for i in range(5):
            assert c.echo(b"%d" % i) == b"%d" % i and c.last.vm == "ok"
        assert c.stats["retries"] == 1  # once: the slow VM is then avoided


def test_when_a_front_end_goes_away_the_client_goes_on_with_another() -> None:
    vms = [VMSpec("e", ("echo", "primes"), "iterative", "pv")]
    with BackgroundServer(config(vms)) as b:
        a = BackgroundServer(config(vms))
        a.__enter__()
        try:
            with Client([a.url, b.url]) as c:
                assert c.echo(b"x") == b"x" and c.last.endpoint == a.url
                a.__exit__()
                a = None
                for i in range(5):
                    assert c.primes(100 + i) == primes_below(100 + i) and c.last.endpoint == b.url
                assert c.stats["endpoint_failures"] >= 1
        finally:
            if a is not None:
                a.__exit__()
    with Client("http://127.0.0.1:9", timeout=2) as c, pytest.raises(Unavailable):
        c.echo(b"nobody")  # the discard port: nothing listens there


def test_cached_gets_come_from_the_cache_until_a_write_of_this_client_or_the_ttl(url: str) -> None:
    with Client(url, cache_ttl=60) as c, Client(url) as other:
        assert c.primes(5000) == 669
        sent = c.stats["requests"]
        assert c.primes(5000) == 669 and c.stats["requests"] == sent and c.stats["cache_hits"] == 1
        c.put(b"cached", b"1")
        assert c.get(b"cached") == b"1"
        other.put(b"cached", b"2")
        assert c.get(b"cached") == b"1"  # stale for at most cache_ttl: another client wrote it
        c.put(b"cached", b"3")  # a write of this client drops its cached value
        assert c.get(b"cached") == b"3"
    with Client(url, cache_ttl=0.2) as c, Client(url) as other:
        assert c.get(b"cached") == b"3"
        other.put(b"cached", b"4")
        threading.Event().wait(0.3)
        assert c.get(b"cached") == b"4"


def test_a_session_visit_is_not_repeated_when_its_vm_goes_down_under_it(url: str) -> None:
    with Client(url) as c:
        assert [c.session(), c.session()] == [1, 2]
        vm = c.last.vm
        assert admin(url, vm, "stop")[0] == 200
        try:
            assert c.session() == 1 and c.last.vm != vm  # the count lived in the guest that is gone
            assert c.session() == 2
        finally:
            assert admin(url, vm, "start")[0] == 200
    assert status(url)["totals"]["running"] == len(CLUSTER)
