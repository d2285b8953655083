"""The translating core: hot regions of P32 code compiled to machine code with LLVM, the rest interpreted.

``run(state, mem, budget) -> exit code`` leaves ``state`` and ``mem`` bit for bit as ``reference.run`` does.
It runs the machine in two alternating ways:

- a *dispatcher* (LLVM IR, compiled once per process) looks the pc up in a direct-mapped translation cache
  keyed by (pc, base) and calls the region's machine code while no interrupt is deliverable;
- everything else goes to the JIT core's interpreter (``jit.run`` with a budget of one block's length):
  system instructions, traps, interrupts, blocks that do not fit in the budget or the timer, the instruction
  at which the timer expires under the paravirtual flag (F_PV: the expiry also writes the shared area), and
  every run under the binary-rewriting flag (F_REWRITE: fetches from a shadow copy, stores mark it).

A *block* is straight-line ALU code, loads and stores, ending at a branch or jump (or before an instruction
it does not translate, or at ``MAX_BLOCK`` instructions).  A *region* is the blocks reachable from a hot
entry through direct branches and jumps and that have already run (at most ``MAX_REGION`` instructions),
compiled as one function: a branch between two of its blocks is a jump in machine code, the guest's registers
stay in machine registers across them, and a loop of guest code becomes a loop of machine code.  ``jalr``
jumps inside the region when its target is one of its entries, and the dispatcher may enter a region at its
first block, its loop heads and the return sites of its calls (a budget that ends inside a loop resumes in
translated code).  A region is translated once ``HOT`` steps were interpreted from its entry (pc, base), or
the interpreter was called there ``HOT_VISITS`` times, so a short run interprets and pays nothing for
translation; LLVM itself is set up with the first translation.

Exactness:

- *budget and timer*: the dispatcher gives a region its fuel (steps to the budget, or to the timer's expiry
  if that is sooner).  At its entries and loop heads the region checks that the fuel covers the longest path
  to the next check (``fuel_plan``), so a block runs only when it fits whole; otherwise the region returns and
  the interpreter steps on, so the timer interrupt comes at exactly the same instruction as on the other
  cores.  ``cycle``, ``steps`` and ``timer`` are updated as retirement would;
- *traps*: a load, store or division that would trap ends the region just before that instruction with its
  effects up to there, and the interpreter then raises the trap with the exact epc and badaddr;
- *the code itself*: a region holds the words it was translated from and compares them with memory the first
  time it runs in each *epoch*.  The epoch advances whenever the dispatcher is entered (the interpreter, the
  host or a fresh load may have written anything since) and whenever translated code stores into a granule
  of memory that holds translated code (a map of 256-byte granules, set when a region is
  translated).  Such a store into the running region's own span ends the region right after the store.  A
  region that finds its words changed does not run; its translation is set aside (and installed again if
  the same code comes back) and a new one made once hot;
- *relocation*: the cache is keyed by (pc, base), and a region runs only when all its words lie inside the
  window that base and bound give.

The cache is per process and shared by every machine (a region checks its words against whatever memory it
runs on); ``run`` holds a lock, so one thread translates or runs at a time.
"""

from __future__ import annotations

import bisect
import ctypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir

from popek.cores import jit, threaded
from popek.isa import spec
from popek.isa import state as S

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
M32 = 0xFFFFFFFF
HOT = 20_000  # steps interpreted from a (pc, base) before a region is translated from it (a translation costs
# tens of milliseconds: what the interpreter does in that time)
HOT_VISITS = 500  # or interpreted this many times (each time costs a round trip through Python: glue code
# between hot loops that runs once per pass gets translated too)
MAX_BLOCK = 64  # instructions in one block at most
MAX_REGION = 512  # instructions in one region at most
ASIDE = 4  # dropped translations kept per entry, for code that comes back
MAX_PROFILED = 1 << 20  # (pc, base) pairs whose interpretation is counted at once
# Translations per process (~150 KiB each, never freed); past them it only interprets, so a guest that rewrites
# its code forever cannot grow the host without bound.
MAX_TRANSLATIONS = 1024
TABLE_BITS = 14
TABLE_MASK = (1 << TABLE_BITS) - 1
NO_KEY = -1  # an empty slot: no (pc, base) key is negative (pc and base are 32-bit)
GRANULE_BITS = 8  # the code map marks memory in granules of 256 bytes,
MAP_BITS = 33 - GRANULE_BITS  # one entry per granule of the 2**33 bytes that base + address can reach
# The translator's environment: the epoch, the code map's address, and the range of physical addresses holding
# translated code ([lo - 3, lo - 3 + span): a store that ends past lo may overlap it).
ENV_EPOCH, ENV_MAP, ENV_LO, ENV_SPAN = 0, 1, 2, 3
FUEL_CHECK_SPAN = 64  # at most this many instructions between two checks of a region's fuel

