"""The VM-exit loop of the direct-execution monitors, compiled next to the JIT core (as KVM handles most exits
in the kernel).

``run_vm`` does what ``DirectExecution.run_direct``/``handle_exit`` and ``VM.load_real_state``/
``save_real_state`` (popek/vmm) do, which stay its specification, without coming back to Python for the common
exits: it delivers a due virtual interrupt, loads the real CPU from the virtual one (registers, relocation
composed with the VM's slice, real user mode with IE mirrored, the host flags), runs the core with the budget
cut at the virtual timer's expiry, saves the registers back and accounts the retired instructions to virtual
time. On EXIT_TRAP it emulates a privileged instruction of the guest kernel (PRIV from virtual supervisor
mode) with the emulator on the virtual CPU, reflects every other trap into the guest kernel and drops a real
interrupt. A console write the emulation makes goes into a buffer. It returns (``VMX_*``) only when the
budget is spent, the guest halted on the core, or an exit needs the monitor: port I/O on the virtual devices
other than console output, an endless ``wfi``, anything the core hands the host that is not a trap.

Everything it does is counted in ``counters`` (the ``CNT_*`` slots) as the Python path counts it in
``vm.stats``; the monitor merges them. The layout (``gen_tables.VM_LOOP``) is shared with the C core's
``p32_run_vm``. ``mode`` says which monitor it works for (``VM_*``): trap-and-emulate; the hybrid monitor, whose
guest kernel (virtual supervisor mode) is interpreted by the emulator in the same loop; binary rewriting, whose
guest kernel runs from the shadow copy, with the virtual CPU copied into the real state's twin slots at each
entry and back at each exit, and whose callouts (the guest's own word performed by the emulator, and the next
ones while they would call out straight away) are handled here too; a page to translate (EXIT_XLATE) and code
relocated by a base that is not a multiple of 4 go back to the monitor.
"""

from __future__ import annotations

import numpy as np

from popek.cores import emulator, jit, numba_cache, threaded
from popek.cores.c import gen_tables
from popek.cores.contract import check_vm_slice
from popek.isa import spec
from popek.isa import state as S
from popek.isa.devices import nic

