"""The monitors of Theorems 1 and 3 as models: what the real processor holds while a guest runs, and how a
witness can set or observe each component of control state.

What the monitors give the real processor is read off ``VM.load_real_state`` itself, and what a trap does is
read off the reference core; what the monitors do in software (emulate a privileged instruction, reflect a
trap, interpret the whole guest kernel) is stated here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from popek.cores import reference
from popek.isa import spec
from popek.isa import state as S
from popek.isa.profiles import Profile
from popek.isa.spec import CR_NAMES, EXECUTE, IGNORE, PSW_IE, PSW_S, TRAP, encode
from popek.vmm.sensitivity.forms import (
    COMPONENTS,
    CR_COMPONENTS,
    FORM_BY_NAME,
    FORMS,
    M32,
    PC0,
    PSWS,
    RETIRE_WRITES,
    VMEM,
    Facts,
    Form,
    component,
    facts,
    set_component,
)
from popek.vmm.vm import VM

# --- how the monitors place a guest on the real processor -----------------------------------------------
# Where the probe VM's slice begins in host memory.  The host never places a VM at 0 (it keeps its first
# 64 KiB for the monitor), and any other offset shows the same: R composed with the slice is never the guest's.
PROBE_OFFSET = 64 * 1024


@functools.cache
def monitor_map() -> dict[str, set[str]]:
    """Read ``VM.load_real_state`` itself: what the real CPU holds of each component while a guest runs.

    ``mirrored``: always the guest's value (IE).  ``mapped``: recomputed from the guest's value at every entry
    (the mode, R composed with the VM's slice, the timer zeroed); ``always`` are those of them that never
    equal the guest's value.  ``own``: the real CPU keeps its own value, whatever the guest's (the trap
    registers, ivt, scratch, cycle; and the devices, since untrapped I/O reaches the host's ports).
    """
    memsize = 0x1000
    vm = VM("probe", np.zeros(PROBE_OFFSET + memsize, np.uint8), PROBE_OFFSET, memsize)
    names = COMPONENTS[:-1]
    equal = {n: True for n in names}  # equal to the guest's value in every trial
    kept = {n: True for n in names}  # left as the real CPU had it in every trial
    never = {n: True for n in names}  # equal to the guest's value in no trial
    trial = 0
    for psw in PSWS:
        for base, bound in ((0, memsize), (0x100, M32), (0x200, 0x100)):
            for timer, pending in ((0, 0), (5, 0), (0, 1)):
                trial += 1
                v, r = vm.vstate, vm.rstate
                for i, n in enumerate(names):
                    set_component(r, n, 0xA000 + 16 * i + trial)
                    set_component(v, n, 0x5000 + 16 * i + trial)
                v[S.PSW], v[S.BASE], v[S.BOUND], v[S.TIMER], v[S.PENDING] = psw, base, bound, timer, pending
                before = {n: component(r, n) for n in names}
                vm.load_real_state(S.F_TRAPS_TO_HOST)
                for n in names:
                    real, guest = component(r, n), component(v, n)
                    equal[n] &= real == guest
                    never[n] &= real != guest
                    kept[n] &= real == before[n]
    mirrored = {n for n in names if equal[n]}
    own = {n for n in names if kept[n] and not equal[n]} | {"console"}
    mapped = set(names) - mirrored - own
    return {"mirrored": mirrored, "mapped": mapped, "own": own, "always": {n for n in mapped if never[n]}}


# --- the theorems' monitors as models -------------------------------------------------------------------
# Under the trap-and-emulate monitor (Theorem 1) every guest instruction runs on the real processor in real
# user mode, except privileged ones in virtual supervisor mode, which the monitor emulates on the virtual
# CPU; traps are reflected into the guest in software.  Under the hybrid monitor (Theorem 3) everything in
# virtual supervisor mode is interpreted, and virtual user mode runs as under trap-and-emulate.  A component
# is *control state* for a monitor when the real processor does not hold it in the guest's value:
#  - a form that runs on the real processor and *reads* it is behaviour-sensitive when the guest can make its
#    value differ from the real one (a "setter" exists), and
#  - a form that runs on the real processor and *writes* it is control-sensitive when the guest can notice
#    that the write never reached its virtual machine (an "observer" exists).
# Setters and observers are the tactics the witnesses use, so a verdict and its witnesses cannot disagree.


@dataclass(frozen=True)
class Tactic:
    """How a witness sets or observes one component: the kind of step, and the form it uses (if any)."""

    kind: str
    form: str | None = None


def behaviour_of(profile: Profile, form: Form) -> int:
    """The user-mode behaviour of ``form`` in ``profile`` (non-system forms always execute)."""
    return profile.behaviour[form.key] if form.key is not None else EXECUTE


def is_privileged(profile: Profile, form: Form) -> bool:
    """True when the form traps in user mode and not in supervisor mode (derived by executing it)."""
    return behaviour_of(profile, form) == TRAP and facts(form.name, TRAP).priv_traps


def facts_when_run(profile: Profile, form: Form) -> Facts:
    """The facts of what a form does when it runs: a privileged form as if it executed in user mode."""
    b = behaviour_of(profile, form)
    return facts(form.name, EXECUTE if b == TRAP else b)


def _harmless(name: str) -> bool:
    """A form whose supervisor-mode execution changes nothing but r1 (so a witness may run it anywhere)."""
    f = facts(name, EXECUTE)
    return not f.write_set("sup") and not f.ends and f.form.insn.mnemonic not in ("in", "out")


@dataclass
class Model:
    """One theorem's monitor on one profile: what the witnesses can set and observe, what a guest kernel can't."""

    theorem: int
    profile: Profile
    setters: dict[str, Tactic]
    observers: dict[str, Tactic]
    mode_observable: set[str]  # aspects of a mode difference a witness can show (Theorem 1)
    probe: str | None  # a harmless privileged form: its trap shows the mode, its emulation forces an exit
    io_exit: str | None  # an unprivileged in/out the monitor completes in software

    def reasons(self, form: Form) -> list[tuple[str, str]]:
        """Why ``form`` would break this monitor if it ran on the real processor: (kind, component) pairs."""
        f = facts_when_run(self.profile, form)
        out = []
        if self.theorem == 1:
            out += [("mode", a) for a in sorted(f.mode) if a in self.mode_observable]
        out += [("reads", c) for c in sorted(f.read_set("user")) if c in self.setters]
        out += [("writes", c) for c in sorted(f.write_set("user")) if c in self.observers]
        return out


def model(profile: Profile, theorem: int) -> Model:
    """Build the model of the monitor of ``theorem`` (1: trap, 3: hybrid) for ``profile``."""
    mm = monitor_map()
    priv = {f.name for f in FORMS if is_privileged(profile, f)}
    probe = next((f.name for f in FORMS if f.name in priv and _harmless(f.name)), None)
    io_exit = next((f.name for f in FORMS if f.insn.mnemonic in ("in", "out") and f.name not in priv
                    and behaviour_of(profile, f) == EXECUTE), None)  # fmt: skip
    setters: dict[str, Tactic] = {}
    observers: dict[str, Tactic] = {}
    controlled = [c for c in COMPONENTS if c not in mm["mirrored"]]
    if theorem == 3:  # the guest kernel is interpreted: it sets and reads anything exactly
        for c in COMPONENTS:
            # Nothing the real processor changes is copied back but registers; the kernel sees what user code
            # left behind through the trap that brings it back, which overwrites the trap registers.
            if c not in trap_entry()["overwrites"] or c in trap_entry()["copies"]:
                observers[c] = Tactic("kernel")
            if c == "M" or c not in controlled:
                continue  # (virtual user mode runs in real user mode: the mode is the guest's own)
            if c == "console":
                setters[c] = Tactic("input")
            elif c in mm["always"] or c in RETIRE_WRITES and c in mm["own"]:
                setters[c] = Tactic("intrinsic")  # the offset in base; cycle misses every interpreted instruction
            else:
                setters[c] = Tactic("kernel")
        return Model(3, profile, setters, observers, set(), probe, io_exit)

    def beh(name: str) -> int:
        return behaviour_of(profile, FORM_BY_NAME[name])

    exit_tool = probe or io_exit  # an exit that is not a trap into the guest
    for c in controlled:
        if c == "M":
            continue  # the guest kernel runs in real user mode: that is the mode difference, judged apart
        writer, reader = (f"mtcr.{c}", f"mfcr.{c}") if c in CR_NAMES else ("mtcr.timer", "mfcr.timer")
        if c not in facts(writer, EXECUTE).write_set("sup"):
            writer = None  # (mtcr cycle writes nothing)
        # Setters: how the guest's value comes to differ from the real processor's.
        if c == "console":
            setters[c] = Tactic("input")  # the bare machine's console has input; the host's ports have none
        elif c in mm["always"]:
            setters[c] = Tactic("intrinsic")  # differs by itself (the monitor's offset in base)
        elif c in mm["mapped"]:  # recomputed at every entry: put the guest where the result differs
            if c != "bound" or beh(writer) != EXECUTE:
                setters[c] = Tactic("expire" if c == "pending" else "copy", writer)
            elif exit_tool:
                setters[c] = Tactic("copy", writer)  # written on the real CPU, recomputed after an exit
        elif writer and beh(writer) != EXECUTE:
            setters[c] = Tactic("copy", writer)  # emulated on the virtual CPU, or ignored: never the real one
        elif c in fault_writes():
            setters[c] = Tactic("fault")  # a trap reflected into the guest sets it in software
        elif c == "cycle" and exit_tool:
            setters[c] = Tactic("retire", exit_tool)  # an instruction the monitor retires in software
        elif c == "cycle" and beh("wfi") == IGNORE:
            setters[c] = Tactic("skip", "wfi")  # the bare machine skips ahead to the timer, the monitor doesn't
        # Observers: how a write that reached only the real processor (or nothing) becomes visible.
        if c == "console" or c in mm["always"]:
            observers[c] = Tactic("intrinsic")
        elif c in ("timer", "pending"):
            observers[c] = Tactic("after-trap", reader)  # the next entry zeroes the real timer
        elif c == "bound" and exit_tool:
            observers[c] = Tactic("exit-probe", exit_tool)  # the next entry recomposes R: a load shows it
        elif c in mm["own"]:
            if beh(reader) != EXECUTE:
                observers[c] = Tactic("copy", reader)  # reads the virtual CPU (or nothing): the old value
            elif c == "ivt":
                observers[c] = Tactic("vector")  # the monitor reflects traps through the virtual ivt
            elif c in ("epc", "epsw", "ebase", "ebound") and "iret" in priv and (c != "epsw" or probe):
                observers[c] = Tactic("iret", "iret")  # an emulated iret returns through the virtual value
    if probe:
        observers["M"] = observers["IE"] = Tactic("probe", probe)
    mode_observable = {"regs", "pc", "mem", "console", "trap", "halt", "idle"} | set(controlled) - {"M", "IE"}
    if probe:
        mode_observable |= {"M", "IE"}
    return Model(1, profile, setters, observers, mode_observable, probe, io_exit)


@functools.cache
def trap_entry() -> dict[str, set[str]]:
    """What taking a trap does to the components (from executing ``syscall``): which it overwrites, and
    which it copies into another (psw into epsw, R into ebase/ebound), so that a trap handler still sees them."""
    names = COMPONENTS[:-1]
    st = S.new_state(VMEM)
    mem = np.zeros(VMEM, np.uint8)
    word = encode(spec.BY_MNEMONIC["syscall"], 0, 0, 0, 0)
    st[S.PC], st[S.BASE], st[S.BOUND], st[S.PSW] = PC0, 0x100, 0x200, PSW_IE
    mem[0x100 + PC0 : 0x104 + PC0] = np.frombuffer(word.to_bytes(4, "little"), np.uint8)
    for i, n in enumerate(CR_COMPONENTS):
        set_component(st, n, 0x300 + 4 * i)

    def take(state: np.ndarray) -> np.ndarray:
        s = state.copy()
        reference.step(reference.Cpu(s, mem.copy()))
        return s

    after = take(st)
    overwrites = {n for n in names if component(after, n) != component(st, n)}
    copies = set()
    for n in names:
        other = st.copy()
        set_component(other, n, component(st, n) ^ (PSW_IE if n == "IE" else PSW_S if n == "M" else 0x40))
        if any(component(take(other), d) != component(after, d) for d in names if d != n):
            copies.add(n)
    return {"overwrites": overwrites, "copies": copies}


@functools.cache
def fault_writes() -> frozenset[str]:
    """Components a trap taken in supervisor mode sets to a value other than zero (from executing ``ld``)."""
    st = S.new_state(VMEM)
    mem = np.zeros(VMEM, np.uint8)
    st[S.PC], st[6] = PC0, 0xFFFF0000
    word = encode(spec.BY_MNEMONIC["ld"], 5, 6, 0, 0)
    mem[PC0 : PC0 + 4] = np.frombuffer(word.to_bytes(4, "little"), np.uint8)
    before = st.copy()
    reference.step(reference.Cpu(st, mem))
    return frozenset(c for c in CR_COMPONENTS if component(st, c) != component(before, c) and component(st, c))
