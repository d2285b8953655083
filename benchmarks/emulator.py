"""What the compiled emulator changed: full emulation and the hybrid monitor before and after, in one run.

    python benchmarks/emulator.py [--repeat 3] [--json FILE]

"Before" runs the VMs' software interpretation on the reference core, every console byte leaving it for the
host (as ``VM.emulate`` did before popek/cores/emulator.py); "after" on the emulator. Both are measured in one
process against the bare machine on the JIT core, each figure the best of ``--repeat`` runs (one for the slow
"before" rows). Also: the cost of one ``VM.emulate_one`` call (the single-instruction emulation of the
trap-and-emulate and rewriting monitors), and the emulator's compile time, cold and from the on-disk cache, each
measured in a fresh process apart from its steady-state speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from popek.cores import emulator, jit, reference  # noqa: E402
from popek.isa.asm import assemble, assemble_file  # noqa: E402
from popek.vmm import vm as vm_module  # noqa: E402
from popek.vmm.host import GuestSpec, Host  # noqa: E402
from popek.vmm.vm import VM  # noqa: E402

# CPU-bound guests (name, source, defines) and the kernel, whose interrupts and system calls come with its work.
WORKLOADS = [
    ("cpu (primes)", "guests/programs/primes.s", {"REPEAT": 10}),
    ("cpu (arith)", "guests/programs/arith.s", {}),
    ("cpu (sort)", "guests/programs/sort.s", {}),
    ("kernel", "guests/kernel/kernel.s", {}),
]


class ReferenceInterpreter:
    """``emulator.emulate``'s place taken by the reference core, as VMs interpreted before the emulator."""

    @staticmethod
    def emulate(state: np.ndarray, mem: np.ndarray, budget: int, until_user: bool, console: np.ndarray) -> tuple:
        """Run on the reference core; no console output inside the call (every ``out`` exits to the host)."""
        return reference.run(state, mem, budget, until_user), 0


def run_once(image: bytes, monitor: str) -> tuple[float, int]:
    """Run one guest to halt on the JIT core's host; return (seconds, guest steps)."""
    host = Host([GuestSpec("guest", image, monitor, "classic")], "jit")
    t0 = time.perf_counter()
    result = host.run()[0]
    secs = time.perf_counter() - t0
    if not result.halted:
        raise SystemExit(f"{monitor}: the guest did not halt: {result.message}")
    return secs, result.steps


def best(image: bytes, monitor: str, repeat: int, before: bool) -> tuple[float, int]:
    """The fastest of ``repeat`` runs, interpreting on the reference core when ``before``."""
    if not before:
        return min(run_once(image, monitor) for _ in range(repeat))
    with mock.patch.object(vm_module, "emulator", ReferenceInterpreter):
        return min(run_once(image, monitor) for _ in range(repeat))


def measure(repeat: int) -> list[dict]:
    """Bare, then full and hybrid before and after, per workload."""
    rows = []
    for name, path, defines in WORKLOADS:
        image = assemble_file(str(ROOT / path), defines=defines or None).image
        run_once(image, "bare")  # warm up
        run_once(image, "full")
        bare_secs, steps = best(image, "bare", repeat, False)
        rows.append({"workload": name, "run": "bare (jit core)", "seconds": bare_secs, "steps": steps})
        for monitor in ("full", "hybrid"):
            for before in (True, False):
                secs, steps = best(image, monitor, 1 if before else repeat, before)
                label = f"{monitor}, {'reference core (before)' if before else 'emulator (after)'}"
                rows.append({"workload": name, "run": label, "seconds": secs, "steps": steps})
        for row in rows[-5:]:
            row["vs_bare"] = row["seconds"] / bare_secs
            row["mips"] = row["steps"] / row["seconds"] / 1e6
    return rows


def single_step_cost(calls: int = 20_000) -> dict:
    """Microseconds per ``VM.emulate_one`` call, before and after, on a guest that loops forever."""
    image = assemble("loop: addi r1, r1, 1\n j loop\n").image
    out = {}
    for before in (True, False):
        vm = VM("guest", np.zeros(4096, dtype=np.uint8), 0, 4096)
        vm.load(image)
        with mock.patch.object(vm_module, "emulator", ReferenceInterpreter if before else emulator):
            vm.emulate_one()
            t0 = time.perf_counter()
            for _ in range(calls):
                vm.emulate_one()
            out["before" if before else "after"] = (time.perf_counter() - t0) / calls * 1e6
    return out


_COMPILE = (
    "import time; t = time.perf_counter(); from popek.cores import emulator; emulator.warmup(); "
    "print(time.perf_counter() - t)"
)


def compile_times() -> dict:
    """Seconds to import and compile the emulator in a fresh process with an empty cache, then from the cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        times = [
            float(
                subprocess.run(
                    [sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, check=True
                ).stdout
            )  # fmt: skip
            for _ in range(2)
        ]
    return {"cold": times[0], "cached": times[1]}


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", help="write the results as JSON here")
    args = p.parse_args()
    jit.warmup()
    emulator.warmup()
    rows = measure(args.repeat)
    step = single_step_cost()
    compiled = compile_times()
    t = Table(title="software interpretation: the reference core (before) and the emulator (after)")
    for col in ("workload", "run", "wall x bare", "guest MIPS", "guest steps"):
        t.add_column(col, justify="left" if col in ("workload", "run") else "right")
    for r in rows:
        t.add_row(r["workload"], r["run"], f"{r['vs_bare']:.1f}", f"{r['mips']:.2f}", str(r["steps"]))
    console = Console()
    console.print(t)
    console.print(f"VM.emulate_one: {step['before']:.2f} µs per call before, {step['after']:.2f} µs after")
    console.print(
        f"emulator compile, in a fresh process with an empty cache: {compiled['cold']:.2f} s; "
        f"from the on-disk cache: {compiled['cached']:.2f} s (both include importing numba)"
    )
    if args.json:
        command = "python benchmarks/emulator.py " + " ".join(sys.argv[1:])
        data = {"command": command.strip(), "rows": rows, "emulate_one_us": step, "compile_seconds": compiled}
        Path(args.json).write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
