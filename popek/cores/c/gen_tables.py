"""Write p32_tables.h, the C core's constants and decode tables, from popek/isa/spec.py and popek/isa/state.py.

    python popek/cores/c/gen_tables.py [OUTPUT]

build_core.py runs it before every build of the C core, so the header is never kept by hand and never checked
in: a constant or an instruction changed in Python reaches C at the next build. The header holds every integer
constant of state.py and spec.py as ``P32_<NAME>``, the profile-key indices (``P32_K_*``), the opcodes
(``P32_OP_*`` and the ``P32_OPS(X)`` list that drives a dispatch table) and the per-opcode tables that decode a
system instruction. ``opcode_tables`` is also what the JIT core decodes with, so both cores read one derivation.

It imports only popek.isa (and numpy, through state.py), so it runs in the build environment.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

if __name__ == "__main__" and not __package__:  # run as a script: import popek from this tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from popek.isa import spec, state

HEADER = Path(__file__).resolve().with_name("p32_tables.h")
NO_KEY = -1  # profile_key of an opcode that is not a system instruction with a profile key


def _int_constants(module: ModuleType) -> dict[str, int]:
    """The module's upper-case integer names, in the order the module defines them."""
    return {n: v for n, v in vars(module).items() if n.isupper() and not n.startswith("_") and type(v) is int}


def _state_constants() -> dict[str, int]:
    """state.py's own constants: not those it imports from spec.py (emitted with spec's)."""
    spec_ints = _int_constants(spec)
    ours = {}
    for name, value in _int_constants(state).items():
        if name not in spec_ints:
            ours[name] = value
        elif spec_ints[name] != value:
            raise ValueError(f"state.{name} = {value} but spec.{name} = {spec_ints[name]}")
    return ours


def _first_cr_key(group: str) -> int:
    """The index of ``<group>.<CR 0>`` in spec.PROFILE_KEYS; the other CRs' keys must follow in CR order."""
    first = spec.PROFILE_INDEX[f"{group}.{spec.CR_NAMES[0]}"]
    if any(spec.PROFILE_INDEX.get(f"{group}.{name}") != first + n for n, name in enumerate(spec.CR_NAMES)):
        raise ValueError(f"the profile keys {group}.<cr> are not in control-register order")
    return first


def _profile_key_constants() -> dict[str, int]:
    """``K_<KEY>`` per profile key; for keys per control register (``mfcr.psw``...), the key of CR 0."""
    out: dict[str, int] = {}
    for index, key in enumerate(spec.PROFILE_KEYS):
        group, _, cr = key.partition(".")
        if not cr:
            out[f"K_{key.upper()}"] = index
        elif f"K_{group.upper()}" not in out:
            out[f"K_{group.upper()}"] = _first_cr_key(group)
    out["NUM_PROFILE_KEYS"] = len(spec.PROFILE_KEYS)
    return out


def _opcode_constants() -> dict[str, int]:
    return {f"OP_{insn.mnemonic.upper()}": insn.opcode for insn in spec.INSNS}


