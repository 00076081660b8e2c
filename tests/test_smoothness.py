"""(L0, L1)-smoothness (Zhang, He, Sra, Jadbabaie, ICLR 2020): test functions, GD runs, the estimator.

Precision: float64 throughout (conftest turns x64 on). Exact identities are asserted to 1e-12
relative or to a stated number of float64 rounding errors; bounds derived in the comments (and in
theory/l0l1.md) are asserted as bounds, with no slack beyond one iteration for rounding.
"""

import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import clipdyn as cd
from clipdyn.runs.results import load_results
from clipdyn.sources import smoothness as sm
from clipdyn.theory.problem import make_problem, power_law_spectrum

ROOT = Path(__file__).resolve().parents[1]
LAM5 = np.array([1.0, 0.7, 0.3, 0.11, 0.05])
ASINH1 = math.asinh(1.0)


def functions():
    return {"cosh": sm.cosh_sum(LAM5), "quartic": sm.quartic_sum(), "quadratic": sm.quadratic(LAM5)}


# ---- the test functions -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cosh", "quartic", "quadratic"])
def test_gradient_and_hessian_norm_match_autodiff(name):
    fn = functions()[name]
    x = jnp.asarray(np.random.default_rng(0).normal(0.0, 3.0, 5))
    np.testing.assert_allclose(fn.grad(x), jax.grad(fn.value)(x), rtol=1e-12)
    hess = np.asarray(jax.hessian(fn.value)(x))
    assert float(fn.hessian_norm(x)) == pytest.approx(np.linalg.norm(hess, 2), rel=1e-12)


@pytest.mark.parametrize("name", ["cosh", "quartic", "quadratic"])
def test_l0_l1_inequality_holds(name):
    # ||Hess f|| <= L0 + L1 ||grad f|| (theory/l0l1.md, eqs. (1), (9), (11)), on a 1-D grid and at
    # random points in 5 dimensions up to |x_i| = 15; rounding: a few ulps of the left side.
    fn = functions()[name]
    one = sm.cosh_sum([1.0]) if name == "cosh" else sm.quadratic([2.5]) if name == "quadratic" else fn
    grid = jnp.linspace(-20.0, 20.0, 4001)[:, None]
    pts = jnp.asarray(np.random.default_rng(1).uniform(-15.0, 15.0, (2000, 5)))
    for f, xs in ((one, grid), (fn, pts)):
        h = jax.vmap(f.hessian_norm)(xs)
        g = jax.vmap(lambda x: jnp.linalg.norm(f.grad(x)))(xs)
        assert np.all(np.asarray(h) <= (float(f.l0) + float(f.l1) * np.asarray(g)) * (1 + 1e-14))


def test_l0_l1_constants_are_tight_in_one_dimension():
    # cosh: cosh x - |sinh x| = exp(-|x|), largest (= L0 = 1) at 0. Quartic: 3x^2 - |x|^3 is
    # largest at |x| = 2 where it is 4 = L0; on a grid of spacing 0.01 the maximum misses it by at
    # most 3 * 0.005^2 (second derivative -6).
    x = jnp.linspace(-10.0, 10.0, 2001)[:, None]
    for fn, l0, tol in ((sm.cosh_sum([1.0]), 1.0, 1e-12), (sm.quartic_sum(), 4.0, 1e-4)):
        slack = jax.vmap(fn.hessian_norm)(x) - float(fn.l1) * jnp.abs(jax.vmap(fn.grad)(x)[:, 0])
        assert float(jnp.max(slack)) == pytest.approx(l0, abs=tol)


