"""The monitor interface: ``Monitor.run(vm, budget)`` advances one VM by at most ``budget`` guest steps."""

from __future__ import annotations

from isa import state as S
from isa.core import CoreRun, get_core
from isa.spec import DEVICE_IRQ, PRIV, TIMER_IRQ
from vmm.vm import VM, Stopwatch, cause_label


class Monitor:
    """Base class: one subclass per strategy, each in its own file."""

    name = "?"
    description = ""

    def __init__(self, core: str | CoreRun = "jit") -> None:
        self.core = get_core(core) if isinstance(core, str) else core

    def run(self, vm: VM, budget: int) -> int:
        """Advance ``vm`` by at most ``budget`` guest steps (fewer if it stops); return the steps taken."""
        raise NotImplementedError


class DirectExecution(Monitor):
    """Shared machinery of the monitors that run guest code directly on the core in real user mode."""

    flags = S.F_TRAPS_TO_HOST

    def run_direct(self, vm: VM, budget: int) -> int:
        """Deliver a due virtual interrupt or run the guest on the core until its next exit; return steps."""
        irq = vm.interrupt_due()
        if irq is not None:
            with Stopwatch(vm.stats):
                vm.inject(*irq)
            return 1
        code, retired = vm.run_direct(self.core, budget, self.flags)
        if code in (S.EXIT_BUDGET, S.EXIT_HALT):
            return retired
        with Stopwatch(vm.stats):
            return retired + self.handle_exit(vm, code)

    def handle_exit(self, vm: VM, code: int) -> int:
        """Handle one exit of the guest from the core; return the guest steps it accounts for."""
        r = vm.rstate
        if code == S.EXIT_TRAP:
            cause, info = int(r[S.XCAUSE]), int(r[S.XINFO])
            vm.stats.exits[cause_label(cause)] += 1
            if cause in (TIMER_IRQ, DEVICE_IRQ):  # a real interrupt the guest cannot own: drop it
                r[S.PENDING] = 0
                return 0
            if cause == PRIV and vm.supervisor:
                return self.emulate(vm)  # a privileged instruction of the guest kernel
            vm.reflect(cause, info)
            return 1
        # in/out or an idling wfi that the profile lets user mode execute: finish it on the virtual CPU
        vm.stats.exits[S.EXIT_NAMES[code]] += 1
        return self.emulate(vm)

    def emulate(self, vm: VM) -> int:
        """Emulate the instruction at the guest's pc against the virtual CPU; return the steps it took."""
        before = int(vm.vstate[S.STEPS])
        vm.emulate_one()
        return int(vm.vstate[S.STEPS]) - before
