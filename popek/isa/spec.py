"""The P32 instruction table: the one source of truth for encoding, assembly, disassembly and profiles.

Each row names an instruction, its opcode, its encoding format, the operand syntax the assembler accepts
and the disassembler prints, its class, and (for system instructions) the profile key that says what it
does in user mode.  The cores' semantics live in ``popek/cores``; everything else is generated from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

# Encoding formats (ISA §3).
FMT_R = "R"  # a=bits 23-20, b=19-16, c=15-12, bits 11-0 zero
FMT_I = "I"  # a, b, imm16
FMT_J = "J"  # a, off20
FMT_N = "N"  # no operands: bits 23-0 zero

# Operand syntaxes.  Each maps assembly operands onto encoding fields:
#   "rd,rs1,rs2"  R: a=rd b=rs1 c=rs2
#   "rd,imm"      I: a=rd imm (b must be 0)              -- lui
#   "rd,rs1,imm"  I: a=rd b=rs1 imm                      -- addi andi ... sltiu
#   "rd,mem"      I: a=rd b=rs1 imm, written imm(rs1)    -- ld ldb ldbu jalr
#   "rs,mem"      I: a=rs b=rs1 imm, written imm(rs1)    -- st stb
#   "rs1,rs2,br"  I: a=rs1 b=rs2 imm=word offset         -- beq ... bgeu
#   "rd,j"        J: a=rd off20=word offset              -- jal
#   "uimm"        I: imm only (a, b must be 0)           -- syscall brk hcall
#   "rd,cr"       I: a=rd imm=cr (b must be 0)           -- mfcr
#   "cr,rs"       I: a=rs imm=cr (b must be 0)           -- mtcr
#   "rd,port"     I: a=rd imm=port (b must be 0)         -- in
#   "port,rs"     I: a=rs imm=port (b must be 0)         -- out
#   "rd"          I: a=rd (b, imm must be 0)             -- getpsw getbase
#   "rs"          I: a=rs (b, imm must be 0)             -- setpsw
#   ""            N: nothing                             -- iret halt wfi

# Instruction classes.
ALU, MEM, BRANCH, SYSTEM = "alu", "mem", "branch", "system"


@dataclass(frozen=True)
class Insn:
    """One row of the instruction table."""

    mnemonic: str
    opcode: int
    fmt: str
    operands: str
    klass: str
    profile_key: str | None = None  # system instructions whose user-mode behaviour a profile sets


def _rows() -> list[Insn]:
    rows = []
    r_ops = "add sub and or xor shl shr sar mul div divu rem remu slt sltu".split()
    for i, m in enumerate(r_ops):
        rows.append(Insn(m, 0x01 + i, FMT_R, "rd,rs1,rs2", ALU))
    rows.append(Insn("lui", 0x10, FMT_I, "rd,imm", ALU))
    rows.append(Insn("addi", 0x11, FMT_I, "rd,rs1,imm", ALU))
    for op, m in [(0x13, "andi"), (0x14, "ori"), (0x15, "xori"), (0x16, "shli"), (0x17, "shri"),
                  (0x18, "sari"), (0x1E, "slti"), (0x1F, "sltiu")]:  # fmt: skip
        rows.append(Insn(m, op, FMT_I, "rd,rs1,imm", ALU))
    rows.append(Insn("ld", 0x20, FMT_I, "rd,mem", MEM))
    rows.append(Insn("ldb", 0x21, FMT_I, "rd,mem", MEM))
    rows.append(Insn("ldbu", 0x22, FMT_I, "rd,mem", MEM))
    rows.append(Insn("st", 0x24, FMT_I, "rs,mem", MEM))
    rows.append(Insn("stb", 0x25, FMT_I, "rs,mem", MEM))
    for i, m in enumerate("beq bne blt bge bltu bgeu".split()):
        rows.append(Insn(m, 0x30 + i, FMT_I, "rs1,rs2,br", BRANCH))
    rows.append(Insn("jal", 0x38, FMT_J, "rd,j", BRANCH))
    rows.append(Insn("jalr", 0x39, FMT_I, "rd,mem", BRANCH))
    rows.append(Insn("syscall", 0x40, FMT_I, "uimm", SYSTEM))
    rows.append(Insn("brk", 0x41, FMT_I, "uimm", SYSTEM))
    rows.append(Insn("hcall", 0x42, FMT_I, "uimm", SYSTEM))
    rows.append(Insn("iret", 0x48, FMT_N, "", SYSTEM, "iret"))
    rows.append(Insn("halt", 0x49, FMT_N, "", SYSTEM, "halt"))
    rows.append(Insn("wfi", 0x4A, FMT_N, "", SYSTEM, "wfi"))
    rows.append(Insn("mfcr", 0x4B, FMT_I, "rd,cr", SYSTEM, "mfcr"))
    rows.append(Insn("mtcr", 0x4C, FMT_I, "cr,rs", SYSTEM, "mtcr"))
    rows.append(Insn("in", 0x4D, FMT_I, "rd,port", SYSTEM, "in"))
    rows.append(Insn("out", 0x4E, FMT_I, "port,rs", SYSTEM, "out"))
    rows.append(Insn("getpsw", 0x50, FMT_I, "rd", SYSTEM, "getpsw"))
    rows.append(Insn("setpsw", 0x51, FMT_I, "rs", SYSTEM, "setpsw"))
    rows.append(Insn("getbase", 0x52, FMT_I, "rd", SYSTEM, "getbase"))
    return rows


INSNS: list[Insn] = _rows()
BY_MNEMONIC: dict[str, Insn] = {i.mnemonic: i for i in INSNS}
BY_OPCODE: dict[int, Insn] = {i.opcode: i for i in INSNS}

# Control registers (ISA §1), by number.
CR_NAMES = ["psw", "epc", "epsw", "cause", "badaddr", "ivt", "base", "bound", "ebase", "ebound", "timer",
            "scratch", "cycle"]  # fmt: skip
CR_NUMBER = {name: i for i, name in enumerate(CR_NAMES)}
NUM_CRS = len(CR_NAMES)
CR_PSW, CR_EPC, CR_EPSW, CR_CAUSE, CR_BADADDR, CR_IVT, CR_BASE, CR_BOUND = range(8)
CR_EBASE, CR_EBOUND, CR_TIMER, CR_SCRATCH, CR_CYCLE = range(8, 13)

PSW_S = 1  # supervisor mode
PSW_IE = 2  # interrupts enabled

# Trap causes (ISA §4).
SYSCALL, PRIV, ILLEGAL, MEM_FAULT, ALIGN, DIVZERO, BREAK = 1, 2, 3, 4, 5, 6, 7
TIMER_IRQ, DEVICE_IRQ = 16, 17


class Cause(IntEnum):
    """Trap and interrupt causes by name (the ``cause`` register's values)."""

    SYSCALL = SYSCALL
    PRIV = PRIV
    ILLEGAL = ILLEGAL
    MEM = MEM_FAULT
    ALIGN = ALIGN
    DIVZERO = DIVZERO
    BREAK = BREAK
    TIMER = TIMER_IRQ
    DEVICE = DEVICE_IRQ


CAUSE_NAMES = {c.value: c.name for c in Cause}


def cause_name(cause: int) -> str:
    """The name of a trap cause (``SYSCALL``…), or its number when it has none."""
    return CAUSE_NAMES.get(cause, str(cause))


# Register names and aliases.
REG_ALIASES = {"zero": 0, "sp": 14, "lr": 15}

# Profile keys (ISA §5), in a fixed order: the cores read a profile as one behaviour code per key.
SIMPLE_PROFILE_KEYS = ["iret", "halt", "wfi", "in", "out", "getpsw", "setpsw", "getbase"]
PROFILE_KEYS = SIMPLE_PROFILE_KEYS + [f"mfcr.{n}" for n in CR_NAMES] + [f"mtcr.{n}" for n in CR_NAMES]
PROFILE_INDEX = {k: i for i, k in enumerate(PROFILE_KEYS)}
TRAP, EXECUTE, IGNORE = 0, 1, 2
BEHAVIOURS = {"trap": TRAP, "execute": EXECUTE, "ignore": IGNORE}
BEHAVIOUR_NAMES = {v: k for k, v in BEHAVIOURS.items()}

CONSOLE_PORT = 0


def sext(value: int, bits: int) -> int:
    """Sign-extend the low ``bits`` of ``value``."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def encode(insn: Insn, a: int = 0, b: int = 0, c: int = 0, imm: int = 0) -> int:
    """Encode one instruction from its fields (imm is taken modulo its field width)."""
    word = insn.opcode << 24
    if insn.fmt == FMT_R:
        word |= (a & 15) << 20 | (b & 15) << 16 | (c & 15) << 12
    elif insn.fmt == FMT_I:
        word |= (a & 15) << 20 | (b & 15) << 16 | (imm & 0xFFFF)
    elif insn.fmt == FMT_J:
        word |= (a & 15) << 20 | (imm & 0xFFFFF)
    return word


@dataclass(frozen=True)
class Decoded:
    """A decoded instruction word: its table row and raw fields."""

    insn: Insn
    a: int
    b: int
    c: int
    imm: int  # raw 16-bit (I) or 20-bit (J) field, not sign-extended


# Which fields must be zero, per operand syntax (ISA §3: every valid word has exactly one spelling).
MUST_BE_ZERO = {
    "rd,imm": 0x000F0000,
    "uimm": 0x00FF0000,
    "rd,cr": 0x000F0000,
    "cr,rs": 0x000F0000,
    "rd,port": 0x000F0000,
    "port,rs": 0x000F0000,
    "rd": 0x000FFFFF,
    "rs": 0x000FFFFF,
    "": 0x00FFFFFF,
    "rd,rs1,rs2": 0x00000FFF,
}


def decode(word: int) -> Decoded | None:
    """Decode a 32-bit word, or return None when it is ILLEGAL (unknown opcode or stray bits)."""
    word &= 0xFFFFFFFF
    insn = BY_OPCODE.get(word >> 24)
    if insn is None or word & MUST_BE_ZERO.get(insn.operands, 0):
        return None
    a, b, c = (word >> 20) & 15, (word >> 16) & 15, (word >> 12) & 15
    imm = word & (0xFFFFF if insn.fmt == FMT_J else 0xFFFF)
    if insn.operands in ("rd,cr", "cr,rs") and imm >= NUM_CRS:
        return None  # unknown CR: ILLEGAL in either mode, before any privilege check
    return Decoded(insn, a, b, c, imm)
