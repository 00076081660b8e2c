"""The block engine where the risk falls by many orders within one block, and the divergence
guard where ``1e6 R0`` overflows float32 (both found by trying the engines on small noiseless
problems; the step engine, tested against NumPy loops in tests/test_simulate.py, is the reference).

The block engine forms a block's steps from the block's starting errors, so its rounding is
``eps |e_start|``: a run whose error shrinks by a factor ``f`` inside a block keeps ``eps f``
relative accuracy. A block where any run's risk falls below 1/16 of its start is taken again step
by step. Tolerances are the README's for stable runs: 1e-5 relative in float32, 1e-10 in float64.
"""

import numpy as np

import clipdyn as cd
from clipdyn.runs.sweep import run_sweep, stack_schedules
from clipdyn.theory.problem import identity_spectrum, make_problem, power_law_spectrum
from clipdyn.theory.schedules import constant, heuristic


def _both(prob, schedules, T, points, precision, seeds=(0,)):
    return [run_sweep(prob, schedules, list(seeds), T, points, precision=precision, engine=engine,
                      progress=False) for engine in ("step", "block")]


def test_noiseless_decay_within_a_block_keeps_relative_accuracy():
    # d = 4, Tr K = 4: blocks of 160-208 steps span 40-52 time units, over which the risk falls
    # by 1e-12 and more. Before: 207x the step engine's final risk in float32, 2.3e-4 in float64.
    prob = make_problem(identity_spectrum(4), cd.Gaussian(0.0))
    sweep = stack_schedules([constant(0.5, c) for c in np.linspace(0.25, 2.0, 8)])
    for precision, T, rtol in (("32", 40.0, 1e-5), ("64", 100.0, 1e-10)):
        step, block = _both(prob, sweep, T, 2, precision)
        assert step.risk[0, :, -1].max() < 1e-10 * step.risk[0, :, 0].min()  # many orders down
        np.testing.assert_allclose(block.risk, step.risk, rtol=rtol, atol=0)
        assert not block.diverged.any() and not step.diverged.any()


def test_risk_reading_schedule_has_no_false_divergence():
    # The heuristic threshold kappa sqrt(2R) reads the risk tracked inside the block, which went
    # negative by rounding as it fell: the block engine flagged divergence at step 318 of a run
    # decaying to 3e-53 (float64; NumPy and the step engine agree on that).
    prob = make_problem(identity_spectrum(4), cd.Gaussian(0.0))
    sweep = stack_schedules([heuristic(1.0, 1.0, cd.Gaussian(0.0))] * 8)
    step, block = _both(prob, sweep, 100.0, 2, "64", seeds=(0, 1))
    assert not block.diverged.any() and not step.diverged.any()
    np.testing.assert_allclose(block.risk, step.risk, rtol=1e-8, atol=0)


def test_divergence_is_flagged_where_1e6_r0_overflows_float32():
    # R0 = 1e33: 1e6 R0 is inf in float32, and inf <= inf let overflowing runs go unflagged (the
    # block engine never flagged them). The bound is now capped at float32's largest number; the
    # runs flagged are float64's (whose bound is finite).
    prob = make_problem(power_law_spectrum(100, 0.3), cd.Gaussian(0.5), R0=1e33)
    sweep = stack_schedules([constant(eta, np.inf) for eta in (5, 10, 1, 0.5, 20, 3, 0.8, 1.5)])
    step, block = _both(prob, sweep, 20.0, 5, "32")
    ref = run_sweep(prob, sweep, [0], 20.0, 5, precision="64", engine="step", progress=False)
    for res in (step, block):
        np.testing.assert_array_equal(res.diverged, ref.diverged)
        assert np.all(np.isfinite(res.risk[~np.isnan(res.risk)]))
    assert ref.diverged[0].tolist() == [True, True, False, False, True, True, False, False]


def test_the_step_by_step_pass_runs_every_clipping_rule():
    # The pass shares the rules' coefficients with the recurrence; a micro-batch rule (Gram
    # matrix of the step's rows, groups) in float64, where the risk falls to 1e-42.
    from clipdyn.theory import rules

    prob = make_problem(identity_spectrum(4), cd.Gaussian(0.0))
    sweep = stack_schedules([constant(0.5, c) for c in np.linspace(0.25, 2.0, 8)])
    step, block = [run_sweep(prob, sweep, [0], 100.0, 2, precision="64", engine=engine,
                             rules=rules.micro_batch(4, 2), progress=False) for engine in ("step", "block")]
    assert step.risk[0, :, -1].max() < 1e-30
    np.testing.assert_allclose(block.risk, step.risk, rtol=1e-10, atol=0)
