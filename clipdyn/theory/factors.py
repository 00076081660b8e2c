"""Reduction factors ``mu``, ``nu`` and the criteria built on them.

With the residual ``w = N(0, 2R) - eps`` and a threshold ``c`` (THEORY.md section 2):

* ``mu_c(R) = P(|w| <= c)``, the descent reduction factor (theory/derivation.md, eq. (2.4));
* ``nu_abs_c(R) = E[min(w^2, c^2)]``, the absolute clipped second moment (eq. (2.5));
* ``nu_c(R) = nu_abs / (2R + sigma^2)`` with ``sigma^2 = E[eps^2]`` (``0`` if that is infinite);
* ``CCC = mu^2 / nu`` (eq. (4.3)) and ``CSC = mu / nu`` (eq. (4.1)).

Every noise law is a mixture of Gaussians ``eps ~ N(m_j, s_j^2)`` (see
:meth:`clipdyn.theory.noise.Gaussian.gaussian_mixture`), so ``w`` given the component is Gaussian,
``N(-m_j, 2R + s_j^2)``, and the factors are weighted sums of closed forms (eqs. (3.1)-(3.4)).
All functions here are jittable, vmappable and differentiable in ``R`` and ``c``; they broadcast
``R`` against ``c``. ``c = inf`` is unclipped SGD (``mu = 1``, ``nu_abs = 2R + sigma^2``).

References:
    Marshall, Xiao, Agarwala, Paquette, arXiv 2406.11733, sections 2-4; theory/derivation.md.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf, erfc, gammainc
from jax.typing import ArrayLike

from clipdyn import validation
from clipdyn.precision import uses_x64
from clipdyn.theory.noise import NoiseLaw

Array = jax.Array

__all__ = [
    "Factors",
    "reduction_factors",
    "mu",
    "nu_abs",
    "nu",
    "ccc",
    "csc",
    "max_stable_lr",
    "optimal_threshold",
    "threshold_unit",
]

_SQRT2 = math.sqrt(2.0)
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(20)


class Factors(NamedTuple):
    """The reduction factors and criteria at one ``(R, c)``.

    ``iso_d`` and ``iso_1`` are a clipping rule's isotropic noise terms (pre-clip and DP noise,
    theory/clip_rules.md, eq. (7)); both are 0 without those options.
    """

    mu: Array
    nu_abs: Array
    nu: Array
    ccc: Array
    csc: Array
    iso_d: Array = 0.0
    iso_1: Array = 0.0


def _centred(s2: Array, c: Array) -> tuple[Array, Array]:
    """``P(|w| <= c)`` and ``E[min(w^2, c^2)]`` for ``w ~ N(0, s2)``, eq. (3.2).

    The truncated second moment is ``s2 * P(chi^2_3 <= c^2/s2)``, the regularised incomplete
    gamma function, which has no cancellation for small or large ``c / sqrt(s2)``.
    """
    # Beyond z = c / sd = 40, P(|w| > c) = erfc(z / sqrt 2) < 1e-349: nothing is clipped, to
    # rounding, so p = 1 and e = s2. Taken as that limit: computed, the terms' R-derivatives
    # (e^(-z^2/2) = 0 times dz/ds2 = -z / (2 s2) = inf once s2 < 1e-154) were nan, and a clipped
    # noiseless ODE stopped when its risk fell that low.
    z = c / jnp.sqrt(s2)
    far = z > 40.0
    z = jnp.where(far, 1.0, z)
    p = jnp.where(far, 1.0, erf(z / _SQRT2))
    e = jnp.where(far, s2, s2 * gammainc(1.5, 0.5 * z * z) + c * c * erfc(z / _SQRT2))
    return p, e


def _phi(x: Array) -> Array:
    return jnp.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _Phi(x: Array) -> Array:
    return 0.5 * erfc(-x / _SQRT2)


def _shifted(m: Array, s2: Array, c: Array) -> tuple[Array, Array]:
    """``P(|w| <= c)`` and ``E[min(w^2, c^2)]`` for ``w ~ N(m, s2)``, eq. (3.3).

    Probabilities are taken from the tails that do not cancel. When the window ``[-c, c]`` is
    narrow against ``sqrt(s2)`` the closed form cancels (its terms are ``O(c)`` while the result
    is ``O(c^3)``), and a 20-point Gauss-Legendre rule on the window is exact to rounding instead.
    """
    s = jnp.sqrt(jnp.maximum(s2, jnp.finfo(jnp.result_type(s2)).tiny))
    # A component 40 sd inside the window, or outside it, is taken at its limit (p = 1 and
    # e = m^2 + s2, or p = 0 and e = c^2; the tails left out are below 1e-349), with a placeholder
    # sd in the formulas: their R-derivatives were nan there (0 times an infinite da/ds2), as in
    # :func:`_centred`.
    a, b = (-c - m) / s, (c - m) / s
    inside = (a < -40.0) & (b > 40.0)
    outside = (a > 40.0) | (b < -40.0)
    s = jnp.where(inside | outside, 1.0, s)
    a, b = (-c - m) / s, (c - m) / s
    q = _Phi(a) + _Phi(-b)  # P(|w| > c), a sum of two tails
    p = jnp.where(a >= 0, _Phi(-a) - _Phi(-b), jnp.where(b <= 0, _Phi(b) - _Phi(a), 1.0 - q))
    e_in = (m * m + s * s) * p + 2.0 * m * s * (_phi(a) - _phi(b)) + s * s * (a * _phi(a) - b * _phi(b))

    lead = (1,) * c.ndim
    nodes = c[..., None] * jnp.reshape(jnp.asarray(_GL_NODES, c.dtype), lead + (-1,))
    dens = _phi((nodes - m[..., None]) / s[..., None]) / s[..., None]
    w = c[..., None] * jnp.reshape(jnp.asarray(_GL_WEIGHTS, c.dtype), lead + (-1,))
    p_gl = jnp.sum(w * dens, axis=-1)
    e_gl = jnp.sum(w * nodes * nodes * dens, axis=-1)
    narrow = c < 0.5 * s
    p = jnp.where(narrow, p_gl, p)
    e_in = jnp.where(narrow, e_gl, e_in)
    e = e_in + c * c * q
    p = jnp.where(inside, 1.0, jnp.where(outside, 0.0, p))
    e = jnp.where(inside, m * m + s2, jnp.where(outside, c * c, e))
    return p, e


def _factors_scalar(noise: NoiseLaw, R: Array, c: Array) -> tuple[Array, Array, Array]:
    """``(mu, nu_abs, density of w at 0)`` for scalar ``R`` and ``c``."""
    rep = noise.gaussian_mixture()
    dtype = rep.variances.dtype
    R = jnp.asarray(R, dtype)
    c = jnp.asarray(c, dtype)
    clipped = (c > 0) & jnp.isfinite(c)
    c_safe = jnp.where(clipped, c, 1.0)  # keeps the unused branch finite for gradients
    s2 = 2.0 * R + rep.variances
    s2_safe = jnp.where(s2 > 0, s2, 1.0)
    if rep.means is None:
        # The heavy-tail end of the Student-t grid has huge variances (inf in float32, up to
        # 1e306 in float64 for df = 0.1): such a component is always clipped, p = 0 and e = c^2 up
        # to O(c / sqrt(s2)) < c * 1e-77 (float64), and is taken at that limit. Computed, its
        # value was right but its derivative in R was nan (c^2 / s2 underflows under a sqrt),
        # which stopped the ODE for df <= 0.1. s2 = 0 is an atom at 0 (p = 1, e = 0).
        moderate = s2_safe <= float(np.finfo(dtype).max) ** 0.5
        s2_fin = jnp.where(moderate, s2_safe, 1.0)
        p, e = _centred(s2_fin, jnp.broadcast_to(c_safe, s2.shape))
        p = jnp.where(s2 > 0, jnp.where(moderate, p, 0.0), 1.0)
        e = jnp.where(s2 > 0, jnp.where(moderate, e, c_safe * c_safe), 0.0)
        dens0 = _phi(jnp.zeros_like(s2)) / jnp.sqrt(s2_safe)
    else:
        p, e = _shifted(rep.means, s2, jnp.broadcast_to(c_safe, s2.shape))
        dens0 = _phi(rep.means / jnp.sqrt(s2_safe)) / jnp.sqrt(s2_safe)
    dens0 = jnp.where(s2 > 0, dens0, jnp.inf)
    mu_c = jnp.sum(rep.weights * p)
    nu_c = jnp.sum(rep.weights * e)
    mu_ = jnp.where(clipped, mu_c, jnp.where(c == 0, 0.0, 1.0))
    unclipped_nu = 2.0 * R + noise.second_moment
    nu_ = jnp.where(clipped, nu_c, jnp.where(c == 0, 0.0, unclipped_nu))
    return mu_, nu_, jnp.sum(rep.weights * dens0)


def _all_scalar(noise: NoiseLaw, R: Array, c: Array) -> Factors:
    m, na, dens0 = _factors_scalar(noise, R, c)
    sigma2 = jnp.asarray(noise.second_moment, na.dtype)
    finite_noise = jnp.isfinite(sigma2)
    R = jnp.asarray(R, na.dtype)
    norm = 2.0 * R + jnp.where(finite_noise, sigma2, 0.0)
    norm_safe = jnp.where(norm > 0, norm, 1.0)
    is_inf = jnp.isinf(c)
    # nu = nu_abs / (2R + sigma^2); for infinite sigma^2 it is 0 at finite c and 1 unclipped.
    n = jnp.where(finite_noise, na / norm_safe, jnp.where(is_inf, 1.0, 0.0))
    n = jnp.where(finite_noise & (norm <= 0), jnp.where(is_inf | (c > 0), 1.0, 0.0), n)
    n_safe = jnp.where(n > 0, n, 1.0)
    ccc_ = jnp.where(n > 0, m * m / n_safe, jnp.inf)
    # c -> 0: mu ~ 2 p_w(0) c and nu_abs ~ c^2, so CCC -> 4 p_w(0)^2 (2R + sigma^2), eq. (4.4).
    ccc_ = jnp.where((c == 0) & finite_noise, 4.0 * dens0 * dens0 * norm, ccc_)
    csc_ = jnp.where(n > 0, m / n_safe, jnp.inf)
    zero = jnp.zeros_like(m)
    return Factors(m, na, n, ccc_, csc_, zero, zero)


def _rule_scalar(noise: NoiseLaw, R: Array, c: Array, rule) -> Factors:
    """The factors of a clipping rule (theory/clip_rules.md, eqs. (7)-(10)): ``nu_abs`` is the
    rule's ``lam``-proportional noise ``nu``, and the unitless ``nu`` compares it with unclipped
    SGD of the same batch size, ``(2R + sigma^2) / B``. The criteria ignore the isotropic terms
    (returned as ``iso_d``, ``iso_1``), which do not scale with ``lam_i``."""
    f = rule.ode_factors(noise, R, c)
    m, na = f.mu, f.nu
    R = jnp.asarray(R, na.dtype)
    sgd = rule.sgd_noise(noise, R)
    is_inf = jnp.isinf(c)
    n = jnp.where(jnp.isfinite(sgd), na / jnp.where(sgd > 0, sgd, 1.0), jnp.where(is_inf, 1.0, 0.0))
    n_safe = jnp.where(n > 0, n, 1.0)
    ccc_ = jnp.where(n > 0, m * m / n_safe, jnp.inf)
    csc_ = jnp.where(n > 0, m / n_safe, jnp.inf)
    # c -> 0 is a limit of 0/0: evaluate it just above 0, in the units of the threshold. The
    # quotient's error there is about the threshold in those units (measured: 5e-8 relative at
    # 1e-7 units against the per-sample rule's exact limit, the single-sample CCC; 5e-13 at 1e-12).
    tiny = 1e-12 * threshold_unit(noise, R)
    f0 = rule.ode_factors(noise, R, tiny)
    n0 = jnp.where(jnp.isfinite(sgd), f0.nu / jnp.where(sgd > 0, sgd, 1.0), 0.0)
    ccc_ = jnp.where(c == 0, jnp.where(n0 > 0, f0.mu**2 / jnp.where(n0 > 0, n0, 1.0), jnp.inf), ccc_)
    return Factors(m, na, n, ccc_, csc_, f.iso_d, f.iso_1)


def _scalar(noise, rule):
    if rule is None or rule.plain:
        return lambda r, cc: tuple(_all_scalar(noise, r, cc))
    return lambda r, cc: tuple(_rule_scalar(noise, r, cc, rule))


# The public functions run as one program per kind of law and rule, shape and part, not
# operation by operation: run eagerly, a first call compiled dozens of one-operation programs
# (511 for tests/test_factors.py, 54 s of its 81 s). Inside a caller's trace the program is
# inlined, in that trace's precision.
@functools.partial(jax.jit, static_argnames="part")
def _evaluate(noise, rule, R: Array, c: Array, part: str = "all"):
    """At ``(R, c)`` (broadcast): :class:`Factors` for ``part="all"``, or ``"mu"`` or ``"nu_abs"``
    alone (a schedule without a table evaluates ``mu`` at every step; a rule's criteria would
    cost a second evaluation of its factors there)."""
    if part == "all":
        return Factors(*jnp.vectorize(_scalar(noise, rule))(R, c))
    i = ("mu", "nu_abs").index(part)  # the same place in _factors_scalar and RuleFactors
    if rule is None or rule.plain:
        return jnp.vectorize(lambda r, cc: _factors_scalar(noise, r, cc)[i])(R, c)
    return jnp.vectorize(lambda r, cc: rule.ode_factors(noise, r, cc)[i])(R, c)


def _check(noise, R, c=None, rule=None) -> None:
    """The public functions' argument checks, on concrete values (tracers pass unchecked)."""
    validation.noise_law(noise)
    validation.clip_rule(rule)
    validation.positive("R", R)
    if c is not None:
        validation.threshold("c", c)
        validation.broadcastable(R=R, c=c)


