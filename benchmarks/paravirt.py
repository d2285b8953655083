"""What the processor's paravirtual support buys: pv against pv without it, on the PV kernel and PV syscalls.

    python benchmarks/paravirt.py [--core jit] [--repeat 5]

Each PV guest runs under ``pv`` (system calls, timer interrupts, HC_IRET and HC_SET_TIMER in the core) and
under ``pv-noassist`` (every one of them an exit to the monitor; the HAL batches the timer with the return
in one HC_MULTICALL), against the bare machine running the native build of the same guest. The last column
is the monitor's cost per exit: the extra wall time of pv-noassist over pv divided by its extra exits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from popek.isa.asm import assemble_file  # noqa: E402
from popek.vmm.host import GuestSpec, Host  # noqa: E402

# (name, native build, PV build)
GUESTS = [
    ("kernel", ("guests/kernel/kernel.s", {}), ("guests/kernel/kernel.s", {"PARAVIRT": 1})),
    ("syscalls", ("guests/programs/syscalls.s", {"COUNT": 5000}),
     ("guests/programs/syscalls.s", {"COUNT": 5000, "PARAVIRT": 1})),
]  # fmt: skip


def best(fn: object, repeat: int) -> tuple[float, object]:
    """The fastest of ``repeat`` runs of ``fn`` (which returns (seconds, result))."""
    return min((fn() for _ in range(repeat)), key=lambda x: x[0])


def under(image: bytes, monitor: str, core: str) -> tuple[float, object]:
    """Run under ``monitor``; return (seconds, result), the seconds of the run alone (not the set-up)."""
    host = Host([GuestSpec("guest", image, monitor)], core)
    t0 = time.perf_counter()
    result = host.run()[0]
    secs = time.perf_counter() - t0
    if not result.halted:
        raise SystemExit(f"{monitor}: the guest did not halt: {result.message}")
    return secs, result


def _timed_bare(image: bytes, core: str) -> float:
    """Seconds the bare machine takes to run ``image`` to halt."""
    return under(image, "bare", core)[0]


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--core", default="jit")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    t = Table(title="paravirtual monitor with and without the processor's help")
    for col in ("guest", "monitor", "wall x bare", "exits", "hypercall exits", "in the core", "µs per exit"):
        t.add_column(col, justify="left" if col in ("guest", "monitor") else "right")
    for name, (npath, ndefs), (ppath, pdefs) in GUESTS:
        native = assemble_file(str(ROOT / npath), defines=ndefs or None).image
        image = assemble_file(str(ROOT / ppath), defines=pdefs).image
        under(image, "pv", args.core)  # compile and warm up
        _timed_bare(native, args.core)
        t_bare = min(_timed_bare(native, args.core) for _ in range(args.repeat))
        rows = [(m, *best(lambda m=m, i=image: under(i, m, args.core), args.repeat)) for m in ("pv", "pv-noassist")]
        (_, s_fast, r_fast), (_, s_slow, r_slow) = rows
        per_exit = (s_slow - s_fast) / max(1, r_slow.stats["total_exits"] - r_fast.stats["total_exits"]) * 1e6
        for monitor, secs, result in rows:
            st = result.stats
            in_core = sum(v for k, v in st.items() if k.endswith("(core)") or k.endswith("by the core"))
            cost = f"{per_exit:.1f}" if monitor == "pv-noassist" else ""
            t.add_row(name, monitor, f"{secs / t_bare:.2f}", str(st["total_exits"]),
                      str(st["exits"].get("hcall", 0)), str(in_core), cost)  # fmt: skip
    Console().print(t)


if __name__ == "__main__":
    main()
