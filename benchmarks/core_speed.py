"""Speed of the cores on CPU-bound guests: steady-state MIPS, the JIT/C and JIT/reference ratios, compile time.

    python benchmarks/core_speed.py [--repeat 5] [--json benchmarks/results/core_speed.json]

Every program runs on every available core in one process, interleaved round by round so that the machine's
noise falls on all cores alike; each figure is the best round. "paired" is the median over the rounds of the
JIT/C speed ratio of the two runs made back to back: the figure least moved by the machine's drift. The
reference core runs a shorter build of each program (it is ~1000x slower); MIPS is a rate, so the figures
compare. The JIT core's compile time (a fresh process with an empty cache) and cache-load time (a second
process) are measured apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from popek.cores import CoreUnavailable, get_core  # noqa: E402
from popek.isa.asm import assemble_file  # noqa: E402
from popek.vmm.host import Machine  # noqa: E402

# name, source, defines for the fast cores, defines for the reference core
PROGRAMS = [
    ("sieve", "guests/programs/primes.s", {"REPEAT": 100}, {"REPEAT": 1}),
    ("crc32", "guests/programs/crc32.s", {"REPEAT": 20000}, {"REPEAT": 40}),
    ("sort", "guests/programs/sort.s", {"COUNT": 3000}, {"COUNT": 200}),
    ("arith", "guests/programs/arith.s", {"ROUNDS": 2_000_000}, {"ROUNDS": 20_000}),
]
WARMUP = (
    "from popek.cores import jit; import time; t = time.perf_counter(); jit.warmup(); print(time.perf_counter() - t)"
)


def time_run(image: bytes, core: str) -> tuple[float, int, str]:
    """Run a program to halt on a bare machine; return (seconds, steps, console)."""
    machine = Machine(core=core)
    machine.load(image)
    t0 = time.perf_counter()
    result = machine.run(max_steps=10**10)
    secs = time.perf_counter() - t0
    assert result.halted, result.message
    return secs, result.steps, result.console


def compile_times() -> dict[str, float]:
    """Seconds to compile the JIT core in a fresh process (empty cache), and to load it from the cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cmd = [sys.executable, "-c", WARMUP]
        cold = float(subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout)
        warm = float(subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    return {"compile_seconds": cold, "cache_load_seconds": warm}


def measure(repeat: int) -> dict:
    """MIPS of every available core on every program."""
    cores = []
    for name in ("jit", "c", "reference"):
        try:
            get_core(name)
            cores.append(name)
        except (CoreUnavailable, ImportError) as e:
            print(f"{name}: unavailable ({e})", file=sys.stderr)
    rows = []
    for prog, path, fast, slow in PROGRAMS:
        images = {c: assemble_file(str(ROOT / path), defines=slow if c == "reference" else fast).image for c in cores}
        for c in cores:
            time_run(images[c], c)  # warm up caches and the JIT
        best: dict[str, tuple[float, int]] = {}
        paired: list[float] = []  # JIT / C speed, round by round
        consoles = set()
        for _ in range(repeat if "reference" not in cores else max(1, repeat)):
            this_round = {}
            for c in cores:
                if c == "reference" and c in best:
                    continue  # one round of the slow core is plenty
                secs, steps, console = time_run(images[c], c)
                this_round[c] = secs
                if c != "reference":
                    consoles.add(console)
                if c not in best or secs < best[c][0]:
                    best[c] = (secs, steps)
            if "jit" in this_round and "c" in this_round:  # the two ran back to back: their ratio is paired
                paired.append(this_round["c"] / this_round["jit"])
        assert len(consoles) == 1, f"{prog}: the cores disagree: {consoles}"
        mips = {c: best[c][1] / best[c][0] / 1e6 for c in cores}
        row = {"program": prog, "steps": {c: best[c][1] for c in cores}, "mips": mips}
        if "c" in mips:
            row["jit_over_c"] = mips["jit"] / mips["c"]
            row["jit_over_c_paired_median"] = statistics.median(paired)
        if "reference" in mips:
            row["jit_over_reference"] = mips["jit"] / mips["reference"]
        rows.append(row)
    return {"rows": rows, **compile_times()}


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", help="write the results as JSON here")
    args = p.parse_args()
    data = measure(args.repeat)
    table = Table(title="core speed (steady state, MIPS)")
    for col in ("program", "jit", "c", "reference", "jit / c", "paired", "jit / reference"):
        table.add_column(col, justify="left" if col == "program" else "right")
    for r in data["rows"]:
        m = r["mips"]
        table.add_row(r["program"], *(f"{m[c]:.1f}" if c in m else "-" for c in ("jit", "c")),
                      f"{m['reference']:.3f}" if "reference" in m else "-",
                      f"{r['jit_over_c']:.2f}" if "jit_over_c" in r else "-",
                      f"{r['jit_over_c_paired_median']:.2f}" if "jit_over_c" in r else "-",
                      f"{r['jit_over_reference']:.0f}" if "jit_over_reference" in r else "-")  # fmt: skip
    Console().print(table)
    compile_s, load_s = data["compile_seconds"], data["cache_load_seconds"]
    print(f"JIT compile: {compile_s:.2f} s (empty cache); load from cache: {load_s:.2f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": "python benchmarks/core_speed.py " + " ".join(sys.argv[1:]),
                                               **data}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