@uses_x64
def reduction_factors(noise: NoiseLaw, R: ArrayLike, c: ArrayLike, rule=None) -> Factors:
    """All factors and criteria at ``(R, c)``, broadcast against each other.

    Computed in float64 when called with concrete values, whatever JAX's global setting; inside a
    caller's ``jit``/``vmap``/``grad``, in that trace's precision (see :mod:`clipdyn.precision`).

    Args:
        noise: a noise law from :mod:`clipdyn.theory.noise`.
        R: risk (excess, without the noise term), finite and within ``[1e-100, 1e100]``.
        c: dimension-free clipping threshold: ``0``, ``inf`` (unclipped SGD) or within
            ``[1e-100, 1e100]``.
        rule: a :class:`clipdyn.theory.rules.ClipRule` (default: one sample per step, the paper's
            C-SGD). With a rule, ``nu_abs`` is the rule's noise coefficient and ``nu`` is it
            relative to unclipped SGD with the same batch size.

    Returns:
        :class:`Factors` ``(mu, nu_abs, nu, ccc, csc, iso_d, iso_1)``, each of the broadcast shape.

    Raises:
        ValueError: for a bad law, or a bad concrete ``R`` or ``c`` (:mod:`clipdyn.validation`).

    References:
        theory/derivation.md, eqs. (2.4), (2.5), (3.1)-(3.4), (4.1), (4.3);
        theory/clip_rules.md.
    """
    _check(noise, R, c, rule)
    return _evaluate(noise, rule, jnp.asarray(R, float), jnp.asarray(c, float))


