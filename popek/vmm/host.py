"""Several VMs on one host machine: memory slices, round-robin scheduling in budget slices, isolation.

The host's memory begins with a region reserved for the monitor (as a real hypervisor keeps its own memory),
grown by whatever a VM's monitor asks for (``Monitor.host_bytes``), followed by one slice per VM. Each VM
runs under its own monitor and profile; the host gives each a slice of guest steps in turn, so a guest
spinning with interrupts off cannot hold the machine (the preemption is invisible to the guest: its virtual
time only counts its own instructions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from popek.isa import state as S
from popek.isa.machine import RunResult
from popek.isa.profiles import Profile
from popek.isa.spec import EXECUTE
from popek.vmm.monitors import get_monitor
from popek.vmm.monitors.base import DirectExecution, Monitor
from popek.vmm.vm import VM

MONITOR_RESERVED = 64 * 1024
DEFAULT_SLICE = 100_000


@dataclass
class GuestSpec:
    """What to run in one VM."""

    name: str
    image: bytes
    monitor: str = "trap"
    profile: str | None = None
    memsize: int = 1 << 20
    console_input: bytes = b""


# Instructions that, if a profile lets user mode execute them, change the real processor's mode or relocation:
# a guest run directly (in real user mode) could then leave its slice. iret only restores what the
# e-registers hold, so it matters only together with a user-mode write to one of them.
_ESCAPES = ("setpsw", "mtcr.psw", "mtcr.base", "mtcr.bound")
_ESCAPES_WITH_IRET = ("mtcr.epsw", "mtcr.ebase", "mtcr.ebound")


def confinement_leak(profile: Profile) -> str:
    """Which user-mode instructions of ``profile`` could free a directly executed guest ('' when none)."""
    b = profile.behaviour
    leaks = [k for k in _ESCAPES if b[k] == EXECUTE]
    if b["iret"] == EXECUTE:
        leaks += [f"iret after {k}" for k in _ESCAPES_WITH_IRET if b[k] == EXECUTE]
    return ", ".join(leaks)


class Host:
    """A host machine running several VMs, each with its own monitor, profile, memory and console."""

    def __init__(self, guests: list[GuestSpec], core: str = "jit") -> None:
        self.monitors: list[Monitor] = [get_monitor(g.monitor, core) for g in guests]
        # The monitor region grows by what the monitors ask for (the rewriting monitor's shadow copies).
        areas = [-(-m.host_bytes(g.memsize) // 4) * 4 for m, g in zip(self.monitors, guests, strict=True)]
        total = MONITOR_RESERVED + sum(areas) + sum(g.memsize for g in guests)
        self.mem = np.zeros(total, dtype=np.uint8)
        self.vms: list[VM] = []
        area, offset = MONITOR_RESERVED, MONITOR_RESERVED + sum(areas)
        for g, mon, size in zip(guests, self.monitors, areas, strict=True):
            vm = VM(g.name, self.mem, offset, g.memsize, g.profile, g.console_input)
            vm.load(g.image)
            mon.attach(vm, area)
            self.vms.append(vm)
            area += size
            offset += g.memsize
        self.steps = [0] * len(guests)
        if len(self.vms) > 1:
            self._check_confinement()

    def _check_confinement(self) -> None:
        """Refuse to share the machine with a guest that direct execution could not keep in its slice."""
        for vm, mon in zip(self.vms, self.monitors, strict=True):
            leak = confinement_leak(vm.profile) if isinstance(mon, DirectExecution) else ""
            if leak:
                raise ValueError(
                    f"VM {vm.name}: profile '{vm.profile.name}' lets user mode run {leak} without trapping, so "
                    f"the '{mon.name}' monitor could not keep it inside its memory; run it under 'full' or alone"
                )

    def run(self, max_steps: int = 100_000_000, slice_steps: int = DEFAULT_SLICE) -> list[RunResult]:
        """Run every VM round-robin until all stop or each reaches ``max_steps``; return their results."""
        while True:
            progressed = False
            for i, (vm, mon) in enumerate(zip(self.vms, self.monitors, strict=True)):
                if vm.stopped or self.steps[i] >= max_steps:
                    continue
                self.steps[i] += mon.run(vm, min(slice_steps, max_steps - self.steps[i]))
                progressed = True
            if not progressed:
                break
        return [self.result(i) for i in range(len(self.vms))]

    def result(self, i: int) -> RunResult:
        """The result of VM number ``i`` in the same shape as a bare machine's."""
        vm, v = self.vms[i], self.vms[i].vstate
        if vm.halted:
            exit_name, message = "halt", ""
        elif vm.error:
            exit_name, message = "idle" if "wfi" in vm.error else "error", vm.error
        else:
            exit_name, message = "limit", f"stopped after {self.steps[i]} steps (the step limit; see --max-steps)"
        stats = {"monitor": self.monitors[i].name, "cycle": int(v[S.CYCLE]), **vm.stats.as_dict()}
        return RunResult(
            console=vm.console.text(),
            status=int(v[S.STATUS]) if vm.halted else 1,
            steps=int(v[S.STEPS]),
            halted=vm.halted,
            regs=[int(x) for x in v[S.R0 : S.R0 + 16]],
            pc=int(v[S.PC]),
            exit=exit_name,
            message=message,
            stats=stats,
        )
