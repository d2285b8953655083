"""Live migration between two ``popek serve`` processes, under load (docs/serve.md, "Live migration")."""

from __future__ import annotations

import json
import os
import threading

import pytest

from popek.cli import main
from popek.client import Client, PopekError
from popek.vmm.serve.load import fetch, get_json, serve_processes

# 10,000 requests (about 7 s); POPEK_MIGRATION_REQUESTS=100000 is the full size (README, Tests).
REQUESTS = int(os.environ.get("POPEK_MIGRATION_REQUESTS", "10000"))
CLIENTS = 4


def _migrate(source: str, vm: str, target: str, token: str = "load-token") -> tuple[int, bytes]:
    status, _, body = fetch(f"{source}/admin/vms/{vm}/migrate", "POST", json.dumps({"to": target}).encode(),
                            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})  # fmt: skip
    return status, body


def test_a_kv_shard_moves_between_two_processes_under_load_and_no_request_is_lost() -> None:
    with serve_processes(["kv.0=iterative"], ["compute=iterative"]) as (src, dst):
        errors: list[str] = []
        done = [0] * CLIENTS
        halfway = threading.Event()

        def client(n: int) -> None:
            mine = {f"c{n}-{i}": b"" for i in range(8)}  # each client writes only its own keys: it knows the truth
            with Client(src.url, timeout=30) as c:
                for i in range(REQUESTS // CLIENTS):
                    key = f"c{n}-{i % 8}"
                    try:
                        if i % 4 == 0:
                            mine[key] = b"%d-%d" % (n, i)
                            c.put(key, mine[key])
                        else:
                            got = c.get(key)
                            if got != (mine[key] or None):
                                errors.append(f"{key}: {got!r}, expected {mine[key]!r}")
                    except PopekError as e:
                        errors.append(f"{key}: {e.status} {e.message}")
                    done[n] += 1
                    if sum(done) >= REQUESTS // 4:
                        halfway.set()

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        assert halfway.wait(120), "the clients did not get going"
        status, body = _migrate(src.url, "kv0-1", dst.url)
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads), "a client never finished"
        assert status == 200, body
        assert errors == [], errors[:5]
        assert sum(done) == REQUESTS // CLIENTS * CLIENTS
        report = json.loads(body)
        assert report["rounds"] and report["stop_reason"]
        (entry,) = get_json(f"{src.url}/resolve/kv")["replicas"]
        assert entry["vm"] == "kv0-1" and entry["location"] == dst.url
        target = {v["vm"]: v for v in get_json(f"{dst.url}/status")["vms"]}
        assert target["kv0-1"]["state"] == "running" and target["kv0-1"]["served"] > 0  # forwarded there
        with Client(dst.url) as c:  # the data is on the target: asked there directly
            assert all(c.get(f"c{n}-0") is not None for n in range(CLIENTS))


def test_a_migration_wants_the_admin_token_and_a_target_that_answers(capsys: pytest.CaptureFixture) -> None:
    with serve_processes(["kv.0=iterative"], ["compute=iterative"]) as (src, dst):
        assert _migrate(src.url, "kv0-1", dst.url, "wrong")[0] == 403
        assert _migrate(src.url, "nope", dst.url)[0] == 404
        status, body = _migrate(src.url, "kv0-1", "http://127.0.0.1:1")
        assert status == 502, body
        with Client(src.url) as c:  # a failed move leaves the VM serving where it was
            c.put("k", b"v")
            assert c.get("k") == b"v"
        assert _migrate(src.url, "kv0-1", dst.url)[0] == 200
        assert _migrate(src.url, "kv0-1", dst.url)[0] == 409  # it is not here any more
        # and back, by the command: the source's replica serves it again
        assert main(["migrate", "kv0-1", "--from", dst.url, "--to", src.url, "--admin-token", "load-token"]) == 0
        assert capsys.readouterr().out.startswith(f"moved kv0-1 to {src.url}")
        assert "location" not in get_json(f"{src.url}/resolve/kv")["replicas"][0]
        with Client(src.url) as c:
            assert c.get("k") == b"v"