@uses_x64
def mu(noise: NoiseLaw, R: ArrayLike, c: ArrayLike, rule=None) -> Array:
    """Descent reduction factor ``mu_c(R) = P(|w| <= c)`` (theory/derivation.md, eq. (2.4)), or
    the rule's descent factor (theory/clip_rules.md)."""
    _check(noise, R, c, rule)
    return _evaluate(noise, rule, jnp.asarray(R, float), jnp.asarray(c, float), "mu")


@uses_x64
def nu_abs(noise: NoiseLaw, R: ArrayLike, c: ArrayLike, rule=None) -> Array:
    """Absolute clipped second moment ``E[min(w^2, c^2)]`` (theory/derivation.md, eq. (2.5)), or
    the rule's ``lam``-proportional noise coefficient."""
    _check(noise, R, c, rule)
    return _evaluate(noise, rule, jnp.asarray(R, float), jnp.asarray(c, float), "nu_abs")


@uses_x64
def nu(noise: NoiseLaw, R: ArrayLike, c: ArrayLike, rule=None) -> Array:
    """Unitless variance reduction factor ``nu_abs / (2R + sigma^2)`` (eq. (2.6))."""
    return reduction_factors(noise, R, c, rule).nu


@uses_x64
def ccc(noise: NoiseLaw, R: ArrayLike, c: ArrayLike, rule=None) -> Array:
    """Clipping comparison criterion ``mu^2 / nu`` (theory/derivation.md, eq. (4.3))."""
    return reduction_factors(noise, R, c, rule).ccc


