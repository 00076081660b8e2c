"""Label-noise laws.

A noise law says how the label noise ``eps`` in ``y = <x, theta*> + eps`` is drawn. Each law is
a frozen dataclass registered as a JAX pytree, so it can be passed through ``jit``, closed over
in ``vmap``, and its parameters traced.

Every law offers:

* ``sample(key, shape, dtype)``: draws, under ``jit`` and ``vmap``;
* ``mean``, ``second_moment`` (``E[eps^2]``, the ``sigma^2`` of THEORY.md) and ``variance``,
  each ``inf`` (or ``nan`` for an undefined mean) where it does not exist;
* ``scale``: a typical magnitude of ``eps``, used only to place search grids;
* ``gaussian_mixture()``: the law written as a (possibly infinite, here discretised) mixture
  of Gaussians ``eps ~ N(m_j, s_j^2)`` with weights ``p_j``. The reduction factors of
  :mod:`clipdyn.theory.factors` are averages of closed-form Gaussian quantities over this mixture.

Student-t noise is the one law that needs quadrature; it is a Gaussian scale mixture,
``eps | tau ~ N(0, scale^2 / tau)`` with ``tau ~ Gamma(df/2, rate=df/2)``, and the average over
``tau`` is a trapezoidal rule in ``x = log tau`` (theory/derivation.md, eqs. (3.6)-(3.8)).

References:
    Marshall, Xiao, Agarwala, Paquette, arXiv 2406.11733, section 2; theory/derivation.md, section 3.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln
from jax.typing import ArrayLike

from clipdyn import validation
from clipdyn.precision import uses_x64
from clipdyn.pytrees import cast_floats, frozen_pytree
from clipdyn.validation import check_value

Array = jax.Array

DF_RANGE = (0.01, 1e6)
"""Allowed Student-t degrees of freedom. Below 0.01 the quadrature in ``log tau`` needs more than
36,000 nodes per evaluation (memory grows like ``1/df``); above 1e6 the law is Gaussian to 1e-6
relative and the quadrature weights ``k log k - log Gamma(k)`` lose digits to cancellation (at
``df = 1e12`` the factors are off by 4e-4): use ``Gaussian(scale)`` there."""

WEIGHTS_TOL = 1e-9
"""Mixture weights must sum to 1 within this; they are then rescaled to sum to 1 exactly."""

__all__ = [
    "Gaussian",
    "StudentT",
    "Rademacher",
    "GaussianMixture",
    "Empirical",
    "cauchy",
    "MixtureRep",
    "NoiseLaw",
    "check_law",
]


class MixtureRep(NamedTuple):
    """A noise law as a mixture of Gaussians ``N(means_j, variances_j)`` with ``weights_j``.

    ``means`` is ``None`` when every component is centred (then the cheaper centred
    formulas apply).
    """

    weights: Array
    means: Array | None
    variances: Array


def _is_concrete(x) -> bool:
    return validation.is_concrete(x)


def check_law(noise, name: str = "noise"):
    """Raise ``ValueError`` unless ``noise`` is a noise law (see :func:`clipdyn.validation.noise_law`)."""
    return validation.noise_law(noise, name)


class _Law:
    """Shared helpers; the laws below implement the interface described in the module doc."""

    def astype(self, dtype) -> "_Law":
        """The same law with floating parameters cast to ``dtype`` (for float32 simulation)."""
        return cast_floats(self, dtype)

    @property
    @uses_x64
    def variance(self) -> Array:
        m = jnp.asarray(self.mean)
        return jnp.where(jnp.isfinite(m), self.second_moment - m * m, jnp.inf)


class _ScaledSymmetric(_Law):
    """``sigma Z`` for a standard symmetric ``Z`` (``E Z = 0``, ``E Z^2 = 1``) drawn by the
    subclass's ``_standard(key, shape, dtype)``: the Gaussian and Rademacher laws."""

    def __post_init__(self):
        validation.nonnegative("sigma", validation.single("sigma", self.sigma, owner=self._owner),
                               owner=self._owner)

    @uses_x64
    def sample(self, key: Array, shape=(), dtype=jnp.float32) -> Array:
        return jnp.asarray(self.sigma, dtype) * self._standard(key, shape, dtype)

    @property
    @uses_x64
    def mean(self) -> Array:
        return jnp.zeros_like(jnp.asarray(self.sigma, float))

    @property
    @uses_x64
    def second_moment(self) -> Array:
        return jnp.square(jnp.asarray(self.sigma, float))

    @property
    @uses_x64
    def scale(self) -> Array:
        return jnp.asarray(self.sigma, float)


