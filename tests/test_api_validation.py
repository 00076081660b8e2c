"""The Python API validates its arguments as the command line does, the noiseless limit agrees
across laws, and importing clipdyn leaves JAX's precision setting alone (issue 12, items 9, 11,
12, 15, 16).

Precision: float64 (the suite enables x64 globally in conftest.py), except where a test says it
switches x64 off (inside a fixture that restores it) or runs a fresh interpreter, which is how a
user's process starts.
"""

import math
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clipdyn as cd
from clipdyn import validation
from clipdyn.runs.sweep import simulate_runs, stack_schedules
from clipdyn.theory import factors
from clipdyn.theory.ode import solve_ode
from clipdyn.theory.problem import identity_spectrum, make_problem, power_law_spectrum
from clipdyn.theory.schedules import PiecewiseConstant, TimeVarying, constant, heuristic, max_ccc
from clipdyn.theory.tuning import bisect_max_lr, optimize_lr_schedule


# --- item 11: zero scale is the noiseless law, for every law ---------------------------------

ZERO_SCALE = {
    "student-t df=1.5": cd.StudentT(1.5, 0.0),
    "student-t df=3": cd.StudentT(3.0, 0.0),
    "cauchy": cd.cauchy(0.0),
    "rademacher": cd.Rademacher(0.0),
    "mixture": cd.GaussianMixture([0.3, 0.7], [0.0, 0.0], [0.0, 0.0]),
    "empirical": cd.Empirical(np.zeros(4)),
}


R_ZERO = np.asarray([1e-6, 0.5, 30.0])[:, None]
C_ZERO = np.asarray([0.0, 1e-3, math.sqrt(2.0), 50.0, math.inf])[None, :]


def _factors_jit(law):
    # jit: one compilation is several times faster than the eager vectorised evaluation.
    return jax.jit(lambda r, c: cd.reduction_factors(law, r, c))(R_ZERO, C_ZERO)


@pytest.fixture(scope="module")
def gaussian_zero():
    return _factors_jit(cd.Gaussian(0.0))


@pytest.mark.parametrize("name", sorted(ZERO_SCALE))
def test_every_law_at_zero_scale_has_gaussian_zero_factors(name, gaussian_zero):
    # Today student-t/cauchy with scale 0 report E[eps^2] = inf, so nu = 0 and CCC = inf.
    # Each law's mixture representation is then one atom at 0 (weights summing to 1), so the
    # factors agree with Gaussian(0) to rounding: 1e-13 relative allows a few ulps per term.
    law = ZERO_SCALE[name]
    for g, w in zip(_factors_jit(law), gaussian_zero):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-13, atol=0)
    assert float(law.second_moment) == 0.0 and float(law.mean) == 0.0 and float(law.variance) == 0.0


def test_zero_scale_cauchy_never_gains_from_clipping():
    # As for Gaussian(0) (CCC <= 1), no finite threshold beats unclipped SGD: c* = inf.
    assert math.isinf(float(jax.jit(lambda r: cd.optimal_threshold(cd.cauchy(0.0), r))(0.5)))


def test_noiseless_factors_match_the_closed_form():
    # Gaussian(0) at R = 0.5: w ~ N(0, 1), so mu = erf(c / sqrt 2) and nu_abs is THEORY.md
    # section 3's closed form with s2 = 1 (independent reference: math.erf, float64).
    from clipdyn.cli.specs import parse_noise

    c = z = math.sqrt(2.0)
    mu = math.erf(z / math.sqrt(2))
    nu_abs = mu - math.sqrt(2 / math.pi) * z * math.exp(-z * z / 2) + z * z * math.erfc(z / math.sqrt(2))
    for text in ("gaussian:sigma=0", "student-t:df=1.5,scale=0"):  # the example
        law = parse_noise(text)
        f = jax.jit(lambda r, cc: cd.reduction_factors(law, r, cc))(0.5, c)
        assert float(f.mu) == pytest.approx(mu, rel=1e-14), text
        assert float(f.nu_abs) == pytest.approx(nu_abs, rel=1e-13), text
        assert float(f.ccc) == pytest.approx(mu * mu / nu_abs, rel=1e-13), text


def test_zero_scale_heuristic_needs_no_sigma2():
    # scale = 0 has E[eps^2] = 0, so the heuristic's default sigma^2 exists for every df.
    s = heuristic(1.0, 1.0, cd.cauchy(0.0))
    assert float(s.sigma2) == 0.0


# --- item 12: mixture weights and 2-D atoms --------------------------------------------------

def test_mixture_weights_must_sum_to_one():
    with pytest.raises(ValueError, match=r"weights=\[0.5, 0.6\] is not allowed; weights must sum to 1"):
        cd.GaussianMixture([0.5, 0.6], [0.0, 1.0], [1.0, 1.0])
    law = cd.GaussianMixture([0.25, 0.75], [0.0, 1.0], [1.0, 1.0])
    np.testing.assert_array_equal(law.weights, [0.25, 0.75])


def test_empirical_atoms_must_be_one_dimensional():
    with pytest.raises(ValueError, match=r"1-D array; got shape \(2, 3\)"):
        cd.Empirical(np.ones((2, 3)))


# --- item 9: magnitudes whose squares would overflow -----------------------------------------

@pytest.mark.parametrize("make, text", [
    (lambda: cd.GaussianMixture([0.5, 0.5], [1e300, -1e300], [1.0, 1.0]), "means="),
    (lambda: cd.Empirical(np.array([1.0, 1e300])), r"atoms\[1\]=1e\+300"),
    (lambda: cd.Gaussian(1e-120), "sigma=1e-120"),
    (lambda: make_problem(np.array([1e-320]), cd.Gaussian(1.0)), "largest eigenvalue"),
    (lambda: make_problem(np.array([1e308, 1.0]), cd.Gaussian(1.0)), "entry 0"),
    (lambda: make_problem(np.ones(3), cd.Gaussian(1.0), R0=1e300), r"R0=1e\+300"),
    (lambda: make_problem(np.ones(3), cd.Gaussian(1.0), v0=np.full(3, 1e-320)), "initial risk"),
    (lambda: power_law_spectrum(1000, -60.0), r"entry 46 is 2.1\d*e\+100"),
    (lambda: cd.reduction_factors(cd.Gaussian(1.0), 0.5, 1e200), r"c=1e\+200"),
    (lambda: cd.reduction_factors(cd.Gaussian(1.0), 1e308, 1.0), r"R=1e\+308"),
    (lambda: identity_spectrum(10**15), "needs about"),
])
def test_values_outside_float64s_safe_range_are_refused_with_the_reason(make, text):
    # Today these give nan factors (c = 1e200: c^2 overflows), inf/nan problems or MemoryError.
    with pytest.raises(ValueError, match=text):
        make()


