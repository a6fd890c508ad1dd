"""Shared test helpers: tolerances, the seeded rng, and the ``backend`` fixture.

Backends
--------
Tests that take the ``backend`` fixture run once per backend: ``"cpu"`` always, and
``"cuda"`` where numba's CUDA target is available (a real GPU, or the CUDA simulator when
``NUMBA_ENABLE_CUDASIM=1`` was set before numba was imported). Every such test compares
the backend's result with ``dynconv_np.reference`` (float64), so CPU and CUDA answer to the
same oracle on the same grids.

The CUDA cases carry the ``cuda`` marker. Where no GPU is present, a plain ``pytest`` run
skips them and ``tests/test_simulator.py`` reruns them in a subprocess under the
simulator: ``NUMBA_ENABLE_CUDASIM=1 pytest -m cuda --require-cuda``. With
``--require-cuda`` a CUDA case that cannot run fails instead of skipping, so that run
proves every CUDA case ran (no output to grep).

Grids
-----
One grid per op family: ``over_backends(cases, cuda)`` parametrises a test over
``(backend, ...)`` with every case on the CPU and the tiny `cuda` cases on CUDA too (the
simulator runs one Python thread per CUDA thread). ``cuda_only`` marks a case that
exists only for CUDA (tile edges, foreign arrays, host/device mixing).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

HAVE_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
IN_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
NO_NUMBA_CUDA = 'numba-cuda is not installed (pip install -e ".[cuda]")'
DTYPES = [np.float32, np.float64]


def pytest_addoption(parser):
    parser.addoption("--require-cuda", action="store_true",
                     help="CUDA cases fail instead of skipping when no GPU or simulator is available")


SIMULATOR_TEST = "test_simulator.py::test_cuda_cases_under_the_simulator"


def pytest_collection_modifyitems(config, items):
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is not None and spec.params.get("backend") == "cuda":
            item.add_marker(pytest.mark.cuda)


def pytest_collection_finish(session):
    # After -k/-m deselection: start the simulator run only when its test will run.
    if any(item.nodeid.endswith(SIMULATOR_TEST) for item in session.items):
        import simulator_run

        simulator_run.start()  # beside this run: it is one Python thread, the suite mostly another


def pytest_unconfigure(config):
    import sys

    run = sys.modules.get("simulator_run")
    if run is not None:
        run.stop()


def cuda_unavailable() -> str | None:
    """None when CUDA kernels can run in this process, else the reason they cannot."""
    if not HAVE_NUMBA_CUDA:
        return NO_NUMBA_CUDA
    from numba import cuda

    if not cuda.is_available():
        return "no CUDA GPU in this process: tests/test_simulator.py runs these under the simulator"
    return None


class Backend:
    """One backend as the tests see it: moves host arrays there and results back."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name

    @property
    def be(self):
        """The backend module itself (``dynconv_np.backends.cpu`` or ``.cuda``)."""
        from dynconv_np import backends

        return backends.get(self.name)

    def put(self, a):
        """Host array -> an array of this backend (None stays None)."""
        if a is None or self.name == "cpu":
            return a
        from dynconv_np import arrays

        return arrays.to_device(np.ascontiguousarray(a))

    def get(self, a):
        """An array of this backend -> a host array, checking it lives on this backend."""
        if a is None:
            return None
        from dynconv_np import arrays

        device = arrays.device_of(a)
        assert device == self.name, f"expected a {self.name} array, got a {device} array ({type(a).__name__})"
        return np.asarray(arrays.to_host(a))


@pytest.fixture(params=["cpu", "cuda"])
def backend(request) -> Backend:
    """Each backend in turn; the CUDA case skips (or fails under --require-cuda) without CUDA."""
    if request.param == "cuda":
        reason = cuda_unavailable()
        if reason:
            if request.config.getoption("--require-cuda"):
                pytest.fail(reason)
            pytest.skip(reason)
    return Backend(request.param)


def over_backends(cases, cuda):
    """Parameters for ``@pytest.mark.parametrize("backend, a, b", over_backends(...), indirect=["backend"])``.

    One grid per op family: every case of `cases` runs on the CPU, the cases of `cuda` (tiny
    ones: the simulator runs one Python thread per CUDA thread) on CUDA and on the CPU too.
    A case is a tuple of the parameters after ``backend``.
    """
    cpu = list(cases) + [c for c in cuda if c not in cases]
    return [pytest.param("cpu", *c) for c in cpu] + [pytest.param("cuda", *c) for c in cuda]


# A CUDA-only case (tile edges, foreign arrays, device errors): the ``backend`` fixture
# with "cuda" alone, so it carries the cuda marker and runs in the simulator run.
cuda_only = pytest.mark.parametrize("backend", ["cuda"], indirect=True)


def assert_close(actual, expected, dtype, name="", f32_tol=2e-5):
    """Compare with a float64 oracle, with a dtype-dependent tolerance relative to its scale."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    tol = (f32_tol if np.dtype(dtype) == np.float32 else 1e-11) * scale
    err = float(np.abs(actual - expected).max(initial=0.0))
    assert err <= tol, f"{name}: max abs error {err:.3e} > {tol:.3e}"


def check_vjp(backend: Backend, f, ref, ref_backward, args, kwargs, dtype, rng, f32_tol=2e-5, twice=False):
    """Run ``f.vjp`` on `backend` in `dtype` and compare ``y`` and every gradient with the
    float64 reference ``ref(*args, **kwargs)`` / ``ref_backward(dy, *args, **kwargs)``.

    `args` are host arrays (any float dtype; None for an absent optional array) or other
    values passed through. Also checks that the inputs were not modified and that results
    live on the backend; with `twice`, that a second call of the pullback gives bitwise the
    same gradients. Returns ``(y, grads)`` as host arrays.
    """
    is_arr = [isinstance(a, np.ndarray) for a in args]
    ref_args = [a.astype(np.float64) if m else a for a, m in zip(args, is_arr)]
    y_ref = ref(*ref_args, **kwargs)
    dy = rng.standard_normal(np.shape(y_ref))
    g_ref = ref_backward(dy, *ref_args, **kwargs)

    dev_args = [backend.put(a.astype(dtype)) if m else a for a, m in zip(args, is_arr)]
    before = [np.array(backend.get(a), copy=True) if m else None for a, m in zip(dev_args, is_arr)]
    y, pb = f.vjp(*dev_args, **kwargs)
    assert np.dtype(y.dtype) == np.dtype(dtype)
    y_host = backend.get(y)
    assert_close(y_host, y_ref, dtype, "y", f32_tol)
    grads = pb(backend.put(dy.astype(dtype)))
    assert len(grads) == len(g_ref), f"{len(grads)} gradients, reference has {len(g_ref)}"
    out = []
    for i, (a, r) in enumerate(zip(grads, g_ref)):
        if r is None:
            assert a is None, f"grad {i} should be None"
            out.append(None)
            continue
        a_host = backend.get(a)
        assert np.dtype(a.dtype) == np.dtype(dtype) and a_host.shape == np.shape(r), f"grad {i}"
        assert_close(a_host, r, dtype, f"grad {i}", f32_tol)
        out.append(a_host)
    if twice:
        for i, (a, b) in enumerate(zip(pb(backend.put(dy.astype(dtype))), out)):
            assert (a is None) == (b is None), f"grad {i} on the second call"
            if b is not None:
                np.testing.assert_array_equal(backend.get(a), b, err_msg=f"grad {i} on the second call")
    for a, b, m in zip(dev_args, before, is_arr):
        if m:
            np.testing.assert_array_equal(backend.get(a), b, err_msg="an input was modified")
    return y_host, out


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
