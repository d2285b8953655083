"""The monitor interface: ``Monitor.run(vm, budget)`` advances one VM by at most ``budget`` guest steps."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter

from popek.cores import CoreRun, ExitLoop, exit_loop, get_core, vmexit
from popek.isa import state as S
from popek.isa.spec import DEVICE_IRQ, PRIV, TIMER_IRQ, cause_name
from popek.vmm.vm import VM, Stopwatch


class Monitor:
    """Base class: one subclass per strategy, each in its own file."""

    name = "?"
    description = ""

    def __init__(self, core: str | CoreRun = "jit") -> None:
        self.core = get_core(core) if isinstance(core, str) else core
        self._companions: dict[Callable, Callable | None] = {}

    def companion(self, find: Callable[[CoreRun], Callable | None]) -> Callable | None:
        """``find(self.core)`` (a compiled function next to the core), looked up once: runs ask for it every slice."""
        try:
            return self._companions[find]
        except KeyError:
            found = self._companions[find] = find(self.core)
            return found

    def run(self, vm: VM, budget: int) -> int:
        """Advance ``vm`` by at most ``budget`` guest steps (fewer if it stops); return the steps taken."""
        raise NotImplementedError

    def host_bytes(self, memsize: int) -> int:
        """Bytes of the host's monitor region this monitor needs for a VM of ``memsize`` bytes (default none)."""
        return 0

    def attach(self, vm: VM, area: int) -> None:
        """Take charge of ``vm``; ``area`` is the host address of the ``host_bytes`` reserved for it."""

    def save_vm(self, vm: VM) -> dict:
        """What this monitor keeps about ``vm`` beyond its virtual CPU, as JSON-ready values (for a snapshot)."""
        return {}

    def restore_vm(self, vm: VM, state: dict) -> None:
        """Take charge of ``vm`` again from what ``save_vm`` returned (its CPU, memory and devices are restored)."""


