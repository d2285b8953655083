"""The Popek–Goldberg checker: is an ISA profile virtualizable, and if not, which program shows it?

The checker never reads a hand-written label. It executes every instruction form (each ``mfcr.X`` and
``mtcr.X`` separately, and every non-system instruction) with the reference core on chosen machine states
and on *pairs* of states that differ in one respect — the mode, the relocation register with memory shifted
to match, one control register, the timer, the console — and records what changed (its *writes*) and what
its outcome depended on (its *reads*).  From those facts and from how the monitors load the real processor
(read off ``VM.load_real_state`` itself) it classifies each form and decides

* **Theorem 1** — a trap-and-emulate monitor (``trap``) is exact iff every sensitive form is privileged;
* **Theorem 3** — a hybrid monitor (``hybrid``) is exact iff every *user-sensitive* form is privileged.

For every violation it writes a witness: P32 source text whose run on the bare machine and under the monitor
of that theorem differ; it runs both and shows the difference.  ``docs/checker.md`` explains the extension of
the 1974 definitions to P32 and the reading of "user-sensitive" implemented here.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from popek.cores import reference
from popek.isa import spec
from popek.isa import state as S
from popek.isa.devices import Console
from popek.isa.disasm import disassemble_word
from popek.isa.profiles import Profile, load_profile
from popek.isa.spec import CR_NAMES, CR_NUMBER, EXECUTE, IGNORE, INSNS, PROFILE_INDEX, PSW_IE, PSW_S, TRAP, encode

M32 = 0xFFFFFFFF

# --- instruction forms ----------------------------------------------------------------------------------
# One canonical encoding per form: results go to r1, sources are r2 and r3, so that the states below decide
# every operand value.


@dataclass(frozen=True)
class Form:
    """One instruction form: a mnemonic (``mfcr``/``mtcr`` split per control register) and its encoding."""

    name: str
    insn: spec.Insn
    key: str | None  # the profile key that sets its user-mode behaviour, if any
    word: int
    text: str
    cr: int | None = None  # for mfcr/mtcr: the control register


def _form(insn: spec.Insn, cr: int | None = None) -> Form:
    m, ops = insn.mnemonic, insn.operands
    a = b = c = imm = 0
    if ops == "rd,rs1,rs2":
        a, b, c, text = 1, 2, 3, "r1, r2, r3"
    elif ops == "rd,imm":
        a, imm, text = 1, 0x1234, "r1, 0x1234"
    elif ops == "rd,rs1,imm":
        a, b, imm, text = 1, 2, 0x13, "r1, r2, 0x13"
    elif ops == "rd,mem":
        a, b, imm, text = 1, 2, 8 if m == "jalr" else 4, f"r1, {8 if m == 'jalr' else 4}(r2)"
    elif ops == "rs,mem":
        a, b, imm, text = 3, 2, 4, "r3, 4(r2)"
    elif ops == "rs1,rs2,br":
        a, b, imm, text = 2, 3, 3, "r2, r3, .+12"
    elif ops == "rd,j":
        a, imm, text = 1, 3, "r1, .+12"
    elif ops == "uimm":
        imm, text = 5, "5"
    elif ops == "rd,cr":
        a, imm, text = 1, cr, f"r1, {CR_NAMES[cr]}"
    elif ops == "cr,rs":
        a, imm, text = 2, cr, f"{CR_NAMES[cr]}, r2"
    elif ops == "rd,port":
        a, imm, text = 1, spec.CONSOLE_PORT, f"r1, {spec.CONSOLE_PORT}"
    elif ops == "port,rs":
        a, imm, text = 2, spec.CONSOLE_PORT, f"{spec.CONSOLE_PORT}, r2"
    elif ops == "rd":
        a, text = 1, "r1"
    elif ops == "rs":
        a, text = 2, "r2"
    else:
        text = ""
    key = insn.profile_key
    name = m
    if cr is not None:
        name = key = f"{m}.{CR_NAMES[cr]}"
    return Form(name, insn, key, encode(insn, a, b, c, imm), f"{m} {text}".strip(), cr)


def _forms() -> list[Form]:
    out = []
    for insn in INSNS:
        if insn.operands in ("rd,cr", "cr,rs"):
            out.extend(_form(insn, cr) for cr in range(len(CR_NAMES)))
        else:
            out.append(_form(insn))
    return out


FORMS: list[Form] = _forms()
FORM_BY_NAME: dict[str, Form] = {f.name: f for f in FORMS}

# --- machine states and their components ----------------------------------------------------------------
# The control state of P32, one name per component a pair of states can differ in.  "M" and "IE" are the two
# bits of psw; "console" is the device state (input still to read, output written).

CR_COMPONENTS = ("epc", "epsw", "cause", "badaddr", "ivt", "ebase", "ebound", "scratch", "cycle")
COMPONENTS = ("M", "IE", "base", "bound", *CR_COMPONENTS, "timer", "pending", "console")
_SLOT = {"base": S.BASE, "bound": S.BOUND, "timer": S.TIMER, **{n: S.CR0 + CR_NUMBER[n] for n in CR_COMPONENTS}}

VMEM = 0x400  # memory of the machines the forms run on
PC0 = 0x40  # virtual address of the instruction under test
SHIFT = 0x100  # location pairs: the same machine placed this many bytes further into a larger memory


@dataclass
class Snap:
    """A machine to execute one instruction on: state, physical memory, console input, and its placement."""

    st: np.ndarray
    mem: np.ndarray
    inp: bytes = b""
    shift: int = 0  # physical offset of the machine's memory (non-zero in the shifted half of a location pair)

    def copy(self) -> Snap:
        """An independent copy."""
        return Snap(self.st.copy(), self.mem.copy(), self.inp, self.shift)

    @property
    def user(self) -> bool:
        """True in user mode."""
        return not self.st[S.PSW] & PSW_S


def component(st: np.ndarray, name: str) -> int:
    """The value of one control-state component (console excluded) in a state array."""
    if name == "M":
        return int(st[S.PSW]) & PSW_S
    if name == "IE":
        return int(st[S.PSW]) & PSW_IE
    if name == "pending":
        return int(st[S.PENDING]) & S.PEND_TIMER
    return int(st[_SLOT[name]])


def _set_component(st: np.ndarray, name: str, value: int) -> None:
    if name == "M":
        st[S.PSW] = (int(st[S.PSW]) & ~PSW_S) | (value & PSW_S)
    elif name == "IE":
        st[S.PSW] = (int(st[S.PSW]) & ~PSW_IE) | (value & PSW_IE)
    elif name == "pending":
        st[S.PENDING] = value & S.PEND_TIMER
    else:
        st[_SLOT[name]] = value & M32


# Control-register settings, windows R = (base, bound), register files and console inputs the states are
# built from.  They are chosen so that each component takes a value that an instruction could reveal.
_CR_SETS = [
    dict(epc=0x20, epsw=1, cause=3, badaddr=0x99, ivt=0x10, ebase=0, ebound=VMEM, timer=0, pending=0,
         scratch=0x5C, cycle=100),
    dict(epc=0x60, epsw=2, cause=1, badaddr=0, ivt=0, ebase=0x100, ebound=0x200, timer=7, pending=0,
         scratch=0, cycle=0),
    dict(epc=0x24, epsw=0, cause=2, badaddr=4, ivt=0x30, ebase=0x80, ebound=M32, timer=0, pending=1,
         scratch=9, cycle=5),
]  # fmt: skip
_WINDOWS = [(0, VMEM), (0x100, 0x200), (0, M32), (0x80, M32)]
_REG_SETS = [
    {1: 0, 2: 0x80, 3: 5},
    {1: 0x33, 2: 0x83, 3: 0x80},
]
# Alternative values for the one-component pairs.
_ALTERNATIVES = {"epc": 0x88, "epsw": 3, "cause": 5, "badaddr": 0x1000, "ivt": 0x44, "ebase": 0x40, "ebound": 0x100,
                 "scratch": 0x1234, "cycle": 7777}  # fmt: skip
_SCENARIOS = [(0, 0, 0, b""), (1, 1, 1, b"Q"), (2, 2, 0, b"Q"), (3, 0, 1, b""), (0, 2, 1, b""), (1, 1, 0, b"")]
_PSWS = [PSW_S, PSW_S | PSW_IE, 0, PSW_IE]


def _states(word: int, behaviour: int, key: str | None) -> list[Snap]:
    """The base states for one instruction word, in both modes (user mode runs it with ``behaviour``)."""
    out = []
    for wi, ci, ri, inp in _SCENARIOS:
        base, bound = _WINDOWS[wi]
        for psw in _PSWS:
            st = S.new_state(VMEM)
            st[S.PROFILE : S.PROFILE + len(spec.PROFILE_KEYS)] = TRAP
            if key is not None:
                st[S.PROFILE + PROFILE_INDEX[key]] = behaviour
            for r in range(1, 16):
                st[r] = _REG_SETS[ri].get(r, 0x1000 * r + r)
            st[S.PC] = PC0
            st[S.PSW], st[S.BASE], st[S.BOUND] = psw, base, bound
            for name, value in _CR_SETS[ci].items():
                _set_component(st, name, value)
            if psw & PSW_IE:
                st[S.PENDING] = 0  # an interrupt would be taken before the instruction
            mem = (np.arange(VMEM, dtype=np.int64) * 7 + 3).astype(np.uint8)
            mem[base + PC0 : base + PC0 + 4] = np.frombuffer(word.to_bytes(4, "little"), np.uint8)
            out.append(Snap(st, mem, inp))
    return out


@dataclass(frozen=True)
class Outcome:
    """What one instruction did: how it ended, the registers, memory and console, every component after."""

    kind: str  # retire, trap, halt or idle
    trap: tuple[int, int]
    regs: tuple[int, ...]
    pc: int
    mem: bytes
    console: tuple[bytes, int]  # bytes written, bytes consumed
    after: tuple[int, ...]  # each of COMPONENTS[:-1] after the instruction
    tick: tuple[int, ...]  # each of COMPONENTS[:-1] after a plain retirement (pc, cycle and timer move on)
    io: bool = False  # the core left for the host to perform port I/O


_CR_INDEX = {name: i for i, name in enumerate(COMPONENTS[:-1])}
RETIRE_WRITES = ("cycle", "timer", "pending")  # what every retirement moves on (ISA section 4, Time)


def execute(snap: Snap) -> Outcome:
    """Run one step of the reference core on a copy of ``snap``; perform port I/O on a model console."""
    s = snap.copy()
    st, before = s.st, snap.st
    console = Console(s.inp)
    code = reference.step(reference.Cpu(st, s.mem))
    if code == S.EXIT_IO:
        port = int(st[S.IO_PORT])
        if st[S.IO_WRITE]:
            if port == spec.CONSOLE_PORT:
                console.write(int(st[S.IO_VALUE]))
            S.complete_io(st)
        else:
            S.complete_io(st, console.read() if port == spec.CONSOLE_PORT else 0xFFFFFFFF)
    if code == S.EXIT_HALT:
        kind = "halt"
    elif code == S.EXIT_IDLE:
        kind = "idle"
    elif st[S.CYCLE] == before[S.CYCLE]:
        kind = "trap"
    else:
        kind = "retire"
    trap = (int(st[S.CAUSE]), int(st[S.BADADDR])) if kind == "trap" else (0, 0)
    tick = before.copy()
    tick[S.CYCLE] += 1
    if tick[S.TIMER]:
        tick[S.TIMER] -= 1
        if tick[S.TIMER] == 0:
            tick[S.PENDING] |= S.PEND_TIMER
    names = COMPONENTS[:-1]
    return Outcome(
        kind,
        trap,
        tuple(int(x) for x in st[S.R0 : S.R0 + 16]),
        int(st[S.PC]),
        s.mem[s.shift : s.shift + VMEM].tobytes(),
        (bytes(console.output), len(snap.inp) - len(console.input)),
        tuple(component(st, n) for n in names) if kind != "trap" else (),
        tuple(component(tick, n) for n in names) if kind != "trap" else (),
        code == S.EXIT_IO,
    )


def differences(o1: Outcome, o2: Outcome, varied: Iterable[str] = ()) -> set[str]:
    """The aspects in which two outcomes differ (``varied`` components are compared by their new values)."""
    if o1.kind != o2.kind:
        return {k for k in (o1.kind, o2.kind) if k != "retire"}
    if o1.kind == "trap":
        return {"trap"} if o1.trap != o2.trap else set()
    out = set()
    if o1.regs != o2.regs:
        out.add("regs")
    if o1.pc != o2.pc:
        out.add("pc")
    if o1.mem != o2.mem:
        out.add("mem")
    if o1.console != o2.console:
        out.add("console")
    varied = set(varied)
    for name, i in _CR_INDEX.items():
        a1, t1, a2, t2 = o1.after[i], o1.tick[i], o2.after[i], o2.tick[i]
        if name in varied:  # the pair differs here: compare what the instruction made of it
            same = a1 == a2 or (a1 == t1 and a2 == t2) or a1 - t1 == a2 - t2
        else:
            same = (a1 if a1 != t1 else None) == (a2 if a2 != t2 else None)
        if not same:
            out.add(name)
    return out


def writes(o: Outcome) -> set[str]:
    """The components an instruction changed beyond a plain retirement."""
    if o.kind == "trap":
        return set()
    out = {n for n, i in _CR_INDEX.items() if o.after[i] != o.tick[i]}
    if o.console != (b"", 0):
        out.add("console")
    return out


def _pairs(snap: Snap) -> list[tuple[str, Snap]]:
    """The states paired with ``snap``: each differs from it in one component (or in R, memory shifted)."""
    out = []
    st = snap.st
    base, bound = int(st[S.BASE]), int(st[S.BOUND])
    # Location: the same machine SHIFT bytes further into a larger memory (what a monitor's offset does) ...
    shifted = Snap(st.copy(), np.concatenate([np.full(SHIFT, 0xAA, np.uint8), snap.mem]), snap.inp, SHIFT)
    shifted.st[S.BASE] = base + SHIFT
    out.append(("base", shifted))
    # ... and a bound cut down to the end of memory, which leaves the same window (what composing R does).
    if bound > VMEM - base:
        clipped = snap.copy()
        clipped.st[S.BOUND] = VMEM - base
        out.append(("bound", clipped))
    for name in CR_COMPONENTS:
        other = snap.copy()
        _set_component(other.st, name, _ALTERNATIVES[name])
        out.append((name, other))
    other = snap.copy()
    other.st[S.TIMER] = 0 if st[S.TIMER] else 3
    out.append(("timer", other))
    if not st[S.PSW] & PSW_IE:
        other = snap.copy()
        other.st[S.PENDING] ^= S.PEND_TIMER
        out.append(("pending", other))
    if not st[S.PENDING]:
        other = snap.copy()
        other.st[S.PSW] ^= PSW_IE
        out.append(("IE", other))
    other = snap.copy()
    other.inp = b"" if snap.inp else b"Q"
    out.append(("console", other))
    return out


@dataclass
class Facts:
    """What executing one form with one user-mode behaviour revealed, with an example state for each fact."""

    form: Form
    behaviour: int  # its user-mode behaviour in these facts
    priv_traps: bool  # raises PRIV in every user-mode state and in no supervisor-mode state
    reads: dict[tuple[str, str], tuple[Snap, Snap, set[str]]] = field(default_factory=dict)  # (mode, comp)
    writes: dict[tuple[str, str], Snap] = field(default_factory=dict)  # (mode, comp) -> a state it changes it in
    mode: dict[str, Snap] = field(default_factory=dict)  # aspect -> supervisor state whose outcome differs in user
    io: bool = False  # leaves the core for the host to perform port I/O (in user mode)
    ends: bool = False  # halts or idles in some supervisor-mode state

    def read_set(self, mode: str) -> set[str]:
        """Components whose value changed the outcome, in states of ``mode`` (sup or user)."""
        return {c for m, c in self.reads if m == mode}

    def write_set(self, mode: str) -> set[str]:
        """Components it changed, in states of ``mode``."""
        return {c for m, c in self.writes if m == mode}


@functools.cache
def facts(name: str, behaviour: int) -> Facts:
    """Execute form ``name`` (user-mode ``behaviour``) on every state and pair; cached per form and behaviour."""
    form = FORM_BY_NAME[name]
    f = Facts(form, behaviour, priv_traps=form.key is not None)
    for snap in _states(form.word, behaviour, form.key):
        mode = "user" if snap.user else "sup"
        o = execute(snap)
        if behaviour == TRAP:
            privileged = o.kind == "trap" and o.trap[0] == spec.PRIV
            f.priv_traps &= privileged == (mode == "user")
            continue  # what a privileged form would do if it ran: the facts of its 'execute' behaviour
        for c in writes(o):
            f.writes.setdefault((mode, c), snap)
        f.io |= mode == "user" and o.io
        f.ends |= mode == "sup" and o.kind in ("halt", "idle")
        for c, other in _pairs(snap):
            varied = ("base", "bound") if c in ("base", "bound") else (c,)
            d = differences(o, execute(other), varied)
            if d:
                f.reads.setdefault((mode, c), (snap, other, d))
        if mode == "sup":
            user = snap.copy()
            user.st[S.PSW] &= ~PSW_S
            for aspect in differences(o, execute(user), ("M",)):
                f.mode.setdefault(aspect, snap)
    return f


# --- how the monitors place a guest on the real processor -----------------------------------------------


@functools.cache
def monitor_map() -> dict[str, set[str]]:
    """Read ``VM.load_real_state`` itself: what the real CPU holds of each component while a guest runs.

    ``mirrored``: always the guest's value (IE).  ``mapped``: recomputed from the guest's value at every entry
    (the mode, R composed with the VM's slice, the timer zeroed); ``always`` are those of them that never
    equal the guest's value.  ``own``: the real CPU keeps its own value, whatever the guest's (the trap
    registers, ivt, scratch, cycle; and the devices, since untrapped I/O reaches the host's ports).
    """
    from popek.vmm.host import MONITOR_RESERVED
    from popek.vmm.vm import VM

    memsize = 0x1000
    vm = VM("probe", np.zeros(MONITOR_RESERVED + memsize, np.uint8), MONITOR_RESERVED, memsize)
    names = COMPONENTS[:-1]
    equal = {n: True for n in names}  # equal to the guest's value in every trial
    kept = {n: True for n in names}  # left as the real CPU had it in every trial
    never = {n: True for n in names}  # equal to the guest's value in no trial
    trial = 0
    for psw in _PSWS:
        for base, bound in ((0, memsize), (0x100, M32), (0x200, 0x100)):
            for timer, pending in ((0, 0), (5, 0), (0, 1)):
                trial += 1
                v, r = vm.vstate, vm.rstate
                for i, n in enumerate(names):
                    _set_component(r, n, 0xA000 + 16 * i + trial)
                    _set_component(v, n, 0x5000 + 16 * i + trial)
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


def _semantics(profile: Profile, form: Form) -> Facts:
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
        f = _semantics(self.profile, form)
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
        _set_component(st, n, 0x300 + 4 * i)

    def take(state: np.ndarray) -> np.ndarray:
        s = state.copy()
        reference.step(reference.Cpu(s, mem.copy()))
        return s

    after = take(st)
    overwrites = {n for n in names if component(after, n) != component(st, n)}
    copies = set()
    for n in names:
        other = st.copy()
        _set_component(other, n, component(st, n) ^ (PSW_IE if n == "IE" else PSW_S if n == "M" else 0x40))
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


# --- classification and verdicts ------------------------------------------------------------------------


@dataclass
class Row:
    """The classification of one form on one profile."""

    form: Form
    behaviour: str  # its user-mode behaviour: trap, execute or ignore
    privileged: bool
    reasons1: list[tuple[str, str]]  # why it is sensitive (trap-and-emulate's control state)
    reasons3: list[tuple[str, str]]  # why it is user-sensitive (the hybrid monitor's)

    @property
    def control_sensitive(self) -> bool:
        """It can change control state without trapping."""
        return any(k == "writes" for k, _ in self.reasons1)

    @property
    def behavior_sensitive(self) -> bool:
        """Its outcome depends on the mode, on R, or on control state the real processor does not hold."""
        return any(k in ("mode", "reads") for k, _ in self.reasons1)

    @property
    def sensitive(self) -> bool:
        """Control- or behaviour-sensitive."""
        return bool(self.reasons1)

    @property
    def user_sensitive(self) -> bool:
        """Sensitive in some user-mode state, comparing user-mode states only."""
        return bool(self.reasons3)

    @property
    def klass(self) -> str:
        """Its class in words: privileged or not; control-, behaviour-sensitive, both, or innocuous."""
        kinds = [k for k, on in (("control", self.control_sensitive), ("behaviour", self.behavior_sensitive)) if on]
        words = "+".join(kinds) + "-sensitive" if kinds else "innocuous"
        return f"privileged, {words}" if self.privileged else words

    def detail(self) -> str:
        """Why: mode, location, reads X, writes X; what differs in user mode, when that differs."""
        why, user = _describe(self.reasons1), _describe(self.reasons3)
        return why + (f" | in user mode: {user or 'nothing'}" if user != why else "")


def reason_text(reason: tuple[str, str]) -> str:
    """One reason in words."""
    kind, c = reason
    if kind == "mode":
        return f"mode-sensitive: {_MODE_WORDS.get(c, c)}"
    if kind == "reads":
        return "location-sensitive" if c in ("base", "bound") else f"reads {c}"
    return f"control-sensitive: writes {c}"


_MODE_WORDS = {"regs": "its result", "console": "the console", "halt": "halting", "idle": "waiting", "pc": "jumping",
               "trap": "trapping", "mem": "memory", "M": "the psw", "IE": "the psw"}  # fmt: skip


def _describe(reasons: list[tuple[str, str]]) -> str:
    parts = []
    if any(k == "mode" for k, _ in reasons):
        parts.append("mode")
    reads = [c for k, c in reasons if k == "reads"]
    if any(c in ("base", "bound") for c in reads):
        parts.append("location")
    reads = [c for c in reads if c not in ("base", "bound")]
    if reads:
        parts.append("reads " + ",".join(reads))
    written = [c for k, c in reasons if k == "writes"]
    if written:
        parts.append("writes " + ",".join(written))
    return "; ".join(parts)


@dataclass
class Witness:
    """A program that shows one violation: its source, and what the bare machine and the monitor made of it."""

    instruction: str
    theorem: int
    reason: tuple[str, str]
    program: str
    image: bytes
    input: bytes
    bare: RunSummary | None = None
    virtualized: RunSummary | None = None
    isolated: bool | None = None  # with the instruction replaced by a nop the two runs agree

    @property
    def monitor(self) -> str:
        """The monitor of its theorem."""
        return "trap" if self.theorem == 1 else "hybrid"

    @property
    def diverges(self) -> bool:
        """True when the bare and the monitored run differ."""
        return self.bare is not None and self.virtualized is not None and self.bare.key() != self.virtualized.key()


@dataclass
class Report:
    """The checker's answer for one profile."""

    profile: Profile
    rows: list[Row]
    witnesses: list[Witness] = field(default_factory=list)

    @property
    def theorem1(self) -> bool:
        """A trap-and-emulate monitor is exact: every sensitive form is privileged."""
        return all(r.privileged or not r.sensitive for r in self.rows)

    @property
    def theorem3(self) -> bool:
        """A hybrid monitor is exact: every user-sensitive form is privileged."""
        return all(r.privileged or not r.user_sensitive for r in self.rows)

    def violations(self, theorem: int) -> list[Row]:
        """The forms that break ``theorem``."""
        if theorem == 1:
            return [r for r in self.rows if r.sensitive and not r.privileged]
        return [r for r in self.rows if r.user_sensitive and not r.privileged]

    def to_json(self) -> dict:
        """The object printed by ``popek check --json``."""
        return {
            "profile": self.profile.name,
            "theorem1": self.theorem1,
            "theorem3": self.theorem3,
            "instructions": [
                {"name": r.form.name, "user_mode": r.behaviour, "class": r.klass, "privileged": r.privileged,
                 "control_sensitive": r.control_sensitive, "behavior_sensitive": r.behavior_sensitive,
                 "user_sensitive": r.user_sensitive, "reasons": _describe(r.reasons1),
                 "user_reasons": _describe(r.reasons3)}
                for r in self.rows
            ],
            "witnesses": [
                {"instruction": w.instruction, "theorem": w.theorem, "monitor": w.monitor,
                 "reason": reason_text(w.reason), "program": w.program, "input": w.input.decode("latin-1"),
                 "bare": w.bare.describe() if w.bare else "", "virtualized": w.virtualized.describe() if w.virtualized
                 else "", "diverges": w.diverges, "isolated": w.isolated}
                for w in self.witnesses
            ],
        }  # fmt: skip


def classify(profile: str | Profile | None = None) -> Report:
    """Classify every instruction form of ``profile`` and decide both theorems (no witnesses yet)."""
    prof = load_profile(profile)
    m1, m3 = model(prof, 1), model(prof, 3)
    rows = []
    for form in FORMS:
        b = behaviour_of(prof, form)
        rows.append(Row(form, spec.BEHAVIOUR_NAMES[b], is_privileged(prof, form), m1.reasons(form), m3.reasons(form)))
    return Report(prof, rows)


# --- witness programs -----------------------------------------------------------------------------------

WMEM = 0x1000  # memory of a witness machine
WSTEPS = 3_000  # step limit of a witness run (they need a few hundred)
PROBE_BOUND = 0x800  # a bound above every witness's code: a load there shows whether R was cut down
NOP = encode(spec.BY_MNEMONIC["addi"], 0, 0, 0, 0)
DEAD_PORT = 0x7F  # a port with no device: I/O on it shows nothing, on the bare machine and under a monitor
# Markers a witness leaves in r12: how execution went on after the instruction under test.
MARKERS = {1: "went on after it", 2: "jumped to the landing point", 3: "trapped", 4: "returned to the fault point",
           5: "trapped through the new vector"}  # fmt: skip


class _Program:
    """A witness under construction: every line is kept as assembly text and as its encoding."""

    def __init__(self) -> None:
        self.items: list[tuple] = []

    def comment(self, text: str) -> None:
        self.items.append(("comment", text))

    def label(self, name: str) -> None:
        self.items.append(("label", name))

    def ins(self, m: str, a: int = 0, b: int = 0, c: int = 0, imm: int | str = 0, note: str = "") -> None:
        self.items.append(("ins", m, a, b, c, imm, note))

    def raw(self, word: int, note: str = "") -> None:
        """Emit ``word`` as it stands (written as the disassembler spells it)."""
        self.items.append(("raw", word, note))

    def li(self, rd: int, value: int | str, note: str = "") -> None:
        if isinstance(value, int) and -0x8000 <= value < 0x8000:
            self.ins("addi", rd, 0, 0, value & 0xFFFF, note)
        else:
            self.items.append(("li", rd, value, note))

    def word(self, value: int) -> None:
        self.items.append(("word", value))

    def asciz(self, text: str) -> None:
        self.items.append(("asciz", text))

    def align(self) -> None:
        self.items.append(("align",))

    def form(self, form: Form, a: int | None = None, imm: int | None = None, note: str = "") -> None:
        """Emit ``form`` itself, or with its register field ``a`` / immediate replaced (a tool, not the subject)."""
        d = spec.decode(form.word)
        a = d.a if a is None else a
        imm = d.imm if imm is None else imm
        self.ins(form.insn.mnemonic, a, d.b, d.c, imm, note)

    def build(self) -> tuple[str, bytes]:
        """Resolve labels; return the source text and the image."""
        addr, labels, sizes = 0, {}, []
        for it in self.items:
            if it[0] == "label":
                labels[it[1]] = addr
            n = {"ins": 4, "raw": 4, "word": 4, "li": 8}.get(it[0], 0)
            if it[0] == "asciz":
                n = len(it[1]) + 1
            elif it[0] == "align":
                n = -addr % 4
            sizes.append(n)
            addr += n
        data, lines, addr = bytearray(), [], 0
        words = _Words(data)
        for it, n in zip(self.items, sizes, strict=True):
            kind = it[0]
            if kind == "comment":
                lines.append(f"# {it[1]}" if it[1] else "")
            elif kind == "label":
                lines.append(f"{it[1]}:")
            elif kind == "asciz":
                data.extend(it[1].encode() + b"\0")
                lines.append(f'        .asciz  "{it[1]}"')
            elif kind == "align":
                data.extend(bytes(n))
                lines.append("        .align  4")
            elif kind == "word":
                words.append(it[1] & M32)
                lines.append(f"        .word   {it[1]:#x}")
            elif kind == "raw":
                words.append(it[1])
                lines.append(_line(_text(it[1], addr), it[2]))
            elif kind == "li":
                _, rd, value, note = it
                v = labels[value] if isinstance(value, str) else value & M32
                hi, lo = (
                    (f"%hi({value})", f"%lo({value})")
                    if isinstance(value, str)
                    else (f"{v >> 16:#x}", f"{v & 0xFFFF:#x}")
                )
                words.append(encode(spec.BY_MNEMONIC["lui"], rd, 0, 0, v >> 16))
                words.append(encode(spec.BY_MNEMONIC["ori"], rd, rd, 0, v & 0xFFFF))
                lines.append(_line(f"lui     r{rd}, {hi}", note))
                lines.append(_line(f"ori     r{rd}, r{rd}, {lo}", ""))
            else:
                _, m, a, b, c, imm, note = it
                insn = spec.BY_MNEMONIC[m]
                value = imm
                if isinstance(imm, str):
                    value = labels[imm]
                    if insn.klass == spec.BRANCH and m != "jalr":
                        value = (value - addr) // 4
                word = encode(insn, a, b, c, value)
                words.append(word)
                lines.append(_line(_text(word, addr, imm if isinstance(imm, str) else None), note))
            addr += n
        return "\n".join(lines) + "\n", bytes(data)


class _Words:
    """Appends 32-bit words to a byte buffer, little-endian."""

    def __init__(self, data: bytearray) -> None:
        self.data = data

    def append(self, word: int) -> None:
        self.data.extend(word.to_bytes(4, "little"))


def _line(text: str, note: str) -> str:
    text = f"        {text}"
    return f"{text:<40}# {note}" if note else text


def _text(word: int, addr: int, label: str | None = None) -> str:
    """The instruction ``word`` at ``addr`` as the disassembler spells it, the mnemonic padded to a column.

    With ``label``, the label stands for the last operand's value: a branch or jump target, or a displacement.
    """
    m, _, ops = disassemble_word(word, addr).partition(" ")
    if label is not None:
        head, sep, last = ops.rpartition(", ")
        base = last[last.index("(") :] if "(" in last else ""  # a displacement keeps its base register
        ops = f"{head}{sep}{label}{base}"
    return f"{m:<7} {ops}".rstrip()


def _emit_test(p: _Program, regs: dict, form: Form, control: bool, where: str) -> None:
    """Load the registers, then the instruction under test (or a nop for the control run), then marker 1."""
    for r in sorted(regs):
        p.li(r, regs[r])
    p.label("test")
    if control:
        p.raw(NOP, "control run: the instruction replaced by a nop")
    else:
        p.raw(form.word, f"<-- the instruction under test{where}")
    p.ins("addi", 12, 0, 0, 1)


def _emit_hex_routine(p: _Program) -> None:
    """``hex8``: print r4 as eight hex digits and a space on the console (uses r4-r7, returns through r15)."""
    p.label("hex8")
    p.ins("addi", 5, 0, 0, 8)
    p.label("hex8_digit")
    p.ins("shri", 6, 4, 0, 28)
    p.ins("sltiu", 7, 6, 0, 10)
    p.ins("addi", 6, 6, 0, ord("0"))
    p.ins("bne", 7, 0, 0, "hex8_out")
    p.ins("addi", 6, 6, 0, ord("a") - ord("0") - 10)
    p.label("hex8_out")
    p.ins("out", 6, 0, 0, spec.CONSOLE_PORT)
    p.ins("shli", 4, 4, 0, 4)
    p.ins("addi", 5, 5, 0, -1 & 0xFFFF)
    p.ins("bne", 5, 0, 0, "hex8_digit")
    p.ins("addi", 6, 0, 0, ord(" "))
    p.ins("out", 6, 0, 0, spec.CONSOLE_PORT)
    p.ins("jalr", 0, 15, 0, 0)


def _emit_report(p: _Program, items: list[tuple[str, int]]) -> None:
    """Print ``name=value`` for each (name, register) and a newline (registers other than r4-r7 and r15)."""
    for name, reg in items:
        p.li(4, f"s_{name}")
        p.ins("jal", 15, 0, 0, "puts")
        p.ins("add", 4, reg, 0)
        p.ins("jal", 15, 0, 0, "hex8")
    p.ins("addi", 6, 0, 0, ord("\n"))
    p.ins("out", 6, 0, 0, spec.CONSOLE_PORT)


def _emit_strings(p: _Program, items: list[tuple[str, int]]) -> None:
    """The routine ``puts`` (print the string at r4) and the names ``_emit_report`` prints."""
    p.label("puts")
    p.ins("ldbu", 6, 4, 0, 0)
    p.ins("beq", 6, 0, 0, "puts_end")
    p.ins("out", 6, 0, 0, spec.CONSOLE_PORT)
    p.ins("addi", 4, 4, 0, 1)
    p.ins("jal", 0, 0, 0, "puts")
    p.label("puts_end")
    p.ins("jalr", 0, 15, 0, 0)
    for name, _ in items:
        p.label(f"s_{name}")
        p.asciz(f"{name}=")
    p.align()


def _value(c: str, several: bool) -> int | str:
    """A value for component ``c`` that a witness gives the guest (distinct from the real processor's zero)."""
    if c == "ebase":
        return 0 if several else 0x40  # iret needs a sane window; a read alone needs something non-zero
    return {"epc": "landing", "epsw": 1, "cause": 3, "badaddr": 0x99, "ivt": "ivt_pad", "ebound": WMEM,
            "scratch": 0x5C, "bound": M32, "timer": 1000, "cycle": 0}[c]  # fmt: skip


_TRAP_REGS = {"epc", "epsw", "ebase", "ebound"}
_MODE_STORIES = {
    "regs": "what it leaves in r1 depends on the mode",
    "console": "what it does to the console depends on the mode",
    "halt": "in supervisor mode it halts the machine; in user mode it goes on",
    "idle": "in supervisor mode it waits for an interrupt; in user mode it goes on",
    "pc": "in supervisor mode it jumps; in user mode it goes on",
    "M": "in supervisor mode it changes the mode; in user mode it does not",
    "IE": "in supervisor mode it changes the mode and IE; in user mode it does not",
}


def _read_story(c: str, where: str) -> str:
    if c == "base":
        return f"{where}it reads the relocation base, which under a monitor includes the monitor's offset"
    if c == "bound":
        return f"{where}it reads the bound, which a monitor cuts down to the end of the guest's memory"
    if c == "console":
        return f"{where}it reads the console, and on the real processor that is the host's port"
    return f"{where}it depends on {c}, which the real processor does not hold in the guest's value"


def _write_story(c: str, where: str) -> str:
    what = {"M": "the mode", "IE": "the psw", "console": "the console"}.get(c, c)
    return f"{where}it changes {what} on the real processor, and the virtual machine never sees it"


def _exit_tool(p: _Program, m: Model, note: str) -> None:
    """Emit an instruction that makes the monitor leave the real processor without a trap into the guest."""
    name = m.probe or m.io_exit
    form = FORM_BY_NAME[name]
    if form.insn.mnemonic in ("in", "out"):
        p.form(form, a=10, imm=DEAD_PORT, note=note + " (a port with no device)")
    else:
        p.form(form, a=10, note=note)


def _registers(snap: Snap | None) -> dict[int, int | str]:
    regs: dict[int, int | str] = {1: 0x5A5, 2: 0x80, 3: 5, 11: 0}
    if snap is not None:
        regs[2], regs[3] = int(snap.st[2]), int(snap.st[3])
    return regs


def _program_t1(m: Model, form: Form, reason: tuple[str, str], control: bool) -> tuple[str, bytes, bytes]:
    """A supervisor-mode witness for Theorem 1: the guest kernel itself runs the instruction."""
    kind, c = reason
    prof, f = m.profile, _semantics(m.profile, form)
    several = len(f.read_set("sup") & _TRAP_REGS) > 1
    inp, fault = b"", False
    pre: list[tuple] = []  # set-up, before the planned fault if there is one
    observe: list[tuple] = []  # right after the instruction
    after_trap: list[tuple] = []  # on the trap path
    story = ""

    def beh(name: str) -> int:
        return behaviour_of(prof, FORM_BY_NAME[name])

    if kind == "mode":
        snap = f.writes.get(("sup", "M")) if c in ("M", "IE") else f.mode[c]
        regs = _registers(snap)
        story = _MODE_STORIES.get(c, f"in supervisor mode it changes {c}; in user mode it does not")
        if f.read_set("sup") & _TRAP_REGS:
            fault = True
        if c in ("M", "IE"):
            regs[2] = 0
            observe.append(("probe",))
        elif c in ("timer", "pending"):
            observe.append(("syscall",))
            after_trap.append(("read", "mfcr.timer"))
        elif c in CR_COMPONENTS:
            observe.append(("read", f"mfcr.{c}"))
        elif c in ("base", "bound"):
            regs[2] = PROBE_BOUND  # moves the bare machine's window off the code / cuts it below the probe
            observe.append(("load",))
        if c == "console" or "console" in f.read_set("sup"):
            inp = b"Q"
            regs[2] = ord("!")
    elif kind == "reads":
        regs = _registers(f.reads[("user", c)][0])
        setter = m.setters[c]
        story = _read_story(c, "")
        if c == "console":
            inp = b"Q"
        elif setter.kind == "fault" or (c in _TRAP_REGS and several):
            fault = True
        elif setter.kind == "copy":
            pre.append(("set", setter.form, _value(c, several)))
            if beh(setter.form) == EXECUTE:  # it reached the real CPU: the next entry recomputes it
                if c == "bound":
                    pre.append(("exit",))
                else:
                    fault = True
        elif setter.kind == "expire":
            pre += [("set", setter.form, 1), ("nop",)]
            if beh(setter.form) == EXECUTE:
                fault = True
        elif setter.kind == "retire":
            pre.append(("exit",))
        elif setter.kind == "skip":
            pre += [("set", "mtcr.timer", 50), ("wfi",)]
    else:  # writes
        snap = f.writes.get(("user", c))
        regs = _registers(snap)
        obs = m.observers[c]
        story = _write_story(c, "")
        if c == "console":
            regs[2], inp = ord("!"), b"Q"
        elif c == "base":
            regs[2] = 0
        elif c == "bound":
            regs[2] = PROBE_BOUND
        elif c in ("timer", "pending"):
            regs[2] = 1000
        elif c in ("M", "IE"):
            regs[2] = 0
        elif obs.kind == "vector":
            regs[2] = "ivt_pad"
        elif obs.kind == "iret":
            regs[2] = {"epc": "landing", "epsw": 0, "ebase": 0xFFFFFFFC, "ebound": 0}[c]
        else:
            regs[2] = 0x5C0
        if obs.kind == "after-trap":
            observe.append(("syscall",))
            after_trap.append(("read", obs.form))
        elif obs.kind == "exit-probe":
            observe += [("exit",), ("load",)]
        elif obs.kind == "probe":
            observe.append(("probe",))
        elif obs.kind == "copy":
            observe.append(("read", obs.form))
        elif obs.kind == "vector":
            observe.append(("syscall",))
        elif obs.kind == "iret":
            fault = True
            observe.append(("iret",))

    p = _Program()
    p.comment(f"Witness for Theorem 1 (trap-and-emulate): '{form.text}' is sensitive but not privileged.")
    p.comment(f"Here the guest kernel runs it, which under the monitor means real user mode: {story}.")
    p.comment("r12 says how execution went on: " + ", ".join(f"{k} {v}" for k, v in MARKERS.items()) + ".")
    p.comment("Every entry at address 0 (reset, and each trap: ivt stays 0) is counted in r13.")
    _count_entries(p, "first entry: reset")
    if fault:
        p.ins("addi", 10, 0, 0, 2)
        p.ins("beq", 13, 10, 0, "stage2", "second entry: the planned fault")
    p.ins("jal", 0, 0, 0, "trapped")
    p.label("start")
    for step in pre:
        _emit_step(p, m, step)
    if fault:
        p.ins("lui", 6, 0, 0, 0xFFFF)
        p.label("fault")
        p.ins("ld", 5, 6, 0, 0, "faults: the trap sets epc, epsw, cause, badaddr, ebase, ebound")
        p.ins("jal", 0, 0, 0, "resumed", "reached only by an iret back to 'fault'")
        p.label("stage2")
        p.ins("addi", 6, 0, 0, 0, "a retry of 'fault' now succeeds")
    _emit_test(p, regs, form, control, "")
    for step in observe:
        _emit_step(p, m, step)
    p.ins("jal", 0, 0, 0, "done")
    used = {v for v in regs.values() if isinstance(v, str)} | {st[2] for st in pre if st[0] == "set"}
    for name, marker in (("landing", 2), ("resumed", 4), ("ivt_pad", 5)):
        if name not in used and not (name == "resumed" and fault):
            continue
        p.label(name)
        p.ins("addi", 12, 0, 0, marker)
        if name == "resumed" and kind == "writes" and c == "epsw":
            _emit_step(p, m, ("probe",))  # the iret went back in the mode epsw said
        p.ins("jal", 0, 0, 0, "done")
    p.label("trapped")
    p.ins("addi", 12, 0, 0, 3)
    for step in after_trap:
        _emit_step(p, m, step)
    p.label("done")
    p.ins("add", 9, 1, 0, note="r9: what the instruction left in r1")
    printing = beh("out") == TRAP  # only then does the monitor perform the guest kernel's output
    report = [("m", 12), ("r1", 9), ("x", 11), ("n", 13)]
    if printing:
        _emit_report(p, report)
    p.ins("add", 1, 12, 0, note="exit status: the marker")
    if beh("halt") == IGNORE:
        p.label("spin")
        p.ins("jal", 0, 0, 0, "spin", "halt is ignored in user mode: end in a loop (compare at the step limit)")
    else:
        p.ins("halt")
    if printing:
        _emit_hex_routine(p)
        _emit_strings(p, report)
    p.label("visits")
    p.word(0)
    text, image = p.build()
    return text, image, inp


def _count_entries(p: _Program, note: str) -> None:
    """The witnesses' entry at address 0 (reset, and every trap: ivt stays 0): count it in r13 and in
    ``visits``; go on at ``start`` on the first, fall through on the others."""
    p.label("entry")
    p.ins("ld", 13, 0, 0, "visits")
    p.ins("addi", 13, 13, 0, 1)
    p.ins("st", 13, 0, 0, "visits")
    p.ins("addi", 10, 0, 0, 1)
    p.ins("beq", 13, 10, 0, "start", note)


def _emit_step(p: _Program, m: Model, step: tuple) -> None:
    kind = step[0]
    if kind == "set":
        _, name, value = step
        p.li(10, value)
        p.form(FORM_BY_NAME[name], a=10, note=f"{name.split('.')[1]} = r10")
    elif kind == "nop":
        p.ins("addi", 0, 0, 0, 0, "one instruction retires")
    elif kind == "exit":
        _exit_tool(p, m, "the monitor leaves the real processor here")
    elif kind == "probe":
        p.form(FORM_BY_NAME[m.probe], a=10, note="privileged: traps if the mode became user")
    elif kind == "read":
        p.form(FORM_BY_NAME[step[1]], a=11, note="r11: what the guest sees now")
    elif kind == "syscall":
        p.ins("syscall", imm=0, note="a trap into the guest kernel")
    elif kind == "load":
        p.ins("ld", 11, 0, 0, PROBE_BOUND, "faults if the bound was cut down")
    elif kind == "iret":
        p.ins("iret", note="emulated: returns through the trap registers")
    elif kind == "wfi":
        p.ins("wfi", note="the bare machine skips ahead to the timer")


def _program_t3(m: Model, form: Form, reason: tuple[str, str], control: bool) -> tuple[str, bytes, bytes]:
    """A user-mode witness for Theorem 3: the kernel (interpreted by the monitor) sets up, user code runs it."""
    kind, c = reason
    f = _semantics(m.profile, form)
    several = len(f.read_set("user") & _TRAP_REGS) > 1
    inp = b""
    setup: list[tuple[str, int | str]] = []  # (cr name, value) written by the kernel before user mode
    observed: str | None = None  # the control register the kernel reads back afterwards
    if kind == "reads":
        regs = _registers(f.reads[("user", c)][0])
        story = _read_story(c, "in user mode ")
        if c == "console":
            inp = b"Q"
        elif c in _TRAP_REGS and several:
            setup = [("epc", "landing"), ("epsw", 0), ("ebase", 0), ("ebound", WMEM)]
        elif c == "pending":
            setup = [("timer", 1)]  # expires as the kernel's last instruction retires
        elif m.setters[c].kind == "kernel":
            setup = [(c, _value(c, several))]
    else:
        regs = _registers(f.writes.get(("user", c)))
        story = _write_story(c, "in user mode ")
        regs[2] = {"console": ord("!"), "base": 0, "bound": PROBE_BOUND, "timer": 1000, "pending": 1000,
                   "M": PSW_S | PSW_IE, "IE": PSW_S | PSW_IE, "ivt": "ivt_pad"}.get(c, 0x5C0)  # fmt: skip
        if c == "console":
            inp = b"Q"
        observed = {"bound": "ebound", "timer": "timer", "pending": "timer"}.get(c, c if c in CR_NAMES else None)
        if observed in ("psw", "base"):
            observed = None  # shown by epsw and by the cause of the trap, printed anyway
    p = _Program()
    p.comment(f"Witness for Theorem 3 (hybrid): '{form.text}' is user-sensitive but not privileged.")
    p.comment(f"The kernel (interpreted by the monitor) enters user mode, which runs directly: {story}.")
    p.comment("r12 says how the user code went on: " + ", ".join(f"{k} {v}" for k, v in MARKERS.items() if k != 3)
              + "; 0 if it never got that far.")  # fmt: skip
    _count_entries(p, "first entry: reset; later ones are traps (ivt stays 0)")
    p.ins("jal", 0, 0, 0, "kernel")
    p.label("start")
    for name, value in setup:
        p.li(10, value)
        p.ins("mtcr", 10, 0, 0, CR_NUMBER[name], f"{name} = r10")
    p.ins("mtcr", 0, 0, 0, CR_NUMBER["psw"], "user mode from the next instruction on (R unchanged)")
    _emit_test(p, regs, form, control, ", in user mode")
    p.ins("syscall", imm=0, note="back to the kernel")
    used = {v for v in regs.values() if isinstance(v, str)} | {v for _, v in setup}
    for name, marker in (("landing", 2), ("ivt_pad", 5)):
        if name in used:
            p.label(name)
            p.ins("addi", 12, 0, 0, marker)
            p.ins("syscall", imm=0) if name == "landing" else p.ins("jal", 0, 0, 0, "kernel")
    p.label("kernel")
    p.ins("add", 9, 1, 0, note="r9: what the instruction left in r1")
    p.ins("mfcr", 8, 0, 0, CR_NUMBER["cause"])
    p.ins("mfcr", 10, 0, 0, CR_NUMBER["epsw"])
    items = [("m", 12), ("r1", 9), ("cause", 8), ("epsw", 10)]
    if observed:
        p.ins("mfcr", 11, 0, 0, CR_NUMBER[observed], f"r11: {observed} as the kernel sees it")
        items.append((observed, 11))
    _emit_report(p, items)
    p.ins("add", 1, 12, 0, note="exit status: the marker")
    p.ins("halt")
    _emit_hex_routine(p)
    _emit_strings(p, items)
    p.label("visits")
    p.word(0)
    text, image = p.build()
    return text, image, inp


# --- running witnesses ----------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What a witness run showed: how it ended, its console and registers."""

    exit: str
    status: int
    console: str
    regs: list[int]

    def key(self) -> tuple:
        """Everything a guest can show, for comparing two runs."""
        return (self.exit, self.status if self.exit == "halt" else 0, self.console, tuple(self.regs))

    def describe(self) -> str:
        """One line: exit, marker, the interesting registers, the console."""
        end = f"halt {self.status}" if self.exit == "halt" else self.exit
        r = self.regs
        marker = MARKERS.get(r[12], "never reached it" if r[12] == 0 else f"r12={r[12]}")
        text = f"{end}; {marker}; r1={r[9]:#x} x={r[11]:#x} entries={r[13]}"
        return text + (f"; console {self.console!r}" if self.console else "")


def run_witness_program(
    image: bytes, profile: Profile, monitor: str, inp: bytes, core: str = "reference"
) -> RunSummary:
    """Run a witness on the bare machine (``monitor`` = "bare") or under a monitor."""
    from popek.vmm.host import GuestSpec, Host, Machine

    if monitor == "bare":
        machine = Machine(WMEM, profile, core, inp)
        machine.load(image)
        r = machine.run(WSTEPS)
    else:
        r = Host([GuestSpec("witness", image, monitor, profile, WMEM, inp)], core).run(WSTEPS)[0]
    return RunSummary(r.exit if r.exit != "idle" else "idle", r.status, r.console, list(r.regs))


def _candidate(m: Model, form: Form, reason: tuple[str, str], core: str) -> Witness:
    build = _program_t1 if m.theorem == 1 else _program_t3
    text, image, inp = build(m, form, reason, False)
    w = Witness(form.name, m.theorem, reason, text, image, inp)
    w.bare = run_witness_program(image, m.profile, "bare", inp, core)
    w.virtualized = run_witness_program(image, m.profile, w.monitor, inp, core)
    if w.diverges:
        _, control, _ = build(m, form, reason, True)
        same = run_witness_program(control, m.profile, "bare", inp, core).key()
        w.isolated = same == run_witness_program(control, m.profile, w.monitor, inp, core).key()
    return w


def _order(reasons: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Reasons in the order a witness tries them: visible mode differences, reads, other mode ones, writes."""
    plain = {"regs", "console", "halt", "idle", "pc", "trap", "mem"}

    def rank(r: tuple[str, str]) -> tuple[int, int]:
        kind, c = r
        if kind == "mode":
            return (0 if c in plain else 2, 0)
        return (1 if kind == "reads" else 3, 0 if c in ("console", "epc", "base") else 1)

    return sorted(reasons, key=rank)


def witness(report: Report, row: Row, theorem: int, core: str = "reference") -> Witness:
    """Build, run and return the witness for one violation: the first candidate that diverges on its own."""
    m = model(report.profile, theorem)
    reasons = _order(row.reasons1 if theorem == 1 else row.reasons3)
    first = None
    for reason in reasons:
        w = _candidate(m, row.form, reason, core)
        if w.diverges and w.isolated:
            return w
        first = first or w
    return first


def check(profile: str | Profile | None = None, witnesses: bool = True, core: str = "reference") -> Report:
    """Classify ``profile``, decide both theorems and (optionally) build and run a witness per violation."""
    report = classify(profile)
    if witnesses:
        for theorem in (1, 3):
            for row in report.violations(theorem):
                report.witnesses.append(witness(report, row, theorem, core))
    return report


# --- output ---------------------------------------------------------------------------------------------


def render(report: Report, programs: bool = False) -> str:
    """The table (one row per form: user-mode behaviour, class, why), the verdicts and the witnesses."""
    lines = [f"Popek-Goldberg check of profile '{report.profile.name}' (from executing each instruction form)", ""]
    lines.append(f"{'form':<14} {'user mode':<10} {'class':<40} {'user-sens.':<11} why")
    for r in report.rows:
        us = "yes" if r.user_sensitive else "no"
        lines.append(f"{r.form.name:<14} {r.behaviour:<10} {r.klass:<40} {us:<11} {r.detail()}".rstrip())
    lines.append("")
    for theorem, monitor, what in ((1, "trap-and-emulate", "sensitive"), (3, "hybrid", "user-sensitive")):
        bad = [r.form.name for r in report.violations(theorem)]
        verdict = "holds" if not bad else f"fails: {what} but not privileged: {', '.join(bad)}"
        lines.append(f"Theorem {theorem} ({monitor} monitor): {verdict}")
    for w in report.witnesses:
        lines.append("")
        lines.append(f"witness: {w.instruction} breaks Theorem {w.theorem} ({reason_text(w.reason)})")
        lines.append(f"  {'bare machine:':<15} {w.bare.describe() if w.bare else '-'}")
        lines.append(f"  {'under ' + w.monitor + ':':<15} {w.virtualized.describe() if w.virtualized else '-'}")
        if not w.diverges:
            lines.append("  (the two runs agree: this witness does not show the violation)")
        if programs:
            lines += ["", *("    " + line if line else "" for line in w.program.splitlines())]
    return "\n".join(lines) + "\n"


def main(profile: str | None, as_json: bool = False, programs: bool = False, core: str = "reference") -> int:
    """``popek check``: print the report; exit 0 when Theorem 1 holds, 1 when it does not."""
    report = check(profile, witnesses=True, core=core)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        sys.stdout.write(render(report, programs))
    return 0 if report.theorem1 else 1