def test_values_at_the_bounds_give_exact_scaled_factors():
    # eps -> a eps, R -> a^2 R, c -> a c leaves mu unchanged and multiplies nu_abs by a^2
    # (w scales by a). At a = 1e+-49, R ~ a^2 is near the magnitude bounds 1e+-100; agreement to
    # 1e-13 relative (rounding) shows the bounds leave the numbers exact, not merely finite.
    base = cd.reduction_factors(cd.Gaussian(1.0), 0.5, math.sqrt(2.0))
    for a in (1e-49, 1e49):
        f = cd.reduction_factors(cd.Gaussian(a), 0.5 * a * a, math.sqrt(2.0) * a)
        assert float(f.mu) == pytest.approx(float(base.mu), rel=1e-13)
        assert float(f.nu_abs) / (a * a) == pytest.approx(float(base.nu_abs), rel=1e-13)
        assert float(f.ccc) == pytest.approx(float(base.ccc), rel=1e-13)


# --- item 15: the public functions validate their arguments ---------------------------------

LAW = cd.Gaussian(1.0)
FACTOR_FNS = [cd.reduction_factors, cd.mu, cd.nu_abs, cd.nu, cd.ccc, cd.csc, cd.max_stable_lr]


@pytest.mark.parametrize("fn", FACTOR_FNS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("R, c, text", [
    (-1.0, 1.0, "R=-1.0 is not allowed; R must be finite and > 0"),
    (0.0, 1.0, "R=0.0 is not allowed"),
    (math.inf, 1.0, "R=inf is not allowed"),
    (math.nan, 1.0, "R=nan is not allowed"),
    (0.5, math.nan, "c=nan is not allowed; c must be >= 0"),
    (0.5, -1.0, "c=-1.0 is not allowed"),
    (0.5, "1", "c='1' is not allowed; c must be a real number"),
    ([0.5, -2.0], 1.0, r"R=\[0.5, -2.0\] is not allowed"),
])
def test_factor_functions_refuse_bad_R_and_c(fn, R, c, text):
    # Today R=-1, c=nan returns numbers (the threshold treated as unclipped).
    with pytest.raises(ValueError, match=text):
        fn(LAW, R, c)


def test_optimal_threshold_refuses_bad_R_and_static_arguments():
    for R, text in [(-1.0, "R=-1.0"), (0.0, "R=0.0"), (math.nan, "R=nan")]:
        with pytest.raises(ValueError, match=text):
            cd.optimal_threshold(LAW, R)  # today: 1e-4 for R = -1
    with pytest.raises(ValueError, match="grid=2"):
        cd.optimal_threshold(LAW, 0.5, grid=2)
    with pytest.raises(ValueError, match="iters=1.5"):
        cd.optimal_threshold(LAW, 0.5, iters=1.5)


@pytest.mark.parametrize("fn", FACTOR_FNS, ids=lambda f: f.__name__)
def test_factor_functions_refuse_something_that_is_not_a_law(fn):
    with pytest.raises(ValueError, match="noise must be a clipdyn noise law .*got str 'gaussian'"):
        fn("gaussian", 0.5, 1.0)


_RULE_TEXT = r"rule must be None or a clipdyn clipping rule \(per_sample, .*\); got str 'batch'"


@pytest.mark.parametrize("call", [
    lambda: cd.reduction_factors(LAW, 0.5, 1.0, "batch"),
    lambda: cd.mu(LAW, 0.5, 1.0, "batch"),
    lambda: cd.nu_abs(LAW, 0.5, 1.0, "batch"),
    lambda: cd.max_stable_lr(LAW, 0.5, 1.0, "batch"),
    lambda: cd.optimal_threshold(LAW, 0.5, rule="batch"),
    lambda: max_ccc(1.0, LAW, rule="batch"),
    lambda: heuristic(1.0, 1.0, LAW, rule="batch"),
    lambda: solve_ode(make_problem(np.ones(4), LAW), constant(1.0, 0.5), T=1.0, rule="batch"),
], ids=["reduction_factors", "mu", "nu_abs", "max_stable_lr", "optimal_threshold", "max_ccc",
        "heuristic", "solve_ode"])
def test_a_rules_name_is_refused_where_a_rule_is_expected(call):
    # Checked before anything is traced: JAX's own message ("Error interpreting argument ... as
    # an abstract array") names neither the argument's meaning nor what is allowed.
    with pytest.raises(ValueError, match=_RULE_TEXT):
        call()


@pytest.mark.parametrize("rules, text", [("batch", "got str 'batch'"), (5, "got int 5"),
                                         ([None, "batch"], r"got 2 item\(s\) of type\(s\) \['NoneType', 'str'\]")])
def test_simulations_refuse_rules_that_are_not_rules(rules, text):
    with pytest.raises(ValueError, match=r"rules must be None, one clipdyn clipping rule .*; " + text):
        simulate_runs(make_problem(np.ones(4), LAW), constant(1.0, 0.5), [0], 1.0, 3, rules=rules)


def test_noise_law_check_looks_attributes_up_without_evaluating_them(monkeypatch):
    # The check of clipdyn's own laws is duck-typed; evaluating second_moment (a computing
    # property) only to see that it exists compiled a program at every CLI start-up. A user's
    # law is checked further (tests/test_user_objects.py), so it is evaluated.
    from clipdyn import validation

    def evaluated(self):
        raise AssertionError("evaluated")

    monkeypatch.setattr(cd.Gaussian, "second_moment", property(evaluated))
    law = cd.Gaussian(0.5)
    assert validation.noise_law(law) is law
    with pytest.raises(ValueError, match=r"noise must be a clipdyn noise law .*or your own law: .*got object"):
        validation.noise_law(object())


def test_traced_arguments_pass_unchecked_and_still_compute():
    # Inside jit the values are tracers: nothing to check, and the result equals the eager one.
    got = jax.jit(lambda r, c: cd.mu(LAW, r, c))(0.5, 1.0)
    assert float(got) == pytest.approx(float(cd.mu(LAW, 0.5, 1.0)), rel=1e-15)
    grads = jax.jit(jax.vmap(jax.grad(lambda c: cd.nu_abs(LAW, 0.5, c))))(jnp.asarray([0.5, 1.0]))
    assert grads.shape == (2,)


@pytest.mark.parametrize("make, text", [
    (lambda: make_problem(np.ones(4), "gaussian"), "noise must be a clipdyn noise law"),
    (lambda: cd.StudentT(df="3"), "df='3' is not allowed; df must be a real number"),
    (lambda: cd.Gaussian(True), "sigma=True is not allowed; sigma must be a real number"),
    (lambda: cd.Gaussian(1 + 1j), "sigma=.* must be a real number"),
    (lambda: cd.GaussianMixture(["0.5", "0.5"], [0.0, 0.0], [1.0, 1.0]), "weights=.*real number"),
    (lambda: cd.Empirical(np.array([1.0 + 2.0j])), "must hold real numbers"),
    (lambda: cd.Empirical(["a", "b"]), "must hold real numbers"),
    (lambda: constant("1", 0.5), "eta='1' is not allowed; eta must be a real number"),
    (lambda: constant(1.0, "inf"), "clip='inf' is not allowed"),
    (lambda: constant(1.0, 1e200), "clip=1e\\+200"),
    (lambda: constant(1e300, 0.5), "eta=1e\\+300 is not allowed; eta must be finite and > 0 \\(within"),
    (lambda: TimeVarying("1"), "eta_fn='1'"),
    (lambda: PiecewiseConstant([2.0, 1.0], [1.0, 1.0, 1.0]), "boundaries must be increasing"),
    (lambda: PiecewiseConstant([1.0], [1.0]), r"len\(etas\) = len\(boundaries\) \+ 1"),
    (lambda: max_ccc(1.0, "gaussian"), "noise must be a clipdyn noise law"),
    (lambda: max_ccc(1.0, LAW, points=1), "points=1"),
    (lambda: heuristic(1.0, 1.0, "gaussian"), "noise must be a clipdyn noise law"),
    (lambda: cd.StudentT(3.0, 1.0, n_nodes=1.5), "n_nodes=1.5"),
    # too few nodes for the law's df: mu was 1.6e-11 for 0.579 with 3 (trial-ode)
    (lambda: cd.StudentT(3.0, 1.0, n_nodes=3), r"n_nodes=3 is not allowed for df=3; .* at least 160"),
    # None constructed a law that failed at its first use with JAX's message, naming nothing.
    (lambda: cd.Gaussian(None), "gaussian: sigma=None is not allowed; sigma must be a real number"),
    (lambda: cd.StudentT(None, 1.0), "student-t: df=None is not allowed"),
    (lambda: cd.StudentT(3.0, None), "student-t: scale=None is not allowed"),
    (lambda: cd.Rademacher(None), "rademacher: sigma=None is not allowed"),
    (lambda: constant(None, 1.0), "eta=None is not allowed"),
    # An array made a batched law that reduction_factors then failed on with a reshape error.
    (lambda: cd.Gaussian(np.array([1.0, 2.0])), r"sigma=\[1.0, 2.0\] is not allowed; sigma must be a "
                                                r"single number \(one law\), not an array of shape \(2,\)"),
    (lambda: cd.StudentT(np.array([3.0, 4.0])), "df=.* must be a single number"),
])
def test_constructors_refuse_wrong_types_and_values(make, text):
    # Today strings convert through float() and fail later inside jit with an AttributeError.
    with pytest.raises(ValueError, match=text):
        make()


@pytest.fixture(scope="module")
def problem():
    return make_problem(identity_spectrum(4), cd.Gaussian(0.5))


@pytest.mark.parametrize("kwargs, text", [
    (dict(schedule=0.5),
     r"schedule must be a clipdyn schedule \(callable \(t, R\) -> \(eta, c\)\); got float"),
    (dict(problem="p"), "problem must be a clipdyn Problem"),
    (dict(T=-1.0), "T=-1.0 is not allowed; T must be finite and > 0"),
    (dict(T=math.inf), "T=inf"),
    (dict(T=1e300), r"T=1e\+300 is not allowed; T must be finite and > 0 \(within \[1e-100, 1e100\]\)"),
    (dict(schedule=None), "schedule"),
    (dict(points=2.5), "points=2.5 is not allowed; points must be an integer >= 2"),
    (dict(rtol=0.0), r"rtol=0.0 is not allowed; rtol must be a relative tolerance in \[1e-14, 0.1\]"),
    (dict(rtol=math.nan), "rtol=nan"),
    (dict(rtol=-1.0), "rtol=-1.0"),
    (dict(rtol=1.0), "rtol=1.0"),
    (dict(rtol=math.inf), "rtol=inf"),
    (dict(atol=-1.0), "atol=-1.0"),
    (dict(max_steps=0), "max_steps=0"),
    (dict(divergence_factor=0.0), "divergence_factor=0.0 is not allowed"),
    (dict(divergence_factor=-1.0), "divergence_factor=-1.0"),
    # a factor <= 1 called a run whose risk falls from its start diverged
    (dict(divergence_factor=0.5), r"divergence_factor=0.5 is not allowed; divergence_factor must be finite and > 1"),
    (dict(divergence_factor=1.0), "divergence_factor=1.0"),
    (dict(times=["0", "1"]), "times="),
])
def test_solve_ode_refuses_bad_arguments(problem, kwargs, text):
    args = dict(problem=problem, schedule=constant(1.0, 0.5), T=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=text):
        solve_ode(args.pop("problem"), args.pop("schedule"), args.pop("T"), **args)


def test_tuning_functions_refuse_bad_arguments(problem):
    with pytest.raises(ValueError, match="T=-1.0"):
        optimize_lr_schedule(problem, -1.0)
    with pytest.raises(ValueError, match="pieces=0"):
        optimize_lr_schedule(problem, 1.0, pieces=0)
    with pytest.raises(ValueError, match="is_stable must be a function"):
        bisect_max_lr(3, 0.1, 1.0)
    with pytest.raises(ValueError, match="iters=0"):
        bisect_max_lr(lambda e: e < 1, 0.1, 2.0, iters=0)
    # an infinite end bisected in log space stayed inf, returned as the answer
    with pytest.raises(ValueError, match=r"bisect_max_lr: hi=inf is not allowed; the bracket's ends must be finite"):
        bisect_max_lr(lambda e: e < 1, 0.5, math.inf)
    # found by trial-ode: a numpy broadcasting error, an AttributeError, a JAX TypeError
    with pytest.raises(ValueError, match=r"one bool per learning rate, shape \(3,\); it returned shape \(1,\)"):
        bisect_max_lr(lambda e: np.array([True]), 0.1, 10.0, n=3)
    from clipdyn.theory.tuning import ode_final_risks

    with pytest.raises(ValueError, match="takes a batch of schedules.*got one Constant"):
        ode_final_risks(problem, constant(1.0, 0.5), 1.0)
    with pytest.raises(ValueError, match="schedule object.*TimeVarying.*got the function '<lambda>'"):
        solve_ode(problem, lambda t, R: (1.0, 1.0), 1.0)


# The validators the simulators and the command line call (their wiring is the lead's).

@pytest.mark.parametrize("value, text", [
    ([0.5], r"seeds\[0\]=0.5 is not allowed; seeds\[0\] must be an integer >= 0"),
    (3, "seeds=3 is not allowed; seeds must be a sequence of integer seeds, e.g. range"),
    ("012", "seeds='012'"),
    ([], "at least one seed"),
    ([0, 1, 0], r"seed\(s\) \[0\] repeated"),
    ([-1], r"seeds\[0\]=-1"),
    ([2**40], r"seeds\[0\]=1099511627776"),
    ([True], r"seeds\[0\]=True"),
])
def test_seeds_validator(value, text):
    with pytest.raises(ValueError, match=text):
        validation.seeds(value)


def test_seeds_validator_accepts_ranges_arrays_and_integral_floats():
    np.testing.assert_array_equal(validation.seeds(range(3)), [0, 1, 2])
    np.testing.assert_array_equal(validation.seeds(np.arange(2, 4)), [2, 3])
    np.testing.assert_array_equal(validation.seeds([1.0, 5]), [1, 5])


@pytest.mark.parametrize("call, text", [
    (lambda: validation.integer("chunk_size", 1.5, 1),
     "chunk_size=1.5 is not allowed; chunk_size must be an integer >= 1"),
    (lambda: validation.integer("chunk_size", "4", 1), "chunk_size='4'.*not str"),
    (lambda: validation.integer("chunk_size", 0, 1), "chunk_size=0"),
    (lambda: validation.positive("dt", 0.0, bounded=False),
     "dt=0.0 is not allowed; dt must be finite and > 0"),
    (lambda: validation.positive("divergence_factor", -2.0, bounded=False), "divergence_factor=-2.0"),
    (lambda: validation.rtol(1e-16, "--rtol"), "--rtol=1e-16"),
    (lambda: validation.output_path("", "--out"), "--out='' is not allowed; --out must name a file"),
    (lambda: validation.output_path("runs/", "--out"), "--out='runs/'"),
])
def test_simulation_and_cli_validators(call, text):
    with pytest.raises(ValueError, match=text):
        call()
    assert validation.optional_integer("chunk_size", None, 1) is None
    assert validation.integer("chunk_size", 4.0, 1) == 4


def test_output_path_refuses_an_existing_folder(tmp_path):
    with pytest.raises(ValueError, match="is an existing folder"):
        validation.output_path(str(tmp_path))
    assert validation.output_path(str(tmp_path / "a.npz")).name == "a.npz"


# --- item 16: no global precision change -----------------------------------------------------

@pytest.fixture
def x64_off():
    """JAX's default 32-bit mode for one test, restored afterwards (the suite runs in x64)."""
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", True)


def test_entry_points_compute_in_float64_and_restore_32_bit_mode(x64_off):
    f = cd.reduction_factors(LAW, 0.5, math.sqrt(2.0))
    assert f.mu.dtype == jnp.float64
    assert float(f.nu_abs) == pytest.approx(1.032117, abs=5e-7)  # THEORY.md section 5
    assert not jax.config.jax_enable_x64 and jnp.ones(2).dtype == jnp.float32
    p = make_problem(power_law_spectrum(10, 0.3), LAW)
    assert p.lam.dtype == jnp.float64 and p.trace.dtype == jnp.float64


def test_schedule_optimiser_runs_in_float64_in_32_bit_mode(x64_off):
    # optimize_lr_schedule is an entry point like the others: float64 inside whatever the
    # caller's mode (its decorator once moved onto a helper and the optimiser ran in float32).
    from clipdyn.theory.tuning import optimize_lr_schedule

    res = optimize_lr_schedule(make_problem(power_law_spectrum(10, 0.3), LAW), 1.0, pieces=2, steps=1)
    assert jnp.asarray(res.schedule.etas).dtype == jnp.float64
    assert not jax.config.jax_enable_x64


def test_jax_still_batches_and_rebuilds_laws():
    # Batched laws and placeholders are JAX's to make: vmap with a law as in_axes, stacking, and
    # tree.map to None all rebuild a law through its constructor and must pass.
    from clipdyn.pytrees import stack

    batched = stack([cd.Gaussian(1.0), cd.Gaussian(2.0)])
    m2 = jax.vmap(lambda law: law.second_moment, in_axes=(jax.tree.map(lambda _: 0, batched),))(batched)
    np.testing.assert_array_equal(np.asarray(m2), [1.0, 4.0])
    assert jax.tree.map(lambda _: None, cd.StudentT(3.0, 1.0)).df is None


def test_group_rule_factors_traced_in_float32_are_refused(x64_off):
    # Inside a caller's float32 trace the Laplace inversion gave NaN mu at half of a grid (and
    # nu off by up to 19 %). Refused while tracing; Gaussian noise (closed forms) still runs, and
    # the same call outside the trace runs in float64.
    from clipdyn.theory import rules

    rule = rules.batch_mean(4)
    traced = jax.jit(lambda R, c: cd.reduction_factors(cd.StudentT(2.5, 1.0), R, c, rule))
    with pytest.raises(ValueError, match=r"group clipping \(n = 4\) under StudentT noise needs float64"):
        traced(jnp.float32(0.01), jnp.float32(0.1))
    f = cd.reduction_factors(cd.StudentT(2.5, 1.0), 0.01, 0.1, rule)
    assert f.mu.dtype == jnp.float64 and np.isfinite(float(f.mu))
    g = jax.jit(lambda R, c: cd.reduction_factors(cd.Gaussian(1.0), R, c, rule))(jnp.float32(0.01),
                                                                                jnp.float32(0.1))
    assert g.mu.dtype == jnp.float32 and np.isfinite(float(g.mu))


def test_smoothness_trace_runs_in_float64_in_32_bit_mode(x64_off):
    # make_problem's arrays are float64; without its own float64 context the trace's scan mixed
    # them with float32 in JAX's default mode (a carry TypeError).
    from clipdyn.sources.smoothness import least_squares_trace

    p = make_problem(power_law_spectrum(10, 0.3), cd.Gaussian(0.5))
    for method, c in (("sgd", 1.0), ("gd", math.inf)):
        out = least_squares_trace(p, 1.0, c, 5, jax.random.key(0), method=method)
        assert out.risk.dtype == jnp.float64 and np.all(np.isfinite(np.asarray(out.risk)))
    assert not jax.config.jax_enable_x64


def test_inside_a_callers_trace_the_callers_precision_applies(x64_off):
    # Switching precision in the middle of a 32-bit trace would mix float32 tracers with float64
    # constants; the documented rule is that the trace's precision applies. float32 agrees with
    # the float64 value to its own resolution (1e-6 relative).
    got = jax.jit(lambda r, c: cd.mu(LAW, r, c))(0.5, math.sqrt(2.0))
    assert got.dtype == jnp.float32
    assert float(got) == pytest.approx(0.682689492137086, rel=1e-6)
    with cd.precision.x64():
        got64 = jax.jit(lambda r, c: cd.mu(LAW, r, c))(0.5, math.sqrt(2.0))
    assert got64.dtype == jnp.float64 and not jax.config.jax_enable_x64


def test_student_t_quadrature_does_not_depend_on_the_mode_or_a_trace(x64_off):
    # The node count is computed in Python floats, in 32-bit mode too: it equals the count from
    # the quadrature's range computed by JAX in float64 (the formula of noise._student_nodes),
    # and a law can be built inside a jit trace.
    for df in (0.5, 1.0, 2.5, 30.0):
        with cd.precision.x64():
            left, right = (float(v) for v in cd.noise._gamma_log_range(np.float64(df)))
        n = int(math.ceil((right - left) / min(0.25, 0.5 * math.sqrt(2.0 / df)))) + 1
        assert cd.StudentT(df).n_nodes == max(64, 32 * math.ceil(n / 32))
    with cd.precision.x64():
        inside = jax.jit(lambda r: cd.mu(cd.StudentT(3.0, 1.0), r, 1.0))(0.5)
        outside = cd.mu(cd.StudentT(3.0, 1.0), 0.5, 1.0)
    assert float(inside) == pytest.approx(float(outside), rel=1e-14)


def test_the_x64_context_is_thread_local(x64_off):
    import threading

    seen = []
    with cd.precision.x64():
        t = threading.Thread(target=lambda: seen.append(jnp.ones(1).dtype))
        t.start()
        t.join()
        assert jnp.ones(1).dtype == jnp.float64
    assert seen == [jnp.float32]


def _fresh_python(code: str) -> str:
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_import_leaves_x64_off_and_float64_results_in_a_fresh_process():
    # A user's process: JAX in its default 32-bit mode. Importing clipdyn must leave it so (today
    # it switches x64 on), while clipdyn's own numbers stay float64 and accurate: THEORY.md
    # section 5's check values to the digits quoted there (1e-6; the ODE's to 5e-5).
    out = _fresh_python("""
        import math
        import jax, clipdyn as cd
        print(jax.config.jax_enable_x64)
        from clipdyn.theory.problem import make_problem, power_law_spectrum
        from clipdyn.theory.schedules import constant
        from clipdyn.theory.ode import solve_ode
        f = cd.reduction_factors(cd.Gaussian(1.0), 0.5, math.sqrt(2.0))
        print(f.mu.dtype, float(f.mu), float(f.nu_abs), float(f.ccc), float(f.csc))
        p = make_problem(power_law_spectrum(1000, 0.3), cd.Gaussian(0.5), R0=1.0)
        r = solve_ode(p, constant(1.0, 0.5), 4.0, 5)
        print(r.risk.dtype, float(p.trace), float(r.risk[1]), float(r.risk[4]))
        import jax.numpy as jnp
        print(jax.config.jax_enable_x64, jnp.ones(1).dtype)
    """).split("\n")
    assert out[0] == "False"
    dtype, mu, nu_abs, ccc, csc = out[1].split()
    assert dtype == "float64"
    assert float(mu) == pytest.approx(0.682689, abs=5e-7)
    assert float(nu_abs) == pytest.approx(1.032117, abs=5e-7)
    assert float(ccc) == pytest.approx(0.9031, abs=5e-5)
    assert float(csc) == pytest.approx(1.323, abs=5e-4)
    dtype, trace, r1, r4 = out[2].split()
    assert dtype == "float64" and float(trace) == pytest.approx(179.0, abs=0.05)
    assert float(r1) == pytest.approx(0.9158, abs=5e-5) and float(r4) == pytest.approx(0.7048, abs=5e-5)
    assert out[3] == "False float32"


@pytest.mark.parametrize("rule", ["batch", None])
def test_tabulate_needs_a_rule(rule):
    from clipdyn.theory import rules

    with pytest.raises(ValueError, match="tabulate: rule must be a clipdyn clipping rule .*; got "
                                         + ("str 'batch'" if rule else "NoneType")):
        rules.tabulate(rule, LAW, 1.0)


@pytest.mark.parametrize("call, text", [
    (lambda: cd.reduction_factors(LAW, np.ones(3), np.ones(2)),
     r"R of shape \(3,\) and c of shape \(2,\) do not broadcast"),
    (lambda: solve_ode(make_problem(np.ones(4), LAW), stack_schedules([constant(1.0, 0.5), constant(1.0, 1.0)]),
                       T=1.0),
     r"solve_ode takes one schedule, whose \(eta, c\) are scalars; got \(eta, c\) of shapes \[\(2,\), \(2,\)\]"),
    (lambda: stack_schedules([constant(1.0, 0.5), 3]), r"schedules\[1\] must be a clipdyn schedule .*got int"),
    # simulate_runs wrapped a batch in another and crashed in JAX ("mul got incompatible shapes")
    (lambda: simulate_runs(make_problem(np.ones(4), LAW), stack_schedules([constant(1.0, 0.5), constant(1.0, 1.0)]),
                           [0], T=1.0, points=3),
     r"simulate_runs takes one schedule, whose \(eta, c\) are scalars; got \(eta, c\) of shapes \[\(2,\), \(2,\)\]"),
])
def test_shapes_and_batches_are_named_in_the_message(call, text):
    # JAX's own messages here ("Incompatible shapes for broadcasting", "Incompatible types for
    # broadcasting: input type=float64[2]") name neither argument.
    with pytest.raises(ValueError, match=text):
        call()


def test_simulate_runs_names_a_schedule_that_is_not_one():
    from clipdyn.runs.sweep import simulate_runs

    with pytest.raises(ValueError, match=r"schedule must be a clipdyn schedule .*; got float"):
        simulate_runs(make_problem(np.ones(4), LAW), 0.5, [0], 1.0, 3)


def test_simulate_runs_names_data_that_is_not_a_dataset():
    # A SPEC string where the loaded dataset belongs raised an AttributeError deep inside.
    from clipdyn.runs.sweep import simulate_runs

    with pytest.raises(ValueError, match=r"data must be a dataset as clipdyn.data.load_problem returns "
                                         r"it .*; got str 'digits'"):
        simulate_runs(make_problem(np.ones(4), LAW), constant(1.0, 1.0), [0], 1.0, 3, data="digits")


def test_simulations_refuse_a_time_varying_schedule_by_name():
    # Its functions are static, so a sweep has nothing to batch over: a clear refusal naming the
    # schedules that work, not an IndexError from an empty list of leaves.
    from clipdyn.theory.schedules import TimeVarying
    from clipdyn.runs.sweep import simulate_runs

    with pytest.raises(ValueError, match=r"a TimeVarying has none to batch over.*PiecewiseConstant"):
        simulate_runs(make_problem(np.ones(4), LAW), TimeVarying(1.0, lambda t: 0.5 + t), [0], 0.5, 3)


def test_dt_is_c_hsgds_alone():
    # With method "sgd" a dt was taken: the times were relabelled steps * dt while SGD still took
    # steps of 1 / Tr K. C-HSGD takes it (its Euler-Maruyama step).
    prob = make_problem(np.ones(4), LAW)
    with pytest.raises(ValueError, match=r"dt=0.1 is not allowed with method 'sgd'"):
        simulate_runs(prob, constant(1.0, 1.0), [0], 1.0, 3, dt=0.1)
    res = simulate_runs(prob, constant(1.0, 1.0), [0], 1.0, 3, dt=0.1, method="hsgd")
    np.testing.assert_allclose(res.t, [0.0, 0.5, 1.0])
    from clipdyn import sim  # the engine's own factory checks a concrete dt too

    with pytest.raises(ValueError, match="dt=-0.1 is not allowed; dt must be finite and > 0"):
        sim.hsgd(sim.prepare(prob), constant(1.0, 1.0), dt=-0.1)


def test_run_sweep_names_a_single_schedule_and_a_path_that_is_not_one(tmp_path, monkeypatch):
    # One unstacked Constant was refused with a list of allowed kinds that named Constant; out=3
    # was taken as a path and wrote 3.npz.
    from clipdyn.runs.sweep import run_sweep

    prob = make_problem(np.ones(4), LAW)
    with pytest.raises(ValueError, match=r"run_sweep takes a batch of schedules, stack_schedules\(\[\.\.\.\]\); "
                                         r"got one Constant with scalar parameters"):
        run_sweep(prob, constant(1.0, 1.0), [0], 1.0, 3)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"out=3 is not allowed; out must be a path \(str or Path\)"):
        run_sweep(prob, stack_schedules([constant(1.0, 1.0)]), [0], 1.0, 3, out=3)
    assert list(tmp_path.iterdir()) == []


