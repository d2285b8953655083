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
``p32_run_vm``. With ``hybrid`` set the guest's virtual supervisor mode is interpreted by the emulator in the
same loop (the hybrid monitor).
"""

from __future__ import annotations

import numpy as np

from popek.cores import emulator, jit, numba_cache, threaded
from popek.cores.c import gen_tables
from popek.cores.contract import check_vm_slice
from popek.isa import spec
from popek.isa import state as S

# Module-level ints, frozen into the compiled code as constants.
_L = gen_tables.VM_LOOP
VMX_BUDGET, VMX_HALT, VMX_CORE, VMX_VIRTUAL, VMX_SUPERVISOR = (
    _L[k] for k in ("VMX_BUDGET", "VMX_HALT", "VMX_CORE", "VMX_VIRTUAL", "VMX_SUPERVISOR")
)
CNT_CAUSE, CNT_CAUSES, CNT_TIMER, CNT_EMULATED, CNT_REFLECTED, CNT_INJECTED, CNT_CODE, CNT_CONSOLE, NCOUNTERS = (
    _L[k]
    for k in (
        "CNT_CAUSE", "CNT_CAUSES", "CNT_TIMER", "CNT_EMULATED", "CNT_REFLECTED", "CNT_INJECTED", "CNT_CODE",
        "CNT_CONSOLE", "NCOUNTERS",
    )
)  # fmt: skip
M32 = S.MASK32
PC, PSW, BASE, BOUND, TIMER, CYCLE, STEPS, STATUS = S.PC, S.PSW, S.BASE, S.BOUND, S.TIMER, S.CYCLE, S.STEPS, S.STATUS
PENDING, DEVNUM, FLAGS, XCAUSE, XINFO = S.PENDING, S.DEVNUM, S.FLAGS, S.XCAUSE, S.XINFO
PEND_TIMER, PEND_DEVICE = S.PEND_TIMER, S.PEND_DEVICE
EXIT_HALT, EXIT_BUDGET, EXIT_TRAP = S.EXIT_HALT, S.EXIT_BUDGET, S.EXIT_TRAP
PSW_S, PSW_IE = spec.PSW_S, spec.PSW_IE
PRIV, TIMER_IRQ, DEVICE_IRQ = spec.PRIV, spec.TIMER_IRQ, spec.DEVICE_IRQ

_COMPILED: list = []


def _compiled(fn):
    return numba_cache.cached_njit(fn, _COMPILED)


@_compiled
def _enter_trap(v, memsize, cause, info):
    """state.enter_trap on the virtual CPU at its pc, counted as a step."""
    emulator.enter_vector(v, memsize, cause, info, v[PC])
    v[STEPS] += 1


@_compiled
def _run_vm(v, r, host_mem, offset, memsize, budget, flags, hybrid, cnt, console):
    """Advance the VM by at most ``budget`` steps; return a VMX_* code (module docstring)."""
    vmem = host_mem[offset : offset + memsize]
    room = np.int64(console.shape[0])
    start = v[STEPS]
    while True:
        done = v[STEPS] - start
        if done >= budget:
            return VMX_BUDGET
        if hybrid and v[PSW] & PSW_S:  # the guest kernel is interpreted, up to its return to user mode
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
        code = jit.run(r, host_mem, b)
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
            mark = v[STEPS]
            code, n = emulator.interpret(v, vmem, 1, False, console[cnt[CNT_CONSOLE] : room])
            cnt[CNT_CONSOLE] += n
            cnt[CNT_EMULATED] += v[STEPS] - mark
            if code != EXIT_BUDGET:
                cnt[CNT_CODE] = code
                return VMX_VIRTUAL
            continue
        _enter_trap(v, memsize, cause, r[XINFO])  # the guest's own trap: reflect it into its kernel
        cnt[CNT_REFLECTED] += 1


DEPENDENCIES = (spec, S, gen_tables, jit, emulator, threaded)  # the modules compiled in here
numba_cache.drop_stale_cache(_COMPILED, DEPENDENCIES, "vmexit")


def run_vm(
    vstate: np.ndarray,
    rstate: np.ndarray,
    host_mem: np.ndarray,
    offset: int,
    memsize: int,
    budget: int,
    flags: int,
    hybrid: bool,
    counters: np.ndarray,
    console: np.ndarray,
) -> int:
    """Advance a VM (virtual CPU ``vstate``, ``memsize`` bytes at ``offset``) by at most ``budget`` steps."""
    check_vm_slice(host_mem, offset, memsize, counters, NCOUNTERS)
    if vstate[FLAGS] & (S.F_REWRITE | S.F_PV):  # the virtual CPU is a plain machine; the emulator needs one
        raise ValueError("the virtual CPU has processor support switched on")
    return int(_run_vm(vstate, rstate, host_mem, offset, memsize, budget, flags, hybrid, counters, console))
