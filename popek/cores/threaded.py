"""The JIT core's fast loop, emitted as LLVM IR: threaded code with one dispatch jump per handler.

A loop written in Python gives Numba one ``switch`` on the opcode, and LLVM compiles it to a single
indirect jump shared by every instruction; the branch predictor then has one place to guess the next
handler from.  An interpreter written in C with computed goto ends every handler with its own jump, which
the predictor learns per handler (after ``addi`` in a loop comes ``blt``, ...).  Numba has no computed goto,
so this module writes the loop in LLVM IR itself (an ``@intrinsic``): every handler ends with the fetch of
the next word and an ``indirectbr`` through a table of block addresses.  LLVM never inlines a function that
takes a block's address, so the loop keeps a function of its own, and its few live values (pc, r, the
window) stay in machine registers.

Semantics are those of ``popek/cores/reference.py`` for every instruction but the system ones (class
``spec.SYSTEM``), on which the loop returns to the caller.  The contract, for ``popek/cores/jit.py``:
``fast(state, mem, pc, r, stop, lim, base, fbase, rwd) -> (pc, r, cause, info, word)`` runs from ``pc``
while ``r`` (instructions retired) is below ``stop``; an access of n bytes at a virtual address va is
allowed iff va + n <= ``lim`` and reaches ``mem[base + va]``; words are fetched at ``fbase + pc``.  It
returns with cause 0 when ``r`` reached ``stop``, with a trap's cause and info (badaddr) to deliver, or with
the opcode of a system instruction as the cause (at least SYSTEM_MARK, above every cause) and its word.
With binary-rewriting support (``fast_loop_rw``) every store leaves the marker over the shadow of what it
wrote, ``rwd`` bytes below, and the monitor-only opcodes count as system ones when ``fbase != base``.

Registers live in ``state[0:16]`` as unsigned 32-bit values; every handler computes in 32 bits and writes
its result unconditionally, and the dispatch rewrites r0 with 0 before the next instruction can read it (as
the C core does), which is cheaper than a test of ``rd`` in every handler.  The alignment of pc is checked
on entry and after ``jalr``, the only instruction that can make it odd.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from popek.isa import spec
from popek.isa import state as S

I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
SYSTEM_OPCODES = [insn.opcode for insn in spec.INSNS if insn.klass == spec.SYSTEM]  # run by the caller
SYSTEM_MARK = min(SYSTEM_OPCODES)  # a returned cause at or above it is a system instruction's opcode, not a trap's
assert SYSTEM_MARK > max(spec.CAUSE_NAMES)
_BIG_ENDIAN = sys.byteorder == "big"  # P32 is little-endian: swap bytes on a big-endian host
RW_MARK = S.RW_OP_XLATE << 24  # the word a store leaves over the shadow of what it wrote

# Binary operations on two 32-bit values, by R-format opcode (the I-format ones take the immediate as y).
ALU: dict[str, Callable[[ir.IRBuilder, ir.Value, ir.Value], ir.Value]] = {
    "add": lambda b, x, y: b.add(x, y),
    "sub": lambda b, x, y: b.sub(x, y),
    "and": lambda b, x, y: b.and_(x, y),
    "or": lambda b, x, y: b.or_(x, y),
    "xor": lambda b, x, y: b.xor(x, y),
    "shl": lambda b, x, y: b.shl(x, b.and_(y, _c32(31))),
    "shr": lambda b, x, y: b.lshr(x, b.and_(y, _c32(31))),
    "sar": lambda b, x, y: b.ashr(x, b.and_(y, _c32(31))),
    "mul": lambda b, x, y: b.mul(x, y),
    "slt": lambda b, x, y: b.zext(b.icmp_signed("<", x, y), I32),
    "sltu": lambda b, x, y: b.zext(b.icmp_unsigned("<", x, y), I32),
}
# I-format: the R-format operation and the mask that takes its immediate from the word (None: the low 16
# bits sign-extended).
ALU_IMM = {
    "addi": ("add", None),
    "andi": ("and", 0xFFFF),
    "ori": ("or", 0xFFFF),
    "xori": ("xor", 0xFFFF),
    "shli": ("shl", 31),
    "shri": ("shr", 31),
    "sari": ("sar", 31),
    "slti": ("slt", None),
    "sltiu": ("sltu", None),
}
# Conditional branches: whether one is taken, from the two registers it compares.
BRANCH: dict[str, Callable[[ir.IRBuilder, ir.Value, ir.Value], ir.Value]] = {
    "beq": lambda b, x, y: b.icmp_unsigned("==", x, y),
    "bne": lambda b, x, y: b.icmp_unsigned("!=", x, y),
    "blt": lambda b, x, y: b.icmp_signed("<", x, y),
    "bge": lambda b, x, y: b.icmp_signed(">=", x, y),
    "bltu": lambda b, x, y: b.icmp_unsigned("<", x, y),
    "bgeu": lambda b, x, y: b.icmp_unsigned(">=", x, y),
}


def _c32(v: int) -> ir.Constant:
    return ir.Constant(I32, v & 0xFFFFFFFF)


def _c64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


class _Loop:
    """Emits the loop into the function that ``builder`` is positioned in."""

    def __init__(self, context, builder: ir.IRBuilder, sig, args, rw: bool) -> None:
        self.b = builder
        self.rw = rw
        self.regs = context.make_array(sig.args[0])(context, builder, args[0]).data  # i64*
        self.mem = context.make_array(sig.args[1])(context, builder, args[1]).data  # i8*
        pc, r, self.stop, self.lim, self.base, self.fbase, self.rwd = args[2:9]
        self.v_pc = cgutils.alloca_once_value(builder, builder.trunc(pc, I32))
        self.v_r = cgutils.alloca_once_value(builder, r)
        self.v_tc = cgutils.alloca_once_value(builder, _c64(0))
        self.v_ti = cgutils.alloca_once_value(builder, _c64(0))
        self.v_w = cgutils.alloca_once_value(builder, _c32(0))
        fn = builder.function
        self.fn = fn
        self.exit = fn.append_basic_block("exit")
        self.exit_stop = fn.append_basic_block("exit_stop")  # r reached stop: nothing to report
        self.lim_fetch = builder.sub(self.lim, _c64(4))  # a word at pc can be fetched iff pc <= lim_fetch
        self.start = fn.append_basic_block("start")  # checks pc's alignment first (entry, jalr to an odd pc)
        self.illegal = fn.append_basic_block("illegal")
        self.system = fn.append_basic_block("system")
        self.fetch_fault = fn.append_basic_block("fetch_fault")
        self.handlers: dict[int, ir.Block] = {}
        self.jumps: list[ir.instructions.IndirectBranch] = []

    # --- small pieces -----------------------------------------------------------------------------------
    def reg(self, index: ir.Value) -> ir.Value:
        """The 32-bit value of register ``index`` (an i64)."""
        return self.b.trunc(self.b.load(self.b.gep(self.regs, [index])), I32)

    def set_reg(self, index: ir.Value, value: ir.Value) -> None:
        self.b.store(self.b.zext(value, I64), self.b.gep(self.regs, [index]))

    def field(self, w: ir.Value, shift: int) -> ir.Value:
        """A 4-bit register field of ``w`` as an i64 index."""
        return self.b.zext(self.b.and_(self.b.lshr(w, _c32(shift)), _c32(15)), I64)

    def simm(self, w: ir.Value) -> ir.Value:
        return self.b.sext(self.b.trunc(w, I16), I32)

    def byte_ptr(self, offset: ir.Value) -> ir.Value:
        return self.b.gep(self.mem, [offset])

    def load_word(self, offset: ir.Value) -> ir.Value:
        """The little-endian word at ``mem[offset:offset+4]``: one unaligned access (a base need not be aligned)."""
        v = self.b.load(self.b.bitcast(self.byte_ptr(offset), I32.as_pointer()), align=1)
        return self.b.bswap(v) if _BIG_ENDIAN else v

    def store_word(self, value: ir.Value, offset: ir.Value) -> None:
        """Store ``value`` little-endian at ``mem[offset:offset+4]``."""
        v = self.b.bswap(value) if _BIG_ENDIAN else value
        self.b.store(v, self.b.bitcast(self.byte_ptr(offset), I32.as_pointer()), align=1)

    def trap(self, cause: int, info: ir.Value) -> None:
        """Leave the loop with a trap to deliver."""
        self.trap_from(_c64(cause), info)

    def trap_from(self, cause: ir.Value, info: ir.Value) -> None:
        """Leave the loop reporting ``cause`` (a trap's, or a system instruction's opcode) and ``info``."""
        b = self.b
        b.store(b.zext(cause, I64) if cause.type != I64 else cause, self.v_tc)
        b.store(b.zext(info, I64) if info.type != I64 else info, self.v_ti)
        b.branch(self.exit)

    def trap_if(self, cond: ir.Value, cause: int, info: Callable[[], ir.Value]) -> None:
        with self.b.if_then(cond, likely=False):
            self.trap(cause, info())

    def next(self) -> None:
        """r0 <- 0, then fetch the word at pc and jump to its handler (or leave when r reaches stop)."""
        b = self.b
        b.store(_c64(0), self.regs)
        r = b.load(self.v_r)
        with b.if_then(b.icmp_signed(">=", r, self.stop), likely=False):
            b.branch(self.exit_stop)
        pc = b.zext(b.load(self.v_pc), I64)
        with b.if_then(b.icmp_signed(">", pc, self.lim_fetch), likely=False):
            b.branch(self.fetch_fault)
        w = self.load_word(b.add(self.fbase, pc))
        b.store(w, self.v_w)
        slot = b.gep(self.table, [_c64(0), b.zext(b.lshr(w, _c32(24)), I64)])
        self.jumps.append(b.branch_indirect(b.load(slot)))

    def retire(self, npc: ir.Value, then: ir.Block | None = None) -> None:
        """pc <- npc, one more instruction retired, then the next one (or go to block ``then``)."""
        self.b.store(npc, self.v_pc)
        self.b.store(self.b.add(self.b.load(self.v_r), _c64(1)), self.v_r)
        if then is None:
            self.next()
        else:
            self.b.branch(then)

    def handler(self, mnemonic: str) -> tuple[ir.Value, ir.Value]:
        """Open the block of ``mnemonic`` and check its must-be-zero bits; returns (the word, pc)."""
        insn = spec.BY_MNEMONIC[mnemonic]
        block = self.fn.append_basic_block(mnemonic)
        self.handlers[insn.opcode] = block
        self.b.position_at_end(block)
        w, pc = self.b.load(self.v_w), self.b.load(self.v_pc)
        mask = spec.MUST_BE_ZERO.get(insn.operands, 0)
        if mask:
            self.check_stray(w, mask)
        return w, pc

    def check_stray(self, w: ir.Value, mask: int) -> None:
        """ILLEGAL when a field the instruction does not use is not zero (ISA §3)."""
        self.trap_if(self.b.icmp_unsigned("!=", self.b.and_(w, _c32(mask)), _c32(0)), spec.ILLEGAL, lambda: w)

    def check_data(self, va: ir.Value, size: int) -> ir.Value:
        """Check a data access of ``size`` bytes at ``va``; returns its offset in ``mem``."""
        b = self.b
        if size == 4:
            self.trap_if(b.icmp_unsigned("!=", b.and_(va, _c32(3)), _c32(0)), spec.ALIGN, lambda: va)
        vz = b.zext(va, I64)
        self.trap_if(b.icmp_signed(">", b.add(vz, _c64(size)), self.lim), spec.MEM_FAULT, lambda: va)
        return b.add(self.base, vz)

    def mark_shadow(self, offset: ir.Value) -> None:
        """Binary-rewriting support: leave the marker over the shadow word of the byte at ``offset``."""
        b = self.b
        shadow = b.and_(b.sub(offset, self.rwd), _c64(~3))
        with b.if_then(b.icmp_unsigned("!=", self.load_word(shadow), _c32(RW_MARK))):
            self.store_word(_c32(RW_MARK), shadow)

    # --- the handlers -----------------------------------------------------------------------------------
    def emit(self) -> ir.Value:
        b = self.b
        self.table = self._table_placeholder()
        b.branch(self.start)

        b.position_at_end(self.start)
        b.store(_c64(0), self.regs)  # after jalr r0: as the dispatch does
        with b.if_then(b.icmp_signed(">=", b.load(self.v_r), self.stop), likely=False):
            b.branch(self.exit_stop)
        pc = b.load(self.v_pc)
        self.trap_if(b.icmp_unsigned("!=", b.and_(pc, _c32(3)), _c32(0)), spec.ALIGN, lambda: pc)
        self.next()

        for name, op in ALU.items():
            w, pc = self.handler(name)
            self.set_reg(self.field(w, 20), op(b, self.reg(self.field(w, 16)), self.reg(self.field(w, 12))))
            self.retire(b.add(pc, _c32(4)))
        for name, (alu, mask) in ALU_IMM.items():
            w, pc = self.handler(name)
            imm = self.simm(w) if mask is None else b.and_(w, _c32(mask))
            self.set_reg(self.field(w, 20), ALU[alu](b, self.reg(self.field(w, 16)), imm))
            self.retire(b.add(pc, _c32(4)))
        self._divide()

        w, pc = self.handler("lui")
        self.set_reg(self.field(w, 20), b.shl(w, _c32(16)))
        self.retire(b.add(pc, _c32(4)))

        for name, size, load in (("ld", 4, None), ("ldb", 1, b.sext), ("ldbu", 1, b.zext)):
            w, pc = self.handler(name)
            offset = self.check_data(b.add(self.reg(self.field(w, 16)), self.simm(w)), size)
            if size == 4:
                value = self.load_word(offset)
            else:
                value = load(b.load(self.byte_ptr(offset)), I32)
            self.set_reg(self.field(w, 20), value)
            self.retire(b.add(pc, _c32(4)))
        for name, size in (("st", 4), ("stb", 1)):
            w, pc = self.handler(name)
            offset = self.check_data(b.add(self.reg(self.field(w, 16)), self.simm(w)), size)
            value = self.reg(self.field(w, 20))
            if size == 4:
                self.store_word(value, offset)
            else:
                b.store(b.trunc(value, I8), self.byte_ptr(offset))
            if self.rw:
                self.mark_shadow(offset)
                if size == 4:
                    self.mark_shadow(b.add(offset, _c64(3)))
            self.retire(b.add(pc, _c32(4)))

        for name, cond in BRANCH.items():
            w, pc = self.handler(name)
            taken = cond(b, self.reg(self.field(w, 20)), self.reg(self.field(w, 16)))
            offset = b.select(taken, b.shl(self.simm(w), _c32(2)), _c32(4))
            self.retire(b.add(pc, offset))

        w, pc = self.handler("jal")
        off20 = b.ashr(b.shl(w, _c32(12)), _c32(12))
        self.set_reg(self.field(w, 20), b.add(pc, _c32(4)))
        self.retire(b.add(pc, b.shl(off20, _c32(2))))

        w, pc = self.handler("jalr")
        target = b.add(self.reg(self.field(w, 16)), self.simm(w))  # before writing rd: jalr r1, 0(r1)
        self.set_reg(self.field(w, 20), b.add(pc, _c32(4)))
        with b.if_then(b.icmp_unsigned("!=", b.and_(target, _c32(3)), _c32(0)), likely=False):
            self.retire(target, then=self.start)  # the fetch at the odd pc raises ALIGN
        self.retire(target)

        b.position_at_end(self.illegal)
        self.trap(spec.ILLEGAL, b.load(self.v_w))
        b.position_at_end(self.system)  # cause <- the opcode (>= SYSTEM_MARK): values already in registers
        w = b.load(self.v_w)
        self.trap_from(b.lshr(w, _c32(24)), w)
        b.position_at_end(self.exit_stop)
        b.branch(self.exit)
        b.position_at_end(self.fetch_fault)
        self.trap(spec.MEM_FAULT, b.load(self.v_pc))

        table = [self.illegal] * 256
        for op in SYSTEM_OPCODES:
            table[op] = self.system
        if self.rw:  # a monitor-only word decodes only when fetched from the shadow copy
            monitor_only = self.fn.append_basic_block("monitor_only")
            b.position_at_end(monitor_only)
            b.cbranch(b.icmp_unsigned("!=", self.fbase, self.base), self.system, self.illegal)
            for op in range(S.RW_OP_XLATE, S.RW_OP_LAST + 1):
                table[op] = monitor_only
        for op, block in self.handlers.items():
            table[op] = block
        self._fill_table(table)

        b.position_at_end(self.exit)
        out = [
            b.zext(b.load(self.v_pc), I64),
            b.load(self.v_r),
            b.load(self.v_tc),
            b.load(self.v_ti),
            b.zext(b.load(self.v_w), I64),
        ]
        return out

    def _divide(self) -> None:
        """div divu rem remu: signed ones in 64 bits, where INT_MIN / -1 does not overflow."""
        b = self.b
        for name in ("div", "divu", "rem", "remu"):
            w, pc = self.handler(name)
            x, y = self.reg(self.field(w, 16)), self.reg(self.field(w, 12))
            self.trap_if(b.icmp_unsigned("==", y, _c32(0)), spec.DIVZERO, lambda: _c64(0))
            if name == "divu":
                v = b.udiv(x, y)
            elif name == "remu":
                v = b.urem(x, y)
            else:
                sx, sy = b.sext(x, I64), b.sext(y, I64)
                v = b.trunc(b.sdiv(sx, sy) if name == "div" else b.srem(sx, sy), I32)
            self.set_reg(self.field(w, 20), v)
            self.retire(b.add(pc, _c32(4)))

    def _table_placeholder(self) -> ir.GlobalVariable:
        module = self.b.module
        ty = ir.ArrayType(I8.as_pointer(), 256)
        table = ir.GlobalVariable(module, ty, name=module.get_unique_name("p32_dispatch"))
        table.global_constant = True
        table.linkage = "private"
        return table

    def _fill_table(self, blocks: list[ir.Block]) -> None:
        ty = self.table.value_type
        self.table.initializer = ir.Constant(ty, [ir.BlockAddress(self.fn, blk) for blk in blocks])
        for jump in self.jumps:
            for blk in dict.fromkeys(blocks):
                jump.add_destination(blk)


def _make(rw: bool):
    @intrinsic
    def fast(typingctx, state, mem, pc, r, stop, lim, base, fbase, rwd):
        sig = types.UniTuple(types.int64, 5)(state, mem, *(types.int64,) * 7)

        def codegen(context, builder, sig, args):
            out = _Loop(context, builder, sig, args, rw).emit()
            return context.make_tuple(builder, sig.return_type, out)

        return sig, codegen

    return fast


fast_loop = _make(rw=False)
fast_loop_rw = _make(rw=True)  # with binary-rewriting support: fetch at fbase + pc, mark the shadow of stores