@frozen_pytree
class Gaussian(_ScaledSymmetric):
    """Gaussian noise ``N(0, sigma^2)``.

    Args:
        sigma: standard deviation: ``0`` (noiseless) or within ``[1e-100, 1e100]``.
    """

    sigma: ArrayLike = 1.0
    _owner = "gaussian"
    _standard = staticmethod(jax.random.normal)

    @uses_x64
    def gaussian_mixture(self) -> MixtureRep:
        s2 = jnp.reshape(self.second_moment, (1,))
        return MixtureRep(jnp.ones_like(s2), None, s2)


def _gamma_log_range(df: Array, drop: float = 46.0) -> tuple[Array, Array]:
    """Range of ``x = log tau``, ``tau ~ Gamma(df/2, rate=df/2)``, outside which the density of
    ``x`` is below ``exp(-drop)`` times its peak (theory/derivation.md, eq. (3.7)).

    The log-density relative to its peak at ``x = 0`` is ``(df/2) (x + 1 - e^x)``; the two roots
    of ``x + 1 - e^x = -q`` with ``q = 2 drop / df`` are found by Newton (left) and fixed-point
    iteration (right), both converging from the starting points used here.
    """
    q = jax.lax.stop_gradient(2.0 * drop / df)  # node placement, not a parameter of the law

    def newton(_, x):
        ex = jnp.exp(x)
        return x - (x + 1.0 - ex + q) / (1.0 - ex)

    left = jax.lax.fori_loop(0, 40, newton, jnp.where(q > 1.0, -q - 1.0, -jnp.sqrt(2.0 * q)))
    x = jax.lax.fori_loop(0, 60, lambda _, x: jnp.log(x + 1.0 + q), jnp.log1p(q) + 1.0)
    return left, x


def _gamma_log_range_host(df: float, drop: float = 46.0) -> tuple[float, float]:
    """:func:`_gamma_log_range` for a concrete ``df``, in Python floats: float64 whatever JAX's
    precision setting, and usable while a ``jit`` trace is active (a law built inside one)."""
    q = 2.0 * drop / df
    left = -q - 1.0 if q > 1.0 else -math.sqrt(2.0 * q)
    for _ in range(40):
        ex = math.exp(left)
        left = left - (left + 1.0 - ex + q) / (1.0 - ex)
    x = math.log1p(q) + 1.0
    for _ in range(60):
        x = math.log(x + 1.0 + q)
    return left, x


def _student_nodes(df: float) -> int:
    """Static node count for the Student-t quadrature at a concrete ``df``.

    The step ``h = min(0.25, 0.5 sqrt(2/df))`` keeps the trapezoidal error below 1e-16: the
    integrand is analytic in a strip of half-width pi/2 around the real ``x`` axis, and for large
    ``df`` it is close to a Gaussian of width ``sqrt(2/df)`` (theory/derivation.md, eq. (3.8)).
    """
    left, right = _gamma_log_range_host(float(df))
    h = min(0.25, 0.5 * math.sqrt(2.0 / df))
    n = int(math.ceil((right - left) / h)) + 1
    return max(64, 32 * math.ceil(n / 32))


