"""popek's cores beside real emulators on the same work: native C, qemu-user (riscv64), the JIT, C and dbt cores.

    python benchmarks/emulators.py [--repeat 5] [--scale 1] [--json benchmarks/results/emulators.json]

Two workloads, each done the same number of passes by every contestant: the sieve of guests/programs/primes.s
(the primes below 10,000, 1229) and the bitwise CRC-32 of guests/programs/crc32.s (its 96-byte message), in
P32 on popek's cores and in C (benchmarks/c/) compiled natively with gcc -O1 and -O2 (the physical limit of
this machine) and for riscv64 with riscv64-linux-gnu-gcc -O1 -static, run under qemu-riscv64 (qemu-user).
Every contestant must print the same result, which must also equal an independent one (a prime count by
trial division, zlib.crc32 of the guest's message), or the run stops.

Times are wall seconds for the passes: for the C programs their own clock around the pass loop (so neither
the process start nor qemu's start-up counts; qemu translates the loop inside it, on every run), for popek
``Machine.run`` of the whole guest. A warm-up round comes first: the dbt core's run there starts with no
translation of that program and is reported apart as "dbt first run"; later dbt runs reuse its translations.
Then ``--repeat`` rounds interleave all contestants in a rotating order, so the noise of a shared machine falls
on all alike; each figure is the best round (the JSON has every round).

Instructions per pass are counted for every ISA, each as the difference between a run of 3 passes and one of
2: P32 from popek's step count (the whole pass, its round counter included); riscv64 by qemu logging one
instruction per translation block (``-d exec`` with ``-singlestep``) filtered to the pass's function (at -O1 it
calls nothing); x86-64 by valgrind's callgrind collecting in that function and what it calls (memset at -O2).
The C programs' loop around the calls (a handful of instructions per pass) is not counted.

Nothing is installed: a missing tool (gcc, riscv64-linux-gnu-gcc, qemu-riscv64, valgrind) is named, and the
contestants that need it are left out. Debian: ``apt-get install qemu-user gcc-riscv64-linux-gnu valgrind``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from math import isqrt
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.core_speed import time_run  # noqa: E402
from popek.cores import CoreUnavailable, get_core  # noqa: E402
from popek.isa.asm import Program, assemble_file  # noqa: E402

C_DIR = ROOT / "benchmarks" / "c"
POPEK_CORES = ("jit", "c", "dbt")
COUNT_PASSES = (2, 3)  # instructions per pass = count(3 passes) - count(2 passes); same digits in argv


@dataclass(frozen=True)
class Workload:
    """One piece of work: the P32 guest, the C program doing the same, its pass function and default passes."""

    name: str
    guest: str
    source: str
    function: str
    passes: int

    def truth(self, program: Program) -> str:
        """The output every contestant must print, computed without popek or the C programs."""
        if self.name == "sieve":
            n = program.equates["N"]
            return f"{sum(1 for k in range(2, n) if all(k % d for d in range(2, isqrt(k) + 1)))}\n"
        message = program.image[program.symbols["message"] : program.symbols["message_end"]]
        return f"0x{zlib.crc32(message):08x}\n"


WORKLOADS = (
    Workload("sieve", "guests/programs/primes.s", "sieve.c", "count_primes", 1000),
    Workload("crc32", "guests/programs/crc32.s", "crc32.c", "crc32_bitwise", 40000),
)


@dataclass(frozen=True)
class Contestant:
    """A compiled C program and how to run it: natively or under qemu-riscv64."""

    name: str
    isa: str
    binaries: dict[str, Path]  # workload name -> executable
    prefix: tuple[str, ...] = ()  # the emulator and its options, before the executable


@dataclass(frozen=True)
class Tools:
    """The host tools the comparison uses; None where missing."""

    gcc: str | None
    cross_gcc: str | None
    cross_nm: str | None
    qemu: str | None
    valgrind: str | None

    @classmethod
    def find(cls) -> Tools:
        """Look the tools up on PATH."""
        w = shutil.which
        return cls(w("gcc"), w("riscv64-linux-gnu-gcc"), w("riscv64-linux-gnu-nm"), w("qemu-riscv64"), w("valgrind"))

    def missing(self) -> list[str]:
        """One line per missing tool, saying what is left out without it."""
        out = []
        if not self.gcc:
            out.append("gcc not found: the native C contestants are left out")
        if not self.cross_gcc:
            out.append("riscv64-linux-gnu-gcc not found (Debian: gcc-riscv64-linux-gnu): qemu-user is left out")
        if not self.qemu:
            out.append("qemu-riscv64 not found (Debian: qemu-user): qemu-user is left out")
        if self.qemu and self.cross_gcc and not self.cross_nm:
            out.append("riscv64-linux-gnu-nm not found: riscv64 instructions are not counted")
        if self.gcc and not self.valgrind:
            out.append("valgrind not found: x86-64 instructions are not counted")
        return out

    def versions(self) -> dict[str, str]:
        """The first line of each present tool's --version."""
        out = {}
        for name in ("gcc", "cross_gcc", "qemu", "valgrind"):
            path = getattr(self, name)
            if path:
                text = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
                out[name] = text.splitlines()[0] if text else "?"
        return out