# The ALU operations and branch conditions, as the JIT core's fast loop emits them: R-format by mnemonic,
# I-format as (operation, mask).
_ALU_R, _ALU_I, _BRANCH = threaded.ALU, threaded.ALU_IMM, threaded.BRANCH
_DIV = ("div", "divu", "rem", "remu")
_LOADS = {"ld": 4, "ldb": 1, "ldbu": 1}
_STORES = {"st": 4, "stb": 1}
_TRANSLATED = set(_ALU_R) | set(_ALU_I) | set(_BRANCH) | set(_DIV) | set(_LOADS) | set(_STORES)
_TRANSLATED |= {"lui", "jal", "jalr"}
_ENDS_BLOCK = set(_BRANCH) | {"jal", "jalr"}


def _c32(v: int) -> ir.Constant:
    return ir.Constant(I32, v & M32)


def _c64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


@dataclass
class Stats:
    """What translation cost and how much translated code ran (process-wide, since the last reset)."""

    translations: int = 0  # regions compiled
    translated_insns: int = 0  # instructions in them
    translate_seconds: float = 0.0  # time spent compiling them (IR, optimisation, machine code)
    reinserts: int = 0  # translations found again after another region took their cache slot
    invalidations: int = 0  # translations dropped because memory under them changed
    reinstated: int = 0  # dropped translations installed again when memory held their code again
    refused: int = 0  # translations not made: the process has made MAX_TRANSLATIONS
    block_runs: int = 0  # regions entered by the dispatcher (translation cache hits)
    block_insns: int = 0  # instructions retired in translated code
    interpreted_insns: int = 0  # steps the interpreter ran for this core
    setup_seconds: float = 0.0  # compiling the dispatcher (once per process)


_STATS = Stats()


def stats() -> Stats:
    """The translation counters and times of this process."""
    if _T is not None:
        _STATS.block_runs, _STATS.block_insns = int(_T.counters[0]), int(_T.counters[1])
    return Stats(**vars(_STATS))


def reset_stats() -> None:
    """Zero the counters (the translation cache stays)."""
    global _STATS
    _STATS = Stats()
    if _T is not None:
        _T.counters[:] = 0


# --- region discovery -----------------------------------------------------------------------------------