@pytest.mark.parametrize("name", ["cosh", "quartic", "quadratic"])
def test_grad_bound_is_the_supremum_on_the_sublevel_set(name):
    # M is attained at the vertex on the axis of the largest curvature (theory/l0l1.md, eqs. (10),
    # (12)) and no point of {f <= f(x0)} (40000 random points, half on its boundary) exceeds it.
    fn = functions()[name]
    x0 = jnp.asarray([1.5, -2.0, 0.5, 3.0, -1.0])
    f0, M = float(fn.value(x0)), float(fn.grad_bound(x0))
    if name == "cosh":
        r = math.acosh(1.0 + f0 / LAM5[0])
    elif name == "quartic":
        r = (4.0 * f0) ** 0.25
    else:
        r = math.sqrt(2.0 * f0 / LAM5[0])
    vertex = jnp.zeros(5).at[0].set(r)
    assert float(fn.value(vertex)) == pytest.approx(f0, rel=1e-12)
    assert float(jnp.linalg.norm(fn.grad(vertex))) == pytest.approx(M, rel=1e-12)
    # f is convex and even with f(0) = 0, so along a direction u it crosses f0 once: bisect for
    # the boundary point t u, and take points t u s, s uniform in [0, 1], inside.
    u = np.random.default_rng(2).normal(size=(20000, 5))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    lo, hi = np.zeros(len(u)), np.full(len(u), 50.0)
    value = jax.jit(jax.vmap(fn.value))
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        inside = np.asarray(value(jnp.asarray(mid[:, None] * u))) <= f0
        lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
    scale = np.concatenate([lo, lo * np.random.default_rng(3).uniform(size=len(u))])
    pts = jnp.asarray(scale[:, None] * np.concatenate([u, u]))
    assert np.all(np.asarray(value(pts)) <= f0)
    gn = jax.vmap(lambda x: jnp.linalg.norm(fn.grad(x)))(pts)
    assert float(jnp.max(gn)) <= M * (1 + 1e-12)
    assert float(jnp.max(gn)) >= 0.5 * M  # the boundary points do come near the supremum


# ---- the estimator --------------------------------------------------------------------------


def test_estimator_is_the_curvature_on_a_quadratic_for_any_step():
    # 1-D: (lam (x + D/2) - lam x) / (D/2) = lam exactly; rounding ~ eps |x| / |D| <= 1e-12 here.
    fn = sm.quadratic([2.7])
    for x, d in ((0.3, 1e-3), (-4.0, 50.0), (1e3, -7.0), (0.0, 1e6)):
        est = sm.local_smoothness(fn.grad, jnp.asarray([x]), jnp.asarray([d]))
        assert float(est.estimate) == pytest.approx(2.7, rel=1e-12)
        assert float(est.grad_norm) == pytest.approx(2.7 * abs(x), rel=1e-15)
    # d dimensions: ||H Delta|| / ||Delta||, between the extreme curvatures.
    fn = sm.quadratic(LAM5)
    rng = np.random.default_rng(3)
    for _ in range(5):
        x, d = rng.normal(size=5), rng.normal(size=5) * 10 ** rng.uniform(-2, 2)
        est = float(sm.local_smoothness(fn.grad, jnp.asarray(x), jnp.asarray(d)).estimate)
        assert est == pytest.approx(np.linalg.norm(LAM5 * d) / np.linalg.norm(d), rel=1e-12)
        assert LAM5.min() <= est <= LAM5.max()


def test_estimator_on_pytrees_equals_the_flat_estimate():
    lam_a, lam_b = jnp.asarray([1.0, 2.0]), jnp.asarray([[0.5, 3.0, 0.1]])

    def grad(p):
        return {"a": lam_a * p["a"] ** 3, "b": lam_b * jnp.sinh(p["b"])}

    x = {"a": jnp.asarray([0.4, -1.0]), "b": jnp.asarray([[0.2, 1.5, -2.0]])}
    d = {"a": jnp.asarray([0.1, 0.3]), "b": jnp.asarray([[-0.2, 0.05, 0.4]])}

    def flat(t):
        return jnp.concatenate([t["a"], t["b"].ravel()])

    def grad_flat(v):
        return flat(grad({"a": v[:2], "b": v[2:].reshape(1, 3)}))

    tree = sm.local_smoothness(grad, x, d)
    ref = sm.local_smoothness(grad_flat, flat(x), flat(d))
    assert float(tree.estimate) == pytest.approx(float(ref.estimate), rel=1e-14)
    assert float(tree.grad_norm) == pytest.approx(float(ref.grad_norm), rel=1e-14)