class DirectExecution(Monitor):
    """Shared machinery of the monitors that run guest code directly on the core in real user mode.

    The common exits (a privileged instruction of the guest kernel, a trap to reflect, a virtual interrupt,
    the virtual timer, console output) are handled by a compiled loop next to the core where the core has one
    (``popek.cores.exit_loop``), as a real hypervisor handles them in its kernel; ``run_direct`` and
    ``handle_exit`` below are the same work in Python, its specification, and they handle the rare exits the
    loop hands back. Set ``compiled_exits`` to False to run every exit through Python.
    """

    flags = S.F_TRAPS_TO_HOST
    compiled_exits = True

    def exit_loop(self) -> ExitLoop | None:
        """The compiled exit loop to run guests with, or None to handle every exit in Python."""
        return self.companion(exit_loop) if self.compiled_exits else None

    def run_compiled(self, vm: VM, loop: ExitLoop, budget: int, mode: int = vmexit.VM_TRAP) -> int:
        """Run the guest through the compiled exit loop until a rare exit, which is handled here; return steps."""
        v = vm.vstate
        start = v.item(S.STEPS)
        kind = loop(v, vm.rstate, vm.host_mem, vm.offset, vm.memsize, budget, self.flags, mode, vm.counters,
                    vm.console_out)  # fmt: skip
        code = vm.take_counters()
        if kind == vmexit.VMX_HALT:
            vm.halted = True
        elif kind != vmexit.VMX_BUDGET:
            t0 = perf_counter()  # as Stopwatch does, without a context object for every exit
            if kind == vmexit.VMX_VIRTUAL:  # a step of the virtual CPU left its port I/O, halt or wfi
                self.finish_step(vm, code)
            elif kind == vmexit.VMX_CORE:
                self.handle_exit(vm, code)
            elif kind == vmexit.VMX_SUPERVISOR:  # the hybrid monitor interprets the guest kernel
                vm.emulate(budget - (v.item(S.STEPS) - start), until_user=True)
            else:
                self.loop_exit(vm, kind, code, budget - (v.item(S.STEPS) - start))
            vm.stats.monitor_seconds += perf_counter() - t0
        return v.item(S.STEPS) - start

    @staticmethod
    def finish_step(vm: VM, code: int) -> None:
        """Finish on the virtual devices a step the compiled loop emulated (its port I/O, halt or wfi)."""
        v = vm.vstate
        mark = v.item(S.STEPS)
        vm.device_exit(code)
        vm.stats.emulated += v.item(S.STEPS) - mark

    def loop_exit(self, vm: VM, kind: int, code: int, budget: int) -> None:
        """Handle a return of the compiled loop that only this monitor makes (``kind``, a VMX_* code)."""
        vm.error = f"unexpected return {kind} from the compiled exit loop"

    def run_direct(self, vm: VM, budget: int) -> int:
        """Deliver a due virtual interrupt or run the guest on the core until its next exit; return steps."""
        if self.inject_due(vm):
            return 1
        timer_armed = bool(vm.vstate[S.TIMER])
        code, retired = vm.run_direct(self.core, budget, self.flags)
        if self.ran_on(vm, code, timer_armed):
            return retired
        with Stopwatch(vm.stats):
            return retired + self.handle_exit(vm, code)

    @staticmethod
    def inject_due(vm: VM) -> bool:
        """Deliver the virtual interrupt due now, if any (a step of the guest); True when one was."""
        irq = vm.interrupt_due()
        if irq is None:
            return False
        with Stopwatch(vm.stats):
            vm.inject(*irq)
        return True

    @staticmethod
    def ran_on(vm: VM, code: int, timer_armed: bool) -> bool:
        """True when the core stopped with no exit to handle (budget spent or halt)."""
        if code not in (S.EXIT_BUDGET, S.EXIT_HALT):
            return False
        if timer_armed and not vm.vstate[S.TIMER]:
            vm.stats.exits["TIMER"] += 1  # the virtual timer expired: the core stopped for it
        return True

    def handle_exit(self, vm: VM, code: int) -> int:
        """Handle one exit of the guest from the core; return the guest steps it accounts for."""
        r = vm.rstate
        if code == S.EXIT_TRAP:
            cause, info = int(r[S.XCAUSE]), int(r[S.XINFO])
            vm.stats.exits[cause_name(cause)] += 1
            if cause in (TIMER_IRQ, DEVICE_IRQ):  # a real interrupt the guest cannot own: drop it
                r[S.PENDING] = 0
                return 0
            if cause == PRIV and vm.supervisor:
                return vm.emulate_one()  # a privileged instruction of the guest kernel
            vm.reflect(cause, info)
            return 1
        vm.stats.exits[S.exit_name(code)] += 1
        if code == S.EXIT_IO:  # in/out executed in real user mode: it reaches the host's real devices
            return self.real_io(vm)
        if code == S.EXIT_IDLE:  # wfi executed in real user mode: the real processor waits for a real interrupt
            vm.error = (
                f"wfi at {int(vm.vstate[S.PC]):#010x} ran untrapped on the real processor, "
                "which has no interrupt to wake it (the virtual timer does not reach real hardware)"
            )
            return 0
        vm.error = f"unexpected exit {S.exit_name(code)} from the core"
        return 0

    def real_io(self, vm: VM) -> int:
        """Perform an untrapped in/out on the host's own devices, not the VM's: the guest cannot see it."""
        r = vm.rstate
        vm.host_io.append((int(r[S.IO_PORT]), bool(r[S.IO_WRITE]), int(r[S.IO_VALUE])))
        vm.vstate[S.IO_WRITE], vm.vstate[S.IO_REG] = r[S.IO_WRITE], r[S.IO_REG]
        S.complete_io(vm.vstate, 0xFFFFFFFF)  # the host's ports read as absent to a guest
        return 1