@uses_x64
def csc(noise: NoiseLaw, R: ArrayLike, c: ArrayLike, rule=None) -> Array:
    """Clipped stability criterion ``mu / nu`` (theory/derivation.md, eq. (4.1))."""
    return reduction_factors(noise, R, c, rule).csc


@uses_x64
def max_stable_lr(noise: NoiseLaw, R: ArrayLike, c: ArrayLike, rule=None) -> Array:
    """Largest stable learning rate ``2 B mu / nu`` with the factors frozen at ``R`` (eq. (4.2);
    theory/clip_rules.md, eq. (11) for batch ``B``).

    ``2`` for unclipped SGD with finite-variance noise and one sample per step (``2B`` with
    ``B``); ``inf`` where ``nu = 0``.
    """
    s = csc(noise, R, c, rule)  # checks the rule before its batch size is read
    return 2.0 * (1 if rule is None else rule.batch) * s


def _log_ratio(noise: NoiseLaw, R: Array, log_c: Array, rule=None) -> Array:
    """``log(mu^2 / nu_abs)``: CCC up to the factor ``2R + sigma^2``, which does not depend on
    ``c``, so its argmax is CCC's argmax even when ``sigma^2`` is infinite."""
    if rule is None or rule.plain:
        m, na, _ = _factors_scalar(noise, R, jnp.exp(log_c))
    else:
        f = rule.ode_factors(noise, R, jnp.exp(log_c))
        m, na = f.mu, f.nu
    return 2.0 * jnp.log(m) - jnp.log(na)


