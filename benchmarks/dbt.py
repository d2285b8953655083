"""The translating core against the JIT and C cores: steady-state MIPS, and the cost of translation apart.

    python benchmarks/dbt.py [--repeat 3]

Each program runs to halt on every core in one process, round by round. The first dbt round starts with an
empty translation cache, so it pays for translation; its MIPS and the translation counters (blocks, time)
are reported apart. Later dbt rounds run on the warm cache (a region checks its words before it runs, so the
freshly loaded, identical program reuses them): the best of those is the steady-state figure. The programs are
core_speed.py's, ten times longer (``--scale``): the translated ones would otherwise finish in milliseconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.core_speed import PROGRAMS, time_run  # noqa: E402
from popek.cores import CoreUnavailable, dbt, get_core  # noqa: E402
from popek.isa.asm import assemble_file  # noqa: E402


def main() -> None:
    """Print one row per program: JIT, C, dbt steady and first-run MIPS, translation counts and time."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scale", type=int, default=10, help="work per program, in core_speed.py's sizes (default 10)")
    args = ap.parse_args()
    cores = []
    for core in ("jit", "c", "dbt"):
        try:
            get_core(core)
            cores.append(core)
        except CoreUnavailable:
            pass
    print("| program | JIT | C | dbt | dbt / JIT | dbt first run | translations | translation ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, source, defines, _ in PROGRAMS:
        sized = {key: value * args.scale for key, value in defines.items()}
        image = assemble_file(str(ROOT / source), defines=sized).image
        best: dict[str, float] = {}
        first = 0.0
        dbt.reset_stats()
        for rnd in range(args.repeat + 1):
            for core in cores:
                secs, steps, _ = time_run(image, core)
                mips = steps / secs / 1e6
                if core == "dbt" and rnd == 0:
                    first, s = mips, dbt.stats()
                elif rnd > 0:
                    best[core] = max(best.get(core, 0.0), mips)
        cols = [f"{best.get(c, 0):.1f}" for c in ("jit", "c", "dbt")]
        ratio = best["dbt"] / best["jit"]
        print(f"| {name} | {' | '.join(cols)} | {ratio:.3f} | {first:.1f} | {s.translations} | "
              f"{s.translate_seconds * 1000:.0f} |")  # fmt: skip
    print(dbt.stats_line())


if __name__ == "__main__":
    main()