@frozen_pytree
class StudentT(_Law):
    """Student-t noise with ``df`` degrees of freedom and scale ``scale`` (Cauchy: ``df=1``).

    ``scale = 0`` is the noiseless law (a point mass at 0), whatever ``df``: its moments are 0 and
    its factors are exactly those of ``Gaussian(0)``, although ``scale * t_df`` has no moments for
    ``df <= 2`` when ``scale > 0``.

    Args:
        df: degrees of freedom, within :data:`DF_RANGE` ``= [0.01, 1e6]``.
        scale: scale: ``0`` (noiseless) or within ``[1e-100, 1e100]``.
        n_nodes: quadrature nodes in ``log tau`` (static). Chosen from ``df`` when ``df`` is a
            concrete number; give it explicitly when ``df`` is traced (the default 2048 is
            accurate to 1e-8 for ``df >= 0.25``).
    """

    df: ArrayLike = 3.0
    scale: ArrayLike = 1.0
    n_nodes: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    def __post_init__(self):
        validation.single("df", self.df, owner="student-t")
        validation.single("scale", self.scale, owner="student-t")
        lo, hi = DF_RANGE
        if _is_concrete(self.df) and np.issubdtype(np.asarray(self.df).dtype, np.floating):
            # The bounds in df's own precision: df = 0.01 cast for a float32 simulation stays in.
            kind = np.asarray(self.df).dtype
            with np.errstate(over="ignore"):  # 1e6 is inf in float16, whose df all lie below it
                lo, hi = float(np.asarray(lo, kind)), float(np.asarray(hi, kind))
        check_value("student-t", "df", self.df, lambda a: (a >= lo) & (a <= hi),
                    f"within [{validation.number_text(lo)}, {validation.number_text(hi)}] "
                    "(for larger df the law is Gaussian: use gaussian)")
        validation.nonnegative("scale", self.scale, owner="student-t")
        if self.n_nodes is not None:
            # df = 0.01, the least allowed, needs 36 864 nodes; far more only costs memory.
            object.__setattr__(self, "n_nodes", validation.integer("n_nodes", self.n_nodes, 2,
                                                                   high=2**17, owner="student-t"))
            if (_is_concrete(self.df) and np.ndim(self.df) == 0 and not validation.is_rebuilding()
                    and self.n_nodes < (need := _student_nodes(float(self.df)))):
                # n_nodes=3 gave mu = 1.6e-11 for 0.579; 64 nodes are 43 % off at df = 0.3.
                raise ValueError(
                    f"student-t: n_nodes={self.n_nodes} is not allowed for df={self.df:g}; the "
                    f"quadrature needs at least {need} nodes there (omit n_nodes to have them chosen)")
        if self.n_nodes is None and _is_concrete(self.df) and np.ndim(self.df) == 0:
            object.__setattr__(self, "n_nodes", _student_nodes(float(self.df)))

    @uses_x64
    def sample(self, key: Array, shape=(), dtype=jnp.float32) -> Array:
        df = jnp.asarray(self.df, dtype)
        return jnp.asarray(self.scale, dtype) * jax.random.t(key, df, shape, dtype)

    @property
    @uses_x64
    def mean(self) -> Array:
        df = jnp.asarray(self.df, float)
        noiseless = jnp.asarray(self.scale, float) == 0
        return jnp.where((df > 1.0) | noiseless, 0.0, jnp.nan)

    @property
    @uses_x64
    def second_moment(self) -> Array:
        df = jnp.asarray(self.df, float)
        s2 = jnp.square(jnp.asarray(self.scale, float))
        # scale = 0 is a point mass at 0 for every df: E[eps^2] = 0, not 0 * inf.
        return jnp.where(df > 2.0, s2 * df / jnp.where(df > 2.0, df - 2.0, 1.0),
                         jnp.where(s2 == 0, 0.0, jnp.inf))

    @uses_x64
    def gaussian_mixture(self) -> MixtureRep:
        df = jnp.asarray(self.df, float)
        n = self.n_nodes if self.n_nodes is not None else 2048
        left, right = _gamma_log_range(df)
        h = (right - left) / (n - 1)
        x = left + h * jnp.arange(n, dtype=df.dtype)
        k = 0.5 * df
        # Trapezoidal weights of the density of x = log tau (eq. (3.7)); the end points carry
        # density exp(-46) of the peak, so the rule is effectively on the whole line.
        logw = k * jnp.log(k) - gammaln(k) + k * (x - jnp.exp(x)) + jnp.log(h)
        s2 = jnp.square(jnp.asarray(self.scale, float))
        weights = jnp.exp(logw)
        # At scale 0 every component is the atom at 0; normalising makes the weights sum to 1
        # exactly, so the factors equal Gaussian(0)'s to rounding, not to the quadrature's 1e-16.
        weights = jnp.where(s2 == 0, weights / jnp.sum(weights), weights)
        return MixtureRep(weights, None, s2 * jnp.exp(-x))