# Module-level ints, frozen into the compiled code as constants.
_L = gen_tables.VM_LOOP
VMX_BUDGET, VMX_HALT, VMX_CORE, VMX_VIRTUAL, VMX_SUPERVISOR, VMX_INTERPRET, VMX_CALLOUT = (
    _L[k]
    for k in ("VMX_BUDGET", "VMX_HALT", "VMX_CORE", "VMX_VIRTUAL", "VMX_SUPERVISOR", "VMX_INTERPRET", "VMX_CALLOUT")
)
VM_TRAP, VM_HYBRID, VM_REWRITE, VM_REWRITE_USER = (
    _L[k] for k in ("VM_TRAP", "VM_HYBRID", "VM_REWRITE", "VM_REWRITE_USER")
)
CNT_CAUSE, CNT_CAUSES, CNT_TIMER, CNT_EMULATED, CNT_REFLECTED, CNT_INJECTED, CNT_CODE, CNT_CONSOLE, NCOUNTERS = (
    _L[k]
    for k in (
        "CNT_CAUSE", "CNT_CAUSES", "CNT_TIMER", "CNT_EMULATED", "CNT_REFLECTED", "CNT_INJECTED", "CNT_CODE",
        "CNT_CONSOLE", "NCOUNTERS",
    )
)  # fmt: skip
CNT_CALLOUTS, CNT_BATCHED, CNT_BATCH_END, CNT_CALLOUT_OTHER, CNT_CALLOUT_OP, CALLOUT_OP0, CNT_CALLOUT_CR = (
    _L[k]
    for k in (
        "CNT_CALLOUTS", "CNT_BATCHED", "CNT_BATCH_END", "CNT_CALLOUT_OTHER", "CNT_CALLOUT_OP", "CALLOUT_OP0",
        "CNT_CALLOUT_CR",
    )
)  # fmt: skip
M32 = S.MASK32
PC, PSW, BASE, BOUND, TIMER, CYCLE, STEPS, STATUS = S.PC, S.PSW, S.BASE, S.BOUND, S.TIMER, S.CYCLE, S.STEPS, S.STATUS
PENDING, DEVNUM, FLAGS, XCAUSE, XINFO = S.PENDING, S.DEVNUM, S.FLAGS, S.XCAUSE, S.XINFO
PEND_TIMER, PEND_DEVICE = S.PEND_TIMER, S.PEND_DEVICE
EXIT_HALT, EXIT_BUDGET, EXIT_TRAP = S.EXIT_HALT, S.EXIT_BUDGET, S.EXIT_TRAP
PSW_S, PSW_IE = spec.PSW_S, spec.PSW_IE
PRIV, TIMER_IRQ, DEVICE_IRQ = spec.PRIV, spec.TIMER_IRQ, spec.DEVICE_IRQ
# binary rewriting (popek/vmm/monitors/rewrite.py run_core, callouts and copy_word are the specification)
EXIT_XLATE, EXIT_CALLOUT, RW_FETCH, RW_VPEND, RW_SHADOW = (
    S.EXIT_XLATE,
    S.EXIT_CALLOUT,
    S.RW_FETCH,
    S.RW_VPEND,
    S.RW_SHADOW,
)
VCR0, CR0, NUM_CRS, CR_CYCLE, CR_TIMER = S.VCR0, S.CR0, spec.NUM_CRS, spec.CR_CYCLE, spec.CR_TIMER
CR_BASE, CR_BOUND = spec.CR_BASE, spec.CR_BOUND
RW_OP_CALLOUT, RW_TWIN = S.RW_OP_CALLOUT, S.RW_TWIN
# the CRs a twin may write, copied back to the virtual CPU at each exit (rewrite._WRITABLE)
WRITABLE = np.array([cr for cr in range(spec.NUM_CRS) if cr not in (spec.CR_BASE, spec.CR_BOUND, CR_TIMER, CR_CYCLE)])
_OPS = {i.mnemonic: i.opcode for i in spec.INSNS}
OP_MTCR = _OPS["mtcr"]
# Per opcode of the original word: 1 when its twin always calls out (iret halt wfi in out; rewrite._ALWAYS_OUT)
ALWAYS_OUT = np.zeros(256, dtype=np.bool_)
for _m in ("iret", "halt", "wfi", "in", "out"):
    ALWAYS_OUT[_OPS[_m]] = True
_T = gen_tables.opcode_tables()
MUST_BE_ZERO = np.array(_T["must_be_zero"], dtype=np.int64)
IS_INSN = np.zeros(256, dtype=np.bool_)  # opcodes that name an instruction
IS_INSN[[i.opcode for i in spec.INSNS]] = True
CR_OPERAND = np.array(_T["cr_operand"], dtype=np.bool_)

_COMPILED: list = []


def _compiled(fn):
    return numba_cache.cached_njit(fn, _COMPILED)


@_compiled
def _enter_trap(v, memsize, cause, info):
    """state.enter_trap on the virtual CPU at its pc, counted as a step."""
    emulator.enter_vector(v, memsize, cause, info, v[PC])
    v[STEPS] += 1


@_compiled
def _emulate_one(v, vmem, cnt, console):
    """One step of the virtual CPU on the emulator, counted; its exit code (EXIT_BUDGET: it simply ran)."""
    mark = v[STEPS]
    code, n = emulator.interpret(v, vmem, 1, False, console[cnt[CNT_CONSOLE] : console.shape[0]])
    cnt[CNT_CONSOLE] += n
    cnt[CNT_EMULATED] += v[STEPS] - mark
    return code