@uses_x64
def threshold_unit(noise: NoiseLaw, R: ArrayLike) -> Array:
    """``sqrt(2R + scale^2)`` (``1`` where that is 0): the natural unit of a threshold at risk
    ``R``, in ``R``'s dtype. An infinite ``scale`` counts as 0. (``R`` is not range-checked:
    schedule tables evaluate it far beyond the risks a run visits.)"""
    validation.noise_law(noise)
    R = jnp.asarray(R)
    s = jnp.asarray(noise.scale, R.dtype)
    unit = jnp.sqrt(2.0 * R + jnp.where(jnp.isfinite(s), s * s, 0.0))
    return jnp.where(unit > 0, unit, 1.0)


def _optimal_threshold_scalar(noise: NoiseLaw, R: Array, grid: int, iters: int, rule=None) -> Array:
    R = jnp.asarray(R, float)
    # The scan reaches down to 1e-4 sqrt(2R), not only 1e-4 sqrt(2R + scale^2): where the law has
    # mass at or near 0, c* ~ sqrt(2R) (Empirical([0, 0, 0, 5]) at R = 1e-10: c* = 1.08e-5, and
    # the grid's end 2.5e-4 reached 2 % of the maximum CCC; one rare huge outlier, which makes
    # scale large, did the same at any R). It keeps twice the points, for the same density
    # where sqrt(2R) ~ scale.
    decade = math.log(10.0)
    top = jnp.log(threshold_unit(noise, R)) + 4.0 * decade
    bottom = jnp.minimum(0.5 * jnp.log(2.0 * R), top - 4.0 * decade) - 4.0 * decade
    grid = 2 * grid - 1
    log_grid = bottom + (top - bottom) * jnp.linspace(0.0, 1.0, grid)
    if _heavy(rule):  # a few thresholds at a time (see _optimal_threshold)
        vals = jax.lax.map(lambda lc: _log_ratio(noise, R, lc, rule), log_grid, batch_size=8)
    else:
        vals = jax.vmap(lambda lc: _log_ratio(noise, R, lc, rule))(log_grid)
    vals = jnp.where(jnp.isnan(vals), -jnp.inf, vals)
    i = jnp.argmax(vals)
    lo = log_grid[jnp.maximum(i - 1, 0)]
    hi = log_grid[jnp.minimum(i + 1, grid - 1)]
    # Golden-section search on the bracket around the best grid point; each iteration keeps one
    # interior point and its value, so it costs one evaluation of the factors.
    g = (math.sqrt(5.0) - 1.0) / 2.0

    def f(x):
        v = _log_ratio(noise, R, x, rule)
        return jnp.where(jnp.isnan(v), -jnp.inf, v)

    def body(_, state):
        lo, hi, x1, f1, x2, f2 = state
        left = f1 >= f2  # the maximum is in [lo, x2]
        lo, hi = jnp.where(left, lo, x1), jnp.where(left, x2, hi)
        x_new = jnp.where(left, hi - g * (hi - lo), lo + g * (hi - lo))
        f_new = f(x_new)
        x1, f1, x2, f2 = (jnp.where(left, x_new, x2), jnp.where(left, f_new, f2),
                          jnp.where(left, x1, x_new), jnp.where(left, f1, f_new))
        return lo, hi, x1, f1, x2, f2

    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    lo, hi, *_ = jax.lax.fori_loop(0, iters, body, (lo, hi, x1, f(x1), x2, f(x2)))
    log_c = 0.5 * (lo + hi)
    best = _log_ratio(noise, R, log_c, rule)
    sigma2 = jnp.asarray(noise.second_moment, float)
    batch = 1 if rule is None else rule.batch
    # Unclipped SGD (c = inf) has mu^2 / nu_abs = B / (2R + sigma^2). A finite c must beat it by
    # more than rounding: for Gaussian noise CCC rises to 1 and is flat at 1 in floating point.
    unclipped = -jnp.log((2.0 * R + sigma2) / batch)
    return jnp.where(unclipped >= best - 1e-12, jnp.inf, jnp.exp(log_c))


