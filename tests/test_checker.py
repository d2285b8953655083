"""The Popek-Goldberg checker, held to what the monitors really do.

The verdicts are checked in both directions on random profiles: a profile the checker accepts for a theorem
runs every generated guest exactly as the bare machine does under that theorem's monitor, and a profile it
rejects comes with witnesses that diverge (re-run here, from their source text) and stop diverging when the
instruction under test is replaced by a nop.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from popek.cli import main as popek
from popek.cores import CoreUnavailable, get_core, reference
from popek.isa import state as S
from popek.isa.asm import assemble
from popek.isa.profiles import Profile, load_profile
from popek.isa.spec import BY_MNEMONIC, CR_NUMBER, EXECUTE, IGNORE, NUM_CRS, PROFILE_KEYS, PSW_IE, PSW_S, TRAP, encode
from popek.vmm import checker
from popek.vmm.checker.source import Source
from popek.vmm.host import GuestSpec, Host, Machine
from tests.strategies import Prog, instruction_words, skip_handler


def _core() -> str:
    """The JIT core when it is there (much faster per witness), else the reference core; same contract."""
    try:
        get_core("jit")
    except (CoreUnavailable, ImportError):
        return "reference"
    return "jit"


CORE = _core()


def row(report: checker.Classification, name: str) -> checker.Row:
    return next(r for r in report.rows if r.form.name == name)


# --- the two built-in profiles ----------------------------------------------------------------------------


def test_classic_satisfies_both_theorems() -> None:
    report = checker.check("classic", core=CORE)
    assert report.theorem1 and report.theorem3
    assert report.violations(1) == report.violations(3) == [] and report.witnesses == []
    assert {r.form.name for r in report.rows if r.privileged} == {r.form.name for r in report.rows if r.form.key}


def test_x86like_fails_both_and_every_witness_reproduces_its_divergence() -> None:
    report = checker.check("x86like", core=CORE)
    assert not report.theorem1 and not report.theorem3
    assert [r.form.name for r in report.violations(1)] == ["getpsw", "setpsw", "getbase"]
    assert [r.form.name for r in report.violations(3)] == ["getbase"]
    assert [(w.instruction, w.theorem) for w in report.witnesses] == [
        ("getpsw", 1), ("setpsw", 1), ("getbase", 1), ("getbase", 3)]  # fmt: skip
    for w in report.witnesses:
        assert_witness(w, report.profile)
    getpsw = report.witnesses[0]
    assert getpsw.bare.regs[9] & PSW_S and not getpsw.virtualized.regs[9] & PSW_S  # the kernel sees user mode
    for w in report.witnesses[2:]:
        assert w.bare.regs[9] == 0 and w.virtualized.regs[9] != 0  # getbase sees the monitor's offset


def test_one_example_per_class() -> None:
    classic, x86 = checker.classify("classic"), checker.classify("x86like")
    assert row(classic, "add").klass == "innocuous" and not row(classic, "ld").sensitive  # memory is relocated
    assert row(classic, "halt").klass == "privileged, innocuous"  # trapping is more than it needs
    assert row(classic, "mtcr.timer").control_sensitive and row(classic, "mtcr.timer").privileged
    assert row(classic, "getbase").reasons1 == [("reads", "base")]  # location-sensitive
    mode = row(x86, "getpsw")
    assert mode.behavior_sensitive and not mode.privileged and not mode.user_sensitive  # mode-sensitive only
    assert row(x86, "setpsw").reasons1 == [("mode", "IE")] and not row(x86, "setpsw").user_sensitive
    assert row(x86, "getbase").user_sensitive
    assert row(classic, "mfcr.scratch").reasons1 == [("reads", "scratch")]  # control state the real CPU lacks
    assert row(classic, "mtcr.cycle").klass == "privileged, innocuous"  # cycle ignores writes


def test_the_facts_follow_the_semantics_not_a_label(monkeypatch: pytest.MonkeyPatch) -> None:
    derive = checker.facts.__wrapped__  # uncached: run the reference core again
    assert derive("getbase", EXECUTE).read_set("user") == {"base"}
    monkeypatch.setitem(reference.SEMANTICS, "getbase", lambda cpu, d, pc: cpu.set_reg(d.a, 0x1234))
    assert derive("getbase", EXECUTE).read_set("user") == set()  # a getbase that ignores R is innocuous


def test_a_branch_in_a_witness_is_spelled_at_its_address() -> None:
    """The disassembler writes a branch target as an absolute address: the witness text places the word first."""
    p = Source()
    p.ins("addi", 1, 0, 0, 1)
    word = encode(BY_MNEMONIC["beq"], 2, 3, 0, 3)
    p.raw(word, "at 4: the target is 4 + 3 words")
    text, image = p.build()
    assert "beq     r2, r3, 0x10" in text and image[4:8] == word.to_bytes(4, "little")


def test_monitor_map_is_read_off_the_vm() -> None:
    m = checker.monitor_map()
    assert m["mirrored"] == {"IE"} and m["always"] == {"base"}
    assert m["mapped"] == {"M", "base", "bound", "timer", "pending"}
    assert {"epc", "scratch", "cycle", "console"} <= m["own"]


def test_scratch_left_to_the_guest_is_harmless_under_trap_and_not_under_hybrid() -> None:
    """With both mfcr.scratch and mtcr.scratch unprivileged, scratch never leaves the real CPU under trap;
    the hybrid monitor interprets the kernel, whose writes then never reach the user's reads."""
    prof = Profile("scratch", {**load_profile("classic").behaviour, "mfcr.scratch": EXECUTE, "mtcr.scratch": EXECUTE})
    report = checker.check(prof, core=CORE)
    assert report.theorem1 and not report.theorem3
    assert [r.form.name for r in report.violations(3)] == ["mfcr.scratch", "mtcr.scratch"]
    for w in report.witnesses:
        assert_witness(w, prof)
    p = Prog()  # the kernel writes scratch, user code reads it and writes it, the kernel reads it back
    p.addi(2, 0, imm=0x77)
    p.mtcr(2, imm=CR_NUMBER["scratch"])
    p.li(2, 0x80)
    p.mtcr(2, imm=CR_NUMBER["ivt"])
    p.mtcr(0, imm=CR_NUMBER["psw"])
    p.mfcr(3, imm=CR_NUMBER["scratch"])
    p.addi(4, 0, imm=0x55)
    p.mtcr(4, imm=CR_NUMBER["scratch"])
    p.syscall()
    image = bytearray(p.image().ljust(0x80, b"\0"))
    q = Prog()
    q.mfcr(5, imm=CR_NUMBER["scratch"])
    q.add(1, 3, 5)
    q.halt()
    image += q.image()
    bare = run_bare(bytes(image), prof, 100)
    assert bare.halted and bare.state[3] == 0x77 and bare.state[5] == 0x55
    assert_same(bare, run_vm(bytes(image), "trap", prof, 100))
    assert run_vm(bytes(image), "hybrid", prof, 100).vms[0].vstate[3] == 0  # the user read the real scratch


