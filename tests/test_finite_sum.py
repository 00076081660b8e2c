"""Chen, Wu, Hong's finite sum: the exact clipped-gradient field, its zero set, and clipped SGD.

Precision: float64 throughout (the module's zero sets and SGD run inside ``jax.enable_x64``;
tests that call ``clipped_gradient`` directly do so inside it too). References are independent:
the textbook closed form of ``E clip_c(m + k zeta)`` with scipy's normal law, quadrature, scipy's
``brentq``, an enumeration of the piecewise-linear ``k = 0`` field in plain Python, and Monte
Carlo with tolerances from its standard error. Equation numbers refer to theory/clipping_bias.md.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize, stats

from clipdyn.sources import finite_sum as fs

ASYM = (-1.0, 0.0, 5.0)  # skewed: clipping is active at x* = 4/3, the k = 0 zero is 0


def ref_expected_clip(m, c, k):
    """``E clip_c(m + k Z)`` from the standard truncated-normal form (not eq. (4)'s)."""
    if k == 0:
        return float(np.clip(m, -c, c))
    lo, hi = (-c - m) / k, (c - m) / k
    N = stats.norm
    return (-c * N.cdf(lo) + c * N.sf(hi) + m * (N.cdf(hi) - N.cdf(lo))
            + k * (N.pdf(lo) - N.pdf(hi)))


def ref_h(points, c, k, x):
    return float(np.mean([ref_expected_clip(x - a, c, k) for a in points]))


def ref_zero_k0(points, c):
    """Zero set of the k = 0 field by enumerating its linear pieces (plain Python): flat pieces
    with as many terms clipped up as down, and each sloped piece's root if it lies in the piece."""
    pts = sorted(points)
    br = sorted({a + s * c for a in pts for s in (-1.0, 1.0)})
    h = lambda x: sum(min(c, max(-c, x - a)) for a in pts) / len(pts)  # noqa: E731
    found = []
    for lo, hi in zip(br[:-1], br[1:]):
        mid = 0.5 * (lo + hi)
        lin = [a for a in pts if abs(mid - a) <= c]
        net = sum(mid - a > c for a in pts) - sum(mid - a < -c for a in pts)
        if not lin and net == 0:
            found.append((lo, hi))
        elif lin:
            z = (sum(lin) - c * net) / len(lin)
            if lo - 1e-12 <= z <= hi + 1e-12 and abs(h(z)) < 1e-12:
                found.append((z, z))
    return min(f[0] for f in found), max(f[1] for f in found)


# ---- the field h ------------------------------------------------------------------------------

def test_log_tail_against_quadrature():
    """float64. eq. (5): ``log G(-s)`` against quadrature of ``G(-s)/phi(s) = int u e^{-us-u^2/2}``
    (scaled by ``1 + s`` so quad sees an O(1) integrand). Tolerance: 1e-13 relative in ``G``, plus
    rounding of the log itself (4 ulp of ``s^2/2``), which dominates for large ``s``."""
    s = np.concatenate([np.linspace(0.0, 12.0, 49), [3.9999999, 4.0, 4.0000001, 20.0, 38.0, 40.0,
                                                       100.0, 1e3, 1e5]])
    with jax.enable_x64(True):
        got = np.asarray(fs._log_tail(jnp.asarray(s)))
    for si, g in zip(s, got):
        q = 1.0 + si
        val, _ = integrate.quad(lambda v: v * math.exp(-v * si / q - v * v / (2 * q * q)), 0, np.inf,
                                epsabs=0, epsrel=1e-13, limit=200)
        ref = -0.5 * si * si - 0.5 * math.log(2 * math.pi) + math.log(val) - 2 * math.log(q)
        assert abs(g - ref) <= 1e-13 + 4 * np.spacing(0.5 * si * si + 1.0), (si, g, ref)


def test_expected_clip_against_closed_form_and_quadrature():
    """float64. eq. (4) against the truncated-normal closed form (scipy) on 300 random (m, c, k),
    ``k`` from 1e-3 to 30, to 1e-12 absolute (both are exact to rounding of O(c) terms), and
    against adaptive quadrature split at the kinks on a few of them."""
    rng = np.random.default_rng(0)
    m = rng.normal(size=300) * 3
    c = rng.uniform(0.1, 3, 300)
    k = 10 ** rng.uniform(-3, 1.5, 300)
    with jax.enable_x64(True):
        got = np.asarray(jax.vmap(fs.expected_clip)(jnp.asarray(m), jnp.asarray(c), jnp.asarray(k)))
    ref = np.array([ref_expected_clip(*t) for t in zip(m, c, k)])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    for mi, ci, ki, gi in list(zip(m, c, k, got))[:5]:
        f = lambda z: float(np.clip(mi + ki * z, -ci, ci)) * stats.norm.pdf(z)  # noqa: E731
        kinks = sorted(np.clip([(-ci - mi) / ki, (ci - mi) / ki], -40.0, 40.0))
        q = sum(integrate.quad(f, a, b, epsabs=1e-14, limit=200)[0]
                for a, b in zip([-40.0] + kinks, kinks + [40.0]))
        assert gi == pytest.approx(q, abs=1e-10)


def ref_expected_clip_sinh(m, c, k):
    """``2 e^{-b^2/2} int_0^inf clip_c(k u) phi(u) sinh(b u) du``, ``b = m/k``: the same
    expectation with an integrand of one sign, so quadrature keeps relative accuracy for any
    ``k`` (eq. (4)'s two tails cancel for ``k >> |m|, c``)."""
    b, a = m / k, c / k
    g = lambda u: (k * u if u < a else c) * math.exp(-0.5 * u * u - 0.5 * b * b + abs(b * u)) * (  # noqa: E731
        -math.expm1(-2 * abs(b * u))) / (2 * math.sqrt(2 * math.pi)) * math.copysign(1.0, b)
    kw = dict(epsabs=0, epsrel=2e-14, limit=500)
    top = max(a, abs(b)) + 40.0
    return 2 * (integrate.quad(g, 0, a, **kw)[0] + integrate.quad(g, a, top, **kw)[0])


@pytest.mark.parametrize("k", [0.3, 2.0, 4.1, 10.0, 1e2, 1e4, 1e8])
def test_expected_clip_relative_accuracy_at_every_k(k):
    """float64. eq. (4) and, where ``|m|, c <= k/2``, eq. (4'') against the one-signed quadrature
    (relative 2e-14), to 1e-13 relative: at ``k = 1e8`` eq. (4) alone lost every digit. The
    ``m`` straddle the series' switch ``|m| = k/2`` where ``k`` allows."""
    ms = np.array([-7.0, -1.0, -0.3, 0.01, 0.9, 2.5, 0.49 * k, 0.51 * k])
    with jax.enable_x64(True):
        for c in (0.5, 1.0, 3.0):
            got = np.asarray(fs.expected_clip(jnp.asarray(ms), c, k))
            want = np.array([ref_expected_clip_sinh(m, c, k) for m in ms])
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)


