"""HTTP serving under load: requests/s and p50/p99 latency per service × monitor × policy, with wrk.

Each cluster (two compute VMs of the concurrent design and two kv replicas, all under one monitor) runs as a
``popek serve`` process on a free loopback port, and wrk drives it for a few seconds per service with
benchmarks/serve.lua, which checks every answer. In the same run, the same wrk load on a plain aiohttp echo
handler (the cost of HTTP alone, without the guests) and on the bare machine (the cost of the monitors).
A second table puts the two server designs side by side: short echo requests while a long primes request is
always in flight, their p50 and p99.

    python benchmarks/serve.py [--duration 3] [--monitors bare,pv,trap] [--services echo,crc32,primes,kvget]
                               [--policies content,round-robin,least-outstanding] [--json FILE] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from popek.vmm.serve.load import LOOPBACK, ServeProcess, fetch, free_port, missing, wrk  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "serve.lua"
CONNECTIONS = 32
LONG = "/primes/3000000"  # about 7.5 million guest instructions: a long request


def plain_echo(port: int) -> None:
    """Serve POST /echo with aiohttp alone (the baseline; runs in a process of its own)."""
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/octet-stream")

    app = web.Application()
    app.add_routes([web.post("/echo", echo), web.get("/status", lambda r: web.json_response({}))])
    web.run_app(app, host=LOOPBACK, port=port, access_log=None, print=None)


def measure_plain(duration: float) -> dict:
    """wrk on the plain aiohttp echo handler."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--plain-echo", str(port)], start_new_session=True)
    try:
        url = f"http://{LOOPBACK}:{port}"
        end = time.monotonic() + 30
        while True:
            try:
                if fetch(url + "/status", timeout=2)[0] == 200:
                    break
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError("the plain aiohttp server did not start") from None
                time.sleep(0.1)
        return wrk(url, SCRIPT, "echo", duration=duration, connections=CONNECTIONS)
    finally:
        proc.terminate()
        proc.wait(30)


def cluster(monitor: str, design: str = "concurrent") -> list[str]:
    """Two compute VMs and two kv replicas under ``monitor``."""
    return [f"compute={design}:{monitor}", f"compute={design}:{monitor}", f"kv=iterative:{monitor}",
            f"kv=iterative:{monitor}"]  # fmt: skip


def row(service: str, monitor: str, policy: str, r: dict) -> dict:
    """One line of the table."""
    lat = r["latency_ms"]
    bad = r["non2xx"] + r["bad_body"] + r["lost"]
    return {"service": service, "monitor": monitor, "policy": policy, "rps": round(r["rps"], 1),
            "p50_ms": round(lat["p50"], 2), "p99_ms": round(lat["p99"], 2), "requests": r["requests"],
            "bad": bad}  # fmt: skip


def measure_matrix(monitors: list[str], policies: list[str], services: list[str], duration: float,
                   log: Console) -> list[dict]:  # fmt: skip
    """Every service × monitor × policy."""
    rows = []
    for monitor in monitors:
        for policy in policies:
            with ServeProcess(cluster(monitor), "--policy", policy) as s:
                fetch(s.url + "/kv/load", "PUT", b"load-value")
                for service in services:
                    r = wrk(s.url, SCRIPT, service, duration=duration, connections=CONNECTIONS)
                    rows.append(row(service, monitor, policy, r))
                    lat = r["latency_ms"]
                    log.print(f"  {service:7} {monitor:8} {policy:18} {r['rps']:9.0f} req/s  "
                              f"p50 {lat['p50']:6.2f} ms  p99 {lat['p99']:7.2f} ms")  # fmt: skip
    return rows


def measure_designs(duration: float, log: Console) -> list[dict]:
    """Short echo requests while a long primes request is always in flight, iterative against concurrent."""
    rows = []
    for design in ("iterative", "concurrent"):
        with ServeProcess([f"compute={design}:pv"]) as s:
            stop = threading.Event()
            longs = []

            def keep_one_long(url: str = s.url, stop: threading.Event = stop, longs: list = longs) -> None:
                while not stop.is_set():
                    t = time.perf_counter()
                    fetch(url + LONG, timeout=120)
                    longs.append(time.perf_counter() - t)

            thread = threading.Thread(target=keep_one_long, daemon=True)
            thread.start()
            time.sleep(0.2)
            try:
                r = wrk(s.url, SCRIPT, "echo", duration=duration, connections=8)
            finally:
                stop.set()
                thread.join(120)
            rows.append({**row("echo", "pv", "content", r), "design": design, "long_requests": len(longs),
                         "long_s": round(statistics.median(longs), 3) if longs else None})  # fmt: skip
            log.print(f"  {design:10} echo with {LONG} in flight: p50 {r['latency_ms']['p50']:.2f} ms, "
                      f"p99 {r['latency_ms']['p99']:.2f} ms, {r['rps']:.0f} req/s")  # fmt: skip
    return rows


