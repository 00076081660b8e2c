"""Feedback schedules with tabulated ``mu``: the compensated learning rate ``eta / mu`` from the
tables against the exact factors, between every pair of grid points.

Precision: float64 (the schedules are called under the library's x64 context, and the exact
reference is ``clipdyn.theory.factors.mu`` in float64). The bound tested is the interpolation error,
1e-5 relative in ``mu`` (hence in the learning rate) wherever ``mu >= 1e-6``, far above float64
rounding; the tables were measured at 1.9e-6 (max-CCC, Student-t, linear on the 8-times refined
grid) and 5.6e-8 (heuristic, cubic Hermite, Rademacher), the worst cases.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clipdyn as cd
from clipdyn.precision import x64
from clipdyn.theory import factors, rules
from clipdyn.theory.schedules import MaxCCC, heuristic, max_ccc, with_mu_table

BOUND = 1e-5
LAWS = {"gaussian": cd.Gaussian(0.5), "student-t df 3": cd.StudentT(3.0, 1.0),
        "rademacher": cd.Rademacher(1.0)}


def _between(x0, x1, n_intervals, per=3):
    """``per`` points strictly inside every interval of an even grid on ``[x0, x1]``."""
    x = np.linspace(x0, x1, n_intervals + 1)
    off = np.arange(1, per + 1) / (per + 1)
    return (x[:-1, None] + off[None, :] * (x[1] - x[0])).ravel()


def _rel_error(sched, log_R, rule=None):
    """``|mu_table / mu_exact - 1|`` at ``R = e^log_R`` through the public call, where
    ``mu_exact >= 1e-6`` (learning rates up to 1e6 eta). Below that (Rademacher noise with
    kappa < 1 at tiny ``R``, where ``mu`` falls to 1e-300 and underflows) the error is reported
    as 0 when the table's ``mu`` is below 2e-6 too, and as 1 otherwise."""
    with x64():
        R = jnp.exp(jnp.asarray(log_R))
        # One program (run operation by operation, a call compiled dozens of small ones).
        eta_tab, c = jax.jit(jax.vmap(lambda r: sched(0.0, r)))(R)
        exact = np.asarray(factors.mu(sched.noise, R, c, rule))
        mu_tab = float(sched.eta) / np.asarray(eta_tab)
    assert not np.isnan(mu_tab).any()
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(mu_tab / exact - 1.0)
    return np.where(exact >= 1e-6, rel, np.where(mu_tab < 2e-6, 0.0, 1.0))


@pytest.mark.parametrize("law", [pytest.param(n, marks=pytest.mark.slow) if n != "gaussian" else n
                                 for n in LAWS])
@pytest.mark.parametrize("kappa", [pytest.param(0.5, marks=pytest.mark.slow), 1.0,
                                   pytest.param(3.0, marks=pytest.mark.slow)])
def test_heuristic_table_within_1e5(law, kappa):
    # The default table (2049 points over R in [1e-14, 1e12] scale^2), 3 points inside every
    # interval, and beyond both ends (clamped there).
    sched = heuristic(0.7, kappa, LAWS[law])
    assert sched.log_mu is not None and sched.log_mu.shape == (2049,)
    x0, x1 = float(sched.log_R[0]), float(sched.log_R[-1])
    err = _rel_error(sched, _between(x0, x1, 2048))
    assert err.max() <= BOUND, err.max()
    out = _rel_error(sched, [x0 - 5.0, x0 - 1.0, x1 + 1.0, x1 + 5.0])
    assert out.max() <= BOUND, out.max()


def test_heuristic_table_with_a_rule():
    # The rule's own mu (batch clipping, B = 4) is what the table holds.
    law, rule = cd.Gaussian(1.0), rules.batch_mean(4)
    sched = heuristic(1.0, 0.8, law, rule=rule)
    x0, x1 = float(sched.log_R[0]), float(sched.log_R[-1])
    x = _between(x0, x1, 2048, per=1)[::16]
    err = _rel_error(sched, x, rule)
    assert err.max() <= BOUND, err.max()
    # ... and it is not the plain rule's mu (which would differ by far more than the bound).
    plain = heuristic(1.0, 0.8, law)
    with x64():
        R = jnp.exp(jnp.asarray(x))
        gap = np.abs(np.asarray(jax.jit(jax.vmap(lambda r: sched(0.0, r)[0]))(R))
                     / np.asarray(jax.jit(jax.vmap(lambda r: plain(0.0, r)[0]))(R)) - 1.0)
    assert gap.max() > 100 * BOUND


