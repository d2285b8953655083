"""Request serving under every monitor: requests/s and exits per request against the bare machine.

Each service of the server kernel (guests/servers/README.md) gets a batch of requests, sent at once through
the host's network API; the batch is timed from the first send until the guest waits for the card again. A
second table sets the two server designs side by side: short echo requests sent while a long primes request
is in flight, their latency in guest instructions and in wall time.

    python benchmarks/servers.py [--core jit] [--requests 200] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from popek.isa import state as S  # noqa: E402
from popek.isa.asm import assemble_file  # noqa: E402
from popek.vmm.host import GuestSpec, Host  # noqa: E402
from popek.vmm.monitors import STRATEGIES  # noqa: E402

SERVER = ROOT / "guests" / "servers" / "server.s"
MEM = 4 << 20
FOREVER = 10**12  # no step limit: a run ends when the server waits for its card
ECHO, CRC32, PRIMES, KV, SESSION = 7, 32, 33, 34, 35


def workloads(n: int) -> dict[str, list[tuple[int, bytes]]]:
    """The request batches: (port, payload) pairs, n per service."""
    return {
        "echo": [(ECHO, b"x" * 64)] * n,
        "crc32 4K": [(CRC32, bytes(range(256)) * 16)] * n,
        "primes 10^4": [(PRIMES, b"10000")] * n,
        "kv put/get": [
            (KV, b"PUT k%d\nvalue" % (i % 32)) if i % 2 == 0 else (KV, b"GET k%d" % (i % 32)) for i in range(n)
        ],
        "session": [(SESSION, b"client-%d" % (i % 8)) for i in range(n)],
    }


def boot(monitor: str, core: str, design: str) -> Host:
    """A host of one server guest, booted until it waits for its first request."""
    defines = {"CONCURRENT": 1} if design == "concurrent" else {}
    if monitor == "pv":
        defines["PARAVIRT"] = 1
    image = assemble_file(str(SERVER), defines=defines or None).image
    host = Host([GuestSpec("server", image, monitor, "classic", MEM)], core)
    result = host.run(FOREVER)[0]
    if "waiting" not in result.message:
        raise SystemExit(f"{monitor}: the server did not come up: {result.message}")
    return host


def serve_batch(host: Host, batch: list[tuple[int, bytes]]) -> tuple[float, int, int]:
    """Send a batch, run until the server waits again; return (seconds, guest steps, exits)."""
    vm = host.vms[0]
    steps0, exits0 = int(vm.vstate[S.STEPS]), sum(vm.stats.exits.values())
    t0 = time.perf_counter()
    tags = [host.send(0, port, payload) for port, payload in batch]
    host.run(FOREVER)
    secs = time.perf_counter() - t0
    replies = host.replies(0)
    if sorted(m.tag for m in replies) != sorted(tags):
        raise SystemExit("a request went unanswered")
    return secs, int(vm.vstate[S.STEPS]) - steps0, sum(vm.stats.exits.values()) - exits0


def throughput(core: str, n: int, repeat: int, monitors: list[str]) -> list[dict]:
    """Requests/s and exits per request, per service and monitor (iterative design)."""
    rows = []
    for service, batch in workloads(n).items():
        bare = None
        for monitor in monitors:
            host = boot(monitor, core, "iterative")
            serve_batch(host, batch[: max(1, n // 10)])  # warm up
            best = min((serve_batch(host, batch) for _ in range(repeat)), key=lambda r: r[0])
            secs, steps, exits = best
            bare = bare or secs
            rows.append({"service": service, "monitor": monitor, "requests": n, "seconds": secs,
                         "requests_per_s": n / secs, "vs_bare": secs / bare, "steps_per_request": steps / n,
                         "exits_per_request": exits / n})  # fmt: skip
    return rows


def latency(core: str, monitors: list[str], shorts: int = 20) -> list[dict]:
    """Short echo requests behind one long primes request: their latency in guest steps and wall time."""
    rows = []
    for design in ("iterative", "concurrent"):
        for monitor in monitors:
            host = boot(monitor, core, design)
            vm = host.vms[0]
            host.send(0, PRIMES, b"3000000")
            host.run(50_000)  # the long request is under way
            start, t0 = int(vm.vstate[S.STEPS]), time.perf_counter()
            tags = {host.send(0, ECHO, b"ping %d" % i): i for i in range(shorts)}
            waits, seen = [], set()
            while len(seen) < shorts:
                host.run(2_000)
                for m in host.replies(0):
                    if m.tag in tags and m.tag not in seen:
                        seen.add(m.tag)
                        waits.append((int(vm.vstate[S.STEPS]) - start, time.perf_counter() - t0))
                if vm.stopped and len(seen) < shorts and not vm.waiting:
                    raise SystemExit(f"{monitor}/{design}: the server stopped: {vm.error}")
            steps = [w[0] for w in waits]
            ms = 1000 * statistics.median(w[1] for w in waits)
            rows.append({"design": design, "monitor": monitor, "median_steps": statistics.median(steps),
                         "max_steps": max(steps), "median_ms": ms})  # fmt: skip
    return rows


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--core", default="jit")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--monitors", default=",".join(STRATEGIES), help="comma-separated, bare first")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "servers.json"))
    args = p.parse_args()
    monitors = args.monitors.split(",")
    out = Console()
    rows = throughput(args.core, args.requests, args.repeat, monitors)
    t = Table(title=f"requests served, {args.requests} per batch, iterative server, {args.core} core")
    for col in ("service", "monitor", "requests/s", "x bare time", "guest steps/request", "exits/request"):
        t.add_column(col, justify="left" if col in ("service", "monitor") else "right")
    for r in rows:
        t.add_row(r["service"], r["monitor"], f"{r['requests_per_s']:,.0f}", f"{r['vs_bare']:.2f}",
                  f"{r['steps_per_request']:,.0f}", f"{r['exits_per_request']:.2f}")  # fmt: skip
    out.print(t)
    lat = latency(args.core, [m for m in ("bare", "trap", "pv") if m in monitors])
    t = Table(title="20 echo requests sent while primes(3,000,000) runs: their latency")
    for col in ("design", "monitor", "median guest steps", "max guest steps", "median ms"):
        t.add_column(col, justify="left" if col in ("design", "monitor") else "right")
    for r in lat:
        t.add_row(
            r["design"], r["monitor"], f"{r['median_steps']:,.0f}", f"{r['max_steps']:,}", f"{r['median_ms']:.2f}"
        )
    out.print(t)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"throughput": rows, "latency": lat}, indent=1))
    out.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
