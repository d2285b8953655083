"""The bare machine as a monitor: no monitor at all, the guest owns the hardware.

The VM's virtual CPU *is* the processor state: the core runs it directly in the VM's memory, in whatever
mode the guest is in, and only port I/O comes back for the devices. Console output goes into a buffer the host
drains after each call (where the core can, ``popek.cores.console_run``), as a real machine's UART takes bytes
without the host's attention, so the bare machine is a fair baseline; the buffer is drained before any other
I/O is performed, so the order of output and I/O is kept. Every other monitor is judged against this one (the
ISA's Equivalence rule).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from popek.cores import console_run
from popek.isa import state as S
from popek.vmm.monitors.base import Monitor
from popek.vmm.vm import VM

StepHook = Callable[[VM, np.ndarray], None]


class Bare(Monitor):
    """Run the guest on the core with nothing between; ``on_step`` traces it one step at a time."""

    name = "bare"
    description = "the guest alone on the hardware (the reference every monitor is judged against)"
    on_step: StepHook | None = None  # called after every step with the VM and its state before the step

    def run(self, vm: VM, budget: int) -> int:
        """Advance the guest by at most ``budget`` steps on the core."""
        v = vm.vstate
        start = v.item(S.STEPS)
        if self.on_step:
            return self._trace(vm, budget, start)
        buffered = self.companion(console_run)
        while not vm.stopped:
            left = budget - (v.item(S.STEPS) - start)
            if left <= 0:
                break
            if buffered is not None:
                code, n = buffered(v, vm.mem, left, vm.console_out)
                if n:  # written before whatever the core stopped for
                    vm.console.output += vm.console_out[:n].tobytes()
            else:
                code = self.core(v, vm.mem, left)
            if code != S.EXIT_BUDGET:
                self._exit(vm, code)
        return v.item(S.STEPS) - start

    def _trace(self, vm: VM, budget: int, start: int) -> int:
        """``run`` one step at a time, calling ``on_step`` after each."""
        v = vm.vstate
        while not vm.stopped and budget - (v.item(S.STEPS) - start) > 0:
            before = v.copy()
            code = self.core(v, vm.mem, 1)
            if code != S.EXIT_BUDGET:
                self._exit(vm, code)
            self.on_step(vm, before)
        return v.item(S.STEPS) - start

    @staticmethod
    def _exit(vm: VM, code: int) -> None:
        """What the core stopped for: port I/O on the devices, halt, an idle wfi, or an error."""
        if code == S.EXIT_IO:
            vm.stats.exits["io"] += 1
            vm.bus.complete(vm.vstate)
            return
        vm.device_exit(code)
        if code not in (S.EXIT_HALT, S.EXIT_IDLE):
            vm.error = f"core stopped with exit code {code} ({S.exit_name(code)})"
