"""``python -m dynconv_np study``: the digits study (needs scikit-learn and matplotlib)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dynconv_np import nn

ROOT = Path(__file__).resolve().parent.parent


def run(*argv, pre="", timeout=300):
    code = f"{pre}\nimport sys\nfrom dynconv_np.__main__ import main\nsys.exit(main({list(argv)!r}))"
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_study_lists_its_variants_without_its_extras():
    r = run("study", "--list", pre="import sys; sys.modules['sklearn'] = None")
    assert r.returncode == 0
    for name in ("conv", "mixture", "condconv", "dynamic", "dynamic_fixed", "dcd", "atom"):
        assert f"\n{name} " in "\n" + r.stdout
    for name in ("odconv", "ddf", "involution"):               # listed, marked when absent
        assert name in r.stdout


def test_the_study_says_what_to_install_when_an_extra_is_missing(tmp_path):
    r = run("study", "--quick", "--out", str(tmp_path), pre="import sys; sys.modules['sklearn'] = None")
    assert r.returncode == 2
    assert "scikit-learn" in r.stderr and "pip install 'dynconv_np[study]'" in r.stderr
    assert not any(tmp_path.iterdir())


def test_the_study_rejects_unknown_variants(tmp_path):
    r = run("study", "--variants", "conv,nope", "--out", str(tmp_path))
    assert r.returncode == 2 and "nope" in r.stderr and "available: conv" in r.stderr


def test_study_quick_writes_the_table_and_figures(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    # the reduced test setting: two variants, one epoch, 96 training images
    r = run("study", "--quick", "--variants", "conv,dynamic", "--epochs", "1", "--limit", "96",
            "--batch-size", "32", "--out", str(tmp_path), "--no-progress")
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "results.md").read_text()
    assert "| Conv2d | 14,538 |" in md and "| DynamicConv2d (K=4, tau 30->1) |" in md
    for fig in ("curves.png", "entropy.png", "per_class.png"):
        assert (tmp_path / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({fig})" in md
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["settings"]["epochs"] == 1 and res["settings"]["limit"] == 96
    dyn = res["variants"][1]["runs"][0]
    assert set(dyn["entropy"]) == {"3:pi", "6:pi"} and len(dyn["entropy"]["3:pi"]) == 1
    assert np.asarray(dyn["per_class"]["6:pi"]).shape == (10, 4)
    assert 0 <= dyn["test_accuracy"] <= 1 and len(dyn["history"]) == 1
    assert r.stdout.startswith("| layer |")


def test_every_available_variant_builds_trains_and_counts(tmp_path):
    from dynconv_np.study import available_variants, build_model

    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    for v in available_variants():
        net = build_model(v, seed=0)
        y = net(x)
        assert y.shape == (2, 10), v.name
        net.backward(np.ones_like(y))
        s = nn.summary(net, (1, 16, 16))
        assert s.total_params == net.num_params()
        if v.requires is None:
            assert s.complete, v.name
        assert np.array_equal(build_model(v, seed=0).state_dict()["0.weight"], net.state_dict()["0.weight"])
