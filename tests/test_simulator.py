"""Every CUDA case of the suite, under the CUDA simulator, in a fresh interpreter.

``NUMBA_ENABLE_CUDASIM=1`` must be set before numba is imported, which a plain
``python -m pytest`` has already done; so the ``cuda``-marked cases (the
``backend="cuda"`` parametrisations, see conftest.py) rerun in a subprocess with the
variable set and ``--require-cuda``, under which a CUDA case that cannot run fails
rather than skips (tests/simulator_run.py; conftest.py starts it when the suite is
collected, so that it runs beside the rest). Its exit status alone says whether every
CUDA case passed.
"""

import pytest
import simulator_run
from conftest import HAVE_NUMBA_CUDA, IN_SIMULATOR, NO_NUMBA_CUDA, cuda_unavailable


@pytest.mark.slow
def test_cuda_cases_under_the_simulator():
    if not HAVE_NUMBA_CUDA:
        pytest.skip(NO_NUMBA_CUDA)
    if IN_SIMULATOR or cuda_unavailable() is None:
        pytest.skip("CUDA is available in this process: the cuda cases ran here")
    rc, out = simulator_run.result()
    # exit 5: nothing collected, which would mean no CUDA case exists any more
    assert rc == 0, f"simulator run failed (rc={rc}):\n{out[-6000:]}"
