"""Type 1 against type 2: the native hypervisor (P32 code on the bare machine) against the hosted `trap` monitor.

    python benchmarks/vmm_native.py [--core jit] [--repeat 5] [--json benchmarks/results/vmm_native.json]

The same two guest kernels (guests/kernel/kernel.s and its CRASH build, 80 KiB each) run on the bare machine one
after the other, under the hosted `trap` monitor (two VMs of one host), under the native monitor (vmm.s), under
the native monitor nested in itself, and under the native monitor hosted by `trap`. For each: wall time (best of
--repeat), the guests' instructions, the exits (traps into the monitor that serves the guests: the compiled exit
loop and Python for `trap`, the P32 monitor for the native one), exits per 1,000 guest instructions, and the cost
of one world switch counted in guest instructions: the native monitor's own instructions per exit, exact from
the machine's count, and for every row the extra wall time over the bare machine per exit, divided by the bare
machine's time per guest instruction.
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

from popek import guests  # noqa: E402
from popek.isa.asm import Program, assemble_file  # noqa: E402
from popek.vmm import native  # noqa: E402
from popek.vmm.host import GuestSpec, Host  # noqa: E402

KERNEL = guests.path("kernel/kernel.s")
SINGLE = native.default_program()
KERNEL_MEM = SINGLE.equates["KERNEL_MEM"]
VMM_MEM = SINGLE.equates["VMM_END"]  # the inner monitor's memory: its own 64 KiB and the two kernels' regions


def timed(fn: object, repeat: int) -> tuple[float, object]:
    """The fastest of ``repeat`` calls of ``fn`` (which returns a result): (seconds, result)."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        runs.append((time.perf_counter() - t0, result))
    return min(runs, key=lambda r: r[0])


def hosted(images: list[bytes], monitor: str, core: str) -> dict:
    """The kernels as VMs of one host under ``monitor`` (``bare``: each VM its own bare machine)."""
    results = Host([GuestSpec(f"k{n}", i, monitor, None, KERNEL_MEM) for n, i in enumerate(images)], core).run()
    return {"insns": sum(r.stats["cycle"] for r in results), "exits": sum(r.stats["total_exits"] for r in results),
            "consoles": [r.console for r in results], "real": None}  # fmt: skip


def on_native(program: Program, path: tuple[str, ...], monitor: str, core: str) -> dict:
    """The native monitor (and what it hosts) on the bare machine or under ``monitor``."""
    run = native.run(program, monitor=monitor, core=core)
    if not run.result.halted:
        raise SystemExit(f"the native monitor did not halt: {run.result.message}")
    exits = sum(c.exits for c in run.cpus)
    if path:  # nested: vm1 is the inner monitor; its guests' exits into it count too
        exits += sum(c.exits for c in run.inner_cpus(SINGLE, SINGLE.equates["G1_BASE"]))
    insns = sum(_kernel_cycles(run, path))
    return {"insns": insns, "exits": exits, "real": run.result.steps,
            "consoles": [run.console(*path, f"vm{n}") for n in (1, 2)],
            "hosted_exits": run.result.stats["total_exits"]}  # fmt: skip


def _kernel_cycles(run: native.NativeRun, path: tuple[str, ...]) -> list[int]:
    """The two kernels' instructions, read from the monitor's closing lines (the innermost one's, if nested)."""
    text = run.console(*path, "vmm")
    return [int(line.split(" after ")[1].split()[0]) for line in text.splitlines() if " halted " in line]


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--core", default="jit")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/vmm_native.json"))
    args = p.parse_args()
    images = [assemble_file(KERNEL).image, assemble_file(KERNEL, defines={"CRASH": 1}).image]
    single = SINGLE
    nested = native.build([native.GuestImage(guests.path("vmm/vmm.s"), VMM_MEM)])
    rows = [
        ("bare machine", lambda: hosted(images, "bare", args.core)),
        ("trap (type 2)", lambda: hosted(images, "trap", args.core)),
        ("native (type 1)", lambda: on_native(single, (), "bare", args.core)),
        ("native in native", lambda: on_native(nested, ("vm1",), "bare", args.core)),
        ("native under trap", lambda: on_native(single, (), "trap", args.core)),
    ]
    hosted(images, "trap", args.core)  # compile and warm up every core path once, outside the timings
    on_native(single, (), "bare", args.core)
    bare_secs, bare = timed(rows[0][1], args.repeat)
    per_insn = bare_secs / bare["insns"]
    timings = {rows[0][0]: (bare_secs, bare)}
    table = Table(title=f"Type 1 against type 2: two guest kernels ({args.core} core, best of {args.repeat})")
    for col in ("configuration", "wall ms", "× bare", "guest instr", "exits", "exits/1000", "monitor instr/exit",
                "exit cost (guest instr)"):  # fmt: skip
        table.add_column(col, justify="left" if col == "configuration" else "right")
    out = []
    for name, fn in rows:
        secs, r = timings.get(name) or timed(fn, args.repeat)
        if r["consoles"] != bare["consoles"]:
            raise SystemExit(f"{name}: a guest's console differs from its bare run")
        exits = r["exits"]
        own = (r["real"] - r["insns"]) / exits if r["real"] and exits else None
        switch = (secs - bare_secs) / exits / per_insn if exits else None
        row = {"configuration": name, "seconds": secs, "vs_bare": secs / bare_secs, "guest_instructions": r["insns"],
               "exits": exits, "exits_per_1000": 1000 * exits / r["insns"], "monitor_instructions_per_exit": own,
               "switch_cost_guest_instructions": switch, "real_instructions": r["real"]}  # fmt: skip
        out.append(row)
        table.add_row(name, f"{1000 * secs:.2f}", f"{secs / bare_secs:.1f}", str(r["insns"]), str(exits),
                      f"{row['exits_per_1000']:.2f}", f"{own:.0f}" if own else "-",
                      f"{switch:.0f}" if switch else "-")  # fmt: skip
    Console().print(table)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"core": args.core, "repeat": args.repeat, "rows": out}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