def test_a_partly_batched_schedule_is_refused_with_its_fields_shapes():
    # constant(etas) keeps the scalar default threshold: ode_final_risks (and ode_is_stable under
    # bisect_max_lr) crashed inside JAX with "IndexError: tuple index out of range", and run_sweep
    # with an IndexError from its host-side take.
    from clipdyn.runs.sweep import run_sweep
    from clipdyn.theory import tuning
    from clipdyn.theory.schedules import StepDecay

    prob = make_problem(np.ones(4), LAW)
    etas = np.array([0.5, 1.0])
    for batch in (constant(etas), StepDecay(etas, 0.5, 1.0)):
        with pytest.raises(ValueError, match=r"ode_final_risks takes a batch of schedules whose every "
                                             r"parameter has the same leading axis C; got a "
                                             rf"{type(batch).__name__} with parameter shapes .*\(2,\).*\(\)"):
            tuning.ode_final_risks(prob, batch, 2.0)
        with pytest.raises(ValueError, match=r"run_sweep takes a batch .* same leading axis C"):
            run_sweep(prob, batch, [0], 1.0, 3)
    with pytest.raises(ValueError, match=r"leading axis C"):
        tuning.bisect_max_lr(tuning.ode_is_stable(prob, lambda e: constant(np.asarray(e)), 20.0), 0.5, 3.0)
    # The full batch runs, and matches the closed form of the noiseless identity problem (2.9):
    # R(t) = R0 exp(-2 eta (1 - eta / 2) t) at rtol 1e-8 (float64).
    risk, status = tuning.ode_final_risks(prob, constant(etas, np.full(2, np.inf)), 2.0)
    assert status.tolist() == [0, 0]
    noiseless = make_problem(np.ones(4), cd.Gaussian(0.0))
    risk, _ = tuning.ode_final_risks(noiseless, constant(etas, np.full(2, np.inf)), 2.0)
    np.testing.assert_allclose(risk[:, -1], noiseless.R0 * np.exp(-2 * etas * (1 - etas / 2) * 2.0),
                               rtol=1e-6)


