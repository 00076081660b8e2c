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
  :mod:`clipdyn.factors` are averages of closed-form Gaussian quantities over this mixture.

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

Array = jax.Array

__all__ = [
    "Gaussian",
    "StudentT",
    "Rademacher",
    "GaussianMixture",
    "Empirical",
    "cauchy",
    "MixtureRep",
    "NoiseLaw",
    "check_value",
    "frozen_pytree",
    "cast_floats",
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
    return not isinstance(x, jax.core.Tracer) and isinstance(
        x, (int, float, list, tuple, np.ndarray, np.generic, jax.Array)
    )


def check_value(law: str, name: str, value, ok, allowed: str) -> None:
    """Raise ``ValueError`` naming the bad value, when ``value`` is concrete."""
    if not _is_concrete(value):
        return
    arr = np.asarray(value, dtype=float)
    if arr.size == 0 or not bool(np.all(ok(arr))):
        shown = arr.tolist() if arr.size <= 8 else f"array of shape {arr.shape}"
        raise ValueError(f"{law}: {name}={shown} is not allowed; {name} must be {allowed}")


def frozen_pytree(cls):
    """A frozen dataclass registered as a JAX pytree (fields marked ``static`` are metadata)."""
    return jax.tree_util.register_dataclass(dataclasses.dataclass(frozen=True)(cls))


def cast_floats(tree, dtype):
    """``tree`` with its floating leaves cast to ``dtype`` (other leaves untouched)."""

    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def _finite_nonneg(a):
    return np.isfinite(a) & (a >= 0)


class _Law:
    """Shared helpers; the laws below implement the interface described in the module doc."""

    def astype(self, dtype) -> "_Law":
        """The same law with floating parameters cast to ``dtype`` (for float32 simulation)."""
        return cast_floats(self, dtype)

    @property
    def variance(self) -> Array:
        m = jnp.asarray(self.mean)
        return jnp.where(jnp.isfinite(m), self.second_moment - m * m, jnp.inf)


@frozen_pytree
class Gaussian(_Law):
    """Gaussian noise ``N(0, sigma^2)``.

    Args:
        sigma: standard deviation, ``>= 0`` (``0`` is noiseless).
    """

    sigma: ArrayLike = 1.0

    def __post_init__(self):
        check_value("gaussian", "sigma", self.sigma, _finite_nonneg, "finite and >= 0")

    def sample(self, key: Array, shape=(), dtype=jnp.float32) -> Array:
        return jnp.asarray(self.sigma, dtype) * jax.random.normal(key, shape, dtype)

    @property
    def mean(self) -> Array:
        return jnp.zeros_like(jnp.asarray(self.sigma, float))

    @property
    def second_moment(self) -> Array:
        return jnp.square(jnp.asarray(self.sigma, float))

    @property
    def scale(self) -> Array:
        return jnp.asarray(self.sigma, float)

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


def _student_nodes(df: float) -> int:
    """Static node count for the Student-t quadrature at a concrete ``df``.

    The step ``h = min(0.25, 0.5 sqrt(2/df))`` keeps the trapezoidal error below 1e-16: the
    integrand is analytic in a strip of half-width pi/2 around the real ``x`` axis, and for large
    ``df`` it is close to a Gaussian of width ``sqrt(2/df)`` (theory/derivation.md, eq. (3.8)).
    """
    left, right = (float(v) for v in _gamma_log_range(np.float64(df)))
    h = min(0.25, 0.5 * math.sqrt(2.0 / df))
    n = int(math.ceil((right - left) / h)) + 1
    return max(64, 32 * math.ceil(n / 32))


@frozen_pytree
class StudentT(_Law):
    """Student-t noise with ``df > 0`` degrees of freedom and scale ``scale`` (Cauchy: ``df=1``).

    Args:
        df: degrees of freedom, ``> 0``.
        scale: scale, ``>= 0``.
        n_nodes: quadrature nodes in ``log tau`` (static). Chosen from ``df`` when ``df`` is a
            concrete number; give it explicitly when ``df`` is traced (the default 2048 is
            accurate to 1e-8 for ``df >= 0.25``).
    """

    df: ArrayLike = 3.0
    scale: ArrayLike = 1.0
    n_nodes: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    def __post_init__(self):
        check_value("student-t", "df", self.df, lambda a: np.isfinite(a) & (a > 0), "finite and > 0")
        check_value("student-t", "scale", self.scale, _finite_nonneg, "finite and >= 0")
        if self.n_nodes is None and _is_concrete(self.df) and np.ndim(self.df) == 0:
            object.__setattr__(self, "n_nodes", _student_nodes(float(self.df)))

    def sample(self, key: Array, shape=(), dtype=jnp.float32) -> Array:
        df = jnp.asarray(self.df, dtype)
        return jnp.asarray(self.scale, dtype) * jax.random.t(key, df, shape, dtype)

    @property
    def mean(self) -> Array:
        df = jnp.asarray(self.df, float)
        return jnp.where(df > 1.0, 0.0, jnp.nan)

    @property
    def second_moment(self) -> Array:
        df = jnp.asarray(self.df, float)
        s2 = jnp.square(jnp.asarray(self.scale, float))
        return jnp.where(df > 2.0, s2 * df / jnp.where(df > 2.0, df - 2.0, 1.0), jnp.inf)

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
        variances = jnp.square(jnp.asarray(self.scale, float)) * jnp.exp(-x)
        return MixtureRep(jnp.exp(logw), None, variances)


def cauchy(scale: ArrayLike = 1.0) -> StudentT:
    """Cauchy noise: Student-t with one degree of freedom."""
    return StudentT(df=1.0, scale=scale)


@frozen_pytree
class Rademacher(_Law):
    """Symmetric two-point noise ``+-sigma`` with probability 1/2 each.

    Args:
        sigma: the magnitude, ``>= 0``.
    """

    sigma: ArrayLike = 1.0

    def __post_init__(self):
        check_value("rademacher", "sigma", self.sigma, _finite_nonneg, "finite and >= 0")

    def sample(self, key: Array, shape=(), dtype=jnp.float32) -> Array:
        return jnp.asarray(self.sigma, dtype) * jax.random.rademacher(key, shape, dtype)

    @property
    def mean(self) -> Array:
        return jnp.zeros_like(jnp.asarray(self.sigma, float))

    @property
    def second_moment(self) -> Array:
        return jnp.square(jnp.asarray(self.sigma, float))

    @property
    def scale(self) -> Array:
        return jnp.asarray(self.sigma, float)

    def gaussian_mixture(self) -> MixtureRep:
        s = jnp.asarray(self.sigma, float)
        means = jnp.stack([s, -s])
        return MixtureRep(jnp.full((2,), 0.5), means, jnp.zeros((2,)))


@frozen_pytree
class GaussianMixture(_Law):
    """A finite mixture of Gaussians ``sum_j w_j N(m_j, s_j^2)``; may be asymmetric.

    Args:
        weights: non-negative mixture weights (normalised here to sum to one).
        means: component means.
        sigmas: component standard deviations, ``>= 0`` (``0`` gives an atom).
    """

    weights: ArrayLike
    means: ArrayLike
    sigmas: ArrayLike

    def __post_init__(self):
        w, m, s = self.weights, self.means, self.sigmas
        if all(_is_concrete(v) for v in (w, m, s)):
            shapes = {np.shape(w), np.shape(m), np.shape(s)}
            if len(shapes) != 1 or np.ndim(w) != 1:
                raise ValueError(
                    "mixture: weights, means and sigmas must be 1-D lists of the same length; "
                    f"got lengths {[np.size(v) for v in (w, m, s)]}"
                )
            check_value("mixture", "weights", w, _finite_nonneg, "finite and >= 0")
            if float(np.sum(w)) <= 0:
                raise ValueError("mixture: weights must not all be zero")
            check_value("mixture", "means", m, np.isfinite, "finite")
            check_value("mixture", "sigmas", s, _finite_nonneg, "finite and >= 0")
            object.__setattr__(self, "weights", np.asarray(w, float) / np.sum(w))
            object.__setattr__(self, "means", np.asarray(m, float))
            object.__setattr__(self, "sigmas", np.asarray(s, float))

    def sample(self, key: Array, shape=(), dtype=jnp.float32) -> Array:
        k1, k2 = jax.random.split(key)
        w = jnp.asarray(self.weights, dtype)
        idx = jax.random.categorical(k1, jnp.log(w), shape=shape)
        z = jax.random.normal(k2, shape, dtype)
        return jnp.asarray(self.means, dtype)[idx] + jnp.asarray(self.sigmas, dtype)[idx] * z

    @property
    def mean(self) -> Array:
        return jnp.sum(jnp.asarray(self.weights, float) * jnp.asarray(self.means, float))

    @property
    def second_moment(self) -> Array:
        m, s = jnp.asarray(self.means, float), jnp.asarray(self.sigmas, float)
        return jnp.sum(jnp.asarray(self.weights, float) * (m * m + s * s))

    @property
    def scale(self) -> Array:
        return jnp.sqrt(self.second_moment)

    def gaussian_mixture(self) -> MixtureRep:
        w = jnp.asarray(self.weights, float)
        return MixtureRep(
            w / jnp.sum(w),
            jnp.asarray(self.means, float),
            jnp.square(jnp.asarray(self.sigmas, float)),
        )


@frozen_pytree
class Empirical(_Law):
    """The empirical law of a sample of residuals: uniform over ``atoms`` (any shape, flattened).

    Args:
        atoms: the observed residuals, finite, at least one.
    """

    atoms: ArrayLike

    def __post_init__(self):
        a = self.atoms
        if _is_concrete(a):
            arr = np.asarray(a, float).ravel()
            if arr.size == 0:
                raise ValueError("empirical: atoms must contain at least one value; got none")
            if not np.all(np.isfinite(arr)):
                raise ValueError(
                    f"empirical: atoms must be finite; got {int(np.sum(~np.isfinite(arr)))} "
                    "non-finite value(s)"
                )
            object.__setattr__(self, "atoms", arr)

    def sample(self, key: Array, shape=(), dtype=jnp.float32) -> Array:
        a = jnp.ravel(jnp.asarray(self.atoms, dtype))
        return a[jax.random.randint(key, shape, 0, a.shape[0])]

    @property
    def mean(self) -> Array:
        return jnp.mean(jnp.asarray(self.atoms, float))

    @property
    def second_moment(self) -> Array:
        return jnp.mean(jnp.square(jnp.asarray(self.atoms, float)))

    @property
    def scale(self) -> Array:
        return jnp.sqrt(self.second_moment)

    def gaussian_mixture(self) -> MixtureRep:
        a = jnp.ravel(jnp.asarray(self.atoms, float))
        n = a.shape[0]
        return MixtureRep(jnp.full((n,), 1.0 / n), a, jnp.zeros((n,)))


NoiseLaw = Gaussian | StudentT | Rademacher | GaussianMixture | Empirical
