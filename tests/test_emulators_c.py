"""The C programs of benchmarks/emulators.py do the guests' work: the same output as the guest and as an
independent computation (trial division, zlib), compiled natively with gcc (skipped without it)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from popek.isa.asm import assemble_file
from popek.vmm.host import Machine

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("emulators", ROOT / "benchmarks" / "emulators.py")
emulators = sys.modules["emulators"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
spec.loader.exec_module(emulators)

GCC = shutil.which("gcc")


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
@pytest.mark.parametrize("workload", emulators.WORKLOADS, ids=lambda w: w.name)
def test_the_c_program_prints_what_the_guest_and_the_truth_print(workload, tmp_path) -> None:
    built = emulators.compile_c(GCC, ["-O1"], tmp_path, "O1")
    assert not isinstance(built, str), built
    native = emulators.Contestant("native", "x86-64", built)
    program = assemble_file(str(ROOT / workload.guest), defines={"REPEAT": 3})
    machine = Machine(core="jit")
    machine.load(program.image)
    guest = machine.run(max_steps=10**8)
    assert guest.halted
    for passes in (1, 3):
        c = emulators.run_c(native, workload.name, passes)
        assert c.output == guest.console == workload.truth(program)
        assert c.seconds >= 0