def test_estimator_grows_with_the_gradient_norm_on_cosh():
    # Along the descent step Delta = -g / (2 (1 + |g|)) from x > 0, the estimate is cosh(xi) for
    # some xi in (x + Delta/2, x) (mean value theorem), so it increases with |g| = sinh x, obeys
    # (L0, L1) = (1, 1), and for x >= 5 its log-log slope against |g| is tanh(xi) tanh(x)
    # (1 - dDelta/dx / 2) in [0.997, 1].
    fn = sm.cosh_sum([1.0])
    x = jnp.linspace(0.5, 10.0, 40)[:, None]
    g = jax.vmap(fn.grad)(x)
    delta = -g / (2.0 * (1.0 + jnp.abs(g)))
    est = jax.vmap(lambda xi, di: sm.local_smoothness(fn.grad, xi, di))(x, delta)
    e, gn = np.asarray(est.estimate), np.asarray(est.grad_norm)
    assert np.all(np.diff(e) > 0) and np.all(np.diff(gn) > 0)
    lo, hi = np.cosh(np.asarray(x + delta / 2)[:, 0]), np.cosh(np.asarray(x)[:, 0])
    assert np.all((e >= lo * (1 - 1e-10)) & (e <= hi * (1 + 1e-10)))
    assert np.all(e <= 1.0 + gn)
    big = np.asarray(x)[:, 0] >= 5.0
    slope, _, _ = sm.loglog_slope(gn[big], e[big])
    assert 0.997 <= slope <= 1.0 + 1e-9


def test_loglog_slope_recovers_a_power_law():
    x = np.geomspace(1e-3, 10.0, 50)
    slope, intercept, se = sm.loglog_slope(x, 3.0 * x ** 0.7)
    assert slope == pytest.approx(0.7, rel=1e-12) and intercept == pytest.approx(math.log(3.0), rel=1e-12)
    assert se < 1e-12


# ---- gradient descent to a tolerance ---------------------------------------------------------


def numpy_gd(fn_np, x0, eta, gamma, beta, eps, max_iter):
    """The same loop in plain NumPy: the reference for run_gd."""
    x = np.array(x0, float)
    for k in range(max_iter + 1):
        g = fn_np(x)
        gn = np.linalg.norm(g)
        if gn <= eps or k == max_iter:
            return k, x
        x = x - min(eta, gamma / (gn + beta)) * g


@pytest.mark.parametrize("name", ["cosh", "quartic"])
def test_run_gd_matches_a_numpy_loop(name):
    # Same iteration counts as a NumPy loop (float64). Counts could differ by one only if ||g||
    # landed within rounding of eps at some step; for these starts it does not.
    fn = {"cosh": sm.cosh_sum(LAM5), "quartic": sm.quartic_sum()}[name]
    grad_np = {"cosh": lambda x: LAM5 * np.sinh(x), "quartic": lambda x: x ** 3}[name]
    x0 = np.array([2.0, -1.5, 3.0, 0.7, -2.5])
    eps = 1e-6 if name == "cosh" else 1e-3
    M = float(fn.grad_bound(jnp.asarray(x0)))
    l0, l1 = float(fn.l0), float(fn.l1)
    for rule in (sm.fixed_step(sm.descent_step(l0, l1, M)), sm.zhang_clipped(l0, l1), sm.zhang_normalized(l0, l1)):
        res = sm.run_gd(fn, jnp.asarray(x0), rule, eps, 200_000)
        k, _ = numpy_gd(grad_np, x0, float(rule.eta), float(rule.gamma), float(rule.beta), eps, 200_000)
        assert bool(res.reached) and not bool(res.increased) and not bool(res.diverged)
        assert int(res.iterations) == k


