"""What each monitor costs: wall time against the bare machine, guest MIPS and exits per 1,000 instructions.

    python benchmarks/monitors.py [--core jit] [--repeat 3] [--json FILE] [--markdown FILE]

Every guest runs on the bare machine and under every monitor, in one process, after a round that compiles and
warms up; then ``--repeat`` rounds run each monitor once in turn, and each figure is its best round. Ratios
taken in one run are the numbers to quote. ``--sweep`` runs the system-call workload with writes of several
sizes under bare, full and trap instead: how the order of full emulation and trap-and-emulate depends on the
density of exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from popek.isa.asm import assemble_file  # noqa: E402
from popek.vmm.host import GuestSpec, Host  # noqa: E402
from popek.vmm.monitors import STRATEGIES  # noqa: E402

# (name, source, defines): the kernel, a CPU-bound guest, system calls whose kernel does a real kernel's work per
# call (registers saved and restored, arguments checked, a write's buffer copied; ~300 instructions a call),
# the null system call (a handful of kernel instructions a call: the per-exit nanobenchmark) and a timer-heavy
# guest, each long enough (2-25 ms on the bare machine) that a host's set-up and a monitor's first translations
# do not decide the ratio (the sieve ten times, 2.4 ms, measured trap, rewrite and pv 1.08-1.37x bare; a hundred
# times, 0.96-1.03x).
WORKLOADS = [
    ("kernel", "guests/kernel/kernel.s", {"ROUNDS": 200}),
    ("cpu (primes)", "guests/programs/primes.s", {"REPEAT": 100}),
    ("syscalls", "guests/programs/syswrite.s", {"COUNT": 5000}),
    ("null syscalls", "guests/programs/syscalls.s", {"COUNT": 50000}),
    ("timer", "guests/programs/ticks.s", {"PERIOD": 100, "WORK": 500000}),
]
# pv runs a workload's paravirtual build where it has one (the same work, its kernel ported to hypercalls).
PV_BUILDS = {"kernel": ("guests/kernel/kernel.s", {"ROUNDS": 200, "PARAVIRT": 1}),
             "syscalls": ("guests/programs/syswrite.s", {"COUNT": 5000, "PARAVIRT": 1}),
             "null syscalls": ("guests/programs/syscalls.s", {"COUNT": 50000, "PARAVIRT": 1})}  # fmt: skip
# The sweep (--sweep): the system-call workload with writes of these many bytes, i.e. from dense exits to sparse.
SWEEP = [0, 16, 64, 256, 1024]


def run_once(image: bytes, monitor: str, core: str, profile: str) -> tuple[float, float, object]:
    """Run one guest to halt; return (wall seconds, this thread's CPU seconds, result)."""
    host = Host([GuestSpec("guest", image, monitor, profile)], core)
    t0, c0 = time.perf_counter(), time.thread_time()
    result = host.run()[0]
    secs, cpu = time.perf_counter() - t0, time.thread_time() - c0
    if not result.halted:
        raise SystemExit(f"{monitor}: the guest did not halt: {result.message}")
    return secs, cpu, result


def measure(core: str, repeat: int, profile: str, monitors: list[str]) -> list[dict]:
    """Measure every workload under every monitor; return one row per (workload, monitor)."""
    rows = []
    for name, path, defines in WORKLOADS:
        image = assemble_file(str(ROOT / path), defines=defines or None).image
        pv_path, pv_defines = PV_BUILDS.get(name, (path, defines))
        pv_image = assemble_file(str(ROOT / pv_path), defines=pv_defines or None).image
        order = ["bare", *monitors]
        wall: dict[str, float] = {}
        cpu: dict[str, float] = {}
        results: dict[str, object] = {}
        for rnd in range(repeat + 1):  # round 0 compiles and warms up; then every monitor once per round, so
            for monitor in order:  # that the shared machine's drift moves them all alike; best round kept
                secs, cpu_secs, results[monitor] = run_once(pv_image if monitor == "pv" else image, monitor, core,
                                                            profile)  # fmt: skip
                if rnd:
                    wall[monitor] = min(wall.get(monitor, secs), secs)
                    cpu[monitor] = min(cpu.get(monitor, cpu_secs), cpu_secs)
        for monitor in order:
            secs, result = wall[monitor], results[monitor]
            stats = result.stats
            # full emulation never runs the guest on the core: every instruction is the monitor's, no exits
            exits = None if monitor == "full" else stats["total_exits"]
            rows.append({"workload": name, "monitor": monitor, "seconds": secs, "vs_bare": secs / wall["bare"],
                         "cpu_vs_bare": cpu[monitor] / cpu["bare"], "guest_steps": result.steps,
                         "mips": result.steps / secs / 1e6, "exits": exits,
                         "exits_per_1000": None if exits is None else 1000 * exits / result.steps})  # fmt: skip
    return rows


def sweep(core: str, repeat: int, profile: str) -> list[dict]:
    """The system-call workload under bare, full and trap for each write size in SWEEP: where the order turns."""
    rows = []
    calls = 2 * 2000 + 1
    for length in SWEEP:
        image = assemble_file(str(ROOT / "guests/programs/syswrite.s"), defines={"COUNT": 2000, "LEN": length}).image
        wall: dict[str, float] = {}
        for rnd in range(repeat + 1):
            for monitor in ("bare", "full", "trap"):
                secs, _, result = run_once(image, monitor, core, profile)
                if rnd:
                    wall[monitor] = min(wall.get(monitor, secs), secs)
                if monitor == "trap":
                    exits, steps = result.stats["total_exits"], result.steps
        rows.append({"write bytes": length, "instructions / call": steps / calls, "exits / call": exits / calls,
                     "exits / 1000 instr": 1000 * exits / steps, "full x bare": wall["full"] / wall["bare"],
                     "trap x bare": wall["trap"] / wall["bare"]})  # fmt: skip
    return rows


def _per_1000(row: dict) -> str:
    return "n/a" if row["exits_per_1000"] is None else f"{row['exits_per_1000']:.2f}"


def table(rows: list[dict]) -> Table:
    """The results as a rich table."""
    t = Table(title="monitors against the bare machine")
    for col in ("workload", "monitor", "wall x bare", "cpu x bare", "guest MIPS", "exits / 1000 instr", "exits",
                "guest steps"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("workload", "monitor") else "right")
    for r in rows:
        t.add_row(r["workload"], r["monitor"], f"{r['vs_bare']:.2f}", f"{r['cpu_vs_bare']:.2f}", f"{r['mips']:.2f}",
                  _per_1000(r), "n/a" if r["exits"] is None else str(r["exits"]), str(r["guest_steps"]))  # fmt: skip
    return t


def markdown(rows: list[dict], command: str) -> str:
    """The results as a markdown table, with the command that made them."""
    lines = [f"Made by `{command}`.", "",
             "| workload | monitor | wall × bare | CPU × bare | guest MIPS | exits / 1000 instr | exits |",
             "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        exits = "n/a" if r["exits"] is None else r["exits"]
        lines.append(f"| {r['workload']} | {r['monitor']} | {r['vs_bare']:.2f} | {r['cpu_vs_bare']:.2f} | "
                     f"{r['mips']:.2f} | {_per_1000(r)} | {exits} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--core", default="jit")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--profile", default="classic")
    p.add_argument("--monitors", default=",".join(STRATEGIES[1:]), help="comma-separated (default: all)")
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--markdown", help="write a markdown table here")
    p.add_argument("--sweep", action="store_true", help="only the system calls with writes of several sizes")
    args = p.parse_args()
    if args.sweep:
        rows = sweep(args.core, args.repeat, args.profile)
        print("| " + " | ".join(rows[0]) + " |\n|" + "---:|" * len(rows[0]))
        for r in rows:
            print("| " + " | ".join(f"{x:.2f}" if isinstance(x, float) else str(x) for x in r.values()) + " |")
        return
    rows = measure(args.core, args.repeat, args.profile, args.monitors.split(","))
    Console().print(table(rows))
    command = "python benchmarks/monitors.py " + " ".join(sys.argv[1:])
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, command.strip()))


if __name__ == "__main__":
    main()
