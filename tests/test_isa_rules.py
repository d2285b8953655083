"""The ISA's rules (traps, relocation, iret, time, profiles) on every core, against values taken from the spec."""

from __future__ import annotations

import numpy as np
import pytest

from popek.cores import CoreUnavailable, get_core
from popek.isa import spec
from popek.isa import state as S
from popek.isa.profiles import apply_overrides, load_profile
from popek.isa.spec import BY_MNEMONIC, encode

MEMSIZE = 4096
IVT = 0x800  # every test puts a halt there, so a trap ends the run


def _cores() -> list[str]:
    names = []
    for name in ("reference", "jit", "c"):
        try:
            get_core(name)
            names.append(name)
        except (CoreUnavailable, ImportError):
            pass
    return names


CORES = _cores()


def w(m: str, a: int = 0, b: int = 0, c: int = 0, imm: int = 0) -> int:
    """Encode one instruction (shorthand)."""
    return encode(BY_MNEMONIC[m], a, b, c, imm)


def machine(code: list[int], profile: str = "classic", user_profile: dict | None = None):
    """A state and memory with ``code`` at 0 and a halt at the trap vector."""
    mem = np.zeros(MEMSIZE, dtype=np.uint8)
    words = np.array(code, dtype=np.uint32).view(np.uint8)
    mem[: len(words)] = words
    mem[IVT : IVT + 4] = np.array([w("halt")], dtype=np.uint32).view(np.uint8)
    prof = load_profile(profile)
    if user_profile:
        prof = apply_overrides(prof, "test", user_profile)
    state = S.new_state(MEMSIZE, prof.array())
    state[S.IVT] = IVT
    return state, mem


def run(core: str, state: np.ndarray, mem: np.ndarray, budget: int = 1000) -> int:
    return get_core(core)(state, mem, budget)


def user_mode(state: np.ndarray, pc: int, base: int = 0, bound: int = MEMSIZE) -> None:
    state[S.PSW], state[S.PC], state[S.BASE], state[S.BOUND] = 0, pc, base, bound