@uses_x64
def optimal_threshold(noise: NoiseLaw, R: ArrayLike, *, grid: int = 81, iters: int = 60,
                      rule=None) -> Array:
    """The threshold ``c*(R) = argmax_c CCC_c(R)``; ``inf`` when no finite ``c`` beats SGD.

    A log-spaced scan of ``c`` from ``1e-4 sqrt(2R)`` to ``1e4 sqrt(2R + scale^2)`` (``2 grid - 1``
    points) brackets the maximum, which a golden-section search then refines. The lower end
    follows ``sqrt(2R)`` because laws with mass at or near 0 have ``c* ~ sqrt(2R)`` as ``R``
    falls. CCC is flat at its maximum (quadratically), so
    ``c*`` itself is determined only to about the square root of the CCC's rounding: measured 3e-9
    to 3e-8 relative against a scipy-quadrature maximisation (Student-t, ``df = 3``), while the
    CCC at ``c*`` is the maximum to ~1e-15.

    Args:
        noise: a noise law.
        R: risk, finite and within ``[1e-100, 1e100]`` (any shape).
        grid: sets the initial scan's points, ``2 grid - 1`` (static); an integer ``>= 3``.
        iters: golden-section iterations (static), an integer ``>= 1``.
        rule: a :class:`clipdyn.theory.rules.ClipRule` (default: the paper's one-sample C-SGD); the
            criterion is then the rule's CCC (theory/clip_rules.md).

    Returns:
        ``c*`` with the shape of ``R``.

    References:
        theory/derivation.md, eq. (4.5); THEORY.md section 4.
    """
    _check(noise, R, rule=rule)
    # Golden section shrinks the bracket by 0.618 an iteration: past ~80 the bracket is below
    # float64's resolution, and iters=10**9 ran for hours. A grid over 1e5 points is the same.
    grid = validation.integer("grid", grid, 3, high=100_000)
    iters = validation.integer("iters", iters, 1, high=200)
    return _optimal_threshold(noise, rule, jnp.asarray(R, float), grid, iters)


def _heavy(rule) -> bool:
    """Whether a rule's factors have large intermediate arrays (group rules integrate over the
    group's residuals): evaluated all at once over a grid of thresholds and a table of risks,
    they asked for 175 GB (batch rule, 321 risks x 41 thresholds)."""
    return rule is not None and not rule.plain


@functools.partial(jax.jit, static_argnames=("grid", "iters"))
def _optimal_threshold(noise, rule, R: Array, grid: int, iters: int) -> Array:
    one = lambda r: _optimal_threshold_scalar(noise, r, grid, iters, rule)  # noqa: E731
    if _heavy(rule):  # one risk at a time, its threshold grid a few at a time: bounded memory
        return jax.lax.map(one, R.reshape(-1)).reshape(R.shape)
    return jnp.vectorize(one)(R)
