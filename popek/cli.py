"""The ``popek`` command: assemble, disassemble, run guests on the bare machine or under a monitor, host several."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from popek.cores import CORE_NAMES, CoreUnavailable, get_core
from popek.isa import state as S
from popek.isa.files import MAX_IMAGE_FILE, InputError, read_input
from popek.isa.profiles import ProfileError, load_profile
from popek.isa.spec import PSW_S, cause_name
from popek.terminal import Stream, escape_for
from popek.vmm.host import DEFAULT_CORE, DEFAULT_MEMSIZE, Host, RunResult, parse_size
from popek.vmm.process import ProcessResult
from popek.vmm.vm import VM

EXIT_LIMIT = 124  # the guest did not halt within --max-steps
EXIT_STUCK = 125  # the guest stopped in an endless wfi or the core failed


class UsageError(Exception):
    """A mistake on the command line or in an input file: printed as one line, exit status 2."""


def _input_file(path: str) -> Path:
    """The path of an input file, which must exist and be a regular file (a usage error otherwise)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: {'not a regular file' if p.exists() else 'no such file'}")
    return p


def load_program(path: str, defines: dict[str, int] | None = None) -> tuple[bytes, dict[str, int]]:
    """Read a guest: assemble a ``.s`` file, or read a flat binary image; return (image, symbols)."""
    from popek.isa.asm import assemble_file

    p = _input_file(path)
    if p.suffix.lower() in (".s", ".asm"):
        program = assemble_file(str(p), defines=defines)
        return program.image, program.symbols
    try:
        return read_input(p, MAX_IMAGE_FILE), {}
    except InputError as e:
        raise UsageError(str(e)) from None


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 seconds")
    return value