@pytest.mark.parametrize("R0, held", [(1e50, "inf"), (1e-40, "0")])
def test_float32_simulations_refuse_a_start_float32_cannot_hold(R0, held):
    # R0 is allowed in [1e-100, 1e100] (the ODE and float64 run there), but float32 held 1e50 as
    # inf (every run flagged diverged at t = 0.1) and 1e-40 as 0 (subnormals are flushed: a risk
    # of 0 throughout where the ODE gives 3.7e-41).
    prob = make_problem(np.ones(10), cd.Gaussian(0.0), R0=R0)
    text = re.escape(f"R0={R0:.3g} does not fit the simulation's float32 (it holds {held} there)")
    with pytest.raises(ValueError, match=text):
        simulate_runs(prob, constant(1.0, 1.0), [0], 1.0, 3)
    res = simulate_runs(prob, constant(1.0, 1.0), [0], 1.0, 3, precision="64")
    assert res.risk[0, 0, 0] == pytest.approx(R0, rel=1e-12) and not res.diverged.any()


# ---- values of types outside the checked ones; sizes without bound (trial-api, 2026-11-23) ------

def _fraction_and_friends():
    from decimal import Decimal
    from fractions import Fraction

    prob = make_problem(np.ones(4), LAW)
    return [
        # Fraction and Decimal passed as "not a number, so a JAX placeholder" and computed:
        # mu(law, Fraction(-1), 1) returned 1.0, a problem with R0 = -1 was built, a negative
        # horizon gave a curve on negative times, divergence_factor 1/2 called every run diverged.
        (lambda: factors.mu(LAW, Fraction(-1), 1.0), "R=-1 is not allowed; R must be a real number (int or float), not Fraction"),
        (lambda: factors.reduction_factors(LAW, Decimal("-0.5"), 1.0), "not Decimal"),
        (lambda: factors.optimal_threshold(cd.StudentT(3.0), Fraction(-1)), "not Fraction"),
        (lambda: make_problem(np.ones(4), LAW, R0=Fraction(-1)), "R0=-1 is not allowed"),
        (lambda: solve_ode(prob, constant(0.5), Fraction(-1), 3), "T=-1 is not allowed"),
        (lambda: simulate_runs(prob, constant(0.5), [0], 0.5, 3, divergence_factor=Fraction(1, 2)),
         "divergence_factor=1/2 is not allowed"),
        # dict, objects and lists holding None were stored and failed later inside JAX.
        (lambda: cd.Gaussian({}), "sigma={} is not allowed; sigma must be a real number (int or float), not dict"),
        (lambda: constant(eta=object()), "is not allowed; eta must be a real number (int or float), not object"),
        (lambda: constant([None]), "eta=[None] is not allowed"),
        # One argument that was not checkable switched off the mixture's other checks: these
        # weights sum to 1.1.
        (lambda: cd.GaussianMixture([0.5, 0.6], [0.0, 0.0], None), "sigmas=None is not allowed"),
        (lambda: cd.Gaussian(10**400), "sigma=<int of 401 digits> is not allowed"),
        # Scalar parameters given as arrays passed the checks and failed at float() or in a trace.
        (lambda: solve_ode(prob, constant(0.5), [1.0], 3), "T=[1.0] is not allowed; T must be a single number"),
        (lambda: solve_ode(prob, constant(0.5), 1.0, 3, atol=np.full(3, 1e-12)), "atol must be a single number"),
        (lambda: solve_ode(prob, constant(0.5), 1.0, 3, rtol=np.array([1e-9, 1e-8])), "rtol must be a single number"),
        (lambda: solve_ode(prob, constant(0.5), 1.0, 3, divergence_factor=np.array([2.0, 3.0])),
         "divergence_factor must be a single number"),
        (lambda: make_problem(np.ones(4), LAW, R0=np.array([1.0, 2.0])), "R0 must be a single number"),
        (lambda: power_law_spectrum(10, [1.0]), "alpha must be a single number"),
        (lambda: max_ccc(0.5, cd.StudentT(3.0), R_min=[1e-6]), "R_min must be a single number"),
        (lambda: simulate_runs(prob, constant(0.5), [0], [0.5], 3), "T must be a single number"),
        # Truthiness: "no" counted as True.
        (lambda: solve_ode(prob, constant(0.5), 1.0, 3, return_modes="no"), "return_modes='no' is not allowed; return_modes must be True or False"),
        (lambda: simulate_runs(prob, constant(0.5), [0], 0.5, 3, progress="no"), "progress must be True or False"),
        # Sizes that would run for hours (iters 10**9: ~7 h at 25 us an iteration) or overflow.
        (lambda: factors.optimal_threshold(cd.StudentT(3.0), 0.5, iters=10**9), "iters must be an integer >= 1 and <= 200"),
        (lambda: factors.optimal_threshold(cd.StudentT(3.0), 0.5, grid=1e300), "grid must be an integer >= 3 and <= 100000"),
        (lambda: solve_ode(prob, constant(0.5), 1.0, 10**7), "points must be an integer >= 2 and <= 1000000"),
        (lambda: solve_ode(prob, constant(0.5), 1.0, 3, max_steps=1e300), "max_steps must be an integer >= 1 and <= 2147483647"),
        (lambda: simulate_runs(prob, constant(0.5), [0], 0.5, 10**400), "points=<int of 401 digits> is not allowed"),
        (lambda: max_ccc(0.5, cd.StudentT(3.0), refine=1e300), "refine must be an integer >= 0 and <= 1024"),
        (lambda: cd.StudentT(3.0, 1.0, n_nodes=1e300), "n_nodes must be an integer >= 2 and <= 131072"),
        # The rest of the trial's list.
        (lambda: simulate_runs(prob, constant(0.5), jnp.array(0.5), 0.5, 3), "seeds=0.5 is not allowed"),
        (lambda: cd.GaussianMixture(0.5, [0.0], [1.0]), "got shapes [(), (1,), (1,)]"),
        (lambda: PiecewiseConstant([-1.0], [0.5, 0.1]), "boundaries must be finite and > 0"),
    ]


