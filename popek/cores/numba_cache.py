"""Numba's on-disk cache for the compiled cores: where it is kept, and dropping it when code compiled in changes.

Numba keeps compiled code in the package's __pycache__ when it can write there, else in its user-wide cache
(~/.cache/numba).  When neither is writable (a read-only install with a read-only or absent home), Numba would
refuse to cache at all and fail at import, so we then point it at a directory of our own (``CACHE_DIR``).

Numba keys a function's cache on the file that defines it alone, not on the modules it takes code or constants
from; ``drop_stale_cache`` keeps a digest of those beside the cache and empties the cache when it changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numba
from numba import njit


def writable(path: str) -> bool:
    """True when ``path`` is (or can be made) a directory this process can create files in."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def fallback_cache_dir() -> str | None:
    """Where to cache compiled code: None when Numba's own choice is writable, else a directory ('' for none)."""
    from numba.misc.appdirs import AppDirs

    if numba.config.CACHE_DIR:
        return None  # NUMBA_CACHE_DIR is set: the user chose
    if writable(os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")):
        return None
    if writable(AppDirs(appname="numba", appauthor=False).user_cache_dir):
        return None
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates = [os.path.join(xdg, "popek", "numba")]
    with contextlib.suppress(OSError):  # gettempdir raises when no temporary directory is usable
        user = os.getuid() if hasattr(os, "getuid") else "user"
        candidates.append(os.path.join(tempfile.gettempdir(), f"popek-numba-{user}"))
    for candidate in candidates:
        if writable(candidate):
            return candidate
    return ""  # nowhere to write: compile without caching


@contextlib.contextmanager
def cache_dir(path: str | None) -> Iterator[None]:
    """Make Numba choose ``path`` as the cache directory for functions decorated inside this block."""
    old = numba.config.CACHE_DIR
    if path:
        numba.config.CACHE_DIR = path
    try:
        yield
    finally:
        numba.config.CACHE_DIR = old


CACHE_DIR = fallback_cache_dir()


def cached_njit(fn: Callable, registry: list) -> Callable:
    """``njit`` with the on-disk cache (in ``CACHE_DIR``), releasing the GIL; the dispatcher joins ``registry``."""
    with cache_dir(CACHE_DIR):
        dispatcher = njit(cache=CACHE_DIR != "", nogil=True)(fn)
    registry.append(dispatcher)
    return dispatcher


def drop_stale_cache(dispatchers: list, dependencies: tuple[ModuleType, ...], name: str) -> bool:
    """Empty the functions' on-disk cache if the files compiled into them changed; True if it did.

    The digest of the ``dependencies`` is kept in ``<name>.dependencies`` beside the cache: one name per set
    of functions, since the cores of one package share a cache directory.
    """
    caches = [getattr(d, "_cache", None) for d in dispatchers]
    caches = [c for c in caches if isinstance(getattr(c, "cache_path", None), str)]
    if not caches or not os.path.isdir(caches[0].cache_path):
        return False
    digest = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in dependencies)).hexdigest()
    marker = Path(caches[0].cache_path) / f"{name}.dependencies"
    with contextlib.suppress(OSError):
        if marker.read_text() == digest:
            return False
    with contextlib.suppress(OSError):
        for cache in caches:
            cache.flush()
        marker.write_text(digest)
    return True
