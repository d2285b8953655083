"""cffi build script (API mode) for the C core: compiles core.c into the module ``popek.cores.c._p32core``.

setup.py hands it to setuptools with ``cffi_modules``, so ``pip install .`` / ``pip install -e .`` builds it.
For a quick rebuild in a checkout: ``python popek/cores/c/build_core.py``.
Before anything is compiled, gen_tables.py writes p32_tables.h (the constants and decode tables core.c uses)
from popek/isa/spec.py and popek/isa/state.py. The cdef exposes ``p32_run``, ``p32_run_console``, ``p32_run_vm``
and everything in that header (every ``P32_*`` constant and the ``p32_*`` tables), so tests can compare what was
compiled with Python's.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]  # the project root, where setuptools runs a build


def _path(p: Path) -> str:
    # setuptools prefers source paths relative to the project root, which is the working directory of a build.
    return os.path.relpath(p, ROOT) if Path.cwd().resolve() == ROOT else str(p)


def _generator() -> ModuleType:
    """gen_tables.py, loaded from its file with this tree's popek.isa importable.

    Not imported as popek.cores.c.gen_tables: that would load the package, and with it a previously built
    extension, into the process that is about to overwrite it.
    """
    sys.path.insert(0, str(ROOT))
    try:
        spec = importlib.util.spec_from_file_location("_p32_gen_tables", HERE / "gen_tables.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT))
    return module


_gen = _generator()
_gen.write_header(HERE / "p32_tables.h")

CDEF = (
    "int p32_run(int64_t *state, uint8_t *mem, int64_t memsize, int64_t budget);\n"
    "int p32_run_console(int64_t *state, uint8_t *mem, int64_t memsize, int64_t budget, uint8_t *console,"
    " int64_t room, int64_t *nout);\n"
    "int p32_run_vm(int64_t *v, int64_t *r, uint8_t *host_mem, int64_t host_memsize, int64_t offset,"
    " int64_t memsize, int64_t budget, int64_t flags, int mode, int64_t *cnt, uint8_t *console, int64_t room);\n"
    + _gen.cdef()
)

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "popek.cores.c._p32core",
    '#include "core.h"\n',
    sources=[_path(HERE / "core.c")],
    include_dirs=[_path(HERE)],
    depends=[_path(HERE / "core.h"), _path(HERE / "p32_tables.h")],
    # -fno-crossjumping keeps GCC from merging the dispatch at the end of every handler back into one
    # indirect jump, which would undo the point of computed goto (about 1.5x on the sieve benchmark).
    extra_compile_args=["/O2"] if sys.platform == "win32" else ["-O2", "-fno-crossjumping"],
)

if __name__ == "__main__":
    os.chdir(ROOT)
    ffibuilder.compile(tmpdir=str(ROOT), verbose=True)
