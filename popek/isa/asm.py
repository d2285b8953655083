"""The P32 assembler (ISA §7), driven by the instruction table in ``isa.spec``.

Pass 1 reads the source, expanding ``.include``, macros and conditional assembly, parses every statement once
and lays it out: a statement's size is fixed there (``li`` picks one or two words from what is known at that
point), so every label gets its final address.  Pass 2 evaluates the remaining expressions and encodes.
An error never stops the run: each one becomes a ``Diagnostic`` and all of them are raised in one ``AsmError``.
Expressions are compiled to postfix and evaluated with a stack, so no input can exhaust Python's recursion.
"""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from popek.isa import spec
from popek.isa.files import InputError, read_input

MASK32 = 0xFFFFFFFF
MAX_IMAGE = 16 << 20  # bytes: a larger image is surely a mistake (the machine has 1 MiB by default)
MAX_NESTING = 40  # .include and macro expansions, together
MAX_LINES = 2_000_000  # source lines read, counting every line of every expansion
MAX_EXPR_NESTING = 150
MAX_ERRORS = 100  # reading stops after this many errors
MAX_NOTES = 4  # "in expansion of macro" notes shown per error

REGISTERS = {f"r{i}": i for i in range(16)} | spec.REG_ALIASES
_SP, _LR = spec.REG_ALIASES["sp"], spec.REG_ALIASES["lr"]


# --- results and errors -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Diagnostic:
    """One error: file, line and 1-based column (0 when it has no position), message and the source line."""

    filename: str
    line: int
    col: int
    message: str
    source: str = ""
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        notes = list(self.notes[:MAX_NOTES])
        if len(self.notes) > MAX_NOTES:
            notes.append(f"... and {len(self.notes) - MAX_NOTES} more expansions")
        if not self.line:
            return "\n".join([f"{self.filename}: error: {self.message}", *notes])
        prefix = self.source[: self.col - 1].ljust(self.col - 1)
        caret = "".join(c if c == "\t" else " " for c in prefix) + "^"
        head = f"{self.filename}:{self.line}:{self.col}: error: {self.message}"
        return "\n".join([head, self.source, caret, *notes])


