"""Live migration by pre-copy between two hosts in one process: downtime, total time, pages per round, bytes.

    python benchmarks/migration.py [--core jit] [--monitor trap] [--steps-per-round 200000] [--json FILE]
                                   [--no-processes]

Three guests, each migrated once while it runs (``popek.vmm.migration.migrate``; between two rounds the guest
runs ``--steps-per-round`` steps on the source, as it would while a round crosses the network):

- ``idle server``: the server kernel (guests/servers/server.s, 16 MiB) booted and waiting for requests;
- ``busy server``: the same with 400 requests (crc32, primes, kv, echo) queued when the migration starts — every
  reply must come back, half of them from the target;
- ``writer``: a guest that writes one word in each 4 KiB page of an 8 MiB region, over and over (the worst case:
  its dirty set never shrinks, so the source stops it after the third round with the whole region dirty).

Downtime is from the guest's stop on the source to its state loaded on the target (the final round of pages
with CPU and devices: capture, encode, checksum, decode, restore); total time from the first round to then.
Dirty pages are found by comparing guest memory with the copy the source sent (no help from the cores).

Then the same between two ``popek serve`` processes on loopback (``POST /admin/vms/<id>/migrate``; skipped with
``--no-processes``): a kv VM (iterative, 4 MiB, trap on the JIT core) holding 32 keys moved from one process to
the other while idle, back (the first move of a pair of processes pays a one-time warm-up), and over again
while 4 clients (popek/client.py) send kv reads and writes to the process it leaves. There the downtime is
from the hold of new requests (the guest first answers what it has) to the held requests forwarded to the
target: the last copy, its HTTP transfer and the restore included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from popek.isa.asm import assemble, assemble_file  # noqa: E402
from popek.vmm.host import GuestSpec, Host  # noqa: E402
from popek.vmm.migration import migrate  # noqa: E402

MEM = 16 << 20
BIG = 10**10
WRITER = """
        li      r2, 0x100000        # the region: 8 MiB from 1 MiB on
        li      r3, 0x900000
loop:   addi    r4, r2, 0
page:   st      r5, 0(r4)           # one word per page
        li      r6, 4096
        add     r4, r4, r6
        blt     r4, r3, page
        addi    r5, r5, 1
        jal     r0, loop
"""
REQUESTS = [(32, b"x" * 3000), (33, b"5000"), (34, b"PUT k\\nv"), (7, b"hello " * 50)]


def server(monitor: str, core: str) -> Host:
    """The server kernel booted until it waits for its first request."""
    image = assemble_file(str(ROOT / "guests/servers/server.s"), defines={"PARAVIRT": 1} if monitor == "pv" else None)
    host = Host([GuestSpec("server", image.image, monitor, "classic", MEM)], core)
    host.run(BIG)
    return host


def case(name: str, monitor: str, core: str, steps: int) -> dict:
    """Migrate one guest; return its report with what was checked."""
    checked = ""
    if name == "writer":
        host = Host([GuestSpec("writer", assemble(WRITER).image, monitor, "classic", MEM)], core)
        host.run(2_000_000)
    else:
        host = server(monitor, core)
    tags = []
    if name == "busy server":
        tags = [host.send(0, port, payload.replace(b"\\n", b"\n")) for port, payload in REQUESTS * 100]
    before = {m.tag for m in host.replies(0)}
    new, report = migrate(host, core=core, steps_per_round=steps)
    if tags:
        answered = {m.tag for m in host.replies(0)} | before
        new.run(BIG)
        answered |= {m.tag for m in new.replies(0)}
        missing = set(tags) - answered
        checked = "all replies" if not missing else f"{len(missing)} replies missing"
    else:
        new.run(100_000)
        checked = new.vms[0].error or "runs on"
    out = report.as_dict()
    return {"guest": name, "monitor": monitor, "core": core, "checked": checked, **out}


def between_processes() -> list[dict]:
    """Move a kv VM between two ``popek serve`` processes, idle and then under client load."""
    import threading

    from popek.client import Client, PopekError
    from popek.vmm.serve.load import serve_processes
    from popek.vmm.serve.migrate import request_move

    rows = []
    with serve_processes(["kv.0=iterative"], ["compute=iterative"]) as (a, b):
        with Client(a.url) as c:
            for i in range(32):
                c.put(f"key{i}", b"value %d " % i * 50)
        report = request_move(a.url, "kv0-1", b.url, a.admin_token)
        rows.append({"guest": "kv VM, idle, first move (2 processes)", "checked": "moved", **report})
        report = request_move(b.url, "kv0-1", a.url, a.admin_token)
        rows.append({"guest": "kv VM, idle, back (2 processes)", "checked": "moved", **report})
        stop, counts, errors = threading.Event(), [0] * 4, []

        def load(n: int) -> None:
            with Client(a.url, timeout=30) as c:
                i = 0
                while not stop.is_set():
                    key = f"key{i % 32}"
                    try:
                        if i % 4 == 0:
                            c.put(f"c{n}", b"%d" % i)
                        elif c.get(key) != b"value %d " % (i % 32) * 50:
                            errors.append(key)
                    except PopekError as e:
                        errors.append(f"{e.status}")
                    counts[n] += 1
                    i += 1

        threads = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(4)]
        for t in threads:
            t.start()
        while sum(counts) < 2000:
            stop.wait(0.05)
        report = request_move(a.url, "kv0-1", b.url, a.admin_token)
        while sum(counts) < 4000 + report["total_ms"]:
            stop.wait(0.05)
        stop.set()
        for t in threads:
            t.join()
        checked = f"{sum(counts):,} requests, {len(errors)} wrong or lost"
        rows.append({"guest": "kv VM, 4 clients (2 processes)", "checked": checked, **report})
    return rows


def main() -> int:
    """Run the cases and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--core", default="jit")
    ap.add_argument("--monitor", default="trap")
    ap.add_argument("--steps-per-round", type=int, default=200_000)
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/migration.json"))
    ap.add_argument("--no-processes", action="store_true", help="skip the case between two popek serve processes")
    args = ap.parse_args()
    rows = [case(n, args.monitor, args.core, args.steps_per_round) for n in ("idle server", "busy server", "writer")]
    if not args.no_processes:
        rows += between_processes()
    table = Table(title=f"live migration, {args.monitor} on {args.core}, {MEM >> 20} MiB guests")
    for col in (
        "guest",
        "rounds",
        "pages per round",
        "final pages",
        "bytes",
        "downtime ms",
        "total ms",
        "stop",
        "check",
    ):
        table.add_column(col, justify="left" if col in ("guest", "pages per round", "stop", "check") else "right")
    for r in rows:
        per_round = ", ".join(str(x["pages"]) for x in r["rounds"])
        table.add_row(r["guest"], str(len(r["rounds"])), per_round, str(r["final_pages"]), f"{r['bytes']:,}",
                      f"{r['downtime_ms']:.1f}", f"{r['total_ms']:.1f}", r["stop_reason"], r["checked"])  # fmt: skip
    Console(width=160).print(table)
    Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
