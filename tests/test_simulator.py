"""Every CUDA case of the suite, under the CUDA simulator, in a fresh interpreter.

``NUMBA_ENABLE_CUDASIM=1`` must be set before numba is imported, which a plain
``python -m pytest`` has already done; so this test reruns the ``cuda``-marked cases
(the ``backend="cuda"`` parametrisations, see conftest.py) in a subprocess with the
variable set and ``--require-cuda``, under which a CUDA case that cannot run fails
rather than skips. Its exit status alone says whether every CUDA case passed.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HAVE_NUMBA_CUDA, IN_SIMULATOR, NO_NUMBA_CUDA, cuda_unavailable

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
def test_cuda_cases_under_the_simulator():
    if not HAVE_NUMBA_CUDA:
        pytest.skip(NO_NUMBA_CUDA)
    if IN_SIMULATOR or cuda_unavailable() is None:
        pytest.skip("CUDA is available in this process: the cuda cases ran here")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "--require-cuda",
           "--deselect", f"{Path(__file__).name}::test_cuda_cases_under_the_simulator", str(TESTS)]
    proc = subprocess.run(cmd, cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=2400)
    out = proc.stdout + proc.stderr
    # exit 5: nothing collected, which would mean no CUDA case exists any more
    assert proc.returncode == 0, f"simulator run failed (rc={proc.returncode}):\n{out[-6000:]}"
