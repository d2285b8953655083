"""The translating core: hot basic blocks of P32 compiled to machine code with LLVM, the rest interpreted.

``run(state, mem, budget) -> exit code`` leaves ``state`` and ``mem`` bit for bit as ``reference.run`` does.
It runs the machine in two alternating ways:

- a *dispatcher* (LLVM IR, compiled once per process) looks the pc up in a direct-mapped translation cache
  keyed by (pc, base) and calls the block's machine code while the block may run whole: no interrupt
  deliverable, the budget and the timer cover all its instructions.  A block updates ``cycle``, ``steps``
  and ``timer`` through the dispatcher exactly as retirement would;
- everything else goes to the JIT core's interpreter (``jit.run`` with a budget of one block's length):
  system instructions, traps, interrupts, blocks that do not fit in the budget or the timer, and every run
  under the binary-rewriting or paravirtual host flags (F_REWRITE, F_PV).

A block is straight-line ALU code, loads and stores, ending at a branch or jump (or before an instruction it
does not translate, or at ``MAX_BLOCK`` instructions).  It is translated when its (pc, base) was reached
``HOT`` times, so a short run interprets and pays nothing for translation.

Exactness of the code itself: a block holds the words it was translated from and compares them with memory
at every entry (a few loads), so any change of code, by the guest, the host or a fresh load, is seen before
the block runs; a store inside a block into the block's own later words ends the block right after the
store.  The block also checks at entry that every fetch lies in the relocation window.  A load, store or
division that would trap ends the block just before that instruction with its effects up to there, and the
interpreter then raises the trap with the exact epc and badaddr.

The cache is per process and shared by every machine (a block checks its words against whatever memory it
runs on); ``run`` holds a lock, so one thread translates or runs at a time.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir

from popek.cores import jit, threaded
from popek.isa import spec
from popek.isa import state as S

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
M32 = 0xFFFFFFFF
HOT = 16  # times a (pc, base) is reached before its block is translated
MAX_BLOCK = 64  # instructions in one block at most
TABLE_BITS = 14
TABLE_MASK = (1 << TABLE_BITS) - 1
NO_KEY = -1  # an empty slot: no (pc, base) key is negative (pc and base are 32-bit)

# The ALU operations, as the JIT core's fast loop emits them: R-format by mnemonic, I-format as (operation, mask).
_ALU_R, _ALU_I = threaded.ALU, threaded.ALU_IMM
_BRANCH = {
    "beq": ("==", False),
    "bne": ("!=", False),
    "blt": ("<", True),
    "bge": (">=", True),
    "bltu": ("<", False),
    "bgeu": (">=", False),
}
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

    translations: int = 0  # blocks compiled
    translated_insns: int = 0  # instructions in them
    translate_seconds: float = 0.0  # time spent compiling them (IR, optimisation, machine code)
    reinserts: int = 0  # translations found again after another block took their cache slot
    invalidations: int = 0  # translations dropped because memory under them changed
    block_runs: int = 0  # blocks run by the dispatcher (translation cache hits)
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


# --- block translation ----------------------------------------------------------------------------------


def scan_block(mem: np.ndarray, phys: int, limit: int) -> list[int]:
    """The words of the block at physical ``phys``: translatable ones, up to and including a branch or jump.

    ``limit`` is how many words may be fetched there (the relocation window).
    """
    words: list[int] = []
    n = min(MAX_BLOCK, limit, (len(mem) - phys) // 4)
    for i in range(max(n, 0)):
        at = phys + 4 * i
        w = int(mem[at]) | int(mem[at + 1]) << 8 | int(mem[at + 2]) << 16 | int(mem[at + 3]) << 24
        d = spec.decode(w)
        if d is None or d.insn.mnemonic not in _TRANSLATED:
            break
        words.append(w)
        if d.insn.mnemonic in _ENDS_BLOCK:
            break
    return words


class _Block:
    """Emits one block's function: ``i64 f(i64* regs, i8* mem, i64 base, i64 lim)``.

    It returns -1 when it may not run (its words changed, or a fetch would leave the window), else
    ``k << 32 | next_pc``, ``k`` the instructions retired: fewer than the block's length when it stopped
    before a trap or after a store into its own code.
    """

    def __init__(self, module: ir.Module, name: str, pc: int, words: list[int]) -> None:
        fnty = ir.FunctionType(I64, [I64.as_pointer(), I8.as_pointer(), I64, I64])
        self.fn = ir.Function(module, fnty, name=name)
        self.regs, self.mem, self.base, self.lim = self.fn.args
        self.pc, self.words = pc, words
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        self.vals: dict[int, ir.Value] = {}
        self.dirty: set[int] = set()

    def reg(self, i: int) -> ir.Value:
        if i == 0:
            return _c32(0)
        if i not in self.vals:
            self.vals[i] = self.b.trunc(self.b.load(self.b.gep(self.regs, [_c64(i)])), I32)
        return self.vals[i]

    def set_reg(self, i: int, v: ir.Value) -> None:
        if i:
            self.vals[i] = v
            self.dirty.add(i)

    def leave(self, k: int, npc: ir.Value) -> None:
        """Write the changed registers back and return ``k`` retired with ``npc`` next."""
        b = self.b
        for i in sorted(self.dirty):
            b.store(b.zext(self.vals[i], I64), b.gep(self.regs, [_c64(i)]))
        b.ret(b.or_(b.zext(npc, I64), _c64(k << 32)))

    def leave_if(self, cond: ir.Value, k: int, npc: int) -> None:
        with self.b.if_then(cond, likely=False):
            self.leave(k, _c32(npc))

    def word_ptr(self, offset: ir.Value) -> ir.Value:
        return self.b.bitcast(self.b.gep(self.mem, [offset]), I32.as_pointer())

    def data(self, i: int, va: ir.Value, size: int) -> ir.Value:
        """Check an access (ALIGN, then MEM); stop before instruction ``i`` if it would trap."""
        b, pc = self.b, self.pc + 4 * i
        if size == 4:
            self.leave_if(b.icmp_unsigned("!=", b.and_(va, _c32(3)), _c32(0)), i, pc)
        vz = b.zext(va, I64)
        self.leave_if(b.icmp_signed(">", b.add(vz, _c64(size)), self.lim), i, pc)
        return b.add(self.base, vz)

    def emit(self) -> None:
        b, n, pc0 = self.b, len(self.words), self.pc
        stale = self.fn.append_basic_block("stale")
        # Entry: every fetch inside the window, then the words as translated.
        ok = b.icmp_signed("<=", _c64(pc0 + 4 * n), self.lim)
        body = self.fn.append_basic_block("check")
        b.cbranch(ok, body, stale)
        b.position_at_end(body)
        phys = b.add(self.base, _c64(pc0))
        diff = _c32(0)
        for i, w in enumerate(self.words):
            got = b.load(self.word_ptr(b.add(phys, _c64(4 * i))), align=1)
            diff = b.or_(diff, b.xor(got, _c32(w)))
        body = self.fn.append_basic_block("body")
        b.cbranch(b.icmp_unsigned("==", diff, _c32(0)), body, stale)
        b.position_at_end(stale)
        b.ret(_c64(-1))
        b.position_at_end(body)
        npc: ir.Value = _c32(pc0 + 4 * n)  # falls through when the block ends before an untranslated word
        for i, w in enumerate(self.words):
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
                off = self.data(i, b.add(self.reg(d.b), simm), _LOADS[m])
                if m == "ld":
                    v = b.load(self.word_ptr(off), align=1)
                else:
                    byte = b.load(b.gep(self.mem, [off]))
                    v = b.sext(byte, I32) if m == "ldb" else b.zext(byte, I32)
                self.set_reg(d.a, v)
            elif m in _STORES:
                size = _STORES[m]
                off = self.data(i, b.add(self.reg(d.b), simm), size)
                value = self.reg(d.a)
                if size == 4:
                    b.store(value, self.word_ptr(off), align=1)
                else:
                    b.store(b.trunc(value, I8), b.gep(self.mem, [off]))
                # A store into this block's later words: stop after it, so they are checked again.
                later = b.add(phys, _c64(4 * (i + 1)))
                end = b.add(phys, _c64(4 * n))
                hits = b.and_(b.icmp_signed(">", b.add(off, _c64(size)), later), b.icmp_signed("<", off, end))
                self.leave_if(hits, i + 1, pc + 4)
            elif m in _BRANCH:
                op, signed = _BRANCH[m]
                x, y = self.reg(d.a), self.reg(d.b)
                taken = b.icmp_signed(op, x, y) if signed else b.icmp_unsigned(op, x, y)
                npc = b.select(taken, _c32(pc + 4 * spec.sext(w & 0xFFFF, 16)), _c32(pc + 4))
            elif m == "jal":
                self.set_reg(d.a, _c32(pc + 4))
                npc = _c32(pc + 4 * spec.sext(w & 0xFFFFF, 20))
            elif m == "jalr":
                npc = b.add(self.reg(d.b), simm)  # before writing rd: jalr r1, 0(r1)
                self.set_reg(d.a, _c32(pc + 4))
            else:
                raise AssertionError(m)
        self.leave(n, npc)


# --- the dispatcher ----------------------------------------------------------------------------------


def _emit_dispatcher(module: ir.Module) -> None:
    """``i64 dispatch(state, mem, memsize, keys, fns, lens, counters, budget)`` -> steps run (see module doc)."""
    p64 = I64.as_pointer()
    fnty = ir.FunctionType(I64, [p64, I8.as_pointer(), I64, p64, p64, p64, p64, I64])
    fn = ir.Function(module, fnty, name="p32_dispatch")
    state, mem, memsize, keys, fns, lens, counters, budget = fn.args
    blockty = ir.FunctionType(I64, [p64, I8.as_pointer(), I64, I64]).as_pointer()
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def slot(i: int) -> ir.Value:
        return b.gep(state, [_c64(i)])

    def var(v: ir.Value) -> ir.Value:
        a = b.alloca(I64)
        b.store(v, a)
        return a

    base = b.and_(b.load(slot(S.BASE)), _c64(M32))
    bound = b.and_(b.load(slot(S.BOUND)), _c64(M32))
    room = b.sub(memsize, base)
    lim = b.select(b.icmp_signed("<", bound, room), bound, room)
    ie = b.icmp_unsigned("!=", b.and_(b.load(slot(S.PSW)), _c64(spec.PSW_IE)), _c64(0))
    v_pc, v_r = var(b.load(slot(S.PC))), var(_c64(0))
    v_timer, v_pend, v_runs = var(b.load(slot(S.TIMER))), var(b.load(slot(S.PENDING))), var(_c64(0))
    loop, out = fn.append_basic_block("loop"), fn.append_basic_block("out")
    b.branch(loop)

    b.position_at_end(loop)
    pc, r, timer = b.load(v_pc), b.load(v_r), b.load(v_timer)

    def go_out_if(cond: ir.Value) -> None:
        nxt = fn.append_basic_block()
        b.cbranch(cond, out, nxt)
        b.position_at_end(nxt)

    go_out_if(b.icmp_signed(">=", r, budget))
    go_out_if(b.and_(ie, b.icmp_unsigned("!=", b.load(v_pend), _c64(0))))
    key = b.or_(pc, b.shl(base, _c64(32)))
    idx = b.and_(b.xor(b.lshr(pc, _c64(2)), b.lshr(base, _c64(2))), _c64(TABLE_MASK))
    go_out_if(b.icmp_unsigned("!=", b.load(b.gep(keys, [idx])), key))
    n = b.load(b.gep(lens, [idx]))
    go_out_if(b.icmp_signed(">", b.add(r, n), budget))
    go_out_if(b.and_(b.icmp_unsigned("!=", timer, _c64(0)), b.icmp_signed("<", timer, n)))
    f = b.inttoptr(b.load(b.gep(fns, [idx])), blockty)
    res = b.call(f, [state, mem, base, lim])
    go_out_if(b.icmp_signed("<", res, _c64(0)))
    k = b.lshr(res, _c64(32))
    b.store(b.and_(res, _c64(M32)), v_pc)
    b.store(b.add(r, k), v_r)
    b.store(b.add(b.load(v_runs), _c64(1)), v_runs)
    ticking = b.icmp_unsigned("!=", timer, _c64(0))
    left = b.select(ticking, b.sub(timer, k), _c64(0))
    b.store(left, v_timer)
    expired = b.and_(ticking, b.icmp_unsigned("==", left, _c64(0)))
    b.store(b.select(expired, b.or_(b.load(v_pend), _c64(S.PEND_TIMER)), b.load(v_pend)), v_pend)
    b.cbranch(b.icmp_signed("<", k, n), out, loop)  # stopped early: the interpreter goes on from there

    b.position_at_end(out)
    r = b.load(v_r)
    b.store(b.load(v_pc), slot(S.PC))
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
    ctypes.c_int64, *([ctypes.c_void_p] * 2), ctypes.c_int64, *([ctypes.c_void_p] * 4), ctypes.c_int64
)


class _Translator:
    """The LLVM engine, the dispatcher and the translation cache of this process."""

    def __init__(self) -> None:
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
        self.keys = np.full(1 << TABLE_BITS, NO_KEY, dtype=np.int64)
        self.fns = np.zeros(1 << TABLE_BITS, dtype=np.int64)
        self.lens = np.zeros(1 << TABLE_BITS, dtype=np.int64)
        self.counters = np.zeros(2, dtype=np.int64)
        self.blocks: dict[int, tuple[int, list[int]]] = {}  # key -> (function address, words)
        self.heat: dict[int, int] = {}  # key -> times reached untranslated
        self.lengths: dict[int, int] = {}  # key -> block length last scanned (how far to interpret)
        self.serial = 0
        _STATS.setup_seconds += time.perf_counter() - t0

    def _add(self, module: ir.Module) -> None:
        mod = llvm.parse_assembly(str(module))
        mod.verify()
        pto = llvm.create_pipeline_tuning_options(speed_level=2)
        pb = llvm.create_pass_builder(self.tm, pto)
        pb.getModulePassManager().run(mod, pb)
        self.engine.add_module(mod)
        self.engine.finalize_object()

    def translate(self, key: int, pc: int, words: list[int]) -> None:
        """Compile the block and put it in the cache."""
        t0 = time.perf_counter()
        self.serial += 1
        name = f"p32_block_{self.serial}"
        module = ir.Module(name=name)
        _Block(module, name, pc, words).emit()
        self._add(module)
        self.blocks[key] = (self.engine.get_function_address(name), words)
        self.insert(key)
        _STATS.translations += 1
        _STATS.translated_insns += len(words)
        _STATS.translate_seconds += time.perf_counter() - t0

    def insert(self, key: int) -> None:
        """Give the translation of ``key`` its cache slot (evicting whatever held it)."""
        addr, words = self.blocks[key]
        i = _index(key)
        self.keys[i], self.fns[i], self.lens[i] = NO_KEY, addr, len(words)
        self.keys[i] = key

    def invalidate(self, key: int) -> None:
        """Drop the translation of ``key`` (its code changed); it is translated again once hot."""
        del self.blocks[key]
        i = _index(key)
        if self.keys[i] == key:
            self.keys[i] = NO_KEY
        self.heat[key] = 0
        _STATS.invalidations += 1


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
    """The dispatcher stopped: translate or re-insert the block at pc (return 0), or how many steps to interpret."""
    pc, base = int(state[S.PC]) & M32, int(state[S.BASE]) & M32
    key = pc | base << 32
    if pc & 3:
        return 1
    block = t.blocks.get(key)
    if block is not None:
        words = block[1]
        if _words_at(mem, base + pc, len(words)) != words:
            t.invalidate(key)
        elif t.keys[_index(key)] != key:
            t.insert(key)
            _STATS.reinserts += 1
            return 0
        else:
            return len(words)  # it may not run whole now (budget, timer, interrupt, a trap in it)
    t.heat[key] = heat = t.heat.get(key, 0) + 1
    length = t.lengths.get(key)
    if heat >= HOT or length is None:
        lim = min(int(state[S.BOUND]) & M32, len(mem) - base)
        words = scan_block(mem, base + pc, (lim - pc) // 4)
        t.lengths[key] = length = max(len(words), 1)
        if heat >= HOT:
            if words:
                t.translate(key, pc, words)
                return 0
            t.heat[key] = 0  # starts with an instruction left to the interpreter: look again later
    return length


def run(state: np.ndarray, mem: np.ndarray, budget: int) -> int:
    """Run at most ``budget`` steps of the machine in ``state``/``mem``; return the exit code."""
    global _T
    if budget <= 0 or int(state[S.FLAGS]) & (S.F_REWRITE | S.F_PV):
        return jit.run(state, mem, budget)
    if not (state.flags.c_contiguous and mem.flags.c_contiguous and state.dtype == np.int64):
        raise ValueError("the state and memory must be contiguous numpy arrays of the core contract")
    with _LOCK:
        if _T is None:
            _T = _Translator()
        t = _T
        remaining = int(budget)
        sp, mp = state.ctypes.data, mem.ctypes.data
        kp, fp, lp, cp = t.keys.ctypes.data, t.fns.ctypes.data, t.lens.ctypes.data, t.counters.ctypes.data
        while True:
            remaining -= t.dispatch(sp, mp, len(mem), kp, fp, lp, cp, remaining)
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
        f"{s.block_runs} block runs, {s.reinserts} re-inserted, {s.invalidations} invalidated, "
        f"{s.interpreted_insns} steps interpreted"
    )