@_compiled
def _copy_word(v, r, host_mem, offset, memsize):
    """The word of the shadow copy the core would fetch next, or -1 where it would fetch none (copy_word)."""
    base = v[BASE]
    pc = v[PC]
    gpa = base + pc
    if (base | pc) & 3 or pc + 4 > v[BOUND] or gpa + 4 > memsize:
        return np.int64(-1)
    at = offset - r[RW_SHADOW] + gpa  # a page never translated holds markers only: as good as -1 here
    if at < 0 or at + 4 > host_mem.shape[0]:
        return np.int64(-1)
    word = np.int64(0)
    for i in range(4):  # little-endian
        word |= np.int64(host_mem[at + i]) << (8 * i)
    return word


@_compiled
def _callout_slot(word):
    """The counter of a callout of ``word`` (callout_name: by instruction, mfcr/mtcr by CR, else other)."""
    op = word >> 24
    if op <= RW_OP_CALLOUT or op > 255:
        return CNT_CALLOUT_OTHER  # the callout word itself (a guest word that is a monitor-only opcode), or -1
    orig = word - (RW_TWIN << 24)
    oop = orig >> 24
    if not IS_INSN[oop] or orig & MUST_BE_ZERO[oop] or oop < CALLOUT_OP0 or oop >= CALLOUT_OP0 + 32:
        return CNT_CALLOUT_OTHER
    if CR_OPERAND[oop]:
        cr = orig & 0xFFFF
        if cr >= NUM_CRS:
            return CNT_CALLOUT_OTHER
        return CNT_CALLOUT_CR + (16 if oop == OP_MTCR else 0) + cr
    return CNT_CALLOUT_OP + oop - CALLOUT_OP0


@_compiled
def _batches(word):
    """True when the copy's ``word`` would call out at once: performed in the same exit (rewrite._ALWAYS_OUT)."""
    op = word >> 24
    if op == RW_OP_CALLOUT:
        return True
    if op <= RW_OP_CALLOUT or op > 255:
        return False
    oop = op - RW_TWIN
    if ALWAYS_OUT[oop]:
        return True
    cr = word & 0xFFFF
    return oop == OP_MTCR and (cr == CR_BASE or cr == CR_BOUND or cr == CR_TIMER)


