"""HTTP serving under load: requests/s and p50/p99 latency per service × monitor × policy, with wrk.

Every server runs at once, each in a process of its own on a free loopback port: a plain aiohttp echo handler
(the cost of HTTP alone, without the guests) and one ``popek serve`` cluster per monitor × policy (two compute
VMs of the concurrent design and two kv replicas, all under that monitor; an idle cluster costs no processor
time). After a second of warm-up per server and service, the measurements are interleaved in rounds, service by
service: the plain echo and every cluster's echo, then every cluster's crc32, and so on, the order within a
service turned by one place each round. So the figures a ratio compares (echo through the stack against the
plain echo, pv against bare) are taken seconds apart, and a machine shared with other work slows them alike;
each ratio is taken within one round, and the report is its median over the rounds and its spread (lowest,
highest). Each measurement also takes the processor time (user and system, from /proc) that the front-end's
process and the cluster's VM processes used, per request answered.
benchmarks/serve.lua checks every answer. A second table puts the two server designs side by side: short echo
requests while a long primes request is always in flight, their p50 and p99.

    python benchmarks/serve.py [--rounds 5] [--duration 2] [--monitors bare,pv,trap]
                               [--services echo,crc32,primes,kvget] [--policies content] [--json FILE] [--markdown]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from popek.vmm.serve.load import LOOPBACK, ServeProcess, fetch, free_port, missing, wrk  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "serve.lua"
CONNECTIONS = 32  # wrk -c; with -t2 (two threads), the same for every measurement
THREADS = 2
LONG = "/primes/3000000"  # about 7.5 million guest instructions: a long request


def plain_echo(port: int) -> None:
    """Serve POST /echo with aiohttp alone (the baseline; runs in a process of its own)."""
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/octet-stream")

    app = web.Application()
    app.add_routes([web.post("/echo", echo), web.get("/status", lambda r: web.json_response({}))])
    web.run_app(app, host=LOOPBACK, port=port, access_log=None, print=None)


def cpu_seconds(pids: list[int]) -> float:
    """User and system processor time these processes have used so far (Linux's /proc; 0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime and stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def vm_pids(url: str) -> list[int]:
    """The process ids of a cluster's VMs (``/status``)."""
    return [v["pid"] for v in json.loads(fetch(url + "/status")[2])["vms"] if v.get("pid")]


@contextlib.contextmanager
def plain_server() -> Iterator[tuple[str, int]]:
    """The plain aiohttp echo in a process of its own; yields its URL and process id."""
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
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def cluster(monitor: str, design: str = "concurrent") -> list[str]:
    """Two compute VMs and two kv replicas under ``monitor``."""
    return [f"compute={design}:{monitor}", f"compute={design}:{monitor}", f"kv=iterative:{monitor}",
            f"kv=iterative:{monitor}"]  # fmt: skip


def row(service: str, monitor: str, policy: str, runs: list[dict]) -> dict:
    """One line of the table: the median of the rounds, and their spread."""
    rps = [r["rps"] for r in runs]
    return {"service": service, "monitor": monitor, "policy": policy, "rps": round(statistics.median(rps), 1),
            "rps_runs": [round(x, 1) for x in rps],
            "p50_ms": round(statistics.median(r["latency_ms"]["p50"] for r in runs), 2),
            "p99_ms": round(statistics.median(r["latency_ms"]["p99"] for r in runs), 2),
            "requests": sum(r["requests"] for r in runs),
            **{k: round(statistics.median(r[k] for r in runs), 1) for k in ("frontend_us", "vms_us") if k in runs[0]},
            "bad": sum(r["non2xx"] + r["bad_body"] + r["lost"] for r in runs)}  # fmt: skip


def spread(values: list[float]) -> dict:
    """Median, lowest and highest of per-round ratios."""
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "rounds": [round(v, 3) for v in values]}  # fmt: skip


