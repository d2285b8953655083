"""Witness programs as P32 assembly text: a line-by-line writer, and the console routines every witness shares.

Each instruction is spelled as the disassembler spells its word (a label may stand for its last operand), and
the image is what the project's assembler makes of the finished text, so a witness's source and the program
that ran cannot disagree.
"""

from __future__ import annotations

from popek.isa import spec
from popek.isa.asm import assemble
from popek.isa.disasm import disassemble_word
from popek.isa.spec import encode
from popek.vmm.sensitivity.forms import M32, Form

NOTE_COLUMN = 40  # where a line's comment begins


class Source:
    """A witness program under construction, kept as assembly text."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.unspelled: dict[int, tuple[int, str]] = {}  # line -> (word, note) of a branch, spelled at its address

    def comment(self, text: str) -> None:
        """A comment line (an empty line for no text)."""
        self.lines.append(f"# {text}" if text else "")

    def label(self, name: str) -> None:
        """A label for the next line's address."""
        self.lines.append(f"{name}:")

    def ins(self, m: str, a: int = 0, b: int = 0, c: int = 0, imm: int | str = 0, note: str = "") -> None:
        """Instruction ``m`` with fields a, b, c and ``imm``: a value, or a label for its last operand."""
        insn = spec.BY_MNEMONIC[m]
        if isinstance(imm, str):
            self.lines.append(_line(spelling(encode(insn, a, b, c, 0), 0, imm), note))
        else:
            self.raw(encode(insn, a, b, c, imm), note)

    def raw(self, word: int, note: str = "") -> None:
        """Emit ``word`` as it stands, written as the disassembler spells it where it lands."""
        d = spec.decode(word)
        if d is None or not {"br", "j"} & set(d.insn.operands.split(",")):
            self.lines.append(_line(spelling(word, 0), note))  # its spelling does not depend on its address
            return
        self.unspelled[len(self.lines)] = (word, note)
        self.lines.append(f"        .word   {word:#010x}")

    def li(self, rd: int, value: int | str, note: str = "") -> None:
        """Load ``value`` (a number or a label's address) into ``rd``: one addi when it fits, else lui + ori."""
        if isinstance(value, int) and -0x8000 <= value < 0x8000:
            self.ins("addi", rd, 0, 0, value & 0xFFFF, note)
            return
        if isinstance(value, str):
            hi, lo = f"%hi({value})", f"%lo({value})"
        else:
            hi, lo = f"{(value & M32) >> 16:#x}", f"{value & 0xFFFF:#x}"
        self.lines.append(_line(f"lui     r{rd}, {hi}", note))
        self.lines.append(_line(f"ori     r{rd}, r{rd}, {lo}", ""))

    def word(self, value: int) -> None:
        """A data word."""
        self.lines.append(f"        .word   {value:#x}")

    def asciz(self, text: str) -> None:
        """A zero-terminated string."""
        self.lines.append(f'        .asciz  "{text}"')

    def align(self) -> None:
        """Pad to the next word."""
        self.lines.append("        .align  4")

    def form(self, form: Form, a: int | None = None, imm: int | None = None, note: str = "") -> None:
        """Emit ``form`` itself, or with its register field ``a`` / immediate replaced (a tool, not the subject)."""
        d = spec.decode(form.word)
        a = d.a if a is None else a
        imm = d.imm if imm is None else imm
        self.ins(form.insn.mnemonic, a, d.b, d.c, imm, note)

    def build(self) -> tuple[str, bytes]:
        """The source text and the image the assembler makes of it."""
        lines = list(self.lines)
        if self.unspelled:  # a branch target is spelled as an absolute address: place the words, then spell them
            placed = assemble("\n".join(lines) + "\n", "witness.s")
            address = {e.line - 1: e.address for e in placed.listing if isinstance(e.data, int)}
            for i, (word, note) in self.unspelled.items():
                lines[i] = _line(spelling(word, address[i]), note)
        text = "\n".join(lines) + "\n"
        return text, assemble(text, "witness.s").image


def spelling(word: int, addr: int, label: str | None = None) -> str:
    """The instruction ``word`` at ``addr`` as the disassembler spells it, the mnemonic padded to a column.

    With ``label``, the label stands for the last operand's value: a branch or jump target, or a displacement.
    """
    m, _, ops = disassemble_word(word, addr).partition(" ")
    if label is not None:
        head, sep, last = ops.rpartition(", ")
        base = last[last.index("(") :] if "(" in last else ""  # a displacement keeps its base register
        ops = f"{head}{sep}{label}{base}"
    return f"{m:<7} {ops}".rstrip()


def _line(text: str, note: str) -> str:
    text = f"        {text}"
    return f"{text:<{NOTE_COLUMN}}# {note}" if note else text


# --- the console routines ---------------------------------------------------------------------------------


def emit_hex_routine(p: Source) -> None:
    """``hex8``: print r4 as eight hex digits and a space on the console (uses r4-r7, returns through r15)."""
    p.label("hex8")
    p.ins("addi", 5, 0, 0, 8)
    p.label("hex8_digit")
    p.ins("shri", 6, 4, 0, 28)
    p.ins("sltiu", 7, 6, 0, 10)
    p.ins("addi", 6, 6, 0, ord("0"))
    p.ins("bne", 7, 0, 0, "hex8_out")
    p.ins("addi", 6, 6, 0, ord("a") - ord("0") - 10)
    p.label("hex8_out")
    p.ins("out", 6, 0, 0, spec.CONSOLE_PORT)
    p.ins("shli", 4, 4, 0, 4)
    p.ins("addi", 5, 5, 0, -1 & 0xFFFF)
    p.ins("bne", 5, 0, 0, "hex8_digit")
    p.ins("addi", 6, 0, 0, ord(" "))
    p.ins("out", 6, 0, 0, spec.CONSOLE_PORT)
    p.ins("jalr", 0, 15, 0, 0)


def emit_report(p: Source, items: list[tuple[str, int]]) -> None:
    """Print ``name=value`` for each (name, register) and a newline (registers other than r4-r7 and r15)."""
    for name, reg in items:
        p.li(4, f"s_{name}")
        p.ins("jal", 15, 0, 0, "puts")
        p.ins("add", 4, reg, 0)
        p.ins("jal", 15, 0, 0, "hex8")
    p.ins("addi", 6, 0, 0, ord("\n"))
    p.ins("out", 6, 0, 0, spec.CONSOLE_PORT)


def emit_strings(p: Source, items: list[tuple[str, int]]) -> None:
    """The routine ``puts`` (print the string at r4) and the names ``emit_report`` prints."""
    p.label("puts")
    p.ins("ldbu", 6, 4, 0, 0)
    p.ins("beq", 6, 0, 0, "puts_end")
    p.ins("out", 6, 0, 0, spec.CONSOLE_PORT)
    p.ins("addi", 4, 4, 0, 1)
    p.ins("jal", 0, 0, 0, "puts")
    p.label("puts_end")
    p.ins("jalr", 0, 15, 0, 0)
    for name, _ in items:
        p.label(f"s_{name}")
        p.asciz(f"{name}=")
    p.align()