# The compiled VM-exit loop of the direct-execution monitors (popek/cores/vmexit.py for the JIT core,
# p32_run_vm in core.c for the C core): what it returns, and the counters it fills for the monitor.
VM_LOOP = {
    "VMX_BUDGET": 0,  # the budget is spent
    "VMX_HALT": 1,  # the guest halted on the core (its status is in the virtual CPU)
    "VMX_CORE": 2,  # the core exited for the monitor with the code in CNT_CODE (rstate as the core left it)
    "VMX_VIRTUAL": 3,  # a step of the virtual CPU stopped with the code in CNT_CODE (port I/O, halt, idle)
    "VMX_SUPERVISOR": 4,  # hybrid: the guest is in virtual supervisor mode, for the monitor to interpret
    "VMX_INTERPRET": 5,  # rewrite: code to run from the copy has a base not a multiple of 4 (for the monitor)
    "VMX_CALLOUT": 6,  # rewrite: a callout's step stopped as VMX_VIRTUAL; the batch may go on until CNT_BATCH_END
    "VM_TRAP": 0,  # modes of the loop: trap-and-emulate,
    "VM_HYBRID": 1,  # the hybrid monitor (virtual supervisor mode interpreted),
    "VM_REWRITE": 2,  # binary rewriting (the guest kernel runs from the shadow copy),
    "VM_REWRITE_USER": 3,  # binary rewriting with user code from the copy as well
    "CNT_CAUSE": 0,  # EXIT_TRAP exits by cause: CNT_CAUSE + cause (causes above CNT_CAUSES - 1 share the last)
    "CNT_CAUSES": 32,
    "CNT_TIMER": 32,  # virtual timer expiries the core stopped for
    "CNT_EMULATED": 33,  # guest steps run in software on the virtual CPU
    "CNT_REFLECTED": 34,  # traps reflected into the guest kernel
    "CNT_INJECTED": 35,  # virtual interrupts delivered
    "CNT_CODE": 36,  # with VMX_CORE, VMX_VIRTUAL and VMX_CALLOUT: the exit code to finish
    "CNT_CONSOLE": 37,  # console bytes written into the buffer (the monitor appends them to the console)
    "CNT_CALLOUTS": 38,  # rewrite: callout exits
    "CNT_BATCHED": 39,  # rewrite: callouts performed in the exit of the one before (callouts_batched)
    "CNT_BATCH_END": 40,  # with VMX_CALLOUT: the guest step count at which the batch of callouts must end
    "CNT_CALLOUT_OTHER": 41,  # rewrite: callouts of a word that names no instruction (callout.other)
    "CNT_CALLOUT_OP": 48,  # callouts of an instruction by its opcode: CNT_CALLOUT_OP + opcode - CALLOUT_OP0
    "CALLOUT_OP0": 0x40,  # the first opcode counted so (the system instructions lie in 0x40-0x5F)
    "CNT_CALLOUT_CR": 80,  # mfcr by CR at CNT_CALLOUT_CR + cr, mtcr at CNT_CALLOUT_CR + 16 + cr
    "NCOUNTERS": 112,
}


def constants() -> dict[str, int]:
    """Every constant the header defines, by its C name (``P32_...``), in header order."""
    out: dict[str, int] = {}
    for group in (_state_constants(), _int_constants(spec), _profile_key_constants(), _opcode_constants(), VM_LOOP):
        for name, value in group.items():
            if f"P32_{name}" in out:
                raise ValueError(f"P32_{name} is defined twice")
            out[f"P32_{name}"] = value
    return out


def has_cr_operand(insn: spec.Insn) -> bool:
    """True when the instruction's immediate names a control register (an unknown one is ILLEGAL)."""
    return "cr" in insn.operands.split(",")


def opcode_tables() -> dict[str, list[int]]:
    """Per opcode (256 entries each), what decoding a word with that opcode needs.

    ``must_be_zero``: the bits that make the word ILLEGAL when set (0 for an unknown opcode); ``profile_key``:
    the index in spec.PROFILE_KEYS of the key that decides the instruction in user mode, or NO_KEY (for an
    instruction with a control-register operand, the key of CR 0: add the CR); ``cr_operand``: 1 when the
    immediate names a control register.
    """
    tables = {"must_be_zero": [0] * 256, "profile_key": [NO_KEY] * 256, "cr_operand": [0] * 256}
    for insn in spec.INSNS:
        op = insn.opcode
        tables["must_be_zero"][op] = spec.MUST_BE_ZERO.get(insn.operands, 0)
        tables["cr_operand"][op] = int(has_cr_operand(insn))
        if insn.profile_key is not None:
            key = insn.profile_key
            tables["profile_key"][op] = _first_cr_key(key) if has_cr_operand(insn) else spec.PROFILE_INDEX[key]
    return tables


