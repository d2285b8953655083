"""What a VM exit costs: the round trip of one exit under trap-and-emulate, above the bare machine, by cause.

    python benchmarks/exits.py [--repeat 7] [--cores jit,c] [--monitors trap,rewrite] [--json FILE]

Four small guests each make one kind of exit in a loop: ``out`` (the kernel prints: a PRIV exit whose emulation
writes the console), ``mfcr`` (the kernel reads a control register: a PRIV exit), ``syscall`` (a user task's
system call, reflected into a kernel whose handler makes four PRIV exits of its own: ``mfcr badaddr``,
``mfcr epc``, ``mtcr epc``, ``iret``) and ``timer`` (the virtual timer expires, the interrupt is injected and the
handler re-arms it with two PRIV exits: ``mtcr timer`` and ``iret``). Each runs on the bare machine and under
``trap``, with the exits handled in the compiled loop next to the core and, for comparison, in Python
(``compiled_exits = False``). An exit's round trip is (wall under trap - wall on bare) / exits, the median of
``--repeat`` runs; a cause's own cost is derived from it (a SYSCALL reflection: the syscall loop's time less four
PRIV exits at the ``mfcr`` loop's price; a timer expiry with its injection: the timer loop's less two).

Under ``rewrite`` the loops that exit at every iteration are timed too: ``out`` (a callout the compiled loop
performs on the emulator), ``syscall`` (the reflected system call and one ``iret`` callout) and ``timer`` (the
expiry with its injection, and ``mtcr timer`` and ``iret`` performed in one callout exit).

Also the cost model the monitors' benchmarks rest on: ns per guest instruction on each core (a CPU-bound guest on
the bare machine) and the emulator's MIPS (the same guest under full emulation).
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

from popek.cores import CoreUnavailable, get_core  # noqa: E402
from popek.isa.asm import assemble, assemble_file  # noqa: E402
from popek.vmm.host import GuestSpec, Host  # noqa: E402

LOOPS = {
    "out": """
            li      r1, {n}
            li      r2, 'x'
    1:      out     0, r2
            addi    r1, r1, -1
            bnez    r1, 1b
            li      r1, 0
            halt
    """,
    "mfcr": """
            li      r1, {n}
    1:      mfcr    r2, scratch
            addi    r1, r1, -1
            bnez    r1, 1b
            halt
    """,
    "syscall": """
            la      r4, handler
            mtcr    ivt, r4
            la      r4, user
            mtcr    epc, r4
            li      r4, 0x10000
            mtcr    ebound, r4              # the whole memory
            mtcr    epsw, zero              # user mode, interrupts off
            iret
    handler:
            mfcr    r4, badaddr
            bnez    r4, done
            mfcr    r4, epc
            addi    r4, r4, 4
            mtcr    epc, r4
            iret
    done:   li      r1, 0
            halt
    user:   li      r1, {n}
    1:      syscall 0
            addi    r1, r1, -1
            bnez    r1, 1b
            syscall 1
    """,
    "timer": """
            la      r4, handler
            mtcr    ivt, r4
            li      r5, 50                  # a tick every 50 instructions
            mtcr    timer, r5
            li      r4, 3                   # supervisor mode, interrupts on
            mtcr    psw, r4
            li      r1, {n}
    1:      bnez    r1, 1b                  # wait for n ticks, the handler counts them
            halt
            halt
    handler:
            addi    r1, r1, -1
            mtcr    timer, r5
            iret
    """,
}
# exits of each kind per loop iteration beyond the loop's PRIV exits (what the derived costs subtract)
PRIV_PER = {"syscall": 4, "timer": 2}
CPU = ("guests/programs/primes.s", {"REPEAT": 10})


def run(image: bytes, monitor: str, core: str, compiled: bool = True) -> tuple[float, dict, int]:
    """Run a guest to halt; return (seconds in Host.run, statistics, guest steps)."""
    host = Host([GuestSpec("g", image, monitor, "classic", 1 << 16)], core)
    if hasattr(host.monitors[0], "compiled_exits"):
        host.monitors[0].compiled_exits = compiled
    t0 = time.perf_counter()
    result = host.run()[0]
    secs = time.perf_counter() - t0
    if not result.halted:
        raise SystemExit(f"{monitor}: the guest did not halt: {result.message}")
    return secs, result.stats, result.steps


# the loops that exit at every iteration under rewrite (its twin reads scratch on the core: no exit at all)
REWRITE_LOOPS = ("out", "syscall", "timer")


def exit_costs(core: str, repeat: int, n: int, monitor: str = "trap") -> list[dict]:
    """The µs per exit of every loop under ``monitor``, compiled and Python exit paths, above bare."""
    rows = []
    for name, source in LOOPS.items():
        if monitor == "rewrite" and name not in REWRITE_LOOPS:
            continue
        for compiled in (True, False):
            count = n if compiled else max(n // 20, 1000)  # the Python path is slow: fewer exits do
            image = assemble(source.format(n=count)).image
            run(image, monitor, core, compiled)  # warm up (compiles on first use)
            per_exit, stats = [], {}
            for _ in range(repeat):
                bare, _, _ = run(image, "bare", core)
                wall, stats, _ = run(image, monitor, core, compiled)
                per_exit.append((wall - bare) / stats["total_exits"] * 1e6)
            rows.append({"core": core, "monitor": monitor, "loop": name,
                         "exit path": "compiled" if compiled else "python", "exits": stats["exits"],
                         "total_exits": stats["total_exits"], "us_per_exit": statistics.median(per_exit)})  # fmt: skip
    return rows


def derived(rows: list[dict]) -> list[dict]:
    """Per cause: PRIV (the mfcr loop), SYSCALL and TIMER (their loops less their PRIV exits), per exit path."""
    out = []
    for (core, path), group in _groups([r for r in rows if r["monitor"] == "trap"]).items():
        by = {r["loop"]: r for r in group}
        priv = by["mfcr"]["us_per_exit"]
        out.append({"core": core, "exit path": path, "cause": "PRIV (mfcr emulated)", "us": priv})
        out.append({"core": core, "exit path": path, "cause": "PRIV (out emulated, console)",
                    "us": by["out"]["us_per_exit"]})  # fmt: skip
        for loop, cause in (("syscall", "SYSCALL (reflected)"), ("timer", "TIMER (expiry + injection)")):
            r = by[loop]
            per_iter = r["us_per_exit"] * r["total_exits"] / r["exits"][loop.upper()]
            out.append({"core": core, "exit path": path, "cause": cause, "us": per_iter - PRIV_PER[loop] * priv})
    return out


def _groups(rows: list[dict]) -> dict:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["core"], r["exit path"]), []).append(r)
    return groups


def cost_model(core: str, repeat: int) -> dict:
    """ns per guest instruction on the core (bare) and the emulator's MIPS (full), on a CPU-bound guest."""
    image = assemble_file(str(ROOT / CPU[0]), defines=CPU[1]).image
    run(image, "bare", core)
    run(image, "full", core)
    bare = min(run(image, "bare", core) for _ in range(repeat))
    full = min(run(image, "full", core) for _ in range(repeat))
    return {"core": core, "ns_per_instruction": bare[0] / bare[2] * 1e9, "emulator_mips": full[2] / full[0] / 1e6}


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--cores", default="jit,c")
    p.add_argument("--exits", type=int, default=200_000, help="exits per loop on the compiled path")
    p.add_argument("--monitors", default="trap,rewrite", help="comma-separated: trap (by cause too), rewrite")
    p.add_argument("--json", help="write the results as JSON here")
    args = p.parse_args()
    rows, models = [], []
    for core in args.cores.split(","):
        try:
            get_core(core)
        except CoreUnavailable as e:
            print(f"skipping {core}: {e}")
            continue
        for monitor in args.monitors.split(","):
            rows += exit_costs(core, args.repeat, args.exits, monitor)
        models.append(cost_model(core, args.repeat))
    console = Console()
    t = Table(title="exit round trip, above bare (median)")
    for col in ("core", "monitor", "loop", "exit path", "exits", "µs / exit"):
        t.add_column(col, justify="right" if col == "µs / exit" else "left")
    for r in rows:
        mix = ", ".join(f"{k} {v}" for k, v in sorted(r["exits"].items()))
        t.add_row(r["core"], r["monitor"], r["loop"], r["exit path"], mix, f"{r['us_per_exit']:.3f}")
    console.print(t)
    causes = derived(rows)
    t = Table(title="µs per exit, by cause")
    for col in ("core", "exit path", "cause", "µs"):
        t.add_column(col, justify="right" if col == "µs" else "left")
    for r in causes:
        t.add_row(r["core"], r["exit path"], r["cause"], f"{r['us']:.3f}")
    console.print(t)
    t = Table(title="cost model (primes ×10)")
    for col in ("core", "ns / guest instruction (bare)", "emulator MIPS (full)"):
        t.add_column(col, justify="left" if col == "core" else "right")
    for m in models:
        t.add_row(m["core"], f"{m['ns_per_instruction']:.2f}", f"{m['emulator_mips']:.1f}")
    console.print(t)
    if args.json:
        command = "python benchmarks/exits.py " + " ".join(sys.argv[1:])
        Path(args.json).write_text(json.dumps({"command": command, "loops": rows, "causes": causes,
                                               "cost_model": models}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