def markdown(result: dict) -> str:
    """The tables for docs/benchmarks.md."""
    out = [
        "| service | monitor | policy | req/s | p50 ms | p99 ms | × bare | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    bare = {(r["service"], r["policy"]): r["rps"] for r in result["rows"] if r["monitor"] == "bare"}
    for r in result["rows"]:
        ratio = r["rps"] / bare[(r["service"], r["policy"])] if (r["service"], r["policy"]) in bare else None
        out.append(f"| {r['service']} | {r['monitor']} | {r['policy']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
                   f"{r['p99_ms']:.2f} | {'' if ratio is None else f'{ratio:.2f}'} | {r['bad']} |")  # fmt: skip
    p = result["plain"]
    out += ["", f"Plain aiohttp echo, same wrk load: **{p['rps']:,.0f} req/s** (p50 {p['p50_ms']:.2f} ms, p99 "
            f"{p['p99_ms']:.2f} ms)."]  # fmt: skip
    out += ["", "| design | echo req/s | echo p50 ms | echo p99 ms | long requests done |", "|---|---:|---:|---:|---:|"]
    for r in result["designs"]:
        out.append(
            f"| {r['design']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['long_requests']} |"
        )
    return "\n".join(out)


def main() -> None:
    """Run the benchmark; print the tables; write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of wrk per measurement")
    ap.add_argument("--monitors", default="bare,pv,trap")
    ap.add_argument("--policies", default="content,round-robin,least-outstanding")
    ap.add_argument("--services", default="echo,crc32,primes,kvget")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    ap.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    ap.add_argument("--plain-echo", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain_echo:
        plain_echo(args.plain_echo)
        return
    absent = missing("wrk")
    if absent:
        raise SystemExit(
            f"benchmarks/serve.py needs {', '.join(absent)} (Debian: apt-get install wrk); nothing measured"
        )
    log = Console(stderr=True)
    log.print("plain aiohttp echo")
    plain = [measure_plain(args.duration)]
    log.print("service × monitor × policy")
    rows = measure_matrix(args.monitors.split(","), args.policies.split(","), args.services.split(","),
                          args.duration, log)  # fmt: skip
    plain.append(measure_plain(args.duration))  # again at the end: the machine may have changed meanwhile
    log.print("designs")
    designs = measure_designs(args.duration, log)
    best_plain = max(plain, key=lambda r: r["rps"])
    result = {"duration_s": args.duration, "connections": CONNECTIONS, "plain": row("echo", "-", "-", best_plain),
              "plain_runs": [round(r["rps"], 1) for r in plain], "rows": rows, "designs": designs}  # fmt: skip
    echo = [r for r in rows if r["service"] == "echo"]
    result["echo_vs_plain"] = round(max(r["rps"] for r in echo) / best_plain["rps"], 3) if echo else None
    pv = {(r["service"], r["policy"]): r["rps"] for r in rows if r["monitor"] == "pv"}
    bare = {(r["service"], r["policy"]): r["rps"] for r in rows if r["monitor"] == "bare"}
    result["pv_vs_bare"] = {f"{s} {p}": round(pv[(s, p)] / bare[(s, p)], 3) for s, p in pv if (s, p) in bare}

    table = Table(title=f"popek serve under wrk ({CONNECTIONS} connections, {args.duration:g} s each)")
    for col in ("service", "monitor", "policy", "req/s", "p50 ms", "p99 ms", "× bare", "errors"):
        table.add_column(col, justify="right" if col not in ("service", "monitor", "policy") else "left")
    for r in rows:
        b = bare.get((r["service"], r["policy"]))
        table.add_row(r["service"], r["monitor"], r["policy"], f"{r['rps']:,.0f}", f"{r['p50_ms']:.2f}",
                      f"{r['p99_ms']:.2f}", f"{r['rps'] / b:.2f}" if b else "", str(r["bad"]))  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"plain aiohttp echo: {best_plain['rps']:,.0f} req/s (runs: {result['plain_runs']}); best echo "
                  f"through popek serve: {result['echo_vs_plain']:.0%} of it")  # fmt: skip
    console.print(f"pv / bare: {result['pv_vs_bare']}")
    for r in designs:
        console.print(
            f"{r['design']:10}: echo p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms with {LONG} in flight"
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        print(markdown(result))


if __name__ == "__main__":
    main()
