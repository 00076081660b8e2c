"""Descent and noise factors of group clipping (batch, micro-batch) and of pre-clip noise.

**Group clipping.** A group of ``n`` residuals ``w_b = N(0, 2R) - eps_b`` (``n = B`` for the batch
rule, ``n = b`` for micro-batches, ``n = 1`` per sample) is clipped through the norm of its mean
gradient, which in high dimension is ``sqrt(Tr K) sqrt(S) / n`` with ``S = sum_b w_b^2``. With
``A = c^2 n^2`` the clip scale is ``min(1, sqrt(A / S))`` and (theory/clip_rules.md, eqs. (5), (6))

    mu_n = (1/n) [P(S <= A) + (n - 1) E[min(1, sqrt(A/S))]],      nu_n = E[min(S, A)] / n^2.

Everything is a functional of the law of ``S``, whose Laplace transform is closed form:
``L_S = L_Y^n`` with ``L_Y(p) = sum_j p_j (1 + 2 p s_j^2)^(-1/2) exp(-p m_j^2 / (1 + 2 p s_j^2))``
over the noise law's Gaussian mixture (``s_j^2 = 2R + v_j``). clipdyn inverts it
(theory/clip_rules.md, section 5):

* Gaussian noise: closed forms with regularised incomplete gamma functions (eq. (13)).
* A law with no shifted component (Student-t, Cauchy, centred mixtures): fixed Talbot inversion
  (Abate and Valko 2004) of ``L_S / p``, ``(1 - L_S) / p^2`` and ``p^-1 int_0^1 L_S(p t^2) dt``,
  accurate to about 1e-11.
* Shifted components (Rademacher, mixtures, empirical atoms) make ``L_S`` grow like a delay
  ``exp(-p m^2)`` in the left half-plane, where Talbot's contour goes: with ``q_j = m_j^2/s_j^2``
  the delay of a set of residuals is ``D = sum q / 2``. The law is split binomially into a
  low-``q`` class and a high-``q`` class; terms of delay ``D <= 20`` are inverted by Talbot
  (error below 1e-12 there; 1e-7 at ``D = 40``), the others by a cosine (COS) expansion of their density on a
  bounded interval (Fang and Oosterlee 2008), which is exact for atoms smoothed by the Gaussian
  part and needs the term's mass near ``S = 0`` to be negligible (it is ``~exp(-D)``), and enough
  terms to resolve its narrowest near-atom: :func:`cos_terms_needed` (eq. (18a)), which the public
  functions apply wherever ``R`` is concrete.

**Pre-clip noise.** With ``g_b + K sqrt(Tr K / d) zeta_b`` clipped per sample the clip scale is
``min(1, c / sqrt(w^2 + K^2))`` and the factors are one-dimensional expectations over ``w``
(eq. (9)), computed per mixture component in closed form inside the unclipped window
``|w| <= sqrt(c^2 - K^2)`` and by composite Gauss-Legendre quadrature outside it.

All functions are jittable, vmappable and differentiable in ``R``, ``c`` and ``K``; the group size
``n`` is a static Python integer. They need float64 (Talbot's formula amplifies rounding by about
``e^(2N/5) = 1.5e4``); the public functions run in float64 when called with concrete values.

References:
    theory/clip_rules.md; J. Abate and P. Valko, "Multi-precision Laplace transform inversion",
    Int. J. Numer. Meth. Eng. 60 (2004); F. Fang and C. W. Oosterlee, "A novel pricing method for
    European options based on Fourier-cosine series expansions", SIAM J. Sci. Comput. 31 (2008);
    X. Chen, S. Wu, M. Hong, "Understanding gradient clipping in private SGD", NeurIPS 2020.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import fresnel, gammainc, gammaincc, gammaln
from jax.typing import ArrayLike

from clipdyn import validation
from clipdyn.precision import uses_x64
from clipdyn.theory import factors
from clipdyn.theory.noise import Gaussian, NoiseLaw

Array = jax.Array

__all__ = ["GroupFunctionals", "group_functionals", "group_factors", "preclip_factors",
           "cos_terms_needed", "DEFAULT_COS_TERMS", "MAX_COS_TERMS"]

# ---- numerical constants (theory/clip_rules.md, section 5) -------------------------------------

_TALBOT_N = 24  # fixed-Talbot nodes: truncation ~ e^(-1.4 N), rounding ~ e^(2N/5) * 1e-16
_TALBOT_MAX_DELAY = 20.0  # largest delay D = sum q / 2 handed to Talbot (eq. (16))
_LOG_CAP = 300.0  # cap on log|L| of discarded terms, far above any Talbot-route term (~ D)
_V_NODES = 48  # Gauss-Legendre nodes in v for int_0^1 L(p v^4) 2 v dv
DEFAULT_COS_TERMS = 8192  # cosine terms of the COS expansion (eq. (17))
_COS_CHUNK = 8192  # terms summed at once: longer series keep the default's memory
MAX_COS_TERMS = 2**20
"""The most cosine terms clipdyn uses (the cost grows with them: about 1 s an evaluation at 200
components). A law that needs more at the asked risk is refused (theory/clip_rules.md, eq. (18a))."""
MAX_GROUP = 2**14
"""The largest group (residuals clipped together) whose factors are computed. Checked to 3e-12
for Gaussian noise at 16384 (against scipy's chi-square) and for Student-t up to 1.6e4 against
Monte Carlo; beyond, the inversion loses the law: at 1e5 Student-t's ``nu`` exceeded its proven
upper bound by 0.23 %, at 1e9 it came out negative (theory/clip_rules.md, section 7)."""
_CHI_TAIL = 40.0  # the COS interval leaves out mass < n e^-40 (Laurent-Massart chi-square bound)

_theta = np.pi * np.arange(1, _TALBOT_N) / _TALBOT_N
_cot = 1.0 / np.tan(_theta)
# Abate-Valko: p_k = r theta_k (cot theta_k + i), r = 2N / (5 A); the factor e^(A p_k) and the
# Jacobian (1 + i sigma_k) do not depend on A.
_TALBOT_SHAPE = np.concatenate([[1.0 + 0.0j], _theta * (_cot + 1j)])  # p_k / r, k = 0..N-1
_sigma = _theta + (_theta * _cot - 1.0) * _cot
_TALBOT_WEIGHT = np.concatenate([[0.5 + 0.0j], 1.0 + 1j * _sigma]) * np.exp(
    (2.0 * _TALBOT_N / 5.0) * _TALBOT_SHAPE)

_v, _wv = np.polynomial.legendre.leggauss(_V_NODES)
_V = 0.5 * (_v + 1.0)
_V_WEIGHT = _wv * _V  # int_0^1 f(t) dt = int_0^1 f(v^2) 2 v dv, with dv = w / 2
_V4 = _V**4
_u, _wu = np.polynomial.legendre.leggauss(32)
_U2 = (0.5 * (_u + 1.0)) ** 2
_U_WEIGHT = 0.5 * _wu / _U2  # int_0^1 u^-2 F(A u^2) du
# E[S^(-1/2)] = pi^(-1/2) int e^(y/2) L(e^y / s_ref) dy / sqrt(s_ref): the integrand is analytic in
# |Im y| < pi (L's singularities lie on the negative axis), so the trapezoidal rule with step h
# errs by about exp(-2 pi^2 / h) times the integrand's size near the poles (1e-16 at h = 0.35 up
# to n = 64); y in [-80, 120] leaves out less than e^-40 and covers R down to 1e-40 s_ref.
_Y_STEP = 0.35
_Y = np.arange(-80.0, 120.0 + _Y_STEP / 2, _Y_STEP)
_Y_EXP = np.exp(_Y)
_Y_WEIGHT = _Y_STEP * np.exp(0.5 * _Y) / math.sqrt(math.pi)

# pre-clip quadrature: 16-point Gauss-Legendre panels between breakpoints
_PANEL_X, _PANEL_W = np.polynomial.legendre.leggauss(16)
_GEOM_PANELS = 28  # geometric panels from the window edge outwards
_GAUSS_OFFSETS = np.arange(-12.0, 12.5, 3.0)  # breakpoints at the component means +- 12 sd


class GroupFunctionals(NamedTuple):
    """The three functionals of ``S = sum_b w_b^2`` that the group factors are made of."""

    cdf: Array  # P(S <= A)
    clip_mean: Array  # E[min(1, sqrt(A / S))]
    clipped_sq: Array  # E[min(S, A)]


# ---- closed forms for Gaussian noise ------------------------------------------------------------

def _gaussian_functionals(s2: Array, A: Array, n: int) -> GroupFunctionals:
    """``S = s2 chi^2_n``: theory/clip_rules.md, eq. (13)."""
    x = A / (2.0 * s2)
    k = 0.5 * n
    cdf = gammainc(k, x)
    clipped_sq = n * s2 * gammainc(k + 1.0, x) + A * gammaincc(k, x)
    ratio = math.exp(math.lgamma(0.5 * (n - 1)) - math.lgamma(k))
    clip_mean = cdf + jnp.sqrt(x) * ratio * gammaincc(0.5 * (n - 1), x)
    return GroupFunctionals(cdf, clip_mean, clipped_sq)


def _complex(dtype):
    return jnp.complex128 if jnp.dtype(dtype) == jnp.float64 else jnp.complex64


# ---- Laplace transform of one residual's square -------------------------------------------------

def _component_laplace(means: Array | None, s2: Array, p: Array) -> Array:
    """``E[exp(-p w^2)]`` for ``w ~ N(m_j, s2_j)``, shape ``p.shape + (J,)`` (eq. (14))."""
    lead = (1,) * p.ndim
    d = 1.0 + 2.0 * p[..., None] * jnp.reshape(s2.astype(p.dtype), lead + (-1,))
    out = 1.0 / jnp.sqrt(d)
    if means is not None:
        m2 = jnp.reshape((means * means).astype(p.dtype), lead + (-1,))
        z = -p[..., None] * m2 / d
        # A shifted component grows like exp(q) on Talbot's contour; the terms where it does go
        # to the COS route, so capping the growth (not reached by Talbot-route terms) only keeps
        # the discarded values finite.
        z = jax.lax.complex(jnp.minimum(jnp.real(z), _LOG_CAP), jnp.imag(z))
        out = out * jnp.exp(z)
    return out


def _safe_log(x: Array) -> Array:
    """``log x`` for complex ``x``; ``x = 0`` (an empty class) gives a large negative number."""
    zero = x == 0
    return jnp.where(zero, -4.0 * _LOG_CAP, jnp.log(jnp.where(zero, 1.0, x)))


class _Split(NamedTuple):
    """The binomial split of the law of ``S`` into routes (theory/clip_rules.md, eq. (17))."""

    in_low: Array  # (J,) components of the low-q class
    talbot: Array  # (n+1,) term k (k high-class residuals) goes to Talbot
    coef: Array  # (n+1,) binomial coefficients
    mass_talbot: Array
    mass_cos: Array
    lo: Array  # COS interval
    hi: Array


def _binom(n: int) -> np.ndarray:
    return np.array([math.comb(n, k) for k in range(n + 1)], dtype=np.float64)


def _split(weights: Array, means: Array, s2: Array, n: int) -> _Split:
    """Choose the class threshold that leaves the least mass between the two methods' ranges."""
    dtype = s2.dtype
    q = means * means / s2
    cand = jnp.concatenate([jnp.full((1,), -1.0, dtype), q])
    low = q[None, :] <= cand[:, None]  # (C, J)
    w = weights[None, :]
    p_low = jnp.sum(jnp.where(low, w, 0.0), axis=1)
    p_high = jnp.sum(jnp.where(low, 0.0, w), axis=1)

    def extremes(mask, x):
        big = jnp.asarray(jnp.inf, dtype)
        xmax = jnp.max(jnp.where(mask, x[None, :], 0.0), axis=1)
        xmin = jnp.min(jnp.where(mask, x[None, :], big), axis=1)
        return xmax, jnp.where(jnp.isfinite(xmin), xmin, 0.0)

    q_lmax, q_lmin = extremes(low, q)
    q_hmax, q_hmin = extremes(~low, q)
    k = jnp.arange(n + 1, dtype=dtype)
    coef = jnp.asarray(_binom(n), dtype)
    delay = 0.5 * ((n - k)[None, :] * q_lmax[:, None] + k[None, :] * q_hmax[:, None])
    floor = 0.5 * ((n - k)[None, :] * q_lmin[:, None] + k[None, :] * q_hmin[:, None])
    mass = coef[None, :] * p_low[:, None] ** (n - k)[None, :] * p_high[:, None] ** k[None, :]
    talbot = delay <= _TALBOT_MAX_DELAY
    # A COS term's density near S = 0 weighs about exp(-floor); Talbot terms are safe.
    cost = jnp.sum(mass * jnp.where(talbot, 0.0, jnp.exp(-floor)), axis=1)
    best = jnp.argmin(jax.lax.stop_gradient(cost))
    low, talbot, mass = low[best], talbot[best], mass[best]

    # COS interval: ||w|| lies within ||m|| +- s_max ||xi||, with ||xi||^2 <= n + 2 sqrt(n t) + 2t
    # except with probability e^-t (Laurent and Massart 2000), t = 40.
    m2 = means * means
    m2_lmax, m2_lmin = extremes(low[None, :], m2)
    m2_hmax, m2_hmin = extremes(~low[None, :], m2)
    spread = jnp.sqrt(jnp.max(jnp.where(weights > 0, s2, 0.0))) * math.sqrt(
        n + 2.0 * math.sqrt(n * _CHI_TAIL) + 2.0 * _CHI_TAIL)
    kk = k
    lower = jnp.maximum(jnp.sqrt((n - kk) * m2_lmin[0] + kk * m2_hmin[0]) - spread, 0.0) ** 2
    upper = (jnp.sqrt((n - kk) * m2_lmax[0] + kk * m2_hmax[0]) + spread) ** 2
    use = (~talbot) & (mass > 0)
    any_cos = jnp.any(use)
    lo = jnp.where(any_cos, jnp.min(jnp.where(use, lower, jnp.inf)), 0.0)
    hi = jnp.where(any_cos, jnp.max(jnp.where(use, upper, 0.0)), 1.0)
    hi = jnp.where(hi > lo, hi, lo + 1.0)
    mass_t = jnp.sum(jnp.where(talbot, mass, 0.0))
    mass_c = jnp.sum(jnp.where(talbot, 0.0, mass))
    return _Split(low, talbot, coef, mass_t, mass_c, lo, hi)


def _cos_resolution(rep, s2: Array, n: int, split: _Split) -> Array:
    """Cosine terms the COS route needs to resolve its narrowest near-atom (eq. (18a)).

    A residual from component ``j`` puts its square within about ``width_j = 2 |m_j| s_j + s_j^2``
    (the standard deviation of ``w^2``, up to a constant) of ``m_j^2``; a product of residuals is
    at least as smooth as its smoothest factor, so term ``k`` of the split is resolved on
    ``[lo, hi]`` once ``u_K = K pi / (hi - lo)`` passes ``pi / width`` of the widest class it
    holds, with a margin of 3. Zero when no mass takes the COS route.
    """
    dtype = s2.dtype
    m = jnp.abs(rep.means)
    s = jnp.sqrt(s2)
    width = 2.0 * m * s + s2
    big = jnp.asarray(jnp.inf, dtype)
    present = rep.weights > 0
    w_low = jnp.min(jnp.where(present & split.in_low, width, big))
    w_high = jnp.min(jnp.where(present & ~split.in_low, width, big))
    k = jnp.arange(n + 1)
    term_width = jnp.maximum(jnp.where(k >= 1, w_high, 0.0), jnp.where(k < n, w_low, 0.0))
    use = ~split.talbot & (split.coef > 0)
    need = 3.0 * (split.hi - split.lo) / jnp.where(use, term_width, big)
    return jnp.where(split.mass_cos > 0, jnp.max(jnp.where(use, need, 0.0)), 0.0)


# ---- the route transforms -----------------------------------------------------------------------

def _route_transforms(rep, s2: Array, n: int, split: _Split | None, p: Array):
    """``(Talbot-route transform, COS-route transform)`` at the points ``p`` (complex)."""
    lap = _component_laplace(rep.means, s2, p)
    w = jnp.reshape(rep.weights.astype(p.dtype), (1,) * p.ndim + (-1,))
    if split is None:
        total = jnp.sum(w * lap, axis=-1)
        return total**n, jnp.zeros_like(total)
    low = jnp.reshape(split.in_low, w.shape)
    l_low = jnp.sum(jnp.where(low, w, 0.0) * lap, axis=-1)
    l_high = jnp.sum(jnp.where(low, 0.0, w) * lap, axis=-1)
    # term k = C(n, k) L_low^(n-k) L_high^k, by logarithms so that discarded terms stay finite
    log_low, log_high = _safe_log(l_low), _safe_log(l_high)
    k = jnp.arange(n + 1, dtype=jnp.real(log_low).dtype)
    lead = (1,) * p.ndim
    kk = jnp.reshape(k, lead + (-1,)).astype(p.dtype)
    expo = (n - kk) * log_low[..., None] + kk * log_high[..., None]
    expo = jax.lax.complex(jnp.minimum(jnp.real(expo), 2.0 * _LOG_CAP), jnp.imag(expo))
    coef = jnp.reshape(split.coef.astype(p.dtype), lead + (-1,))
    terms = coef * jnp.exp(expo)
    route = jnp.reshape(split.talbot, lead + (-1,))
    return (jnp.sum(jnp.where(route, terms, 0.0), axis=-1),
            jnp.sum(jnp.where(route, 0.0, terms), axis=-1))


def _route_deficit(rep, s2: Array, n: int, split: _Split | None, p: Array) -> Array:
    """``mass - L(p)``: the Talbot route's mass less its transform at the points ``p``, without
    cancellation (theory/clip_rules.md, eq. (15a)).

    At Talbot's points for a large ``A`` (a threshold far beyond the residuals), ``p E[S]`` is
    tiny and ``L(p) = mass - O(p E[S])``: subtracting the two lost ``1e-16 / |p E[S]|`` relative,
    which the inversion amplifies by ``e^(2N/5)``; Student-t(3) in groups of 8 at ``c = 1e6`` had
    ``nu`` 10 % low, and ``c = 1e12`` made it negative. Each component's deficit
    ``1 - E[exp(-p w^2)] = -expm1(z - log1p(2 p s2) / 2)`` is exact, and a term
    ``W_low^(n-k) W_high^k - L_low^(n-k) L_high^k`` (``W`` a class's weight, ``L`` its transform)
    is ``-W_low^(n-k) W_high^k expm1((n-k) log1p(-D_low/W_low) + k log1p(-D_high/W_high))``
    with ``D = W - L`` the class's summed deficits.
    """
    lead = (1,) * p.ndim
    shape = lead + (-1,)
    x = 2.0 * p[..., None] * jnp.reshape(s2.astype(p.dtype), shape)
    expo = -0.5 * jnp.log1p(x)
    if rep.means is not None:
        z = -p[..., None] * jnp.reshape((rep.means * rep.means).astype(p.dtype), shape) / (1.0 + x)
        expo = expo + jax.lax.complex(jnp.minimum(jnp.real(z), _LOG_CAP), jnp.imag(z))
    deficit = -jnp.expm1(expo)  # (..., J)
    w = jnp.reshape(rep.weights, shape)

    def log_ratio(mask):  # log(L / W) of a class, and its weight W
        weight = jnp.sum(jnp.where(mask, w, 0.0), axis=-1)
        d = jnp.sum(jnp.where(mask, w.astype(p.dtype), 0.0) * deficit, axis=-1)
        ratio = -d / jnp.where(weight > 0, weight, 1.0).astype(p.dtype)
        empty = (weight == 0) | (ratio == -1.0)
        return jnp.where(empty, -4.0 * _LOG_CAP, jnp.log1p(jnp.where(empty, 0.0, ratio))), weight

    if split is None:
        log_l, weight = log_ratio(jnp.ones(w.shape, bool))
        return -(weight**n).astype(p.dtype) * jnp.expm1(n * log_l)
    low = jnp.reshape(split.in_low, w.shape)
    log_low, w_low = log_ratio(low)
    log_high, w_high = log_ratio(~low)
    k = jnp.reshape(jnp.arange(n + 1, dtype=w_low.dtype), lead + (-1,))
    expo = (n - k).astype(p.dtype) * log_low[..., None] + k.astype(p.dtype) * log_high[..., None]
    expo = jax.lax.complex(jnp.minimum(jnp.real(expo), 2.0 * _LOG_CAP), jnp.imag(expo))
    mass = (jnp.reshape(split.coef, k.shape) * w_low[..., None] ** (n - k) * w_high[..., None] ** k)
    terms = -mass.astype(p.dtype) * jnp.expm1(expo)
    return jnp.sum(jnp.where(jnp.reshape(split.talbot, k.shape), terms, 0.0), axis=-1)


# ---- Talbot inversion (eqs. (15), (16)) ----------------------------------------------------------

def _talbot_functionals(rep, s2, n, split, A, mass, s_ref):
    """The Talbot route's ``(P(S <= A), E[min(1, sqrt(A/S))], E[min(S, A)])``.

    ``E[min(1, sqrt(A/S))]`` has two forms (eq. (15)): above the median of ``S`` the tail form
    ``int_0^1 F(A / t^2) dt``; below it, where that integrand steps from 0 to 1 at
    ``t ~ sqrt(A / S)``, the local form ``sqrt(A) E[S^(-1/2)] - int_0^1 u^-2 F(A u^2) du``, whose
    first term is a real integral of the transform and whose integrand is smooth there.
    """
    cdtype = _complex(s2.dtype)
    rdtype = s2.dtype
    r = (2.0 * _TALBOT_N / 5.0) / A
    p = r.astype(cdtype) * jnp.asarray(_TALBOT_SHAPE, cdtype)  # (N,)
    pv = p[:, None] * jnp.asarray(_V4, cdtype)[None, :]  # (N, V): tail form, t = v^2
    pu = p[:, None] * jnp.asarray(1.0 / _U2, cdtype)[None, :]  # (N, U): local form
    t_real = (jnp.asarray(_Y_EXP, rdtype) / s_ref).astype(cdtype)  # E[S^(-1/2)], t = e^y / s_ref
    grid = jnp.concatenate([p[:, None], pv, pu], axis=1)
    pts = jnp.concatenate([jnp.ravel(grid), t_real])
    lt, _ = _route_transforms(rep, s2, n, split, pts)
    ly = lt[grid.size:]
    lt = jnp.reshape(lt[:grid.size], grid.shape)
    nv = _V.size
    lp, lv, lu = lt[:, 0], lt[:, 1:1 + nv], lt[:, 1 + nv:]
    cdf_hat = lp / p
    sq_hat = _route_deficit(rep, s2, n, split, p) / (p * p)  # (m - lp) / p^2, without cancellation
    tail_hat = jnp.sum(lv * jnp.asarray(_V_WEIGHT, cdtype)[None, :], axis=1) / p
    local_hat = jnp.sum(lu * jnp.asarray(_U_WEIGHT, cdtype)[None, :], axis=1) / p
    weight = jnp.asarray(_TALBOT_WEIGHT, cdtype)

    def invert(hat):
        return (r / _TALBOT_N) * jnp.sum(jnp.real(weight * hat))

    cdf = invert(cdf_hat)
    # E[S^(-1/2)] = pi^(-1/2) int_0^inf t^(-1/2) L(t) dt, trapezoidal in y = log(t s_ref).
    inv_sqrt = jnp.sum(jnp.real(ly) * jnp.asarray(_Y_WEIGHT, rdtype)) / jnp.sqrt(s_ref)
    local = jnp.sqrt(A) * inv_sqrt - invert(local_hat)
    mean = jnp.where(cdf < 0.5 * mass, local, invert(tail_hat))
    return cdf, mean, invert(sq_hat)


# ---- COS expansion (eq. (17)) --------------------------------------------------------------------

def _cos_functionals(rep, s2, n, split, A, terms):
    """The COS route's ``(P(S <= A), E[min(1, sqrt(A/S))], E[min(S, A)])``.

    The series is summed in chunks of ``_COS_CHUNK`` terms, so that its memory (terms x mixture
    components x ``n + 1`` complex numbers) stays that of the default length.
    """
    dtype = s2.dtype
    cdtype = _complex(dtype)
    lo, hi = split.lo, split.hi
    width = hi - lo
    x = jnp.clip(A, lo, hi)
    y = x - lo

    def chunk(k):
        u = k * (math.pi / width)
        _, phi = _route_transforms(rep, s2, n, split, -1j * u.astype(cdtype))
        coef = (2.0 / width) * jnp.real(phi * jnp.exp(-1j * (u * lo).astype(cdtype)))
        coef = jnp.where(k == 0, 0.5 * coef, jnp.where(k < terms, coef, 0.0))
        u1 = jnp.where(k > 0, u, 1.0)
        cdf = jnp.sum(coef * jnp.where(k > 0, jnp.sin(u * y) / u1, y))
        int_cdf = jnp.sum(coef * jnp.where(k > 0, (1.0 - jnp.cos(u * y)) / (u1 * u1), 0.5 * y * y))
        # int_x^hi s^(-1/2) cos(u (s - lo)) ds by Fresnel integrals (t = sqrt(s)).
        scale = jnp.sqrt(2.0 * u1 / math.pi)
        s_hi, c_hi = fresnel(scale * jnp.sqrt(hi))
        s_x, c_x = fresnel(scale * jnp.sqrt(x))
        re = (c_hi - c_x) * jnp.cos(u * lo) + (s_hi - s_x) * jnp.sin(u * lo)
        tail = jnp.where(k > 0, 2.0 * re / scale, 2.0 * (jnp.sqrt(hi) - jnp.sqrt(x)))
        return jnp.stack([cdf, int_cdf, jnp.sum(coef * tail)])

    size = min(terms, _COS_CHUNK)
    count = -(-terms // size)
    if count == 1:
        cdf, int_cdf, tail_sum = chunk(jnp.arange(terms, dtype=dtype))
    else:  # whole chunks; the indices past the last term are dropped in chunk()
        ks = jnp.arange(count * size, dtype=dtype).reshape(count, size)
        cdf, int_cdf, tail_sum = jnp.sum(jax.lax.map(chunk, ks), axis=0)
    # E[min(S, A)] = A mass - int_lo^A F; above hi, F = mass, so the (A - hi) mass terms cancel
    # exactly: drop them rather than subtract two numbers of size A (a relative error of
    # A eps / E[S], 1e-5 at c = 1e4).
    clipped_sq = jnp.minimum(A, hi) * split.mass_cos - int_cdf
    clip_mean = cdf + jnp.sqrt(A) * tail_sum
    return cdf, clip_mean, clipped_sq


def _mixture_functionals(noise: NoiseLaw, R: Array, A: Array, n: int,
                         terms: int) -> GroupFunctionals:
    rep = noise.gaussian_mixture()
    if jnp.result_type(R, A, rep.variances) != jnp.float64:
        # Traced by a caller in float32 (the public functions run in float64): Talbot's formula
        # amplifies rounding by about 1.5e4, so float32 gave NaN for half of a (R, c) grid and
        # errors up to 19 % elsewhere. Refused while tracing, where the caller can act on it.
        raise ValueError(
            f"group clipping (n = {n}) under {type(noise).__name__} noise needs float64: its "
            "Laplace inversion is not accurate in float32 (NaN or errors up to 19 %); call it "
            "outside your own jit/vmap/grad, or trace in float64 (with jax.enable_x64(True))")
    s2 = 2.0 * R + rep.variances
    if rep.means is None:
        split = None
        mass = jnp.sum(rep.weights) ** n
    else:
        split = _split(rep.weights, rep.means, s2, n)
        mass = split.mass_talbot
    s_ref = n * (2.0 * R + jnp.where(jnp.isfinite(noise.scale), noise.scale**2, 0.0))
    s_ref = jnp.where(s_ref > 0, s_ref, 1.0)
    t = _talbot_functionals(rep, s2, n, split, A, mass, s_ref)
    if split is None:
        return GroupFunctionals(*t)
    c = _cos_functionals(rep, s2, n, split, A, terms)
    has_cos = split.mass_cos > 0
    return GroupFunctionals(*(a + jnp.where(has_cos, b, 0.0) for a, b in zip(t, c)))


def _functionals_scalar(noise: NoiseLaw, R: Array, A: Array, n: int,
                        terms: int) -> GroupFunctionals:
    if isinstance(noise, Gaussian):
        s2 = 2.0 * R + noise.second_moment
        return _gaussian_functionals(jnp.where(s2 > 0, s2, 1.0), A, n)
    return _mixture_functionals(noise, R, A, n, terms)


def _group_scalar(noise: NoiseLaw, R: Array, c: Array, n: int, terms: int) -> tuple[Array, Array]:
    if n == 1:
        m, na, _ = factors._factors_scalar(noise, R, c)
        return m, na
    dtype = noise.gaussian_mixture().variances.dtype
    R = jnp.asarray(R, dtype)
    c = jnp.asarray(c, dtype)
    clipped = (c > 0) & jnp.isfinite(c)
    c_safe = jnp.where(clipped, c, 1.0)  # keeps the unused branch finite for gradients
    A = (c_safe * n) ** 2
    f = _functionals_scalar(noise, R, A, n, terms)
    mu = (f.cdf + (n - 1) * f.clip_mean) / n
    nu = f.clipped_sq / (n * n)
    mu = jnp.where(clipped, mu, jnp.where(c == 0, 0.0, 1.0))
    unclipped = (2.0 * R + noise.second_moment) / n
    nu = jnp.where(clipped, nu, jnp.where(c == 0, 0.0, unclipped))
    return mu, nu


# One compiled program per law structure, group size and COS length; called with concrete
# arrays by the public functions and traced through by callers' own transformations.
@functools.partial(jax.jit, static_argnames=("n", "terms"))
def _functionals_jit(noise, R, A, n, terms):
    def one(r, a):
        dtype = noise.gaussian_mixture().variances.dtype
        return tuple(_functionals_scalar(noise, r.astype(dtype), a.astype(dtype), n, terms))

    return jnp.vectorize(one)(*jnp.broadcast_arrays(R, A))


@functools.partial(jax.jit, static_argnames=("n", "terms"))
def _group_jit(noise, R, c, n, terms):
    return jnp.vectorize(lambda r, cc: _group_scalar(noise, r, cc, n, terms))(
        *jnp.broadcast_arrays(R, c))


def _check_terms(terms) -> int | None:
    if terms is None:
        return None
    return validation.integer("cos_terms", terms, 16, high=MAX_COS_TERMS)


@functools.partial(jax.jit, static_argnames=("n",))
def _resolution_jit(noise, R, n):
    def one(r):
        rep = noise.gaussian_mixture()
        if rep.means is None:  # centred components: no COS route (known while tracing)
            return jnp.zeros((), rep.variances.dtype)
        s2 = 2.0 * r.astype(rep.variances.dtype) + rep.variances
        return _cos_resolution(rep, s2, n, _split(rep.weights, rep.means, s2, n))

    return jnp.vectorize(one)(R)


@uses_x64
def cos_terms_needed(noise: NoiseLaw, R: ArrayLike, n: int) -> int:
    """The cosine terms that resolve the COS route for groups of ``n`` at every risk in ``R``.

    Laws with shifted components whose atoms lie far apart (in ``|m_j| / s_j``) put narrow peaks
    into the law of ``S``; at small ``R`` the default ``DEFAULT_COS_TERMS`` no longer resolve them
    (equal atoms at 0, 0.4 and 8 in groups of 4: ``mu`` 0.45 % low at ``R = 1e-5``). This is the
    bound (18a) of theory/clip_rules.md rounded up to a power of two, and never less than the
    default; the group functions use it whenever they are called with concrete values.

    Args:
        noise: a noise law.
        R: the risks, ``> 0`` (concrete).
        n: the group size, an integer ``>= 1``.

    Returns:
        A power of two in ``[DEFAULT_COS_TERMS, MAX_COS_TERMS]``.

    Raises:
        ValueError: where more than ``MAX_COS_TERMS`` would be needed (the law is beyond the
            method at these risks), or for bad input.

    Example:
        >>> from clipdyn.theory import batch_factors
        >>> from clipdyn.theory.noise import Empirical
        >>> law = Empirical([0.0, 0.4, 8.0])
        >>> batch_factors.cos_terms_needed(law, 1e-2, 4), batch_factors.cos_terms_needed(law, 1e-5, 4)
        (8192, 262144)
    """
    validation.noise_law(noise)
    n = validation.integer("n", n, 1, high=MAX_GROUP)
    validation.positive("R", R)
    if not validation.is_concrete(R):
        raise ValueError("cos_terms_needed: R must be concrete, not a traced value")
    if n == 1 or isinstance(noise, Gaussian):
        return DEFAULT_COS_TERMS
    # Built inside the compiled program: on the host, Student-t's 2048-node mixture took 110 ms a
    # call, 20 times the factors themselves.
    need = float(np.max(np.asarray(_resolution_jit(noise, jnp.asarray(R, float), n))))
    if not need <= MAX_COS_TERMS:
        r_min = float(np.min(np.asarray(R, float)))
        raise ValueError(
            f"group factors of {type(noise).__name__} noise in groups of n={n} at R={r_min:g} "
            f"need about {need:.3g} cosine terms, more than MAX_COS_TERMS={MAX_COS_TERMS}: the "
            "law's atoms lie too far apart (in |m| / s) for the COS expansion at this risk "
            "(theory/clip_rules.md, eq. (18a)); ask at a larger R, or give the atoms some variance")
    return max(DEFAULT_COS_TERMS, 1 << max(0, math.ceil(math.log2(max(need, 1.0)))))


def _terms_for(noise, R, n, terms) -> int:
    """``cos_terms`` as given, else what ``R`` needs where it is concrete, else the default."""
    if terms is not None:
        return terms
    if validation.is_concrete(R) and all(map(validation.is_concrete, jax.tree_util.tree_leaves(noise))):
        return cos_terms_needed(noise, R, n)
    return DEFAULT_COS_TERMS


@uses_x64
def group_functionals(noise: NoiseLaw, R: ArrayLike, A: ArrayLike, n: int, *,
                      cos_terms: int | None = None) -> GroupFunctionals:
    """The law of ``S = sum_{b<=n} w_b^2`` through three functionals at level ``A``.

    Args:
        noise: a noise law.
        R: risk, ``> 0``.
        A: level, ``> 0`` (the group rule uses ``A = c^2 n^2``).
        n: residuals in the group, an integer ``>= 1`` (static).
        cos_terms: cosine terms of the COS expansion (static; see the module doc). ``None``
            (default): :func:`cos_terms_needed` at ``R`` where ``R`` and the law are concrete,
            ``DEFAULT_COS_TERMS`` where they are traced.

    Returns:
        :class:`GroupFunctionals` ``(P(S <= A), E[min(1, sqrt(A/S))], E[min(S, A)])``, each of
        the broadcast shape of ``R`` and ``A``.

    References:
        theory/clip_rules.md, eqs. (12)-(18).
    """
    validation.noise_law(noise)
    n = validation.integer("n", n, 1, high=MAX_GROUP)
    terms = _check_terms(cos_terms)
    validation.positive("R", R)
    validation.positive("A", A)
    terms = _terms_for(noise, R, n, terms)

    return GroupFunctionals(*_functionals_jit(noise, jnp.asarray(R, float), jnp.asarray(A, float),
                                              n, terms))


@uses_x64
def group_factors(noise: NoiseLaw, R: ArrayLike, c: ArrayLike, n: int, *,
                  cos_terms: int | None = None) -> tuple[Array, Array]:
    """Descent factor ``mu_n`` and clipped second moment ``nu_n`` of one clipped group mean.

    ``n = 1`` is per-sample clipping (today's ``mu`` and ``nu_abs``, computed by
    :mod:`clipdyn.theory.factors`); ``n = B`` is clipping the batch mean; a micro-batch of size ``b``
    has ``n = b``. The ODE divides ``nu_n`` by the number of groups per step.

    Args:
        noise: a noise law.
        R: risk, ``> 0``.
        c: threshold, ``>= 0``; ``inf`` is unclipped (``mu = 1``, ``nu = (2R + sigma^2) / n``),
            ``0`` gives ``mu = nu = 0``.
        n: group size, an integer ``>= 1`` (static).
        cos_terms: cosine terms of the COS expansion used for shifted noise components
            (static). ``None`` (default): :func:`cos_terms_needed` at ``R`` where ``R`` and the
            law are concrete, ``DEFAULT_COS_TERMS`` where they are traced (pass a rule's
            ``cos_terms`` there, see :func:`clipdyn.theory.rules.resolved`).

    Returns:
        ``(mu, nu)``, each of the broadcast shape of ``R`` and ``c``.

    Raises:
        ValueError: for a bad law, or a bad concrete ``R``, ``c``, ``n`` or ``cos_terms``, or a
            law beyond the COS expansion at the concrete ``R`` (:func:`cos_terms_needed`).

    References:
        theory/clip_rules.md, eqs. (5), (6), (12)-(18).
    """
    validation.noise_law(noise)
    n = validation.integer("n", n, 1, high=MAX_GROUP)
    terms = _check_terms(cos_terms)
    validation.positive("R", R)
    validation.threshold("c", c)
    validation.broadcastable(R=R, c=c)
    terms = _terms_for(noise, R, n, terms)
    return _group_jit(noise, jnp.asarray(R, float), jnp.asarray(c, float), n, terms)


# ---- pre-clip noise (eq. (9)) ---------------------------------------------------------------------

def _panel_nodes(breaks: Array) -> tuple[Array, Array]:
    """Gauss-Legendre nodes and weights on the panels between sorted ``breaks`` (last axis)."""
    lo, hi = breaks[..., :-1, None], breaks[..., 1:, None]
    half = 0.5 * (hi - lo)
    lead = (1,) * breaks.ndim
    x = jnp.reshape(jnp.asarray(_PANEL_X, breaks.dtype), lead + (-1,))
    w = jnp.reshape(jnp.asarray(_PANEL_W, breaks.dtype), lead + (-1,))
    return lo + half * (x + 1.0), half * w


def _preclip_scalar(noise: NoiseLaw, R: Array, c: Array, K: Array) -> tuple[Array, Array, Array]:
    rep = noise.gaussian_mixture()
    dtype = rep.variances.dtype
    R = jnp.asarray(R, dtype)
    c = jnp.asarray(c, dtype)
    K = jnp.asarray(K, dtype)
    clipped = (c > 0) & jnp.isfinite(c)
    cs = jnp.where(clipped, c, 1.0)
    K2 = K * K
    a2 = cs * cs - K2
    inside = a2 > 0
    a = jnp.where(inside, jnp.sqrt(jnp.where(inside, a2, 1.0)), 0.0)
    # Unclipped window |w| <= a: today's closed forms at threshold a.
    a_safe = jnp.where(inside, a, 1.0)
    mu_a, nu_a, _ = factors._factors_scalar(noise, R, a_safe)
    p_in = jnp.where(inside, mu_a, 0.0)
    sq_in = jnp.where(inside, nu_a - a_safe * a_safe * (1.0 - mu_a), 0.0)

    # Outside the window, per component w ~ N(+-m, s^2) folded onto [a, inf).
    s2 = 2.0 * R + rep.variances
    s = jnp.sqrt(s2)
    m = jnp.zeros_like(s) if rep.means is None else jnp.abs(rep.means)
    top = jnp.maximum(a, m + 12.0 * s)  # beyond it the density is below e^-72
    ell = jnp.sqrt(a * a + K2)  # = max(c, K): the integrands' length scale at the window edge
    ratio = jnp.maximum(2.0, (1.0 + (top - a) / ell) ** (1.0 / _GEOM_PANELS))
    i = jnp.arange(1, _GEOM_PANELS + 1, dtype=dtype)
    geom = a + ell * (ratio[:, None] ** i[None, :] - 1.0)  # (J, G)
    offs = jnp.asarray(_GAUSS_OFFSETS, dtype)
    gauss = jnp.concatenate([m[:, None] + s[:, None] * offs[None, :],
                             -m[:, None] + s[:, None] * offs[None, :]], axis=1)
    breaks = jnp.concatenate([jnp.broadcast_to(a, s.shape)[:, None], geom, gauss, top[:, None]], axis=1)
    breaks = jnp.sort(jnp.clip(breaks, a, top[:, None]), axis=1)
    w, wt = _panel_nodes(breaks)  # (J, P, 16)
    sj = s[:, None, None]
    mj = m[:, None, None]
    dens = (jnp.exp(-0.5 * ((w - mj) / sj) ** 2) + jnp.exp(-0.5 * ((w + mj) / sj) ** 2)) / (
        sj * math.sqrt(2.0 * math.pi))
    r2 = w * w + K2
    base = wt * dens / r2
    out_mu = jnp.sum(base * cs * K2 / jnp.sqrt(r2), axis=(1, 2))
    out_nu = jnp.sum(base * cs * cs * w * w, axis=(1, 2))
    out_iso = jnp.sum(base * cs * cs * K2, axis=(1, 2))
    mu = p_in + jnp.sum(rep.weights * out_mu)
    nu = sq_in + jnp.sum(rep.weights * out_nu)
    iso = K2 * p_in + jnp.sum(rep.weights * out_iso)

    # K = 0 is today's per-sample clipping, exactly.
    mu0, nu0, _ = factors._factors_scalar(noise, R, cs)
    zero_k = K == 0
    mu = jnp.where(zero_k, mu0, mu)
    nu = jnp.where(zero_k, nu0, nu)
    iso = jnp.where(zero_k, 0.0, iso)
    mu = jnp.where(clipped, mu, jnp.where(c == 0, 0.0, 1.0))
    nu = jnp.where(clipped, nu, jnp.where(c == 0, 0.0, 2.0 * R + noise.second_moment))
    iso = jnp.where(clipped, iso, jnp.where(c == 0, 0.0, K2))
    return mu, nu, iso


@jax.jit
def _preclip_jit(noise, R, c, K):
    return jnp.vectorize(lambda r, cc, kk: _preclip_scalar(noise, r, cc, kk))(
        *jnp.broadcast_arrays(R, c, K))


@uses_x64
def preclip_factors(noise: NoiseLaw, R: ArrayLike, c: ArrayLike,
                    K: ArrayLike) -> tuple[Array, Array, Array]:
    """Per-sample factors with pre-clip noise ``K``: ``(mu, nu, iso)``.

    Each gradient gets ``K sqrt(Tr K / d) zeta`` before it is clipped at ``c sqrt(Tr K)``, so the
    clip scale is ``s = min(1, c / sqrt(w^2 + K^2))`` and

    * ``mu = E[d(w s)/dw] = E[1{w^2 + K^2 <= c^2} + 1{w^2 + K^2 > c^2} c K^2 / (w^2 + K^2)^(3/2)]``,
    * ``nu = E[s^2 w^2]``, the noise in proportion to ``lam_i``,
    * ``iso = K^2 E[s^2]``, the isotropic noise (per mode ``(Tr K / d) iso``).

    ``K = 0`` returns today's ``(mu, nu_abs, 0)`` exactly.

    Args:
        noise: a noise law.
        R: risk, ``> 0``.
        c: threshold, ``>= 0`` (``inf``: ``mu = 1``, ``nu = 2R + sigma^2``, ``iso = K^2``).
        K: pre-clip noise level, finite and ``>= 0``.

    Returns:
        ``(mu, nu, iso)`` of the broadcast shape of ``R``, ``c`` and ``K``.

    Raises:
        ValueError: for a bad law or a bad concrete ``R``, ``c`` or ``K``.

    References:
        theory/clip_rules.md, eq. (9); Chen, Wu, Hong, NeurIPS 2020, section 5.
    """
    validation.noise_law(noise)
    validation.positive("R", R)
    validation.threshold("c", c)
    validation.nonnegative("K", K)
    validation.broadcastable(R=R, c=c, K=K)
    return _preclip_jit(noise, jnp.asarray(R, float), jnp.asarray(c, float), jnp.asarray(K, float))
