"""Full emulation (Bochs style): every guest instruction is interpreted in software on the virtual CPU.

The interpreter is the emulator (popek/cores/emulator.py), a compiled decode-and-dispatch loop over the VM's
virtual CPU and memory slice that the reference core specifies. Correct on every profile, because the guest
never touches the real processor; it pays for interpreting every instruction instead.
"""

from __future__ import annotations

from popek.vmm.monitors.base import Monitor
from popek.vmm.vm import VM, Stopwatch


class FullEmulation(Monitor):
    """Interprets the guest with the emulator on the VM's virtual CPU (``VM.emulate``)."""

    name = "full"
    description = "interpret every guest instruction in software"

    def run(self, vm: VM, budget: int) -> int:
        """Interpret up to ``budget`` guest steps."""
        with Stopwatch(vm.stats):
            return vm.emulate(budget)