# The C type of each table, and what it says (the C name is p32_<name>).
TABLE_TYPES = {"must_be_zero": "uint32_t", "profile_key": "int8_t", "cr_operand": "uint8_t"}
_TABLE_DOCS = {
    "must_be_zero": "bits that make a word with this opcode ILLEGAL (stray bits in unused fields)",
    "profile_key": "the profile key that decides a system instruction in user mode, or -1\n"
    " * (mfcr, mtcr: the key of CR 0; add the CR)",
    "cr_operand": "1 when the immediate names a control register (ILLEGAL when >= P32_NUM_CRS)",
}


def cdef() -> str:
    """The cffi declarations of everything in the header, so the extension exposes it for the tests."""
    lines = [f"#define {name} ..." for name in constants()]
    lines += [f"static const {ctype} p32_{name}[256];" for name, ctype in TABLE_TYPES.items()]
    return "\n".join(lines) + "\n"


def _defines(values: dict[str, int], hexadecimal: bool = False) -> list[str]:
    lines = []
    for name, value in values.items():
        text = f"{value:#04x}" if hexadecimal else str(value)
        if value > 0x7FFFFFFF:
            text += "u"  # a 32-bit mask: unsigned, as the core computes with it
        lines.append(f"#define P32_{name} {text}")
    return lines


def _table(name: str, values: list[int]) -> list[str]:
    ctype = TABLE_TYPES[name]
    cells = [f"{v:#x}" if ctype == "uint32_t" and v else str(v) for v in values]
    rows = [", ".join(cells[i : i + 16]) for i in range(0, len(cells), 16)]
    body = ",\n".join(f"    /* {i * 16:#04x} */ {row}" for i, row in enumerate(rows))
    return [f"/* Per opcode: {_TABLE_DOCS[name]}. */", f"static const {ctype} p32_{name}[256] = {{", body, "};"]


def header_text() -> str:
    """The contents of p32_tables.h."""
    constants()  # refuse a name defined twice before writing anything
    entries = [f"X(P32_OP_{i.mnemonic.upper()}, {i.mnemonic.upper()})" for i in spec.INSNS]
    ops = " \\\n    ".join(" ".join(entries[i : i + 5]) for i in range(0, len(entries), 5))
    lines = [
        "/* p32_tables.h: generated by popek/cores/c/gen_tables.py from popek/isa/spec.py and popek/isa/state.py",
        " * when the C core is built.  DO NOT MODIFY: change those files (or the generator) and rebuild. */",
        "#ifndef P32_TABLES_H",
        "#define P32_TABLES_H",
        "",
        "#include <stdint.h>",
        "",
        "/* popek/isa/state.py: state slots, host flags, exit codes, binary-rewriting and paravirtual support. */",
        *_defines(_state_constants()),
        "",
        "/* popek/isa/spec.py: control registers, psw bits, trap causes, profile behaviours. */",
        *_defines(_int_constants(spec)),
        "",
        "/* Profile keys (spec.PROFILE_KEYS): the behaviour for key k is at P32_PROFILE + k. */",
        *_defines(_profile_key_constants()),
        "",
        "/* Opcodes (spec.INSNS). */",
        *_defines(_opcode_constants(), hexadecimal=True),
        "",
        "/* The VM-exit loop of the direct-execution monitors (gen_tables.VM_LOOP): results and counters. */",
        *_defines(VM_LOOP),
        "",
        "/* Every instruction, as X(opcode, NAME), in table order. */",
        f"#define P32_OPS(X) \\\n    {ops}",
        "",
    ]
    for name, values in opcode_tables().items():
        lines += [*_table(name, values), ""]
    lines.append("#endif")
    return "\n".join(lines) + "\n"


def write_header(path: Path = HEADER) -> bool:
    """Write the header at ``path`` unless it already holds exactly that; True if it wrote.

    An unchanged file keeps its time stamp, so the build does not recompile the core for nothing.
    """
    text = header_text()
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    path.write_text(text, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: write the header (to OUTPUT, default beside this file)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or args[:1] in (["-h"], ["--help"]):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        raise SystemExit(2)
    path = Path(args[0]) if args else HEADER
    print(f"{path}: {'written' if write_header(path) else 'up to date'}")


if __name__ == "__main__":
    main()