def test_run_gd_reports_cap_increase_and_divergence():
    fn = sm.cosh_sum([1.0])
    x0 = jnp.asarray([3.0])
    capped = sm.run_gd(fn, x0, sm.fixed_step(0.01), 1e-6, 5)
    assert int(capped.iterations) == 5 and not bool(capped.reached)
    # h = 3 from x = 3: x1 = 3 - 3 sinh 3 = -27.05 (f rises), x2 ~ 8e11: cosh overflows.
    div = sm.run_gd(fn, x0, sm.fixed_step(3.0), 1e-6, 100)
    assert bool(div.diverged) and bool(div.increased) and not bool(div.reached) and int(div.iterations) == 2
    inc = sm.run_gd(fn, x0, sm.fixed_step(3.0), 1e-6, 100, stop_on_increase=True)
    assert bool(inc.increased) and not bool(inc.reached) and int(inc.iterations) == 1


def test_best_descending_step_equals_exhaustive_search():
    fn = sm.cosh_sum(LAM5)
    x0 = jnp.asarray([2.0, -1.5, 3.0, 0.7, -2.5])
    steps = np.geomspace(0.02, 4.0, 15)[::-1]
    i, best, _ = sm.best_descending_step(fn, x0, sm.fixed_step(steps), 1e-6, 10 ** 6)
    full = [sm.run_gd(fn, x0, sm.fixed_step(h), 1e-6, 10 ** 6, stop_on_increase=True) for h in steps]
    counts = [int(r.iterations) if bool(r.reached) and not bool(r.increased) else math.inf for r in full]
    assert i == int(np.argmin(counts)) and int(best.iterations) == min(counts)
    assert any(bool(r.increased) for r in full)  # the grid does reach steps that do not descend


def test_clipped_and_normalized_gd_beat_fixed_steps_as_M_grows():
    # Zhang et al.'s claim on cosh x - 1 ((L0, L1) = (1, 1), M = sinh x0, eps = 1e-6), with bounds
    # derived in theory/l0l1.md, eqs. (14)-(16):
    # * GD with h = 1/(1 + M) needs at least log(0.5/eps) / -log(1 - cosh(1) h) iterations
    #   (linear in M; valid for M >= 7, i.e. x0 >= 2.64);
    # * clipped GD (eta = 0.1, updates at most 0.1 long) at most ceil((x0 - asinh 1)/0.1) +
    #   ceil(log(asinh 1 / asinh eps) / log(1/0.9)); normalised GD at most
    #   ceil((x0 - asinh 1)/0.05) + ceil(log(asinh 1 / asinh eps) / log(1/0.95)): both grow like
    #   x0 = log(2M). One iteration of slack for rounding at the phase boundary.
    eps = 1e-6
    fn = sm.cosh_sum([1.0])
    tail = math.log(ASINH1 / math.asinh(eps))
    for x0 in (3.0, 5.0, 7.0, 9.0):
        M = math.sinh(x0)
        h = sm.descent_step(1.0, 1.0, M)
        gd = sm.run_gd(fn, jnp.asarray([x0]), sm.fixed_step(h), eps, 10 ** 7)
        clip = sm.run_gd(fn, jnp.asarray([x0]), sm.zhang_clipped(1.0, 1.0), eps, 10 ** 7)
        norm = sm.run_gd(fn, jnp.asarray([x0]), sm.zhang_normalized(1.0, 1.0), eps, 10 ** 7)
        assert all(bool(r.reached) for r in (gd, clip, norm))
        assert int(gd.iterations) >= math.log(0.5 / eps) / -math.log1p(-math.cosh(1.0) * h)
        assert int(clip.iterations) <= math.ceil((x0 - ASINH1) / 0.1) + math.ceil(tail / -math.log(0.9)) + 1
        assert int(norm.iterations) <= math.ceil((x0 - ASINH1) / 0.05) + math.ceil(tail / -math.log(0.95)) + 1
    assert int(gd.iterations) > 50 * int(clip.iterations)  # at x0 = 9, M = 4051