@_compiled
def _run_vm(v, r, host_mem, offset, memsize, budget, flags, mode, cnt, console):
    """Advance the VM by at most ``budget`` steps; return a VMX_* code (module docstring)."""
    vmem = host_mem[offset : offset + memsize]
    room = np.int64(console.shape[0])
    start = v[STEPS]
    rewrite = mode == VM_REWRITE or mode == VM_REWRITE_USER
    while True:
        done = v[STEPS] - start
        if done >= budget:
            return VMX_BUDGET
        if mode == VM_HYBRID and v[PSW] & PSW_S:  # the guest kernel is interpreted, up to its return to user mode
            mark = v[STEPS]
            code, n = emulator.interpret(v, vmem, budget - done, True, console[cnt[CNT_CONSOLE] : room])
            cnt[CNT_CONSOLE] += n
            cnt[CNT_EMULATED] += v[STEPS] - mark
            if code == EXIT_BUDGET:
                continue
            cnt[CNT_CODE] = code
            return VMX_VIRTUAL
        # ---- a due virtual interrupt (VM.inject) ----
        if v[PSW] & PSW_IE:
            pend = v[PENDING]
            if pend & PEND_TIMER:
                _enter_trap(v, memsize, TIMER_IRQ, 0)
                cnt[CNT_INJECTED] += 1
                continue
            if pend & PEND_DEVICE:
                _enter_trap(v, memsize, DEVICE_IRQ, v[DEVNUM])
                cnt[CNT_INJECTED] += 1
                continue
        fetch = rewrite and ((v[PSW] & PSW_S) != 0 or mode == VM_REWRITE_USER)  # run from the shadow copy
        if fetch and v[BASE] & 3:
            return VMX_INTERPRET  # the copy's word grid does not fit: the monitor interprets
        # ---- load the real CPU (VM.load_real_state) ----
        for i in range(PC + 1):
            r[i] = v[i]
        vbase = v[BASE]
        space = memsize - vbase
        if space > 0:  # the guest's own R, further confined to its slice of host memory
            r[BASE] = offset + vbase
            r[BOUND] = min(v[BOUND], space)
        else:
            r[BASE] = offset
            r[BOUND] = 0
        r[PSW] = v[PSW] & PSW_IE  # real user mode; IE mirrors the guest's own
        r[TIMER] = 0
        r[PENDING] = 0
        r[FLAGS] = flags
        timer = v[TIMER]
        b = budget - done
        if timer != 0 and timer < b:
            b = timer  # stop exactly where the virtual timer expires
        cycle0 = r[CYCLE]
        if rewrite:
            r[RW_FETCH] = 1 if fetch else 0
        if fetch:  # the virtual CPU, for the twins: cycle and timer as an offset and a deadline on the real count
            r[RW_VPEND] = v[PENDING]
            for cr in range(NUM_CRS):
                r[VCR0 + cr] = v[CR0 + cr]
            r[VCR0 + CR_CYCLE] = v[CYCLE] - cycle0
            r[VCR0 + CR_TIMER] = cycle0 + timer if timer != 0 else 0
        code = jit.run(r, host_mem, b)
        if fetch:  # what the twins may have written: psw, the trap registers, ivt and scratch
            for cr in WRITABLE:
                v[CR0 + cr] = r[VCR0 + cr]
        # ---- save it back (VM.save_real_state) ----
        for i in range(PC + 1):
            v[i] = r[i]
        retired = r[CYCLE] - cycle0
        v[CYCLE] += retired
        v[STEPS] += retired
        if timer != 0:
            left = max(np.int64(0), timer - retired)  # the core never runs the guest past the expiry
            v[TIMER] = left
            if left == 0:
                v[PENDING] |= PEND_TIMER
        if code == EXIT_BUDGET or code == EXIT_HALT:
            if timer != 0 and v[TIMER] == 0:
                cnt[CNT_TIMER] += 1  # the virtual timer expired: the core stopped for it
            if code == EXIT_HALT:
                v[STATUS] = r[STATUS]
                return VMX_HALT
            continue
        if code == EXIT_CALLOUT and rewrite:  # perform the guest's word, and the next while they call out too
            cnt[CNT_CALLOUTS] += 1
            end = v[STEPS] + b - retired
            word = _copy_word(v, r, host_mem, offset, memsize)
            while True:
                cnt[_callout_slot(word)] += 1
                code = _emulate_one(v, vmem, cnt, console)
                if code != EXIT_BUDGET:
                    cnt[CNT_CODE] = code
                    cnt[CNT_BATCH_END] = end
                    return VMX_CALLOUT
                if v[STEPS] >= end or (v[PSW] & PSW_IE and v[PENDING] & (PEND_TIMER | PEND_DEVICE)):
                    break
                if not (v[PSW] & PSW_S or mode == VM_REWRITE_USER):
                    break
                word = _copy_word(v, r, host_mem, offset, memsize)
                if not _batches(word):
                    break  # the core would run it (or fault on the fetch, or translate): back to the core
                cnt[CNT_BATCHED] += 1
            continue
        if code != EXIT_TRAP:
            cnt[CNT_CODE] = code
            return VMX_CORE
        # ---- a trap (DirectExecution.handle_exit) ----
        cause = r[XCAUSE]
        cnt[CNT_CAUSE + min(max(cause, np.int64(0)), CNT_CAUSES - 1)] += 1
        if cause == TIMER_IRQ or cause == DEVICE_IRQ:  # a real interrupt the guest cannot own: drop it
            r[PENDING] = 0
            continue
        if cause == PRIV and v[PSW] & PSW_S:  # a privileged instruction of the guest kernel: emulate it
            code = _emulate_one(v, vmem, cnt, console)
            if code != EXIT_BUDGET:
                cnt[CNT_CODE] = code
                return VMX_VIRTUAL
            continue
        _enter_trap(v, memsize, cause, r[XINFO])  # the guest's own trap: reflect it into its kernel
        cnt[CNT_REFLECTED] += 1