def cauchy(scale: ArrayLike = 1.0) -> StudentT:
    """Cauchy noise: Student-t with one degree of freedom."""
    validation.single("scale", scale, owner="cauchy")
    validation.nonnegative("scale", scale, owner="cauchy")  # named as typed, not as student-t
    return StudentT(df=1.0, scale=scale)


@frozen_pytree
class Rademacher(_ScaledSymmetric):
    """Symmetric two-point noise ``+-sigma`` with probability 1/2 each.

    Args:
        sigma: the magnitude: ``0`` (noiseless) or within ``[1e-100, 1e100]``.
    """

    sigma: ArrayLike = 1.0
    _owner = "rademacher"
    _standard = staticmethod(jax.random.rademacher)

    @uses_x64
    def gaussian_mixture(self) -> MixtureRep:
        s = jnp.asarray(self.sigma, float)
        means = jnp.stack([s, -s])
        return MixtureRep(jnp.full((2,), 0.5), means, jnp.zeros((2,)))


@frozen_pytree
class GaussianMixture(_Law):
    """A finite mixture of Gaussians ``sum_j w_j N(m_j, s_j^2)``; may be asymmetric.

    Args:
        weights: mixture weights, ``>= 0`` and summing to 1 within :data:`WEIGHTS_TOL` (they are
            then rescaled to sum to 1 exactly; weights that do not sum to 1 are refused rather
            than silently normalised).
        means: component means: ``0`` or of magnitude within ``[1e-100, 1e100]``.
        sigmas: component standard deviations: ``0`` (an atom) or within ``[1e-100, 1e100]``.
    """

    weights: ArrayLike
    means: ArrayLike
    sigmas: ArrayLike

    def __post_init__(self):
        w, m, s = self.weights, self.means, self.sigmas
        if all(_is_concrete(v) for v in (w, m, s)):
            for name, v in (("weights", w), ("means", m), ("sigmas", s)):
                validation.check_real("mixture", name, v)
            shapes = {np.shape(w), np.shape(m), np.shape(s)}
            if len(shapes) != 1 or np.ndim(w) != 1 or np.size(w) == 0:
                raise ValueError(
                    "mixture: weights, means and sigmas must be non-empty 1-D lists of the same "
                    f"length; got shapes {[np.shape(v) for v in (w, m, s)]}"
                )
            check_value("mixture", "weights", w, lambda a: np.isfinite(a) & (a >= 0), "finite and >= 0")
            with np.errstate(over="ignore"):
                total = float(np.sum(np.asarray(w, float)))
            # Weights stored in a narrower float (the law cast for a float32 simulation) carry
            # that float's rounding: 0.9 and 0.1 in float32 sum to 1 - 2.2e-8.
            kind = np.asarray(w).dtype
            tol = max(WEIGHTS_TOL, 4 * np.size(w) * float(np.finfo(kind).eps)
                      if np.issubdtype(kind, np.floating) else 0.0)
            if not abs(total - 1.0) <= tol:
                raise ValueError(
                    f"mixture: weights={np.asarray(w, float).tolist()} is not allowed; weights must "
                    f"sum to 1 (within {tol:g}); they sum to {total:.12g}"
                )
            validation.magnitude("means", m, owner="mixture")
            validation.nonnegative("sigmas", s, owner="mixture")
            object.__setattr__(self, "weights", np.asarray(w, float) / total)
            object.__setattr__(self, "means", np.asarray(m, float))
            object.__setattr__(self, "sigmas", np.asarray(s, float))

    @uses_x64
    def sample(self, key: Array, shape=(), dtype=jnp.float32) -> Array:
        k1, k2 = jax.random.split(key)
        w = jnp.asarray(self.weights, dtype)
        idx = jax.random.categorical(k1, jnp.log(w), shape=shape)
        z = jax.random.normal(k2, shape, dtype)
        return jnp.asarray(self.means, dtype)[idx] + jnp.asarray(self.sigmas, dtype)[idx] * z

    @property
    @uses_x64
    def mean(self) -> Array:
        return jnp.sum(jnp.asarray(self.weights, float) * jnp.asarray(self.means, float))

    @property
    @uses_x64
    def second_moment(self) -> Array:
        m, s = jnp.asarray(self.means, float), jnp.asarray(self.sigmas, float)
        return jnp.sum(jnp.asarray(self.weights, float) * (m * m + s * s))

    @property
    @uses_x64
    def scale(self) -> Array:
        return jnp.sqrt(self.second_moment)

    @uses_x64
    def gaussian_mixture(self) -> MixtureRep:
        w = jnp.asarray(self.weights, float)
        return MixtureRep(
            w / jnp.sum(w),
            jnp.asarray(self.means, float),
            jnp.square(jnp.asarray(self.sigmas, float)),
        )