class AsmError(Exception):
    """Assembly failed: ``diagnostics`` holds every error found, in source order."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(map(str, self.diagnostics)))


class ListingEntry(NamedTuple):
    """What one statement put where: a word (int) or bytes (empty for labels and directives)."""

    address: int
    data: int | bytes
    filename: str
    line: int
    source: str


@dataclass
class Program:
    """An assembled program: a flat image loaded at address 0, its labels, equates and listing."""

    image: bytes
    symbols: dict[str, int]  # label -> address (numeric local labels left out)
    equates: dict[str, int]  # .equ / .set / defined symbol -> value
    listing: list[ListingEntry]

    def format_listing(self) -> str:
        """The listing as text: address, data, file:line and the source line (once per statement)."""
        lines, prev = [], None
        for e in self.listing:
            if isinstance(e.data, int):
                data = f"{e.data:08x}"
            else:
                data = e.data.hex(" ") if len(e.data) <= 8 else e.data[:7].hex(" ") + " .."
            src = "" if (e.filename, e.line) == prev else e.source.strip()
            prev = (e.filename, e.line)
            lines.append(f"{e.address:08x}  {data:<23}  {e.filename}:{e.line}  {src}".rstrip())
        return "\n".join(lines) + "\n" if lines else ""


class _Fail(Exception):
    """An error in the current statement, at 0-based column ``col``."""

    def __init__(self, col: int, msg: str) -> None:
        super().__init__(msg)
        self.col, self.msg = col, msg


class _Unknown(Exception):
    """Pass 1 needs the value of a symbol that is not known yet."""

    def __init__(self, name: str, col: int) -> None:
        super().__init__(name)
        self.name, self.col = name, col


# --- lexer ----------------------------------------------------------------------------------------------
class _Tok(NamedTuple):
    kind: str  # id num loc str op
    text: str
    col: int
    value: object = None


_TOKEN = re.compile(
    r"(?P<ws>\s+)|(?P<comment>[#;].*)|(?P<num>\d[\w.$]*)|(?P<id>[A-Za-z_.$][\w.$]*)"
    r"|(?P<str>\"(?:[^\"\\]|\\.)*\")|(?P<chr>'(?:[^'\\]|\\.)*')"
    r"|(?P<op><<|>>|<=|>=|==|!=|&&|\|\||[-+*/%&|^~!<>(),:=])",
    re.ASCII,
)
_ESCAPES = {"n": 10, "t": 9, "r": 13, "0": 0, "\\": 92, "'": 39, '"': 34}
_IDENT = re.compile(r"[A-Za-z_.$][\w.$]*", re.ASCII)


def _unescape(body: str, col: int) -> bytes:
    out, i = bytearray(), 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8", "surrogatepass")
            i += 1
        elif body[i + 1] in _ESCAPES:
            out.append(_ESCAPES[body[i + 1]])
            i += 2
        elif body[i + 1] == "x" and re.fullmatch(r"[0-9A-Fa-f]{2}", body[i + 2 : i + 4]):
            out.append(int(body[i + 2 : i + 4], 16))
            i += 4
        else:
            raise _Fail(col + i, f"unknown escape sequence '\\{body[i + 1]}'")
    return bytes(out)


def _number(s: str, col: int) -> _Tok:
    low = s.lower()
    if re.fullmatch(r"\d+[bf]", low):
        return _Tok("loc", s, col, (str(int(low[:-1])), low[-1]))
    if len(s) > 70:
        raise _Fail(col, f"number too large: '{s[:20]}...'")
    for pattern, base, digits in ((r"0x[0-9a-f]+", 16, 2), (r"0b[01]+", 2, 2), (r"\d+", 10, 0)):
        if re.fullmatch(pattern, low):
            value = int(low[digits:], base)
            if value >> 64:
                raise _Fail(col, f"number too large: '{s}'")
            return _Tok("num", s, col, value)
    raise _Fail(col, f"invalid number '{s}'")


def _lex(text: str) -> list[_Tok]:
    toks, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            what = {'"': "unterminated string", "'": "unterminated character literal"}
            raise _Fail(pos, what.get(text[pos], f"unexpected character {text[pos]!r}"))
        kind, s = m.lastgroup, m.group()
        if kind == "comment":
            break
        if kind == "num":
            toks.append(_number(s, pos))
        elif kind == "str":
            toks.append(_Tok("str", s, pos, _unescape(s[1:-1], pos + 1)))
        elif kind == "chr":
            body = s[1:-1]
            value = _unescape(body, pos + 1) if body.startswith("\\") or len(body) != 1 else [ord(body)]
            if len(value) != 1:
                raise _Fail(pos, "a character literal holds exactly one character")
            toks.append(_Tok("num", s, pos, value[0]))
        elif kind != "ws":
            toks.append(_Tok(kind, s, pos))
        pos = m.end()
    return toks


def _split(toks: list[_Tok]) -> list[tuple[list[_Tok], int]]:
    """Split operands at top-level commas: (tokens, column) per operand; no tokens gives no operands."""
    if not toks:
        return []
    groups, cur, depth, start = [], [], 0, toks[0].col
    for t in toks:
        if t.kind == "op" and t.text == "," and depth == 0:
            groups.append((cur, start))
            cur, start = [], t.col + 1
            continue
        if t.kind == "op":
            depth += (t.text == "(") - (t.text == ")")
        start = start if cur else t.col
        cur.append(t)
    groups.append((cur, start))
    return groups


# --- expressions: parsed to postfix, evaluated with a stack -----------------------------------------------
_BINARY = {"||": 1, "&&": 2, "|": 3, "^": 4, "&": 5, "==": 6, "!=": 6, "<": 7, ">": 7, "<=": 7, ">=": 7,
           "<<": 8, ">>": 8, "+": 9, "-": 9, "*": 10, "/": 10, "%": 10}  # fmt: skip
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "&": operator.and_, "|": operator.or_,
        "^": operator.xor, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
        "<=": operator.le, ">=": operator.ge, "&&": lambda a, b: bool(a and b),
        "||": lambda a, b: bool(a or b)}  # fmt: skip
_UNARY = {"-": operator.neg, "+": operator.pos, "~": operator.invert, "!": operator.not_}


class _ExprParser:
    """Precedence climbing (C's precedence) from tokens to a postfix program."""

    def __init__(self, toks: list[_Tok], end: int, local) -> None:
        self.toks, self.end, self.local, self.out = toks, end, local, []

    def parse(self) -> list[tuple]:
        pos = self.binary(0, 1, 0)
        if pos < len(self.toks):
            raise _Fail(self.toks[pos].col, f"unexpected '{self.toks[pos].text}' in expression")
        return self.out

    def is_op(self, pos: int, text: str) -> bool:
        return pos < len(self.toks) and self.toks[pos].kind == "op" and self.toks[pos].text == text

    def binary(self, pos: int, min_prec: int, depth: int) -> int:
        pos = self.unary(pos, depth + 1)
        while pos < len(self.toks) and self.toks[pos].kind == "op" and _BINARY.get(self.toks[pos].text, 0) >= min_prec:
            op = self.toks[pos]
            pos = self.binary(pos + 1, _BINARY[op.text] + 1, depth + 1)
            self.out.append(("b", op.text, op.col))
        return pos

    def unary(self, pos: int, depth: int) -> int:
        if pos >= len(self.toks):
            raise _Fail(self.end, "expected an expression")
        t = self.toks[pos]
        if depth > MAX_EXPR_NESTING:
            raise _Fail(t.col, "expression nested too deeply")
        if t.kind == "op" and t.text in _UNARY:
            pos = self.unary(pos + 1, depth + 1)
            self.out.append(("u", t.text))
            return pos
        func = None
        if t.kind == "op" and t.text == "%" and pos + 2 < len(self.toks) and self.is_op(pos + 2, "("):
            func = self.toks[pos + 1].text.lower() if self.toks[pos + 1].kind == "id" else None
            if func not in ("hi", "lo"):
                raise _Fail(self.toks[pos + 1].col, "expected %hi(...) or %lo(...)")
            pos += 2
        if self.is_op(pos, "("):
            pos = self.binary(pos + 1, 1, depth + 1)
            if not self.is_op(pos, ")"):
                raise _Fail(self.toks[pos].col if pos < len(self.toks) else self.end, "expected ')'")
            if func:
                self.out.append(("f", func))
            return pos + 1
        if t.kind == "num":
            self.out.append(("n", t.value))
        elif t.kind == "loc":
            self.out.append(("s", self.local(t), t.col, t.text))
        elif t.kind == "id":
            self.out.append((".",) if t.text == "." else ("s", t.text, t.col, t.text))
        else:
            raise _Fail(t.col, f"expected an expression, found '{t.text}'")
        return pos + 1


def _binop(op: str, a: int, b: int, col: int) -> int:
    if op in ("/", "%"):
        if b == 0:
            raise _Fail(col, "division by zero")
        q = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)  # truncating, as in C
        r = q if op == "/" else a - b * q
    elif op in ("<<", ">>"):
        if not 0 <= b < 64:
            raise _Fail(col, f"shift count {b} out of range (0..63)")
        r = a << b if op == "<<" else a >> b
    else:
        r = int(_OPS[op](a, b))
    if not -(1 << 64) <= r < 1 << 64:
        raise _Fail(col, "expression value overflows 64 bits")
    return r