def test_expected_clip_keeps_relative_accuracy_as_m_goes_to_0():
    """float64. For ``|m| << c`` at ``k`` near ``c`` eq. (4)'s two tails differ by about ``m``: the
    direct form was 7e-5 off at ``m = 1e-12`` and 2e-2 at ``1e-15``. Against the one-signed
    quadrature (relative 2e-14) to 1e-13 relative; the series covers ``|m| max(1, c/k) <= k/2``."""
    ms = np.array([1e-15, -1e-12, 1e-9, 3e-6, -0.01])
    with jax.enable_x64(True):
        for c, k in ((1.0, 1.0), (1.0, 1.9999), (3.0, 0.7), (0.5, 0.2)):
            got = np.asarray(fs.expected_clip(jnp.asarray(ms), c, k))
            want = np.array([ref_expected_clip_sinh(m, c, k) for m in ms])
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=0, err_msg=f"c={c}, k={k}")


def ref_shortfall(m, c, k):
    """``c - E clip_c(|m| + k Z)`` for a term clipped away (``|m| > k/2 >= c``): eq. (4)'s
    ``k [T((|m| - c)/k) - T((|m| + c)/k)]``, ``T(s) = phi(s) - s Phi(-s)``, with scipy's normal law
    (cancels by at most ``e^{2ac/k}``, a few digits, in the cases below)."""
    N = stats.norm
    T = lambda s: N.pdf(s) - s * N.sf(s)  # noqa: E731
    return k * (T((abs(m) - c) / k) - T((abs(m) + c) / k))


