"""Every instruction form of a profile classified — privileged, control-sensitive, behaviour-sensitive (mode-
or location-), innocuous; user-sensitive or not — and the two theorems decided from the classes:

* **Theorem 1** — a trap-and-emulate monitor (``trap``) is exact iff every sensitive form is privileged;
* **Theorem 3** — a hybrid monitor (``hybrid``) is exact iff every *user-sensitive* form is privileged.

The classes come from executing the forms (``forms``) against the models of the two monitors (``model``).
The rewriting monitor replaces the forms classified here, so this module stays below the monitors: it
imports nothing that runs a guest.
"""

from __future__ import annotations

from dataclasses import dataclass

from popek.isa import spec
from popek.isa.profiles import Profile, load_profile
from popek.vmm.sensitivity.forms import FORMS, Form
from popek.vmm.sensitivity.model import behaviour_of, is_privileged, model


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
        why, user = describe(self.reasons1), describe(self.reasons3)
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


def describe(reasons: list[tuple[str, str]]) -> str:
    """Reasons in short: mode, location, reads X, writes X."""
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
class Classification:
    """Every form of one profile classified, and the verdicts of both theorems."""

    profile: Profile
    rows: list[Row]

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


def classify(profile: str | Profile | None = None) -> Classification:
    """Classify every instruction form of ``profile`` and decide both theorems (no witnesses)."""
    prof = load_profile(profile)
    m1, m3 = model(prof, 1), model(prof, 3)
    rows = []
    for form in FORMS:
        b = behaviour_of(prof, form)
        rows.append(Row(form, spec.BEHAVIOUR_NAMES[b], is_privileged(prof, form), m1.reasons(form), m3.reasons(form)))
    return Classification(prof, rows)