def _evaluate(rpn: list[tuple], dot: int, lookup) -> int:
    stack: list[int] = []
    for op in rpn:
        kind = op[0]
        if kind == "n":
            stack.append(op[1])
        elif kind == "s":
            stack.append(lookup(op[1], op[2], op[3]))
        elif kind == ".":
            stack.append(dot)
        elif kind == "u":
            stack.append(int(_UNARY[op[1]](stack.pop())))
        elif kind == "f":
            v = stack.pop()
            stack.append((v >> 16) & 0xFFFF if op[1] == "hi" else v & 0xFFFF)
        else:
            b = stack.pop()
            stack.append(_binop(op[1], stack.pop(), b, op[2]))
    return stack[0]


def _check32(v: int, col: int) -> int:
    if not -(1 << 31) <= v <= MASK32:
        raise _Fail(col, f"value {v} does not fit in 32 bits")
    return v


# --- instructions -----------------------------------------------------------------------------------------
# Operand names of the table's syntaxes (and the pseudo-instructions') -> how they are parsed.
_OPERAND = {"rd": "r", "rs": "r", "rs1": "r", "rs2": "r", "mem": "mem", "cr": "cr",
            "imm": "imm", "uimm": "imm", "port": "imm", "br": "br", "j": "j", "label": "e", "imm32": "e"}  # fmt: skip
_USAGE = {"mem": "imm(rs1)", "br": "label", "j": "label"}
_ZERO = ("const", 0, None)


def _k(v: int) -> tuple:
    return ("const", v & 0xFFFF, None)


# Pseudo-instructions: operand syntax and expansion into (mnemonic, a, b, c, field) tuples.
_PSEUDO = {
    "nop": ("", lambda: [("addi", 0, 0, 0, _ZERO)]),
    "mov": ("rd,rs", lambda d, s: [("addi", d, s, 0, _ZERO)]),
    "neg": ("rd,rs", lambda d, s: [("sub", d, 0, s, None)]),
    "not": ("rd,rs", lambda d, s: [("sub", d, 0, s, None), ("addi", d, d, 0, _k(-1))]),
    "j": ("label", lambda t: [("jal", 0, 0, 0, ("j", *t))]),
    "call": ("label", lambda t: [("jal", _LR, 0, 0, ("j", *t))]),
    "ret": ("", lambda: [("jalr", 0, _LR, 0, _ZERO)]),
    "beqz": ("rs,label", lambda s, t: [("beq", s, 0, 0, ("br", *t))]),
    "bnez": ("rs,label", lambda s, t: [("bne", s, 0, 0, ("br", *t))]),
    "bgt": ("rs1,rs2,label", lambda x, y, t: [("blt", y, x, 0, ("br", *t))]),
    "ble": ("rs1,rs2,label", lambda x, y, t: [("bge", y, x, 0, ("br", *t))]),
    "bgtu": ("rs1,rs2,label", lambda x, y, t: [("bltu", y, x, 0, ("br", *t))]),
    "bleu": ("rs1,rs2,label", lambda x, y, t: [("bgeu", y, x, 0, ("br", *t))]),
    "push": ("rs", lambda s: [("addi", _SP, _SP, 0, _k(-4)), ("st", s, _SP, 0, _ZERO)]),
    "pop": ("rd", lambda d: [("ld", d, _SP, 0, _ZERO), ("addi", _SP, _SP, 0, _k(4))]),
    "la": ("rd,label", lambda d, t: [("lui", d, 0, 0, ("hi", *t)), ("ori", d, d, 0, ("lo", *t))]),
    "li": ("rd,imm32", None),  # size chosen in pass 1, see _Assembler.li
}
_CONDITIONALS = {".if", ".ifdef", ".ifndef", ".elseif", ".else", ".endif"}
_FIRST_WORD = re.compile(r"\s*(\.?[A-Za-z_$][\w.$]*)", re.ASCII)
_MACRO_ARG = re.compile(r"\\(@|\(\)|[A-Za-z_]\w*)", re.ASCII)


@dataclass
class _Loc:
    file: str
    line: int
    text: str
    notes: tuple[str, ...] = ()


@dataclass
class _Stmt:
    kind: str  # label set insn data bytes space
    loc: _Loc
    addr: int
    size: int
    data: object
    seq: int


@dataclass
class _Macro:
    name: str | None
    params: list[tuple[str, str | None]]
    loc: _Loc
    body: list[_Loc]


def _read_source(path: str, col: int) -> str:
    """The text of a source file that a directive at column ``col`` names; _Fail when it cannot be read."""
    try:
        return read_input(path).decode("utf-8")
    except InputError as e:
        raise _Fail(col, f"cannot read {e}") from None
    except (OSError, UnicodeError) as e:
        raise _Fail(col, f"cannot read '{path}': {getattr(e, 'strerror', None) or e}") from None


def _lines(text: str, filename: str) -> list[_Loc]:
    return [_Loc(filename, i + 1, t.rstrip("\r")) for i, t in enumerate(text.split("\n"))]


