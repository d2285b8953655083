"""The assembler: encodings worked out by hand from the ISA table, every directive and pseudo-instruction,
expressions, macros, includes, conditional assembly, and diagnostics for malformed sources."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from popek.isa.asm import AsmError, assemble, assemble_file

PROGRAMS = Path(__file__).resolve().parent.parent / "guests" / "programs"


def words(source: str, **kw: object) -> list[int]:
    image = assemble(source, **kw).image
    return [int.from_bytes(image[i : i + 4], "little") for i in range(0, len(image), 4)]


def errors(source: str, **kw: object) -> list[str]:
    with pytest.raises(AsmError) as exc:
        assemble(source, **kw)
    return [f"{d.line}:{d.col}: {d.message}" for d in exc.value.diagnostics]


# Encodings computed by hand from ISA §3: opcode in bits 31-24, then a, b, c / imm16 / off20.
HAND = [
    ("add r1, r2, r3", 0x01123000),
    ("sub r15, r14, r13", 0x02FED000),
    ("SLTU R0, r1, R2", 0x0F012000),
    ("lui r7, 0x1234", 0x10701234),
    ("addi r1, r2, -5", 0x1112FFFB),
    ("andi r3, r4, 0xff00", 0x1334FF00),
    ("ori r1, r1, 1", 0x14110001),
    ("xori r2, r2, 65535", 0x1522FFFF),
    ("shli r1, r1, 31", 0x1611001F),
    ("sari r1, r1, 3", 0x18110003),
    ("slti r1, r2, -1", 0x1E12FFFF),
    ("sltiu r1, r2, 100", 0x1F120064),
    ("ld r3, 8(r14)", 0x203E0008),
    ("ldb r1, -1(r2)", 0x2112FFFF),
    ("ldbu r1, (r2)", 0x22120000),
    ("st r5, -4(sp)", 0x245EFFFC),
    ("stb r6, 3(r7)", 0x25670003),
    ("jalr zero, 0(lr)", 0x390F0000),
    ("syscall 42", 0x4000002A),
    ("brk 0xffff", 0x4100FFFF),
    ("hcall 1", 0x42000001),
    ("iret", 0x48000000),
    ("halt", 0x49000000),
    ("wfi", 0x4A000000),
    ("mfcr r2, epc", 0x4B200001),
    ("MFCR R2, CYCLE", 0x4B20000C),
    ("mfcr r2, 12", 0x4B20000C),
    ("mtcr timer, r3", 0x4C30000A),
    ("in r1, 0", 0x4D100000),
    ("out 0x10, r9", 0x4E900010),
    ("getpsw r4", 0x50400000),
    ("setpsw r4", 0x51400000),
    ("getbase r4", 0x52400000),
]


@pytest.mark.parametrize("source,word", HAND)
def test_hand_encodings(source: str, word: int) -> None:
    assert words(source) == [word]


def test_branch_and_jump_offsets_count_words_from_the_branch() -> None:
    src = """
    loop: beq r1, r2, fwd       # at 0: +2 words
          bne r3, r4, loop      # at 4: -1
    fwd:  blt r0, r0, fwd       # at 8: 0
          jal lr, loop          # at 12: -3 (20-bit field)
          bgeu r1, r2, 0x20     # at 16: +4
    """
    assert words(src) == [0x30120002, 0x3134FFFF, 0x32000000, 0x38FFFFFD, 0x35120004]


PSEUDO = [
    ("nop", [0x11000000]),
    ("mov r1, r2", [0x11120000]),
    ("neg r1, r2", [0x02102000]),
    ("not r1, r2", [0x02102000, 0x1111FFFF]),
    ("ret", [0x390F0000]),
    ("push r5", [0x11EEFFFC, 0x245E0000]),
    ("pop r5", [0x205E0000, 0x11EE0004]),
    ("la r4, 0x12345678", [0x10401234, 0x14445678]),
    ("la r4, 8", [0x10400000, 0x14440008]),
    ("li r1, 5", [0x11100005]),
    ("li r1, -5", [0x1110FFFB]),
    ("li r1, -32768", [0x11108000]),
    ("li r1, 0xFFFF", [0x1410FFFF]),
    ("li r1, 0x50000", [0x10100005]),
    ("li r1, -65536", [0x1010FFFF]),
    ("li r1, 0x12345678", [0x10101234, 0x14115678]),
    ("li r1, -100000", [0x1010FFFE, 0x14117960]),
    ("li r1, 0xFFFFFFFF", [0x1110FFFF]),
]


@pytest.mark.parametrize("source,expected", PSEUDO)
def test_pseudo_instructions(source: str, expected: list[int]) -> None:
    assert words(source) == expected


def test_pseudo_branches_and_jumps() -> None:
    src = """
    top:  beqz r3, top
          bnez r3, top
          bgt r1, r2, top
          ble r1, r2, top
          bgtu r1, r2, top
          bleu r1, r2, top
          j top
          call top
    """
    assert words(src) == [0x30300000, 0x3130FFFF, 0x3221FFFE, 0x3321FFFD, 0x3421FFFC, 0x3521FFFB,
                          0x380FFFFA, 0x38FFFFF9]  # fmt: skip


def test_li_of_a_forward_symbol_always_takes_two_words() -> None:
    src = "li r1, small\nli r2, later\nhalt\nlater:\n.equ small, 3"
    assert words(src) == [0x10100000, 0x14110003, 0x10200000, 0x14220014, 0x49000000]


def test_li_sizes_agree_between_passes_when_labels_follow() -> None:
    # every li before `end` is sized in pass 1; `end` must land where pass 2 puts it
    src = "\n".join(f"li r1, {v}" for v in (1, 0x10000, 0x12345, -1, 0x8000)) + "\nend: .word end"
    program = assemble(src)
    assert program.symbols["end"] == 6 * 4 and words(src)[-1] == 24


# --- directives ---------------------------------------------------------------------------------------------
def test_org_fills_the_gap_with_zeros_and_cannot_go_back() -> None:
    program = assemble(".byte 1\n.org 8\nhere: .byte 2")
    assert program.image == bytes([1, 0, 0, 0, 0, 0, 0, 0, 2]) and program.symbols["here"] == 8
    assert errors(".space 8\n.org 4") == ["2:6: '.org' cannot move backwards (from 0x8 to 0x4)"]


def test_align_space_and_fill() -> None:
    assert assemble(".byte 1\n.align 4\n.byte 2\n.align 8, 0xAA\n.space 3, -1\n.space 0").image == bytes(
        [1, 0, 0, 0, 2, 0xAA, 0xAA, 0xAA, 0xFF, 0xFF, 0xFF]
    )


def test_word_and_byte_lists_with_dot_per_item() -> None:
    assert words(".word 1, -1, ., . + 4, 0xFFFFFFFF") == [1, 0xFFFFFFFF, 8, 16, 0xFFFFFFFF]
    assert assemble(".byte 1, -128, 255, 'A', '\\n'").image == bytes([1, 0x80, 255, 65, 10])


def test_strings() -> None:
    image = assemble('.ascii "ab", "c"\n.asciz "d\\t\\"q\\"\\\\"\n.string "\\0\\x41é"').image
    assert image == b'abcd\t"q"\\\x00\x00A\xc3\xa9\x00'


def test_equ_set_and_assignment() -> None:
    program = assemble(".equ A, 3\n.set B, A * 2\nC = B + 1\n.set B, B + 10\n.word A, B, C\n.global A, main\nmain:")
    assert program.image == bytes([3, 0, 0, 0, 16, 0, 0, 0, 7, 0, 0, 0])
    assert program.equates == {"A": 3, "B": 16, "C": 7} and program.symbols == {"main": 12}


def test_set_redefinitions_are_seen_in_order() -> None:
    assert words(".set X, 1\n.word X\n.set X, X + 1\n.word X\n.set X, X * 5\n.word X") == [1, 2, 10]


def test_forward_references_through_equates() -> None:
    assert words(".word B, 0\n.equ B, A + 1\n.equ A, end\nend:") == [9, 0]


def test_defines_are_predefined_symbols() -> None:
    assert words(".word N", defines={"N": 42}) == [42]
    with pytest.raises(AsmError, match="invalid symbol name"):
        assemble("", defines={"1x": 1})


def test_include_is_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "main.s").write_text('.word 1\n.include "sub/a.s"\n.word 4\n')
    (tmp_path / "sub" / "a.s").write_text('.word 2\n.include "b.s"\n')
    (tmp_path / "sub" / "b.s").write_text("here: .word 3\n")
    program = assemble_file(tmp_path / "main.s")
    assert program.image == b"".join(i.to_bytes(4, "little") for i in (1, 2, 3, 4))
    assert program.symbols == {"here": 8}


def test_include_dirs_are_searched_after_the_including_directory(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "x.s").write_text(".word 7\n")
    assert words('.include "x.s"', include_dirs=[tmp_path / "lib"]) == [7]


def test_include_loop_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.s").write_text('.include "b.s"\n')
    (tmp_path / "b.s").write_text('nop\n.include "a.s"\n')
    with pytest.raises(AsmError) as exc:
        assemble_file(tmp_path / "a.s")
    [d] = exc.value.diagnostics
    assert d.filename.endswith("b.s") and (d.line, d.col) == (2, 10) and d.message.startswith("include loop:")
    assert errors('.include "missing.s"') == ["1:10: cannot find include file 'missing.s'"]


def test_incbin_includes_a_files_bytes_and_an_assembled_sources_image(tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(b"abc")
    (tmp_path / "guest.s").write_text("start: .word start + 1\n.ifdef TWO\n.word TWO\n.endif\n")
    (tmp_path / "main.s").write_text('.word 9\nimg: .incbin "guest.s", "TWO=5", ""\n.incbin "data.bin"\nend:\n')
    program = assemble_file(tmp_path / "main.s")
    # The source is assembled on its own at address 0 (its label is 0 there, not 4), with its own symbols.
    assert program.image == b"".join(i.to_bytes(4, "little") for i in (9, 1, 5)) + b"abc"
    assert program.symbols == {"img": 4, "end": 15}


def test_incbin_errors_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "self.s").write_text('.incbin "self.s", "X"\n')
    (tmp_path / "broken.s").write_text("nop\nbogus r1\n")
    (tmp_path / "main.s").write_text('.incbin "self.s"\n.incbin "broken.s"\n.incbin "none.s"\n.incbin "self.s", "1x"\n')
    with pytest.raises(AsmError) as exc:
        assemble_file(tmp_path / "main.s")
    found = [(Path(d.filename).name, d.line, d.message) for d in exc.value.diagnostics]
    # main.s includes self.s with X, which includes itself with X again: a loop, not an endless build.
    assert found == [
        ("self.s", 1, "'.incbin' loop: '" + str(tmp_path / "self.s") + "' includes its own image"),
        ("broken.s", 2, "unknown instruction 'bogus'"),
        ("main.s", 3, "cannot find file 'none.s'"),
        ("main.s", 4, 'invalid define \'1x\' (expected "NAME" or "NAME=VALUE")'),
    ]


def test_unreadable_file() -> None:
    with pytest.raises(AsmError, match="cannot read file"):
        assemble_file("/nonexistent/prog.s")


def test_error_directive() -> None:
    assert errors('.ifndef HAL\n  .error "choose a HAL"\n.endif') == ["2:3: choose a HAL"]


# --- labels, expressions -----------------------------------------------------------------------------------
def test_numeric_local_labels() -> None:
    src = """
    1:  j 1f        # 0 -> 8
        j 1b        # 4 -> 0
    1:  j 1b        # 8 -> 8
        j 2f        # 12 -> 16
    2:  j 1b        # 16 -> 8
    """
    assert words(src) == [0x38000002, 0x380FFFFF, 0x38000000, 0x38000001, 0x380FFFFE]
    assert assemble(src).symbols == {}


def test_several_labels_on_one_line_and_case_sensitive_symbols() -> None:
    program = assemble("a: B: b: .word B\nA: nop")
    assert program.symbols == {"a": 0, "B": 0, "b": 0, "A": 4}


@pytest.mark.parametrize(
    "expr,value",
    [
        ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("1 << 2 + 1", 8), ("6 & 3 | 8", 10), ("5 ^ 1 & 3", 4),
        ("-7 / 2", -3), ("7 / -2", -3), ("-7 % 2", -1), ("7 % -2", 1), ("~0", -1), ("-(2 - 5)", 3),
        ("0x10 + 0b101 + 010", 31), ("'a' + '\\t'", 106), ("'\\0' + '\\\\' + '\\''", 92 + 39),
        ("%hi(0x12345678)", 0x1234), ("%lo(0x12345678)", 0x5678), ("%hi(-1)", 0xFFFF), ("%lo(-2)", 0xFFFE),
        ("%HI(0x10000) + 1", 2), ("-8 >> 1", -4), ("1 < 2", 1), ("2 <= 1 || 3 == 3 && 2 != 2", 0), ("!5", 0),
        ("10 - 4 - 3", 3), ("64 / 4 / 2", 8),
    ],
)  # fmt: skip
def test_expressions_follow_c(expr: str, value: int) -> None:
    assert words(f".word {expr}") == [value & 0xFFFFFFFF]


_OPS = ["+", "-", "*", "<<", ">>", "&", "|", "^"]


@st.composite
def flat_expression(draw: st.DrawFn) -> str:
    """A random expression without parentheses over operators whose precedence is the same in Python and C."""
    parts = [draw(st.sampled_from(["", "-", "~"])) + str(draw(st.integers(0, 99)))]
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(_OPS))
        rhs = str(draw(st.integers(0, 7))) if op in ("<<", ">>") else None
        parts += [op, rhs or draw(st.sampled_from(["", "-", "~"])) + str(draw(st.integers(0, 99)))]
    return " ".join(parts)


@given(flat_expression())
def test_expression_precedence_matches_python(expr: str) -> None:
    try:
        value = eval(expr)  # unbounded integers, and the same precedence as C for these operators
    except ValueError:  # a negative shift count, e.g. 1 << 2 - 5
        value = None
    assume(value is not None and -(1 << 31) <= value < 1 << 32)
    try:
        result = words(f".word {expr}")
    except AsmError as e:  # the assembler refuses shifts by 64 or more, which Python allows
        assume("shift count" not in str(e) and "overflows" not in str(e))
        raise
    assert result == [value & 0xFFFFFFFF]


def test_registers_and_aliases() -> None:
    assert words("add zero, SP, lr") == words("add r0, r14, r15") == [0x010EF000]


def test_instructions_after_odd_data_are_aligned_with_their_labels() -> None:
    program = assemble('.ascii "abc"\nfn:\n  ret\n.byte 1\nx: nop')
    assert program.symbols == {"fn": 4, "x": 12}
    assert program.image[3:8] == bytes([0, 0, 0, 0x0F, 0x39])


# --- macros and conditional assembly -----------------------------------------------------------------------
def test_macro_arguments_defaults_and_unique_labels() -> None:
    src = r"""
    .macro inc reg, by=1
        addi \reg, \reg, \by
    .endm
    .macro spin reg
    L\@: addi \reg, \reg, -1
        bnez \reg, L\@
    .endm
    .macro word2 a, b
        .word \a\()0, \b
    .endm
        inc r1
        inc r2, -2
        spin r3
        spin r4
        word2 1, (2 + 3)
    """
    assert words(src) == [0x11110001, 0x1122FFFE, 0x1133FFFF, 0x3130FFFF, 0x1144FFFF, 0x3140FFFF, 10, 5]


def test_macro_calling_macro_and_local_labels_inside() -> None:
    src = ".macro a x\n b \\x\n b \\x\n.endm\n.macro b y\n1: .word \\y, 1b\n.endm\n a 7"
    assert words(src) == [7, 0, 7, 8]


def test_macro_recursion_is_an_error() -> None:
    with pytest.raises(AsmError) as exc:
        assemble(".macro loop\n  loop\n.endm\n  loop\n")
    [d] = exc.value.diagnostics
    assert "nested more than" in d.message and "in expansion of macro 'loop'" in str(d)


def test_macro_with_a_guard_may_recurse() -> None:
    src = ".macro count n\n.if \\n\n.word \\n\ncount (\\n - 1)\n.endif\n.endm\ncount 3"
    assert words(src) == [3, 2, 1]


def test_macro_errors() -> None:
    src = ".macro m a, b\n.word \\a\n.endm\n m 1, 2, 3\n m\n.macro add\n.endm\n.macro m\n.endm\n.endm"
    assert errors(src) == [
        "4:10: macro 'm' takes 2 argument(s)",
        "5:3: missing argument 'a'",
        "6:8: 'add' is an instruction and cannot be a macro name",
        "8:8: macro 'm' is already defined",
        "10:1: '.endm' without '.macro'",
    ]


def test_conditional_assembly() -> None:
    src = """
    .if 2 > 1
        .word 1
        .if 0
            .word 99
        .elseif X == 5
            .word 2
        .else
            .word 98
        .endif
    .else
        .word 97
    .endif
    .ifdef Y
        .word 96
    .endif
    .ifndef Y
        .word 3
    .endif
        bogus instruction   # never read
    """
    assert words(src.replace("bogus instruction", ".if 0\n bogus instruction\n.endif"), defines={"X": 5}) == [1, 2, 3]
    assert words(".ifdef HAL\n.word HAL\n.else\n.word 0\n.endif", defines={"HAL": 2}) == [2]


def test_conditional_errors() -> None:
    assert errors(".else\n.if later\n.endif\n.if 1\n.else\n.else\n.endif\n.if 1\nlater:") == [
        "1:1: '.else' without '.if'",
        "2:5: 'later' is not defined before this '.if'",
        "6:1: '.else' after '.else'",
        "8:1: '.if' without '.endif'",
    ]


# --- diagnostics ----------------------------------------------------------------------------------------------
def test_every_error_is_reported_with_file_line_column_source_and_caret() -> None:
    src = "add r1, r2\nli r1, undefined_sym\n  addi r1, r1, 70000\n\tj nowhere\nok: nop\n"
    with pytest.raises(AsmError) as exc:
        assemble(src, "prog.s")
    assert str(exc.value) == "\n".join([
        "prog.s:1:11: error: 'add' takes 3 operand(s): add rd, rs1, rs2",
        "add r1, r2",
        "          ^",
        "prog.s:2:8: error: undefined symbol 'undefined_sym'",
        "li r1, undefined_sym",
        "       ^",
        "prog.s:3:16: error: value 70000 does not fit in a 16-bit field (-32768..65535)",
        "  addi r1, r1, 70000",
        "               ^",
        "prog.s:4:4: error: undefined symbol 'nowhere'",
        "\tj nowhere",
        "\t  ^",
    ])  # fmt: skip


MALFORMED = [
    ("frob r1", "1:1: unknown instruction 'frob'"),
    (".frob 1", "1:1: unknown directive '.frob'"),
    ("add r1, r2, 5", "1:13: expected a register (r0-r15, zero, sp, lr), found '5'"),
    ("add r1,, r2", "1:8: missing operand"),
    ("ld r1, r2", "1:8: expected a memory operand: offset(register)"),
    ("mfcr r1, 13", "1:10: unknown control register 13"),
    ("mfcr r1, r2", "1:10: expected a control register (psw, epc, epsw, cause, badaddr, ivt, base, bound, ebase, "
                    "ebound, timer, scratch, cycle) or its number"),
    ("addi r1, r1, -32769", "1:14: value -32769 does not fit in a 16-bit field (-32768..65535)"),
    ("beq r1, r2, 6", "1:13: target 0x6 is not a whole number of words away from 0x0"),
    ("beq r1, r2, 0x20000", "1:13: target 0x20000 is out of reach (32768 words away; 16-bit offset)"),
    ("jal r1, 0x200000", "1:9: target 0x200000 is out of reach (524288 words away; 20-bit offset)"),
    (".word 1 +", "1:10: expected an expression"),
    (".word (1", "1:9: expected ')'"),
    (".word 1 2", "1:9: unexpected '2' in expression"),
    (".word 1 / 0", "1:9: division by zero"),
    (".word 1 << 64", "1:9: shift count 64 out of range (0..63)"),
    (".word 0x1_0", "1:7: invalid number '0x1_0'"),
    (".word 1 @ 2", "1:9: unexpected character '@'"),
    (".word 'ab'", "1:7: a character literal holds exactly one character"),
    ('.ascii "abc', "1:8: unterminated string"),
    ('.ascii "a\\q"', "1:10: unknown escape sequence '\\q'"),
    (".word 0x100000000", "1:7: value 4294967296 does not fit in 32 bits"),
    (".byte 256", "1:7: value 256 does not fit in a byte (-128..255)"),
    (".space later\nlater:", "1:8: '.space' needs a value known here, and 'later' is defined later (or never)"),
    ("x: nop\nx: nop", "2:1: 'x' is already defined (at <input>:1)"),
    ("j 1b", "1:3: no '1:' label before '1b'"),
    ("j 1f", "1:3: no '1:' label after '1f'"),
    ("x: .equ x, 1", "1:9: 'x' is already defined as a label"),
    ("li r1, 0x100000000", "1:8: value 4294967296 does not fit in 32 bits"),
    (".org 1 << 30", "1:6: the program grows beyond 16 MiB"),
]  # fmt: skip


@pytest.mark.parametrize("source,message", MALFORMED)
def test_malformed_sources(source: str, message: str) -> None:
    assert errors(source) == [message]


def test_errors_in_included_files_and_macros_name_their_place(tmp_path: Path) -> None:
    (tmp_path / "inc.s").write_text("nop\n  bad r1\n")
    (tmp_path / "main.s").write_text('.macro m\n  .word undefined\n.endm\n.include "inc.s"\n  m\n')
    with pytest.raises(AsmError) as exc:
        assemble_file(tmp_path / "main.s")
    first, second = exc.value.diagnostics
    assert (Path(first.filename).name, first.line, first.col) == ("inc.s", 2, 3)
    assert (Path(second.filename).name, second.line, second.col, second.message) == (
        "main.s", 2, 9, "undefined symbol 'undefined'")  # fmt: skip
    assert second.notes == (f"{tmp_path / 'main.s'}:5: note: in expansion of macro 'm'",)


def test_error_count_is_bounded() -> None:
    with pytest.raises(AsmError) as exc:
        assemble("bad\n" * 500)
    assert len(exc.value.diagnostics) == 101 and "stopped after 100 errors" in str(exc.value)


# --- listing and programs ---------------------------------------------------------------------------------------
def test_listing() -> None:
    program = assemble('start: li r1, 0x12345678\n.byte 1, 2\nmsg: .asciz "hello!!!!"\n', "p.s")
    entries = [(e.address, e.data, e.line) for e in program.listing]
    assert entries == [(0, 0x10101234, 1), (4, 0x14115678, 1), (8, b"\x01\x02", 2), (10, b"hello!!!!\0", 3)]
    text = program.format_listing()
    assert "00000000  10101234" in text and "p.s:1  start: li r1, 0x12345678" in text
    assert "0000000a  68 65 6c 6c 6f 21 21 .." in text


@pytest.mark.parametrize("path", sorted(PROGRAMS.glob("*.s")), ids=lambda p: p.name)
def test_bundled_programs_assemble(path: Path) -> None:
    program = assemble_file(path)
    assert program.image and program.symbols


# --- no input ends in anything but AsmError -------------------------------------------------------------------
_ALPHABET = list("abcrxsp0123456789.,:;#()'\"\\%+-*/<>=!&|^~ \t\n@_$") + ["\x00", "é", "\r"]
_PIECES = [".macro m a\n", ".endm\n", ".if ", ".else\n", ".endif\n", '.include "', ".org ", ".align ", ".space ",
           ".equ ", "li ", "la ", "beq ", "jal ", "mfcr ", "1b", "1f", "1:", "%hi(", "%lo(", "\\@", "\\a", "r15",
           "sp", "0x", "0b", ".word ", ".byte ", ".asciz ", "m ", "push ", "<<", "((", "))", "'\\n'"]  # fmt: skip
_VALID = (PROGRAMS / "crc32.s").read_text() + (PROGRAMS / "lib.s").read_text()


@given(st.lists(st.sampled_from(_ALPHABET + _PIECES), max_size=80))
def test_random_text_never_raises_anything_but_asm_error(pieces: list[str]) -> None:
    try:
        assemble("".join(pieces))
    except AsmError as e:
        assert all(d.message for d in e.diagnostics) and str(e)


@given(st.integers(0, 2**32), st.integers(1, 12))
def test_mutated_programs_never_raise_anything_but_asm_error(seed: int, count: int) -> None:
    rng = random.Random(seed)
    text = list(_VALID)
    for _ in range(count):
        pos = rng.randrange(len(text))
        choice = rng.random()
        if choice < 0.3:
            del text[pos : pos + rng.randrange(1, 8)]
        elif choice < 0.6:
            text[pos:pos] = rng.choice(_PIECES + _ALPHABET)
        else:
            start = rng.randrange(len(text))
            text[pos:pos] = text[start : start + rng.randrange(1, 60)]
    try:
        assemble("".join(text), str(PROGRAMS / "mutant.s"))
    except AsmError as e:
        assert str(e)