@pytest.mark.parametrize("k", [2.0, 2.2, 2.5, 3.0, 4.0, 10.0])
def test_zero_of_points_far_apart(k):
    """float64. Points far apart (every term clipped away at the zero): ``h`` is ``+-c`` counts that
    cancel exactly plus shortfalls of size ``e^{-(D/2k)^2}``, which decide its sign. Summed in
    floating point with the ``+-c`` they were lost to rounding: ``a = (0, 40)``, ``c = 1``,
    ``k = 2`` put the zero at 19.81. By symmetry the zero is ``D/2`` exactly (to rounding of
    ``D/2``); an asymmetric sum against ``brentq`` on the shortfalls (scipy), to 1e-11."""
    for pts, want in (([0.0, 40.0], 20.0), ([0.3, 40.7], 20.5), ([-1000.0, 0.0, 40.0, 1000.0], 20.0),
                      ([0.0, 60.0], 30.0), ([0.0, 100.0], 50.0), ([0.0, 1e5], 5e4)):
        z = fs.zero_interval(fs.finite_sum(pts, 1.0, k))
        assert z[0] == z[1] and abs(z[0] - want) <= 4 * np.spacing(want), (pts, k, z)
    pts = np.array([0.0, 31.0, 50.0, 80.0])  # two terms clipped up, two down near x = 40.5

    def signed(x):  # n h(x): the shortfalls of the terms clipped down minus those clipped up
        return math.fsum(ref_shortfall(x - a, 1.0, k) * (1 if x < a else -1) for a in pts)

    ref = optimize.brentq(signed, 39.0, 42.0, xtol=1e-13, rtol=4 * np.finfo(float).eps)
    z = fs.zero_interval(fs.finite_sum(pts, 1.0, k))
    assert z[0] == pytest.approx(ref, abs=1e-11)
    assert fs.bias(fs.finite_sum([0.0, 40.0], 1.0, k))[()] == 0.0


def test_zero_at_huge_k_against_the_series_limit():
    """float64. For ``k >> spread`` the zero is ``x* - mu_3 / (6 k^2) + O(k^-4)`` (eq. (8)); at
    ``k = 1e4..1e8`` the correction is below 1e-7 and the zero must sit on it to 1e-13 (a few
    ulps of ``x*``). Before eq. (4''), ``k = 1e8`` put the zero at -3.19 for ``x* = -1.75``."""
    for pts in ([1.0, 1.0, 1.0, 5.0], [-3.0, 3.0, 3.0, -10.0]):
        a = np.asarray(pts)
        ks = np.array([1e4, 1e6, 1e8])
        z = fs.zero_interval(fs.finite_sum(a, 1.0, ks))
        mu3 = np.mean((a - a.mean()) ** 3)
        np.testing.assert_allclose(z[:, 0], a.mean() - mu3 / (6 * ks**2), rtol=0, atol=1e-13)
        np.testing.assert_array_equal(z[:, 0], z[:, 1])


def test_h_against_monte_carlo():
    """float64. ``h(x)`` (eq. (3), exact) against a Monte Carlo mean of the clipped gradient with
    ``i`` and ``zeta`` sampled as SGD does: 400 000 samples, fixed seed, tolerance 5 standard
    errors of the sample mean (the sample's own standard deviation / sqrt(N))."""
    rng = np.random.default_rng(1)
    a = np.asarray(ASYM)
    N = 400_000
    with jax.enable_x64(True):
        for k in (0.0, 0.3, 1.0, 3.0):
            prob = fs.finite_sum(a, 1.0, k)
            for x in (-1.5, 0.2, 1.33, 4.0):
                g = np.clip(x - a[rng.integers(0, 3, N)] + k * rng.normal(size=N), -1.0, 1.0)
                se = g.std(ddof=1) / math.sqrt(N)
                assert abs(float(fs.clipped_gradient(prob, x)) - g.mean()) <= 5 * se + 1e-15, (k, x)


def test_h_jit_vmap_and_slope():
    """float64. ``clipped_gradient`` vmaps over ``k`` (the pytree leaf) and over ``x``, and its
    autodiff slope is eq. (6), ``mean_i P(|m_i + k zeta| <= c)``, from scipy to 1e-12."""
    a = np.asarray(ASYM)
    ks = np.array([0.0, 0.5, 2.0])
    xs = np.linspace(-3, 7, 11)
    with jax.enable_x64(True):
        prob = fs.finite_sum(a, 1.0, ks)
        grid = jax.jit(jax.vmap(lambda p: jax.vmap(lambda x: fs.clipped_gradient(p, x))(xs),
                                in_axes=(fs.FiniteSum(None, None, 0),)))(prob)
        slope = jax.jit(jax.vmap(jax.grad(lambda x: fs.clipped_gradient(fs.finite_sum(a, 1.0, 2.0), x))))(xs)
    ref = np.array([[ref_h(a, 1.0, k, x) for x in xs] for k in ks])
    np.testing.assert_allclose(np.asarray(grid), ref, rtol=0, atol=1e-12)
    m = xs[:, None] - a[None, :]
    ref_slope = np.mean(stats.norm.cdf((1 - m) / 2) - stats.norm.cdf((-1 - m) / 2), axis=1)
    np.testing.assert_allclose(np.asarray(slope), ref_slope, rtol=0, atol=1e-12)


