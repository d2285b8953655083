"""Trap-and-emulate (Popek & Goldberg's Theorem 1): the guest runs directly, the monitor handles its traps.

Guest kernel and guest user code alike run on the core in real user mode with relocation composed from the
VM's slice and the guest's virtual R. Every trap leaves the core: privileged instructions of the guest kernel
are emulated against the virtual CPU, other traps are reflected into the guest kernel, and the virtual timer
is kept exact by never letting the core run past its expiry. Nothing special is done about sensitive
instructions that do not trap; on ``x86like`` the guest notices, which is the point.
"""

from __future__ import annotations

from popek.vmm.monitors.base import DirectExecution
from popek.vmm.vm import VM


class TrapAndEmulate(DirectExecution):
    """Direct execution in real user mode; emulate on PRIV traps from virtual supervisor mode."""

    name = "trap"
    description = "run the guest directly in user mode, emulate what traps"

    def run(self, vm: VM, budget: int) -> int:
        """Advance the guest by at most ``budget`` steps."""
        loop, done = self.exit_loop(), 0
        while done < budget and not vm.stopped:
            if loop is not None:
                done += self.run_compiled(vm, loop, budget - done)
            else:
                done += self.run_direct(vm, budget - done)
        return done