def _defines(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items or []:
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = int(value, 0) if value else 1
        except ValueError:
            raise UsageError(f"--define {item}: the value must be an integer") from None
    return out


# --- asm / disasm -------------------------------------------------------------------------------------
def cmd_asm(args: argparse.Namespace) -> int:
    """popek asm: assemble a source file into a flat image."""
    from popek.isa.asm import assemble_file

    program = assemble_file(_input_file(args.file), defines=_defines(args.define))
    out = Path(args.output or Path(args.file).with_suffix(".bin"))
    out.write_bytes(program.image)
    if args.listing:
        print(program.format_listing())
    if args.symbols:
        for name, value in sorted(program.symbols.items(), key=lambda kv: (kv[1], kv[0])):
            print(f"{value:08x} {name}")
    print(f"{out}: {len(program.image)} bytes", file=sys.stderr)
    return 0


def cmd_disasm(args: argparse.Namespace) -> int:
    """popek disasm: disassemble an image (or a source file, after assembling it)."""
    from popek.isa.disasm import disassemble

    image, symbols = load_program(args.file, _defines(args.define))
    print(disassemble(image, 0, symbols), end="")
    return 0


# --- run ------------------------------------------------------------------------------------------------
def _trace_step(vm: VM, before: np.ndarray) -> None:
    from popek.isa.disasm import disassemble_word

    after = vm.vstate
    if after[S.CYCLE] != before[S.CYCLE]:  # an instruction retired
        pc, base = int(before[S.PC]), int(before[S.BASE])
        word = int.from_bytes(vm.mem[base + pc : base + pc + 4].tobytes(), "little")
        mode = "S" if before[S.PSW] & PSW_S else "U"
        print(f"{int(before[S.CYCLE]):>10} {mode} {pc:08x}: {word:08x}  {disassemble_word(word, pc)}", file=sys.stderr)
    elif after[S.STEPS] != before[S.STEPS]:  # a trap or interrupt was taken
        cause = int(after[S.CAUSE])
        print(
            f"{'':>10} ---- trap {cause_name(cause)} ({cause}) at epc={int(after[S.EPC]):08x} "
            f"badaddr={int(after[S.BADADDR]):#x} -> {int(after[S.PC]):08x}",
            file=sys.stderr,
        )


def _print_stats(result: RunResult, wall: float, core: str) -> None:
    st = result.stats
    print(f"--- {st['monitor']}: {result.steps} steps, cycle {st['cycle']}, {wall:.3f} s", file=sys.stderr)
    exits = ", ".join(f"{k} {v}" for k, v in sorted(st["exits"].items(), key=lambda kv: -kv[1])) or "none"
    print(f"    exits: {st['total_exits']} ({exits})", file=sys.stderr)
    if st["monitor"] != "bare":
        print(
            f"    emulated {st['emulated']}, reflected {st['reflected']}, injected {st['injected']}, "
            f"time in monitor {st['monitor_seconds']:.3f} s",
            file=sys.stderr,
        )
    extra = {k: v for k, v in st.items() if k not in _BASE_STATS}
    if extra:
        print("    " + ", ".join(f"{k} {v}" for k, v in extra.items()), file=sys.stderr)
    if core == "dbt":  # translation apart from running: what it cost and how much translated code ran
        from popek.cores import dbt

        print(f"    translating core: {dbt.stats_line()}", file=sys.stderr)


_BASE_STATS = {"monitor", "cycle", "exits", "total_exits", "emulated", "reflected", "injected", "monitor_seconds"}


def run_guest(args: argparse.Namespace) -> RunResult:
    """Run one guest as the ``run`` options say, on the bare machine or under a monitor."""
    from popek.vmm.host import GuestSpec, Host

    image, _ = load_program(args.file, _defines(args.define))
    console_input = args.input.encode() if args.input else b""
    if (args.save_at is None) != (args.snapshot is None):
        raise UsageError("--save-at and --snapshot go together: the step to stop at and the file to write")
    if args.trace and args.monitor != "bare":
        raise UsageError("--trace is available on the bare machine (--monitor bare)")
    spec = GuestSpec(Path(args.file).stem, image, args.monitor, args.profile, parse_size(args.mem), console_input)
    host = Host([spec], args.core)
    if args.trace:
        host.monitors[0].on_step = _trace_step
    if not args.json:  # the guest's output appears as it is produced, not at the end
        host.vms[0].console.output.sink = Stream(sys.stdout)
    if args.save_at is None:
        return host.run(args.max_steps, timeout=args.timeout)[0]
    return _run_and_save(args, host)


def _run_and_save(args: argparse.Namespace, host: Host) -> RunResult:
    """Run to step --save-at (or until the guest stops first), then write the snapshot and stop."""
    from popek.vmm import snapshot

    result = host.run(args.save_at, timeout=args.timeout)[0]
    size = snapshot.save(host, args.snapshot)
    print(f"popek: saved step {result.steps} to {args.snapshot} ({size:,} bytes)", file=sys.stderr)
    if result.exit == "limit":  # stopped for the snapshot, as asked: not a failure
        result.exit, result.message = "saved", ""
    return result


def _show_run(args: argparse.Namespace, result: RunResult | ProcessResult, streamed: bool = False) -> None:
    """Print what a run wrote (or its JSON object), then why it stopped when it did not end on its own."""
    if args.json:
        print(json.dumps(result.to_json()))
    elif streamed:
        sys.stdout.flush()  # written while the guest ran
    else:
        sys.stdout.write(escape_for(sys.stdout, result.console))
        sys.stdout.flush()
    if result.message:
        print(f"popek: {result.message}", file=sys.stderr)


def run_process_cmd(args: argparse.Namespace) -> int:
    """popek run --process: run a user-mode program, its system calls served by the host (docs/abi.md)."""
    from popek.vmm.process import run_process

    if args.monitor != "bare" or args.trace:
        raise UsageError("--process runs a user program with no kernel: it takes no --monitor or --trace")
    image, _ = load_program(args.file, _defines(args.define))
    console_input = args.input.encode() if args.input else b""
    result = run_process(image, parse_size(args.mem), args.core, console_input, args.max_steps, profile=args.profile)
    _show_run(args, result)
    if args.stats:
        calls = ", ".join(f"{k} {v}" for k, v in sorted(result.syscalls.items())) or "none"
        print(f"--- process: {result.steps} instructions, clock {result.clock}; system calls: {calls}", file=sys.stderr)
    return EXIT_LIMIT if result.exit == "limit" else result.status & 0xFF


def cmd_run(args: argparse.Namespace) -> int:
    """popek run: run a guest to halt and exit with its status."""
    if args.process:
        return run_process_cmd(args)
    t0 = time.perf_counter()
    result = run_guest(args)
    wall = time.perf_counter() - t0
    _show_run(args, result, streamed=not args.json)
    if args.stats:
        _print_stats(result, wall, args.core)
    return _exit_status(result)


def _exit_status(result: RunResult) -> int:
    """``popek run``'s exit status for a result: the guest's own, or why it did not halt."""
    if result.halted:
        return result.status
    if result.exit == "saved":
        return 0
    return EXIT_LIMIT if result.exit in ("limit", "timeout") else EXIT_STUCK


def cmd_resume(args: argparse.Namespace) -> int:
    """popek resume: continue a saved guest as ``popek run`` would have, with its output and exit status."""
    from popek.vmm import snapshot

    snap = snapshot.read(_input_file(args.file))
    if args.image is not None:
        snapshot.check(snap, image=load_program(args.image, _defines(args.define))[0])
    snapshot.check(snap, profile=args.profile)
    t0 = time.perf_counter()
    host = snapshot.restore(snap, args.core, args.monitor)
    if not args.json:  # only what the guest writes from here on: the earlier output was shown when it ran
        host.vms[0].console.output.sink = Stream(sys.stdout)
    result = host.run(args.max_steps, timeout=args.timeout)[0]
    wall = time.perf_counter() - t0
    _show_run(args, result, streamed=not args.json)
    if args.stats:
        _print_stats(result, wall, args.core)
    return _exit_status(result)


# --- host -----------------------------------------------------------------------------------------------
def cmd_host(args: argparse.Namespace) -> int:
    """popek host: run several guests at once, each in its own VM."""
    from popek.vmm.host import GuestSpec, Host

    specs, names = [], []
    for i, item in enumerate(args.guests):
        path, monitor, profile = (item.split(":") + ["", ""])[:3]
        name = f"{Path(path).stem}-{i + 1}" if len(args.guests) > 1 else Path(path).stem
        image, _ = load_program(path, _defines(args.define))
        specs.append(GuestSpec(name, image, monitor or "trap", profile or None, parse_size(args.mem)))
        names.append(name)
    host = Host(specs, args.core)
    width = max(len(n) for n in names)
    streams = []
    if not args.json:  # each VM's lines appear as it writes them, prefixed with its name and escaped
        for name, vm in zip(names, host.vms, strict=True):
            vm.console.output.sink = stream = Stream(sys.stdout, prefix=f"{name:<{width}} | ", always_escape=True)
            streams.append(stream)
    results = host.run(args.max_steps, args.slice, timeout=args.timeout)
    if args.json:
        print(json.dumps({n: r.to_json() for n, r in zip(names, results, strict=True)}))
    else:
        for stream in streams:
            stream.close()
        _print_host_table(names, results)
    return 0 if all(r.halted for r in results) else 1


def _print_host_table(names: list[str], results: list[RunResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="VMs")
    for col in ("vm", "monitor", "exit", "status", "guest steps", "exits", "emulated", "reflected", "injected"):
        table.add_column(col, justify="left" if col in ("vm", "monitor", "exit") else "right")
    for name, r in zip(names, results, strict=True):
        st = r.stats
        table.add_row(name, st["monitor"], r.exit, str(r.status), str(r.steps), str(st["total_exits"]),
                      str(st["emulated"]), str(st["reflected"]), str(st["injected"]))  # fmt: skip
    Console(stderr=True).print(table)


# --- check ----------------------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    """popek check: the Popek-Goldberg verdicts for a profile, with a witness program per violation."""
    from popek.vmm import checker

    return checker.main(args.profile, as_json=args.json, programs=args.programs, core=args.core)


# --- demo -----------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    """popek demo: a short tour on the bundled programs."""
    from popek.vmm import demo

    return demo.tour(core=args.core)


# --- serve ----------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    """popek serve: an HTTP front-end for a cluster of guest servers (docs/serve.md)."""
    from popek.vmm import serve

    config = serve.build_config(args.config, args.vms, host=args.host, port=args.port, policy=args.policy,
                                admin_token=args.admin_token, core=args.core)  # fmt: skip
    get_core(config.core)  # a core that is missing is reported before anything boots
    if config.core == "jit" and args.core is None:
        _load_jit_core()
    return serve.serve_forever(config)


def cmd_migrate(args: argparse.Namespace) -> int:
    """popek migrate: move a serving VM from one popek serve to another, live (docs/serve.md)."""
    from popek.vmm.serve import migrate

    report = migrate.request_move(args.source, args.vm, args.target, args.admin_token)
    print(json.dumps(report) if args.json else migrate.format_report(report))
    return 0


# --- bench ----------------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    """popek bench: the benchmark study, written as JSON, a markdown report and PNG plots (docs/study/)."""
    from popek.vmm.bench import study

    flags = ["--quick"] * args.quick + [f"--out {args.out}"] * bool(args.out)
    flags += [f"--monitor {m}" for m in args.monitor or []] + [f"--workload {w}" for w in args.workload or []]
    return study.main(args.quick, args.out, args.monitor, args.workload, " ".join(["popek bench", *flags]))


# --- main -----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``popek``."""
    from popek.vmm.monitors import MONITORS

    p = argparse.ArgumentParser(prog="popek", description="A laboratory for machine virtualization on P32.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-D", "--define", action="append", metavar="NAME=VALUE", help="predefine an assembler symbol")

    a = sub.add_parser("asm", help="assemble a source file")
    a.add_argument("file")
    a.add_argument("-o", "--output", help="output image (default: FILE.bin)")
    a.add_argument("--listing", action="store_true", help="print address, word and source line")
    a.add_argument("--symbols", action="store_true", help="print the symbol table")
    common(a)
    a.set_defaults(fn=cmd_asm)

    d = sub.add_parser("disasm", help="disassemble an image or a source file")
    d.add_argument("file")
    common(d)
    d.set_defaults(fn=cmd_disasm)

    def machine_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--core", default=DEFAULT_CORE, choices=CORE_NAMES, help=f"default {DEFAULT_CORE}")
        sp.add_argument("--mem", default=str(DEFAULT_MEMSIZE), help="memory size per machine: 65536, 64K, 4M...")
        sp.add_argument("--max-steps", type=_positive, default=100_000_000, help="stop a guest after this many steps")
        sp.add_argument("--timeout", type=_seconds, default=None, help="stop after this many seconds of wall time")
        common(sp)

    monitors = "\n".join(f"  {name:<12} {m.description}" for name, m in MONITORS.items())
    r = sub.add_parser(
        "run",
        help="run a guest program",
        epilog=f"monitors:\n{monitors}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("file")
    r.add_argument("--profile", default="classic", help="classic, x86like or a profile .toml file")
    r.add_argument("--monitor", default="bare", choices=list(MONITORS), help="bare machine or a monitor")
    r.add_argument("--trace", action="store_true", help="print each instruction and trap (bare machine)")
    r.add_argument("--stats", action="store_true", help="print statistics to stderr")
    r.add_argument("--json", action="store_true", help="print one JSON object instead of the console")
    r.add_argument("--input", help="bytes for the console to read")
    r.add_argument("--process", action="store_true", help="run FILE as a user process, served by the host")
    r.add_argument("--save-at", type=_positive, metavar="N", help="stop after N steps and save a snapshot")
    r.add_argument("--snapshot", metavar="FILE", help="where --save-at writes the snapshot")
    machine_options(r)
    r.set_defaults(fn=cmd_run)

    rs = sub.add_parser("resume", help="continue a guest from a snapshot (popek run --save-at N --snapshot FILE)")
    rs.add_argument("file", metavar="SNAPSHOT")
    rs.add_argument("--core", default=DEFAULT_CORE, choices=CORE_NAMES, help=f"default {DEFAULT_CORE}")
    rs.add_argument("--monitor", choices=list(MONITORS), help="default: the monitor it was saved under")
    rs.add_argument("--profile", default=None, help="refuse the snapshot unless it was taken under this profile")
    rs.add_argument("--image", metavar="PROGRAM", help="refuse the snapshot unless it was taken of this program")
    rs.add_argument("--max-steps", type=_positive, default=100_000_000, help="stop after this many more steps")
    rs.add_argument("--timeout", type=_seconds, default=None, help="stop after this many seconds of wall time")
    rs.add_argument("--stats", action="store_true", help="print statistics to stderr")
    rs.add_argument("--json", action="store_true", help="print one JSON object (the whole transcript)")
    common(rs)
    rs.set_defaults(fn=cmd_resume)

    h = sub.add_parser("host", help="run several guests at once, GUEST[:MONITOR[:PROFILE]] each")
    h.add_argument("guests", nargs="+", metavar="GUEST[:MONITOR[:PROFILE]]")
    h.add_argument("--slice", type=_positive, default=100_000, help="guest steps per scheduling slice")
    h.add_argument("--json", action="store_true", help="print one JSON object keyed by VM name")
    machine_options(h)
    h.set_defaults(fn=cmd_host)

    c = sub.add_parser("check", help="decide Popek-Goldberg's Theorems 1 and 3 for a profile, with witnesses")
    c.add_argument("--profile", default="classic", help="classic, x86like or a profile .toml file")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--programs", action="store_true", help="print the source of every witness")
    c.add_argument("--core", default="reference", choices=CORE_NAMES, help="core that runs the witnesses")
    c.set_defaults(fn=cmd_check)

    sv = sub.add_parser("serve", help="serve HTTP from a cluster of guest servers, SERVICE=GUEST[:MONITOR[:PROFILE]]")
    sv.add_argument(
        "vms",
        nargs="*",
        metavar="SERVICE=GUEST[:MONITOR[:PROFILE]]",
        help="the VMs (default: a cluster of six); e.g. compute=concurrent:pv kv.1=iterative:trap",
    )
    sv.add_argument("--port", type=int, help="TCP port (default 8023; 0 picks a free one)")
    sv.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--policy", choices=["round-robin", "least-outstanding", "content"], help="default content")
    sv.add_argument("--admin-token", help="token for /admin (default: generated and printed)")
    sv.add_argument("--config", metavar="FILE.toml", help="settings and VMs from a TOML file")
    sv.add_argument("--core", choices=CORE_NAMES, help=f"core of every VM (default {DEFAULT_CORE})")
    sv.set_defaults(fn=cmd_serve)

    mg = sub.add_parser("migrate", help="move a serving VM live from one popek serve to another")
    mg.add_argument("vm", metavar="VM", help="the VM id (as in /status)")
    mg.add_argument("--from", dest="source", required=True, metavar="URL", help="the front-end it runs on now")
    mg.add_argument("--to", dest="target", required=True, metavar="URL", help="the front-end to move it to")
    mg.add_argument("--admin-token", required=True, help="the admin token (the same on both front-ends)")
    mg.add_argument("--json", action="store_true", help="print the report as one JSON object")
    mg.set_defaults(fn=cmd_migrate)

    b = sub.add_parser("bench", help="the benchmark study: every monitor against bare and the published figures")
    b.add_argument("--quick", action="store_true", help="a short run (about a minute), for a smoke test")
    b.add_argument("--out", help="folder for study.json, report.md and the plots (default benchmarks/results/study)")
    b.add_argument("--monitor", action="append", choices=list(MONITORS), help="a monitor to measure (repeatable)")
    b.add_argument("--workload", action="append", help="a nano- or macrobenchmark to run (repeatable)")
    b.set_defaults(fn=cmd_bench)

    de = sub.add_parser("demo", help="a short tour on bundled programs")
    de.add_argument("--core", default=DEFAULT_CORE, choices=CORE_NAMES)
    de.set_defaults(fn=cmd_demo)
    return p


def _load_jit_core() -> None:
    """Compile the JIT core, or load it from the cache; say so when it takes long (the first run only)."""
    from popek.cores import jit

    note = threading.Timer(1.5, print, ["popek: compiling the JIT core (once: later runs load it from a cache)"],
                           {"file": sys.stderr, "flush": True})  # fmt: skip
    note.daemon = True
    note.start()
    try:
        jit.warmup()
    finally:
        note.cancel()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``popek`` command."""
    argv = sys.argv[1:] if argv is None else argv
    as_json = "--json" in argv  # then stdout carries one JSON object, errors included
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage error on stderr
        if as_json and e.code:
            print(json.dumps({"exit": "usage", "error": "usage error (see stderr)", "status": e.code}))
        raise
    code, message = _dispatch(args)
    if message is not None:
        print(message, file=sys.stderr)
        if as_json:
            print(json.dumps({"exit": "error", "error": message.removeprefix("popek: error: "), "status": code}))
    return code


def _dispatch(args: argparse.Namespace) -> tuple[int, str | None]:
    """Run the subcommand; return its exit status and, for a failure, the message to show instead of a traceback."""
    from popek.isa.asm import AsmError

    try:
        if getattr(args, "profile", None):
            load_profile(args.profile)  # report a bad profile before anything runs
        if getattr(args, "core", None) == "jit":
            _load_jit_core()
        return args.fn(args), None
    except AsmError as e:
        return 1, str(e)
    except (UsageError, ProfileError, CoreUnavailable, ValueError) as e:
        return 2, f"popek: error: {e}"
    except BrokenPipeError:
        return 0, None
    except MemoryError:  # a guest memory or an input larger than this machine can hold
        return 2, "popek: error: out of memory (try a smaller --mem, fewer guests or a smaller input)"
    except OSError as e:  # an input that cannot be read, an output that cannot be written
        return 2, f"popek: error: {e.filename or ''}: {e.strerror or e}"
    except KeyboardInterrupt:
        return 130, "popek: interrupted"


if __name__ == "__main__":
    sys.exit(main())