# ---- the zero set -----------------------------------------------------------------------------

def test_example2_stationary_interval():
    """float64, exact. Chen et al.'s Example 2: ``a = (-3, 3)``, ``c = 1``, ``k = 0``: ``h = 0`` on
    exactly ``[-2, 2]`` (the breakpoints are exact in binary), checked by plain NumPy clipping
    inside, and of the right sign just outside; with ``k > 0`` the zero is the point 0."""
    a = np.array([-3.0, 3.0])
    assert fs.zero_set(fs.finite_sum(a, 1.0, 0.0)) == [[-2.0, 2.0]]
    h0 = lambda x: np.mean(np.clip(x - a, -1.0, 1.0))  # noqa: E731
    assert all(h0(x) == 0.0 for x in np.linspace(-2, 2, 101))
    assert h0(np.nextafter(-2.0, -3.0)) < 0 < h0(np.nextafter(2.0, 3.0))
    for k in (0.1, 1.0, 10.0):
        assert fs.zero_set(fs.finite_sum(a, 1.0, k)) == [[0.0, 0.0]]
    assert fs.bias(fs.finite_sum(a, 1.0, 0.0)) == 2.0


def test_zero_exact_where_h_underflows():
    """float64. With a small perturbation (``k = 0.01``) ``h`` of Example 2 underflows to exactly
    0 over most of ``[-2, 2]``, so a root finder on ``h`` would return any of those points; the
    zero set, from the exact sign (eq. (7)), is still the single point 0 (symmetry)."""
    prob = fs.finite_sum([-3.0, 3.0], 1.0, 0.01)
    with jax.enable_x64(True):
        assert float(fs.clipped_gradient(prob, 0.7)) == 0.0  # underflow: the case this guards
        sign = jax.jit(jax.vmap(lambda x: fs._sign_h(prob, jnp.ones(2), x)))
        assert np.asarray(sign(jnp.asarray([-0.7, 0.7]))).tolist() == [-1, 1]
    assert fs.zero_set(prob) == [[0.0, 0.0]]


def test_k0_zero_sets_against_enumeration():
    """float64. ``k = 0`` zero sets (intervals and points) of 60 random finite sums against the
    plain-Python enumeration of the linear pieces, to 1e-12 (one rounding of O(10) numbers)."""
    rng = np.random.default_rng(2)
    intervals = 0
    for _ in range(60):
        n = int(rng.integers(2, 5))  # one compiled size (padded to 4)
        a = np.round(rng.normal(size=n) * rng.uniform(0.5, 5), 1)  # ties and flat stretches occur
        c = float(rng.choice([0.5, 1.0, 2.0]))
        lo, hi = fs.zero_interval(fs.finite_sum(a, c, 0.0))
        rlo, rhi = ref_zero_k0(a.tolist(), c)
        assert lo == pytest.approx(rlo, abs=1e-12) and hi == pytest.approx(rhi, abs=1e-12), (a, c)
        intervals += hi > lo
    assert intervals >= 5  # the sample does exercise flat zero stretches


def test_k_positive_zero_against_brentq():
    """float64. ``k > 0`` zeros against scipy's ``brentq`` on the independent closed form
    (``xtol`` 1e-14), for ``k`` where ``h`` is well above rounding near its zero; tolerance 1e-11,
    from ``brentq``'s tolerance and the slope ``h' >= 0.05`` there."""
    rng = np.random.default_rng(3)
    for _ in range(8):
        a = rng.normal(size=5) * 2
        ks = np.array([0.3, 1.0, 4.0])
        z = fs.zero_interval(fs.finite_sum(a, 1.0, ks))
        for k, (lo, hi) in zip(ks, z):
            assert lo == hi
            ref = optimize.brentq(lambda x: ref_h(a, 1.0, k, x), a.min() - 2, a.max() + 2,
                                  xtol=1e-14, rtol=4 * np.finfo(float).eps)
            assert lo == pytest.approx(ref, abs=1e-11)


