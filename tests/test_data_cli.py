"""The command line with ``--data``: ode, simulate, sweep and factors on a tiny .npz, validate on
scikit-learn's iris, and the one-line errors (exit status 2).

Precision: the ODE and factors in float64; ``simulate --precision 64`` where a number is compared
with a direct NumPy value (1e-12 relative: the same float64 sum on both sides).
"""

import json

import numpy as np
import pytest

from clipdyn.cli import main
from clipdyn.data import cache as data_cache
from clipdyn.data import load_problem


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(data_cache.ENV, str(tmp_path / "cache"))


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 5)) + 1.0
    y = (X[:, 0] + rng.standard_t(3, 80) > 1).astype(np.int64)
    path = tmp_path / "mine.npz"
    np.savez(path, X=X, y=y)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_ode_with_data(capsys, npz):
    code, out, err = run(capsys, "ode", "--data", f"npz:path={npz}", "--eta", "0.5", "--clip", "1",
                         "--T", "2", "--points", "5", "--json")
    assert code == 0, err
    res = json.loads(out)
    R0 = load_problem(f"npz:path={npz}").R0
    assert res["risk"][0] == pytest.approx(R0, rel=1e-12)
    assert res["risk"][-1] < res["risk"][0] and not res["diverged"]


def test_simulate_and_sweep_with_data(capsys, npz, tmp_path):
    code, out, err = run(capsys, "simulate", "--data", f"npz:path={npz}", "--features", "relu:d=12,seed=1",
                         "--eta", "0.5", "--clip", "0.5", "--T", "2", "--points", "3", "--seeds", "2",
                         "--precision", "64", "--json")
    assert code == 0, err
    res = json.loads(out)
    R0 = load_problem(f"npz:path={npz}", "relu:d=12,seed=1").R0
    assert res["risk"][0][0] == pytest.approx(R0, rel=1e-12) and len(res["risk"]) == 2
    out_path = tmp_path / "sweep.npz"
    code, out, err = run(capsys, "sweep", "--data", f"npz:path={npz}", "--eta", "0.5", "--clip", "0.1,inf",
                         "--T", "1", "--points", "3", "--seeds", "1", "--out", out_path)
    assert code == 0, err
    meta = json.loads(out_path.with_suffix(".json").read_text())
    assert meta["config"]["data_fingerprint"] == load_problem(f"npz:path={npz}").fingerprint


@pytest.mark.parametrize("clip", [pytest.param("max-ccc", marks=pytest.mark.slow), "heuristic:kappa=1"])
def test_feedback_thresholds_with_data(capsys, npz, clip):
    # The residuals' Empirical law rides inside a feedback schedule, which a sweep stacks over its
    # configurations; its atoms then gain a leading axis, which the law used to refuse ("atoms must
    # be a non-empty 1-D array") on every dataset. float64: the CLI must give the Python API's numbers.
    from clipdyn.runs.sweep import simulate_runs
    from clipdyn.theory import schedules

    code, out, err = run(capsys, "simulate", "--data", f"npz:path={npz}", "--eta", "0.5", "--clip", clip,
                         "--T", "1", "--points", "3", "--seeds", "2", "--precision", "64", "--json")
    assert code == 0, err
    dp = load_problem(f"npz:path={npz}")
    law = dp.problem.noise
    sched = (schedules.max_ccc(0.5, law) if clip == "max-ccc" else schedules.heuristic(0.5, 1.0, law))
    want = simulate_runs(dp.problem, sched, [0, 1], 1.0, 3, data=dp, precision="64")
    np.testing.assert_allclose(json.loads(out)["risk"], want.risk[:, 0, :], rtol=1e-12)
    code, out, err = run(capsys, "validate", "--data", f"npz:path={npz}", "--eta", "0.5", "--clip", clip,
                         "--T", "1", "--points", "2", "--seeds", "2")
    assert code == 0, err


def test_factors_with_data_use_the_residual_law(capsys, npz):
    code, out, err = run(capsys, "factors", "--data", f"npz:path={npz}", "--R", "0.1", "--c", "1e6", "--json")
    assert code == 0, err
    rec = json.loads(out)[0]
    # c far above every residual: nothing is clipped, mu = 1 and nu_abs = 2R + E[eps^2].
    eps = load_problem(f"npz:path={npz}").residuals
    assert rec["mu"] == pytest.approx(1.0, abs=1e-12)
    assert rec["nu_abs"] == pytest.approx(0.2 + np.mean(eps ** 2), rel=1e-10)


def test_iris_raw_validate_end_to_end(capsys):
    code, out, err = run(capsys, "validate", "--data", "sklearn:name=iris", "--features", "raw",
                         "--eta", "0.5", "--clip", "0.5", "--T", "2", "--points", "5", "--seeds", "4",
                         "--json")
    assert code == 0, err
    res = json.loads(out)
    dp = load_problem("sklearn:name=iris", "raw")
    assert res["d_int"] == pytest.approx(dp.d_int, rel=1e-12)
    assert res["sim_mean"][0] == pytest.approx(dp.R0, rel=1e-6)  # float32 simulation
    assert res["max_rel_gap"] is not None and np.isfinite(res["max_rel_gap"])


@pytest.mark.parametrize("argv, match", [
    (["ode", "--data", "npz:path=/nonexistent/x.npz", "--eta", "1", "--clip", "1", "--T", "1"],
     r"npz: '/nonexistent/x\.npz' not found"),
    (["ode", "--data", "cifar10:path=/nonexistent", "--eta", "1", "--clip", "1", "--T", "1"],
     r"cifar10: folder '/nonexistent' not found; download the 'CIFAR-10 python version' from https://www\.cs\.toronto\.edu/~kriz/cifar\.html"),
    (["simulate", "--data", "sklearn:name=iris,path=x", "--eta", "1", "--clip", "1", "--T", "1"],
     r"unknown key\(s\) \['path'\]"),
    (["validate", "--data", "sklearn:name=iris", "--features", "relu:d=-3", "--eta", "1", "--clip", "1", "--T", "1"],
     r"d=-3 is not allowed"),
    (["ode", "--data", "sklearn:name=iris", "--R0", "2", "--eta", "1", "--clip", "1", "--T", "1"],
     r"--R0=2 is not allowed with --data"),
    # Given at all, even as the default's value: the dataset fixes the start, so 1 would be ignored.
    (["ode", "--data", "sklearn:name=iris", "--R0", "1", "--eta", "1", "--clip", "1", "--T", "1"],
     r"--R0=1 is not allowed with --data"),
    (["factors", "--data", "wikitext2:path=/nonexistent", "--R", "1", "--c", "1"],
     r"wikitext2: folder '/nonexistent' not found; download WikiText-2"),
    # factors ignored --features without --data, even --features bogus
    (["factors", "--noise", "gaussian", "--features", "bogus", "--R", "1", "--c", "1"],
     r"--features is only allowed with --data"),
])
def test_errors_are_one_line_exit_2(capsys, argv, match):
    import re

    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("clipdyn: error: ") and err.count("\n") == 1
    assert re.search(match, err), err
