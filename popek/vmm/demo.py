"""``popek demo``: a short tour of the laboratory on the bundled guests."""

from __future__ import annotations

import time
import zlib

from rich.console import Console
from rich.table import Table

from popek import guests
from popek.cores import CoreUnavailable, get_core
from popek.isa.asm import assemble_file
from popek.vmm.checker import classify
from popek.vmm.host import GuestSpec, Host, RunResult
from popek.vmm.monitors import STRATEGIES

GUESTS = guests.DIR
out = Console()


def _image(rel: str, **defines: int) -> bytes:
    return assemble_file(str(GUESTS / rel), defines=defines or None).image


def _under(image: bytes, monitor: str, core: str, profile: str = "classic") -> tuple[RunResult, float]:
    """Run ``image`` under ``monitor``; return its result and the wall time of the run alone (not the set-up)."""
    host = Host([GuestSpec("guest", image, monitor, profile)], core)
    t0 = time.perf_counter()
    result = host.run()[0]
    return result, time.perf_counter() - t0


def _bare(image: bytes, core: str = "jit", profile: str = "classic") -> tuple[RunResult, float]:
    return _under(image, "bare", core, profile)


def tour(core: str = "jit") -> int:
    """Run the tour; return 0 when every comparison came out as the theory predicts."""
    ok = True
    out.rule("[bold]1. A bare P32 machine")
    out.print("$ popek run guests/programs/hello.s")
    result, _ = _bare(_image("programs/hello.s"), core)
    out.print(result.console, end="", markup=False)

    out.rule("[bold]2. Three cores, one machine: the prime sieve below 10000")
    get_core(core)  # compile before timing
    table = Table("core", "console", "steps", "seconds", "MIPS")
    image = _image("programs/primes.s")
    for name in ("reference", "jit", "c"):
        try:
            get_core(name)
        except (CoreUnavailable, ImportError) as e:
            table.add_row(name, f"unavailable: {e}", "", "", "")
            continue
        _bare(image, name)  # warm up (JIT compilation, caches)
        result, secs = _bare(image, name)
        mips = f"{result.steps / secs / 1e6:.1f}"
        table.add_row(name, result.console.strip(), str(result.steps), f"{secs:.4f}", mips)
    out.print(table)

    out.rule("[bold]3. One guest kernel, every monitor")
    kernel = _image("kernel/kernel.s")
    pv_kernel = _image("kernel/kernel.s", PARAVIRT=1)  # the same source on the paravirtual HAL
    bare, _ = _bare(kernel, core)
    # Times come from a longer run of the same kernel (200 rounds per task, about 2 million instructions), the
    # best of three after a warm-up: the short run above takes a tenth of a millisecond, mostly set-up.
    long_kernel = {
        False: _image("kernel/kernel.s", ROUNDS=200),
        True: _image("kernel/kernel.s", PARAVIRT=1, ROUNDS=200),
    }

    def timed(monitor: str) -> float:
        image = long_kernel[monitor == "pv"]
        _under(image, monitor, core)
        return min(_under(image, monitor, core)[1] for _ in range(3))

    bare_secs = timed("bare")
    table = Table("monitor", "guest", "same task output as bare", "status", "guest steps", "exits", "x bare time")
    table.add_row("bare", "native", "-", str(bare.status), str(bare.steps), "-", "1.0")
    for name in STRATEGIES[1:]:
        pv = name == "pv"
        result, _ = _under(pv_kernel if pv else kernel, name, core)
        secs = timed(name)
        same = _task_lines(result.console) == _task_lines(bare.console) and result.status == bare.status
        ok &= same and (pv or result.console == bare.console)
        exits = "-" if name == "full" else str(result.stats["total_exits"])  # full never runs the guest on the core
        table.add_row(name, "paravirtual" if pv else "native", "yes" if same else "[red]NO", str(result.status),
                      str(result.steps), exits, f"{secs / bare_secs:.2f}")  # fmt: skip
    out.print(table)
    out.print("x bare time: the same kernel with 200 rounds per task, best of three runs after a warm-up.")
    out.print("The kernel's transcript on the bare machine:")
    out.print(bare.console, end="", markup=False, highlight=False)

    out.rule("[bold]4. Why x86like defeats trap-and-emulate")
    whoami = _image("demos/whoami.s")
    for profile in ("classic", "x86like"):
        runs = [("bare", _bare(whoami, core, profile)[0])]
        runs += [(m, _under(whoami, m, core, profile)[0]) for m in ("trap", "rewrite")]
        for label, result in runs:
            out.print(f"  {profile:8} {label:8} {result.console.strip()}", markup=False)
    out.print("On x86like getpsw does not trap, so the deprivileged kernel sees that it runs in user mode;")
    out.print("the rewriting monitor replaced that getpsw before the kernel ran it.")

    out.rule("[bold]5. The Popek-Goldberg checker")
    for profile in ("classic", "x86like"):
        report = classify(profile)
        th1 = "holds" if report.theorem1 else "fails: " + ", ".join(r.form.name for r in report.violations(1))
        th3 = "holds" if report.theorem3 else "fails: " + ", ".join(r.form.name for r in report.violations(3))
        out.print(f"  {profile:8} Theorem 1 (trap-and-emulate) {th1}; Theorem 3 (hybrid) {th3}", markup=False)
    out.print("`popek check --profile x86like` runs a witness program for each violation.")

    out.rule("[bold]6. Three VMs on one host")
    specs = [GuestSpec("kernel", kernel, "trap"), GuestSpec("spinner", _image("demos/spin.s"), "trap"),
             GuestSpec("snoop", _image("demos/snoop.s"), "full")]  # fmt: skip
    host = Host(specs, core)
    results = host.run(max_steps=3_000_000)
    for spec, result in zip(specs, results, strict=True):
        last = result.console.strip().splitlines()[-1] if result.console.strip() else "(no output)"
        out.print(f"  {spec.name:8} {result.exit:6} {result.steps:>9} steps  {last}", markup=False)
    ok &= results[0].console == bare.console
    out.print("The spinning guest is preempted by the host's budget; the snooping guest faults inside itself only.")

    ok &= _servers(core)
    return 0 if ok else 1