def compile_c(compiler: str, flags: list[str], out_dir: Path, tag: str) -> dict[str, Path] | str:
    """Every workload's C program built with ``compiler flags``; the compiler's complaint if one fails."""
    binaries = {}
    for w in WORKLOADS:
        exe = out_dir / f"{w.name}-{tag}"
        cmd = [compiler, *flags, "-Wall", "-o", str(exe), str(C_DIR / w.source)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            return f"{' '.join(cmd)} failed: {done.stderr.strip()}"
        binaries[w.name] = exe
    return binaries


def contestants(tools: Tools, out_dir: Path) -> tuple[list[Contestant], list[str]]:
    """The C contestants this machine can run, and a line for each that it cannot."""
    builds = []
    if tools.gcc:
        builds += [("native -O1", "x86-64", tools.gcc, ["-O1"], ()), ("native -O2", "x86-64", tools.gcc, ["-O2"], ())]
    if tools.cross_gcc and tools.qemu:
        builds.append(("qemu-user", "riscv64", tools.cross_gcc, ["-O1", "-static"], (tools.qemu,)))
    out, problems = [], []
    for name, isa, compiler, flags, prefix in builds:
        built = compile_c(compiler, flags, out_dir, name.replace(" ", ""))
        if isinstance(built, str):
            problems.append(f"{name} left out: {built}")
        else:
            out.append(Contestant(name, isa if isa != "x86-64" else platform.machine(), built, prefix))
    return out, problems


@dataclass
class Timing:
    """One run: seconds for the passes, seconds of the whole process (C programs only), what it printed."""

    seconds: float
    process_seconds: float | None
    output: str
    steps: int | None = None  # P32 instructions retired (popek only)


def run_c(c: Contestant, workload: str, passes: int) -> Timing:
    """Run a C program for ``passes`` passes; its clock for the passes, ours for the process."""
    cmd = [*c.prefix, str(c.binaries[workload]), str(passes)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    found = re.search(r"^seconds ([0-9.]+)$", done.stderr, re.M)
    if done.returncode or not found:
        raise RuntimeError(f"{' '.join(cmd)}: status {done.returncode}: {done.stderr.strip()}")
    return Timing(float(found.group(1)), wall, done.stdout)


def run_popek(image: bytes, core: str) -> Timing:
    """Run a P32 image to halt on a bare machine with ``core``."""
    secs, steps, console = time_run(image, core)
    return Timing(secs, None, console, steps)


def symbol_range(nm: str, exe: Path, name: str) -> str:
    """``start+size`` of a function in an executable, as qemu's -dfilter takes it."""
    for line in subprocess.run([nm, "-S", str(exe)], capture_output=True, text=True, check=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3] == name:
            return f"0x{parts[0]}+0x{parts[1]}"
    raise LookupError(f"{name} not in {exe}")


def qemu_instructions(tools: Tools, exe: Path, function: str, passes: int, log: Path) -> int:
    """riscv64 instructions qemu executes in ``function`` (one per translation block, each one logged)."""
    assert tools.qemu and tools.cross_nm
    help_text = subprocess.run([tools.qemu, "-h"], capture_output=True, text=True).stdout
    one = "-one-insn-per-tb" if "-one-insn-per-tb" in help_text else "-singlestep"
    where = symbol_range(tools.cross_nm, exe, function)
    cmd = [tools.qemu, one, "-d", "exec,nochain", "-dfilter", where, "-D", str(log), str(exe), str(passes)]
    subprocess.run(cmd, capture_output=True, check=True)
    with log.open("rb") as f:
        return sum(1 for line in f if line.startswith(b"Trace "))


def callgrind_instructions(tools: Tools, exe: Path, function: str, passes: int, log: Path) -> int:
    """x86-64 instructions executed in ``function`` and what it calls, by valgrind's callgrind."""
    assert tools.valgrind
    cmd = [tools.valgrind, "--tool=callgrind", f"--toggle-collect={function}", f"--callgrind-out-file={log}",
           str(exe), str(passes)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if not found:
        raise LookupError(f"no count in callgrind's output: {done.stderr.strip()[-200:]}")
    return int(found.group(1))


def c_instructions_per_pass(tools: Tools, c: Contestant, w: Workload, scratch: Path) -> int | str:
    """Instructions of one pass of the C program (its ISA), or why they were not counted."""
    if c.prefix:
        if not tools.cross_nm:
            return "not counted: no riscv64-linux-gnu-nm"
        counter = qemu_instructions
    else:
        if not tools.valgrind:
            return "not counted: no valgrind"
        counter = callgrind_instructions
    try:
        a, b = (counter(tools, c.binaries[w.name], w.function, n, scratch / f"count-{n}") for n in COUNT_PASSES)
    except (subprocess.CalledProcessError, LookupError, OSError) as e:
        return f"not counted: {e}"
    if a <= 0:
        return "not counted: the log holds no instructions"
    return (b - a) // (COUNT_PASSES[1] - COUNT_PASSES[0])


def p32_steps_per_pass(w: Workload, core: str) -> int:
    """P32 instructions of one pass of the guest, from popek's step count."""
    steps = [run_popek(assemble_file(str(ROOT / w.guest), defines={"REPEAT": n}).image, core).steps
             for n in COUNT_PASSES]  # fmt: skip
    return (steps[1] - steps[0]) // (COUNT_PASSES[1] - COUNT_PASSES[0])


def popek_cores() -> tuple[list[str], list[str]]:
    """The popek cores that load, and a line for each that does not."""
    cores, problems = [], []
    for core in POPEK_CORES:
        try:
            get_core(core)
            cores.append(core)
        except (CoreUnavailable, ImportError) as e:
            problems.append(f"core {core} left out: {e}")
    return cores, problems


def dbt_stats() -> dict:
    """The translating core's counters as a dict (empty where the module has none)."""
    from popek.cores import dbt

    stats = getattr(dbt, "stats", None)
    return dict(vars(stats())) if stats else {}


def dbt_reset() -> None:
    """Zero the translating core's counters, if it has any."""
    from popek.cores import dbt

    if hasattr(dbt, "reset_stats"):
        dbt.reset_stats()


def tell(notes: list[str]) -> list[str]:
    """Print each note to stderr as it is found; return them for the JSON."""
    for line in notes:
        print(line, file=sys.stderr)
    return notes


def measure(repeat: int, scale: float) -> dict:
    """Time every contestant on every workload, interleaved; return the rows and what was left out."""
    tools = Tools.find()
    cores, problems = popek_cores()
    notes = tell(tools.missing() + problems)
    hello = assemble_file(str(ROOT / "guests/programs/hello.s")).image
    setup = {}
    for core in cores:  # compile or load each core (dbt: its dispatcher) on a program that is none of the work
        setup[core] = run_popek(hello, core).seconds
    with tempfile.TemporaryDirectory() as tmp:
        c_contestants, problems = contestants(tools, Path(tmp))
        notes += tell(problems)
        names = [c.name for c in c_contestants] + cores
        passes = {w.name: max(1, round(w.passes * scale)) for w in WORKLOADS}
        programs = {w.name: assemble_file(str(ROOT / w.guest), defines={"REPEAT": passes[w.name]}) for w in WORKLOADS}
        truths = {w.name: w.truth(programs[w.name]) for w in WORKLOADS}
        per_pass: dict[str, dict[str, int | str]] = {w.name: {} for w in WORKLOADS}
        for w in WORKLOADS:
            for c in c_contestants:
                per_pass[w.name][c.name] = c_instructions_per_pass(tools, c, w, Path(tmp))
            if cores:
                p32 = p32_steps_per_pass(w, cores[0])
                per_pass[w.name].update({core: p32 for core in cores})
        runs: dict[str, dict[str, list[Timing]]] = {w.name: {n: [] for n in names} for w in WORKLOADS}
        first: dict[str, dict] = {}
        for rnd in range(repeat + 1):  # round 0 warms up; dbt's run in it is its first run
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for w in WORKLOADS:
                for name in order:
                    c = next((c for c in c_contestants if c.name == name), None)
                    if c is not None:
                        t = run_c(c, w.name, passes[w.name])
                    else:
                        if rnd == 0 and name == "dbt":
                            dbt_reset()
                        t = run_popek(programs[w.name].image, name)
                        if rnd == 0 and name == "dbt":
                            first[w.name] = {"seconds": t.seconds, "stats": dbt_stats()}
                    if rnd > 0:
                        runs[w.name][name].append(t)
                    if t.output != truths[w.name]:
                        raise SystemExit(f"{w.name}: {name} printed {t.output!r}, expected {truths[w.name]!r}")
    isa = {c.name: c.isa for c in c_contestants} | {core: "P32" for core in cores}
    rows = [row for w in WORKLOADS for row in workload_rows(w.name, passes[w.name], runs[w.name], first.get(w.name),
                                                              per_pass[w.name], isa)]  # fmt: skip
    return {"rows": rows, "notes": notes, "tools": tools.versions(), "core_setup_seconds": setup,
            "machine": f"{platform.machine()}, {platform.processor() or '?'}", "repeat": repeat}  # fmt: skip


def workload_rows(
    work: str, passes: int, runs: dict[str, list[Timing]], first: dict | None, per_pass: dict, isa: dict[str, str]
) -> list[dict]:
    """One row per contestant (its best round), and one for dbt's first run: seconds, MIPS, ratios."""
    best = {n: min(t.seconds for t in ts) for n, ts in runs.items()}

    def row(name: str, contestant: str, seconds: float) -> dict:
        ipp = per_pass[name]
        out = {"workload": work, "passes": passes, "contestant": contestant, "isa": isa[name],
               "instructions_per_pass": ipp, "seconds": seconds}  # fmt: skip
        if isinstance(ipp, int):
            out["mips"] = ipp * passes / seconds / 1e6
        if "qemu-user" in best:
            out["over_qemu"] = seconds / best["qemu-user"]
        if "jit" in best:
            out["over_jit"] = seconds / best["jit"]
        return out

    rows = []
    for name, ts in runs.items():
        rows.append(row(name, name, best[name]))
        rows[-1] |= {"median_seconds": statistics.median(t.seconds for t in ts), "rounds": [t.seconds for t in ts],
                     "output": ts[0].output.strip()}  # fmt: skip
        if ts[0].process_seconds is not None:
            rows[-1]["process_seconds"] = min(t.process_seconds for t in ts)
    if first is not None:
        rows.append(row("dbt", "dbt first run", first["seconds"]) | {"dbt_stats": first["stats"]})
    return rows


def acceptance(rows: list[dict]) -> list[str]:
    """The translating core's targets, with today's measured figures beside them."""
    lines = []
    for w in WORKLOADS:
        by = {r["contestant"]: r for r in rows if r["workload"] == w.name}
        if "dbt" not in by:
            continue
        dbt = by["dbt"]
        if "over_qemu" in dbt:
            lines.append(f"{w.name}: dbt / qemu-user = {dbt['over_qemu']:.2f} (target <= 1.0, stretch <= 0.5)")
        if "over_jit" in dbt:
            lines.append(f"{w.name}: jit / dbt = {1 / dbt['over_jit']:.2f} (target >= 3)")
    return lines


def fmt(v: float | None, digits: int = 2) -> str:
    """A figure for the table, '-' for none."""
    return "-" if v is None else f"{v:.{digits}f}"


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5, help="timed rounds after the warm-up round")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every workload's passes")
    p.add_argument("--json", help="write the results as JSON here")
    args = p.parse_args()
    data = measure(max(1, args.repeat), args.scale)
    table = Table(title=f"equal work, wall seconds (best of {data['repeat']} rounds)")
    for col in ("work", "contestant", "ISA", "instr / pass", "seconds", "MIPS", "× qemu-user", "× jit", "process s"):
        table.add_column(col, justify="left" if col in ("work", "contestant", "ISA") else "right")
    for r in data["rows"]:
        ipp = r["instructions_per_pass"]
        table.add_row(f"{r['workload']} ×{r['passes']}", r["contestant"], r["isa"],
                      f"{ipp:,}" if isinstance(ipp, int) else ipp, f"{r['seconds']:.4f}", fmt(r.get("mips"), 0),
                      fmt(r.get("over_qemu")), fmt(r.get("over_jit")), fmt(r.get("process_seconds"), 4))  # fmt: skip
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a pipe or a file: one line per row
    console.print(table)
    for line in acceptance(data["rows"]):
        print(line)
    setup = ", ".join(f"{core} {secs:.2f} s" for core, secs in data["core_setup_seconds"].items())
    print(f"set-up before the rounds, apart (hello.s: JIT compile or cache load, dbt's dispatcher): {setup}")
    for r in data["rows"]:
        if r.get("dbt_stats"):
            s = r["dbt_stats"]
            translated = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items())
            print(f"{r['workload']}: dbt first run: {translated}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/emulators.py " + " ".join(sys.argv[1:])
        Path(args.json).write_text(json.dumps({"command": command.strip(), **data}, indent=1, default=str))


if __name__ == "__main__":
    main()