# --- the CLI ------------------------------------------------------------------------------------------------


def test_cli_table_verdicts_and_exit_status(capsys: pytest.CaptureFixture) -> None:
    assert popek(["check", "--core", CORE]) == 0
    out = capsys.readouterr().out
    assert "Theorem 1 (trap-and-emulate monitor): holds" in out and "Theorem 3 (hybrid monitor): holds" in out
    assert sum(line.split()[0] in checker.FORM_BY_NAME for line in out.splitlines() if line.strip()) == 75
    assert popek(["check", "--profile", "x86like", "--core", CORE, "--programs"]) == 1
    out = capsys.readouterr().out
    assert "fails: sensitive but not privileged: getpsw, setpsw, getbase" in out
    assert "fails: user-sensitive but not privileged: getbase" in out
    assert "witness: getbase breaks Theorem 3" in out and "under hybrid:" in out and "getbase r1" in out


def test_cli_json(capsys: pytest.CaptureFixture) -> None:
    assert popek(["check", "--profile", "x86like", "--json", "--core", CORE]) == 1
    data = json.loads(capsys.readouterr().out)
    assert (data["profile"], data["theorem1"], data["theorem3"]) == ("x86like", False, False)
    assert len(data["instructions"]) == len(checker.FORMS)
    keys = {"name", "privileged", "control_sensitive", "behavior_sensitive", "user_sensitive"}
    assert all(keys <= set(i) for i in data["instructions"])
    getpsw = next(i for i in data["instructions"] if i["name"] == "getpsw")
    assert (getpsw["privileged"], getpsw["behavior_sensitive"], getpsw["user_sensitive"]) == (False, True, False)
    assert [(w["instruction"], w["theorem"]) for w in data["witnesses"]][-1] == ("getbase", 3)
    for w in data["witnesses"]:
        assert {"instruction", "theorem", "program", "bare", "virtualized"} <= set(w)
        assert w["bare"] != w["virtualized"] and assemble(w["program"]).image


