"""What each monitor costs: wall time against the bare machine, guest MIPS and exits per 1,000 instructions.

    python benchmarks/monitors.py [--core jit] [--repeat 3] [--json FILE] [--markdown FILE]

Every guest runs on the bare machine and under every monitor, in one process, after the JIT core has been
compiled; each figure is the best of ``--repeat`` runs. Ratios taken in one run are the numbers to quote.
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

# (name, source, defines): the kernel, a CPU-bound, a system-call-heavy and a timer-heavy guest, each long enough
# (2-5 ms on the bare machine) that a host's set-up and a monitor's first translations do not decide the ratio.
WORKLOADS = [
    ("kernel", "guests/kernel/kernel.s", {"ROUNDS": 200}),
    ("cpu (primes)", "guests/programs/primes.s", {"REPEAT": 10}),
    ("syscalls", "guests/programs/syscalls.s", {"COUNT": 50000}),
    ("timer", "guests/programs/ticks.s", {"PERIOD": 100, "WORK": 500000}),
]
# pv runs a workload's paravirtual build where it has one (the same work, its kernel ported to hypercalls).
PV_BUILDS = {"kernel": ("guests/kernel/kernel.s", {"ROUNDS": 200, "PARAVIRT": 1}),
             "syscalls": ("guests/programs/syscalls.s", {"COUNT": 50000, "PARAVIRT": 1})}  # fmt: skip


def run_once(image: bytes, monitor: str, core: str, profile: str) -> tuple[float, object]:
    """Run one guest to halt; return (seconds, result)."""
    host = Host([GuestSpec("guest", image, monitor, profile)], core)
    t0 = time.perf_counter()
    result = host.run()[0]
    secs = time.perf_counter() - t0
    if not result.halted:
        raise SystemExit(f"{monitor}: the guest did not halt: {result.message}")
    return secs, result


def measure(core: str, repeat: int, profile: str, monitors: list[str]) -> list[dict]:
    """Measure every workload under every monitor; return one row per (workload, monitor)."""
    rows = []
    for name, path, defines in WORKLOADS:
        image = assemble_file(str(ROOT / path), defines=defines or None).image
        pv_path, pv_defines = PV_BUILDS.get(name, (path, defines))
        pv_image = assemble_file(str(ROOT / pv_path), defines=pv_defines or None).image
        run_once(image, "bare", core, profile)  # compile and warm up
        bare_secs = None
        for monitor in ["bare", *monitors]:
            guest = pv_image if monitor == "pv" else image
            secs, result = min((run_once(guest, monitor, core, profile) for _ in range(repeat)), key=lambda x: x[0])
            bare_secs = bare_secs or secs
            stats = result.stats
            # full emulation never runs the guest on the core: every instruction is the monitor's, no exits
            exits = None if monitor == "full" else stats["total_exits"]
            rows.append({"workload": name, "monitor": monitor, "seconds": secs, "vs_bare": secs / bare_secs,
                         "guest_steps": result.steps, "mips": result.steps / secs / 1e6, "exits": exits,
                         "exits_per_1000": None if exits is None else 1000 * exits / result.steps})  # fmt: skip
    return rows


def _per_1000(row: dict) -> str:
    return "n/a" if row["exits_per_1000"] is None else f"{row['exits_per_1000']:.2f}"


def table(rows: list[dict]) -> Table:
    """The results as a rich table."""
    t = Table(title="monitors against the bare machine")
    for col in ("workload", "monitor", "wall x bare", "guest MIPS", "exits / 1000 instr", "exits", "guest steps"):
        t.add_column(col, justify="left" if col in ("workload", "monitor") else "right")
    for r in rows:
        t.add_row(r["workload"], r["monitor"], f"{r['vs_bare']:.2f}", f"{r['mips']:.2f}", _per_1000(r),
                  "n/a" if r["exits"] is None else str(r["exits"]), str(r["guest_steps"]))  # fmt: skip
    return t


def markdown(rows: list[dict], command: str) -> str:
    """The results as a markdown table, with the command that made them."""
    lines = [f"Made by `{command}`.", "",
             "| workload | monitor | wall × bare | guest MIPS | exits / 1000 instr | exits |",
             "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        exits = "n/a" if r["exits"] is None else r["exits"]
        lines.append(f"| {r['workload']} | {r['monitor']} | {r['vs_bare']:.2f} | {r['mips']:.2f} | "
                     f"{_per_1000(r)} | {exits} |")  # fmt: skip
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
    args = p.parse_args()
    rows = measure(args.core, args.repeat, args.profile, args.monitors.split(","))
    Console().print(table(rows))
    command = "python benchmarks/monitors.py " + " ".join(sys.argv[1:])
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, command.strip()))


if __name__ == "__main__":
    main()
