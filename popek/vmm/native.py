"""The native hypervisor (``guests/vmm``, docs/vmm-native.md) seen from the host: build it with chosen guests,
run it like any guest, and read back each guest's console and virtual CPU.

The monitor is P32 code; nothing here takes part in running it. ``build`` assembles ``monitor.s`` with a list
of guests, ``run`` runs the image under any monitor (``bare`` is the hardware itself), and the result splits
the monitor's tagged console into one stream per guest and reads each virtual CPU, which the monitor keeps in
the layout of the machine state, from its memory.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from popek import guests
from popek.cores import CoreRun
from popek.isa import state as S
from popek.isa.asm import Program, assemble, assemble_file
from popek.isa.profiles import Profile
from popek.vmm.host import DEFAULT_CORE, DEFAULT_MAX_STEPS, DEFAULT_MEMSIZE, GuestSpec, Host, RunResult

VMM_DIR = guests.path("vmm")
STATES = {0: "running", 1: "halted", 2: "stopped"}
_TAG = re.compile(r"^(vm\d+|vmm) ([|+]) ?(.*)$", re.DOTALL)


@dataclass
class GuestImage:
    """One guest of the monitor: a source file (assembled with ``defines``) or an image, and its memory size."""

    source: str | Path | bytes
    memsize: int
    defines: tuple[str, ...] = ()


def default_program(nested: bool = False) -> Program:
    """``guests/vmm/vmm.s`` assembled: two guest kernels, or (``nested``) the monitor under itself."""
    return assemble_file(VMM_DIR / "vmm.s", defines={"NESTED": 1} if nested else None)


def build(images: list[GuestImage]) -> Program:
    """The monitor with these guests, in order (vm1, vm2, ...): each in a region of its memory size."""
    with tempfile.TemporaryDirectory() as tmp:
        lines = ['.include "monitor.s"']
        for n, g in enumerate(images, 1):
            path = g.source
            if isinstance(path, bytes):
                path = Path(tmp) / f"guest{n}.bin"
                path.write_bytes(g.source)
            defs = "".join(f', "{d}"' for d in g.defines)
            lines.append(f'GUEST {n}, "{Path(path).resolve()}", {g.memsize}{defs}')
        lines.append("GUESTS_END")
        return assemble("\n".join(lines) + "\n", str(Path(tmp) / "guests.s"), include_dirs=[VMM_DIR])


@dataclass
class VirtualCPU:
    """A guest's virtual CPU as the monitor left it, and what the monitor counted for it."""

    regs: list[int]
    pc: int
    crs: list[int]  # the 13 control registers, in ISA §1's order
    state: str  # running, halted or stopped
    status: int
    exits: int  # traps that brought it into the monitor
    emulated: int  # instructions the monitor performed for it

    @property
    def cycle(self) -> int:
        """Its ``cycle`` register: the instructions it retired (low 32 bits)."""
        return self.crs[S.CYCLE - S.CR0]


@dataclass
class NativeRun:
    """A run of the monitor: the machine's result, each guest's console and virtual CPU."""

    result: RunResult
    consoles: dict[str, str]  # "vmm" (the monitor's own lines), "vm1", "vm2", ...
    cpus: list[VirtualCPU] = field(default_factory=list)
    memory: bytes = b""  # the machine's memory at the end

    def inner_cpus(self, inner: Program, base: int) -> list[VirtualCPU]:
        """The virtual CPUs of a monitor ``inner`` that runs as a guest whose memory starts at ``base``."""
        return read_cpus(inner, self.memory, base)

    def console(self, *path: str) -> str:
        """The console of a guest, through nested monitors: ``console("vm1", "vm2")`` is vm2 of vm1."""
        text = self.result.console
        for tag in path:
            text = split_console(text).get(tag, "")
        return text


def split_console(text: str) -> dict[str, str]:
    """The monitor's console as one stream per tag: ``vmN | line`` ends a guest's line, ``vmN + part`` does not."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _TAG.match(line)
        tag, sep, payload = m.groups() if m else ("", "|", line)
        out[tag] = out.get(tag, "") + payload + ("\n" if sep == "|" else "")
    return out


def read_cpus(program: Program, mem: bytes | memoryview, base: int = 0) -> list[VirtualCPU]:
    """The virtual CPUs of a monitor whose memory starts at ``base`` in ``mem``."""
    eq, at = program.equates, base + program.symbols["vcpus"]
    n = int.from_bytes(bytes(mem[base + program.symbols["guest_table"] :][:4]), "little")
    cpus = []
    for i in range(min(n, eq["MAX_GUESTS"])):
        raw = bytes(mem[at + i * eq["VCPU_SIZE"] :][: eq["VCPU_SIZE"]])

        def word(off: int, raw: bytes = raw) -> int:
            return int.from_bytes(raw[off : off + 4], "little")

        cpus.append(
            VirtualCPU(
                regs=[word(4 * r) for r in range(16)],
                pc=word(4 * S.PC),
                crs=[word(4 * (S.CR0 + c)) for c in range(13)],
                state=STATES.get(word(eq["V_STATE"]), "?"),
                status=word(eq["V_STATUS"]),
                exits=word(eq["V_EXITS"]),
                emulated=word(eq["V_EMULATED"]),
            )
        )
    return cpus


def run(
    program: Program,
    monitor: str = "bare",
    profile: str | Profile | None = None,
    core: str | CoreRun = DEFAULT_CORE,
    memsize: int = DEFAULT_MEMSIZE,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> NativeRun:
    """Run the monitor (on the bare machine, or as the guest of ``monitor``) and read back its guests."""
    host = Host([GuestSpec("vmm", program.image, monitor, profile, memsize)], core)
    result = host.run(max_steps)[0]
    memory = host.vms[0].mem.tobytes()
    return NativeRun(result, split_console(result.console), read_cpus(program, memory), memory)
