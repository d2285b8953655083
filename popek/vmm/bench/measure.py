"""How the study measures: calibrate each run to a length, repeat interleaved across monitors, keep the spread.

The machine is shared and noisy, so no figure rests on one run: every cell is measured ``reps`` times, the
monitors taking turns within each repetition (so a slow spell of the machine falls on all of them), and each
figure is reported as its median with the minimum and maximum.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from popek.vmm.bench.workloads import MACROS, NANOS, STRATEGIES, Macro, Nano, Sample

MAX_SIZE = 1 << 30  # sizes go into 32-bit guest registers


@dataclass
class Plan:
    """What to run and how long: monitors, workloads, profiles, run lengths in seconds and repetitions."""

    monitors: list[str]
    nanos: list[Nano]
    macros: list[Macro]
    profiles: list[str]
    nano_seconds: float
    macro_seconds: float
    reps: int

    @classmethod
    def make(cls, quick: bool, monitors: list[str] | None = None, workloads: list[str] | None = None) -> Plan:
        """The full study or the quick one, narrowed to the named monitors and workloads if any."""
        mons = list(monitors or STRATEGIES)
        if "bare" not in mons:
            mons.insert(0, "bare")  # every figure is relative to the bare machine
        names = set(workloads or [])
        known = {w.name for w in NANOS} | {w.name for w in MACROS}
        unknown = names - known
        if unknown:
            raise ValueError(f"unknown workload {', '.join(sorted(unknown))} (choose from {', '.join(sorted(known))})")
        nanos = [n for n in NANOS if not names or n.name in names]
        macros = [m for m in MACROS if not names or m.name in names]
        if quick:
            return cls(mons, nanos, macros, ["classic"], 0.004, 0.015, 3)
        return cls(mons, nanos, macros, ["classic", "x86like"], 0.05, 0.3, 5)

    def nano_monitors(self, nano: Nano) -> list[str]:
        """The monitors a nanobenchmark runs under (the paravirtual ones only where a PV build makes sense)."""
        return [m for m in self.monitors if nano.pv or not m.startswith("pv")]

    def steps(self) -> int:
        """How many measurements the plan makes (for the progress bar)."""
        nano = sum(len(self.nano_monitors(n)) for n in self.nanos) * len(self.profiles) * (1 + self.reps)
        return (1 + self.reps) + nano + len(self.macros) * len(self.monitors) * (1 + self.reps)


def spread(values: list[float]) -> dict[str, float]:
    """Median, minimum and maximum of a list of measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def calibrate(run: Callable[[int], Sample], start: int, seconds: float) -> tuple[int, Sample]:
    """The size at which ``run(size)`` takes about ``seconds`` (at least ``start``), and a run at that size.

    The first run is thrown away: it may compile code (the JIT core's paths, a monitor's compiled loop).
    """
    run(start)
    size = start
    while True:
        s = run(size)
        if s.seconds >= seconds / 4 or size >= MAX_SIZE:
            break
        size = min(MAX_SIZE, size * max(2, min(64, int(seconds / 4 / max(s.seconds, 1e-6)) + 1)))
    size = min(MAX_SIZE, max(size, math.ceil(size * 1.1 * seconds / max(s.seconds, 1e-9))))  # land above it
    return size, s


def exits_of(stats: dict) -> dict[str, int]:
    """Exits by cause ({} for full emulation, which never leaves the software interpreter)."""
    return dict(stats.get("exits", {}))


def bare_instruction_ns(plan: Plan, tick: Callable[[], None]) -> dict[str, float]:
    """ns per plain guest instruction on the bare machine: the nanobenchmarks' loop without its operation."""
    loop = next(n for n in NANOS if n.name == "call/ret")

    def run(n: int) -> Sample:
        return loop.run("bare", "classic", n, False)

    n, _ = calibrate(run, 1000, plan.nano_seconds * 4)
    tick()
    samples = []
    for _ in range(plan.reps):
        s = run(n)
        samples.append(s.seconds / s.steps * 1e9)
        tick()
    return spread(samples)


def nano_rows(plan: Plan, nano: Nano, profile: str, tick: Callable[[], None]) -> list[dict]:
    """One row per monitor: the cost of one operation, (with - without) / operations, over ``reps`` rounds."""
    monitors = plan.nano_monitors(nano)
    sizes = {}
    for m in monitors:
        sizes[m], _ = calibrate(lambda n, m=m: nano.run(m, profile, n, True), 200, plan.nano_seconds)
        tick()
    costs: dict[str, list[float]] = {m: [] for m in monitors}
    exits: dict[str, dict[str, int]] = {}
    ops: dict[str, int] = {}
    for r in range(plan.reps):
        for m in monitors:
            order = (True, False) if r % 2 == 0 else (False, True)  # alternate, so drift falls on both halves
            runs = {w: nano.run(m, profile, sizes[m], w) for w in order}
            with_op, without = runs[True], runs[False]
            costs[m].append((with_op.seconds - without.seconds) / max(1, with_op.units))
            w_exits, wo_exits = exits_of(with_op.stats), exits_of(without.stats)
            exits[m] = {c: n - wo_exits.get(c, 0) for c, n in w_exits.items() if n - wo_exits.get(c, 0)}
            ops[m] = with_op.units
            tick()
    rows = []
    for m in monitors:
        per_op = {c: n / max(1, ops[m]) for c, n in exits[m].items()}
        rows.append({"name": nano.name, "analogue": nano.analogue, "profile": profile, "monitor": m,
                     "iterations": sizes[m], "operations": ops[m], "ns_per_op": spread([c * 1e9 for c in costs[m]]),
                     "exits_per_op": sum(per_op.values()), "exits_by_cause_per_op": per_op})  # fmt: skip
    return rows


def macro_rows(plan: Plan, macro: Macro, tick: Callable[[], None], profile: str = "classic") -> list[dict]:
    """One row per monitor: time per unit of work against the bare machine's, over ``reps`` interleaved rounds.

    Each monitor runs the workload at the size that takes it about ``macro_seconds``, so start-up is amortized
    alike for a fast and a slow monitor; the ratio is of times per unit of work, paired round by round.
    """
    sizes = {}
    for m in plan.monitors:
        sizes[m], _ = calibrate(lambda n, m=m: macro.runner(m, profile, n), macro.start, plan.macro_seconds)
        tick()
    per_unit: dict[str, list[float]] = {m: [] for m in plan.monitors}
    last: dict[str, Sample] = {}
    for r in range(plan.reps):
        order = plan.monitors if r % 2 == 0 else plan.monitors[::-1]
        for m in order:
            s = macro.runner(m, profile, sizes[m])
            per_unit[m].append(s.seconds / s.units)
            last[m] = s
            tick()
    rows = []
    for m in plan.monitors:
        s, e = last[m], exits_of(last[m].stats)
        ratios = [u / b for u, b in zip(per_unit[m], per_unit["bare"], strict=True)]
        total = None if m == "full" else sum(e.values())
        rows.append({"workload": macro.name, "group": macro.group, "unit": macro.unit, "monitor": m,
                     "profile": profile, "size": sizes[m], "seconds_per_run": s.seconds,
                     "us_per_unit": spread([u * 1e6 for u in per_unit[m]]), "slowdown": spread(ratios),
                     "steps_per_unit": s.steps / s.units, "exits": total, "exits_by_cause": e,
                     "exits_per_1000": None if total is None else 1000 * total / max(1, s.steps),
                     "emulated": s.stats.get("emulated", 0), "reflected": s.stats.get("reflected", 0),
                     "injected": s.stats.get("injected", 0)})  # fmt: skip
    return rows