def test_cli_toml_profile_and_usage_errors(tmp_path, capsys: pytest.CaptureFixture) -> None:
    good = tmp_path / "leaky.toml"
    good.write_text('name = "leaky"\nextends = "classic"\n[user]\n"mfcr.cycle" = "execute"\nhalt = "execute"\n')
    assert popek(["check", "--profile", str(good), "--json", "--core", CORE]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["profile"] == "leaky" and [w["instruction"] for w in data["witnesses"]] == ["mfcr.cycle"] * 2
    bad = tmp_path / "bad.toml"
    bad.write_text('[user]\ngetpsw = "sometimes"\n')
    for args in (["--profile", str(bad)], ["--profile", "nosuch"], ["--profile", str(tmp_path / "none.toml")]):
        assert popek(["check", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("popek: error:") and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        popek(["check", "--frobnicate"])
    assert e.value.code == 2


# --- property tests: the verdicts against the monitors ------------------------------------------------------


@st.composite
def profiles(draw: st.DrawFn) -> Profile:
    """Each system instruction and each mfcr.X/mtcr.X gets a random user-mode behaviour (trap-heavy at times,
    so that profiles near the virtualizable ones come up as often as wildly broken ones)."""
    traps = draw(st.sampled_from([1, 4, 16]))
    choice = st.sampled_from([TRAP] * traps + [EXECUTE, IGNORE])
    return Profile("random", {k: draw(choice) for k in PROFILE_KEYS})


def accepted(prof: Profile, theorem: int) -> Profile:
    """``prof`` with the violations of ``theorem`` made privileged until the checker accepts it."""
    while True:
        report = checker.classify(prof)
        bad = report.violations(theorem)
        if not bad:
            return prof
        prof = Profile(prof.name, {**prof.behaviour, **{r.form.key: TRAP for r in bad}})


MEMSIZE = 0x2000
HANDLER, USER_BASE, BODY = 0x1000, 0x1800, 0x400


@st.composite
def system_words(draw: st.DrawFn) -> int:
    """An instruction word, often a system instruction with a random control register, port or register."""
    if draw(st.booleans()):
        return draw(instruction_words())
    m = draw(st.sampled_from(["mfcr", "mtcr", "mfcr", "mtcr", "getpsw", "setpsw", "getbase", "iret", "wfi", "in",
                              "out", "syscall"]))  # fmt: skip
    reg = draw(st.integers(1, 9))
    imm = draw(st.integers(0, NUM_CRS - 1)) if m in ("mfcr", "mtcr") else draw(st.sampled_from([0, 0, 1]))
    if m in ("iret", "wfi"):
        reg = imm = 0
    elif m in ("getpsw", "setpsw", "getbase"):
        imm = 0
    return encode(BY_MNEMONIC[m], reg, 0, 0, imm)


@st.composite
def guest_programs(draw: st.DrawFn) -> bytes:
    """A kernel that sets a vector, maybe the timer and IE, then runs a system-heavy body in supervisor mode
    or enters user mode (relocated) to run it there; traps skip the faulting instruction."""
    p = Prog()
    p.li(2, HANDLER)
    p.mtcr(2, imm=CR_NUMBER["ivt"])
    p.addi(12, 0, imm=draw(st.integers(1, 40)))  # the handler re-arms the timer with r12
    if draw(st.booleans()):
        p.addi(2, 0, imm=draw(st.integers(1, 60)))
        p.mtcr(2, imm=CR_NUMBER["timer"])
    if draw(st.booleans()):
        p.addi(2, 0, imm=PSW_S | PSW_IE)
        p.mtcr(2, imm=CR_NUMBER["psw"])
    p.addi(2, 0, imm=draw(st.sampled_from([0, 3, 0x40, 0x7FF])))
    if draw(st.booleans()):
        p.li(3, USER_BASE)
        p.mtcr(3, imm=CR_NUMBER["ebase"])
        p.li(3, draw(st.sampled_from([0x100, 0x400, MEMSIZE - USER_BASE, 0xFFFFFFFF])))
        p.mtcr(3, imm=CR_NUMBER["ebound"])
        p.mtcr(0, imm=CR_NUMBER["epc"])
        p.addi(3, 0, imm=draw(st.sampled_from([0, PSW_IE])))
        p.mtcr(3, imm=CR_NUMBER["epsw"])
        p.iret()
    else:
        p.jal(0, imm=(BODY - p.here) // 4)
    image = bytearray(p.image().ljust(MEMSIZE, b"\0"))
    handler = b"".join(w.to_bytes(4, "little") for w in skip_handler(rearm_timer=True))
    image[HANDLER : HANDLER + len(handler)] = handler
    body = b"".join(w.to_bytes(4, "little") for w in draw(st.lists(system_words(), min_size=4, max_size=40)))
    for where in (BODY, USER_BASE):
        image[where : where + len(body)] = body
    return bytes(image)


def run_bare(image: bytes, prof: Profile, steps: int, inp: bytes = b"Q?") -> Machine:
    machine = Machine(MEMSIZE, prof, CORE, inp)
    machine.load(image)
    machine.run(steps)
    return machine


def run_vm(image: bytes, monitor: str, prof: Profile, steps: int, inp: bytes = b"Q?") -> Host:
    host = Host([GuestSpec("g", image, monitor, prof, MEMSIZE, inp)], CORE)
    host.run(steps, slice_steps=53)
    return host


def assert_same(machine: Machine, host: Host) -> None:
    """Everything a guest can show: console, how it stopped, status, registers, pc, memory and its step count."""
    vm = host.vms[0]
    bare, virt = machine.result(), host.result(0)
    assert (bare.console, bare.halted, bare.status) == (virt.console, virt.halted, virt.status)
    assert (bare.regs, bare.pc, machine.state[S.STEPS]) == (virt.regs, virt.pc, vm.vstate[S.STEPS])
    assert np.array_equal(machine.mem, vm.mem)


def assert_witness(w: checker.Witness, prof: Profile) -> None:
    """The witness's text assembles to the image it ran, and re-running it shows the divergence."""
    assert assemble(w.program, "witness.s").image == w.image
    bare = checker.run_witness_program(w.image, prof, "bare", w.input, CORE)
    virt = checker.run_witness_program(w.image, prof, w.monitor, w.input, CORE)
    assert bare.key() != virt.key(), f"{w.instruction} (Theorem {w.theorem}) does not diverge:\n{w.program}"
    assert w.isolated, f"{w.instruction} (Theorem {w.theorem}) diverges for another reason:\n{w.program}"


@pytest.mark.parametrize("theorem,monitor", [(1, "trap"), (3, "hybrid")])
@given(prof=profiles(), image=guest_programs(), steps=st.integers(1, 500))
def test_an_accepted_profile_never_diverges(theorem: int, monitor: str, prof: Profile, image: bytes, steps: int):
    prof = accepted(prof, theorem)
    machine = run_bare(image, prof, steps)
    assert_same(machine, run_vm(image, monitor, prof, steps))


@given(prof=profiles())
def test_a_rejected_profile_always_has_diverging_witnesses(prof: Profile) -> None:
    report = checker.check(prof, core=CORE)
    for theorem in (1, 3):
        witnesses = [w for w in report.witnesses if w.theorem == theorem]
        assert [w.instruction for w in witnesses] == [r.form.name for r in report.violations(theorem)]
        assert bool(witnesses) != (report.theorem1 if theorem == 1 else report.theorem3)
        for w in witnesses:
            assert_witness(w, prof)
