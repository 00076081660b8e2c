"""Group factors (batch and micro-batch clipping) and pre-clip factors against independent
references (clipdyn.theory.batch_factors; theory/clip_rules.md, eqs. (5), (6), (9), (13)-(19)).

Precision: every test runs under ``jax.enable_x64(True)``; the Talbot formula amplifies rounding
by ``e^(2N/5) = 1.5e4``, so only float64 reaches the tolerances below.

References (none shares code with the Laplace inversion or the COS expansion):

* Gaussian noise: ``S = s2 chi^2_n``; scipy's chi-square CDF and ``quad`` against its density.
* Rademacher and empirical laws: every component has variance ``2R``, so given the atoms drawn,
  ``S`` is ``2R`` times a noncentral chi-square (``scipy.stats.ncx2``) with noncentrality
  ``sum(atoms^2) / (2R)``; the law of ``S`` is the multinomial mixture over the atoms' counts.
* Gaussian mixtures and Student-t at ``n = 2``: planar quadrature over ``(w1, w2)``: ``P(S <= A)``
  and ``E[S 1{S <= A}]`` with ``w1 = sqrt(A) sin(theta)`` (the inner variable is a closed-form
  normal CDF), ``E[S^-1/2 1{S > A}]`` as a radial ``quad`` of the angular average (trapezoidal in
  the angle, spectrally accurate for a periodic integrand). For Student-t the density of ``w`` is
  the mixture of :meth:`StudentT.gaussian_mixture` (checked against scipy's Student-t to 1e-8 in
  tests/test_factors.py); one test uses scipy's Student-t density alone.
* ``n = 4, 8``: fixed-seed Monte Carlo, tolerance 5 standard errors of the sample mean.

Tolerances: the method's measured errors at the points used are below 1e-9 (Talbot, centred laws:
about 1e-12; COS: set by its resolution), and the quadrature references are converged to about
1e-11, so 1e-8 leaves room only for genuine errors; the issue's requirement is 1e-6. Larger grids
(theory/clip_rules.md, section 7) are under ``@pytest.mark.slow``.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

import clipdyn as cd
from clipdyn.theory import batch_factors as bf
from clipdyn.theory import factors

REL = 1e-8
EMPIRICAL = [0.3, -1.2, 2.5, 0.0, 0.3]
MIXTURE = ([0.7, 0.3], [0.2, -3.0], [0.5, 2.0])


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _mu_nu(f, n):
    """(mu_n, nu_n) from (P(S <= A), E[min(1, sqrt(A/S))], E[min(S, A)]), eqs. (5)-(6)."""
    return (f[0] + (n - 1) * f[1]) / n, f[2] / n**2


def _functionals(law, R, A, n):
    return np.array([float(v) for v in bf.group_functionals(law, R, A, n)])


def _assert_factors(got, want, n, rel, what):
    g, w = _mu_nu(got, n), _mu_nu(want, n)
    for name, a, b in zip(("mu", "nu"), g, w):
        assert abs(a - b) <= rel * abs(b), (what, name, a, b)


# ---- references -----------------------------------------------------------------------------

def _chi2_reference(s2, n, A):
    x = A / s2
    pdf = stats.chi2(n).pdf
    cdf = stats.chi2(n).cdf(x)
    tail = integrate.quad(lambda y: pdf(y) / math.sqrt(y), x, np.inf, epsabs=0, epsrel=1e-13)[0]
    below = integrate.quad(lambda y: y * pdf(y), 0, x, epsabs=0, epsrel=1e-13)[0]
    return np.array([cdf, cdf + math.sqrt(x) * tail, s2 * below + A * (1 - cdf)])


def _ncx2_reference(n, R, T, A):
    """The three functionals of 2R chi'^2_n(T / 2R), by scipy's ncx2 and quad."""
    sc, lam = 2 * R, T / (2 * R)
    law = stats.ncx2(n, lam) if lam > 0 else stats.chi2(n)
    cdf = law.cdf(A / sc)
    mean, sd = sc * (n + lam), sc * math.sqrt(2 * (n + 2 * lam))
    lo, hi = max(0.0, mean - 40 * sd), mean + 60 * sd

    def q(f, a, b):
        if b <= a:
            return 0.0
        pts = [x for x in (mean - 10 * sd, mean - 3 * sd, mean, mean + 3 * sd, mean + 10 * sd) if a < x < b]
        return integrate.quad(f, a, b, points=pts or None, epsabs=0, epsrel=1e-13, limit=1000)[0]

    pdf = lambda s: law.pdf(s / sc) / sc  # noqa: E731
    below = q(lambda s: s * pdf(s), lo, min(A, hi))
    tail = q(lambda s: pdf(s) / math.sqrt(s), max(A, lo), hi)
    return np.array([cdf, cdf + math.sqrt(A) * tail, below + A * (1 - cdf)])


def _atoms_reference(atoms, R, A, n):
    """Empirical/Rademacher law: multinomial mixture over the counts of the distinct |atoms|."""
    a2, counts = np.unique(np.square(np.asarray(atoms, float)), return_counts=True)
    p = counts / counts.sum()
    out = np.zeros(3)
    for comp in itertools.combinations_with_replacement(range(len(a2)), n):
        k = np.bincount(comp, minlength=len(a2))
        logw = math.lgamma(n + 1) - sum(math.lgamma(x + 1) for x in k) + float(np.sum(k * np.log(p)))
        out += math.exp(logw) * _ncx2_reference(n, R, float(np.sum(k * a2)), A)
    return out


def _normal_pdf(x, m, s):
    return np.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))


def _planar_reference(f_w, in_window, A, centres, scale, top, radial=None):
    """n = 2 functionals for i.i.d. residuals with density ``f_w`` and ``P(|w| <= x)`` given by
    ``in_window``; ``centres`` are where f_w peaks (quadrature breakpoints), ``scale`` its
    narrowest width, ``top`` a radius beyond which the mass is negligible (may be inf), and
    ``radial(rho)`` the angular integral of ``f_w(rho cos) f_w(rho sin)`` (default: trapezoidal)."""
    sA = math.sqrt(A)
    pts = sorted({math.asin(np.clip(v / sA, -1, 1)) for m in centres for v in (m - 8 * scale, m, m + 8 * scale)}
                 - {-math.pi / 2, math.pi / 2})
    kw = dict(points=pts or None, epsabs=0, epsrel=1e-13, limit=1000)
    cdf = integrate.quad(lambda t: f_w(sA * math.sin(t)) * in_window(sA * math.cos(t)) * sA * math.cos(t),
                         -math.pi / 2, math.pi / 2, **kw)[0]
    # E[S 1{S <= A}] = 2 E[w1^2 1{S <= A}] for i.i.d. residuals
    below = 2 * integrate.quad(lambda t: f_w(sA * math.sin(t)) * A * math.sin(t) ** 2
                               * in_window(sA * math.cos(t)) * sA * math.cos(t),
                               -math.pi / 2, math.pi / 2, **kw)[0]
    ang = np.linspace(0.0, 2 * math.pi, 20000, endpoint=False)

    def trapezoid(rho):  # int_0^2pi f(rho cos) f(rho sin) dphi: density of ||w|| over rho
        return float(np.sum(f_w(rho * np.cos(ang)) * f_w(rho * np.sin(ang)))) * (2 * math.pi / ang.size)

    radial = radial or trapezoid

    if math.isfinite(top):
        rpts = sorted({abs(m) + d for m in centres for d in (-8 * scale, 0.0, 8 * scale)}
                      | {math.hypot(a, b) for a in centres for b in centres})
        rpts = [r for r in rpts if sA < r < top]
        tail = integrate.quad(radial, sA, top, points=rpts or None, epsabs=0, epsrel=1e-12, limit=2000)[0] \
            if top > sA else 0.0
    else:  # rho = sqrt(A) + tan(x)
        tail = integrate.quad(lambda x: radial(sA + math.tan(x)) / math.cos(x) ** 2, 0, math.pi / 2,
                              epsabs=0, epsrel=1e-12, limit=1000)[0]
    return np.array([cdf, cdf + sA * tail, below + A * (1 - cdf)])


def _mixture_reference_n2(weights, means, sigmas, R, A):
    """n = 2 for eps ~ sum_j p_j N(m_j, sigma_j^2): w = N(0, 2R) - eps."""
    p = np.asarray(weights, float) / np.sum(weights)
    m = -np.asarray(means, float)  # the component means of w
    s = np.sqrt(2 * R + np.square(np.asarray(sigmas, float)))

    def f_w(x):
        x = np.asarray(x, float)[..., None]
        return np.sum(p * _normal_pdf(x, m, s), axis=-1)

    def in_window(x):
        return float(np.sum(p * (special.ndtr((x - m) / s) - special.ndtr((-x - m) / s))))

    top = float(np.max(np.abs(m) + 40 * s)) * math.sqrt(2)
    return _planar_reference(f_w, in_window, A, list(m), float(np.min(s)), top)


def _student_reference_n2(df, R, A):
    rep = cd.StudentT(df, 1.0).gaussian_mixture()
    p, v = np.asarray(rep.weights), np.asarray(rep.variances)
    s = np.sqrt(2 * R + v)

    def f_w(x):
        x = np.asarray(x, float)[..., None]
        return np.sum(p * _normal_pdf(x, 0.0, s), axis=-1)

    def in_window(x):
        return float(np.sum(p * special.erf(x / (s * math.sqrt(2)))))

    def radial(rho):  # f_w is even: four quarter-turns, each with its peaks at the ends
        return 4 * integrate.quad(lambda a: f_w(rho * math.cos(a)) * f_w(rho * math.sin(a)), 0, math.pi / 2,
                                  epsabs=0, epsrel=1e-12, limit=400)[0]

    return _planar_reference(f_w, in_window, A, [0.0], float(np.min(s)), math.inf, radial)


def _monte_carlo(eps, R, c, n, draws=400_000, seed=0):
    rng = np.random.default_rng(seed)
    w = math.sqrt(2 * R) * rng.standard_normal((draws, n)) - eps(rng, (draws, n))
    S = np.sum(w * w, axis=1)
    A = (c * n) ** 2
    mu_s = ((S <= A) + (n - 1) * np.minimum(1.0, np.sqrt(A / S))) / n
    nu_s = np.minimum(S, A) / n**2
    return [(x.mean(), x.std() / math.sqrt(draws)) for x in (mu_s, nu_s)]


# ---- group factors: Gaussian closed forms ----------------------------------------------------

@pytest.mark.parametrize("n", [2, pytest.param(8, marks=pytest.mark.slow),
                               pytest.param(32, marks=pytest.mark.slow)])
def test_gaussian_closed_forms_match_chi_square(n):
    law = cd.Gaussian(0.8)
    for R, A in [(1e-4, 1e-3), (0.3, 0.5 * n), (0.3, 3.0 * n), (50.0, 10.0), (0.3, 1e4)]:
        got = _functionals(law, R, A, n)
        want = _chi2_reference(2 * R + 0.64, n, A)
        np.testing.assert_allclose(got, want, rtol=REL, atol=1e-300)


def test_talbot_inversion_matches_gaussian_closed_forms():
    # The same law written as a one-component mixture goes through the Laplace inversion
    # (eqs. (14)-(16)) instead of eq. (13); both are exact, so they agree to the inversion's
    # accuracy, measured at about 4e-10 at worst (A = 1e5 >> E[S], where 1 - L_S cancels).
    gauss, mixture = cd.Gaussian(0.8), cd.GaussianMixture([1.0], [0.0], [0.8])
    for R in [1e-4, 0.3, 50.0]:
        for A in [1e-3, 0.5, 3.0, 100.0, 1e5]:
            np.testing.assert_allclose(_functionals(mixture, R, A, 8), _functionals(gauss, R, A, 8),
                                       rtol=1e-9, atol=1e-300)


# ---- group factors: atoms (Talbot and COS routes) ---------------------------------------------

RADEMACHER_CASES = [(8, R) for R in (1e-4, 0.01, 0.05, 0.2, 10.0)]  # both routes, and D = 40


@pytest.mark.parametrize("n, R", RADEMACHER_CASES + [
    pytest.param(n, R, marks=pytest.mark.slow) for n in (2, 32) for R in (1e-4, 1e-3, 0.01, 0.2, 1.0, 10.0)])
def test_rademacher_matches_noncentral_chi_square(n, R):
    # +-1.3: the delay D = n sigma^2 / (4R) is 2.6e4 (COS) down to 0.3 (Talbot) over these R.
    sigma = 1.3
    law = cd.Rademacher(sigma)
    for xr in [0.1, 0.9, 1.0, 1.1, 3.0]:
        A = xr * n * sigma**2
        want = _ncx2_reference(n, R, n * sigma**2, A)
        _assert_factors(_functionals(law, R, A, n), want, n, REL, (n, R, A))


@pytest.mark.parametrize("R, c", [(1e-3, 0.1), (0.03, 0.7), pytest.param(1e-4, 0.1, marks=pytest.mark.slow),
                                  pytest.param(0.03, 0.01, marks=pytest.mark.slow),
                                  pytest.param(1.0, 3.0, marks=pytest.mark.slow)])
def test_empirical_matches_multinomial_noncentral_chi_square(R, c):
    # Four distinct |atoms| (one at 0): the binomial split sends the terms to both methods.
    # Measured errors at these points: below 3e-9 (5e-15 at R = 1e-4 with 8192 cosine terms).
    n = 4
    law = cd.Empirical(np.array(EMPIRICAL))
    A = (c * n) ** 2
    _assert_factors(_functionals(law, R, A, n), _atoms_reference(EMPIRICAL, R, A, n), n, REL, (R, c))


# Atoms far apart in |m| / s: narrow peaks in the law of S that 8192 cosine terms do not resolve
# at small R (eq. (18a)); the default then follows cos_terms_needed.
SPREAD_ATOMS = [0.0, 0.4, 8.0]


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("c", [0.1, 1.0])
def test_spread_atoms_resolved_at_small_risk(n, c):
    # Measured: 4e-13 with the terms cos_terms_needed picks (65536, 131072); with the old fixed
    # 8192 the same functionals were off by 1.4e-5 to 1.5e-2, which the second check keeps
    # visible (the case must need the larger expansion, or the first check proves nothing).
    R = 1e-4
    law = cd.Empirical(np.array(SPREAD_ATOMS))
    A = (c * n) ** 2
    want = _atoms_reference(SPREAD_ATOMS, R, A, n)
    assert bf.cos_terms_needed(law, R, n) > bf.DEFAULT_COS_TERMS
    _assert_factors(_functionals(law, R, A, n), want, n, REL, (n, c))
    coarse = np.array([float(v) for v in bf.group_functionals(law, R, A, n,
                                                              cos_terms=bf.DEFAULT_COS_TERMS)])
    assert np.max(np.abs(coarse / want - 1)) > 1e-6


def test_cos_terms_needed_grows_as_risk_falls_and_refuses_beyond_the_cap():
    law = cd.Empirical(np.array(SPREAD_ATOMS))
    needs = [bf.cos_terms_needed(law, R, 4) for R in (1e-2, 1e-3, 1e-4, 1e-5)]
    assert needs == sorted(needs) and needs[0] == bf.DEFAULT_COS_TERMS and needs[-1] > needs[0]
    assert all(k & (k - 1) == 0 for k in needs)  # powers of two: one program per size
    # an array of risks needs what its smallest does
    assert bf.cos_terms_needed(law, np.array([1e-2, 1e-5]), 4) == needs[-1]
    # laws without shifted components, and single residuals, never need more
    assert bf.cos_terms_needed(cd.StudentT(3.0, 1.0), 1e-9, 8) == bf.DEFAULT_COS_TERMS
    assert bf.cos_terms_needed(law, 1e-9, 1) == bf.DEFAULT_COS_TERMS
    with pytest.raises(ValueError, match=r"n=4 at R=1e-07 need about .* cosine terms, more than "
                                         r"MAX_COS_TERMS=1048576"):
        bf.cos_terms_needed(law, 1e-7, 4)
    with pytest.raises(ValueError, match="need about"):
        bf.group_factors(law, 1e-7, 0.1, 4)
    # an explicit cos_terms is the caller's choice: no refusal
    assert np.isfinite(float(bf.group_factors(law, 1e-7, 0.1, 4, cos_terms=8192)[0]))


def test_chunked_cos_series_equals_one_piece():
    # 3 x 8192 + 5 terms in chunks (bf._COS_CHUNK) against the same length evaluated at once (the chunking only
    # reorders a sum: rounding-level differences).
    law = cd.Empirical(np.array(SPREAD_ATOMS))
    rep = law.gaussian_mixture()
    R, A, n, terms = 1e-3, 1.0, 4, 3 * bf.DEFAULT_COS_TERMS + 5
    s2 = 2 * R + rep.variances
    split = bf._split(rep.weights, rep.means, s2, n)
    got = np.array(bf._cos_functionals(rep, s2, n, split, jnp.asarray(A), terms))
    saved = bf._COS_CHUNK
    try:
        bf._COS_CHUNK = terms  # one chunk
        whole = np.array(bf._cos_functionals(rep, s2, n, split, jnp.asarray(A), terms))
    finally:
        bf._COS_CHUNK = saved
    np.testing.assert_allclose(got, whole, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("R", [1e-3, 0.01, 0.1, 1.0])
def test_empirical_n8_matches_multinomial_noncentral_chi_square(R):
    n = 8
    law = cd.Empirical(np.array(EMPIRICAL))
    for c in [0.1, 0.3, 0.7, 1.5]:
        A = (c * n) ** 2
        _assert_factors(_functionals(law, R, A, n), _atoms_reference(EMPIRICAL, R, A, n), n, 1e-6, (R, c))


@pytest.mark.parametrize("R, c", [(0.01, 0.7), pytest.param(1e-4, 0.3, marks=pytest.mark.slow),
                                  pytest.param(1.0, 2.0, marks=pytest.mark.slow),
                                  pytest.param(10.0, 30.0, marks=pytest.mark.slow)])
def test_mixture_n2_matches_planar_quadrature(R, c):
    law = cd.GaussianMixture(*MIXTURE)
    A = 4 * c * c
    _assert_factors(_functionals(law, R, A, 2), _mixture_reference_n2(*MIXTURE, R, A), 2, REL, (R, c))


@pytest.mark.parametrize("df, R, c", [(1.0, 0.01, 0.3), (1.5, 1e-4, 1.0),
                                      pytest.param(2.5, 0.1, 3.0, marks=pytest.mark.slow),
                                      pytest.param(1.0, 1e-4, 0.01, marks=pytest.mark.slow),
                                      pytest.param(1.0, 10.0, 30.0, marks=pytest.mark.slow),
                                      pytest.param(2.5, 1e-4, 0.3, marks=pytest.mark.slow)])
def test_student_t_n2_matches_planar_quadrature(df, R, c):
    law = cd.StudentT(df, 1.0)
    A = 4 * c * c
    _assert_factors(_functionals(law, R, A, 2), _student_reference_n2(df, R, A), 2, REL, (df, R, c))


@pytest.mark.slow
def test_student_t_cdf_matches_scipy_student_t():
    # Fully independent of clipdyn's Student-t quadrature: the density of w = N(0, 2R) - eps is
    # scipy's t density convolved with the normal by quad, and P(|w| <= x) likewise; then
    # P(w1^2 + w2^2 <= A) = int f_w(w1) P(|w2| <= sqrt(A - w1^2)) dw1 (w1 = sqrt(A) sin t,
    # 120-node Gauss-Legendre on a smooth integrand). quad at 1e-12: tolerance 1e-9.
    df, R, A = 1.5, 0.05, 2.0
    s = math.sqrt(2 * R)
    t = stats.t(df)

    def f_w(x):  # the normal factor is below e^-800 outside +-40 s of e = -x
        return integrate.quad(lambda e: t.pdf(e) * _normal_pdf(x + e, 0.0, s), -x - 40 * s, -x + 40 * s,
                              epsabs=0, epsrel=1e-12, limit=400)[0]

    def in_window(x):
        g = lambda e: t.pdf(e) * (special.ndtr((x + e) / s) - special.ndtr((-x + e) / s))  # noqa: E731
        edges = sorted({-np.inf, -x - 40 * s, x - 40 * s, -x + 40 * s, x + 40 * s, np.inf})
        return sum(integrate.quad(g, a, b, epsabs=0, epsrel=1e-12, limit=400)[0]
                   for a, b in zip(edges[:-1], edges[1:]) if b > a)

    x, w = np.polynomial.legendre.leggauss(120)
    th = 0.5 * math.pi * x
    sA = math.sqrt(A)
    want = 0.5 * math.pi * sum(wi * f_w(sA * math.sin(ti)) * in_window(sA * math.cos(ti)) * sA * math.cos(ti)
                               for ti, wi in zip(th, w))
    got = float(bf.group_functionals(cd.StudentT(df, 1.0), R, A, 2).cdf)
    assert got == pytest.approx(want, rel=1e-9)


MC_LAWS = {
    "student-t df=1.5": (cd.StudentT(1.5, 1.0), lambda rng, s: rng.standard_t(1.5, s)),
    "student-t df=2.5": (cd.StudentT(2.5, 1.0), lambda rng, s: rng.standard_t(2.5, s)),
    "cauchy": (cd.cauchy(1.0), lambda rng, s: rng.standard_cauchy(s)),
    "mixture": (cd.GaussianMixture(*MIXTURE), lambda rng, s: np.where(
        rng.random(s) < 0.7, 0.2 + 0.5 * rng.standard_normal(s), -3.0 + 2.0 * rng.standard_normal(s))),
    "empirical": (cd.Empirical(np.array(EMPIRICAL)), lambda rng, s: rng.choice(EMPIRICAL, s)),
}

def test_group_nu_at_thresholds_far_beyond_the_residuals():
    # At large A = (c n)^2 Talbot's points have p E[S] ~ 1e-10 and m - L(p) cancelled: Student-t(3)
    # in groups of 8 had nu 10 % low at c = 1e6, and t(2) in pairs at c = 1e12 gave nu = -339.
    # References (float64): a centred mixture is unclipped to exp(-huge), nu = (2R + sigma^2) / n
    # (to 1e-10); Student-t(3) loses E[(S - A)_+] ~ n 8 sqrt(3) / (pi sqrt(A)) (its tail
    # P(|t| > x) ~ 4 sqrt(3) / (pi x^3), next order A^(-3/2)), and its mixture's quadrature
    # leaves out a 1e-7 relative part of nu at c = 1e7 (noise.StudentT.gaussian_mixture), so
    # 3e-7 there; measured 5e-12 to 1.6e-7 after the fix.
    R, n = 1e-4, 8
    law = cd.GaussianMixture([0.5, 0.5], [0.0, 0.0], [0.1, 3.0])
    for size in (2, 8):
        for c in (1e4, 1e6, 1e8):
            mu, nu = bf.group_factors(law, R, c, size)
            assert float(nu) == pytest.approx((2 * R + 0.5 * (0.01 + 9.0)) / size, rel=1e-10)
            assert float(mu) == pytest.approx(1.0, abs=1e-12)
    t3 = cd.StudentT(3.0, 1.0)
    for c in (1e3, 1e5, 1e7):
        A = (c * n) ** 2
        want = (n * (2 * R + 3.0) - n * 8 * math.sqrt(3) / (math.pi * math.sqrt(A))) / n**2
        assert float(bf.group_factors(t3, R, c, n)[1]) == pytest.approx(want, rel=3e-7)
    assert float(bf.group_factors(cd.StudentT(2.0, 1.0), 1e-8, 1e12, 2)[1]) > 0



@pytest.mark.parametrize("name, n, R, c", [("student-t df=1.5", 4, 0.02, 0.5)] + [
    pytest.param(name, n, R, c, marks=pytest.mark.slow)
    for name in MC_LAWS for n, R, c in [(4, 0.3, 1.0), (8, 0.01, 0.3)]])
def test_group_factors_match_monte_carlo(name, n, R, c):
    # 4e5 fixed-seed draws; 5 standard errors of the sample mean (a 1-in-1.7e6 event).
    law, eps = MC_LAWS[name]
    (mu_mc, mu_se), (nu_mc, nu_se) = _monte_carlo(eps, R, c, n)
    mu, nu = (float(v) for v in bf.group_factors(law, R, c, n))
    assert abs(mu - mu_mc) <= 5 * mu_se, (mu, mu_mc, mu_se)
    assert abs(nu - nu_mc) <= 5 * nu_se, (nu, nu_mc, nu_se)


# ---- group factors: structure, limits, gradients, validation ----------------------------------

@pytest.mark.parametrize("law", [cd.StudentT(2.5, 1.0), cd.Rademacher(1.0)])
def test_group_of_one_is_the_per_sample_factors(law):
    R = jnp.asarray([1e-3, 0.3, 10.0])
    c = jnp.asarray([0.2, 1.0, 5.0])
    mu, nu = bf.group_factors(law, R, c, 1)
    for i in range(3):
        m0, n0, _ = jax.jit(lambda r, cc: factors._factors_scalar(law, r, cc))(R[i], c[i])
        assert float(mu[i]) == pytest.approx(float(m0), rel=1e-14)
        assert float(nu[i]) == pytest.approx(float(n0), rel=1e-14)


@pytest.mark.parametrize("law, n", [(cd.StudentT(1.5, 1.0), 4), (cd.Rademacher(1.0), 8)])
def test_group_limits(law, n):
    R = 0.2
    sigma2 = float(law.second_moment)
    mu, nu = bf.group_factors(law, R, jnp.asarray([0.0, math.inf, 1e-9, 1e4]), n)
    assert float(mu[0]) == 0.0 and float(nu[0]) == 0.0
    assert float(mu[1]) == 1.0
    assert float(nu[1]) == pytest.approx((2 * R + sigma2) / n, rel=1e-15) or math.isinf(sigma2)
    # c -> 0: mu = O(c) and nu = c^2 P(S > A) + O(c^3): both vanish continuously.
    assert 0 < float(mu[2]) < 1e-6 and float(nu[2]) == pytest.approx(1e-18, rel=1e-3)
    # c >> the noise: no clipping (heavy tails: mu -> 1 still; nu -> E[S]/n^2 only if finite).
    assert float(mu[3]) == pytest.approx(1.0, abs=1e-4)
    if math.isfinite(sigma2):
        # E[min(S, A)] is inverted on a contour of radius ~ 1/A, so its rounding error grows
        # like A eps / E[S] (measured 1e-5 relative at A = 6.4e9, n = 8; 2e-9 at c = 100).
        assert float(nu[3]) == pytest.approx((2 * R + sigma2) / n, rel=1e-4)
        far = bf.group_factors(law, R, 30.0, n)[1]
        assert float(far) == pytest.approx((2 * R + sigma2) / n, rel=1e-9)


def test_student_t_scale_enters_as_scale():
    # eps -> a eps, R -> a^2 R, c -> a c: S -> a^2 S, A -> a^2 A, so mu_n is invariant and nu_n
    # scales by a^2 (the contour and the split move with the law; 1e-11).
    a, n = 3.7, 4
    m1, n1 = bf.group_factors(cd.StudentT(1.5, 1.0), 0.3, 0.8, n)
    m2, n2 = bf.group_factors(cd.StudentT(1.5, a), 0.3 * a * a, 0.8 * a, n)
    assert float(m2) == pytest.approx(float(m1), rel=1e-11)
    assert float(n2) == pytest.approx(a * a * float(n1), rel=1e-11)


def test_batch_rule_stops_clipping_as_the_batch_grows():
    # S / n -> 2R + sigma^2, so with c fixed and c^2 n >> 2R + sigma^2 the batch mean is never
    # clipped: mu_n -> 1, n nu_n -> 2R + sigma^2 (theory/clip_rules.md, section 2).
    law, R, c = cd.Gaussian(1.0), 0.5, 0.5
    mus = [float(bf.group_factors(law, R, c, n)[0]) for n in (2, 8, 32)]
    assert mus[0] < mus[1] < mus[2] and mus[2] > 1 - 1e-6


@pytest.mark.parametrize("law, n", [(cd.StudentT(2.5, 1.0), 4),
                                    pytest.param(cd.GaussianMixture(*MIXTURE), 8, marks=pytest.mark.slow),
                                    pytest.param(cd.Empirical(np.array(EMPIRICAL)), 4, marks=pytest.mark.slow)])
def test_group_gradients_match_finite_differences(law, n):
    # Central differences with relative step 1e-4: truncation ~1e-8 relative, rounding of the
    # method's 1e-12 errors ~1e-8; tolerance 1e-6 relative (1e-9 absolute for vanishing ones).
    for R, c in [(0.05, 0.3), (1.0, 1.0)]:
        jac = np.asarray(jax.jacfwd(lambda x: jnp.stack(bf.group_factors(law, x[0], x[1], n)))(
            jnp.asarray([R, c])))
        assert np.all(np.isfinite(jac))
        h = 1e-4
        for j, (dR, dc) in enumerate([(R * h, 0.0), (0.0, c * h)]):
            up = np.array([float(v) for v in bf.group_factors(law, R + dR, c + dc, n)])
            dn = np.array([float(v) for v in bf.group_factors(law, R - dR, c - dc, n)])
            fd = (up - dn) / (2 * (dR + dc))
            np.testing.assert_allclose(jac[:, j], fd, rtol=1e-6, atol=1e-9)


def test_group_factors_jit_vmap_broadcast():
    law = cd.StudentT(2.5, 1.0)
    R = jnp.asarray([0.01, 0.1, 1.0])
    c = jnp.asarray([[0.3], [1.0]])
    mu, nu = bf.group_factors(law, R, c, 4)  # broadcast (2, 3)
    assert mu.shape == nu.shape == (2, 3)
    f = jax.jit(jax.vmap(lambda r: bf.group_factors(law, r, 1.0, 4)))
    mu_v, nu_v = f(R)
    np.testing.assert_allclose(np.asarray(mu_v), np.asarray(mu[1]), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(nu_v), np.asarray(nu[1]), rtol=1e-13)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "n=0"), (dict(n=2.5), "n=2.5"), (dict(n=True), "n=True"),
    (dict(R=-1.0), "R=-1.0"), (dict(c=-0.5), "c=-0.5"), (dict(c=math.nan), "c=nan"),
    (dict(cos_terms=4), "cos_terms=4")])
def test_group_factors_reject_bad_input(kwargs, match):
    args = dict(noise=cd.Gaussian(1.0), R=0.1, c=1.0, n=2) | kwargs
    with pytest.raises(ValueError, match=match):
        bf.group_factors(**args)


# ---- pre-clip noise -------------------------------------------------------------------------

def _preclip_reference(weights, means, variances, R, c, K):
    """(mu, nu, iso) of eq. (9) by quad over w for w ~ sum_j p_j N(-m_j, 2R + v_j)."""
    edge = math.sqrt(max(c * c - K * K, 0.0))
    fs = (lambda w: np.where(w * w + K * K <= c * c, 1.0, c * K * K / (w * w + K * K) ** 1.5),
          lambda w: np.minimum(1.0, c * c / (w * w + K * K)) * w * w,
          lambda w: K * K * np.minimum(1.0, c * c / (w * w + K * K)))
    out = np.zeros(3)
    for p, m, v in zip(weights, means, variances):
        s = math.sqrt(2 * R + v)
        pts = sorted({-edge, edge, -m, -m - 10 * s, -m + 10 * s})
        for i, f in enumerate(fs):
            lo, tot = -np.inf, 0.0
            for hi in pts + [np.inf]:
                if hi > lo:
                    tot += integrate.quad(lambda w: f(w) * _normal_pdf(w, -m, s), lo, hi,
                                          epsabs=0, epsrel=1e-13, limit=400)[0]
                lo = hi
            out[i] += p * tot
    return out


def _components(law):
    rep = law.gaussian_mixture()
    w, v = np.asarray(rep.weights), np.asarray(rep.variances)
    m = np.zeros_like(v) if rep.means is None else np.asarray(rep.means)
    return w, m, v


@pytest.mark.parametrize("law", [pytest.param(cd.cauchy(1.0), marks=pytest.mark.slow),
                                 pytest.param(cd.StudentT(1.5, 1.0), marks=pytest.mark.slow),
                                 cd.Empirical(np.array(EMPIRICAL)),
                                 pytest.param(cd.StudentT(2.5, 1.0), marks=pytest.mark.slow),
                                 pytest.param(cd.GaussianMixture(*MIXTURE), marks=pytest.mark.slow)])
def test_preclip_factors_match_quadrature(law):
    # Reference: quad at 1e-13 per component (the Student-t components are its mixture
    # representation). Measured differences: below 2e-13 for light tails; up to 8e-8 for Cauchy
    # and Student-t df 1.5 at c = 0.01, where quad warns that it cannot reach its tolerance on
    # the widest components. Tolerance 2e-7; the Cauchy case is also checked against an
    # independent density below.
    w, m, v = _components(law)
    cases = [(1e-4, 0.5, 2.0), (0.1, 0.01, 0.005), (10.0, 3.0, 1.0)]
    got = np.asarray(bf.preclip_factors(law, jnp.asarray([x[0] for x in cases]),
                                        jnp.asarray([x[1] for x in cases]), jnp.asarray([x[2] for x in cases])))
    for i, (R, c, K) in enumerate(cases):
        np.testing.assert_allclose(got[:, i], _preclip_reference(w, m, v, R, c, K), rtol=2e-7)


def test_preclip_cauchy_matches_voigt_quadrature():
    # Independent of the mixture representation: the residual w = sqrt(2R) z - eps with Cauchy
    # eps has the Voigt density (scipy.special.voigt_profile); quad at 1e-12. Measured: 1e-12
    # at c >= 0.5, 7e-8 at c = 0.01 (the representation's accuracy there); tolerance 2e-7.
    law = cd.cauchy(1.0)
    cases = [(1e-4, 0.5, 2.0), (0.1, 0.01, 0.005), (10.0, 3.0, 1.0)]
    got = np.asarray(bf.preclip_factors(law, jnp.asarray([x[0] for x in cases]),
                                        jnp.asarray([x[1] for x in cases]), jnp.asarray([x[2] for x in cases])))
    for i, (R, c, K) in enumerate(cases):
        sig = math.sqrt(2 * R)
        edge = math.sqrt(max(c * c - K * K, 0.0))
        fs = (lambda x: np.where(x * x + K * K <= c * c, 1.0, c * K * K / (x * x + K * K) ** 1.5),
              lambda x: np.minimum(1.0, c * c / (x * x + K * K)) * x * x,
              lambda x: K * K * np.minimum(1.0, c * c / (x * x + K * K)))
        pts = sorted({-edge, edge, 0.0, -50 * sig - 5, 50 * sig + 5})
        ref = []
        for f in fs:
            lo, tot = -np.inf, 0.0
            for hi in pts + [np.inf]:
                if hi > lo:
                    tot += integrate.quad(lambda x: f(x) * special.voigt_profile(x, sig, 1.0), lo, hi,
                                          epsabs=0, epsrel=1e-12, limit=500)[0]
                lo = hi
            ref.append(tot)
        np.testing.assert_allclose(got[:, i], ref, rtol=2e-7)


def test_preclip_without_noise_is_the_per_sample_factors():
    law = cd.Empirical(np.array(EMPIRICAL))
    R, c = jnp.asarray([1e-3, 0.3]), jnp.asarray([0.5, 2.0])
    mu, nu, iso = bf.preclip_factors(law, R, c, 0.0)
    m0, n0 = bf.group_factors(law, R, c, 1)
    np.testing.assert_allclose(np.asarray(mu), np.asarray(m0), rtol=1e-14)
    np.testing.assert_allclose(np.asarray(nu), np.asarray(n0), rtol=1e-14)
    assert np.all(np.asarray(iso) == 0.0)


def test_preclip_limits_and_rademacher_revival():
    law = cd.Rademacher(1.0)
    K = 0.7
    mu, nu, iso = (np.asarray(v) for v in bf.preclip_factors(law, 0.2, jnp.asarray([0.0, math.inf]), K))
    assert (mu[0], nu[0], iso[0]) == (0.0, 0.0, 0.0)
    assert mu[1] == 1.0 and nu[1] == pytest.approx(0.4 + 1.0, rel=1e-15) and iso[1] == pytest.approx(K * K)
    # R -> 0 with c < sigma: no residual is ever inside the window, so without pre-clip noise
    # mu -> 0, while with it mu -> c K^2 / (sigma^2 + K^2)^(3/2), largest at K = sqrt(2) sigma
    # (theory/clip_rules.md, after eq. (9)). At R = 1e-12 the residuals are within 1e-6 of +-1.
    c, R = 0.5, 1e-12
    m0 = float(bf.preclip_factors(law, R, c, 0.0)[0])
    ks = np.asarray([0.5, math.sqrt(2.0), 3.0])
    mk = np.asarray(bf.preclip_factors(law, R, c, jnp.asarray(ks))[0])
    assert m0 == 0.0
    np.testing.assert_allclose(mk, c * ks**2 / (1 + ks**2) ** 1.5, rtol=1e-5)
    assert mk[1] == pytest.approx(2 * c / (3 * math.sqrt(3)), rel=1e-5) and mk[1] == mk.max()


@pytest.mark.slow
def test_preclip_gradients_match_finite_differences():
    law = cd.StudentT(2.5, 1.0)
    x0 = np.asarray([0.1, 0.8, 0.5])  # R, c, K (window edge sqrt(c^2 - K^2) = 0.62)
    jac = np.asarray(jax.jacfwd(lambda x: jnp.stack(bf.preclip_factors(law, x[0], x[1], x[2])))(jnp.asarray(x0)))
    assert np.all(np.isfinite(jac))
    h = 1e-5
    for j in range(3):
        e = np.zeros(3)
        e[j] = h * x0[j]
        up = np.array([float(v) for v in bf.preclip_factors(law, *(x0 + e))])
        dn = np.array([float(v) for v in bf.preclip_factors(law, *(x0 - e))])
        np.testing.assert_allclose(jac[:, j], (up - dn) / (2 * e[j]), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [(dict(K=-1.0), "K=-1.0"), (dict(K=math.inf), "K=inf"),
                                           (dict(R=0.0), "R=0.0"), (dict(c=-1.0), "c=-1.0")])
def test_preclip_factors_reject_bad_input(kwargs, match):
    args = dict(noise=cd.Gaussian(1.0), R=0.1, c=1.0, K=0.5) | kwargs
    with pytest.raises(ValueError, match=match):
        bf.preclip_factors(**args)


def test_group_rule_optimal_threshold_is_ccc_argmax_one_risk_at_a_time():
    # float64. A group rule's factors integrate over the group's residuals: the threshold search
    # runs one risk at a time and a few thresholds at a time (evaluated all at once, a max-CCC
    # table of 321 risks asked for 175 GB). Same answer as one risk per call (to rounding: the
    # two programs differ in shape), and a maximum:
    # CCC at c* beats c* e^{+-0.01} (CCC is smooth, flat at its maximum to ~1e-5 there).
    from clipdyn.theory import rules

    law, rule = cd.StudentT(3.0, 1.0), rules.batch_mean(4)
    Rs = np.array([0.05, 2.0])
    cs = np.asarray(factors.optimal_threshold(law, Rs, rule=rule, grid=21, iters=30))
    for R, c in zip(Rs, cs):
        assert float(factors.optimal_threshold(law, R, rule=rule, grid=21, iters=30)) == pytest.approx(c, rel=1e-14)
        v = np.asarray(factors.reduction_factors(law, R, c * np.exp([-0.01, 0.0, 0.01]), rule).ccc)
        assert v[1] >= v[0] and v[1] >= v[2], (R, c, v)


def test_groups_up_to_max_group_are_accurate_and_larger_ones_refused():
    # At the largest group allowed the Gaussian functionals still match scipy's chi-square
    # (S = (2R + sigma^2) X, X ~ chi2(n); quad at epsrel 1e-12, float64): 3e-12 measured, 1e-9
    # asked. Beyond it a Student-t group's nu broke its own upper bound (n = 1e5) and turned
    # negative (n = 1e9), and those numbers were printed as results (trial-batch, 2026-11-23).
    from clipdyn.theory import rules

    n = bf.MAX_GROUP
    A = 2.0 * n  # at the bulk of S: the hardest place for the inversion
    got = bf.group_functionals(cd.Gaussian(1.0), 0.5, A, n)
    X = stats.chi2(n)
    lo, hi = X.ppf(1e-15), X.ppf(1 - 1e-15)
    want = (X.cdf(A / 2),
            integrate.quad(lambda x: min(1.0, np.sqrt(A / (2 * x))) * X.pdf(x), lo, hi, points=[A / 2],
                           limit=500, epsrel=1e-12)[0],
            integrate.quad(lambda x: min(2 * x, A) * X.pdf(x), lo, hi, points=[A / 2], limit=500,
                           epsrel=1e-12)[0])
    np.testing.assert_allclose([float(v) for v in got], want, rtol=1e-9)
    for make in (lambda: rules.batch_mean(n + 1), lambda: rules.micro_batch(4 * n, 2 * n)):
        with pytest.raises(ValueError, match=f"groups clipped together hold at most {n}"):
            make()
    with pytest.raises(ValueError, match=f"n must be an integer >= 1 and <= {n}"):
        bf.group_factors(cd.Gaussian(1.0), 0.5, 1.0, n + 1)