SERVER_MEM = 4 << 20
REQUESTS = [(7, b"hello, P32"), (32, b"123456789"), (33, b"100000"), (34, b"PUT colour\nblue"), (34, b"GET colour"),
            (35, b"alice"), (35, b"alice"), (53, b"kv")]  # fmt: skip


def _servers(core: str) -> bool:
    """Part 7: two server kernels on one host, native under trap and paravirtual under pv, serve requests."""
    out.rule("[bold]7. Guest kernels that serve requests")
    specs = [GuestSpec("iterative", _image("servers/server.s"), "trap", "classic", SERVER_MEM),
             GuestSpec("concurrent", _image("servers/server.s", CONCURRENT=1, PARAVIRT=1), "pv", "classic",
                       SERVER_MEM)]  # fmt: skip
    host = Host(specs, core)
    host.run()  # both boot, then wait for the card
    tags = {s.name: [host.send(s.name, port, payload) for port, payload in REQUESTS] for s in specs}
    host.run()
    replies = {s.name: {m.tag: m.payload for m in host.replies(s.name)} for s in specs}
    table = Table("port", "request", *(f"{s.name} ({s.monitor})" for s in specs))
    same = True
    for i, (port, payload) in enumerate(REQUESTS):
        answers = [replies[s.name].get(tags[s.name][i], b"(none)") for s in specs]
        same &= answers[0] == answers[1]
        table.add_row(str(port), _show(payload), *(_show(a) for a in answers))
    out.print(table)
    ok = same and replies["iterative"][tags["iterative"][1]] == b"%08x" % zlib.crc32(b"123456789")

    long_tags = [host.send(s.name, 33, b"5000000") for s in specs]  # a long request on each, then an urgent one
    host.run(max_steps=max(host.steps) + 200_000)
    status = [host.send(s.name, 0, b"status", urgent=True) for s in specs]
    host.run(max_steps=max(host.steps) + 100_000)
    for s, tag, long_tag in zip(specs, status, long_tags, strict=True):
        got = {m.tag: m.payload for m in host.replies(s.name)}
        out.print(f"  {s.name:10} urgent status during primes 5000000 (tag {long_tag}): {_show(got.get(tag, b''))}")
        ok &= str(long_tag).encode() in got.get(tag, b"")
    host.run()
    out.print("Same replies from both kernels; the urgent request is answered while the long one runs.")
    out.print("Formats and designs: guests/servers/README.md.")
    return ok


def _show(data: bytes) -> str:
    """A message as printable text."""
    return data.decode("utf-8", errors="replace").replace("\n", "\\n")


def _task_lines(console: str) -> dict[str, list[str]]:
    """Each task's own lines (``[1] ...``), in order: what must not change when only interleaving may."""
    lines: dict[str, list[str]] = {}
    for line in console.splitlines():
        if line.startswith("[") and "]" in line:
            lines.setdefault(line[: line.index("]") + 1], []).append(line)
    lines.pop("[kernel]", None)  # the kernel's own summary counts ticks, which interleaving changes
    return lines
