"""Binary rewriting (VMware / VirtualBox style): run the guest kernel from a rewritten copy of its code.

The guest runs on the core in real user mode with relocation composed from its slice, as under
trap-and-emulate. What the guest kernel (virtual supervisor mode) executes is not its own code but a
*shadow copy* in the monitor's memory, made lazily a page at a time when execution first reaches the page.
In the copy every sensitive or privileged instruction form (as the Popek-Goldberg checker classifies them for
the VM's profile) is replaced, one word for one word, by its *twin*: a monitor-only opcode that performs the
instruction on the virtual CPU without leaving the core (``mfcr epc`` reads the virtual ``epc``, ``setpsw``
writes the virtual IE, as VMware turns ``cli`` into a store to a virtual flag), or exits to the monitor with
a *callout* where only the monitor can act (``iret``, ``mtcr timer``, ``wfi``, ``out``, ``halt``...).
Innocuous instructions are copied unchanged, so virtual time stays exact.

The core support (popek/cores/reference.py, "binary-rewriting support", and docs/isa.md) fetches from the copy,
decodes the monitor-only words there only, and makes every guest store leave a marker over the copy of the
words it wrote: a later fetch of such a word exits to the monitor, which translates the page again from the
guest's memory. So self-modifying and freshly loaded code stay coherent, word by word.

Guest user code runs unmodified from guest memory, unless the profile has a user-sensitive instruction that
does not trap (``getbase`` on ``x86like``): then user code runs from the copy too, where a twin in virtual
user mode does what the profile says (trap, ignore, or perform on the virtual CPU).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from popek.cores import CoreRun, vmexit
from popek.cores.reference import cached_decode
from popek.isa import spec
from popek.isa import state as S
from popek.isa.disasm import disassemble_word
from popek.isa.profiles import Profile
from popek.vmm.monitors.base import DirectExecution
from popek.vmm.sensitivity.classify import classify
from popek.vmm.vm import VM, Stopwatch

PAGE = 1024  # bytes translated at a time
M32 = S.MASK32
XLATE_WORD = S.RW_OP_XLATE << 24
CALLOUT_WORD = S.RW_OP_CALLOUT << 24
TWIN = S.RW_TWIN << 24
MFCR, MTCR = spec.BY_MNEMONIC["mfcr"].opcode, spec.BY_MNEMONIC["mtcr"].opcode
# The virtual CPU the twins use, copied into the real state at each entry (pending interrupts and every CR;
# cycle and timer are then rewritten as an offset and a deadline) and back at each exit (what twins write).
_VIN_SRC = np.array([S.PENDING, *range(S.CR0, S.CR0 + spec.NUM_CRS)])
_VIN_DST = np.array([S.RW_VPEND, *range(S.VCR0, S.VCR0 + spec.NUM_CRS)])
_WRITABLE = [cr for cr in range(spec.NUM_CRS) if cr not in (spec.CR_BASE, spec.CR_BOUND, spec.CR_TIMER, spec.CR_CYCLE)]
_VOUT_SRC = np.array([S.VCR0 + cr for cr in _WRITABLE])
_VOUT_DST = np.array([S.CR0 + cr for cr in _WRITABLE])
# Words of the copy that always exit with a callout: the callout itself and the twins of iret, halt, wfi,
# in, out and of mtcr base/bound/timer (the low 16 bits of an mtcr twin name the CR).
_ALWAYS_OUT = {S.RW_OP_CALLOUT} | {op + S.RW_TWIN for op in (0x48, 0x49, 0x4A, 0x4D, 0x4E)}
_MTCR_TWIN = spec.BY_MNEMONIC["mtcr"].opcode + S.RW_TWIN
_MTCR_OUT = (spec.CR_BASE, spec.CR_BOUND, spec.CR_TIMER)
# Bits that must be zero, per opcode (spec: every valid word has exactly one spelling).
_MBZ = np.zeros(256, dtype=np.uint32)
for _insn in spec.INSNS:
    _MBZ[_insn.opcode] = spec.MUST_BE_ZERO.get(_insn.operands, 0)


@dataclass(frozen=True)
class Plan:
    """What to rewrite for one profile, derived from the checker's classification."""

    forms: frozenset[str]  # instruction forms replaced by their twins (``iret``, ``mfcr.epc``...)
    user_copy: bool  # user code also runs from the copy: a user-sensitive form does not trap
    op_twin: np.ndarray  # bool per opcode: replace (opcodes other than mfcr/mtcr)
    cr_twin: np.ndarray  # bool [mtcr?][cr]: replace mfcr/mtcr of that control register

    def rewrite(self, words: np.ndarray) -> tuple[np.ndarray, int]:
        """The shadow copy of ``words`` (uint32) and the number of words replaced."""
        op = words >> 24
        valid = (words & _MBZ[op]) == 0
        imm = words & 0xFFFF
        is_cr = (op == MFCR) | (op == MTCR)
        cr_ok = is_cr & (imm < spec.NUM_CRS)
        cr_pick = self.cr_twin[(op == MTCR).astype(np.intp), np.minimum(imm, spec.NUM_CRS - 1)]
        twin = valid & np.where(is_cr, cr_ok & cr_pick, self.op_twin[op])
        # A guest word that is a monitor-only opcode (ILLEGAL for the guest) must not act as one in the copy.
        clash = (op >= S.RW_OP_XLATE) & (op <= S.RW_OP_LAST)
        out = np.where(twin, words + TWIN, np.where(clash, CALLOUT_WORD, words)).astype(np.uint32)
        return out, int(twin.sum() + clash.sum())


