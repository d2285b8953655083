"""The C core: popek/cores/c/core.c, built at install time by cffi as ``popek.cores.c._p32core``.

Same contract as popek/cores/reference.py: ``run(state, mem, budget) -> exit code`` over the flat state of
popek/isa/state.py. The numpy buffers are handed to C without copies. Where the extension could not be built
(no C compiler at install time), ``available()`` is False and ``unavailable_reason()`` says why.
"""

from __future__ import annotations

import weakref

import numpy as np

from popek.cores.contract import CoreUnavailable, check_vm_slice
from popek.isa.state import NSLOTS

try:
    from popek.cores.c._p32core import ffi, lib
except ImportError as _e:  # not built: no compiler at install time, or not installed at all
    ffi = lib = None
    _REASON = (
        f"the extension module popek.cores.c._p32core is not built ({_e}); install a C compiler and reinstall popek"
    )
else:
    _REASON = ""

_MAX_BUDGET = (1 << 63) - 1


def available() -> bool:
    """True when the compiled C core can be used."""
    return lib is not None


def unavailable_reason() -> str:
    """Why the C core is unavailable ('' when it is available)."""
    return _REASON


def constants() -> dict[str, int]:
    """Every ``P32_*`` constant of the generated header (p32_tables.h), as compiled into the extension."""
    if lib is None:
        raise CoreUnavailable(f"the C core is unavailable: {_REASON}")
    return {name: getattr(lib, name) for name in dir(lib) if name.startswith("P32_")}


def tables() -> dict[str, list[int]]:
    """The per-opcode decode tables of the generated header (``p32_<name>[256]``), as compiled into the extension."""
    if lib is None:
        raise CoreUnavailable(f"the C core is unavailable: {_REASON}")
    arrays = [n for n in dir(lib) if n.startswith("p32_") and ffi.typeof(getattr(lib, n)).kind == "array"]
    return {name.removeprefix("p32_"): list(getattr(lib, name)) for name in arrays}


# Arrays already handed to C: id -> (weak reference, pointer, length). Taking a numpy array's buffer costs
# more than a short run, so each array is bound once; the weak reference tells a live array from a new one
# that reuses a dead array's id, and the length check catches an array resized since.
_bound: dict[int, tuple[weakref.ref, object, int]] = {}
_I64, _U8 = np.dtype(np.int64), np.dtype(np.uint8)


def _bind(arr: np.ndarray, ctype: str, dtype: np.dtype, min_len: int, what: str) -> tuple[weakref.ref, object, int]:
    if lib is None:
        raise CoreUnavailable(f"the C core is unavailable: {_REASON}")
    if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != 1 or len(arr) < min_len:
        raise ValueError(f"{what} must be a 1-D {dtype} numpy array of at least {min_len} elements")
    # from_buffer refuses non-contiguous and read-only arrays, so C always writes into the caller's array.
    ptr = ffi.cast(ctype + " *", ffi.from_buffer(ctype + "[]", arr, require_writable=True))
    if len(_bound) >= 64:
        _bound.clear()
    entry = _bound[id(arr)] = (weakref.ref(arr), ptr, len(arr))
    return entry


def _ptr(arr: np.ndarray, ctype: str, dtype: np.dtype, min_len: int, what: str) -> tuple[object, int]:
    """The C pointer to ``arr``'s buffer and its length (bound once per array)."""
    entry = _bound.get(id(arr))
    if entry is None or entry[0]() is not arr or entry[2] != len(arr):
        entry = _bind(arr, ctype, dtype, min_len, what)
    return entry[1], entry[2]


def run(state: np.ndarray, mem: np.ndarray, budget: int) -> int:
    """Run at most ``budget`` steps of the machine in ``state``/``mem`` on the C core; return the exit code."""
    s = _ptr(state, "int64_t", _I64, NSLOTS, "state")[0]
    m, memsize = _ptr(mem, "uint8_t", _U8, 0, "mem")
    return lib.p32_run(s, m, memsize, budget if budget < _MAX_BUDGET else _MAX_BUDGET)


def run_console(state: np.ndarray, mem: np.ndarray, budget: int, console: np.ndarray) -> tuple[int, int]:
    """``run``, console output into ``console`` while it has room; return (exit code, bytes written there)."""
    s = _ptr(state, "int64_t", _I64, NSLOTS, "state")[0]
    m, memsize = _ptr(mem, "uint8_t", _U8, 0, "mem")
    out, room = _ptr(console, "uint8_t", _U8, 0, "console")
    nout = ffi.new("int64_t *")
    code = lib.p32_run_console(s, m, memsize, budget if budget < _MAX_BUDGET else _MAX_BUDGET, out, room, nout)
    return code, nout[0]


def run_vm(
    vstate: np.ndarray,
    rstate: np.ndarray,
    host_mem: np.ndarray,
    offset: int,
    memsize: int,
    budget: int,
    flags: int,
    mode: int,
    counters: np.ndarray,
    console: np.ndarray,
) -> int:
    """The VM-exit loop on the C core (``p32_run_vm``; popek/cores/vmexit.py describes it); a VMX_* code."""
    check_vm_slice(host_mem, offset, memsize, counters, lib.P32_NCOUNTERS)
    if not 0 <= counters[lib.P32_CNT_CONSOLE] <= len(console):
        raise ValueError("the console count lies outside the console buffer")
    v = _ptr(vstate, "int64_t", _I64, NSLOTS, "vstate")[0]
    r = _ptr(rstate, "int64_t", _I64, NSLOTS, "rstate")[0]
    m, host_size = _ptr(host_mem, "uint8_t", _U8, 0, "host_mem")
    cnt = _ptr(counters, "int64_t", _I64, lib.P32_NCOUNTERS, "counters")[0]
    out, room = _ptr(console, "uint8_t", _U8, 0, "console")
    budget = budget if budget < _MAX_BUDGET else _MAX_BUDGET
    return lib.p32_run_vm(v, r, m, host_size, offset, memsize, budget, flags, mode, cnt, out, room)