def measure_rounds(monitors: list[str], policies: list[str], services: list[str], rounds: int, duration: float,
                   log: Console) -> tuple[dict, list[dict], dict]:  # fmt: skip
    """Every server at once; ``rounds`` interleaved passes over plain echo and every service × cluster."""
    runs: dict[tuple[str, str, str], list[dict]] = {}
    with contextlib.ExitStack() as stack:
        plain_url, plain_pid = stack.enter_context(plain_server())
        servers = {("-", "-"): plain_url}
        pids = {("-", "-"): ([plain_pid], [])}  # (front-end, VMs) of each server, for processor time per request
        clusters = [(m, p) for m in monitors for p in policies]
        starting = {mp: ServeProcess(cluster(mp[0]), "--policy", mp[1]) for mp in clusters}
        threads = [threading.Thread(target=s.start, daemon=True) for s in starting.values()]  # boot in parallel
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for mp, s in starting.items():
            stack.callback(s.stop)
            if not s.url:
                raise RuntimeError(f"popek serve {mp} did not start: {s.stderr()[-2000:]}")
            fetch(s.url + "/kv/load", "PUT", b"load-value")
            servers[mp] = s.url
            pids[mp] = ([s.proc.pid], vm_pids(s.url))
        # Service by service, so that the figures a ratio compares are taken seconds apart; within a service the
        # order turns by one place each round, so no server is always measured first.
        groups = [[(svc, m, p) for m, p in clusters] for svc in services]
        if "echo" in services:
            groups[services.index("echo")].insert(0, ("echo", "-", "-"))
        # A warm-up second per server and service, not counted: the cores translate the guests' hot code.
        for service, monitor, policy in (job for group in groups for job in group):
            wrk(servers[(monitor, policy)], SCRIPT, service, duration=1, threads=THREADS, connections=CONNECTIONS)
        for n in range(rounds):
            for group in groups:
                turn = n % len(group)
                for service, monitor, policy in group[turn:] + group[:turn]:
                    front, vms = pids[(monitor, policy)]
                    before = cpu_seconds(front), cpu_seconds(vms)
                    r = wrk(servers[(monitor, policy)], SCRIPT, service, duration=duration, threads=THREADS,
                            connections=CONNECTIONS)  # fmt: skip
                    n = max(r["requests"], 1)
                    r["frontend_us"] = (cpu_seconds(front) - before[0]) / n * 1e6
                    r["vms_us"] = (cpu_seconds(vms) - before[1]) / n * 1e6
                    runs.setdefault((service, monitor, policy), []).append(r)
            log.print(
                f"  round {n + 1}: plain echo {runs[('echo', '-', '-')][-1]['rps']:,.0f} req/s; "
                + ", ".join(
                    f"{m}/{p} echo {runs[('echo', m, p)][-1]['rps']:,.0f}" for m, p in clusters if "echo" in services
                )
            )
    plain = row("echo", "-", "-", runs.pop(("echo", "-", "-")))
    rows = [row(svc, m, p, runs[(svc, m, p)]) for m, p in clusters for svc in services]
    ratios = {}
    per_round = {k: [r["rps"] for r in v] for k, v in runs.items()}

    def within_rounds(a: list[float], b: list[float]) -> dict:
        return spread([x / y for x, y in zip(a, b, strict=True)])

    for m, p in clusters:
        if "echo" in services:
            ratios[f"echo {m} {p} / plain"] = within_rounds(per_round[("echo", m, p)], plain["rps_runs"])
        if m != "bare" and "bare" in monitors:
            for svc in services:
                ratios[f"{svc} {m} / bare {p}"] = within_rounds(per_round[(svc, m, p)], per_round[(svc, "bare", p)])
    return plain, rows, ratios


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
            rows.append({**row("echo", "pv", "content", [r]), "design": design, "long_requests": len(longs),
                         "long_s": round(statistics.median(longs), 3) if longs else None})  # fmt: skip
            log.print(f"  {design:10} echo with {LONG} in flight: p50 {r['latency_ms']['p50']:.2f} ms, "
                      f"p99 {r['latency_ms']['p99']:.2f} ms, {r['rps']:.0f} req/s")  # fmt: skip
    return rows


def _spread(r: dict) -> str:
    return f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})"


