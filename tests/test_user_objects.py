"""A user's own noise laws and schedules (README: "Your own law or schedule").

The reference for a well-formed user law is a clipdyn law equal to it in law: the factors and the
ODE (both averages over the same Gaussian mixture, evaluated by the same code) must then agree to
the last bits, which is what the tests ask (rtol 1e-13, float64). Malformed laws and schedules
must be refused, or stopped, with a message naming the fault (trial-extend, 2026-11-23).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clipdyn as cd
from clipdyn.pytrees import cast_floats, frozen_pytree
from clipdyn.runs.sweep import run_sweep, simulate_runs, stack_schedules
from clipdyn.theory.noise import MixtureRep
from clipdyn.theory.ode import solve_ode
from clipdyn.theory.problem import make_problem, power_law_spectrum
from clipdyn.theory.schedules import constant


@frozen_pytree
class SignFlip:
    """``a`` times a random sign, written by a user: equal in law to ``Rademacher(a)``."""

    a: float = 0.5
    weights: tuple = (0.5, 0.5)
    variance: float = 0.0
    moment: float | None = None  # second_moment, unless the law's own
    honours_shape: bool = dataclasses.field(default=True, metadata=dict(static=True))

    def sample(self, key, shape=(), dtype=jnp.float32):
        s = jax.random.rademacher(key, shape if self.honours_shape else (), dtype=dtype)
        return jnp.asarray(self.a, dtype) * s

    @property
    def second_moment(self):
        return self.a**2 if self.moment is None else self.moment

    @property
    def scale(self):
        return self.a

    def astype(self, dtype):
        return cast_floats(self, dtype)

    def gaussian_mixture(self):
        a = jnp.asarray(self.a, float)
        return MixtureRep(jnp.asarray(self.weights, float), jnp.stack([-a, a]),
                          jnp.full(2, self.variance))


LAM = power_law_spectrum(200, 0.3)


def test_a_user_law_gives_the_numbers_of_the_clipdyn_law_it_equals():
    user, builtin = SignFlip(0.5), cd.Rademacher(0.5)
    R, c = np.array([1e-3, 0.3, 5.0]), np.array([0.01, 0.5, np.inf])
    for f in ("mu", "nu_abs", "nu", "ccc"):
        np.testing.assert_allclose(np.asarray(getattr(cd.reduction_factors(user, R, c), f)),
                                   np.asarray(getattr(cd.reduction_factors(builtin, R, c), f)), rtol=1e-13)
    a = solve_ode(make_problem(LAM, user), constant(1.0, 0.5), 3.0, 5).risk
    b = solve_ode(make_problem(LAM, builtin), constant(1.0, 0.5), 3.0, 5).risk
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13)
    # The simulators run it (float32 and float64), finite and near the ODE's curve: at d = 200
    # (Tr K = 80) four seeds fall within 10 % here, a loose check of use, not of the law.
    for precision in ("32", "64"):
        res = simulate_runs(make_problem(LAM, user), constant(1.0, 0.5), range(4), 3.0, 5,
                            precision=precision)
        assert not res.diverged.any()
        np.testing.assert_allclose(res.risk.mean(axis=(0, 1)), np.asarray(a), rtol=0.1)


@pytest.mark.parametrize("law, message", [
    (SignFlip(0.5, weights=(1.0, 1.0)), "weights must be finite, >= 0 and sum to 1 (within 1e-6); they sum to 2"),
    (SignFlip(0.5, weights=(1.5, -0.5)), "and some are negative"),
    (SignFlip(0.5, variance=float("nan")), "variances finite and >= 0"),
    (SignFlip(0.5, moment=1.0), "second_moment=1 disagrees with its gaussian_mixture()'s E eps^2"),
    (SignFlip(0.5, honours_shape=False), "sample(key, shape, dtype) must return an array of that shape and dtype"),
])
def test_a_malformed_user_law_is_refused_with_its_fault(law, message):
    # Weights summing to 2 gave mu = 1.99; a nan variance ran as the noiseless law; a moment
    # that disagreed made nu_abs jump between c = 1e6 and c = inf; a sample ignoring its dtype
    # failed inside the engine's loop.
    with pytest.raises(ValueError, match=re.escape(message)):
        make_problem(LAM, law)
    with pytest.raises(ValueError, match=re.escape(message)):
        cd.reduction_factors(law, 0.1, 1.0)


def test_a_law_that_is_not_a_pytree_is_refused_by_name():
    class Plain:  # the protocol, but not registered: JAX cannot pass it into a program
        sample = SignFlip.sample
        second_moment = 0.25
        scale = 0.5
        astype = SignFlip.astype
        gaussian_mixture = SignFlip.gaussian_mixture

    with pytest.raises(ValueError, match="must be a JAX pytree.*frozen_pytree"):
        make_problem(LAM, Plain())
    with pytest.raises(ValueError, match=r"or your own law: a pytree .* astype\(dtype\)"):
        make_problem(LAM, object())


@frozen_pytree
class Linear:
    """``eta(t) = eta0 + eta1 t``, ``c(t) = c0 + c1 t``: a user's schedule."""

    eta0: float
    eta1: float
    c0: float
    c1: float
    reads_risk = False

    def __call__(self, t, R):
        one = jnp.ones_like(R)
        return (jnp.asarray(self.eta0, R.dtype) + jnp.asarray(self.eta1, R.dtype) * t) * one, \
            (jnp.asarray(self.c0, R.dtype) + jnp.asarray(self.c1, R.dtype) * t) * one


