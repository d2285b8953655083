"""Every bundled guest on the three cores: identical state, memory and console after the same steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from popek.cores import CoreUnavailable, get_core
from popek.isa.asm import assemble_file
from popek.vmm.host import Machine

GUESTS = Path(__file__).resolve().parent.parent / "guests"
BUILDS = sorted(
    [(p.relative_to(GUESTS).as_posix(), {}) for p in (GUESTS / "programs").glob("*.s") if p.name != "lib.s"]
    + [(p.relative_to(GUESTS).as_posix(), {}) for p in (GUESTS / "demos").glob("*.s")]
    + [("kernel/kernel.s", {}), ("kernel/kernel.s", {"CRASH": 1}), ("kernel/kernel.s", {"PARAVIRT": 1})],
    key=str,
)
STEPS = 100_000  # the reference core's share of the suite: about a third of a second per guest


def _fast_cores() -> list[str]:
    out = []
    for name in ("jit", "c"):
        try:
            get_core(name)
            out.append(name)
        except (CoreUnavailable, ImportError):
            pass
    return out


@pytest.mark.parametrize("path, defines", BUILDS, ids=[f"{p}{''.join(f'-{k}' for k in d)}" for p, d in BUILDS])
def test_guest_runs_identically_on_every_core(path: str, defines: dict) -> None:
    image = assemble_file(str(GUESTS / path), defines=defines or None).image
    runs = {}
    for core in ["reference", *_fast_cores()]:
        machine = Machine(core=core)
        machine.load(image)
        result = machine.run(STEPS)
        runs[core] = (machine, result)
    ref, ref_result = runs["reference"]
    assert ref_result.steps > 0
    for core, (machine, result) in runs.items():
        diff = np.flatnonzero(machine.state != ref.state)
        assert len(diff) == 0, f"{core}: state slots differ from the reference: {diff.tolist()}"
        assert np.array_equal(machine.mem, ref.mem), f"{core}: memory differs from the reference"
        assert (result.console, result.exit, result.halted) == (ref_result.console, ref_result.exit, ref_result.halted)
