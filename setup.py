"""Install-time build of the C core (popek/cores/c/core.c) through cffi; the project metadata lives in pyproject.toml.

The C core is optional: where no C compiler works, installation still succeeds with a warning, and
``popek.cores.c.available()`` reports False with the reason (the reference and JIT cores need no compiler).
"""

from __future__ import annotations

import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that turns a failure to compile the C core into a warning instead of a failed install."""

    def run(self) -> None:
        """Build the extensions; on any failure warn and go on without them."""
        try:
            super().run()
        except Exception as e:  # no compiler, compile or link error, missing Python headers ...
            self._skip(e)

    def build_extension(self, ext) -> None:
        """Build one extension; on failure warn and leave it out."""
        try:
            super().build_extension(ext)
        except Exception as e:
            self._skip(e)

    def _skip(self, error: Exception) -> None:
        msg = (
            f"WARNING: the C core (popek.cores.c._p32core) was not built: {error}\n"
            "WARNING: popek installs without it; the reference and JIT cores still work. "
            "Install a C compiler and reinstall to get it."
        )
        print(msg, file=sys.stderr)


setup(
    packages=[*find_packages(include=["popek", "popek.*"]), "popek.guests"],
    cffi_modules=["popek/cores/c/build_core.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
)