@functools.lru_cache(maxsize=32)
def _plan(name: str, behaviours: tuple[int, ...]) -> Plan:
    report = classify(Profile(name, dict(zip(spec.PROFILE_KEYS, behaviours, strict=True))))
    forms = frozenset(
        r.form.name for r in report.rows if r.form.key and (r.sensitive or r.privileged or r.user_sensitive)
    )
    op_twin = np.zeros(256, dtype=bool)
    cr_twin = np.zeros((2, spec.NUM_CRS), dtype=bool)
    for r in report.rows:
        if r.form.name not in forms:
            continue
        if r.form.cr is not None:
            cr_twin[int(r.form.insn.opcode == MTCR), r.form.cr] = True
        else:
            op_twin[r.form.insn.opcode] = True
    user_copy = any(r.user_sensitive and not r.privileged for r in report.rows)
    return Plan(forms, user_copy, op_twin, cr_twin)


def plan_for(profile: Profile) -> Plan:
    """The rewriting plan for ``profile`` (the checker's classification, computed once per profile)."""
    return _plan(profile.name, tuple(int(x) for x in profile.array()))


class BinaryRewriting(DirectExecution):
    """Direct execution; the guest kernel runs from a lazily rewritten shadow copy of its code."""

    name = "rewrite"
    description = "run the guest kernel from a rewritten copy of its code, user code directly"
    flags = S.F_TRAPS_TO_HOST | S.F_REWRITE

    def __init__(self, core: str | CoreRun = "jit") -> None:
        super().__init__(core)
        self.shadow = -1  # host address of the shadow copy (guest-physical x is at shadow + x)
        self.size = 0
        self.copy32 = np.zeros(0, dtype=np.uint32)
        self.plan: Plan | None = None
        self.live: set[int] = set()  # pages whose translation is in the copy
        self.seen: set[int] = set()  # pages ever translated
        self.names: dict[int, str] = {}  # callout statistics: the guest word's instruction, by word

    def host_bytes(self, memsize: int) -> int:
        """A shadow copy as large as the guest's memory, in whole pages."""
        return -(-memsize // PAGE) * PAGE

    def attach(self, vm: VM, area: int) -> None:
        """Fill the shadow copy with markers (nothing translated yet) and point the real CPU at it."""
        self.shadow, self.size = area, self.host_bytes(vm.memsize)
        self.copy32 = vm.host_mem[area : area + self.size].view(np.uint32)  # the copy, word by word
        self.copy32[:] = XLATE_WORD
        vm.rstate[S.RW_SHADOW] = vm.offset - area
        self.plan = plan_for(vm.profile)

    def restore_vm(self, vm: VM, state: dict) -> None:
        """Start the shadow copy afresh: every page is translated again from the restored memory when reached."""
        self.copy32[:] = XLATE_WORD
        self.live.clear()
        self.plan = plan_for(vm.profile)

    def run(self, vm: VM, budget: int) -> int:
        """Advance the guest by at most ``budget`` steps."""
        if self.plan is None:
            raise RuntimeError("the rewrite monitor needs host memory for its shadow copy: run it through Host")
        loop, done = self.exit_loop(), 0
        mode = vmexit.VM_REWRITE_USER if self.plan.user_copy else vmexit.VM_REWRITE
        while done < budget and not vm.stopped:
            if loop is not None:  # callouts, traps and interrupts in the compiled loop; translations come back
                done += self.run_compiled(vm, loop, budget - done, mode)
            else:
                done += self.advance(vm, budget - done)
        return done

    def advance(self, vm: VM, budget: int) -> int:
        """Deliver a due interrupt, or run the guest on the core until its next exit; return the steps taken."""
        if self.inject_due(vm):
            return 1
        fetch = vm.supervisor or self.plan.user_copy
        if fetch and vm.vstate.item(S.BASE) & 3:
            with Stopwatch(vm.stats):
                return self.interpret(vm, budget)
        return self.run_core(vm, budget, fetch)

    def run_core(self, vm: VM, budget: int, fetch: bool) -> int:
        """Run on the core (from the copy when ``fetch``) until an exit; return the guest steps taken."""
        v, r = vm.vstate, vm.rstate
        timer = v.item(S.TIMER)
        budget, cycle0 = vm.enter_direct(self.flags, budget)
        r[S.RW_FETCH] = fetch
        if fetch:  # the virtual CPU, for the twins
            r[_VIN_DST] = v[_VIN_SRC]
            r[S.VCR0 + spec.CR_CYCLE] = v.item(S.CYCLE) - cycle0
            r[S.VCR0 + spec.CR_TIMER] = cycle0 + timer if timer else 0
        code = self.core(r, vm.host_mem, budget)
        if fetch:  # what the twins may have written: psw, the trap registers, ivt and scratch
            v[_VOUT_DST] = r[_VOUT_SRC]
        retired = vm.leave_direct(code, cycle0)
        if self.ran_on(vm, code, bool(timer)):
            return retired
        with Stopwatch(vm.stats):
            if code == S.EXIT_CALLOUT:
                vm.stats.exits["callout"] += 1
                return retired + self.callouts(vm, budget - retired)
            return retired + self.handle_exit(vm, code)

    def handle_exit(self, vm: VM, code: int) -> int:
        """A fetch found a marker: translate the page; any other exit as under trap-and-emulate."""
        if code == S.EXIT_XLATE:
            vm.stats.exits["xlate"] += 1
            self.translate_at(vm)
            return 0
        return super().handle_exit(vm, code)

    def loop_exit(self, vm: VM, kind: int, code: int, budget: int) -> None:
        """What the compiled loop leaves to this monitor: interpreting code at an unaligned base, or a callout
        that stopped for the virtual devices (then the batch goes on as ``callouts`` would)."""
        if kind == vmexit.VMX_INTERPRET:
            self.interpret(vm, budget)
        elif kind == vmexit.VMX_CALLOUT:
            self.finish_step(vm, code)
            self.batch(vm, vm.batch_end)
        else:
            super().loop_exit(vm, kind, code, budget)

    def callouts(self, vm: VM, budget: int) -> int:
        """Perform the guest's instruction at pc, and the next ones while they would call out again.

        Emulation is exact whatever follows; the copy only tells whether going back to the core would be an
        exit straight away (``mtcr timer`` then ``iret`` at the end of a timer handler is one exit, not two).
        """
        start = vm.vstate.item(S.STEPS)
        vm.stats.extra[self.callout_name(self.copy_word(vm))] += 1
        vm.emulate_one()
        self.batch(vm, start + budget)
        return vm.vstate.item(S.STEPS) - start

    def batch(self, vm: VM, end: int) -> None:
        """After a callout, perform the next words while they would call out too, until step ``end``."""
        while True:
            if vm.vstate.item(S.STEPS) >= end or vm.stopped or vm.interrupt_due() is not None:
                return
            if not (vm.supervisor or self.plan.user_copy):
                return
            word = self.copy_word(vm)
            op = word >> 24
            if not (op in _ALWAYS_OUT or (op == _MTCR_TWIN and word & 0xFFFF in _MTCR_OUT)):
                return  # the core would run it (or fault on the fetch, or translate): go back to the core
            vm.stats.extra["callouts_batched"] += 1
            vm.stats.extra[self.callout_name(word)] += 1
            vm.emulate_one()

    def copy_word(self, vm: VM) -> int:
        """The word of the copy the core would fetch next, or -1 where it would not fetch from a translation."""
        v = vm.vstate
        base, pc = v.item(S.BASE), v.item(S.PC)
        gpa = base + pc
        if (base | pc) & 3 or pc + 4 > v.item(S.BOUND) or gpa + 4 > vm.memsize or gpa // PAGE not in self.live:
            return -1
        return self.copy32.item(gpa >> 2)

    def callout_name(self, word: int) -> str:
        """``callout.<instruction>`` for a word of the copy that called out (for the statistics)."""
        name = self.names.get(word)
        if name is None:
            d = cached_decode(word - TWIN) if word >> 24 > S.RW_OP_CALLOUT else None
            if d is None:
                name = "callout.other"  # a guest word that is a monitor-only opcode
            elif d.insn.operands in ("rd,cr", "cr,rs"):
                name = f"callout.{d.insn.mnemonic}.{spec.CR_NAMES[d.imm]}"
            else:
                name = f"callout.{d.insn.mnemonic}"
            self.names[word] = name
        return name

    # --- the shadow copy ---------------------------------------------------------------------------------
    def translate_at(self, vm: VM) -> None:
        """Translate the page holding the guest's pc (the fetch there found a marker)."""
        gpa = int(vm.vstate[S.BASE]) + int(vm.vstate[S.PC])
        if not 0 <= gpa < vm.memsize:  # the core checked the fetch against R: this cannot happen
            vm.error = f"marker fetched outside guest memory at {gpa:#x}"
            return
        self.translate_page(vm, gpa // PAGE)

    def translate_page(self, vm: VM, page: int) -> None:
        """Write the rewritten copy of one page of guest memory into the shadow copy."""
        lo, hi = page * PAGE, min((page + 1) * PAGE, vm.memsize & ~3)
        out, replaced = self.plan.rewrite(vm.mem[lo:hi].view(np.uint32))
        vm.host_mem[self.shadow + lo : self.shadow + hi].view(np.uint32)[:] = out
        extra = vm.stats.extra
        extra["translations"] += 1
        extra["replaced"] += replaced
        if page in self.seen:
            extra["invalidations"] += 1  # translated before: a store made it stale (or a flush dropped it)
        self.seen.add(page)
        self.live.add(page)

    def flush(self, vm: VM) -> None:
        """Drop every translation: guest memory changed where the core could not mark it."""
        for page in self.live:
            lo = self.shadow + page * PAGE
            vm.host_mem[lo : lo + PAGE].view(np.uint32)[:] = XLATE_WORD
        if self.live:
            vm.stats.extra["flushes"] += 1
        self.live.clear()

    def interpret(self, vm: VM, budget: int) -> int:
        """Interpret what would run from the copy while its relocation base is not word-aligned.

        The copy is a grid of aligned words; code relocated by an unaligned base does not fit it, so it is
        interpreted in software, and since software stores leave no markers the copy is flushed afterwards.
        """
        v, n = vm.vstate, 0
        while n < budget and not vm.stopped and (vm.supervisor or self.plan.user_copy) and int(v[S.BASE]) & 3:
            n += vm.emulate_one()
        vm.stats.extra["interpreted"] += n
        self.flush(vm)
        return n


def shadow_text(word: int, addr: int = 0) -> str:
    """A word of the shadow copy as text: a plain instruction, a twin, a callout or a marker."""
    op = word >> 24
    if op == S.RW_OP_XLATE:
        return "xlate                 (marker: not translated)"
    if op == S.RW_OP_CALLOUT:
        return "callout               (the monitor performs the guest's word)"
    if S.RW_OP_XLATE < op <= S.RW_OP_LAST:
        return f"twin {disassemble_word(word - TWIN, addr)}"
    return disassemble_word(word, addr)


def listing(vm: VM, monitor: BinaryRewriting, lo: int, hi: int) -> list[str]:
    """Guest words ``lo``..``hi`` (guest-physical) beside their shadow copy: ``addr: guest -> copy`` lines."""
    lines = []
    for addr in range(max(lo, 0) & ~3, min(hi, vm.memsize & ~3), 4):
        guest = int.from_bytes(vm.mem[addr : addr + 4].tobytes(), "little")
        copy = int.from_bytes(vm.host_mem[monitor.shadow + addr : monitor.shadow + addr + 4].tobytes(), "little")
        mark = "  " if copy == guest else "=>"
        lines.append(
            f"{addr:06x}: {guest:08x}  {disassemble_word(guest, addr):<22} {mark} {copy:08x}  {shadow_text(copy, addr)}"
        )
    return lines
