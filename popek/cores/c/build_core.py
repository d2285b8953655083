"""cffi build script (API mode) for the C core: compiles core.c into the module ``popek.cores.c._p32core``.

setup.py hands it to setuptools with ``cffi_modules``, so ``pip install .`` / ``pip install -e .`` builds it.
For a quick rebuild in a checkout: ``python popek/cores/c/build_core.py``.
The cdef exposes ``p32_run`` and every ``P32_*`` constant of core.h, so tests can compare them with Python's.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]  # the project root, where setuptools runs a build
_CONSTANT = re.compile(r"^#define (P32_[A-Z0-9_]+) +-?\d+\b", re.MULTILINE)


def constant_names() -> list[str]:
    """The names of the integer constants defined in core.h, in file order."""
    return _CONSTANT.findall((HERE / "core.h").read_text())


def _path(p: Path) -> str:
    # setuptools prefers source paths relative to the project root, which is the working directory of a build.
    return os.path.relpath(p, ROOT) if Path.cwd().resolve() == ROOT else str(p)


CDEF = "int p32_run(int64_t *state, uint8_t *mem, int64_t memsize, int64_t budget);\n" + "".join(
    f"#define {name} ...\n" for name in constant_names()
)

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "popek.cores.c._p32core",
    '#include "core.h"\n',
    sources=[_path(HERE / "core.c")],
    include_dirs=[_path(HERE)],
    depends=[_path(HERE / "core.h")],
    # -fno-crossjumping keeps GCC from merging the dispatch at the end of every handler back into one
    # indirect jump, which would undo the point of computed goto (about 1.5x on the sieve benchmark).
    extra_compile_args=["/O2"] if sys.platform == "win32" else ["-O2", "-fno-crossjumping"],
)

if __name__ == "__main__":
    os.chdir(ROOT)
    ffibuilder.compile(tmpdir=str(ROOT), verbose=True)