# ---- paravirtual guests (popek/vmm/monitors/paravirt.py is the specification) ------------------------------
# The monitor's words of the shared area, after the processor's (state.SH_*): byte offsets.
SH_FEATURES, SH_CONS_LEN, SH_MC_COUNT, SH_NET_EVENTS, SH_MC = 32, 36, 40, 44, 64
MC_MAX, MC_ENTRY = 8, 16
SH_CONS_BUF = SH_MC + MC_MAX * MC_ENTRY  # the console buffer
CONS_SIZE = 256
SH_SIZE = SH_CONS_BUF + CONS_SIZE
HC_CONSOLE_FLUSH, HC_BLOCK = 5, 6  # the hypercalls the loop performs (the rest go back to the monitor)
NET_UPCALL = nic.EV_RX | nic.EV_URGENT | nic.EV_ERROR  # card events that interrupt the guest
EXIT_HCALL, PV_KMODE, PV_KBASE, PV_KBOUND, PV_ENTRY = S.EXIT_HCALL, S.PV_KMODE, S.PV_KBASE, S.PV_KBOUND, S.PV_ENTRY
PV_SHARED = S.PV_SHARED
SH_MASK, SH_PENDING, SH_EPC, SH_EPSW, SH_EBASE = S.SH_MASK, S.SH_PENDING, S.SH_EPC, S.SH_EPSW, S.SH_EBASE
SH_EBOUND, SH_CAUSE, SH_BADADDR = S.SH_EBOUND, S.SH_CAUSE, S.SH_BADADDR
# Counters of run_pv (its own array, merged by the monitor): exits by cause, hypercall exits and by number,
# bounced traps and interrupts, console bytes written; PVC_SHOWN carries the monitor's ``shown`` in and out.
PVC_CAUSE, PVC_HCALL, PVC_HC, PVC_REFLECTED, PVC_INJECTED, PVC_CONSOLE, PVC_SHOWN, NPVC = 0, 32, 33, 49, 50, 51, 52, 53


@_compiled
def _pv_retire(r, host_mem):
    """state.retire of the hypercall at pc (it ticks the timer); an expiry sets the shared pending word."""
    r[PC] = (r[PC] + 4) & M32
    r[CYCLE] += 1
    r[STEPS] += 1
    if r[TIMER]:
        r[TIMER] -= 1
        if r[TIMER] == 0:
            r[PENDING] |= PEND_TIMER
            jit.pv_expired(r, host_mem)


@_compiled
def _pv_bounce(r, host_mem, cause, info):
    """Paravirt._bounce: the trap into the guest kernel's entry with its frame in the shared area, a step."""
    kbase = r[PV_KBASE] & M32
    epsw = (PSW_S if r[PV_KMODE] else 0) | (0 if jit.pv_get(r, host_mem, SH_MASK) else PSW_IE)
    jit.pv_put(r, host_mem, SH_EPSW, epsw)
    jit.pv_put(r, host_mem, SH_EPC, r[PC])
    jit.pv_put(r, host_mem, SH_EBASE, (r[BASE] & M32) - kbase)
    jit.pv_put(r, host_mem, SH_EBOUND, r[BOUND])
    jit.pv_put(r, host_mem, SH_CAUSE, cause)
    jit.pv_put(r, host_mem, SH_BADADDR, info)
    jit.pv_put(r, host_mem, SH_MASK, 1)
    r[PSW] = 0
    r[BASE] = kbase
    r[BOUND] = r[PV_KBOUND] & M32
    r[PC] = r[PV_ENTRY] & M32
    r[PV_KMODE] = 1
    r[STEPS] += 1


