"""python -m dynconv_np: commands, --help, --version, check's filter, list, table and cache notice."""

import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dynconv_np as dc
from dynconv_np import __main__ as cli
from dynconv_np.checks import Case, all_cases

ROOT = Path(__file__).resolve().parent.parent


def run(*argv, env=None, timeout=600):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "dynconv_np", *argv], cwd=ROOT, env=e, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_every_command_with_one_line():
    r = run("--help")
    assert r.returncode == 0
    for name, (help_line, _) in cli.COMMANDS.items():
        assert re.search(rf"^\s+{name}\s+{re.escape(help_line)}$", r.stdout, re.M), r.stdout
    assert "--version" in r.stdout


def test_version_and_usage_errors():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"dynconv_np {dc.__version__}"
    r = run()
    assert r.returncode == 2 and "check" in r.stderr
    r = run("chek")
    assert r.returncode == 2 and "invalid choice: 'chek'" in r.stderr


def test_a_registered_function_is_a_command(capsys):
    @cli.command("hello", "say hello to the test")
    def hello(argv):
        print("hello", *argv)
        return 3

    try:
        assert cli.main(["hello", "a", "b"]) == 3
        assert capsys.readouterr().out == "hello a b\n"
        with pytest.raises(SystemExit):
            cli._parser().parse_args(["--help"])
        assert re.search(r"^\s+hello\s+say hello to the test$", capsys.readouterr().out, re.M)
    finally:
        del cli.COMMANDS["hello"]


def test_list_and_case_insensitive_filter():
    labels = [c.label for c in all_cases()]
    r = run("check", "--list")
    assert r.returncode == 0 and r.stdout.splitlines() == labels
    r = run("check", "-k", "CONV2D S2", "--list")
    got = r.stdout.splitlines()
    assert r.returncode == 0 and got == [s for s in labels if "conv2d s2" in s.lower()]
    assert "conv2d s2 p1 d(1,2) g2" in got and "nn.Conv2d s2 p1 g2 train" in got


def test_no_match_is_an_error_with_a_message():
    r = run("check", "-k", "no such case", "--no-progress")
    assert r.returncode == 2 and r.stdout == ""
    assert "no case label contains 'no such case'" in r.stderr and "--list" in r.stderr


def test_check_table_aligned_with_tolerances_and_case_summary():
    # running_mean and running_var are the longest argument names of the built-in cases
    r = run("check", "-k", "batch_norm eval", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    head, rows, summary = lines[0], lines[1:-1], lines[-1]
    assert head.split() == ["case", "argument", "mode", "max", "abs", "err", "max", "rel", "err", "atol", "rtol",
                            "result"]
    assert [row.split("  ")[0].strip() for row in rows] == ["batch_norm eval NCHW"] * 5
    assert {"running_mean", "running_var"} <= {row.split()[3] for row in rows}
    # every row ends where the header's columns end: right-aligned numbers, left-aligned text
    result_at = head.index("result")
    assert all(row[result_at:].strip() == "pass" and row[result_at - 1] == " " for row in rows)
    for col in ("max abs err", "max rel err", "atol", "rtol"):
        end = head.index(col) + len(col)
        assert all(row[end - 1] != " " and row[end] == " " for row in rows), col
    assert all(" 1e-05 " in row and " 1e-04 " in row for row in rows)
    assert re.fullmatch(r"1 case passed, 0 failed \(5 arguments: 5 passed, 0 failed; [\d.]+ s\)", summary)


def test_check_counts_cases_and_fails_with_status_1(monkeypatch, capsys):
    class Planted:
        __name__ = "planted_linear"
        array_params = dc.linear.array_params

        def __call__(self, *a):
            return dc.linear(*a)

        def vjp(self, *a):
            y, pb = dc.linear.vjp(*a)
            return y, lambda dy: (pb(dy)[0] * 1.01, *pb(dy)[1:])

    r = np.random.default_rng(0)
    a, w, b = r.standard_normal((3, 4)), r.standard_normal((2, 4)), r.standard_normal(2)
    cases = [Case("good linear", dc.linear, (a, w, b), mode="full"),
             Case("bad linear", Planted(), (a, w, b), mode="full", atol=1e-6, rtol=1e-5),
             Case("crashing case", dc.linear, (a, w[:, :3]), mode="full")]
    monkeypatch.setattr("dynconv_np.checks.all_cases", lambda: cases)
    assert cli.main(["check", "--no-progress"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"1 case passed, 2 failed \(6 arguments: 5 passed, 1 failed; [\d.]+ s\)", out[-1])
    bad = [row for row in out if row.startswith("bad linear")]
    assert [row.split()[-1] for row in bad] == ["FAIL", "pass", "pass"]
    assert all(" 1e-06 " in row and " 1e-05 " in row for row in bad)
    crash = next(row for row in out if row.startswith("crashing case"))
    assert "ERROR ValueError" in crash
    assert cli.main(["check", "-k", "GOOD", "--no-progress"]) == 0


def test_cold_numba_cache_notice(tmp_path):
    cache = tmp_path / "numba_cache"
    cache.mkdir()
    label = "hard_sigmoid scale=6"
    r = run("check", "-k", label, env={"NUMBA_CACHE_DIR": str(cache)})
    first = r.stderr
    assert r.returncode == 0
    assert r.stderr.count("compiling kernels (first run only; cached in ") == 1 and str(cache) in r.stderr
    r = run("check", "-k", label, "--list", env={"NUMBA_CACHE_DIR": str(cache)})
    assert "compiling" not in r.stderr
    # Warm means: the CPU kernels' folder holds an index newer than every backend source
    # (an index from before a source changed is stale: those kernels compile again).
    folder = Path(first.split("cached in ", 1)[1].rsplit(")", 1)[0])
    assert folder.parent == cache
    folder.mkdir(exist_ok=True)
    (folder / "kernel-1.py311.nbi").write_bytes(b"")
    r = run("check", "-k", label, env={"NUMBA_CACHE_DIR": str(cache)})
    assert r.returncode == 0 and "compiling" not in r.stderr


# ----------------------------------------------------------------------------- benchmarks/compare.py


def test_compare_torch_contender_without_torch_is_an_error():
    code = ("import sys, runpy; sys.modules['torch'] = None; "
            "sys.argv = ['compare.py', '--contenders', 'torch', '--shapes', 'batch1']; "
            "sys.exit(runpy.run_path('benchmarks/compare.py', run_name='not_main')['main']())")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "PyTorch is not installed" in r.stderr and r.stdout == ""


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_compare_default_plot_is_git_ignored():
    ns = runpy.run_path(str(ROOT / "benchmarks" / "compare.py"), run_name="not_main")
    path = ns["DEFAULT_PLOT"]
    assert not path.startswith("docs")
    r = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
    assert r.returncode == 0, f"{path} is not git-ignored"


def test_compare_set_threads_limits_the_loaded_blas():
    # NumPy loads OpenBLAS before the benchmark scripts read --threads: the setting must
    # reach the loaded library, not only the environment variables
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import numpy, compare; "
            "from threadpoolctl import threadpool_info; compare._set_threads(1); "
            "print(sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                             "MKL_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[1]"
