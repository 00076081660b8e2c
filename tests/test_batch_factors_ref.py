"""Group (batch, micro-batch) and pre-clip factors against independent references (float64).

* Group factors: a fixed-seed Monte Carlo of their definitions (theory/clip_rules.md, eqs.
  (5)-(6)): residuals ``w_b = sqrt(2R) z_b - eps_b`` drawn from the noise law, ``S = sum w_b^2``,
  ``mu_n = (1/n)[P(S <= A) + (n-1) E min(1, sqrt(A/S))]``, ``nu_n = E[min(S, A)] / n^2``,
  ``A = c^2 n^2``; tolerance 5 standard errors of the Monte Carlo mean (400 000 draws).
* Pre-clip factors: scipy ``quad`` of the one-dimensional expectations over ``w`` (eq. (9)),
  split at the kinks ``|w| = sqrt(c^2 - K^2)``, to 1e-8 relative.
"""

import math

import jax
import numpy as np
import pytest
from scipy import integrate, stats

import clipdyn as cd
from clipdyn.theory import batch_factors

N = 400_000


def _mc_group(eps, R, c, n, seed=0):
    rng = np.random.default_rng(seed)
    w = math.sqrt(2 * R) * rng.standard_normal((N, n)) - eps(rng, (N, n))
    S = np.sum(w * w, axis=1)
    A = c * c * n * n
    mu_s = ((S <= A) + (n - 1) * np.minimum(1.0, np.sqrt(A / S))) / n
    nu_s = np.minimum(S, A) / (n * n)
    return (mu_s.mean(), mu_s.std() / math.sqrt(N)), (nu_s.mean(), nu_s.std() / math.sqrt(N))


LAWS = {
    "gaussian": (cd.Gaussian(1.0), lambda rng, s: rng.standard_normal(s)),
    "student-t df=2.5": (cd.StudentT(2.5, 1.0), lambda rng, s: rng.standard_t(2.5, s)),
    "cauchy": (cd.StudentT(1.0, 0.5), lambda rng, s: 0.5 * rng.standard_cauchy(s)),
    "rademacher": (cd.Rademacher(1.0), lambda rng, s: rng.choice([-1.0, 1.0], s)),
}


FAST_GROUP = [("student-t df=2.5", 8, 0.05, 0.5), ("rademacher", 2, 0.3, 0.8)]
ALL_GROUP = [(name, n, R, c) for name in LAWS for n, R, c in [(2, 0.3, 0.8), (8, 0.05, 0.5)]]


@pytest.mark.parametrize("name, n, R, c", [
    pytest.param(*case, marks=[] if case in FAST_GROUP else [pytest.mark.slow]) for case in ALL_GROUP])
def test_group_factors_match_monte_carlo(name, n, R, c):
    law, eps = LAWS[name]
    (mu_mc, mu_se), (nu_mc, nu_se) = _mc_group(eps, R, c, n)
    with jax.enable_x64(True):
        mu, nu = (float(v) for v in batch_factors.group_factors(law, R, c, n))
    assert abs(mu - mu_mc) <= 5 * mu_se + 1e-12, (mu, mu_mc, mu_se)
    assert abs(nu - nu_mc) <= 5 * nu_se + 1e-12, (nu, nu_mc, nu_se)


def test_group_factors_gaussian_closed_form_against_chi2():
    # Gaussian noise: S = s2 chi^2_n, so the factors are one-dimensional integrals against
    # scipy's chi-square density (quad, 1e-10).
    R, c, n, sigma2 = 0.2, 0.6, 4, 1.0
    s2 = 2 * R + sigma2
    A = c * c * n * n
    pdf = stats.chi2(n).pdf
    P = stats.chi2(n).cdf(A / s2)
    mean_clip = P + integrate.quad(lambda x: math.sqrt(A / (s2 * x)) * pdf(x), A / s2, np.inf, epsrel=1e-12)[0]
    E_min = integrate.quad(lambda x: s2 * x * pdf(x), 0, A / s2, epsrel=1e-12)[0] + A * (1 - P)
    with jax.enable_x64(True):
        mu, nu = (float(v) for v in batch_factors.group_factors(cd.Gaussian(1.0), R, c, n))
    assert mu == pytest.approx((P + (n - 1) * mean_clip) / n, rel=1e-9)
    assert nu == pytest.approx(E_min / n**2, rel=1e-9)


def _quad_preclip(components, R, c, K):
    """(mu, nu, iso) for w a mixture of N(m_j, 2R + v_j) with weights p_j, by quad."""
    edge = math.sqrt(max(c * c - K * K, 0.0))

    def f_mu(w):
        q = w * w + K * K
        return 1.0 if q <= c * c else c * K * K / q**1.5

    def f_nu(w):
        return min(1.0, c * c / (w * w + K * K)) * w * w

    def f_iso(w):
        return K * K * min(1.0, c * c / (w * w + K * K))

    out = np.zeros(3)
    for p, m, v in components:
        s = math.sqrt(2 * R + v)
        pts = sorted({-edge, edge, m})
        for i, f in enumerate((f_mu, f_nu, f_iso)):
            g = lambda w: f(w) * stats.norm.pdf(w, m, s)  # noqa: E731
            lo, tot = -np.inf, 0.0
            for hi in pts + [np.inf]:
                if hi > lo:
                    tot += integrate.quad(g, lo, hi, epsabs=0, epsrel=1e-11, limit=200)[0]
                lo = hi
            out[i] += p * tot
    return out


@pytest.mark.parametrize("law, components", [
    (cd.Rademacher(1.0), [(0.5, 1.0, 0.0), (0.5, -1.0, 0.0)]),
    (cd.Gaussian(0.7), [(1.0, 0.0, 0.49)]),
    (cd.GaussianMixture([0.3, 0.7], [-2.0, 0.5], [0.2, 1.0]), [(0.3, 2.0, 0.04), (0.7, -0.5, 1.0)]),
])
@pytest.mark.parametrize("R, c, K", [(0.01, 0.2, 1.0), pytest.param(0.5, 1.5, 0.5, marks=pytest.mark.slow),
                                     pytest.param(0.1, 0.5, 3.0, marks=pytest.mark.slow)])
def test_preclip_factors_match_quadrature(law, components, R, c, K):
    # w = N(0, 2R) - eps: a component N(m, v) of eps gives N(-m, 2R + v) for w (the component
    # lists above are written for w).
    want = _quad_preclip(components, R, c, K)
    with jax.enable_x64(True):
        got = np.array([float(v) for v in batch_factors.preclip_factors(law, R, c, K)])
    np.testing.assert_allclose(got, want, rtol=1e-8)


def test_preclip_zero_is_the_paper_factors():
    # K = 0 is per-sample clipping: mu = P(|w| <= c), nu = nu_abs, iso = 0 (float64, 1e-12).
    law = cd.StudentT(3.0, 1.0)
    with jax.enable_x64(True):
        mu, nu, iso = (float(v) for v in batch_factors.preclip_factors(law, 0.2, 0.7, 0.0))
        f = cd.reduction_factors(law, 0.2, 0.7)
    assert mu == pytest.approx(float(f.mu), rel=1e-10)
    assert nu == pytest.approx(float(f.nu_abs), rel=1e-10)
    assert iso == 0.0
