"""The disassembler: its text assembles back to the very same word, for every row of the table and every word."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popek.isa import spec
from popek.isa.asm import assemble
from popek.isa.disasm import disassemble, disassemble_word

REGISTER_OPERANDS = {"rd", "rs", "rs1", "rs2", "mem"}  # each takes the next of the a, b, c fields


def valid_word(insn: spec.Insn, a: int, b: int, c: int, imm: int) -> int:
    """A valid word of ``insn``: the fields its syntax does not use are left zero (ISA §3)."""
    names = insn.operands.split(",") if insn.operands else []
    regs = sum(n in REGISTER_OPERANDS for n in names)
    fields = [a, b, c][:regs] + [0] * (3 - regs)
    imm = imm % spec.NUM_CRS if "cr" in names else imm if len(names) > regs else 0
    return spec.encode(insn, *fields, imm=imm)


def reassemble(words: list[tuple[int, int]]) -> list[int]:
    """Disassemble each (address, word), assemble the texts at the same addresses, return the new words."""
    source = "".join(f".org {addr:#x}\n{disassemble_word(word, addr)}\n" for addr, word in sorted(words))
    image = assemble(source).image
    return [int.from_bytes(image[addr : addr + 4], "little") for addr, _ in sorted(words)]


fields = st.tuples(st.integers(0, 15), st.integers(0, 15), st.integers(0, 15), st.integers(0, 0xFFFFF))
addresses = st.integers(0, 0x3FFFF).map(lambda a: 4 * a)


@pytest.mark.parametrize("insn", spec.INSNS, ids=lambda i: i.mnemonic)
@given(f=fields, addr=addresses)
def test_every_row_round_trips(insn: spec.Insn, f: tuple[int, int, int, int], addr: int) -> None:
    word = valid_word(insn, *f)
    d = spec.decode(word)
    assert d is not None and d.insn is insn
    assert disassemble_word(word, addr).split()[0] == insn.mnemonic
    assert reassemble([(addr, word)]) == [word]


@given(st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=50), addresses)
def test_every_word_round_trips_or_is_illegal(words: list[int], base: int) -> None:
    placed = [(base + 4 * i, w) for i, w in enumerate(words)]
    for addr, w in placed:
        assert (spec.decode(w) is None) == disassemble_word(w, addr).startswith(".word ")
    assert reassemble(placed) == words


def test_many_words_of_every_opcode_round_trip() -> None:
    rng = random.Random(1974)
    words = [op << 24 | rng.choice([0, 0xFFFFFF, rng.getrandbits(24)]) for op in range(256) for _ in range(12)]
    words += [valid_word(i, *(rng.getrandbits(4) for _ in "abc"), rng.getrandbits(20)) for i in spec.INSNS * 20]
    assert reassemble([(4 * i, w) for i, w in enumerate(words)]) == words


@pytest.mark.parametrize(
    "word,addr,text",
    [
        (0x01123000, 0, "add r1, r2, r3"),
        (0x1112FFFB, 0, "addi r1, r2, -5"),
        (0x1E12FFFF, 0, "slti r1, r2, -1"),
        (0x1334FF00, 0, "andi r3, r4, 0xff00"),
        (0x1611001F, 0, "shli r1, r1, 31"),
        (0x10701234, 0, "lui r7, 0x1234"),
        (0x203E0008, 0, "ld r3, 8(r14)"),
        (0x245EFFFC, 0, "st r5, -4(r14)"),
        (0x30120002, 0x40, "beq r1, r2, 0x48"),
        (0x3134FFFF, 0, "bne r3, r4, 0xfffffffc"),
        (0x38FFFFFD, 0x100, "jal r15, 0xf4"),
        (0x390F0000, 0, "jalr r0, 0(r15)"),
        (0x4000002A, 0, "syscall 42"),
        (0x4B20000C, 0, "mfcr r2, cycle"),
        (0x4C30000A, 0, "mtcr timer, r3"),
        (0x4E900010, 0, "out 16, r9"),
        (0x50400000, 0, "getpsw r4"),
        (0x49000000, 0, "halt"),
        (0x00000000, 0, ".word 0x00000000"),
        (0x4B20000D, 0, ".word 0x4b20000d"),  # unknown control register
        (0x01123001, 0, ".word 0x01123001"),  # stray bits in an R-format word
        (0x49000001, 0, ".word 0x49000001"),
    ],
)
def test_spellings(word: int, addr: int, text: str) -> None:
    assert disassemble_word(word, addr) == text


def test_branch_targets_name_the_nearest_symbol() -> None:
    symbols = {"loop": 0x40, "data": 0x80}
    assert disassemble_word(0x3012FFFE, 0x48, symbols) == "beq r1, r2, 0x40  # <loop>"
    assert disassemble_word(0x38000001, 0x48, symbols) == "jal r0, 0x4c  # <loop+0xc>"
    assert disassemble_word(0x11000000, 0x48, symbols) == "addi r0, r0, 0"


def test_disassemble_lists_a_program() -> None:
    program = assemble('start: li r1, 0x12345678\nloop: j loop\nmsg: .ascii "hi!"\n')
    assert disassemble(program.image, 0, program.symbols) == "\n".join(
        [
            "<start>:",
            "00000000: 10101234  lui r1, 0x1234",
            "00000004: 14115678  ori r1, r1, 0x5678",
            "",
            "<loop>:",
            "00000008: 38000000  jal r0, 0x8  # <loop>",  # j is jal r0
            "",
            "<msg>:",
            "0000000c: 686921    .byte 0x68, 0x69, 0x21",
            "",
        ]
    )
    assert disassemble(b"") == "" and disassemble(b"\0\0\0\x49", base=0x100) == "00000100: 49000000  halt\n"


def test_disassembly_of_a_program_reassembles_to_it() -> None:
    source = "\n".join(f"x{i}: {line}" for i, line in enumerate(["li r1, -7", "la r2, x3", "push r1", "call x0"]))
    image = assemble(source + "\nbeqz r1, x1\nret\nmfcr r3, badaddr\nhalt").image
    text = disassemble(image)
    lines = [line.split("  ", 1)[1] for line in text.splitlines()]
    assert assemble("\n".join(lines)).image == image
