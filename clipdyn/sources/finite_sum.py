"""Clipping bias on a finite sum of quadratics, and the pre-clip perturbation that removes it.

The model of Chen, Wu, Hong (NeurIPS 2020), section 2: ``f(x) = mean_i 1/2 (x - a_i)^2`` with
minimiser ``x* = mean_i a_i`` (theory/clipping_bias.md, eq. (1)). Clipped SGD samples ``i``
uniformly and steps along ``clip_c(x - a_i + k zeta)``, ``zeta ~ N(0, 1)`` a pre-clip
perturbation (eq. (2)), so its mean field is the expected clipped gradient

    h(x) = mean_i E clip_c(x - a_i + k zeta)                                    (eq. (3))

whose zeros are where the iterates end up. This module computes ``h`` exactly in closed form
(eq. (4)), its whole zero set (eqs. (6)-(7)) and runs clipped SGD to confirm it. With points of
shape ``(n, d)`` everything holds per coordinate: ``f(x) = mean_i 1/2 ||x - a_i||^2``, clipping
and perturbation act on each coordinate separately (coordinate-wise clipping), so the model is
``d`` independent one-dimensional ones sharing the sampled index ``i``.

The field (:func:`expected_clip`, :func:`clipped_gradient`) is a pure function of a
:class:`FiniteSum` pytree: jittable, vmappable (over ``x`` or the perturbation ``k``) and
differentiable, in its inputs' dtype (float64 for Python numbers and :func:`finite_sum`'s
arrays, whatever JAX's mode; a caller's own trace keeps the caller's precision). :func:`zero_interval`, :func:`bias` and :func:`clipped_sgd`
validate their inputs, run one compiled program (vmapped over ``k`` for zero sets) in float64
whatever the global JAX setting (inside ``jax.enable_x64``), and return NumPy arrays.

References:
    X. Chen, Z. S. Wu, M. Hong, "Understanding Gradient Clipping in Private SGD: A Geometric
    Perspective", NeurIPS 2020 (arXiv 2006.15429), Example 2 and section 5 (perturbation);
    theory/clipping_bias.md.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import erf, erfc, erfcx, log_ndtr, logsumexp
from jax.typing import ArrayLike

from clipdyn import validation
from clipdyn.precision import uses_x64

Array = jax.Array

__all__ = [
    "FiniteSum",
    "finite_sum",
    "minimiser",
    "expected_clip",
    "clipped_gradient",
    "zero_interval",
    "zero_set",
    "bias",
    "clipped_sgd",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SWITCH = 4.0  # below: direct formula (cancels at most ~s^2 = 16x); above: continued fraction
_CF_TERMS = 40  # the continued fraction's error is below 1e-15 relative for s >= 4 (eq. (5))
# Where eq. (4)'s two tails cancel (theory/clipping_bias.md, eqs. (4'') and (4''')): the Hermite
# series in b = m / k where |b| max(1, a) <= 1/2, a = c / k (its n-th term is below
# |b|^n max(1, a)^(n-2) (n-3)!! / n!, so 12 odd orders, up to b^25, leave < 1e-17 relative): all
# |m| <= k / 2 for large k (c <= k / 2), and |m| << c at any k, where the tails differ by about
# m; for c <= k / 2 and |m| > k / 2 the clipped mass in closed form plus the unclipped stretch by
# 32-point Gauss-Legendre.
_SERIES_MAX = 0.5
_QUAD_MAX_AB = 4.0  # a |b| below: the far remainder by quadrature (exp(a b z) is smooth on [-1, 1])
_SERIES_ORDERS = 12
_GL_Z, _GL_W = np.polynomial.legendre.leggauss(32)


class FiniteSum(NamedTuple):
    """A finite sum of quadratics with clipped, perturbed stochastic gradients.

    Attributes:
        points: the centres ``a_i``, shape ``(n,)`` (one dimension) or ``(n, d)`` (per coordinate).
        clip: the threshold ``c > 0``.
        perturbation: the pre-clip perturbation scale ``k >= 0`` (``0``: plain clipping). A pytree
            leaf, so ``jax.vmap`` can map over a vector of ``k`` values.
    """

    points: Array
    clip: Array
    perturbation: Array


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


# Points, thresholds and perturbations beyond 1e100 are refused: the bisection brackets
# min(a) - 2c and max(a) + 2c, and the means of the points, overflowed near the float64 maximum.
_LIMIT = validation.number_text(validation.MAX_MAGNITUDE)


def _check_clip(owner: str, name: str, value) -> None:
    validation.check_value(owner, name, value, lambda c: (c > 0) & (c <= validation.MAX_MAGNITUDE),
                           f"finite, > 0 and <= {_LIMIT}")


def _check_perturbation(owner: str, name: str, value) -> None:
    validation.check_value(owner, name, value, lambda k: (k >= 0) & (k <= validation.MAX_MAGNITUDE),
                           f"finite, >= 0 and <= {_LIMIT}")


def finite_sum(points: ArrayLike, clip: ArrayLike, perturbation: ArrayLike = 0.0) -> FiniteSum:
    """Validate and build a :class:`FiniteSum` (concrete values are kept as float64 NumPy arrays).

    Args:
        points: the centres ``a_i``: a non-empty ``(n,)`` or ``(n, d)`` array of finite numbers.
        clip: the threshold ``c``, finite and ``> 0``.
        perturbation: ``k``, finite and ``>= 0``; a scalar, or a vector to vmap over.

    Returns:
        The problem, eq. (1) of theory/clipping_bias.md.

    Raises:
        ValueError: naming the bad value and what is allowed.
    """
    if _concrete(points):
        validation.check_real("finite_sum", "points", points)
        pts = np.asarray(points, dtype=float)
        if pts.ndim not in (1, 2) or pts.shape[0] == 0 or pts.size == 0:
            raise ValueError(f"finite_sum: points of shape {pts.shape} are not allowed; points must "
                             "be a non-empty (n,) or (n, d) array")
        bad = ~(np.abs(pts) <= validation.MAX_MAGNITUDE)
        if bad.any():
            raise ValueError(f"finite_sum: points containing {pts[bad][:4].tolist()} are not "
                             f"allowed; points must be finite numbers of magnitude <= {_LIMIT}")
        points = pts
    _check_clip("finite_sum", "clip c", clip)
    if _concrete(clip) and np.ndim(clip) != 0:
        raise ValueError(f"finite_sum: clip c of shape {np.shape(clip)} is not allowed; c must be a "
                         "scalar")
    _check_perturbation("finite_sum", "perturbation k", perturbation)
    if _concrete(perturbation) and np.ndim(perturbation) > 1:
        raise ValueError(f"finite_sum: perturbation k of shape {np.shape(perturbation)} is not "
                         "allowed; k must be a scalar or a vector")

    def as_float(v):
        return np.asarray(v, dtype=float) if _concrete(v) else v

    return FiniteSum(points, as_float(clip), as_float(perturbation))


@uses_x64
def minimiser(problem: FiniteSum) -> Array:
    """``x* = mean_i a_i``, the minimiser of ``f`` (eq. (1)), in the points' dtype (float64 for
    :func:`finite_sum`'s, whatever JAX's mode)."""
    return jnp.mean(jnp.asarray(problem.points), axis=0)


def _log_tail(s: Array) -> Array:
    """``log G(-s)`` with ``G(-s) = E[(zeta - s)_+] = phi(s) - s Phi(-s)``, for ``s >= 0`` (eq. (5)).

    Written as ``log phi(s) + log(1 - s M(s))`` with the Mills ratio ``M = Phi(-s) / phi(s)``, so
    the tail stays representable where ``phi(s)`` underflows (``s > 38``) and the sign of ``h`` is
    still exact there (see :func:`_sign_h`). ``1 - s M(s)`` cancels for large ``s`` (it is
    ``~ s^-2``); below ``s = 4`` it is formed directly (``M`` from ``erfcx``), above from
    Laplace's continued fraction ``M = 1/(s + 1/T_2)``, ``T_j = s + j/T_{j+1}``, which gives
    ``1 - s M = 1 / (1 + s T_2)`` with no cancellation. Relative error ~1e-15 for all ``s``
    (tested against quadrature); ``s = inf`` gives ``-inf``.
    """
    low = s < _SWITCH
    # where, not minimum/maximum: those split the gradient at a tie, at s = _SWITCH
    s_lo = jnp.where(low, s, _SWITCH)
    direct = jnp.log1p(-s_lo * math.sqrt(0.5 * math.pi) * erfcx(s_lo / math.sqrt(2.0)))
    s_hi = jnp.where(low, _SWITCH, s)
    # T_j = s + j / T_{j+1} for j = 40..2, from T_41 = s (a loop: unrolled it compiles slowly)
    t = lax.fori_loop(0, _CF_TERMS - 1, lambda i, t: s_hi + (_CF_TERMS - i).astype(s.dtype) / t, s_hi)
    frac = -jnp.log1p(s_hi * t)
    return -0.5 * s * s - _LOG_SQRT_2PI + jnp.where(low, direct, frac)


def _large_k_clip(m: Array, c: Array, k: Array) -> tuple[Array, Array, Array]:
    """``(E clip_c(m + k zeta), usable, near)``: exact where ``usable``, a finite placeholder
    elsewhere. ``a = c / k``, ``b = m / k``.

    ``near`` (``|b| max(1, a) <= 1/2``): the Hermite series (eq. (4''))
    ``m erf(a / sqrt 2) - 2 k phi(a) sum_{n = 3, 5, ...} b^n He_{n-2}(a) / n!``, the Taylor series
    of eq. (4) in ``b`` at any ``a``. Otherwise, for ``c <= k / 2`` (so ``|b| > 1/2``),
    ``c sign(m) [1 - Phi(a - |b|) - Phi(-a - |b|)] + (c^2 / k) int_{-1}^{1} z phi(a z - b) dz``
    (eq. (4''')): the clipped mass, at least a third of ``c``, plus the small unclipped stretch.
    ``usable`` is the union of the two. Every term is formed without cancellation, where eq. (4)
    subtracts two tails whose difference is of size ``c`` or less (large ``k``) or about ``m``
    (small ``|m|``).
    """
    k_safe, a, b_all, near, usable = _regions(m, c, k)
    series = _near_series(m, k_safe, a, b_all, near)
    far_b = jnp.where(usable & ~near, b_all, 1.0)
    # |b| > 1/2: P(Y > c) - P(Y < -c) = 1 - Phi(a - |b|) - Phi(-a - |b|) >= 1/3 (Phi by erfc)
    abs_b = jnp.abs(far_b)
    mass = 1.0 - 0.5 * erfc((abs_b - a) / math.sqrt(2.0)) - 0.5 * erfc((abs_b + a) / math.sqrt(2.0))
    nodes = (1,) * jnp.ndim(far_b) + (_GL_Z.size,)  # explicit ranks (strict promotion)
    z, w = jnp.asarray(_GL_Z, m.dtype).reshape(nodes), jnp.asarray(_GL_W, m.dtype).reshape(nodes)
    zz = a[..., None] * z - far_b[..., None]
    inner = jnp.sum(w * z * jnp.exp(-0.5 * zz * zz - _LOG_SQRT_2PI), axis=-1)
    far = c * jnp.sign(far_b) * mass + c * a * inner
    return jnp.where(near, series, far), usable, near


def _regions(m: Array, c: Array, k: Array) -> tuple[Array, Array, Array, Array, Array]:
    """``(k_safe, a, b, near, usable)`` of :func:`_large_k_clip`: ``a = c / k`` where usable (else
    0), ``b = m / k``, and its two regions."""
    k_safe = jnp.where(k > 0, k, 1.0)
    a_all, b_all = c / k_safe, m / k_safe
    near = jnp.broadcast_to((k > 0) & (jnp.abs(b_all) * jnp.maximum(a_all, 1.0) <= _SERIES_MAX),
                            jnp.shape(m))
    usable = near | jnp.broadcast_to((k > 0) & (a_all <= _SERIES_MAX), jnp.shape(m))
    return k_safe, jnp.where(usable, a_all, 0.0), b_all, near, usable


def _near_series(m: Array, k_safe: Array, a: Array, b_all: Array, near: Array) -> Array:
    """The Hermite series (eq. (4'')) where ``near``, else a finite placeholder."""
    b = jnp.where(near, b_all, 0.0)  # b^25 of a large b would overflow (and poison gradients)
    he_prev, he = jnp.ones_like(a), a  # He_0(a), He_1(a)
    total, power, fact = jnp.zeros_like(b), b, 1.0  # power = b^n, fact = n!
    for j in range(_SERIES_ORDERS):
        n = 2 * j + 3
        power = power * b * b
        fact *= (n - 1) * n
        total = total + power * he / fact  # he = He_{n-2}(a)
        # He_{n-1} and He_n from He_{k+1} = a He_k - k He_{k-1}
        he_prev, he = he, a * he - (n - 2) * he_prev
        he_prev, he = he, a * he - (n - 1) * he_prev
    phi_a = jnp.exp(-0.5 * a * a - _LOG_SQRT_2PI)
    return jnp.where(near, m, 0.0) * erf(a / math.sqrt(2.0)) - 2.0 * k_safe * phi_a * total


def _log_far_remainder(a: Array, b: Array) -> Array:
    """``log((c - E clip_c(m + k zeta)) / k)`` for ``m > 0`` with ``a = c / k <= 1/2 < b = m / k``
    (by symmetry, of ``|m|`` for ``m < 0``): how far a clipped-away term falls short of ``c``.

    It is ``T(b - a) - T(b + a)`` with ``T(s) = E(zeta - s)_+`` (eq. (4) for ``|m| > c``), which
    cancels where ``a b`` is small; there it is formed as
    ``a^2 int_{-1}^{1} (1 - z) phi(a z - b) dz + 2 a Phi(-a - b)`` (every part positive; 32-point
    Gauss-Legendre, exact to rounding for ``a b <= 4``), elsewhere as
    ``log T(b - a) + log1p(-T(b + a) / T(b - a))`` with the ratio below ``e^{-2 a b} < e^{-8}``.
    In logarithms: the shortfall underflows long before it stops deciding the sign of ``h``.
    """
    quad = a * b <= _QUAD_MAX_AB
    aq, bq = jnp.where(quad, a, 0.25), jnp.where(quad, b, 1.0)
    nodes = (1,) * jnp.ndim(aq) + (_GL_Z.size,)
    z, w = jnp.asarray(_GL_Z, aq.dtype).reshape(nodes), jnp.asarray(_GL_W, aq.dtype).reshape(nodes)
    zz = aq[..., None] * z - bq[..., None]
    log_int = logsumexp(jnp.log(w * (1.0 - z)) - 0.5 * zz * zz, axis=-1) - _LOG_SQRT_2PI
    by_quad = jnp.logaddexp(2.0 * jnp.log(aq) + log_int, jnp.log(2.0 * aq) + log_ndtr(-aq - bq))
    at, bt = jnp.where(quad, 0.25, a), jnp.where(quad, 8.0, b)
    lo, hi = _log_tail(bt - at), _log_tail(bt + at)
    by_tails = lo + jnp.log1p(-jnp.exp(hi - lo))
    return jnp.where(quad, by_quad, by_tails)


@uses_x64
def expected_clip(m: ArrayLike, clip: ArrayLike, perturbation: ArrayLike) -> Array:
    """``E clip_c(m + k zeta)``, ``zeta ~ N(0, 1)``, exactly, elementwise (eq. (4)).

    ``E clip_c(m + k zeta) = clip_c(m) + k [G(-|m + c| / k) - G(-|m - c| / k)]`` with
    ``G(u) = E(zeta + u)_+``; ``k = 0`` is plain clipping. The two corrections are non-negative
    but cancel in two places: for large ``k`` (``c <= k / 2``) each is about ``k phi(m / k)``
    and their difference is of size ``c`` or less, and for small ``|m|`` at any ``k`` they differ
    by about ``m``. There eqs. (4'') and (4''') are used, which form the result without
    cancellation (relative error ~1e-15 at every ``k`` and ``m``; tests/test_finite_sum.py).

    Args:
        m: the unperturbed gradient(s), any shape.
        clip: ``c > 0`` (scalar).
        perturbation: ``k >= 0`` (scalar).

    Returns:
        An array of ``m``'s shape and dtype (float64 for Python numbers, whatever JAX's mode;
        jittable, vmappable, differentiable in ``m``).

    Raises:
        ValueError: for a concrete ``m`` that is not real and finite, ``c`` not in
            ``(0, 1e100]``, or ``k`` not in ``[0, 1e100]``.
    """
    validation.check_value("expected_clip", "m", m, np.isfinite, "finite")
    validation.single("clip", clip, owner="expected_clip", what="one threshold")
    validation.single("perturbation", perturbation, owner="expected_clip", what="one scale")
    _check_clip("expected_clip", "clip", clip)
    _check_perturbation("expected_clip", "perturbation", perturbation)
    return _expected_clip(m, clip, perturbation)


@jax.jit
def _expected_clip(m, clip, perturbation):
    m = jnp.asarray(m)
    c = jnp.asarray(clip, m.dtype)
    k = jnp.asarray(perturbation, m.dtype)
    perturbed = k > 0
    k_safe = jnp.where(perturbed, k, 1.0)  # the k = 0 branch must stay finite (0/0 at m = +-c)
    # The three kinks (of clip at m = +-c and of |m +- c|) cancel for k > 0. Taking clip's
    # derivative from inside [-c, c] and |.|'s from the matching side keeps them cancelling
    # under autodiff too, so the derivative is eq. (6) even at m = +-c.
    up, down = m + c, m - c
    abs_up = jnp.where(up >= 0, up, -up)
    abs_down = jnp.where(down > 0, down, -down)
    corr = jnp.exp(_log_tail(abs_up / k_safe)) - jnp.exp(_log_tail(abs_down / k_safe))
    clipped = jnp.where(m > c, c, jnp.where(m < -c, -c, m))
    series, usable, _ = _large_k_clip(m, c, k)
    return jnp.where(usable, series, clipped + jnp.where(perturbed, k_safe * corr, 0.0))


def _residuals(problem: FiniteSum, x: ArrayLike) -> tuple[Array, Array, Array]:
    x = jnp.asarray(x)
    points = jnp.asarray(problem.points)
    dtype = points.dtype
    if jnp.issubdtype(x.dtype, jnp.floating):
        dtype = jnp.promote_types(x.dtype, dtype)
    x = x.astype(dtype)
    points = points.astype(dtype)
    if x.shape != points.shape[1:]:
        raise ValueError(f"finite_sum: x of shape {x.shape} does not match points of shape "
                         f"{points.shape}; x must have shape {points.shape[1:]}")
    return x[None, ...] - points, jnp.asarray(problem.clip, dtype), jnp.asarray(problem.perturbation, dtype)


@uses_x64
def clipped_gradient(problem: FiniteSum, x: ArrayLike) -> Array:
    """The expected clipped gradient ``h(x) = mean_i E clip_c(x - a_i + k zeta)`` (eq. (3)).

    Exact (eq. (4)), not sampled. Jittable and vmappable (over ``x`` or over the problem's
    ``perturbation``), and differentiable in ``x``: ``h'(x) = mean_i P(|x - a_i + k zeta| <= c)``.

    Args:
        problem: the finite sum (scalar ``clip`` and ``perturbation``).
        x: a point, shape ``()`` for ``(n,)`` points or ``(d,)`` for ``(n, d)`` points.

    Returns:
        ``h(x)``, of ``x``'s shape.

    Raises:
        ValueError: for concrete values that :func:`finite_sum` refuses, or an ``x`` that is not
            real and finite.
    """
    if not isinstance(problem, FiniteSum):
        raise ValueError(f"clipped_gradient: problem must be a FiniteSum (from finite_sum); "
                         f"{validation.got(problem)}")
    finite_sum(*problem)  # the checks only: a FiniteSum built by hand skipped them
    validation.check_value("clipped_gradient", "x", x, np.isfinite, "finite")
    return _clipped_gradient(problem, x)


@jax.jit
def _clipped_gradient(problem: FiniteSum, x: ArrayLike) -> Array:
    m, c, k = _residuals(problem, x)
    return jnp.mean(_expected_clip(m, c, k), axis=0)


def _sign_h(problem: FiniteSum, weight: Array, x: Array) -> Array:
    """``sign h(x)`` (per coordinate), exact where ``h`` itself underflows (eq. (7)).

    ``n h(x) = c (n_up - n_down) + sum_{|m_i| <= c} m_i + k sum_i [G(-s_i^+) - G(-s_i^-)]``: the
    piecewise-linear part is formed with integer counts (so it is exactly ``0`` on a flat stretch)
    and the positive and negative tails are compared as log-sum-exps. ``weight`` (1 or 0) marks
    the real points among padding.
    """
    m, c, k = _residuals(problem, x)
    w = jnp.reshape(weight, weight.shape + (1,) * (m.ndim - 1)).astype(m.dtype)
    # Where every term is usable (eqs. (4''), (4''')): n h = c (n_far_up - n_far_down) (exact
    # counts) + the near terms' sum (each to ~1e-15 relative; their cancellation at the zero is
    # the rounding band) - the far terms' shortfalls from +-c, which are tiny (~e^{-b^2/2}) and
    # decide the sign where the rest is exactly 0 (points far apart): they are compared in
    # logarithms. Summed in floating point with the +-c they were lost to rounding: a = (0, 40),
    # c = 1, k = 2 put the zero at 19.81, not at 20.
    # The near terms' series only: the far terms enter through their shortfalls below.
    k_safe, a, b_all, near, usable = _regions(m, c, k)
    series = _near_series(m, k_safe, a, b_all, near)
    far = usable & ~near & (w > 0)
    main = c * jnp.sum(jnp.where(far, jnp.sign(m), 0.0), axis=0) + jnp.sum(
        jnp.where(near, w * series, 0.0), axis=0)
    log_short = jnp.log(k_safe) + _log_far_remainder(jnp.where(far, c / k_safe, 0.25),
                                                     jnp.where(far, jnp.abs(m) / k_safe, 1.0))
    log_main = jnp.log(jnp.where(main != 0, jnp.abs(main), 1.0))
    pos = jnp.logaddexp(logsumexp(jnp.where(far & (m < 0), log_short, -jnp.inf), axis=0),
                        jnp.where(main > 0, log_main, -jnp.inf))
    neg = jnp.logaddexp(logsumexp(jnp.where(far & (m > 0), log_short, -jnp.inf), axis=0),
                        jnp.where(main < 0, log_main, -jnp.inf))
    series_sign = jnp.where(pos > neg, 1, jnp.where(pos < neg, -1, 0))
    all_usable = jnp.all(usable | (w == 0), axis=0)
    n_net = jnp.sum(w * (m > c).astype(m.dtype) - w * (m < -c).astype(m.dtype), axis=0)  # exact
    lin = c * n_net + jnp.sum(w * jnp.where(jnp.abs(m) <= c, m, 0.0), axis=0)
    perturbed = k > 0
    tails = _log_tail(jnp.concatenate([jnp.abs(m + c), jnp.abs(m - c)]) / k_safe)  # one call
    both = jnp.concatenate([w, w])
    n = m.shape[0]
    log_k = jnp.where(perturbed, jnp.log(k_safe), -jnp.inf)
    up = logsumexp(tails[:n], axis=0, b=both[:n]) + log_k
    down = logsumexp(tails[n:], axis=0, b=both[n:]) + log_k
    log_lin = jnp.log(jnp.where(lin != 0, jnp.abs(lin), 1.0))
    up = jnp.logaddexp(up, jnp.where(lin > 0, log_lin, -jnp.inf))
    down = jnp.logaddexp(down, jnp.where(lin < 0, log_lin, -jnp.inf))
    return jnp.where(all_usable, series_sign, jnp.where(up > down, 1, jnp.where(up < down, -1, 0)))


_MAG = 0x7FFFFFFFFFFFFFFF


def _to_key(x: Array) -> Array:
    """Order-preserving map of float64 onto int64, so bisection ends on adjacent floats in 64 steps."""
    bits = lax.bitcast_convert_type(x, jnp.int64)
    return jnp.where(bits < 0, -(bits & _MAG), bits)


def _from_key(key: Array) -> Array:
    mag = jnp.abs(key)
    bits = jnp.where(key < 0, mag | jnp.int64(-(2**63)), mag)
    return lax.bitcast_convert_type(bits, jnp.float64)


def _zero_interval(problem: FiniteSum, weight: Array) -> Array:
    """``[lo, hi]`` per coordinate by two bisections on the exact sign of ``h`` (eq. (6))."""
    points = jnp.asarray(problem.points, jnp.float64)
    c = jnp.asarray(problem.clip, jnp.float64)
    problem = FiniteSum(points, c, jnp.asarray(problem.perturbation, jnp.float64))
    # h < 0 below min(a) - 2c and h > 0 above max(a) + 2c for every k >= 0 (eq. (6)); padding
    # repeats a real point, so it does not move these ends.
    left = _to_key(jnp.min(points, axis=0) - 2.0 * c)
    right = _to_key(jnp.max(points, axis=0) + 2.0 * c)

    def body(_, carry):
        # Invariants: sign h(l1) < 0 <= sign h(r1) and sign h(l2) <= 0 < sign h(r2).
        l1, r1, l2, r2 = carry
        m1 = (l1 & r1) + ((l1 ^ r1) >> 1)  # floor((l + r) / 2) without overflow
        m2 = (l2 & r2) + ((l2 ^ r2) >> 1)
        s1, s2 = jax.vmap(lambda key: _sign_h(problem, weight, _from_key(key)))(jnp.stack([m1, m2]))
        return (jnp.where(s1 < 0, m1, l1), jnp.where(s1 < 0, r1, m1),
                jnp.where(s2 <= 0, m2, l2), jnp.where(s2 <= 0, r2, m2))

    _, r1, l2, _ = lax.fori_loop(0, 66, body, (left, right, left, right))
    lo, hi = _from_key(r1), _from_key(l2)
    # For k > 0 the zero is a point (eq. (6)); the ends differ only by where rounding decides
    # the sign. For k = 0 the ends are refined by zero_interval.
    mid = 0.5 * (lo + hi)
    point = problem.perturbation > 0
    return jnp.stack([jnp.where(point, mid, lo), jnp.where(point, mid, hi)], axis=-1)


_zero_intervals = jax.jit(jax.vmap(_zero_interval, in_axes=(FiniteSum(None, None, 0), None)))


def _bucket(n: int) -> int:
    """Sizes are padded to powers of two (at least 4), so few shapes are ever compiled."""
    return max(4, 1 << (n - 1).bit_length())


def _exact_k0(points: np.ndarray, c: float, near: float) -> tuple[float, float]:
    """The zero set of the piecewise-linear ``h`` at ``k = 0`` from the terms' classes (eq. (7)).

    ``near`` is a point of the zero set (from bisection). There, each term is clipped up
    (``m_i > c``), clipped down (``m_i < -c``) or linear. With no linear term ``h`` is flat on the
    whole stretch between the nearest breakpoints, ``[max_up (a_i + c), min_down (a_i - c)]``;
    otherwise the zero is the single point ``(sum_linear a_i - c (n_up - n_down)) / n_linear``.
    Both are exact up to one rounding (``math.fsum``), unlike the bisection's ends, which can be
    off by the rounding of ``h``.
    """
    m = near - points
    up, down = m > c, m < -c
    lin = ~(up | down)
    if not lin.any():
        if up.sum() != down.sum():  # h = +-c (n_up - n_down) / n there, not a zero
            raise RuntimeError(f"finite_sum: bisection ended at x={near!r}, where h != 0")
        return float(np.max(points[up] + c)), float(np.min(points[down] - c))
    z = (math.fsum(points[lin].tolist()) - c * (int(up.sum()) - int(down.sum()))) / int(lin.sum())
    return z, z


def zero_interval(problem: FiniteSum) -> np.ndarray:
    """The zero set of ``h`` as ``[lo, hi]``, in float64 (eqs. (6)-(7)).

    ``h`` is non-decreasing with ``h(-inf) = -c`` and ``h(inf) = c``, so its zero set is one closed
    interval. For ``k > 0`` ``h`` is strictly increasing and the zero is a point (``lo == hi``):
    bisection on the sign of ``h`` to adjacent floats, where the sign is exact even if ``h``
    itself underflows (:func:`_sign_h`). The two bisections (for ``h < 0`` and ``h > 0``) end
    apart by the band where rounding decides the sign; the midpoint is returned. With eq. (4)
    the band grows like ``1e-16 (k/c)^2`` (below 1e-14 up to ``k = 10 c``); where
    ``c <= k / 2`` the sign comes from eqs. (4'') and (4'''), which do not cancel (the zero to ~1e-15 at ``k = 1e8``; tests/test_finite_sum.py). For ``k = 0`` ``h`` is piecewise linear and the zero set can be a whole
    interval (Example 2: ``a = (-3, 3)``, ``c = 1`` gives ``[-2, 2]``); it is then taken from the
    exact piecewise form (:func:`_exact_k0`), so a flat stretch ends exactly at its breakpoints
    ``a_i +- c`` and a point is one point.

    Args:
        problem: the finite sum; ``perturbation`` a scalar or a vector (then vmapped).

    Returns:
        A NumPy array of shape ``(2,)`` (one dimension) or ``(d, 2)`` (per coordinate), with a
        leading axis over ``k`` when ``perturbation`` is a vector.

    Raises:
        ValueError: when the points x perturbations x coordinates would need more memory than
            the machine has (about 2.5 kB each, measured), with the amount.
    """
    problem = finite_sum(*problem)
    ks = np.atleast_1d(problem.perturbation)
    n = problem.points.shape[0]
    # Padding: extra points (copies of a_1) with weight 0, extra k (copies of k_1), dropped after.
    pad_n, pad_k = _bucket(n) - n, _bucket(ks.size) - ks.size
    coords = int(np.prod(problem.points.shape[1:], dtype=np.int64))
    validation.check_memory(
        2.5e3 * (n + pad_n) * (ks.size + pad_k) * coords,
        f"the zero sets of {n} point(s) x {ks.size} perturbation(s)"
        + (f" x {coords} coordinates" if coords > 1 else ""))
    points = np.concatenate([problem.points, np.repeat(problem.points[:1], pad_n, axis=0)])
    weight = np.concatenate([np.ones(n), np.zeros(pad_n)])
    padded = FiniteSum(points, problem.clip, np.concatenate([ks, np.repeat(ks[:1], pad_k)]))
    with jax.enable_x64(True):
        out = np.array(_zero_intervals(padded, weight), dtype=np.float64)[:ks.size]
    pts = problem.points.reshape(n, -1)
    flat = out.reshape(ks.size, pts.shape[1], 2)
    for i in np.flatnonzero(ks == 0):
        for j in range(pts.shape[1]):
            flat[i, j] = _exact_k0(pts[:, j], float(problem.clip), float(flat[i, j].mean()))
    return flat.reshape(np.shape(problem.perturbation) + problem.points.shape[1:] + (2,))


def zero_set(problem: FiniteSum) -> list[list[float]]:
    """The zero set of ``h`` as a list of intervals ``[[lo, hi]]`` (a point has ``lo == hi``).

    One-dimensional points and a scalar ``k`` only; by monotonicity (eq. (6)) the list always
    holds one interval. See :func:`zero_interval` for ``d`` dimensions and vectors of ``k``.
    """
    problem = finite_sum(*problem)
    if np.ndim(problem.points) != 1 or np.ndim(problem.perturbation) != 0:
        raise ValueError(f"zero_set: points of shape {np.shape(problem.points)} and perturbation of "
                         f"shape {np.shape(problem.perturbation)} are not allowed; it needs (n,) "
                         "points and a scalar k (use zero_interval otherwise)")
    lo, hi = zero_interval(problem).tolist()
    return [[lo, hi]]


def bias(problem: FiniteSum) -> np.ndarray:
    """The clipping bias: the largest distance from a zero of ``h`` to the minimiser ``x*``.

    ``max(|lo - x*|, |hi - x*|)`` over the zero set ``[lo, hi]`` (per coordinate; a leading axis
    over ``k`` when ``perturbation`` is a vector): how far from ``x*`` clipped SGD's mean field can
    stall. Example 2 gives ``2`` at ``k = 0``. For large ``k`` the zero is
    ``x* - mean_i (a_i - x*)^3 / (6 k^2) + O(k^-4)`` (eq. (8)).
    """
    problem = finite_sum(*problem)
    z = zero_interval(problem)
    x_star = np.mean(problem.points, axis=0)
    return np.maximum(np.abs(z[..., 0] - x_star), np.abs(z[..., 1] - x_star))


def _sgd_path(points, c, k, step, x0, key, chunks: int, every: int):
    n = points.shape[0]

    def one(x, t):
        ki, kz = jax.random.split(jax.random.fold_in(key, t))
        i = jax.random.randint(ki, (), 0, n)
        zeta = jax.random.normal(kz, x.shape, x.dtype)
        return x - step * jnp.clip(x - points[i] + k * zeta, -c, c)  # eq. (2)

    def chunk(x, j):
        x = lax.fori_loop(0, every, lambda s, y: one(y, j * every + s), x)
        return x, x

    _, path = lax.scan(chunk, x0, jnp.arange(chunks))
    return jnp.concatenate([x0[None], path], axis=0)


@partial(jax.jit, static_argnums=(6, 7))
def _sgd_paths(points, c, k, step, x0, keys, chunks: int, every: int):
    # Seeds one after another, not vmapped: a vmapped batch is compiled differently for each
    # batch width (vector code, fused multiply-adds), which changes a path's last bits.
    return lax.map(lambda xk: _sgd_path(points, c, k, step, xk[0], xk[1], chunks, every), (x0, keys))


def clipped_sgd(problem: FiniteSum, x0: ArrayLike, step: float, steps: int,
                seeds, record_every: int = 1) -> np.ndarray:
    """Stochastic clipped SGD on the finite sum, one run per seed, in float64.

    Each step samples ``i`` uniformly and ``zeta ~ N(0, 1)`` (per coordinate) and moves
    ``x <- x - step * clip_c(x - a_i + k zeta)`` (eq. (2)). The draws of step ``t`` come from
    ``fold_in(key(seed), t)`` and seeds run one after another in one compiled program, so a seed
    gives the same path, bit for bit, alone or among others.

    Args:
        problem: the finite sum (scalar ``perturbation``).
        x0: the start, of the point shape (``()`` or ``(d,)``), or one per seed (leading axis).
        step: the step size, finite and ``> 0``.
        steps: the number of steps, an integer ``>= 1`` and a multiple of ``record_every``.
        seeds: a sequence of integer seeds.
        record_every: keep every ``record_every``-th iterate.

    Returns:
        The paths, shape ``(S, steps // record_every + 1, *point_shape)``; index 0 is ``x0``.
    """
    problem = finite_sum(*problem)
    if np.ndim(problem.perturbation) != 0:
        raise ValueError(f"clipped_sgd: perturbation of shape {np.shape(problem.perturbation)} is "
                         "not allowed; run one scalar k at a time")
    validation.check_value("clipped_sgd", "step", step, lambda a: np.isfinite(a) & (a > 0) & (a.ndim == 0),
                           "a finite number > 0")
    steps = validation.integer("steps", steps, 1, owner="clipped_sgd")
    record_every = validation.integer("record_every", record_every, 1, owner="clipped_sgd")
    if steps % record_every:
        raise ValueError(f"clipped_sgd: steps={steps} is not a multiple of record_every={record_every}")
    seeds = validation.seeds(seeds)
    shape = np.shape(problem.points)[1:]
    x0 = np.asarray(x0, dtype=float)
    if x0.shape == shape:
        x0 = np.broadcast_to(x0, (seeds.size,) + shape)
    if x0.shape != (seeds.size,) + shape or not np.all(np.isfinite(x0)):
        raise ValueError(f"clipped_sgd: x0 of shape {x0.shape} is not allowed; it must be finite, of "
                         f"shape {shape} or {(seeds.size,) + shape}")
    with jax.enable_x64(True):
        keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
        out = _sgd_paths(jnp.asarray(problem.points), jnp.asarray(problem.clip),
                         jnp.asarray(problem.perturbation), jnp.asarray(float(step)), jnp.asarray(x0),
                         keys, steps // record_every, record_every)
        return np.asarray(out, dtype=np.float64)
