"""Learning-rate and clipping-threshold schedules, shared by the ODE and the simulators.

A schedule is a pytree with ``__call__(t, R) -> (eta, c)``: the dimension-free learning rate and
threshold at ODE time ``t = k / Tr K`` when the current risk is ``R``. Constants, functions of
time and feedback rules of ``R`` all have this form, so both engines consume the same object and
their curves are comparable. Array-valued parameters can be traced and vmapped (sweeps build
batched schedules and ``vmap`` over them).

Feedback rules use the compensated learning rate ``eta / mu_{c_t}(R_t)`` (THEORY.md section 4), so
the drift matches unclipped SGD with learning rate ``eta``.

References:
    Marshall, Xiao, Agarwala, Paquette, arXiv 2406.11733, section 4; theory/derivation.md, section 5.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from clipdyn import factors, validation
from clipdyn.noise import NoiseLaw, check_value, frozen_pytree
from clipdyn.precision import uses_x64

Array = jax.Array

__all__ = [
    "Constant",
    "TimeVarying",
    "StepDecay",
    "PiecewiseConstant",
    "MaxCCC",
    "Heuristic",
    "constant",
    "max_ccc",
    "heuristic",
]


def _check_eta(eta) -> None:
    check_value("schedule", "eta", eta, lambda a: np.isfinite(a) & (a > 0), "finite and > 0")


def _check_clip(c) -> None:
    validation.threshold("clip", c, owner="schedule")


def _like(x, R: Array) -> Array:
    return jnp.asarray(x, R.dtype)


@frozen_pytree
class Constant:
    """Constant learning rate ``eta`` and threshold ``clip`` (``inf``: unclipped SGD)."""

    eta: ArrayLike
    clip: ArrayLike = math.inf

    def __post_init__(self):
        _check_eta(self.eta)
        _check_clip(self.clip)

    def __call__(self, t: Array, R: Array) -> tuple[Array, Array]:
        return _like(self.eta, R), _like(self.clip, R)


def constant(eta: ArrayLike, clip: ArrayLike = math.inf) -> Constant:
    """A constant schedule; ``clip=inf`` is unclipped SGD."""
    return Constant(eta, clip)


@frozen_pytree
class TimeVarying:
    """``eta(t)`` and ``clip(t)`` given as JAX-traceable functions of time (or constants).

    The functions are static: each new function compiles anew, so prefer the parametrised
    schedules (:class:`StepDecay`, :class:`PiecewiseConstant`) inside sweeps.
    """

    eta_fn: Callable | float = dataclasses.field(metadata=dict(static=True))
    clip_fn: Callable | float = dataclasses.field(default=math.inf, metadata=dict(static=True))

    def __post_init__(self):
        # Each is a function of t or a constant; a constant is checked like Constant's.
        if not callable(self.eta_fn):
            validation.positive("eta_fn", self.eta_fn, owner="time-varying", bounded=False)
        if not callable(self.clip_fn):
            validation.threshold("clip_fn", self.clip_fn, owner="time-varying")

    def __call__(self, t: Array, R: Array) -> tuple[Array, Array]:
        eta = self.eta_fn(t) if callable(self.eta_fn) else self.eta_fn
        c = self.clip_fn(t) if callable(self.clip_fn) else self.clip_fn
        return _like(eta, R), _like(c, R)


@frozen_pytree
class StepDecay:
    """``eta * factor^floor(t / every)`` with a constant threshold."""

    eta: ArrayLike
    factor: ArrayLike
    every: ArrayLike
    clip: ArrayLike = math.inf

    def __post_init__(self):
        _check_eta(self.eta)
        check_value("step-decay", "factor", self.factor, lambda a: (a > 0) & (a <= 1), "in (0, 1]")
        check_value("step-decay", "every", self.every, lambda a: a > 0, "> 0")
        _check_clip(self.clip)

    def __call__(self, t: Array, R: Array) -> tuple[Array, Array]:
        k = jnp.floor(_like(t, R) / _like(self.every, R))
        return _like(self.eta, R) * _like(self.factor, R) ** k, _like(self.clip, R)


@frozen_pytree
class PiecewiseConstant:
    """Learning rate ``etas[j]`` on ``[boundaries[j-1], boundaries[j])``, constant threshold.

    ``boundaries`` has one entry fewer than ``etas``; the last value holds for ever.
    """

    boundaries: ArrayLike
    etas: ArrayLike
    clip: ArrayLike = math.inf

    def __post_init__(self):
        b, e = self.boundaries, self.etas
        check_value("piecewise", "boundaries", b, lambda a: np.isfinite(a), "finite")
        _check_eta(e)
        _check_clip(self.clip)
        if validation.is_concrete(b) and validation.is_concrete(e):
            # Batched schedules (a sweep's, leading axis C) hold one such pair per row.
            sb, se = np.shape(b), np.shape(e)
            if len(se) < 1 or len(sb) != len(se) or sb[:-1] != se[:-1] or se[-1] != sb[-1] + 1:
                raise ValueError(
                    "piecewise: boundaries and etas must be 1-D with len(etas) = len(boundaries) + 1; "
                    f"got shapes {sb} and {se}"
                )
            if np.any(np.diff(np.asarray(b, float), axis=-1) <= 0):
                raise ValueError(f"piecewise: boundaries={np.asarray(b, float).tolist()} is not "
                                 "allowed; boundaries must be increasing")

    def __call__(self, t: Array, R: Array) -> tuple[Array, Array]:
        j = jnp.searchsorted(_like(self.boundaries, R), _like(t, R), side="right")
        return _like(self.etas, R)[j], _like(self.clip, R)


@frozen_pytree
class MaxCCC:
    """The max-CCC schedule: ``c_t = argmax_c CCC_c(R_t)``, ``eta_t = eta / mu_{c_t}(R_t)``.

    The optimal threshold is tabulated once (:func:`max_ccc`) on a log grid of ``R`` as
    ``u = c* / (c* + sqrt(2R + scale^2))`` in ``[0, 1]`` (``u = 1``: no clipping) and
    interpolated linearly in ``log R``; the compensation ``mu`` is evaluated exactly at the
    threshold used. Build it with :func:`max_ccc`.
    """

    eta: ArrayLike
    noise: NoiseLaw
    log_R: Array
    u: Array
    rule: object = None

    @uses_x64
    def threshold(self, R: Array) -> Array:
        R = jnp.asarray(R)
        u = jnp.interp(jnp.log(R), _like(self.log_R, R), _like(self.u, R))
        unit = factors.threshold_unit(self.noise, R)
        return jnp.where(u >= 1.0 - 1e-9, jnp.inf, unit * u / jnp.maximum(1.0 - u, 1e-9))

    @uses_x64
    def __call__(self, t: Array, R: Array) -> tuple[Array, Array]:
        c = self.threshold(R)
        m = factors.mu(self.noise, R, c, self.rule).astype(R.dtype)
        return _like(self.eta, R) / m, c


@uses_x64
def max_ccc(
    eta: ArrayLike, noise: NoiseLaw, *, R_min: float = 1e-14, R_max: float = 1e8, points: int = 321,
    rule=None,
) -> MaxCCC:
    """Tabulate the max-CCC schedule for ``noise`` (theory/derivation.md, eq. (5.1)).

    Args:
        eta: base learning rate (the compensated rate is ``eta / mu``).
        noise: the noise law.
        R_min, R_max: tabulated range of ``R`` in units of ``scale^2`` (clamped outside).
        points: grid points (0.07 decades apart by default; ``c*`` varies slowly in ``log R``).
        rule: a :class:`clipdyn.rules.ClipRule`: its CCC picks the threshold and its ``mu``
            compensates the learning rate (default: the paper's one-sample C-SGD).

    Returns:
        The :class:`MaxCCC` schedule.

    Raises:
        ValueError: for a bad ``eta``, law, ``R_min``/``R_max`` or ``points``.
    """
    _check_eta(eta)
    validation.noise_law(noise)
    validation.positive("R_min", R_min, owner="max-ccc")
    validation.positive("R_max", R_max, owner="max-ccc")
    if not R_min < R_max:
        raise ValueError(f"max-ccc: R_min={R_min} and R_max={R_max} are not allowed; R_min must be < R_max")
    points = validation.integer("points", points, 2, owner="max-ccc")
    s = float(noise.scale) if np.isfinite(float(noise.scale)) and float(noise.scale) > 0 else 1.0
    log_R = jnp.linspace(math.log(R_min * s * s), math.log(R_max * s * s), points)
    R = jnp.exp(log_R)
    c_star = jax.jit(lambda r: factors.optimal_threshold(noise, r, rule=rule))(R)
    unit = factors.threshold_unit(noise, R)
    u = jnp.where(jnp.isinf(c_star), 1.0, c_star / (c_star + unit))
    return MaxCCC(eta, noise, log_R, u, rule)


@frozen_pytree
class Heuristic:
    """The one-parameter schedule ``c_t = kappa sqrt(2 R_t + sigma^2)``, ``eta_t = eta / mu``.

    ``sigma^2`` defaults to the law's ``E[eps^2]``; for laws without one (Cauchy, Student-t with
    ``df <= 2``) pass a finite ``sigma2`` explicitly (for example ``scale^2``).
    """

    eta: ArrayLike
    kappa: ArrayLike
    noise: NoiseLaw
    sigma2: ArrayLike
    rule: object = None

    @uses_x64
    def threshold(self, R: Array) -> Array:
        return _like(self.kappa, R) * jnp.sqrt(2.0 * R + _like(self.sigma2, R))

    @uses_x64
    def __call__(self, t: Array, R: Array) -> tuple[Array, Array]:
        c = self.threshold(R)
        m = factors.mu(self.noise, R, c, self.rule).astype(R.dtype)
        return _like(self.eta, R) / m, c


@uses_x64
def heuristic(
    eta: ArrayLike, kappa: ArrayLike, noise: NoiseLaw, sigma2: ArrayLike | None = None, rule=None
) -> Heuristic:
    """The heuristic schedule of the paper's v2 (theory/derivation.md, eq. (5.2)).

    Raises:
        ValueError: for ``kappa <= 0`` or a law of infinite variance with no ``sigma2`` given.
    """
    _check_eta(eta)
    validation.noise_law(noise)
    check_value("heuristic", "kappa", kappa, lambda a: np.isfinite(a) & (a > 0), "finite and > 0")
    if sigma2 is None:
        sigma2 = noise.second_moment
        if not np.isfinite(float(sigma2)):
            raise ValueError(
                "heuristic: the noise law has infinite variance, so kappa*sqrt(2R + sigma^2) is "
                "undefined; give sigma2 explicitly (e.g. heuristic:kappa=K,sigma2=S) or use max-ccc"
            )
    check_value("heuristic", "sigma2", sigma2, lambda a: np.isfinite(a) & (a >= 0), "finite and >= 0")
    return Heuristic(eta, kappa, noise, sigma2, rule)