def test_bias_shrinks_monotonically_in_k_on_skewed_example():
    """float64. ``a = (-1, 0, 5)``, ``c = 1``: the bias ``|zero - x*|`` is ``4/3`` at ``k = 0`` (the
    zero is 0, eq. (7)) and strictly decreases along 40 values of ``k`` from 0.01 to 100 (the
    differences are >= 1e-6, far above the zeros' ~1e-12 accuracy)."""
    ks = np.concatenate([[0.0], np.geomspace(0.01, 100, 40)])
    b = fs.bias(fs.finite_sum(ASYM, 1.0, ks))
    assert b[0] == pytest.approx(4 / 3, abs=1e-15)
    assert np.all(np.diff(b) < -1e-6)


def test_bias_large_k_asymptote():
    """float64. eq. (8): ``zero - x* -> -mu_3 / (6 k^2)``; the relative error of the asymptote is
    O(k^-2), so it falls by about 4 when ``k`` doubles (accepted: 3.5 to 4.5) and is below 1 %
    at ``k = 20``."""
    a = np.asarray(ASYM)
    ks = np.array([10.0, 20.0, 40.0])
    z = fs.zero_interval(fs.finite_sum(a, 1.0, ks))[:, 0]
    mu3 = np.mean((a - a.mean()) ** 3)
    err = np.abs((z - a.mean()) / (-mu3 / (6 * ks**2)) - 1)
    assert err[1] < 0.01
    assert 3.5 < err[0] / err[1] < 4.5 and 3.5 < err[1] / err[2] < 4.5


def test_perturbation_can_create_bias():
    """float64. Monotone shrinking is not general: ``a = (0, 0, 0, 1)``, ``c = 1`` has no clipping
    at ``x* = 1/4``, so no bias at ``k = 0`` (the zero is ``x*`` exactly, eq. (7)); the
    perturbation creates one (above 0.015 at ``k = 0.5``) that then decays as eq. (8)."""
    b = fs.bias(fs.finite_sum([0.0, 0.0, 0.0, 1.0], 1.0, np.array([0.0, 0.5, 10.0])))
    assert b[0] == 0.0
    assert b[1] > 0.015
    assert b[2] == pytest.approx(0.015625 / 100, rel=0.05)  # mu_3 / 6 = 1/64, O(k^-2) relative


def test_d_dimensional_is_per_coordinate():
    """float64. Points ``(n, d)``: the zero set, ``h`` and the bias are the 1-D ones per column."""
    rng = np.random.default_rng(4)
    a = rng.normal(size=(3, 3)) * 2
    ks = np.array([0.0, 0.7])
    z = fs.zero_interval(fs.finite_sum(a, 1.0, ks))
    assert z.shape == (2, 3, 2)
    for j in range(3):
        np.testing.assert_array_equal(z[:, j], fs.zero_interval(fs.finite_sum(a[:, j], 1.0, ks)))
    x = rng.normal(size=3)
    with jax.enable_x64(True):
        h = np.asarray(fs.clipped_gradient(fs.finite_sum(a, 1.0, 0.7), x))
    np.testing.assert_allclose(h, [ref_h(a[:, j], 1.0, 0.7, x[j]) for j in range(3)], atol=1e-12)


