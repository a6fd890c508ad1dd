import numpy as np
import pytest


def assert_close(actual, expected, dtype, name="", f32_tol=2e-5):
    """Compare with a float64 oracle, with a dtype-dependent tolerance relative to its scale."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    tol = (f32_tol if np.dtype(dtype) == np.float32 else 1e-11) * scale
    err = float(np.abs(actual - expected).max(initial=0.0))
    assert err <= tol, f"{name}: max abs error {err:.3e} > {tol:.3e}"


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
