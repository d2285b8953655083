"""The hybrid monitor of Popek & Goldberg's Theorem 3: interpret virtual supervisor mode, run user mode directly.

It needs only the *user-sensitive* instructions to be privileged: everything the guest kernel executes is
interpreted in software (by the emulator, as under full emulation), so sensitive instructions there cannot go
unnoticed.
"""

from __future__ import annotations

from popek.cores import vmexit
from popek.vmm.monitors.base import DirectExecution
from popek.vmm.vm import VM, Stopwatch


class Hybrid(DirectExecution):
    """Software interpretation in virtual supervisor mode, direct execution in virtual user mode."""

    name = "hybrid"
    description = "interpret the guest kernel, run guest user code directly"

    def run(self, vm: VM, budget: int) -> int:
        """Advance the guest by at most ``budget`` steps."""
        loop, done = self.exit_loop(), 0
        while done < budget and not vm.stopped:
            if loop is not None:  # both modes in the compiled loop (the kernel on the emulator)
                done += self.run_compiled(vm, loop, budget - done, vmexit.VM_HYBRID)
            elif vm.supervisor:
                with Stopwatch(vm.stats):
                    done += vm.emulate(budget - done, until_user=True)
            else:
                done += self.run_direct(vm, budget - done)
        return done