def _student_threshold_table():
    """A max-CCC threshold table for Student-t df 3 on the region where the default table's
    interpolation error is largest (R ~ 1 to 10 scale^2, measured over the whole default range),
    with the default grid spacing (ln(1e22) / 320). ``c*`` comes from a cheaper search than
    :func:`max_ccc`'s (21-point scan, 24 golden steps: ~1e-3 relative), which changes the
    threshold, not how smooth it is, and the error tested is the ``mu`` table's against the
    exact ``mu`` at the schedule's own threshold."""
    law = LAWS["student-t df 3"]
    h = math.log(1e22) / 320
    with x64():
        log_R = math.log(0.1) + h * jnp.arange(45.0)
        R = jnp.exp(log_R)
        c = factors.optimal_threshold(law, R, grid=21, iters=24)
        unit = factors.threshold_unit(law, R)
        u = jnp.where(jnp.isinf(c), 1.0, c / (c + unit))
    assert np.all(np.isfinite(np.asarray(c)))  # clipping helps here: mu < 1, a real test
    return MaxCCC(0.5, law, log_R, u)


@pytest.mark.slow
def test_max_ccc_table_within_1e5_student_t():
    sched = with_mu_table(_student_threshold_table())  # default refine: 8
    assert sched.log_mu.shape == (44 * 8 + 1,)
    x0, x1 = float(sched.log_R[0]), float(sched.log_R[-1])
    err = _rel_error(sched, _between(x0, x1, 44 * 8))
    assert err.max() <= BOUND, err.max()
    # Linear interpolation on the threshold grid alone (refine 1) misses the bound: ~1.2e-4.
    coarse = _rel_error(with_mu_table(sched, 1), _between(x0, x1, 44))
    assert coarse.max() > BOUND


@pytest.mark.parametrize("law", [pytest.param("gaussian", marks=pytest.mark.slow), "rademacher"])
def test_max_ccc_table_light_tails(law):
    # For these laws no finite threshold beats SGD (c* = inf everywhere), so mu = 1 and the table
    # holds log mu = 0 exactly; a narrow range keeps the threshold search short.
    sched = max_ccc(0.5, LAWS[law], R_min=0.1, R_max=100.0, points=9)
    assert np.all(np.asarray(sched.u) == 1.0)
    np.testing.assert_array_equal(np.asarray(sched.log_mu), 0.0)
    x0, x1 = float(sched.log_R[0]), float(sched.log_R[-1])
    assert _rel_error(sched, _between(x0, x1, 8 * 8)).max() == 0.0


@pytest.mark.slow
def test_schedules_without_tables_stay_exact():
    # Built by hand (as experiments/schedules.py does), a MaxCCC has no table and evaluates mu
    # exactly; so do heuristics with batched kappa, sigma2 = 0 with noise, or points = 0.
    base = _student_threshold_table()
    assert base.log_mu is None
    err = _rel_error(base, _between(float(base.log_R[0]), float(base.log_R[-1]), 44, per=1))
    assert err.max() < 1e-14
    law = LAWS["student-t df 3"]
    assert heuristic(1.0, jnp.asarray([0.5, 1.0]), law).log_mu is None
    assert heuristic(1.0, 1.0, law, sigma2=0.0).log_mu is None
    assert heuristic(1.0, 1.0, law, points=0).log_mu is None
    # A table and no table give the same learning rate to the bound, and the same threshold.
    tab, exact = heuristic(1.0, 1.0, law), heuristic(1.0, 1.0, law, points=0)
    with x64():
        a, b = tab(0.0, jnp.asarray(0.37)), exact(0.0, jnp.asarray(0.37))
    assert float(a[1]) == float(b[1])
    assert abs(float(a[0]) / float(b[0]) - 1) <= BOUND


@pytest.mark.slow
def test_tables_in_a_sweep_share_across_learning_rates():
    # dataclasses.replace keeps the tables (the command line builds its eta grid this way).
    base = with_mu_table(_student_threshold_table(), 2)
    other = dataclasses.replace(base, eta=2.0)
    assert other.log_mu is base.log_mu
    with x64():
        a, b = base(0.0, jnp.asarray(2.0)), other(0.0, jnp.asarray(2.0))
    assert float(b[0]) == pytest.approx(4.0 * float(a[0]), rel=1e-15)


@pytest.mark.parametrize("make, match", [
    (lambda: heuristic(1.0, 1.0, LAWS["gaussian"], points=1), "points=1"),
    (lambda: heuristic(1.0, 1.0, LAWS["gaussian"], R_min=1.0, R_max=1.0), "R_min"),
    (lambda: heuristic(1.0, 1.0, LAWS["gaussian"], R_min=-1.0), "R_min"),
    (lambda: max_ccc(1.0, LAWS["gaussian"], refine=-1), "refine"),
    (lambda: with_mu_table(heuristic(1.0, 1.0, LAWS["gaussian"])), "MaxCCC"),
])
def test_table_arguments_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()