@frozen_pytree
class Empirical(_Law):
    """The empirical law of a sample of residuals: uniform over ``atoms``.

    Args:
        atoms: the observed residuals: a non-empty 1-D array of finite real numbers of magnitude
            at most 1e100 (their squares are summed in float64; atoms below 1e-100 in magnitude
            act as 0). Arrays of other shapes are refused rather than flattened.
    """

    atoms: ArrayLike

    def __post_init__(self):
        a = self.atoms
        # Not while JAX rebuilds it: a schedule that carries the law (max-CCC) is stacked over
        # configurations, which gives the atoms a leading axis.
        if _is_concrete(a) and not validation.is_rebuilding():
            if np.size(a) == 0:
                raise ValueError("empirical: atoms must contain at least one value; got none")
            arr = validation.real_vector(a, "empirical: atoms")
            bad = ~(np.abs(arr) <= validation.MAX_MAGNITUDE)
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(
                    f"empirical: atoms[{i}]={float(arr[i])!r} is not allowed; atoms must be finite, "
                    f"with magnitude <= {validation.number_text(validation.MAX_MAGNITUDE)} (their "
                    f"squares are summed in float64); {int(bad.sum())} such value(s)"
                )
            object.__setattr__(self, "atoms", arr)

    @uses_x64
    def sample(self, key: Array, shape=(), dtype=jnp.float32) -> Array:
        a = jnp.ravel(jnp.asarray(self.atoms, dtype))
        return a[jax.random.randint(key, shape, 0, a.shape[0])]

    @property
    @uses_x64
    def mean(self) -> Array:
        return jnp.mean(jnp.asarray(self.atoms, float))

    @property
    @uses_x64
    def second_moment(self) -> Array:
        return jnp.mean(jnp.square(jnp.asarray(self.atoms, float)))

    @property
    @uses_x64
    def scale(self) -> Array:
        return jnp.sqrt(self.second_moment)

    @uses_x64
    def gaussian_mixture(self) -> MixtureRep:
        a = jnp.ravel(jnp.asarray(self.atoms, float))
        n = a.shape[0]
        return MixtureRep(jnp.full((n,), 1.0 / n), a, jnp.zeros((n,)))


NoiseLaw = Gaussian | StudentT | Rademacher | GaussianMixture | Empirical