def test_a_user_schedule_with_constant_values_runs_as_the_constant():
    # The values are allowed everywhere, so the engines' check must change nothing: the ODE and
    # both simulators give the numbers of clipdyn's Constant bit for bit (float64).
    prob = make_problem(LAM, cd.Gaussian(0.5))
    user, builtin = Linear(1.0, 0.0, 0.5, 0.0), constant(1.0, 0.5)
    assert np.array_equal(np.asarray(solve_ode(prob, user, 2.0, 5).risk),
                          np.asarray(solve_ode(prob, builtin, 2.0, 5).risk))
    for engine in ("step", "block"):
        a = run_sweep(prob, stack_schedules([user, user]), [0, 1], 2.0, 5, precision="64", engine=engine)
        b = run_sweep(prob, stack_schedules([builtin, builtin]), [0, 1], 2.0, 5, precision="64",
                      engine=engine)
        assert np.array_equal(a.risk, b.risk), engine


@pytest.mark.parametrize("schedule, what", [
    (Linear(1.0, 0.0, 0.5, -0.5), "a threshold going negative after t = 1"),
    (Linear(1.0, -1.0, 0.5, 0.0), "a learning rate going negative after t = 1"),
])
def test_a_user_schedule_going_negative_stops_every_engine_at_the_same_time(schedule, what):
    # Before: the ODE ran c < 0 as unclipped SGD and the simulators stepped against the gradient
    # (2.4x apart at t = 3); a negative rate was integrated as gradient ascent.
    prob = make_problem(LAM, cd.Gaussian(0.5))
    with pytest.raises(ValueError, match=r"solve_ode: at t=([0-9.]+) the schedule gave a learning rate "
                                         r"or threshold < 0") as info:
        solve_ode(prob, schedule, 3.0, 4)
    t_ode = float(re.search(r"at t=([0-9.e+-]+) ", str(info.value)).group(1))
    assert 1.0 <= t_ode <= 1.1, what
    one_step = 1.0 / LAM.sum()
    for engine in ("step", "block"):
        res = run_sweep(prob, stack_schedules([schedule]), [0, 1], 3.0, 4, precision="64", engine=engine)
        assert res.diverged.all(), (what, engine)
        # The first step past t = 1 (the values are exactly 0 at t = 1, which is allowed).
        np.testing.assert_allclose(res.diverged_at, 1.0 + one_step, atol=1.01 * one_step)
        assert np.isnan(res.risk[..., -1]).all() and np.isfinite(res.risk[..., :2]).all()
