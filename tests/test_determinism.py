"""Bitwise-identical results whatever NUMBA_NUM_THREADS is (8 oversubscribes 2 cores)."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import hashlib
    import numpy as np
    import dynconv_np as dc
    from dynconv_np.checks import all_cases

    h = hashlib.sha256()

    def feed(a):
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())

    def run(f, args, kwargs):
        y, pb = f.vjp(*args, **kwargs)
        feed(y)
        dy = np.random.default_rng(7).standard_normal(np.shape(y)).astype(y.dtype)
        for g in pb(dy):
            feed(g)

    # every built-in case of every op family, in float64 and float32
    for c in all_cases():
        run(c.f, c.args, c.kwargs)
        a32 = tuple(a.astype(np.float32) if isinstance(a, np.ndarray) else a for a in c.args)
        run(c.f, a32, c.kwargs)
    # a case big enough to be chunked and spread over every thread
    r = np.random.default_rng(3)
    x = r.standard_normal((9, 16, 23, 19)).astype(np.float32)
    W = r.standard_normal((4, 16, 8, 3, 3)).astype(np.float32)
    pi = r.random((9, 4)).astype(np.float32)
    b = r.standard_normal((4, 16)).astype(np.float32)
    run(dc.dynamic_conv2d, (x, W, pi, b), dict(padding=1, groups=2))
    run(dc.dynamic_conv2d, (x, W, pi[0], b), dict(stride=2, dilation=2, groups=2))
    run(dc.conv2d, (x, W[0, :, :, :2]), dict(stride=(1, 2), padding=(2, 0), groups=2))
    # ODConv (a batch over every thread, and a batch of one) and the 1-D forms
    att = [r.random(s).astype(np.float32) for s in ((9, 4), (9, 3, 3), (9, 16), (9, 16))]
    run(dc.odconv2d, (x, W, *att), dict(stride=2, padding=1, groups=2))
    run(dc.odconv2d, (x[:1], W, *(a[:1] for a in att)), dict(padding=1, groups=2))
    run(dc.dynamic_conv1d, (x[:, :, 0], W[..., 0], pi, b), dict(padding=1, dilation=2, groups=2))
    # the thin mixing products of a batch wider than 64 (pi @ W and pi^T @ G in chunks)
    xw = r.standard_normal((80, 32, 5, 5)).astype(np.float32)
    Ww = r.standard_normal((4, 32, 32, 3, 3)).astype(np.float32)
    run(dc.dynamic_conv2d, (xw, Ww, r.random((80, 4)).astype(np.float32)), dict(padding=1))
    # batch norm's per-channel sums and the ReLU gradient (Numba kernels), over every thread
    run(dc.batch_norm, (x, b[0], b[1]), {})
    run(dc.relu, (x,), {})
    print(h.hexdigest())
""")


def _digest(threads: int) -> str:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_bitwise_identical_across_thread_counts():
    digests = {t: _digest(t) for t in (1, 2, 8)}
    assert len(set(digests.values())) == 1, digests