def markdown(result: dict) -> str:
    """The tables for docs/benchmarks.md."""
    out = [
        "| service | monitor | policy | req/s (median) | lowest–highest | p50 ms | p99 ms | × plain echo | × bare "
        "| front-end µs/req | VMs µs/req | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    p, ratios = result["plain"], result["ratios"]
    out.append(f"| echo | plain aiohttp | - | {p['rps']:,.0f} | {min(p['rps_runs']):,.0f}–{max(p['rps_runs']):,.0f} | "
               f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} | 1.00 | | {p['frontend_us']:.0f} | | {p['bad']} |")  # fmt: skip
    for r in result["rows"]:
        s, m, pol = r["service"], r["monitor"], r["policy"]
        vs_plain = ratios.get(f"echo {m} {pol} / plain") if s == "echo" else None
        vs_bare = ratios.get(f"{s} {m} / bare {pol}")
        out.append(f"| {s} | {m} | {pol} | {r['rps']:,.0f} | {min(r['rps_runs']):,.0f}–{max(r['rps_runs']):,.0f} | "
                   f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {_spread(vs_plain) if vs_plain else ''} | "
                   f"{_spread(vs_bare) if vs_bare else ''} | {r['frontend_us']:.0f} | {r['vms_us']:.0f} | "
                   f"{r['bad']} |")  # fmt: skip
    out += ["", "| design | echo req/s | echo p50 ms | echo p99 ms | long requests done |", "|---|---:|---:|---:|---:|"]
    for r in result["designs"]:
        out.append(
            f"| {r['design']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['long_requests']} |"
        )
    return "\n".join(out)


def main() -> None:
    """Run the benchmark; print the tables; write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved passes over every server and service")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds of wrk per measurement")
    ap.add_argument("--monitors", default="bare,pv,trap")
    ap.add_argument("--policies", default="content")
    ap.add_argument("--services", default="echo,crc32,primes,kvget")
    ap.add_argument("--no-designs", action="store_true", help="leave out the second table")
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
    log.print(f"{args.rounds} rounds of wrk -t{THREADS} -c{CONNECTIONS} for {args.duration:g} s per server and service")
    load_before = os.getloadavg()[0]  # the machine's other work: it moves every figure of the run
    plain, rows, ratios = measure_rounds(args.monitors.split(","), args.policies.split(","),
                                         args.services.split(","), args.rounds, args.duration, log)  # fmt: skip
    designs = [] if args.no_designs else measure_designs(3.0, log)
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result = {"rounds": args.rounds, "duration_s": args.duration, "threads": THREADS, "connections": CONNECTIONS,
              "cpus": os.cpu_count(), "load_average": load,
              "plain": plain, "rows": rows, "ratios": ratios, "designs": designs}  # fmt: skip

    table = Table(title=f"popek serve under wrk -t{THREADS} -c{CONNECTIONS}: median of {args.rounds} interleaved "
                  f"rounds of {args.duration:g} s")  # fmt: skip
    for col in ("service", "monitor", "policy", "req/s", "lowest–highest", "p50 ms", "p99 ms", "front-end µs/req",
                "VMs µs/req", "errors"):  # fmt: skip
        table.add_column(col, justify="right" if col not in ("service", "monitor", "policy") else "left")
    for r in [plain, *rows]:
        table.add_row(r["service"], r["monitor"] if r["monitor"] != "-" else "plain aiohttp", r["policy"],
                      f"{r['rps']:,.0f}", f"{min(r['rps_runs']):,.0f}–{max(r['rps_runs']):,.0f}",
                      f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['frontend_us']:.0f}",
                      f"{r['vms_us']:.0f}" if r["monitor"] != "-" else "", str(r["bad"]))  # fmt: skip
    console = Console(width=140)
    console.print(table)
    console.print(f"{os.cpu_count()} cpus; load average {load[0]} before the run, {load[1]} after")
    for name, r in ratios.items():
        console.print(f"{name:28} median {r['median']:.2f}  (lowest {r['min']:.2f}, highest {r['max']:.2f})")
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