@_compiled
def _run_pv(r, host_mem, budget, registered, cnt, console):
    """Run a PV guest's real CPU for at most ``budget`` steps; return EXIT_BUDGET or the exit left to the monitor."""
    start = r[STEPS]
    room = np.int64(console.shape[0])
    while True:
        left = budget - (r[STEPS] - start)
        if left <= 0:
            return EXIT_BUDGET
        code = jit.run(r, host_mem, left)
        if code == EXIT_TRAP and registered:  # a trap the processor does not deliver: bounce it
            cause = r[XCAUSE]
            cnt[PVC_CAUSE + min(max(cause, np.int64(0)), 31)] += 1
            _pv_bounce(r, host_mem, cause, r[XINFO] & M32)
            cnt[PVC_INJECTED if cause >= TIMER_IRQ else PVC_REFLECTED] += 1
            continue
        if code != EXIT_HCALL or r[PV_KMODE] == 0:
            return code
        n = r[XCAUSE]
        if n == HC_CONSOLE_FLUSH:  # show what the buffer holds beyond what was shown, then empty it
            length = min(jit.pv_get(r, host_mem, SH_CONS_LEN), np.int64(CONS_SIZE))
            shown = cnt[PVC_SHOWN]
            if length > shown:
                if cnt[PVC_CONSOLE] + length - shown > room:
                    return code  # no room for it here: the monitor does it
                at = r[PV_SHARED] + SH_CONS_BUF
                for i in range(shown, length):
                    console[cnt[PVC_CONSOLE]] = host_mem[at + i]
                    cnt[PVC_CONSOLE] += 1
            jit.pv_put(r, host_mem, SH_CONS_LEN, 0)
            cnt[PVC_SHOWN] = 0
            r[1] = length
        elif n == HC_BLOCK:
            if r[PENDING] == 0 and (jit.pv_get(r, host_mem, SH_NET_EVENTS) & NET_UPCALL) == 0:
                timer = r[TIMER]
                if timer == 0:
                    return code  # waits for the card, or never ends: the monitor decides
                r[CYCLE] += timer  # idle until the timer expires (wfi's time), then retire
                r[TIMER] = 0
                r[PENDING] |= PEND_TIMER
                jit.pv_put(r, host_mem, SH_PENDING, 1)
        else:
            return code
        cnt[PVC_HCALL] += 1
        cnt[PVC_HC + n] += 1
        jit.pv_sync_ie(r, host_mem)
        _pv_retire(r, host_mem)


DEPENDENCIES = (spec, S, gen_tables, jit, emulator, threaded, nic)  # the modules compiled in here
numba_cache.drop_stale_cache(_COMPILED, DEPENDENCIES, "vmexit")


def run_vm(
    vstate: np.ndarray,
    rstate: np.ndarray,
    host_mem: np.ndarray,
    offset: int,
    memsize: int,
    budget: int,
    flags: int,
    mode: int,
    counters: np.ndarray,
    console: np.ndarray,
) -> int:
    """Advance a VM (virtual CPU ``vstate``, ``memsize`` bytes at ``offset``) by at most ``budget`` steps."""
    check_vm_slice(host_mem, offset, memsize, counters, NCOUNTERS)
    if vstate[FLAGS] & (S.F_REWRITE | S.F_PV):  # the virtual CPU is a plain machine; the emulator needs one
        raise ValueError("the virtual CPU has processor support switched on")
    return int(_run_vm(vstate, rstate, host_mem, offset, memsize, budget, flags, mode, counters, console))


def run_pv(rstate: np.ndarray, host_mem: np.ndarray, budget: int, registered: bool, counters: np.ndarray,
           console: np.ndarray) -> int:  # fmt: skip
    """Advance a PV guest (its state in ``rstate``) by at most ``budget`` steps; the exit code left, or EXIT_BUDGET."""
    if counters.shape[0] != NPVC or counters.dtype != np.int64:
        raise ValueError(f"counters must be {NPVC} int64")
    if not jit.pv_active(rstate, np.int64(host_mem.shape[0])) or rstate[S.PV_SHARED] + SH_SIZE > host_mem.shape[0]:
        raise ValueError("the shared area does not fit in memory")
    return int(_run_pv(rstate, host_mem, budget, registered, counters, console))