def test_best_fixed_step_iterations_grow_with_M():
    # A fixed step h descends from x0 only if |x0 - h sinh x0| < x0, i.e. h < 2 x0 / sinh x0
    # (exact), so the best step shrinks like 1/M and its iteration count grows like M / log M: the
    # ratio between x0 = 8 (M = 1490) and x0 = 4 (M = 27.3) is ~27 in theory; we ask for 10,
    # leaving room for the grid resolution (x1.5 per point) and the O(1) terms.
    fn = sm.cosh_sum([1.0])
    counts = []
    for x0 in (4.0, 8.0):
        M = math.sinh(x0)
        steps = np.geomspace(sm.descent_step(1.0, 1.0, M), 4.0, 30)[::-1]
        i, best, _ = sm.best_descending_step(fn, jnp.asarray([x0]), sm.fixed_step(steps), 1e-6, 10 ** 7)
        assert i >= 0 and steps[i] < 2 * x0 / M
        counts.append(int(best.iterations))
    assert counts[1] >= 10 * counts[0]


# ---- the least-squares control and training traces ------------------------------------------


def ls_problem(d=200):
    return make_problem(power_law_spectrum(d, 0.3), cd.Gaussian(0.5), R0=1.0)


def test_least_squares_sgd_estimate_is_flat_in_the_gradient_norm():
    # Along streaming SGD the step is parallel to the fresh sample x_t, so the estimate is
    # ||K x_t|| / ||x_t||: in [lam_min, lam_max], independent of theta_t (hence of ||grad R||),
    # and the same with or without clipping for the same samples (to rounding). The estimates
    # are i.i.d., so the least-squares slope has mean 0 and its OLS standard error is valid:
    # |slope| < 4 s.e. (fixed seed).
    prob = ls_problem()
    steps = int(10 * float(prob.trace))
    key = jax.random.PRNGKey(0)
    sgd = sm.least_squares_trace(prob, 1.0, math.inf, steps, key)
    clipped = sm.least_squares_trace(prob, 1.0, 0.5, steps, key)
    lam = np.asarray(prob.lam)
    e = np.asarray(sgd.smoothness)
    assert np.all((e >= lam.min() * (1 - 1e-12)) & (e <= lam.max() * (1 + 1e-12)))
    np.testing.assert_allclose(clipped.smoothness, sgd.smoothness, rtol=1e-10)
    assert float(sgd.risk[-1]) < 0.5  # it trains (R0 = 1)
    slope, _, se = sm.loglog_slope(sgd.grad_norm, sgd.smoothness)
    assert abs(slope) < 4 * se


def test_least_squares_gd_estimate_drifts_down_although_l1_is_zero():
    # Along GD the estimate is sqrt(sum lam^4 e^2 / sum lam^2 e^2) with e_i(k) = e_i(0) (1 - h lam_i)^k,
    # 0 < h lam_i < 1: the weights move monotonically to small lam_i, so it never increases
    # (theory/l0l1.md, eq. (13)); rounding: 1e-12 relative per step.
    prob = ls_problem()
    tr = sm.least_squares_trace(prob, 1.0, math.inf, 2000, jax.random.PRNGKey(0), method="gd")
    e = np.asarray(tr.smoothness)
    assert np.all(np.diff(e) <= 1e-12 * e[1:])
    assert e[-1] < 0.8 * e[0]
    assert np.all(np.diff(np.asarray(tr.grad_norm)) < 0)


def test_training_trace_on_linear_regression_matches_numpy():
    # Full-batch GD on 1/2 mean (x.w - y)^2 (every batch is all samples): the estimate is
    # ||H Delta|| / ||Delta|| with H = X^T X / n, the loss decreases, and the same inputs give
    # bit-identical traces.
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(64, 6)), rng.normal(size=64)
    data = {"x": jnp.asarray(X), "y": jnp.asarray(y)}

    def loss(w, b):
        return 0.5 * jnp.mean((b["x"] @ w - b["y"]) ** 2)

    def make_tx(h):
        return optax.sgd(h["lr"])

    batches = jnp.tile(jnp.arange(64), (30, 1))
    hp = {"lr": jnp.asarray(0.1)}
    tr = sm.training_trace(loss, make_tx, hp, jnp.zeros(6), data, batches)
    H = X.T @ X / 64
    w, ref = np.zeros(6), []
    for _ in range(30):
        delta = -0.1 * (H @ w - X.T @ y / 64)
        ref.append(np.linalg.norm(H @ delta) / np.linalg.norm(delta))
        w = w + delta
    np.testing.assert_allclose(tr.smoothness, ref, rtol=1e-10)
    assert np.all(np.diff(np.asarray(tr.loss)) < 0) and int(tr.diverged_at) == -1
    again = sm.training_trace(loss, make_tx, hp, jnp.zeros(6), data, batches)
    assert np.array_equal(np.asarray(tr.smoothness), np.asarray(again.smoothness))


