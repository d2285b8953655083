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

The classification lives in ``popek.vmm.sensitivity`` (the rewriting monitor uses it too, so it sits below
the monitors); this package adds what needs the host: the witness programs (``source``, ``programs``), their
runs (``witness``) and the report (``report``).
"""

from popek.vmm.checker.report import Report, check, main, render
from popek.vmm.checker.witness import RunSummary, Witness, run_witness_program, witness
from popek.vmm.sensitivity.classify import Classification, Row, classify, reason_text
from popek.vmm.sensitivity.forms import FORM_BY_NAME, FORMS, Facts, Form, facts
from popek.vmm.sensitivity.model import Model, model, monitor_map

__all__ = [
    "FORMS",
    "FORM_BY_NAME",
    "Classification",
    "Facts",
    "Form",
    "Model",
    "Report",
    "Row",
    "RunSummary",
    "Witness",
    "check",
    "classify",
    "facts",
    "main",
    "model",
    "monitor_map",
    "reason_text",
    "render",
    "run_witness_program",
    "witness",
]
