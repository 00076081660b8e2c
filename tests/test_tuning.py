"""The pieces the studies rely on: learning-rate bisection and schedule optimisation (float64)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import clipdyn as cd
from clipdyn.theory import tuning
from clipdyn.theory.problem import identity_spectrum, make_problem, power_law_spectrum
from clipdyn.theory.schedules import Constant


def test_bisection_on_known_thresholds():
    thresholds = np.array([0.3, 1.7, 12.0])
    est = tuning.bisect_max_lr(lambda e: e < thresholds, 0.1, 100.0, iters=40)
    np.testing.assert_allclose(est, thresholds, rtol=1e-9)
    with pytest.raises(ValueError, match="lo < hi"):
        tuning.bisect_max_lr(lambda e: e < 1, 2.0, 1.0)


def test_bisection_refuses_a_bracket_without_a_threshold():
    # Before, a bracket whose lo was unstable (or hi stable) came back as its end, a made-up
    # "largest stable rate"; both ends are now checked, and the message names the configurations.
    thresholds = np.array([0.3, 1.7, 12.0])
    with pytest.raises(ValueError, match=r"lo is unstable for configuration\(s\) \[0\] \(lo = 0.5"):
        tuning.bisect_max_lr(lambda e: e < thresholds, 0.5, 100.0)
    with pytest.raises(ValueError, match=r"hi is stable for configuration\(s\) \[1, 2\] \(hi = 1.5"):
        tuning.bisect_max_lr(lambda e: e < thresholds, 0.1, 1.5)


def test_ode_bisection_matches_closed_form():
    # Identity spectrum, unclipped: R moves monotonically from R0 to R_inf = eta s^2 / (2 (2 - eta)),
    # so R(T) < R0 iff R_inf < R0 iff eta < 4 / (2 + sigma^2 / R0) (theory eq. (2.9)).
    sigma = 0.3
    prob = make_problem(identity_spectrum(5), cd.Gaussian(sigma))
    stable = tuning.ode_is_stable(prob, lambda e: Constant(jnp.asarray(e), jnp.full(e.shape, jnp.inf)), 30.0)
    est = tuning.bisect_max_lr(stable, 0.5, 4.0, iters=30, n=1)
    assert est[0] == pytest.approx(4 / (2 + sigma**2), rel=1e-6)


def test_ode_final_risks_batch_matches_single_solves():
    prob = make_problem(power_law_spectrum(100, 0.5), cd.StudentT(3.0, 1.0))
    etas, clips = np.array([0.3, 1.0]), np.array([0.5, math.inf])
    risk, status = tuning.ode_final_risks(prob, Constant(jnp.asarray(etas), jnp.asarray(clips)), 5.0)
    from clipdyn.theory.ode import solve_ode

    for i in range(2):
        single = solve_ode(prob, Constant(float(etas[i]), float(clips[i])), 5.0, 2, rtol=1e-8, atol=1e-11)
        assert risk[i, -1] == pytest.approx(float(single.risk[-1]), rel=1e-7)
    assert np.all(status == 0)


@pytest.mark.slow
def test_schedule_optimisation_beats_best_constant():
    # Gradient descent through the ODE must not do worse than the best constant rate on a grid
    # (it starts there), and on this problem a decaying schedule does strictly better.
    prob = make_problem(power_law_spectrum(200, 0.3), cd.Gaussian(1.0))
    etas = np.geomspace(0.05, 1.9, 25)
    risk, _ = tuning.ode_final_risks(prob, Constant(jnp.asarray(etas), jnp.full(25, jnp.inf)), 10.0)
    best = float(np.min(risk[:, -1]))
    res = tuning.optimize_lr_schedule(prob, 10.0, pieces=4, steps=25,
                                      eta_init=float(etas[np.argmin(risk[:, -1])]))
    assert res.final_risk < best * (1 - 1e-3)
    etas_opt = np.asarray(res.schedule.etas)
    assert etas_opt[-1] < etas_opt[0]  # the optimum decays


@pytest.mark.parametrize("clip", [math.inf, 0.5])
def test_schedule_gradient_matches_finite_differences(clip):
    # float64. The gradient Adam follows (forward mode through the adaptive solver) against
    # central differences of log R(T) with step 1e-4: truncation ~1e-8 h^2-scaled, solver noise
    # ~rtol / h = 1e-6 at rtol 1e-10, so 1e-5 absolute. With outputs only at [0, T] the solver
    # stepped across the jumps and the derivative was wrong, of the wrong sign on one piece.
    import jax

    problem = make_problem(power_law_spectrum(100, 0.5), cd.Gaussian(0.5), R0=1.0)
    _, loss = tuning._lr_schedule_loss(problem, 5.0, clip, 4, 4.0, 1e-10)
    p = jnp.array([0.1, -0.3, 0.2, -0.5])
    grad = np.asarray(jax.jacfwd(loss)(p))
    h = 1e-4
    fd = np.array([(float(loss(p.at[i].add(h))) - float(loss(p.at[i].add(-h)))) / (2 * h) for i in range(4)])
    np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-5)


def test_one_piece_schedule_is_a_constant_rate():
    # pieces=1 passed the argument check and then failed inside the trace: a PiecewiseConstant
    # with no boundaries was refused as "not finite". One piece is a constant learning rate, so
    # the optimiser must land on the best constant rate of the same problem (float64 ODE; a grid
    # of 101 rates spaced 0.016 apart near eta = 0.83: its best R(T) is above the optimum by a
    # second-order amount, so the optimum may not exceed it by more than 1e-4 relative).
    from clipdyn.theory.schedules import PiecewiseConstant

    one = PiecewiseConstant([], [0.7])
    assert float(one(jnp.asarray(3.0), jnp.asarray(1.0))[0]) == 0.7
    prob = make_problem(identity_spectrum(10), cd.Gaussian(0.5), R0=1.0)
    res = tuning.optimize_lr_schedule(prob, 1.0, pieces=1, steps=15)
    grid = np.linspace(0.2, 1.8, 101)
    from clipdyn.runs.sweep import stack_schedules

    scheds = stack_schedules([Constant(float(e), math.inf) for e in grid])
    finals = np.asarray(tuning.ode_final_risks(prob, scheds, 1.0)[0])[:, -1]
    assert np.asarray(res.schedule.boundaries).size == 0
    assert res.final_risk <= finals.min() * (1 + 1e-4)


def test_schedule_optimiser_refuses_a_diverging_start():
    # Identity spectrum, unclipped: eta >= 2 diverges (theory eq. (2.9)); starting there, every
    # risk the optimiser could report is infinite, so it says so rather than returning inf.
    prob = make_problem(identity_spectrum(5), cd.Gaussian(0.3))
    with pytest.raises(ValueError, match=r"no finite R\(T\) under the starting schedule \(eta_init=3.5 .*diverges before T=50.0"):
        tuning.optimize_lr_schedule(prob, 50.0, pieces=2, steps=3, eta_init=3.5)
