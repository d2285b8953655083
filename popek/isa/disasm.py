"""The P32 disassembler, driven by the instruction table in ``isa.spec``.

Every valid word prints in a spelling that ``isa.asm`` assembles back to the same word at the same address:
registers as r0..r15, control registers by name, branch and jump targets as absolute addresses, and each
immediate as its instruction reads it (signed where it is sign-extended, unsigned where it is not).
Invalid words print as ``.word 0x...``.
"""

from __future__ import annotations

from popek.isa import spec

MASK32 = 0xFFFFFFFF
_HEX = {"lui", "andi", "ori", "xori"}  # bit patterns: zero-extended, shown in hex
_UNSIGNED = {"shli", "shri", "sari"}  # shift counts: zero-extended, shown in decimal


def _symbolize(addr: int, symbols: dict[str, int]) -> str | None:
    """``name`` or ``name+0x..`` for the nearest symbol at or below ``addr``."""
    best = max(((v, n) for n, v in symbols.items() if v <= addr), default=None)
    if best is None:
        return None
    return best[1] if best[0] == addr else f"{best[1]}+{addr - best[0]:#x}"


def disassemble_word(word: int, addr: int = 0, symbols: dict[str, int] | None = None) -> str:
    """One instruction word as assembly text (a branch target gets a ``# <symbol>`` comment when known)."""
    word &= MASK32
    d = spec.decode(word)
    if d is None:
        return f".word 0x{word:08x}"
    m = d.insn.mnemonic
    regs = iter((d.a, d.b, d.c))  # register operands take the a, b, c fields in the order they are written
    ops, target = [], None
    for name in filter(None, d.insn.operands.split(",")):
        if name in ("rd", "rs", "rs1", "rs2"):
            ops.append(f"r{next(regs)}")
        elif name == "mem":
            ops.append(f"{spec.sext(d.imm, 16)}(r{next(regs)})")
        elif name in ("br", "j"):
            target = (addr + 4 * spec.sext(d.imm, 16 if name == "br" else 20)) & MASK32
            ops.append(f"0x{target:x}")
        elif name == "cr":
            ops.append(spec.CR_NAMES[d.imm])
        elif name == "imm" and m in _HEX:
            ops.append(f"0x{d.imm:x}")
        elif name == "imm" and m not in _UNSIGNED:
            ops.append(str(spec.sext(d.imm, 16)))
        else:  # shift counts, uimm, port
            ops.append(str(d.imm))
    text = f"{m} {', '.join(ops)}" if ops else m
    label = _symbolize(target, symbols) if target is not None and symbols else None
    return f"{text}  # <{label}>" if label else text


def disassemble(image: bytes, base: int = 0, symbols: dict[str, int] | None = None) -> str:
    """An objdump-like listing of ``image`` loaded at ``base``: ``address: word  instruction`` per word."""
    names: dict[int, list[str]] = {}
    for name, value in (symbols or {}).items():
        names.setdefault(value, []).append(name)
    lines: list[str] = []
    for off in range(0, len(image), 4):
        addr, chunk = base + off, bytes(image[off : off + 4])
        if addr in names:
            lines += [""] if lines else []
            lines += [f"<{name}>:" for name in sorted(names[addr])]
        if len(chunk) == 4:
            word = int.from_bytes(chunk, "little")
            lines.append(f"{addr:08x}: {word:08x}  {disassemble_word(word, addr, symbols)}")
        else:  # a tail shorter than a word
            lines.append(f"{addr:08x}: {chunk.hex():<8}  .byte {', '.join(f'0x{b:02x}' for b in chunk)}")
    return "\n".join(lines) + "\n" if lines else ""