class _Assembler:
    def __init__(self, defines: dict[str, int], include_dirs: list[str]) -> None:
        self.diags: list[tuple[int, Diagnostic]] = []
        self.stmts: list[_Stmt] = []
        self.defines0 = dict(defines)
        self.values: dict[str, int] = dict(defines)  # pass 1: every value known so far
        self.kinds: dict[str, str] = dict.fromkeys(defines, "equ")  # every symbol defined so far: label | equ
        self.label_at: dict[str, _Loc] = {}
        self.unknown: set[str] = set()  # equates whose value pass 1 could not compute
        self.locals: dict[str, int] = {}  # numeric label -> definitions so far
        self.macros: dict[str, _Macro] = {}
        self.include_dirs = include_dirs
        self.files: list[tuple[str, str]] = []  # (real path, shown name) of the files being read
        self.current: dict[str, int] = dict(defines)  # pass 2: equates as (re)defined so far
        self.depth = self.lines = self.serial = self.pc = 0
        self.aborted = False
        self.pending: list[str] = []  # labels at the current address, before anything was emitted there
        self.builds: list[tuple[str, tuple]] = []  # (source, defines) of the .incbin assemblies around this one

    def error(self, loc: _Loc, col: int, msg: str, seq: int | None = None) -> None:
        seq = len(self.stmts) if seq is None else seq
        self.diags.append((seq, Diagnostic(loc.file, loc.line, col + 1, msg, loc.text, loc.notes)))
        self.aborted = self.aborted or len(self.diags) >= MAX_ERRORS

    # --- pass 1: reading lines ---
    def frame(self, lines: list[_Loc]) -> None:
        """Read the lines of one file or macro expansion (conditionals and macro definitions end inside it)."""
        conds: list[list] = []  # [active, taken, else_seen, loc, parent_active]
        mdef, mdepth = None, 0
        for loc in lines:
            if self.aborted:
                return
            self.lines += 1
            if self.lines > MAX_LINES:
                why = "a macro that expands without end?" if loc.notes else "the source is too large"
                self.error(loc, 0, f"more than {MAX_LINES} lines to assemble ({why})")
                self.aborted = True
                return
            m = _FIRST_WORD.match(loc.text)
            word = m.group(1).lower() if m else ""
            if mdef is not None:
                if word == ".endm" and not mdepth:
                    if mdef.name:
                        self.macros[mdef.name] = mdef
                    mdef = None
                else:
                    mdepth += (word == ".macro") - (word == ".endm")
                    mdef.body.append(loc)
            elif word in _CONDITIONALS:
                self.conditional(word, loc, conds)
            elif conds and not conds[-1][0]:
                continue
            elif word == ".macro":
                mdef, mdepth = self.macro_header(loc), 0
            else:
                self.statement(loc)
        if mdef is not None:
            self.error(mdef.loc, 0, "'.macro' without '.endm'")
        for c in conds:
            self.error(c[3], 0, "'.if' without '.endif'")

    def conditional(self, word: str, loc: _Loc, conds: list[list]) -> None:
        parent = conds[-1][0] if conds else True
        try:
            if word in (".if", ".ifdef", ".ifndef"):
                conds.append([False, True, False, loc, parent])
                if parent:
                    conds[-1][0] = conds[-1][1] = self.condition(word, loc)
                return
            if not conds:
                raise _Fail(0, f"'{word}' without '.if'")
            c = conds[-1]
            if word == ".endif":
                conds.pop()
            elif c[2]:
                raise _Fail(0, f"'{word}' after '.else'")
            elif word == ".else":
                c[0], c[1], c[2] = c[4] and not c[1], True, True
            else:
                c[0] = c[4] and not c[1] and self.condition(".if", loc)
                c[1] = c[1] or c[0]
            if c[4] and len(toks := _lex(loc.text)) > 1 and word != ".elseif":
                raise _Fail(toks[1].col, f"unexpected '{toks[1].text}' after '{word}'")
        except _Fail as f:
            self.error(loc, f.col, f.msg)

    def condition(self, word: str, loc: _Loc) -> bool:
        toks = _lex(loc.text)[1:]
        if word == ".if":
            rpn, _ = self.expr(toks, len(loc.text))
            try:
                return bool(_evaluate(rpn, self.pc, self.look1))
            except _Unknown as u:
                raise _Fail(u.col, f"'{u.name}' is not defined before this '.if'") from None
        if len(toks) != 1 or toks[0].kind != "id":
            raise _Fail(toks[0].col if toks else len(loc.text), f"'{word}' expects one symbol name")
        return (toks[0].text in self.kinds) == (word == ".ifdef")

    def macro_header(self, loc: _Loc) -> _Macro:
        mac = _Macro(None, [], loc, [])
        try:
            toks = _lex(loc.text)[1:]
            if not toks or toks[0].kind != "id" or toks[0].text.startswith("."):
                raise _Fail(toks[0].col if toks else len(loc.text), "'.macro' expects a macro name")
            name = toks[0].text.lower()
            if name in self.macros:
                raise _Fail(toks[0].col, f"macro '{toks[0].text}' is already defined")
            if name in spec.BY_MNEMONIC or name in _PSEUDO:
                raise _Fail(toks[0].col, f"'{toks[0].text}' is an instruction and cannot be a macro name")
            pos, params = 1, []
            while pos < len(toks):
                t = toks[pos]
                if t.kind != "id" or not re.fullmatch(r"[A-Za-z_]\w*", t.text, re.ASCII):
                    raise _Fail(t.col, f"expected a parameter name, found '{t.text}'")
                if t.text in dict(params):
                    raise _Fail(t.col, f"duplicate parameter '{t.text}'")
                default, pos = None, pos + 1
                if pos < len(toks) and toks[pos].text == "=":
                    end = pos + 1
                    while end < len(toks) and toks[end].text != ",":
                        end += 1
                    if end == pos + 1:
                        raise _Fail(toks[pos].col, "expected a default value after '='")
                    default = loc.text[toks[pos + 1].col : toks[end - 1].col + len(toks[end - 1].text)]
                    pos = end
                params.append((t.text, default))
                if pos < len(toks) and toks[pos].text == ",":
                    pos += 1
            mac.name, mac.params = name, params
        except _Fail as f:
            self.error(loc, f.col, f.msg)
        return mac

    def statement(self, loc: _Loc) -> None:
        try:
            toks = _lex(loc.text)
            i = 0
            while i + 1 < len(toks) and toks[i + 1].text == ":" and toks[i].kind in ("id", "num"):
                self.label(loc, toks[i])
                i += 2
            if i == len(toks):
                if i:
                    self.add("label", loc, 0, None)
                return
            head, ops, end = toks[i], toks[i + 1 :], len(loc.text)
            if head.kind != "id":
                raise _Fail(head.col, f"expected an instruction or directive, found '{head.text}'")
            if ops and ops[0].text == "=":
                return self.assign(loc, head, ops[1:], end)
            name = head.text.lower()
            if name.startswith("."):
                self.directive(loc, head, ops, end)
            elif name in self.macros:
                self.expand(loc, head, ops)
            elif name in spec.BY_MNEMONIC or name in _PSEUDO:
                self.instruction(loc, head, ops, end)
            else:
                raise _Fail(head.col, f"unknown instruction '{head.text}'")
        except _Fail as f:
            self.error(loc, f.col, f.msg)

    def add(self, kind: str, loc: _Loc, size: int, data: object, col: int = 0) -> None:
        if self.pc + size > MAX_IMAGE:
            raise _Fail(col, f"the program grows beyond {MAX_IMAGE >> 20} MiB")
        self.stmts.append(_Stmt(kind, loc, self.pc, size, data, len(self.stmts)))
        self.pc += size
        if size:
            self.pending = []

    def label(self, loc: _Loc, tok: _Tok) -> None:
        if tok.kind == "num":
            if not tok.text.isdigit():
                return self.error(loc, tok.col, f"invalid label '{tok.text}'")
            n = str(int(tok.text))
            k = self.locals[n] = self.locals.get(n, 0) + 1
            name = f"{n}\x02{k - 1}"  # the k-th definition of a numeric label: a name no source can spell
        else:
            name = tok.text
            if name == "." or name.lower() in REGISTERS:
                return self.error(loc, tok.col, f"'{name}' cannot be a label")
            if name in self.kinds:
                where = self.label_at.get(name)
                seen = f" (at {where.file}:{where.line})" if where else ""
                return self.error(loc, tok.col, f"'{name}' is already defined{seen}")
        self.kinds[name], self.values[name], self.label_at[name] = "label", self.pc, loc
        self.pending.append(name)

    def local(self, tok: _Tok) -> str:
        n, direction = tok.value
        k = self.locals.get(n, 0)
        if direction == "b":
            if not k:
                raise _Fail(tok.col, f"no '{n}:' label before '{tok.text}'")
            return f"{n}\x02{k - 1}"
        return f"{n}\x02{k}"

    def expr(self, toks: list[_Tok], end: int) -> tuple[list[tuple], int]:
        return _ExprParser(toks, end, self.local).parse(), toks[0].col if toks else end

    def look1(self, name: str, col: int, text: str) -> int:
        if name in self.values:
            return self.values[name]
        raise _Unknown(text, col)

    def known(self, toks: list[_Tok], end: int, what: str) -> int:
        rpn, _ = self.expr(toks, end)
        try:
            return _evaluate(rpn, self.pc, self.look1)
        except _Unknown as u:
            raise _Fail(u.col, f"{what} needs a value known here, and '{u.name}' is defined later (or never)") from None

    def assign(self, loc: _Loc, tok: _Tok, toks: list[_Tok], end: int) -> None:
        name = tok.text
        if tok.kind != "id" or name == "." or name.lower() in REGISTERS:
            raise _Fail(tok.col, f"expected a symbol name, found '{name}'")
        if self.kinds.get(name) == "label":
            raise _Fail(tok.col, f"'{name}' is already defined as a label")
        rpn, col = self.expr(toks, end)
        self.kinds[name] = "equ"
        try:
            self.values[name] = _evaluate(rpn, self.pc, self.look1)
            self.unknown.discard(name)
        except (_Unknown, _Fail):  # a forward reference, or an error that pass 2 reports
            self.values.pop(name, None)
            self.unknown.add(name)
        self.add("set", loc, 0, (name, rpn, col))

    def directive(self, loc: _Loc, head: _Tok, ops: list[_Tok], end: int) -> None:
        name = head.text.lower()
        groups = _split(ops)
        for g, col in groups:
            if not g:
                raise _Fail(col, "missing operand")
        if name in (".word", ".byte"):
            if not groups:
                raise _Fail(end, f"'{name}' expects at least one value")
            size = 4 if name == ".word" else 1
            self.add("data", loc, size * len(groups), (size, [self.expr(g, end) for g, _ in groups]), head.col)
        elif name in (".ascii", ".asciz", ".string"):
            if not groups:
                raise _Fail(end, f"'{name}' expects a string")
            data = b""
            for g, col in groups:
                if len(g) != 1 or g[0].kind != "str":
                    raise _Fail(col, "expected a string in double quotes")
                data += g[0].value + (b"\0" if name != ".ascii" else b"")
            self.add("bytes", loc, len(data), data, head.col)
        elif name in (".space", ".skip", ".align"):
            if not 1 <= len(groups) <= 2:
                raise _Fail(head.col, f"'{name}' expects a size and an optional fill byte")
            n = self.known(groups[0][0], end, f"'{name}'")
            if n < (1 if name == ".align" else 0):
                raise _Fail(groups[0][1], f"bad {'alignment' if name == '.align' else 'size'} {n}")
            size = -self.pc % n if name == ".align" else n
            fill = self.expr(groups[1][0], end) if len(groups) == 2 else None
            self.add("space", loc, size, fill, head.col)
        elif name == ".org":
            if len(groups) != 1:
                raise _Fail(head.col, "'.org' expects one address")
            target = self.known(groups[0][0], end, "'.org'")
            if target < self.pc:
                raise _Fail(groups[0][1], f"'.org' cannot move backwards (from 0x{self.pc:x} to {target:#x})")
            self.add("space", loc, target - self.pc, None, groups[0][1])
        elif name in (".equ", ".set"):
            if len(groups) != 2 or len(groups[0][0]) != 1:
                raise _Fail(head.col, f"'{name}' expects a name and a value: {name} NAME, expr")
            self.assign(loc, groups[0][0][0], groups[1][0], end)
        elif name in (".global", ".globl"):
            for g, col in groups:
                if len(g) != 1 or g[0].kind != "id":
                    raise _Fail(col, "expected a symbol name")
        elif name == ".include":
            self.include(loc, ops, end)
        elif name == ".incbin":
            self.incbin(loc, head, groups, end)
        elif name == ".error":
            if len(ops) != 1 or ops[0].kind != "str":
                raise _Fail(head.col, "'.error' expects a message in double quotes")
            raise _Fail(head.col, ops[0].value.decode("utf-8", "replace"))
        elif name == ".endm":
            raise _Fail(head.col, "'.endm' without '.macro'")
        elif name in _CONDITIONALS or name == ".macro":
            raise _Fail(head.col, f"'{name}' must begin its line (no label before it)")
        else:
            raise _Fail(head.col, f"unknown directive '{head.text}'")

    def find(self, loc: _Loc, tok: _Tok, what: str) -> str:
        """The path of the file ``tok`` names: beside the file being read, then in the include directories."""
        name = tok.value.decode("utf-8", "replace")
        here = "" if loc.file.startswith("<") else os.path.dirname(loc.file)
        found = [p for p in [os.path.join(here, name)] + [os.path.join(d, name) for d in self.include_dirs]
                 if name and os.path.isfile(p)]  # fmt: skip
        if not found:
            raise _Fail(tok.col, f"cannot find {what} '{name}'")
        return os.path.normpath(found[0])

    def include(self, loc: _Loc, ops: list[_Tok], end: int) -> None:
        if len(ops) != 1 or ops[0].kind != "str":
            raise _Fail(ops[0].col if ops else end, "'.include' expects a file name in double quotes")
        path = self.find(loc, ops[0], "include file")
        real = os.path.realpath(path)
        if real in (r for r, _ in self.files):
            chain = " -> ".join([shown for _, shown in self.files] + [path])
            raise _Fail(ops[0].col, f"include loop: {chain}")
        if self.depth >= MAX_NESTING:
            raise _Fail(ops[0].col, f"includes and macros nested more than {MAX_NESTING} deep")
        text = _read_source(path, ops[0].col)
        self.files.append((real, path))
        self.depth += 1
        try:
            self.frame(_lines(text, path))
        finally:
            self.files.pop()
            self.depth -= 1

    def incbin(self, loc: _Loc, head: _Tok, groups: list[tuple[list[_Tok], int]], end: int) -> None:
        """``.incbin "file"``: a file's bytes; a source file (``.s``, ``.asm``) is first assembled on its own,
        with the defines its further operands name (``"NAME"`` or ``"NAME=VALUE"``), and its image included."""
        strings = [g[0] for g, _ in groups if len(g) == 1 and g[0].kind == "str"]
        if not groups or len(strings) != len(groups):
            raise _Fail(
                head.col if not groups else groups[0][1], "'.incbin' expects file names and defines in double quotes"
            )
        path = self.find(loc, strings[0], "file")
        if not path.lower().endswith((".s", ".asm")):
            if any(tok.value.strip() for tok in strings[1:]):
                raise _Fail(groups[1][1], "defines are for a source file (.s) only")
            try:
                data = read_input(path, MAX_IMAGE)
            except InputError as e:
                raise _Fail(strings[0].col, f"cannot read {e}") from None
            except OSError as e:
                raise _Fail(strings[0].col, f"cannot read '{path}': {e.strerror or e}") from None
            return self.add("bytes", loc, len(data), data, head.col)
        defines: dict[str, int] = {}
        for tok in strings[1:]:
            text = tok.value.decode("utf-8", "replace").strip()
            if not text:
                continue  # an empty define (a macro's default) names nothing
            sym, eq, value = text.partition("=")
            sym = sym.strip()
            if not _IDENT.fullmatch(sym) or sym.lower() in REGISTERS:
                raise _Fail(tok.col, f'invalid define \'{text}\' (expected "NAME" or "NAME=VALUE")')
            try:
                defines[sym] = int(value.strip(), 0) if eq else 1
            except ValueError:
                raise _Fail(tok.col, f"the value of define '{sym}' must be an integer") from None
        key = (os.path.realpath(path), tuple(sorted(defines.items())))
        if key in self.builds:
            raise _Fail(strings[0].col, f"'.incbin' loop: '{path}' includes its own image")
        if len(self.builds) >= MAX_NESTING:
            raise _Fail(strings[0].col, f"'.incbin' of sources nested more than {MAX_NESTING} deep")
        text = _read_source(path, strings[0].col)
        sub = _Assembler(defines, self.include_dirs)
        sub.builds = [*self.builds, key]
        try:
            data = sub.run(text, path).image
        except AsmError as e:  # its errors are this program's errors, each at its own line
            self.diags += [(len(self.stmts), d) for d in e.diagnostics]
            self.aborted = self.aborted or len(self.diags) >= MAX_ERRORS
            return None
        self.add("bytes", loc, len(data), data, head.col)

    def expand(self, loc: _Loc, head: _Tok, ops: list[_Tok]) -> None:
        mac = self.macros[head.text.lower()]
        groups = _split(ops)
        if len(groups) > len(mac.params):
            col = groups[len(mac.params)][1]
            raise _Fail(col, f"macro '{mac.name}' takes {len(mac.params)} argument(s)")
        args = {}
        for i, (param, default) in enumerate(mac.params):
            g = groups[i][0] if i < len(groups) else []
            value = loc.text[g[0].col : g[-1].col + len(g[-1].text)] if g else default
            if value is None:
                raise _Fail(groups[i][1] if i < len(groups) else len(loc.text), f"missing argument '{param}'")
            args[param] = value
        if self.depth >= MAX_NESTING:
            raise _Fail(head.col, f"macro '{mac.name}' nested more than {MAX_NESTING} deep (does it expand itself?)")
        self.serial += 1
        serial = str(self.serial)

        def substitute(m: re.Match) -> str:
            arg = m.group(1)
            return serial if arg == "@" else "" if arg == "()" else args.get(arg, m.group())

        notes = (f"{loc.file}:{loc.line}: note: in expansion of macro '{mac.name}'", *loc.notes)
        body = [_Loc(b.file, b.line, _MACRO_ARG.sub(substitute, b.text), notes) for b in mac.body]
        self.depth += 1
        try:
            self.frame(body)
        finally:
            self.depth -= 1

    def instruction(self, loc: _Loc, head: _Tok, ops: list[_Tok], end: int) -> None:
        name = head.text.lower()
        if self.pc % 4:  # align with zeros; labels just before the instruction move with it
            labels = self.pending
            self.add("space", loc, -self.pc % 4, None, head.col)
            for label in labels:
                self.values[label] = self.pc
        insn = spec.BY_MNEMONIC.get(name)
        syntax = insn.operands if insn else _PSEUDO[name][0]
        names = syntax.split(",") if syntax else []
        groups = _split(ops)
        if len(groups) != len(names):
            usage = ", ".join(_USAGE.get(n, n) for n in names)
            col = groups[len(names)][1] if len(groups) > len(names) else end
            raise _Fail(col, f"'{name}' takes {len(names)} operand(s): {name} {usage}".rstrip())
        vals = [self.operand(_OPERAND[n], g, col, end) for n, (g, col) in zip(names, groups, strict=True)]
        if insn:
            regs, field = [], None
            for n, v in zip(names, vals, strict=True):
                kind = _OPERAND[n]
                if kind == "r":
                    regs.append(v)
                elif kind == "mem":
                    field = ("imm", *v[0])
                    regs.append(v[1])
                else:
                    field = v if kind == "cr" else (kind, *v)
            a, b, c = (regs + [0, 0, 0])[:3]
            micro = [(insn, a, b, c, field)]
        else:
            expansion = self.li(*vals) if name == "li" else _PSEUDO[name][1](*vals)
            micro = [(spec.BY_MNEMONIC[m], a, b, c, f) for m, a, b, c, f in expansion]
        self.add("insn", loc, 4 * len(micro), micro, head.col)

    def operand(self, kind: str, g: list[_Tok], col: int, end: int) -> object:
        if not g:
            raise _Fail(col, "missing operand")
        if kind == "r":
            if g[0].kind != "id" or g[0].text.lower() not in REGISTERS:
                raise _Fail(g[0].col, f"expected a register (r0-r15, zero, sp, lr), found '{g[0].text}'")
            if len(g) > 1:
                raise _Fail(g[1].col, f"unexpected '{g[1].text}' after register")
            return REGISTERS[g[0].text.lower()]
        if kind == "mem":
            if len(g) < 3 or g[-1].text != ")" or g[-3].text != "(" or g[-2].text.lower() not in REGISTERS:
                raise _Fail(g[0].col, "expected a memory operand: offset(register)")
            offset = self.expr(g[:-3], end) if len(g) > 3 else ([("n", 0)], g[0].col)
            return offset, REGISTERS[g[-2].text.lower()]
        if kind == "cr":
            name = g[0].text.lower()
            if len(g) == 1 and name in spec.CR_NUMBER:
                return ("const", spec.CR_NUMBER[name], None)
            if len(g) == 1 and name in REGISTERS:
                raise _Fail(g[0].col, f"expected a control register ({', '.join(spec.CR_NAMES)}) or its number")
            return ("cr", *self.expr(g, end))
        return self.expr(g, end)

    def li(self, rd: int, value: tuple[list[tuple], int]) -> list[tuple]:
        rpn, col = value
        try:
            v = spec.sext(_check32(_evaluate(rpn, self.pc, self.look1), col), 32)  # 0xFFFFFFFF is -1
        except _Unknown:
            v = None  # a forward reference: always two words
        if v is not None and -0x8000 <= v < 0x8000:
            return [("addi", rd, 0, 0, _k(v))]
        if v is not None and 0 <= v <= 0xFFFF:
            return [("ori", rd, 0, 0, _k(v))]
        if v is not None and not v & 0xFFFF:
            return [("lui", rd, 0, 0, _k(v >> 16))]
        return [("lui", rd, 0, 0, ("hi", rpn, col)), ("ori", rd, rd, 0, ("lo", rpn, col))]

    # --- pass 2 ---
    def resolve_forward(self) -> None:
        """Give equates defined by forward references their (last) value, for uses before pass 2 meets them."""
        last = {st.data[0]: st for st in self.stmts if st.kind == "set"}
        pending = [st for name, st in last.items() if name in self.unknown]
        progress = True
        while pending and progress:
            progress = False
            for st in list(pending):
                try:
                    self.values[st.data[0]] = _evaluate(st.data[1], st.addr, self.look1)
                except (_Unknown, _Fail):
                    continue
                pending.remove(st)
                progress = True

    def look2(self, name: str, col: int, text: str) -> int:
        if name in self.current:
            return self.current[name]
        if name in self.values:
            return self.values[name]
        if "\x02" in name:
            raise _Fail(col, f"no '{name.split(chr(2))[0]}:' label after '{text}'")
        raise _Fail(col, f"undefined symbol '{text}'")

    def field(self, field: tuple | None, dot: int, addr: int) -> int:
        if field is None:
            return 0
        kind, rpn, col = field
        if kind == "const":
            return rpn
        v = _evaluate(rpn, dot, self.look2)
        if kind == "imm":
            if not -0x8000 <= v <= 0xFFFF:
                raise _Fail(col, f"value {v} does not fit in a 16-bit field (-32768..65535)")
            return v & 0xFFFF
        if kind == "cr":
            if not 0 <= v < spec.NUM_CRS:
                raise _Fail(col, f"unknown control register {v}")
            return v
        v = _check32(v, col) & MASK32
        if kind == "hi":
            return v >> 16
        if kind == "lo":
            return v & 0xFFFF
        delta = spec.sext(v - addr, 32)
        if delta % 4:
            raise _Fail(col, f"target 0x{v:x} is not a whole number of words away from 0x{addr:x}")
        bits = 16 if kind == "br" else 20
        if not -(1 << (bits - 1)) <= delta // 4 < 1 << (bits - 1):
            raise _Fail(col, f"target 0x{v:x} is out of reach ({delta // 4} words away; {bits}-bit offset)")
        return (delta // 4) & ((1 << bits) - 1)

    def emit(self, st: _Stmt, image: bytearray, listing: list[ListingEntry]) -> None:
        def put(addr: int, data: int | bytes, size: int) -> None:
            image[addr : addr + size] = data.to_bytes(4, "little") if isinstance(data, int) else data
            listing.append(ListingEntry(addr, data, st.loc.file, st.loc.line, st.loc.text))

        start = len(listing)
        if st.kind == "set":
            name, rpn, _ = st.data
            try:
                self.current[name] = _evaluate(rpn, st.addr, self.look2)
            except _Fail:
                self.current[name] = 0  # reported once here, not again at every use
                raise
        elif st.kind == "insn":
            for i, (insn, a, b, c, field) in enumerate(st.data):
                put(st.addr + 4 * i, spec.encode(insn, a, b, c, self.field(field, st.addr, st.addr + 4 * i)), 4)
        elif st.kind == "data":
            size, items = st.data
            out = bytearray()
            for i, (rpn, col) in enumerate(items):
                v = _evaluate(rpn, st.addr + size * i, self.look2)
                if size == 4:
                    put(st.addr + 4 * i, _check32(v, col) & MASK32, 4)
                elif not -128 <= v <= 255:
                    raise _Fail(col, f"value {v} does not fit in a byte (-128..255)")
                else:
                    out.append(v & 0xFF)
            if out:
                put(st.addr, bytes(out), len(out))
        elif st.kind == "bytes":
            put(st.addr, st.data, st.size)
        elif st.kind == "space" and st.size:
            fill = _evaluate(st.data[0], st.addr, self.look2) if st.data else 0
            if not -128 <= fill <= 255:
                raise _Fail(st.data[1], f"fill value {fill} does not fit in a byte (-128..255)")
            put(st.addr, bytes([fill & 0xFF]) * st.size, st.size)
        if len(listing) == start:
            listing.append(ListingEntry(st.addr, b"", st.loc.file, st.loc.line, st.loc.text))

    def run(self, source: str, filename: str) -> Program:
        if os.path.isfile(filename):
            self.files.append((os.path.realpath(filename), filename))
            if not self.builds:  # the program itself, so that an .incbin of it with the same defines is a loop
                self.builds = [(os.path.realpath(filename), tuple(sorted(self.defines0.items())))]
        self.frame(_lines(source, filename))
        self.resolve_forward()
        image, listing = bytearray(self.pc), []
        for st in self.stmts:
            try:
                self.emit(st, image, listing)
            except _Fail as f:
                self.error(st.loc, f.col, f.msg, st.seq)
        if self.diags:
            diags = [d for _, d in sorted(self.diags, key=lambda sd: sd[0])][:MAX_ERRORS]
            if len(self.diags) >= MAX_ERRORS:
                diags.append(Diagnostic(filename, 0, 0, f"stopped after {MAX_ERRORS} errors"))
            raise AsmError(diags)
        labels = {n: self.values[n] for n, k in self.kinds.items() if k == "label" and "\x02" not in n}
        equates = {n: self.current.get(n, self.values.get(n, 0)) for n, k in self.kinds.items() if k == "equ"}
        return Program(bytes(image), labels, equates, listing)


def assemble(
    source: str,
    filename: str = "<input>",
    defines: dict[str, int] | None = None,
    include_dirs: Sequence[str | os.PathLike[str]] = (),
) -> Program:
    """Assemble P32 source text into a flat image at address 0; raise AsmError listing every error."""
    defines = dict(defines or {})
    for name, value in defines.items():
        if not isinstance(name, str) or not _IDENT.fullmatch(name) or name == "." or name.lower() in REGISTERS:
            raise AsmError([Diagnostic("<defines>", 0, 0, f"invalid symbol name '{name}'")])
        if not isinstance(value, int) or isinstance(value, bool):
            raise AsmError([Diagnostic("<defines>", 0, 0, f"the value of '{name}' must be an integer")])
    return _Assembler(defines, [str(d) for d in include_dirs]).run(source, filename)


def assemble_file(
    path: str | os.PathLike[str],
    defines: dict[str, int] | None = None,
    include_dirs: Sequence[str | os.PathLike[str]] = (),
) -> Program:
    """Assemble a source file (its .include paths are relative to it); raise AsmError on any error."""
    try:
        text = read_input(path).decode("utf-8")
    except InputError as e:
        raise AsmError([Diagnostic(str(path), 0, 0, f"cannot read file: {e.reason}")]) from None
    except (OSError, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or e
        raise AsmError([Diagnostic(str(path), 0, 0, f"cannot read file: {reason}")]) from None
    return assemble(text, str(path), defines, include_dirs)