@pytest.fixture(params=CORES)
def core(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize(
    "code, cause, badaddr",
    [
        ([w("syscall", imm=0x1234)], spec.SYSCALL, 0x1234),
        ([w("brk", imm=7)], spec.BREAK, 7),
        ([w("hcall", imm=1)], spec.ILLEGAL, w("hcall", imm=1)),
        ([0x00000000], spec.ILLEGAL, 0),
        ([w("add", 1, 2, 3) | 1], spec.ILLEGAL, w("add", 1, 2, 3) | 1),  # stray bits in an R-format word
        ([w("mfcr", 1, imm=13)], spec.ILLEGAL, w("mfcr", 1, imm=13)),  # unknown CR
        ([w("addi", 1, 0, imm=5), w("div", 2, 1, 0)], spec.DIVZERO, 0),
        ([w("ld", 1, 0, imm=2)], spec.ALIGN, 2),
        ([w("ld", 1, 0, imm=0x7FFC)], spec.MEM_FAULT, 0x7FFC),
        ([w("jalr", 0, 0, imm=6)], spec.ALIGN, 6),  # the jump retires; the fetch faults
    ],
)
def test_trap_causes(core: str, code: list[int], cause: int, badaddr: int) -> None:
    state, mem = machine(code)
    assert run(core, state, mem) == S.EXIT_HALT
    assert state[S.CAUSE] == cause and state[S.BADADDR] == badaddr
    assert state[S.PC] == IVT + 4 and state[S.PSW] == spec.PSW_S
    assert state[S.EPSW] == spec.PSW_S and state[S.EBOUND] == MEMSIZE


def test_faulting_instruction_changes_nothing(core: str) -> None:
    state, mem = machine([w("addi", 1, 0, imm=9), w("ld", 1, 1, imm=0x7000)])
    run(core, state, mem)
    assert state[1] == 9 and state[S.EPC] == 4 and state[S.CYCLE] == 2  # addi and the handler's halt retired


def test_relocation_at_both_ends_of_the_bound(core: str) -> None:
    base, bound = 0x400, 0x100
    # user code at physical base: load the last word inside the bound, then the first byte outside it
    code = [0] * (base // 4) + [w("ld", 1, 0, imm=bound - 4), w("ldbu", 2, 0, imm=bound - 1), w("ldb", 3, 0, imm=bound)]
    state, mem = machine(code)
    mem[base + bound - 4 : base + bound] = [0x11, 0x22, 0x33, 0x84]
    user_mode(state, 0, base, bound)
    run(core, state, mem)
    assert state[1] == 0x84332211 and state[2] == 0x84
    assert state[S.CAUSE] == spec.MEM_FAULT and state[S.BADADDR] == bound and state[S.EPC] == 8
    assert state[S.EBASE] == base and state[S.EBOUND] == bound and state[S.EPSW] == 0


def test_relocation_also_bounds_by_memory_size(core: str) -> None:
    state, mem = machine([w("ld", 1, 0, imm=0x7FC)])
    state[S.BASE], state[S.BOUND] = 0x800, 0xFFFFFFFF  # stays supervisor, R moved up: base + va + 4 > memsize
    mem[0x800:0x804] = np.array([w("ld", 1, 0, imm=MEMSIZE - 0x800)], dtype=np.uint32).view(np.uint8)
    run(core, state, mem, budget=2)
    assert state[S.CAUSE] == spec.MEM_FAULT and state[S.BADADDR] == MEMSIZE - 0x800


def test_iret_restores_psw_pc_and_r(core: str) -> None:
    code = [w("mtcr", 1, imm=spec.CR_EPC), w("mtcr", 2, imm=spec.CR_EPSW), w("mtcr", 3, imm=spec.CR_EBASE),
            w("mtcr", 4, imm=spec.CR_EBOUND), w("iret")]  # fmt: skip
    state, mem = machine(code)
    state[1], state[2], state[3], state[4] = 8, 0xFFFFFFFE, 0x100, 0x40  # epsw keeps all bits; iret keeps 1-0
    mem[0x108:0x10C] = np.array([w("syscall", imm=3)], dtype=np.uint32).view(np.uint8)
    run(core, state, mem)
    assert state[S.CAUSE] == spec.SYSCALL and state[S.EPC] == 8 and state[S.EPSW] == 2
    assert state[S.EBASE] == 0x100 and state[S.EBOUND] == 0x40


def test_timer_interrupt_timing(core: str) -> None:
    # mtcr timer, 3 does not tick; three more instructions retire, then the interrupt comes before the 4th
    code = [w("addi", 1, 0, imm=3), w("addi", 2, 0, imm=spec.PSW_S | spec.PSW_IE), w("mtcr", 2, imm=0),
            w("mtcr", 1, imm=spec.CR_TIMER), w("addi", 5, 5, imm=1), w("addi", 5, 5, imm=1), w("addi", 5, 5, imm=1),
            w("addi", 5, 5, imm=1)]  # fmt: skip
    state, mem = machine(code)
    run(core, state, mem)
    assert state[S.CAUSE] == spec.TIMER_IRQ and state[S.EPC] == 28 and state[5] == 3
    assert state[S.EPSW] == spec.PSW_S | spec.PSW_IE and state[S.CYCLE] == 7 + 1  # 7 before, halt retires


def test_wfi_skips_ahead_and_counts_idle_time(core: str) -> None:
    code = [w("addi", 1, 0, imm=100), w("mtcr", 1, imm=spec.CR_TIMER), w("wfi"), w("mfcr", 3, imm=spec.CR_CYCLE),
            w("halt")]  # fmt: skip
    state, mem = machine(code)
    assert run(core, state, mem) == S.EXIT_HALT
    assert state[3] == 2 + 100 + 1  # a wfi with timer = T advances cycle by T + 1 (IE off: no interrupt)
    assert state[S.PENDING] & S.PEND_TIMER and state[S.TIMER] == 0


def test_wfi_with_nothing_to_wait_for_is_idle(core: str) -> None:
    state, mem = machine([w("wfi")])
    assert run(core, state, mem) == S.EXIT_IDLE and state[S.PC] == 0 and state[S.CYCLE] == 0


def test_mfcr_cycle_and_ignored_write(core: str) -> None:
    code = [w("addi", 1, 0, imm=77), w("mtcr", 1, imm=spec.CR_CYCLE), w("mfcr", 2, imm=spec.CR_CYCLE), w("halt")]
    state, mem = machine(code)
    run(core, state, mem)
    assert state[2] == 2 and state[S.CYCLE] == 4


@pytest.mark.parametrize(
    "insn, key",
    [(w("getpsw", 1), "getpsw"), (w("getbase", 1), "getbase"), (w("mfcr", 1, imm=spec.CR_SCRATCH), "mfcr.scratch"),
     (w("setpsw", 2), "setpsw"), (w("mtcr", 2, imm=spec.CR_SCRATCH), "mtcr.scratch")],
)  # fmt: skip
@pytest.mark.parametrize("behaviour", ["trap", "execute", "ignore"])
def test_profile_behaviour_in_user_mode(core: str, insn: int, key: str, behaviour: str) -> None:
    base = 0x400
    code = [0] * (base // 4) + [insn, w("syscall", imm=1)]
    state, mem = machine(code, user_profile={key: behaviour})
    user_mode(state, 0, base, 0x100)
    state[1], state[2], state[S.SCRATCH] = 0x55, 3, 0x99
    run(core, state, mem)
    if behaviour == "trap":
        assert state[S.CAUSE] == spec.PRIV and state[S.BADADDR] == insn and state[S.EPC] == 0 and state[1] == 0x55
        return
    assert state[S.CAUSE] == spec.SYSCALL and state[S.EPC] == 4  # it retired either way
    executed = {"getpsw": state[1] == 0, "getbase": state[1] == base, "mfcr.scratch": state[1] == 0x99,
                "setpsw": state[S.EPSW] == 3, "mtcr.scratch": state[S.SCRATCH] == 3}  # fmt: skip
    ignored = {"getpsw": state[1] == 0x55, "getbase": state[1] == 0x55, "mfcr.scratch": state[1] == 0x55,
               "setpsw": state[S.EPSW] == 0, "mtcr.scratch": state[S.SCRATCH] == 0x99}  # fmt: skip
    assert (executed if behaviour == "execute" else ignored)[key]


def test_supervisor_mode_always_executes(core: str) -> None:
    state, mem = machine([w("getbase", 1), w("halt")], profile="classic")
    state[S.BASE] = 0
    assert run(core, state, mem) == S.EXIT_HALT and state[S.CAUSE] == 0


def test_arithmetic_edge_cases(core: str) -> None:
    code = [w("lui", 1, imm=0x8000), w("addi", 2, 0, imm=-1), w("div", 3, 1, 2), w("rem", 4, 1, 2),
            w("sar", 5, 1, 2), w("shr", 6, 1, 2), w("mul", 7, 2, 2), w("slt", 8, 1, 0), w("sltu", 9, 1, 0),
            w("addi", 10, 0, imm=-7), w("addi", 11, 0, imm=2), w("div", 12, 10, 11), w("rem", 13, 10, 11),
            w("add", 0, 2, 2), w("halt")]  # fmt: skip
    state, mem = machine(code)
    run(core, state, mem)
    regs = [int(x) for x in state[:14]]
    assert regs[3] == 0x80000000 and regs[4] == 0  # INT_MIN / -1 = INT_MIN, remainder 0
    assert regs[5] == 0xFFFFFFFF and regs[6] == 1 and regs[7] == 1
    assert regs[8] == 1 and regs[9] == 0 and regs[0] == 0
    assert regs[12] == (-3) & 0xFFFFFFFF and regs[13] == (-1) & 0xFFFFFFFF  # truncation toward zero


def test_halt_status_and_pc(core: str) -> None:
    state, mem = machine([w("addi", 1, 0, imm=0x1FF), w("halt")])
    assert run(core, state, mem) == S.EXIT_HALT
    assert state[S.STATUS] == 0xFF and state[S.PC] == 8 and state[S.CYCLE] == 2


def test_out_exits_to_the_host(core: str) -> None:
    state, mem = machine([w("addi", 3, 0, imm=65), w("out", 3, imm=0), w("halt")])
    assert run(core, state, mem) == S.EXIT_IO
    assert state[S.PC] == 4 and state[S.IO_WRITE] == 1 and state[S.IO_VALUE] == 65 and state[S.IO_PORT] == 0
    S.complete_io(state)
    assert run(core, state, mem) == S.EXIT_HALT and state[S.CYCLE] == 3
