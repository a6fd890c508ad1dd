"""Where the compiled CPU kernels are cached, and when a cached kernel is stale.

Numba caches a ``cache=True`` kernel with a stamp of its own source file only, but the
kernels are built from helpers in other files too (``backends/_index.py``,
``cpu/index.py``, ``cpu/unfold.py``, ...) that Numba compiles into them. :func:`install`
adds a cache locator for the files of this package's backends: it keeps Numba's choice
of folder (``NUMBA_CACHE_DIR`` when set, else the ``__pycache__`` folder next to the
kernel when it is writable, else Numba's user-wide cache folder) and stamps every
kernel with a hash of all the sources its backend compiles from, its own folder's and
the shared ``backends/*.py`` (those that mention numba). So after any of them changes, the cached kernels of that
backend no longer match and are compiled again (their cache files are overwritten in
place), as Numba does for an edit of the kernel's own file.

The locator is Numba's documented extension point (a class in the list of
``numba.core.caching``'s cache implementation); with a Numba that lacks it, kernels are
cached with Numba's stamp alone.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

BACKENDS = Path(__file__).resolve().parent

#: backend folder -> the folder its kernels are cached in (filled by the locator).
CACHE_DIRS: dict[Path, Path] = {}


def kernel_sources(folder: Path) -> list[Path]:
    """The ``*.py`` files of `folder` and the shared ``backends/*.py`` that kernels can be
    compiled from: those that mention numba (a pure-Python planner's edit compiles nothing)."""
    paths = sorted({*BACKENDS.glob("*.py"), *folder.glob("*.py")})
    return [p for p in paths if b"numba" in p.read_bytes()]


@functools.cache
def sources_hash(folder: Path) -> str:
    """SHA-256 of :func:`kernel_sources`, by name."""
    h = hashlib.sha256()
    for path in kernel_sources(folder):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _backend_folder(py_file: str) -> Path | None:
    # The backend folder (backends/cpu, backends/cuda) holding py_file, if any.
    try:
        folder = Path(py_file).resolve().parent
    except OSError:
        return None
    return folder if folder.parent == BACKENDS else None


@functools.cache
def _locator_class():
    """``(locator class, Numba's cache implementation class)``, the locator built on Numba's
    cache locator base; None when Numba has neither."""
    try:
        from numba.core import caching
    except ImportError:
        return None
    base = getattr(caching, "_CacheLocator", None)
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    if base is None or not isinstance(getattr(impl, "_locator_classes", None), list):
        return None

    class BackendSourcesLocator(base):
        """Numba's own locator for a kernel of a backend folder, with the stamp of
        :func:`sources_hash` added to its source stamp."""

        def __init__(self, inner, folder: Path):
            self._inner = inner
            self._stamp = sources_hash(folder)
            self._py_file = getattr(inner, "_py_file", None)

        def ensure_cache_path(self):
            self._inner.ensure_cache_path()

        def get_cache_path(self):
            return self._inner.get_cache_path()

        def get_source_stamp(self):
            return self._inner.get_source_stamp(), self._stamp

        def get_disambiguator(self):
            return self._inner.get_disambiguator()

        @classmethod
        def from_function(cls, py_func, py_file):
            folder = _backend_folder(py_file)
            if folder is None:
                return None
            for other in impl._locator_classes:
                if other is cls:
                    continue
                inner = other.from_function(py_func, py_file)
                if inner is not None:
                    CACHE_DIRS[folder] = Path(inner.get_cache_path())
                    return cls(inner, folder)
            return None

    return BackendSourcesLocator, impl


def install() -> bool:
    """Put the locator first in Numba's list (once); True when it is in place.

    Must run before the kernels are decorated: ``backends/cpu/__init__.py`` calls it
    before importing its modules.
    """
    found = _locator_class()
    if found is None:
        return False
    cls, impl = found
    if cls not in impl._locator_classes:
        impl._locator_classes.insert(0, cls)
    return True


def kernel_cache_dir() -> Path:
    """The folder holding the CPU kernels' cache files (importing the CPU backend)."""
    from . import cpu  # noqa: F401  (decorating its kernels fills CACHE_DIRS)

    found = CACHE_DIRS.get(BACKENDS / "cpu")
    if found is not None:
        return found
    env = os.environ.get("NUMBA_CACHE_DIR")         # no locator: the folder Numba starts from
    return Path(env) if env else BACKENDS / "cpu" / "__pycache__"


def cache_is_cold() -> bool:
    """True unless the CPU kernels' cache folder holds an index file (``*.nbi``) newer than
    every backend source: a first run, or the first after a backend source changed."""
    d = kernel_cache_dir()
    newest = max(p.stat().st_mtime for p in kernel_sources(BACKENDS / "cpu"))
    try:
        return not any(p.stat().st_mtime >= newest for p in d.glob("*.nbi"))
    except OSError:
        return True