def scan_block(mem: np.ndarray, phys: int, limit: int) -> list[int]:
    """The words of the block at physical ``phys``: translatable ones, up to and including a branch or jump.

    ``limit`` is how many words may be fetched there (the relocation window).
    """
    words: list[int] = []
    for w in _words_at(mem, phys, max(min(MAX_BLOCK, limit, (len(mem) - phys) // 4), 0)) or []:
        d = spec.decode(w)
        if d is None or d.insn.mnemonic not in _TRANSLATED:
            break
        words.append(w)
        if d.insn.mnemonic in _ENDS_BLOCK:
            break
    return words


def _jumps(pc: int, words: list[int]) -> list[int]:
    """The pcs a block's translation jumps to directly (a ``jalr`` goes through the region's entry switch)."""
    d = spec.decode(words[-1])
    assert d is not None
    m, last, end = d.insn.mnemonic, pc + 4 * (len(words) - 1), pc + 4 * len(words)
    if m in _BRANCH:
        return [(last + 4 * spec.sext(words[-1] & 0xFFFF, 16)) & M32, end]
    if m == "jal":
        return [(last + 4 * spec.sext(words[-1] & 0xFFFFF, 20)) & M32]
    return [] if m == "jalr" else [end]


def _is_call(word: int) -> bool:
    """``jal`` that links (a call, whose return comes back to the next word), not a plain jump."""
    d = spec.decode(word)
    return d is not None and d.insn.mnemonic == "jal" and d.a != 0


def _successors(pc: int, words: list[int]) -> list[int]:
    """The pcs a block may go on to that are known before it runs: its jumps, and the return site of a call."""
    jumps, end = _jumps(pc, words), pc + 4 * len(words)
    return jumps if end in jumps else [*jumps, end]


def find_region(
    mem: np.ndarray, base: int, lim: int, entry: int, ran: Callable[[int], bool] = lambda pc: True
) -> dict[int, list[int]]:
    """The blocks of the region entered at ``entry``: pc -> words, the entry first (empty if untranslatable).

    ``lim`` is the size of the relocation window (no block word at or past it).  A block other than the
    entry joins only if ``ran(pc)``: code that has not run yet (an error path, a loop's exit) stays out,
    which keeps translation short; the region leaves to the dispatcher there.
    """
    blocks: dict[int, list[int]] = {}
    todo, total = [entry], 0
    while todo and len(blocks) < MAX_REGION:
        pc = todo.pop(0)
        if pc in blocks or pc & 3 or pc >= lim or (blocks and not ran(pc)):
            continue
        words = scan_block(mem, base + pc, min((lim - pc) // 4, MAX_REGION - total))
        if not words:
            continue
        blocks[pc] = words
        total += len(words)
        if total >= MAX_REGION:
            break
        todo += _successors(pc, words)
    # A block that runs into another block's start ends there and falls through to it: one copy of the
    # code, and a short forward branch over one block becomes a diamond that LLVM may turn into a select.
    starts = sorted(blocks)
    for pc, words in blocks.items():
        after = starts[bisect.bisect_right(starts, pc) :]
        if after and after[0] < pc + 4 * len(words):
            blocks[pc] = words[: (after[0] - pc) // 4]
    return blocks


def _written(blocks: dict[int, list[int]]) -> set[int]:
    """The registers the region's instructions write (all but stores and branches write ``rd``)."""
    regs = set()
    for words in blocks.values():
        for w in words:
            d = spec.decode(w)
            assert d is not None
            if d.insn.mnemonic not in _STORES and d.insn.mnemonic not in _BRANCH and d.a:
                regs.add(d.a)
    return regs


def fuel_plan(blocks: dict[int, list[int]]) -> tuple[set[int], dict[int, int]]:
    """Where a region checks its fuel, and how much: (checkpoints, most steps from a block to the next check).

    Every loop passes a checkpoint (the targets of a depth-first search's back edges), and no path runs more
    than ``FUEL_CHECK_SPAN`` instructions (or one block) unchecked, so a check at a block's start that the fuel
    covers its distance makes every path to the next check or exit fit, without a check in every block.
    """
    succ = {pc: [s for s in _jumps(pc, w) if s in blocks] for pc, w in blocks.items()}
    heads: set[int] = set()
    seen: dict[int, bool] = {}  # pc -> True while on the search's stack
    for root in blocks:
        if root in seen:
            continue
        seen[root] = True
        stack = [(root, iter(succ[root]))]
        while stack:
            node, todo = stack[-1]
            for nxt in todo:
                if seen.get(nxt):
                    heads.add(nxt)
                elif nxt not in seen:
                    seen[nxt] = True
                    stack.append((nxt, iter(succ[nxt])))
                    break
            else:
                seen[node] = False
                stack.pop()
    dist: dict[int, int] = {}

    def distance(pc: int) -> int:
        if pc not in dist:
            n = len(blocks[pc])
            tail = max((distance(s) for s in succ[pc] if s not in heads), default=0)
            if n + tail > FUEL_CHECK_SPAN:
                heads.update(succ[pc])  # a later check (distances found before only grow safer)
                tail = 0
            dist[pc] = n + tail
        return dist[pc]

    for pc in blocks:
        distance(pc)
    return heads, dist


# --- region translation ----------------------------------------------------------------------------------


class _Region:
    """Emits one region's function: ``i64 f(i64* state, i8* mem, i64 lim, i64 fuel)`` -> instructions retired.

    It runs blocks while each fits in ``fuel`` (the steps it may retire) and returns how many it retired,
    with pc and the registers written back to ``state``; 0 means it ran nothing (its words changed, a word
    lies outside the window, or its first block does not fit).  The relocation base is the one of the
    region's key, a constant here; the environment (epoch, code map) is the translator's, at fixed addresses.
    """

    def __init__(self, module: ir.Module, name: str, base: int, blocks: dict[int, list[int]], env: np.ndarray) -> None:
        fnty = ir.FunctionType(I64, [I64.as_pointer(), I8.as_pointer(), I64, I64])
        self.fn = ir.Function(module, fnty, name=name)
        self.state, self.mem, self.lim, fuel = self.fn.args
        for arg in (self.state, self.mem):
            arg.add_attribute("noalias")  # distinct arrays: a guest store leaves the registers in place
        self.base = _c64(base)
        self.env = ir.Constant(I64, env.ctypes.data).inttoptr(I64.as_pointer())
        self.code_map = ir.Constant(I64, int(env[ENV_MAP])).inttoptr(I8.as_pointer())
        self.blocks = blocks
        self.epoch = ir.GlobalVariable(module, I64, name=f"{name}_epoch")
        self.epoch.initializer = _c64(-1)
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        b = self.b
        self.regs = [b.alloca(I32, name=f"r{i}") for i in range(16)]
        self.v_fuel, self.v_pc = b.alloca(I64, name="fuel"), b.alloca(I32, name="pc")
        b.store(fuel, self.v_fuel)
        self.fuel = fuel
        self.written = sorted(_written(blocks))
        self.labels = {pc: self.fn.append_basic_block(f"b_{pc:x}") for pc in blocks}
        self.heads, self.dist = fuel_plan(blocks)
        # Where the region may be entered from outside (the dispatcher, a jalr), its fuel checked there first:
        # its first block, the loop heads, and the return sites of its calls.  No other block, so that a block
        # entered from two places inside stays a join that LLVM can turn into selects.
        calls = [pc + 4 * len(w) for pc, w in blocks.items() if _is_call(w[-1])]
        starts = [next(iter(blocks)), *sorted(self.heads), *calls]
        self.entries = {pc: self.fn.append_basic_block(f"enter_{pc:x}") for pc in dict.fromkeys(starts) if pc in blocks}
        self.exit = self.fn.append_basic_block("exit")
        self.lo = min(blocks)
        self.hi = max(pc + 4 * len(w) for pc, w in blocks.items())

    def reg(self, i: int) -> ir.Value:
        return _c32(0) if i == 0 else self.b.load(self.regs[i])

    def set_reg(self, i: int, v: ir.Value) -> None:
        if i:
            self.b.store(v, self.regs[i])

    def spend(self, k: int) -> None:
        """``k`` more instructions retired: take them from the fuel."""
        self.b.store(self.b.sub(self.b.load(self.v_fuel), _c64(k)), self.v_fuel)

    def leave(self, k: int, pc: ir.Value) -> None:
        """Leave the region with ``k`` more instructions of the current block retired and ``pc`` next."""
        self.spend(k)
        self.b.store(pc, self.v_pc)
        self.b.branch(self.exit)

    def leave_if(self, cond: ir.Value, k: int, pc: int) -> None:
        with self.b.if_then(cond, likely=False):
            self.leave(k, _c32(pc))

    def go(self, k: int, pc: ir.Value | int) -> None:
        """End a block of ``k`` instructions: jump to the block at ``pc`` if the region has it, else leave."""
        b = self.b
        if isinstance(pc, int):
            pc &= M32
            if pc in self.labels:
                self.spend(k)
                b.branch(self.labels[pc])
            else:
                self.leave(k, _c32(pc))
            return
        self.spend(k)
        b.store(pc, self.v_pc)
        sw = b.switch(pc, self.exit)
        for target, label in self.entries.items():
            sw.add_case(_c32(target), label)

    def check_fuel(self, pc: int) -> None:
        """Leave before the block at ``pc`` unless the fuel covers every path from it to the next check."""
        b = self.b
        self.leave_if(b.icmp_signed("<", b.load(self.v_fuel), _c64(self.dist[pc])), 0, pc)

    def word_ptr(self, offset: ir.Value) -> ir.Value:
        return self.b.bitcast(self.b.gep(self.mem, [offset]), I32.as_pointer())

    def data(self, i: int, pc: int, va: ir.Value, size: int) -> ir.Value:
        """Check an access (ALIGN, then MEM); leave before instruction ``i`` (at ``pc``) if it would trap."""
        b = self.b
        if size == 4:
            self.leave_if(b.icmp_unsigned("!=", b.and_(va, _c32(3)), _c32(0)), i, pc)
        vz = b.zext(va, I64)
        self.leave_if(b.icmp_signed(">", b.add(vz, _c64(size)), self.lim), i, pc)
        return b.add(self.base, vz)

    def emit(self) -> None:
        b = self.b
        stale = self.fn.append_basic_block("stale")
        # Entry: every word inside the window, and (once per epoch) the words as translated.
        inside = b.icmp_signed("<=", _c64(self.hi), self.lim)
        check = self.fn.append_basic_block("check")
        b.cbranch(inside, check, stale)
        b.position_at_end(check)
        epoch = b.load(b.gep(self.env, [_c64(ENV_EPOCH)]))
        verify, start = self.fn.append_basic_block("verify"), self.fn.append_basic_block("start")
        b.cbranch(b.icmp_unsigned("==", b.load(self.epoch), epoch), start, verify)
        b.position_at_end(verify)
        diff = _c32(0)
        for pc, words in self.blocks.items():
            for i, w in enumerate(words):
                got = b.load(self.word_ptr(b.add(self.base, _c64(pc + 4 * i))), align=1)
                diff = b.or_(diff, b.xor(got, _c32(w)))
        ok = self.fn.append_basic_block("ok")
        b.cbranch(b.icmp_unsigned("==", diff, _c32(0)), ok, stale)
        b.position_at_end(ok)
        b.store(epoch, self.epoch)
        b.branch(start)
        b.position_at_end(stale)
        b.ret(_c64(0))
        b.position_at_end(start)
        for i in range(1, 16):
            b.store(b.trunc(b.load(b.gep(self.state, [_c64(i)])), I32), self.regs[i])
        sw = b.switch(b.trunc(b.load(b.gep(self.state, [_c64(S.PC)])), I32), stale)  # any block is an entry
        for pc, label in self.entries.items():
            sw.add_case(_c32(pc), label)
        for pc, label in self.entries.items():
            b.position_at_end(label)
            if pc not in self.heads:
                self.check_fuel(pc)
            b.branch(self.labels[pc])
        for pc, words in self.blocks.items():
            b.position_at_end(self.labels[pc])
            self.emit_block(pc, words)
        b.position_at_end(self.exit)
        for i in self.written:
            b.store(b.zext(b.load(self.regs[i]), I64), b.gep(self.state, [_c64(i)]))
        b.store(b.zext(b.load(self.v_pc), I64), b.gep(self.state, [_c64(S.PC)]))
        b.ret(b.sub(self.fuel, b.load(self.v_fuel)))

    def emit_block(self, pc0: int, words: list[int]) -> None:
        b, n = self.b, len(words)
        if pc0 in self.heads:
            self.check_fuel(pc0)
        for i, w in enumerate(words):
            pc = pc0 + 4 * i
            d = spec.decode(w)
            assert d is not None
            m = d.insn.mnemonic
            simm = _c32(spec.sext(w & 0xFFFF, 16))
            if m in _ALU_R:
                self.set_reg(d.a, _ALU_R[m](b, self.reg(d.b), self.reg(d.c)))
            elif m in _ALU_I:
                alu, mask = _ALU_I[m]
                self.set_reg(d.a, _ALU_R[alu](b, self.reg(d.b), simm if mask is None else _c32(w & mask)))
            elif m in _DIV:
                x, y = self.reg(d.b), self.reg(d.c)
                self.leave_if(b.icmp_unsigned("==", y, _c32(0)), i, pc)
                if m == "divu":
                    v = b.udiv(x, y)
                elif m == "remu":
                    v = b.urem(x, y)
                else:  # in 64 bits, where INT_MIN / -1 does not overflow
                    sx, sy = b.sext(x, I64), b.sext(y, I64)
                    v = b.trunc(b.sdiv(sx, sy) if m == "div" else b.srem(sx, sy), I32)
                self.set_reg(d.a, v)
            elif m == "lui":
                self.set_reg(d.a, _c32(w << 16))
            elif m in _LOADS:
                off = self.data(i, pc, b.add(self.reg(d.b), simm), _LOADS[m])
                if m == "ld":
                    v = b.load(self.word_ptr(off), align=1)
                else:
                    byte = b.load(b.gep(self.mem, [off]))
                    v = b.sext(byte, I32) if m == "ldb" else b.zext(byte, I32)
                self.set_reg(d.a, v)
            elif m in _STORES:
                self.emit_store(i, pc, w, d, _STORES[m])
            elif m in _BRANCH:
                taken = _BRANCH[m](b, self.reg(d.a), self.reg(d.b))
                yes, no = self.fn.append_basic_block(), self.fn.append_basic_block()
                b.cbranch(taken, yes, no)
                b.position_at_end(yes)
                self.go(n, pc + 4 * spec.sext(w & 0xFFFF, 16))
                b.position_at_end(no)
                self.go(n, pc + 4)
                return
            elif m == "jal":
                self.set_reg(d.a, _c32(pc + 4))
                self.go(n, pc + 4 * spec.sext(w & 0xFFFFF, 20))
                return
            elif m == "jalr":
                target = b.add(self.reg(d.b), simm)  # before writing rd: jalr r1, 0(r1)
                self.set_reg(d.a, _c32(pc + 4))
                self.go(n, target)
                return
            else:
                raise AssertionError(m)
        self.go(n, pc0 + 4 * n)  # the block ended before an untranslated word or at MAX_BLOCK

    def emit_store(self, i: int, pc: int, w: int, d: spec.Decoded, size: int) -> None:
        b = self.b
        off = self.data(i, pc, b.add(self.reg(d.b), _c32(spec.sext(w & 0xFFFF, 16))), size)
        value = self.reg(d.a)
        if size == 4:
            b.store(value, self.word_ptr(off), align=1)
        else:
            b.store(b.trunc(value, I8), b.gep(self.mem, [off]))
        # Into a granule holding translated code: a new epoch, so every region checks its words again
        # before it next runs; into this region's own span: leave right after the store.
        lo, span = (b.load(b.gep(self.env, [_c64(slot)])) for slot in (ENV_LO, ENV_SPAN))
        with b.if_then(b.icmp_unsigned("<", b.sub(off, lo), span), likely=False):
            g = b.lshr(off, _c64(GRANULE_BITS))
            with b.if_then(b.icmp_unsigned("!=", b.load(b.gep(self.code_map, [g])), ir.Constant(I8, 0))):
                ep = b.gep(self.env, [_c64(ENV_EPOCH)])
                b.store(b.add(b.load(ep), _c64(1)), ep)
                lo, hi = b.add(self.base, _c64(self.lo)), b.add(self.base, _c64(self.hi))
                hits = b.and_(b.icmp_signed(">", b.add(off, _c64(size)), lo), b.icmp_signed("<", off, hi))
                self.leave_if(hits, i + 1, pc + 4)


# --- the dispatcher ----------------------------------------------------------------------------------


def _emit_dispatcher(module: ir.Module) -> None:
    """``i64 dispatch(state, mem, memsize, keys, fns, counters, budget, env)`` -> steps run (see module doc)."""
    p64 = I64.as_pointer()
    fnty = ir.FunctionType(I64, [p64, I8.as_pointer(), I64, p64, p64, p64, I64, p64])
    fn = ir.Function(module, fnty, name="p32_dispatch")
    state, mem, memsize, keys, fns, counters, budget, env = fn.args
    regionty = ir.FunctionType(I64, [p64, I8.as_pointer(), I64, I64]).as_pointer()
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def slot(i: int) -> ir.Value:
        return b.gep(state, [_c64(i)])

    def var(v: ir.Value) -> ir.Value:
        a = b.alloca(I64)
        b.store(v, a)
        return a

    ep = b.gep(env, [_c64(ENV_EPOCH)])
    b.store(b.add(b.load(ep), _c64(1)), ep)  # anything may have changed memory since the last call
    base = b.and_(b.load(slot(S.BASE)), _c64(M32))
    bound = b.and_(b.load(slot(S.BOUND)), _c64(M32))
    room = b.sub(memsize, base)
    lim = b.select(b.icmp_signed("<", bound, room), bound, room)
    ie = b.icmp_unsigned("!=", b.and_(b.load(slot(S.PSW)), _c64(spec.PSW_IE)), _c64(0))
    pv = b.icmp_unsigned("!=", b.and_(b.load(slot(S.FLAGS)), _c64(S.F_PV)), _c64(0))
    v_r = var(_c64(0))
    v_timer, v_pend, v_runs = var(b.load(slot(S.TIMER))), var(b.load(slot(S.PENDING))), var(_c64(0))
    loop, out = fn.append_basic_block("loop"), fn.append_basic_block("out")
    b.branch(loop)

    b.position_at_end(loop)
    r, timer = b.load(v_r), b.load(v_timer)

    def go_out_if(cond: ir.Value) -> None:
        nxt = fn.append_basic_block()
        b.cbranch(cond, out, nxt)
        b.position_at_end(nxt)

    go_out_if(b.icmp_signed(">=", r, budget))
    go_out_if(b.and_(ie, b.icmp_unsigned("!=", b.load(v_pend), _c64(0))))
    pc = b.load(slot(S.PC))
    key = b.or_(pc, b.shl(base, _c64(32)))
    idx = b.and_(b.xor(b.lshr(pc, _c64(2)), b.lshr(base, _c64(2))), _c64(TABLE_MASK))
    go_out_if(b.icmp_unsigned("!=", b.load(b.gep(keys, [idx])), key))
    ticking = b.icmp_unsigned("!=", timer, _c64(0))
    # Under the paravirtual flag the timer's expiry also writes the shared area: the interpreter retires
    # the instruction that expires it.
    by_timer = b.sub(b.add(r, timer), b.zext(pv, I64))
    stop = b.select(b.and_(ticking, b.icmp_signed("<", by_timer, budget)), by_timer, budget)
    f = b.inttoptr(b.load(b.gep(fns, [idx])), regionty)
    k = b.call(f, [state, mem, lim, b.sub(stop, r)])
    r2 = b.add(r, k)
    go_out_if(b.icmp_signed("<=", k, _c64(0)))  # it ran nothing: the interpreter goes on from pc
    b.store(r2, v_r)
    b.store(b.add(b.load(v_runs), _c64(1)), v_runs)
    left = b.select(ticking, b.sub(timer, k), _c64(0))
    b.store(left, v_timer)
    expired = b.and_(ticking, b.icmp_unsigned("==", left, _c64(0)))
    b.store(b.select(expired, b.or_(b.load(v_pend), _c64(S.PEND_TIMER)), b.load(v_pend)), v_pend)
    b.branch(loop)

    b.position_at_end(out)
    r = b.load(v_r)
    b.store(b.add(b.load(slot(S.CYCLE)), r), slot(S.CYCLE))
    b.store(b.add(b.load(slot(S.STEPS)), r), slot(S.STEPS))
    b.store(b.load(v_timer), slot(S.TIMER))
    b.store(b.load(v_pend), slot(S.PENDING))
    c0 = b.gep(counters, [_c64(0)])
    b.store(b.add(b.load(c0), b.load(v_runs)), c0)
    c1 = b.gep(counters, [_c64(1)])
    b.store(b.add(b.load(c1), r), c1)
    b.ret(r)


_DISPATCH_TYPE = ctypes.CFUNCTYPE(
    ctypes.c_int64, *([ctypes.c_void_p] * 2), ctypes.c_int64, *([ctypes.c_void_p] * 3), ctypes.c_int64, ctypes.c_void_p
)


@dataclass
class _Translation:
    address: int  # of the compiled function
    blocks: dict[int, list[int]]  # pc -> words it was translated from, the entry first
    entries: list[int]  # the pcs the dispatcher may enter it at

    def matches(self, mem: np.ndarray, base: int) -> bool:
        """Memory still holds the words the region was translated from."""
        return all(_words_at(mem, base + pc, len(words)) == words for pc, words in self.blocks.items())


class _Translator:
    """The LLVM engine, the dispatcher and the translation cache of this process."""

    def __init__(self) -> None:
        self.dispatch: Callable[..., int] | None = None  # made with the first translation: short runs pay nothing
        self.keys = np.full(1 << TABLE_BITS, NO_KEY, dtype=np.int64)
        self.fns = np.zeros(1 << TABLE_BITS, dtype=np.int64)
        self.counters = np.zeros(2, dtype=np.int64)
        self.code_map = np.zeros(1 << MAP_BITS, dtype=np.uint8)
        self.env = np.array([0, self.code_map.ctypes.data, 0, 0], dtype=np.int64)
        self.addresses = tuple(a.ctypes.data for a in (self.keys, self.fns, self.counters, self.env))
        self.aside: dict[int, list[_Translation]] = {}  # key -> translations dropped there, newest first
        self.regions: dict[int, _Translation] = {}  # key -> the region entered there (at any of its blocks)
        self.heat: dict[int, int] = {}  # key -> steps interpreted from there
        self.visits: dict[int, int] = {}  # key -> times the interpreter was called there
        self.lengths: dict[int, int] = {}  # key -> length of the block there, last scanned (how far to interpret)
        self.serial = 0

    def start_engine(self) -> None:
        """Set up LLVM and compile the dispatcher."""
        t0 = time.perf_counter()
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        target = llvm.Target.from_default_triple()
        self.tm = target.create_target_machine(opt=3, jit=True)
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), self.tm)
        module = ir.Module(name="p32_dispatch")
        _emit_dispatcher(module)
        self._add(module)
        self.dispatch = _DISPATCH_TYPE(self.engine.get_function_address("p32_dispatch"))
        _STATS.setup_seconds += time.perf_counter() - t0

    def _add(self, module: ir.Module) -> None:
        mod = llvm.parse_assembly(str(module))
        mod.verify()
        pto = llvm.create_pipeline_tuning_options(speed_level=2)
        pb = llvm.create_pass_builder(self.tm, pto)
        pb.getModulePassManager().run(mod, pb)
        self.engine.add_module(mod)
        self.engine.finalize_object()

    def translate(self, key: int, blocks: dict[int, list[int]]) -> None:
        """Compile the region and put it in the cache."""
        if self.dispatch is None:
            self.start_engine()
        t0 = time.perf_counter()
        self.serial += 1
        name = f"p32_region_{self.serial}"
        module = ir.Module(name=name)
        emitter = _Region(module, name, key >> 32, blocks, self.env)
        emitter.emit()
        self._add(module)
        region = _Translation(self.engine.get_function_address(name), blocks, list(emitter.entries))
        base = key >> 32
        for pc, words in blocks.items():
            first, last = (base + pc) >> GRANULE_BITS, (base + pc + 4 * len(words) - 1) >> GRANULE_BITS
            self.code_map[first : last + 1] = 1
            lo = min(base + pc, int(self.env[ENV_LO]) + 3 if self.env[ENV_SPAN] else base + pc)
            hi = max(base + pc + 4 * len(words), int(self.env[ENV_LO] + self.env[ENV_SPAN]))
            self.env[ENV_LO], self.env[ENV_SPAN] = lo - 3, hi - (lo - 3)
        self.install(region, base)
        _STATS.translations += 1
        _STATS.translated_insns += sum(map(len, blocks.values()))
        _STATS.translate_seconds += time.perf_counter() - t0

    def insert(self, key: int) -> None:
        """Give the translation of ``key`` its cache slot (evicting whatever held it)."""
        i = _index(key)
        self.keys[i], self.fns[i] = NO_KEY, self.regions[key].address
        self.keys[i] = key

    def install(self, region: _Translation, base: int) -> None:
        """Make ``region`` the translation entered at each of its entries."""
        for pc in region.entries:
            self.regions[pc | base << 32] = region
            self.insert(pc | base << 32)

    def invalidate(self, key: int) -> None:
        """Take the region that ``key`` enters (its code changed) out of the cache, at all its entries.

        It is kept aside (a few per key): when the same code comes back, a program loaded again, it is
        installed again instead of translated again.
        """
        region, base = self.regions[key], key >> 32
        for pc in region.entries:
            other = pc | base << 32
            if self.regions.get(other) is region:
                del self.regions[other]
                i = _index(other)
                if self.keys[i] == other:
                    self.keys[i] = NO_KEY
                self.heat[other] = self.visits[other] = 0
            self.aside[other] = [region, *self.aside.get(other, [])][:ASIDE]
        _STATS.invalidations += 1

    def find_aside(self, key: int, mem: np.ndarray) -> _Translation | None:
        """A translation kept aside at ``key`` whose words memory holds again."""
        return next((r for r in self.aside.get(key, []) if r.matches(mem, key >> 32)), None)


def _index(key: int) -> int:
    pc, base = key & M32, key >> 32
    return ((pc >> 2) ^ (base >> 2)) & TABLE_MASK


_T: _Translator | None = None
_LOCK = threading.RLock()


def _words_at(mem: np.ndarray, phys: int, n: int) -> list[int] | None:
    if phys < 0 or phys + 4 * n > len(mem):
        return None
    return np.frombuffer(mem[phys : phys + 4 * n].tobytes(), dtype="<u4").tolist()


def _after_dispatch(t: _Translator, state: np.ndarray, mem: np.ndarray) -> int:
    """The dispatcher stopped: translate or re-insert the region at pc (return 0), or how many steps to interpret."""
    pc, base = int(state[S.PC]) & M32, int(state[S.BASE]) & M32
    key = pc | base << 32
    if pc & 3:
        return 1
    region = t.regions.get(key)
    if region is not None:
        if not region.matches(mem, base):
            t.invalidate(key)
            region = None
        elif t.keys[_index(key)] != key:
            t.insert(key)
            _STATS.reinserts += 1
            return 0
        else:
            return len(region.blocks[pc])  # it may not run now (budget, timer, interrupt, a trap, the window)
    if len(t.heat) > MAX_PROFILED:  # a guest that wanders over endless (pc, base) pairs: start counting afresh
        for counts in (t.heat, t.visits, t.lengths):
            counts.clear()
    lim = min(int(state[S.BOUND]) & M32, len(mem) - base)
    length = t.lengths.get(key)
    if length is None:
        t.lengths[key] = length = max(len(scan_block(mem, base + pc, (lim - pc) // 4)), 1)
    t.heat[key] = heat = t.heat.get(key, 0) + length
    t.visits[key] = visits = t.visits.get(key, 0) + 1
    if heat >= HOT or visits >= HOT_VISITS:
        again = t.find_aside(key, mem)  # the same code back (a program loaded again): no need to compile it
        if again is not None:
            t.install(again, base)
            _STATS.reinstated += 1
            return 0
        if t.serial >= MAX_TRANSLATIONS:
            _STATS.refused += 1
            return length
        blocks = find_region(mem, base, lim, pc, lambda at: (at | base << 32) in t.heat)
        if blocks:
            t.translate(key, blocks)
            return 0
        t.heat[key] = t.visits[key] = 0  # starts with an instruction left to the interpreter: look again later
    return length


def run(state: np.ndarray, mem: np.ndarray, budget: int) -> int:
    """Run at most ``budget`` steps of the machine in ``state``/``mem``; return the exit code."""
    global _T
    if budget <= 0 or int(state[S.FLAGS]) & S.F_REWRITE:
        return jit.run(state, mem, budget)
    if not (state.flags.c_contiguous and mem.flags.c_contiguous and state.dtype == np.int64):
        raise ValueError("the state and memory must be contiguous numpy arrays of the core contract")
    with _LOCK:
        if _T is None:
            _T = _Translator()
        t = _T
        remaining = int(budget)
        sp, mp = state.ctypes.data, mem.ctypes.data
        kp, fp, cp, ep = t.addresses
        while True:
            key = state.item(S.PC) & M32 | (state.item(S.BASE) & M32) << 32
            if t.dispatch is not None and t.keys.item(_index(key)) == key:  # else the dispatcher would miss at once
                remaining -= t.dispatch(sp, mp, len(mem), kp, fp, cp, remaining, ep)
                if remaining <= 0:
                    return S.EXIT_BUDGET
            chunk = _after_dispatch(t, state, mem)
            if chunk == 0:
                continue
            steps0 = int(state[S.STEPS])
            code = jit.run(state, mem, min(remaining, chunk))
            done = int(state[S.STEPS]) - steps0
            _STATS.interpreted_insns += done
            remaining -= done
            if code != S.EXIT_BUDGET or remaining <= 0:
                return code


def stats_line() -> str:
    """The counters as one line of text."""
    s = stats()
    return (
        f"{s.translations} translations ({s.translated_insns} instructions, {s.translate_seconds * 1000:.1f} ms), "
        f"{s.block_runs} region runs, {s.reinserts} re-inserted, {s.invalidations} invalidated, "
        f"{s.reinstated} reinstated, "
        f"{s.interpreted_insns} steps interpreted"
    )