@pytest.mark.parametrize("call, message", _fraction_and_friends())
def test_values_of_any_type_are_checked_and_sizes_are_bounded(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_the_type_check_leaves_tracers_and_rebuilt_pytrees_alone():
    # The widened check must not refuse what JAX itself passes: tracers under jit/vmap, and the
    # placeholders of a pytree being rebuilt (eval_shape returns a law of ShapeDtypeStructs).
    law = jax.vmap(lambda s: cd.Gaussian(s))(jnp.array([0.5, 1.0]))
    assert law.sigma.shape == (2,)
    shaped = jax.eval_shape(lambda: cd.GaussianMixture([0.5, 0.5], [0.0, 0.0], [1.0, 2.0]))
    assert shaped.weights.shape == (2,)
    f = jax.jit(lambda r: factors.mu(LAW, r, 1.0))
    assert float(f(0.5)) == pytest.approx(float(factors.mu(LAW, 0.5, 1.0)), rel=1e-6)
    # A Fraction's refusal and a good float's answer differ only in the type: 0.5 computes.
    assert 0 < float(factors.mu(LAW, 0.5, 1.0)) < 1


def test_engine_building_blocks_refuse_bad_input():
    from clipdyn import sim
    from clipdyn.runs.sweep import run_sweep

    prob = make_problem(np.ones(4), LAW)
    with pytest.raises(ValueError, match="problem must be a clipdyn Problem"):
        sim.prepare(None)
    with pytest.raises(ValueError, match="dtype='int8' is not allowed; the engines run in float32 or float64"):
        sim.prepare(prob, dtype="int8")
    prep = sim.prepare(prob)
    with pytest.raises(ValueError, match="schedule must be a clipdyn schedule"):
        sim.sgd(prep, 0.5)
    with pytest.raises(ValueError, match="divergence_factor=-5 is not allowed"):
        sim.sgd(prep, constant(0.5), divergence_factor=-5)
    with pytest.raises(ValueError, match="rules must be a clipdyn clipping rule batched"):
        sim.run_batch(prep, stack_schedules([constant(0.5)]), None, None, np.array([0, 1]))
    with pytest.raises(ValueError, match="T=-1.0 is not allowed"):
        sim.output_steps(-1.0, 3, 64.0)
    with pytest.raises(ValueError, match="trace=0.0 is not allowed"):
        sim.output_steps(1.0, 3, 0.0)
    for devices in ([], "cpu"):
        with pytest.raises(ValueError, match="devices must be None .* or a non-empty list of JAX devices"):
            run_sweep(prob, stack_schedules([constant(0.5)]), [0], 0.5, 3, devices=devices)


def test_shapes_that_do_not_broadcast_are_named_by_every_factor_function():
    from clipdyn.sources import finite_sum as fs
    from clipdyn.theory import batch_factors as bf

    with pytest.raises(ValueError, match=r"R of shape \(2, 3\) and c of shape \(2,\) do not broadcast"):
        bf.group_factors(LAW, np.ones((2, 3)), np.ones(2), 2)
    with pytest.raises(ValueError, match=r"R of shape \(2, 3\) and c of shape \(\) and K of shape \(2,\)"):
        bf.preclip_factors(LAW, np.ones((2, 3)), 1.0, np.ones(2))
    with pytest.raises(ValueError, match="clip must be a single number"):
        fs.expected_clip(1.0, [1.0, 2.0], 0.0)


def test_run_gd_refuses_a_batch_of_rules():
    # A batch broadcast against x0 ran one rule per coordinate without a word.
    from clipdyn.sources import smoothness as sm

    f = sm.cosh_sum(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"one StepRule of scalars; got a batch of shape \(2,\)"):
        sm.run_gd(f, jnp.array([1.0, -0.5]), sm.fixed_step(np.array([0.1, 0.2])), 1e-6, 10)
    with pytest.raises(ValueError, match="rule must be a StepRule"):
        sm.run_gd(f, jnp.array([1.0, -0.5]), 0.1, 1e-6, 10)


def test_solve_ode_takes_times_without_a_horizon():
    # The docstring says T and points are ignored with times=; T was still a required argument.
    prob = make_problem(np.ones(4), cd.Gaussian(0.0))
    res = solve_ode(prob, constant(0.5), times=[0.0, 1.0, 2.0])
    np.testing.assert_allclose(res.risk, np.exp(-0.75 * np.array([0.0, 1.0, 2.0])), rtol=1e-7)  # (2.9): 2 eta (1 - eta / 2)
    with pytest.raises(ValueError, match="solve_ode needs the horizon T .* or the output times"):
        solve_ode(prob, constant(0.5))
