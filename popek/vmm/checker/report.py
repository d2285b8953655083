"""The checker's answer for one profile: the classification, the verdicts and a witness per violation, as the
table ``popek check`` prints, as JSON, and the command itself.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from popek.isa.profiles import Profile
from popek.vmm.checker.witness import Witness, witness
from popek.vmm.sensitivity.classify import Classification, classify, describe, reason_text


@dataclass
class Report(Classification):
    """The checker's answer for one profile: every form classified, both verdicts, the witnesses."""

    witnesses: list[Witness] = field(default_factory=list)

    def to_json(self) -> dict:
        """The object printed by ``popek check --json``."""
        return {
            "profile": self.profile.name,
            "theorem1": self.theorem1,
            "theorem3": self.theorem3,
            "instructions": [
                {"name": r.form.name, "user_mode": r.behaviour, "class": r.klass, "privileged": r.privileged,
                 "control_sensitive": r.control_sensitive, "behavior_sensitive": r.behavior_sensitive,
                 "user_sensitive": r.user_sensitive, "reasons": describe(r.reasons1),
                 "user_reasons": describe(r.reasons3)}
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


def check(profile: str | Profile | None = None, witnesses: bool = True, core: str = "reference") -> Report:
    """Classify ``profile``, decide both theorems and (optionally) build and run a witness per violation."""
    classification = classify(profile)
    report = Report(classification.profile, classification.rows)
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
