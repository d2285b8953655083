"""The witness programs: for one violation of a theorem, P32 source whose run on the bare machine and under
that theorem's monitor differ.

A witness is built from the reason the classification found (which component is read or written, or what
differs between the modes) and from the model's setters and observers, not written per mnemonic.  Every entry
at address 0 (reset, and each trap: ivt stays 0) is counted in r13; r12 records how execution went on after
the instruction under test; r9 keeps the instruction's own result and r11 an observed value.
"""

from __future__ import annotations

from popek.isa import spec
from popek.isa.spec import CR_NAMES, CR_NUMBER, EXECUTE, IGNORE, PSW_IE, PSW_S, TRAP, encode
from popek.vmm.checker.source import Source, emit_hex_routine, emit_report, emit_strings
from popek.vmm.sensitivity.forms import CR_COMPONENTS, FORM_BY_NAME, M32, Form, Snap
from popek.vmm.sensitivity.model import Model, behaviour_of, facts_when_run

WMEM = 0x1000  # memory of a witness machine
PROBE_BOUND = 0x800  # a bound above every witness's code: a load there shows whether R was cut down
NOP = encode(spec.BY_MNEMONIC["addi"], 0, 0, 0, 0)
DEAD_PORT = 0x7F  # a port with no device: I/O on it shows nothing, on the bare machine and under a monitor
# Markers a witness leaves in r12: how execution went on after the instruction under test.
MARKERS = {1: "went on after it", 2: "jumped to the landing point", 3: "trapped", 4: "returned to the fault point",
           5: "trapped through the new vector"}  # fmt: skip


def _emit_test(p: Source, regs: dict, form: Form, control: bool, where: str) -> None:
    """Load the registers, then the instruction under test (or a nop for the control run), then marker 1."""
    for r in sorted(regs):
        p.li(r, regs[r])
    p.label("test")
    if control:
        p.raw(NOP, "control run: the instruction replaced by a nop")
    else:
        p.raw(form.word, f"<-- the instruction under test{where}")
    p.ins("addi", 12, 0, 0, 1)


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


def _exit_tool(p: Source, m: Model, note: str) -> None:
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


def theorem1_program(m: Model, form: Form, reason: tuple[str, str], control: bool) -> tuple[str, bytes, bytes]:
    """A supervisor-mode witness for Theorem 1, the guest kernel itself running the instruction (a nop for the
    ``control`` run): its source, image and console input."""
    kind, c = reason
    prof, f = m.profile, facts_when_run(m.profile, form)
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

    p = Source()
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
        emit_report(p, report)
    p.ins("add", 1, 12, 0, note="exit status: the marker")
    if beh("halt") == IGNORE:
        p.label("spin")
        p.ins("jal", 0, 0, 0, "spin", "halt is ignored in user mode: end in a loop (compare at the step limit)")
    else:
        p.ins("halt")
    return _finish(p, report if printing else [], inp)


def _count_entries(p: Source, note: str) -> None:
    """The witnesses' entry at address 0 (reset, and every trap: ivt stays 0): count it in r13 and in
    ``visits``; go on at ``start`` on the first, fall through on the others."""
    p.label("entry")
    p.ins("ld", 13, 0, 0, "visits")
    p.ins("addi", 13, 13, 0, 1)
    p.ins("st", 13, 0, 0, "visits")
    p.ins("addi", 10, 0, 0, 1)
    p.ins("beq", 13, 10, 0, "start", note)


def _finish(p: Source, printed: list[tuple[str, int]], inp: bytes) -> tuple[str, bytes, bytes]:
    """End a witness: the console routines when it prints ``printed``, the word ``visits``; build it."""
    if printed:
        emit_hex_routine(p)
        emit_strings(p, printed)
    p.label("visits")
    p.word(0)
    text, image = p.build()
    return text, image, inp


def _emit_step(p: Source, m: Model, step: tuple) -> None:
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


def theorem3_program(m: Model, form: Form, reason: tuple[str, str], control: bool) -> tuple[str, bytes, bytes]:
    """A user-mode witness for Theorem 3, the kernel (interpreted by the monitor) setting up and user code running
    the instruction (a nop for the ``control`` run): its source, image and console input."""
    kind, c = reason
    f = facts_when_run(m.profile, form)
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
    p = Source()
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
    emit_report(p, items)
    p.ins("add", 1, 12, 0, note="exit status: the marker")
    p.ins("halt")
    return _finish(p, items, inp)
