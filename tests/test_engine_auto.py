"""``engine="auto"``, the default of ``run_sweep`` and ``clipdyn sweep`` (issue 11, section 2).

The choice itself (:func:`clipdyn.sim.runner.choose_engine`) is exact logic; the sweeps compare
the auto run with the engine it names, run explicitly on the same sweep: the very same program
runs, so the comparison is exact (``assert_array_equal``), in float32 (the default precision).
Every sweep is small (``d = 64``, ``T = 0.5``, 3 output times).
"""

import math

import numpy as np
import pytest

import clipdyn as cd
from clipdyn.cli import main
from clipdyn.runs import results
from clipdyn.runs import sweep as sw
from clipdyn.sim.runner import AUTO_MIN_CONFIGS, choose_engine
from clipdyn.theory import rules
from clipdyn.theory.problem import make_problem, power_law_spectrum
from clipdyn.theory.schedules import Constant

# Gaussian noise: which engine runs does not depend on the law, and a Student-t sampler roughly
# doubles the compilation of every program here (its gamma draws are a rejection loop).
PROB = make_problem(power_law_spectrum(64, 0.5), cd.Gaussian(0.5))


def _scheds(n):
    return sw.stack_schedules([Constant(1.0, c) for c in np.geomspace(0.1, 10.0, n - 1)]
                              + [Constant(1.0, math.inf)])


def test_choose_engine_rules():
    assert choose_engine("auto", "sgd", AUTO_MIN_CONFIGS) == "block"
    assert choose_engine("auto", "sgd", AUTO_MIN_CONFIGS - 1) == "step"
    assert choose_engine("auto", "hsgd", 1000) == "step"  # the block engine runs C-SGD only
    assert choose_engine("step", "sgd", 1000) == "step"
    assert choose_engine("block", "sgd", 1) == "block"
    with pytest.raises(ValueError, match="engine 'fast' is not allowed; use one of step, block, auto"):
        choose_engine("fast", "sgd", 8)


@pytest.mark.parametrize("n, rule, expected", [
    (AUTO_MIN_CONFIGS, None, "block"),
    (AUTO_MIN_CONFIGS, rules.per_sample(4), "block"),
    # Below the threshold auto runs the step engine: test_auto_counts_configurations_per_device_chunk
    # runs that case (and test_choose_engine_rules decides it), so this one waits for the slow suite.
    pytest.param(AUTO_MIN_CONFIGS - 1, None, "step", marks=pytest.mark.slow),
])
def test_auto_runs_and_records_the_engine_it_names(n, rule, expected):
    kw = dict(progress=False, rules=rule)
    auto = sw.run_sweep(PROB, _scheds(n), [0, 1], 0.5, 3, **kw)
    assert auto.config["engine"] == expected
    assert auto.config["engine_requested"] == "auto"
    explicit = sw.run_sweep(PROB, _scheds(n), [0, 1], 0.5, 3, engine=expected, **kw)
    assert explicit.config["engine_requested"] == expected
    np.testing.assert_array_equal(auto.risk, explicit.risk)
    np.testing.assert_array_equal(auto.diverged, explicit.diverged)


def test_auto_counts_configurations_per_device_chunk():
    # A wide sweep cut into narrow chunks runs each chunk's few configurations per program: the
    # step engine is faster there (measured, BENCHMARKS.md), and auto knows it.
    res = sw.run_sweep(PROB, _scheds(AUTO_MIN_CONFIGS), [0], 0.5, 3, progress=False, chunk_size=2)
    assert res.config["engine"] == "step"


def test_auto_runs_hsgd_on_the_step_engine():
    res = sw.run_sweep(PROB, _scheds(AUTO_MIN_CONFIGS), [0], 0.5, 3, method="hsgd", progress=False)
    assert res.config["engine"] == "step"
    assert res.config["engine_requested"] == "auto"


def test_cli_default_is_auto_and_recorded(tmp_path, capsys):
    out = tmp_path / "s.npz"
    argv = ["sweep", "--spectrum", "power-law:d=64,alpha=0.5", "--noise", "student-t:df=2.5,scale=0.5",
            "--eta", "1.0", "--clip", "0.1,0.3,1,3,10,30,100,inf", "--seeds", "1", "--T", "0.5",
            "--points", "3", "--out", str(out)]
    assert main(argv) == 0
    config = results.load_results(out)[1]["config"]
    assert config["engine_requested"] == "auto"
    assert config["engine"] == "block"
