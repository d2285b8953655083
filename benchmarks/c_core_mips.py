"""Speed of the cores on a sieve of Eratosthenes (MIPS = million guest instructions per second), and the cost
of one call into each core (what every exit to the host pays).

    python benchmarks/c_core_mips.py [--n 10000] [--repeat 20] [--json benchmarks/results/c_core.json]

The sieve is encoded here with isa.spec.encode, independent of the assembler. Every core must leave the
same registers and count 1229 primes below 10000; the JIT core's compile time is reported apart.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from popek.isa import state as S
from popek.isa.spec import BY_MNEMONIC, encode

SIEVE = 0x1000  # address of the flag array


def sieve_program(n: int, repeat: int) -> list[int]:
    """The sieve below ``n``, run ``repeat`` times; halts with the prime count in r13 (and its low byte in r1)."""
    code: list[tuple] = [
        ("lui", 12, 0, 0, n >> 16), ("ori", 12, 12, 0, n & 0xFFFF),             # r12 = n
        ("addi", 8, 0, 0, repeat), ("addi", 3, 0, 0, 0),                        # r8 = rounds, r3 = round
        ("addi", 10, 0, 0, SIEVE),                                              # r10 = sieve
        "again", ("addi", 11, 0, 0, SIEVE), ("add", 9, 11, 12, 0),
        "clear", ("stb", 0, 11, 0, 0), ("addi", 11, 11, 0, 1), ("bltu", 11, 9, 0, "clear"),
        ("addi", 11, 0, 0, 2), ("addi", 13, 0, 0, 0),                           # i = 2, count = 0
        "outer", ("bgeu", 11, 12, 0, "done"),
        ("add", 4, 10, 11, 0), ("ldbu", 5, 4, 0, 0), ("bne", 5, 0, 0, "next"),
        ("addi", 13, 13, 0, 1), ("mul", 6, 11, 11, 0), ("bgeu", 6, 12, 0, "next"), ("addi", 7, 0, 0, 1),
        "inner", ("add", 4, 10, 6, 0), ("stb", 7, 4, 0, 0), ("add", 6, 6, 11, 0), ("bltu", 6, 12, 0, "inner"),
        "next", ("addi", 11, 11, 0, 1), ("jal", 0, 0, 0, "outer"),
        "done", ("addi", 3, 3, 0, 1), ("bltu", 3, 8, 0, "again"),
        ("add", 1, 13, 0, 0), ("halt", 0, 0, 0, 0),
    ]  # fmt: skip
    labels, pc = {}, 0
    for item in code:
        if isinstance(item, str):
            labels[item] = pc
        else:
            pc += 4
    words, pc = [], 0
    for item in code:
        if isinstance(item, str):
            continue
        m, a, b, c, imm = item
        if isinstance(imm, str):
            imm = (labels[imm] - pc) // 4
        words.append(encode(BY_MNEMONIC[m], a, b, c, imm))
        pc += 4
    return words


def machine(n: int, repeat: int) -> tuple[np.ndarray, np.ndarray]:
    """A fresh state and a memory holding the sieve program."""
    memsize = max(1 << 16, SIEVE + n + 64)
    mem = np.zeros(memsize, dtype=np.uint8)
    words = np.array(sieve_program(n, repeat), dtype="<u4").view(np.uint8)
    mem[: len(words)] = words
    return S.new_state(memsize), mem


def time_run(run, n: int, repeat: int, budget: int) -> tuple[float, int, np.ndarray]:
    """Run the sieve on one core (at most ``budget`` steps); return seconds, steps and the final state."""
    state, mem = machine(n, repeat)
    t0 = time.perf_counter()
    while True:
        code = run(state, mem, budget - int(state[S.STEPS]))
        if code != S.EXIT_BUDGET or state[S.STEPS] >= budget:
            break
    return time.perf_counter() - t0, int(state[S.STEPS]), state


def call_cost(run, calls: int = 200_000) -> float:
    """Microseconds per call of ``run`` with a budget of 1 (one addi each)."""
    mem = np.zeros(1 << 12, dtype=np.uint8)
    mem[: 1 << 12] = np.resize(np.array([encode(BY_MNEMONIC["addi"], 1, 1, 0, 1)], "<u4").view(np.uint8), 1 << 12)
    state = S.new_state(len(mem))
    state[S.IVT] = 0
    run(state, mem, 1)
    t0 = time.perf_counter()
    for _ in range(calls):
        state[S.PC] = 0
        run(state, mem, 1)
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    """Measure every available core and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--reference-steps", type=int, default=1_000_000, help="steps to time the reference core on")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    from popek.cores import reference

    cores = [("reference", reference.run, args.reference_steps)]
    from popek.cores import c as c_core

    if c_core.available():
        cores.append(("c", c_core.run, 1 << 62))
    else:
        print(f"C core unavailable: {c_core.unavailable_reason()}")
    compile_s = None
    try:
        from popek.cores import jit

        t0 = time.perf_counter()
        time_run(jit.run, 100, 1, 1 << 62)  # compile (or load from the cache) once, apart from the timing
        compile_s = time.perf_counter() - t0
        cores.append(("jit", jit.run, 1 << 62))
    except ImportError as e:
        print(f"JIT core unavailable: {e}")

    rows, final = [], {}
    for name, run, budget in cores:
        best = None
        for _ in range(1 if name == "reference" else 5):
            secs, steps, state = time_run(run, args.n, args.repeat, budget)
            best = (secs, steps) if best is None or secs < best[0] else best
        secs, steps = best
        final[name] = state  # every repetition ends in the same state
        rows.append({"core": name, "steps": steps, "seconds": secs, "mips": steps / secs / 1e6,
                     "call_us": call_cost(run, 2_000 if name == "reference" else 200_000)})  # fmt: skip
    full = [st for name, st in final.items() if name != "reference"]
    assert all(np.array_equal(full[0], st) for st in full), "the cores disagree on the final state"
    assert all(st[13] == 1229 for st in full) or args.n != 10000, "wrong prime count"
    if c_core.available():  # the reference's partial run must match the C core's run of the same length
        _, _, c_part = time_run(c_core.run, args.n, args.repeat, int(final["reference"][S.STEPS]))
        assert np.array_equal(c_part, final["reference"]), "reference and C core disagree"
    ref_mips = rows[0]["mips"]
    print(f"sieve below {args.n}, {args.repeat} rounds ({int(rows[-1]['steps']):,} instructions per full run)")
    print(f"{'core':<10} {'steps':>13} {'seconds':>9} {'MIPS':>9} {'x reference':>12} {'us/call':>8}")
    for r in rows:
        x = r["mips"] / ref_mips
        print(
            f"{r['core']:<10} {r['steps']:>13,} {r['seconds']:>9.3f} {r['mips']:>9.2f} {x:>12,.0f} {r['call_us']:>8.2f}"
        )
    if compile_s is not None:
        print(f"jit warm-up (compile or cache load): {compile_s:.2f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"n": args.n, "repeat": args.repeat, "rows": rows, "jit_warmup_s": compile_s}))


if __name__ == "__main__":
    main()
