"""Full emulation (Bochs style): every guest instruction is interpreted in software on the virtual CPU.

Correct on every profile, because the guest never touches the real processor; slow for the same reason.
"""

from __future__ import annotations

from popek.vmm.monitors.base import Monitor
from popek.vmm.vm import VM, Stopwatch


class FullEmulation(Monitor):
    """Interprets the guest with the reference core's semantics applied to the VM's virtual state."""

    name = "full"
    description = "interpret every guest instruction in software"

    def run(self, vm: VM, budget: int) -> int:
        """Interpret up to ``budget`` guest steps."""
        with Stopwatch(vm.stats):
            return vm.emulate(budget)