def test_training_trace_reports_divergence():
    data = {"x": jnp.ones((4, 1)), "y": jnp.zeros(4)}

    def loss(w, b):
        return 0.5 * jnp.mean((b["x"] @ w - b["y"]) ** 2)

    tr = sm.training_trace(loss, lambda h: optax.sgd(h["lr"]), {"lr": jnp.asarray(1e160)}, jnp.ones(1),
                           data, jnp.tile(jnp.arange(4), (6, 1)))
    assert 0 <= int(tr.diverged_at) < 6


# ---- input validation ---------------------------------------------------------------------


def _in_float32(make, lam):
    with jax.enable_x64(False):  # where the weights are stored as float32
        return make(lam)


@pytest.mark.parametrize("call, match", [
    (lambda: sm.cosh_sum([1.0, -2.0]), "lam"),
    (lambda: sm.quadratic([[1.0]]), "1-D"),
    (lambda: sm.fixed_step(0.0), "h"),
    (lambda: sm.clipped_step(0.1, -1.0), "gamma"),
    (lambda: sm.normalized_step(0.1, -1.0), "beta"),
    (lambda: sm.zhang_normalized(1.0, 0.0), "L1"),
    (lambda: sm.descent_step(1.0, 1.0, math.inf), "M"),
    (lambda: sm.run_gd(sm.quartic_sum(), jnp.ones(2), sm.fixed_step(0.1), 0.0, 10), "eps"),
    (lambda: sm.run_gd(sm.quartic_sum(), jnp.ones(2), sm.fixed_step(0.1), 1e-3, 0), "max_iter"),
    (lambda: sm.run_gd(sm.quartic_sum(), jnp.ones((2, 2)), sm.fixed_step(0.1), 1e-3, 10), "x0"),
    (lambda: sm.least_squares_trace(ls_problem(8), 1.0, 0.5, 10, jax.random.PRNGKey(0), method="gd"), "c="),
    (lambda: sm.least_squares_trace(ls_problem(8), 1.0, 0.5, 10, jax.random.PRNGKey(0), method="adam"), "method"),
    (lambda: sm.loglog_slope([1.0, 2.0, 3.0], [1.0, 0.0, 2.0]), "finite"),
    # Accepted before: strings, weights that float32 stores as 0 or inf, a 1-D function run on a
    # 2-D point (broadcast), a string flag, an L0 whose step overflows (named "eta=inf"), lists.
    (lambda: sm.cosh_sum(["1"]), r"lam=\['1'\] is not allowed"),
    (lambda: _in_float32(sm.cosh_sum, [1e-320]), r"lam containing \[1e-320\] is not representable as float32"),
    (lambda: _in_float32(sm.quadratic, [1e308, 1.0]), r"lam containing \[1e\+308\] is not representable as float32"),
    (lambda: sm.run_gd(sm.cosh_sum([1.0]), jnp.ones(2), sm.fixed_step(0.1), 1e-3, 10),
     r"x0 of shape \(2,\) does not match the function's 1 dimension"),
    (lambda: sm.run_gd(sm.cosh_sum([1.0]), jnp.ones(1), sm.fixed_step(0.1), 1e-3, 10, stop_on_increase="no"),
     "stop_on_increase must be True or False"),
    (lambda: sm.zhang_clipped(1e-320, 1.0), r"L0=1e-320 is not allowed; L0 must be finite and >= 1e-300"),
    (lambda: sm.zhang_clipped([1.0, 2.0], 1.0), r"L0=\[1.0, 2.0\] is not allowed; L0 must be a single number"),
    (lambda: sm.descent_step(1.0, 1.0, [1.0, 2.0]), r"M=\[1.0, 2.0\] is not allowed"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()

# The two studies run end to end at the tiny size in tests/test_experiments.py.

