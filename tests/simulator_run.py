"""The CUDA cases under the simulator, in a subprocess started when the suite is collected.

``NUMBA_ENABLE_CUDASIM=1`` must be set before numba is imported, so the ``cuda``-marked
cases (the ``backend="cuda"`` parametrisations, see conftest.py) run in a fresh
interpreter with the variable set and ``--require-cuda``, under which a CUDA case that
cannot run fails rather than skips. The simulator runs on one Python thread, and the
rest of the suite mostly on another, so conftest.py starts it as soon as the suite is
collected (when ``tests/test_simulator.py`` is selected and the cases cannot run in this
process) and ``test_simulator.py`` waits for its exit status. Not a test module itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TIMEOUT_S = 2400

_proc: subprocess.Popen | None = None
_log = None


def _needed() -> bool:
    from conftest import HAVE_NUMBA_CUDA, IN_SIMULATOR, cuda_unavailable

    return HAVE_NUMBA_CUDA and not IN_SIMULATOR and cuda_unavailable() is not None


def command() -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "--require-cuda",
            "--deselect", "tests/test_simulator.py::test_cuda_cases_under_the_simulator", str(TESTS)]


def start() -> None:
    """Start the run (once), its output to a temporary file, if this process needs it."""
    global _proc, _log
    if _proc is not None or not _needed():
        return
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    _log = tempfile.TemporaryFile(mode="w+")
    _proc = subprocess.Popen(command(), cwd=TESTS.parent, env=env, stdout=_log, stderr=subprocess.STDOUT,
                             text=True)


def result() -> tuple[int, str]:
    """``(exit status, output)`` of the run, started now if it was not (waits for it)."""
    start()
    if _proc is None:
        raise RuntimeError("the simulator run is not needed in this process")
    try:
        rc = _proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _proc.kill()
        rc = _proc.wait()
    _log.seek(0)
    return rc, _log.read()


def stop() -> None:
    """Kill the run if it is still going (the suite ended or was interrupted first)."""
    if _proc is not None and _proc.poll() is None:
        _proc.kill()
        _proc.wait()