# ---- clipped SGD ------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [0.0, 1.0, 3.0])
def test_sgd_ends_at_predicted_zero(k):
    """float64. 16 seeds x 10 000 steps, step 0.03, from ``x0 = 0``; each seed's iterate averaged
    over the second half (at least 30 relaxation times ``1 / (eta h')``). Tolerance, eq. (9): 5
    standard errors of the seed mean (empirical) plus the curvature shift ``|h''| eta c^2 / (4 h'^2)`` (``k > 0``) or, at the kink of the
    ``k = 0`` field, one stationary standard deviation ``c sqrt(eta / (2 h'_min))``. The runs
    also end far from ``x*`` while the bias is large (``k = 0, 1``)."""
    a, c, eta = np.asarray(ASYM), 1.0, 0.03
    prob = fs.finite_sum(a, c, k)
    z = fs.zero_interval(prob)[0]
    paths = fs.clipped_sgd(prob, 0.0, eta, 10_000, range(16), record_every=10)
    avg = paths[:, paths.shape[1] // 2:].mean(axis=1)
    se = avg.std(ddof=1) / math.sqrt(avg.size)
    if k == 0:
        shift = c * math.sqrt(eta / (2 * (1 / 3)))  # one-sided slopes at 0 are 2/3 and 1/3
    else:  # h' and h'' from eq. (6) with scipy's normal law
        lo, hi = (-c - (z - a)) / k, (c - (z - a)) / k
        h1 = np.mean(stats.norm.cdf(hi) - stats.norm.cdf(lo))
        h2 = np.mean(stats.norm.pdf(lo) - stats.norm.pdf(hi)) / k
        shift = abs(h2) * eta * c**2 / (4 * h1**2)
    assert abs(avg.mean() - z) <= 5 * se + shift, (avg.mean(), z, se, shift)
    if k <= 1:
        assert abs(avg.mean() - a.mean()) > 0.5


def test_sgd_example2_driftless_inside_interval():
    """float64. Example 2 at ``k = 0``: inside ``[-2, 2]`` each step is ``+-eta`` with equal
    probability, so runs started at 1.5 have mean displacement 0 after 400 steps (step 0.002:
    the walk's spread ``eta sqrt(400) = 0.04`` keeps it inside); tolerance 5 standard errors.
    With ``k = 1`` the same runs drift towards the zero 0: by more than 10 standard errors."""
    prob = fs.finite_sum([-3.0, 3.0], 1.0, 0.0)
    end = fs.clipped_sgd(prob, 1.5, 0.002, 400, range(64))[:, -1]
    assert abs(end.mean() - 1.5) <= 5 * end.std(ddof=1) / 8
    end1 = fs.clipped_sgd(prob._replace(perturbation=np.asarray(1.0)), 1.5, 0.002, 400, range(64))[:, -1]
    assert 1.5 - end1.mean() > 10 * end1.std(ddof=1) / 8


def test_sgd_same_seed_same_numbers():
    """float64, bitwise: a seed's path is the same alone, among other seeds, and on a rerun."""
    prob = fs.finite_sum(ASYM, 1.0, 0.5)
    many = fs.clipped_sgd(prob, 0.0, 0.05, 200, [0, 1, 2, 3])
    alone = fs.clipped_sgd(prob, 0.0, 0.05, 200, [2])
    np.testing.assert_array_equal(many[2], alone[0])
    np.testing.assert_array_equal(many, fs.clipped_sgd(prob, 0.0, 0.05, 200, [0, 1, 2, 3]))
    assert not np.array_equal(many[0], many[1])
    assert many.shape == (4, 201)


# ---- Stein's lemma: why clipdyn's Gaussian-feature model has no such bias -----------------------

def test_stein_no_bias_with_centred_gaussian_features():
    """float64 Monte Carlo, 400 000 samples, fixed seed, tolerance 5 standard errors per
    coordinate. eq. (10): with ``x ~ N(0, K)`` and skewed noise (centred exponential),
    ``E[clip_c(w) x - 1{|w| <= c} K (theta - theta*)] = 0`` (one Monte Carlo mean, its standard
    error from the same samples), at ``theta*`` and away from it. With non-centred features
    ``x ~ N(m, K)`` the clipped field at ``theta*`` is ``m E clip_c(-eps)``, not 0: more than 10
    standard errors away."""
    rng = np.random.default_rng(5)
    N, c = 400_000, 0.5
    lam = np.array([1.0, 0.5, 0.2])
    eps = rng.exponential(size=N) - 1.0
    z = rng.normal(size=(N, 3)) * np.sqrt(lam)
    for v in (np.array([0.3, -0.4, 0.5]), np.zeros(3)):  # theta - theta*
        w = z @ v - eps
        d = np.clip(w, -c, c)[:, None] * z - (np.abs(w) <= c)[:, None] * (lam * v)[None, :]
        se = d.std(axis=0, ddof=1) / math.sqrt(N)
        np.testing.assert_array_less(np.abs(d.mean(axis=0)), 5 * se)
    x = z + np.array([0.8, 0.0, -0.5])
    g = np.clip(-eps, -c, c)[:, None] * x
    assert np.max(np.abs(g.mean(axis=0)) / (g.std(axis=0, ddof=1) / math.sqrt(N))) > 10


# ---- the command line -------------------------------------------------------------------------

def run_cli(capsys, *argv):
    from clipdyn.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_bias_json_example2(capsys):
    """float64. ``clipdyn bias`` on Example 2 (negative points after ``--points``): per ``k`` the
    record ``{k, zeros, x_star}``; the stationary interval ``[-2, 2]`` at ``k = 0`` and the point 0
    for ``k > 0``, equal to the library's values."""
    code, out, err = run_cli(capsys, "bias", "--points", "-3,3", "--clip", "1",
                             "--perturbation", "0,0.5,2", "--json")
    assert code == 0, err
    recs = json.loads(out)
    assert [set(r) for r in recs] == [{"k", "zeros", "x_star"}] * 3
    assert [r["k"] for r in recs] == [0.0, 0.5, 2.0]
    assert recs[0]["zeros"] == [[-2.0, 2.0]]
    assert recs[1]["zeros"] == recs[2]["zeros"] == [[0.0, 0.0]]
    assert all(r["x_star"] == 0.0 for r in recs)


def test_cli_bias_table_and_skewed_values(capsys):
    """float64. Table header, one row per ``k``, and the JSON zeros equal ``zero_interval``'s."""
    code, out, _ = run_cli(capsys, "bias", "--points=-1,0,5", "--clip", "1", "--perturbation", "0,1")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["k", "zero_lo", "zero_hi", "x_star", "bias"] and len(lines) == 3
    code, out, _ = run_cli(capsys, "bias", "--points=-1,0,5", "--clip", "1", "--perturbation", "0,1",
                           "--json")
    z = fs.zero_interval(fs.finite_sum(ASYM, 1.0, np.array([0.0, 1.0])))
    assert [r["zeros"] for r in json.loads(out)] == [[z[0].tolist()], [z[1].tolist()]]


@pytest.mark.parametrize("argv, bad", [
    (["--points", "1,nan", "--clip", "1"], "nan"),
    (["--points", "1,x", "--clip", "1"], "'x'"),
    (["--points", "1,2", "--clip", "0"], "--clip=0"),
    (["--points", "1,2", "--clip", "inf"], "--clip=inf"),
    (["--points", "1,2", "--clip", "1", "--perturbation", "0,-1"], "-1.0"),
    (["--points", ",", "--clip", "1"], "empty"),
    (["--clip", "1"], "--points"),
])
def test_cli_bias_errors(capsys, argv, bad):
    """Bad input: exit status 2 and one line on stderr naming the bad value."""
    code, out, err = run_cli(capsys, "bias", *argv)
    assert code == 2 and out == ""
    assert err.startswith("clipdyn: error: ") and err.count("\n") == 1 and bad in err


# ---- input validation -------------------------------------------------------------------------

@pytest.mark.parametrize("points, clip, k, bad", [
    ([], 1.0, 0.0, "points of shape (0,)"),
    ([[[1.0]]], 1.0, 0.0, "points of shape (1, 1, 1)"),
    ([1.0, np.nan], 1.0, 0.0, "nan"),
    ([1.0, np.inf], 1.0, 0.0, "inf"),
    ([1.0, 2.0], 0.0, 0.0, "clip c=0.0"),
    ([1.0, 2.0], -1.0, 0.0, "clip c=-1.0"),
    ([1.0, 2.0], np.inf, 0.0, "clip c=inf"),
    ([1.0, 2.0], np.nan, 0.0, "clip c=nan"),
    ([1.0, 2.0], 1.0, -0.5, "perturbation k=-0.5"),
    ([1.0, 2.0], 1.0, np.inf, "perturbation k=inf"),
    ([1.0, 2.0], 1.0, [0.0, np.nan], "perturbation k=[0.0, nan]"),
    # near the float64 maximum the bisection's bracket min(a) - 2c overflowed ([inf, inf] zeros)
    ([1.5e308, 1.5e308], 1.0, 1.0, "points containing [1.5e+308, 1.5e+308]"),
    ([1.0, 2.0], 1e101, 0.0, "clip c=1e+101"),
    ([1.0, 2.0], 1.0, 1e101, "perturbation k=1e+101"),
    (["1", "2"], 1.0, 0.0, "points=['1', '2']"),
])
def test_finite_sum_rejects_bad_input(points, clip, k, bad):
    with pytest.raises(ValueError, match="not allowed") as err:
        fs.finite_sum(points, clip, k)
    assert bad in str(err.value)


def test_functions_reject_bad_input():
    prob = fs.finite_sum(ASYM, 1.0, 0.5)
    with pytest.raises(ValueError, match=r"x of shape \(2,\)"):
        fs.clipped_gradient(prob, np.zeros(2))
    with pytest.raises(ValueError, match="scalar k"):
        fs.zero_set(prob._replace(perturbation=np.array([0.0, 1.0])))
    for kwargs, bad in ((dict(step=0.0), "step=0.0"), (dict(step=math.nan), "step=nan"),
                        (dict(steps=0), "steps=0"), (dict(steps=10, record_every=3), "multiple"),
                        (dict(seeds=[]), "seeds=[]"), (dict(seeds=[0.5]), "seeds[0]=0.5"),
                        (dict(x0=np.zeros(2)), "x0 of shape (2,)"), (dict(x0=math.inf), "x0")):
        args = dict(x0=0.0, step=0.1, steps=10, seeds=[0], record_every=1) | kwargs
        with pytest.raises(ValueError) as err:
            fs.clipped_sgd(prob, **args)
        assert bad in str(err.value)


@pytest.mark.parametrize("call, bad", [
    # expected_clip returned -1.0 for c = -1 and 0.5 for c = nan or k = -1; strings and booleans
    # were accepted as thresholds; clipped_sgd took booleans, repeated and out-of-range seeds.
    (lambda: fs.expected_clip(0.5, -1.0, 0.0), "clip=-1.0 is not allowed; clip must be finite, > 0 and <= 1e100"),
    (lambda: fs.expected_clip(0.5, math.nan, 0.0), "clip=nan"),
    (lambda: fs.expected_clip(0.5, 1.0, -1.0), "perturbation=-1.0 is not allowed"),
    (lambda: fs.expected_clip("0.5", 1.0, 0.0), "m='0.5' is not allowed"),
    (lambda: fs.finite_sum(ASYM, "1"), "clip c='1' is not allowed"),
    (lambda: fs.finite_sum(ASYM, True), "clip c=True is not allowed"),
    (lambda: fs.finite_sum(ASYM, [1.0, 2.0]), "clip c of shape (2,)"),
    (lambda: fs.clipped_sgd(fs.finite_sum(ASYM, 1.0), 0.0, True, 10, [0]), "step=True"),
    (lambda: fs.clipped_sgd(fs.finite_sum(ASYM, 1.0), 0.0, 0.1, True, [0]), "steps=True"),
    (lambda: fs.clipped_sgd(fs.finite_sum(ASYM, 1.0), 0.0, 0.1, 10, [0, 0]), "seed(s) [0] repeated"),
    (lambda: fs.clipped_sgd(fs.finite_sum(ASYM, 1.0), 0.0, 0.1, 10, [-1]), "seeds[0]=-1"),
    (lambda: fs.clipped_sgd(fs.finite_sum(ASYM, 1.0), 0.0, 0.1, 10, [2**40]), "seeds[0]=1099511627776"),
    (lambda: fs.clipped_sgd(fs.finite_sum(ASYM, 1.0), 0.0, 0.1, 10, 3), "e.g. range(8) for 8 seeds"),
    # nan passed through expected_clip; clipped_gradient checked nothing (a hand-built FiniteSum
    # with c = -1 returned a number)
    (lambda: fs.expected_clip(math.nan, 1.0, 1.0), "m=nan is not allowed; m must be finite"),
    (lambda: fs.clipped_gradient(fs.FiniteSum(np.array(ASYM), -1.0, 0.0), 0.5), "clip c=-1.0"),
    (lambda: fs.clipped_gradient(fs.finite_sum(ASYM, 1.0), True), "x=True is not allowed"),
    (lambda: fs.clipped_gradient(fs.finite_sum(ASYM, 1.0), math.nan), "x=nan is not allowed"),
    (lambda: fs.clipped_gradient(ASYM, 0.5), "problem must be a FiniteSum"),
])
def test_field_and_sgd_refuse_bad_values(call, bad):
    with pytest.raises(ValueError) as err:
        call()
    assert bad in str(err.value), str(err.value)


def test_field_is_float64_for_python_numbers_in_32_bit_mode():
    # expected_clip's documented exactness needs float64; in JAX's default mode Python numbers
    # used to give float32 (1e-6 relative). Compared with the x64 suite's own value to 1e-15.
    want = float(fs.expected_clip(0.3, 1.0, 0.7))
    jax.config.update("jax_enable_x64", False)
    try:
        got = fs.expected_clip(0.3, 1.0, 0.7)
        h = fs.clipped_gradient(fs.finite_sum(ASYM, 1.0, 0.7), 0.25)
        x_star = fs.minimiser(fs.finite_sum(ASYM, 1.0))
    finally:
        jax.config.update("jax_enable_x64", True)
    assert got.dtype == jnp.float64 and h.dtype == jnp.float64 and x_star.dtype == jnp.float64
    assert float(x_star) == 4.0 / 3.0
    assert abs(float(got) - want) <= 1e-15 * abs(want)
