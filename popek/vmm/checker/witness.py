"""Witnesses: build the program for one violation, run it on the bare machine and under the theorem's
monitor, and keep the first candidate whose two runs differ because of the instruction alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from popek.isa.profiles import Profile
from popek.vmm.checker.programs import MARKERS, WMEM, theorem1_program, theorem3_program
from popek.vmm.host import run_guest
from popek.vmm.sensitivity.classify import Classification, Row
from popek.vmm.sensitivity.forms import Form
from popek.vmm.sensitivity.model import Model, model

WSTEPS = 3_000  # step limit of a witness run (they need a few hundred)


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


def run_witness_program(
    image: bytes, profile: Profile, monitor: str, inp: bytes, core: str = "reference"
) -> RunSummary:
    """Run a witness on the bare machine (``monitor`` = "bare") or under a monitor."""
    r = run_guest(image, monitor, profile, core, WMEM, inp, WSTEPS, name="witness")
    return RunSummary(r.exit, r.status, r.console, list(r.regs))


def _candidate(m: Model, form: Form, reason: tuple[str, str], core: str) -> Witness:
    build = theorem1_program if m.theorem == 1 else theorem3_program
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


def witness(classification: Classification, row: Row, theorem: int, core: str = "reference") -> Witness:
    """Build, run and return the witness for one violation: the first candidate that diverges on its own."""
    m = model(classification.profile, theorem)
    reasons = _order(row.reasons1 if theorem == 1 else row.reasons3)
    first = None
    for reason in reasons:
        w = _candidate(m, row.form, reason, core)
        if w.diverges and w.isolated:
            return w
        first = first or w
    return first
