"""Instruction forms, the machine states they are probed on, and the facts that executing them reveals.

Every instruction form (each ``mfcr.X`` and ``mtcr.X`` separately, and every non-system instruction) is run
with the reference core on chosen machine states and on *pairs* of states that differ in one respect — the
mode, the relocation register with memory shifted to match, one control register, the timer, the console.
What changed is its *writes*; what its outcome depended on is its *reads*.  Nothing here reads a hand-written
label.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from popek.cores import reference
from popek.isa import spec
from popek.isa import state as S
from popek.isa.devices import Console
from popek.isa.spec import CR_NAMES, CR_NUMBER, INSNS, PROFILE_INDEX, PSW_IE, PSW_S, TRAP, encode

M32 = S.MASK32

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


def set_component(st: np.ndarray, name: str, value: int) -> None:
    """Set one control-state component (console excluded) in a state array."""
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
PSWS = [PSW_S, PSW_S | PSW_IE, 0, PSW_IE]  # both modes, IE off and on


def _states(word: int, behaviour: int, key: str | None) -> list[Snap]:
    """The base states for one instruction word, in both modes (user mode runs it with ``behaviour``)."""
    out = []
    for wi, ci, ri, inp in _SCENARIOS:
        base, bound = _WINDOWS[wi]
        for psw in PSWS:
            st = S.new_state(VMEM)
            st[S.PROFILE : S.PROFILE + len(spec.PROFILE_KEYS)] = TRAP
            if key is not None:
                st[S.PROFILE + PROFILE_INDEX[key]] = behaviour
            for r in range(1, 16):
                st[r] = _REG_SETS[ri].get(r, 0x1000 * r + r)
            st[S.PC] = PC0
            st[S.PSW], st[S.BASE], st[S.BOUND] = psw, base, bound
            for name, value in _CR_SETS[ci].items():
                set_component(st, name, value)
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
        set_component(other.st, name, _ALTERNATIVES[name])
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
