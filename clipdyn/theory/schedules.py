"""Learning-rate and clipping-threshold schedules, shared by the ODE and the simulators.

A schedule is a pytree with ``__call__(t, R) -> (eta, c)``: the dimension-free learning rate and
threshold at ODE time ``t = k / Tr K`` when the current risk is ``R``. Constants, functions of
time and feedback rules of ``R`` all have this form, so both engines consume the same object and
their curves are comparable (all but :class:`TimeVarying`, whose static functions the simulators
cannot batch). Array-valued parameters can be traced and vmapped (sweeps build
batched schedules and ``vmap`` over them).

Feedback rules use the compensated learning rate ``eta / mu_{c_t}(R_t)`` (THEORY.md section 4), so
the drift matches unclipped SGD with learning rate ``eta``.

References:
    Marshall, Xiao, Agarwala, Paquette, arXiv 2406.11733, section 4; theory/derivation.md, section 5.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from clipdyn import validation
from clipdyn.precision import uses_x64
from clipdyn.pytrees import content_hash, frozen_pytree
from clipdyn.theory import factors
from clipdyn.theory.noise import NoiseLaw
from clipdyn.validation import check_value

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
    "with_mu_table",
    "heuristic",
    "values_allowed",
    "checks_values",
    "guard_rate",
]


def _check_eta(eta) -> None:
    # Within the magnitude bounds, as the command line's --eta: 1e300 squared overflows.
    validation.positive("eta", eta, owner="schedule")


def _check_clip(c) -> None:
    validation.threshold("clip", c, owner="schedule")


def _like(x, R: Array) -> Array:
    return jnp.asarray(x, R.dtype)


def _no_jump(self, t: Array) -> Array:
    """No jump in time (``inf``): see :meth:`StepDecay.next_jump`."""
    return jnp.full_like(t, jnp.inf)


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

    next_jump = _no_jump


def constant(eta: ArrayLike, clip: ArrayLike = math.inf) -> Constant:
    """A constant schedule; ``clip=inf`` is unclipped SGD."""
    return Constant(eta, clip)


@frozen_pytree
class TimeVarying:
    """``eta(t)`` and ``clip(t)`` given as JAX-traceable functions of time (or constants).

    The functions are static: each new function compiles anew. The ODE takes it; the simulators
    do not (a sweep batches its schedules' array parameters, and this one has none): use the
    parametrised schedules (:class:`StepDecay`, :class:`PiecewiseConstant`) there. The ODE
    solver evaluates the functions at its stages' times, as for any smooth coefficient: a jump
    (of a learning rate, on a stiff spectrum) is met better by :class:`PiecewiseConstant`,
    whose jumps the solver's steps end at (:meth:`StepDecay.next_jump`).
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

    def next_jump(self, t: Array) -> Array:
        """The first time after ``t`` where the schedule may jump (``inf``: none).

        The schedules with this method are constant in ``t`` between their jumps; the ODE solver
        ends a step at each jump and evaluates the schedule once per step (at its middle), so
        no step straddles a jump. A step whose last stages saw the new rate (stiff modes make
        that an error no step size removes) stopped the solver with "step size underflow".
        The jump's float is ``k every`` rounded, which may lie an ulp from where ``floor(t /
        every)`` changes: a step then gets the new rate an ulp early, an error of an ulp.
        """
        every = jnp.asarray(self.every, t.dtype)
        nxt = (jnp.floor(t / every) + 1.0) * every
        return jnp.where(nxt > t, nxt, nxt + every)  # t a rounded jump just below k every


@frozen_pytree
class PiecewiseConstant:
    """Learning rate ``etas[j]`` on ``[boundaries[j-1], boundaries[j])``, constant threshold.

    ``boundaries`` has one entry fewer than ``etas``; the last value holds for ever.
    """

    boundaries: ArrayLike
    etas: ArrayLike
    clip: ArrayLike = math.inf

    def __post_init__(self):
        for name in ("boundaries", "etas"):  # lists hold one leaf per entry: stacking them for a
            v = getattr(self, name)          # sweep gave shapes (1, 1) and (2, 1), refused below
            if isinstance(v, (list, tuple)) and validation.is_concrete(v) and not validation.is_rebuilding():
                validation.check_real("piecewise", name, v)
                object.__setattr__(self, name, np.asarray(v, float))
        b, e = self.boundaries, self.etas
        if not (validation.is_concrete(b) and np.size(b) == 0):  # none: one piece, a constant rate
            # Time starts at 0: a piece ending at t <= 0 would never apply.
            check_value("piecewise", "boundaries", b, lambda a: np.isfinite(a) & (a > 0),
                        "finite and > 0 (times after the start, t = 0)")
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

    def next_jump(self, t: Array) -> Array:
        """The first boundary after ``t`` (``inf``: none); see :meth:`StepDecay.next_jump`."""
        b = jnp.append(jnp.asarray(self.boundaries, t.dtype), jnp.inf)
        return b[jnp.searchsorted(b, t, side="right")]


def _interp_uniform(x: Array, x0: Array, x1: Array, ys: Array) -> Array:
    """Linear interpolation of ``ys`` (on ``len(ys)`` evenly spaced points from ``x0`` to ``x1``)
    at ``x``, clamped to the end values outside ``[x0, x1]``.

    The index comes from arithmetic, not a search, so a call costs the same for any table
    length (the engines call schedules once per run and step).
    """
    n = ys.shape[-1]
    pos = jnp.clip((x - x0) / (x1 - x0) * (n - 1), 0.0, n - 1.0)
    i = jnp.minimum(jnp.floor(pos), n - 2.0)
    f = pos - i
    i = i.astype(jnp.int32)
    y0, y1 = ys[i], ys[i + 1]
    # Written so that equal ends (log mu = -inf twice, where mu underflows) give that value.
    return jnp.where(y0 == y1, y0, jnp.where(f > 0, y0 + f * (y1 - y0), y0))


def _hermite_uniform(x: Array, x0: Array, x1: Array, ys: Array, dys: Array) -> Array:
    """Cubic Hermite interpolation of values ``ys`` and slopes ``dys`` (on evenly spaced points
    from ``x0`` to ``x1``) at ``x``, clamped to the end values outside ``[x0, x1]``; linear
    between nodes where a value or slope is not finite (``log mu = -inf`` where ``mu``
    underflows, where the lower end is used)."""
    n = ys.shape[-1]
    h = (x1 - x0) / (n - 1)
    pos = jnp.clip((x - x0) / h, 0.0, n - 1.0)
    i = jnp.minimum(jnp.floor(pos), n - 2.0)
    f = pos - i
    i = i.astype(jnp.int32)
    y0, y1, d0, d1 = ys[i], ys[i + 1], dys[i] * h, dys[i + 1] * h
    f2 = f * f
    f3 = f2 * f
    cubic = ((2.0 * f3 - 3.0 * f2 + 1.0) * y0 + (f3 - 2.0 * f2 + f) * d0
             + (3.0 * f2 - 2.0 * f3) * y1 + (f3 - f2) * d1)
    # Where a node underflowed (log mu = -inf) the lower end is kept: mu is 0 to double precision.
    finite = jnp.isfinite(y0) & jnp.isfinite(y1)
    linear = jnp.where(finite, y0 + f * (y1 - y0), jnp.minimum(y0, y1))
    ok = finite & jnp.isfinite(d0) & jnp.isfinite(d1)
    return jnp.where(ok, cubic, linear)


def _log_mu_fn(noise: NoiseLaw, rule, threshold: Callable) -> Callable:
    """``x -> log mu(R, threshold(R))`` at ``R = e^x`` (scalar, differentiable)."""
    def f(x):
        R = jnp.exp(x)
        c = threshold(R)
        if rule is None or rule.plain:
            m = factors._factors_scalar(noise, R, c)[0]
        else:
            m = rule.ode_factors(noise, R, c).mu
        return jnp.log(m)

    return f


def _mu_table(noise: NoiseLaw, R: Array, c: Array, rule) -> Array:
    """``log mu_c(R)`` (the rule's ``mu``) at the points ``(R, c)``, float64."""
    if rule is None or rule.plain:
        return jnp.log(factors.mu(noise, R, c))
    # A few points at a time: some rules' factors have large intermediate arrays.
    one = jax.jit(lambda rc: jnp.log(rule.ode_factors(noise, rc[0], rc[1]).mu))
    return jax.lax.map(one, jnp.stack([R, c], axis=-1), batch_size=8)


class _Feedback:
    """A schedule whose threshold follows the risk, ``c(R)``, at the learning rate
    ``eta / mu(R, c(R))`` (the descent kept at ``eta``): ``mu`` exact (``log_mu`` is ``None``) or
    from the table built once per schedule (``_log_mu_table``)."""

    reads_risk = True  # the engines must follow R within a block (clipdyn.sim.block)

    next_jump = _no_jump  # the threshold follows R, not t

    @uses_x64
    def __call__(self, t: Array, R: Array) -> tuple[Array, Array]:
        c = self.threshold(R)
        if self.log_mu is None:
            m = factors.mu(self.noise, R, c, self.rule).astype(R.dtype)
        else:
            m = jnp.exp(self._log_mu_table(R))
        return _like(self.eta, R) / m, c


@frozen_pytree
class MaxCCC(_Feedback):
    """The max-CCC schedule: ``c_t = argmax_c CCC_c(R_t)``, ``eta_t = eta / mu_{c_t}(R_t)``.

    The optimal threshold is tabulated once (:func:`max_ccc`) on a log grid of ``R`` as
    ``u = c* / (c* + sqrt(2R + scale^2))`` in ``[0, 1]`` (``u = 1``: no clipping) and
    interpolated linearly in ``log R`` (clamped outside the grid). The compensation
    ``log mu`` at that threshold is tabulated too, on a grid ``refine`` times finer (every
    threshold node is one of its nodes, so ``mu`` is smooth between its nodes), and interpolated
    linearly: a schedule call costs a few operations, not a quadrature over the law, with
    relative error at most 1e-5 in ``mu`` for the default grids (tests/test_feedback_tables.py).
    Without ``log_mu`` (``None``) ``mu`` is evaluated exactly at every call. Build it with
    :func:`max_ccc`.

    Attributes:
        eta: base learning rate.
        noise: the noise law.
        log_R: the threshold grid, evenly spaced in ``log R``.
        u: the threshold table on ``log_R``.
        rule: the clipping rule whose factors define the schedule (``None``: the paper's).
        log_mu: ``log mu`` at the threshold on the fine grid from ``log_R[0]`` to
            ``log_R[-1]``, or ``None``.
    """

    eta: ArrayLike
    noise: NoiseLaw
    log_R: Array
    u: Array
    rule: object = None
    log_mu: Array | None = None

    @uses_x64
    def threshold(self, R: Array) -> Array:
        R = jnp.asarray(R)
        x = _like(self.log_R, R)
        u = _interp_uniform(jnp.log(R), x[..., 0], x[..., -1], _like(self.u, R))
        unit = factors.threshold_unit(self.noise, R)
        return jnp.where(u >= 1.0 - 1e-9, jnp.inf, unit * u / jnp.maximum(1.0 - u, 1e-9))

    def _log_mu_table(self, R: Array) -> Array:
        x = _like(self.log_R, R)
        return _interp_uniform(jnp.log(R), x[..., 0], x[..., -1], _like(self.log_mu, R))


@uses_x64
def max_ccc(
    eta: ArrayLike, noise: NoiseLaw, *, R_min: float = 1e-14, R_max: float = 1e8, points: int = 321,
    rule=None, refine: int = 8,
) -> MaxCCC:
    """Tabulate the max-CCC schedule for ``noise`` (theory/derivation.md, eq. (5.1)).

    Args:
        eta: base learning rate (the compensated rate is ``eta / mu``).
        noise: the noise law.
        R_min, R_max: tabulated range of ``R`` in units of ``scale^2`` (clamped outside).
        points: grid points (0.07 decades apart by default; ``c*`` varies slowly in ``log R``).
        rule: a :class:`clipdyn.theory.rules.ClipRule`: its CCC picks the threshold and its ``mu``
            compensates the learning rate (default: the paper's one-sample C-SGD).
        refine: the ``mu`` table has ``refine`` points per threshold grid interval (an integer
            ``>= 1``; ``0`` keeps no table and evaluates ``mu`` exactly at every call). The
            default 8 keeps the interpolation error below 1e-5 relative (measured and tested).

    Returns:
        The :class:`MaxCCC` schedule.

    Raises:
        ValueError: for a bad ``eta``, law, ``R_min``/``R_max``, ``points`` or ``refine``.
    """
    _check_eta(eta)
    validation.noise_law(noise)
    validation.clip_rule(rule)
    for name, value in (("R_min", R_min), ("R_max", R_max)):
        validation.single(name, value, owner="max-ccc", what="one risk")
        validation.positive(name, value, owner="max-ccc")
    if not R_min < R_max:
        raise ValueError(f"max-ccc: R_min={R_min} and R_max={R_max} are not allowed; R_min must be < R_max")
    points = validation.integer("points", points, 2, high=validation.MAX_POINTS, owner="max-ccc")
    refine = validation.integer("refine", refine, 0, high=_MAX_REFINE, owner="max-ccc")
    s = float(noise.scale) if np.isfinite(float(noise.scale)) and float(noise.scale) > 0 else 1.0
    key = (content_hash((noise, rule)), float(R_min), float(R_max), points, refine)
    tables = _MAX_CCC_TABLES.get(key)
    if tables is None:
        tables = _max_ccc_tables(noise, rule, jnp.asarray(math.log(R_min * s * s)),
                                 jnp.asarray(math.log(R_max * s * s)), points, refine)
        if len(_MAX_CCC_TABLES) >= 64:
            _MAX_CCC_TABLES.pop(next(iter(_MAX_CCC_TABLES)))
        _MAX_CCC_TABLES[key] = tables
    log_R, u, log_mu = tables
    return MaxCCC(eta, noise, log_R, u, rule, log_mu)


# Points per interval of a threshold table's grid for its mu table: the default 8 already puts the
# interpolation error below 1e-5 (theory/derivation.md, section 5); 1e300 asked for 4e303 points.
_MAX_REFINE = 1024

# The tables depend on the law and rule only, not on eta: a sweep over learning rates, or a
# study building the same schedule again, reuses them (keyed by content, so a law with the same
# parameters is the same key; at most 64 kept).
_MAX_CCC_TABLES: dict = {}


@uses_x64
def with_mu_table(schedule: MaxCCC, refine: int = 8) -> MaxCCC:
    """``schedule`` with its ``log mu`` table: ``refine`` points per interval of its threshold
    grid, ``mu`` evaluated exactly (float64) at the schedule's own threshold.

    Args:
        schedule: a :class:`MaxCCC` schedule (for example one built with ``refine=0``, or by
            hand from a threshold table).
        refine: points per threshold grid interval, an integer ``>= 1``.

    Returns:
        A copy of ``schedule`` with ``log_mu`` set.
    """
    if not isinstance(schedule, MaxCCC):
        raise ValueError(f"with_mu_table: schedule must be a MaxCCC schedule; got "
                         f"{type(schedule).__name__}")
    refine = validation.integer("refine", refine, 1, high=_MAX_REFINE, owner="max-ccc")
    return dataclasses.replace(schedule, log_mu=_log_mu_table(schedule, refine))


# The tables are built as one program per kind of law and rule and grid size, not one small
# program per operation (run operation by operation, building a table compiled about a hundred
# of them: 8 of the 11 s a nine-point table took).
@functools.partial(jax.jit, static_argnames="refine")
def _log_mu_table(schedule: MaxCCC, refine: int) -> Array:
    """``log mu`` at the schedule's threshold on its grid refined ``refine`` times."""
    log_R = jnp.asarray(schedule.log_R, float)
    fine = jnp.exp(jnp.linspace(log_R[0], log_R[-1], (log_R.shape[-1] - 1) * refine + 1))
    return _mu_table(schedule.noise, fine, schedule.threshold(fine), schedule.rule)


@functools.partial(jax.jit, static_argnames=("points", "refine"))
def _max_ccc_tables(noise, rule, x0, x1, points: int, refine: int):
    """The max-CCC tables ``(log_R, u, log_mu)`` on ``points`` nodes from ``log R = x0`` to
    ``x1`` (``log_mu`` ``None`` for ``refine = 0``), as one program.

    The threshold search is coarser than :func:`clipdyn.theory.factors.optimal_threshold`'s defaults
    (41 points over 8 decades, 40 golden-section steps: ``log c*`` to about 1e-9): the table is
    read through linear interpolation, whose error is far larger, and CCC is flat at its
    maximum. Student-t factors cost a 2048-node mixture each, so this halves the build time.
    """
    log_R = jnp.linspace(x0, x1, points)
    R = jnp.exp(log_R)
    c_star = factors.optimal_threshold(noise, R, grid=41, iters=40, rule=rule)
    unit = factors.threshold_unit(noise, R)
    u = jnp.where(jnp.isinf(c_star), 1.0, c_star / (c_star + unit))
    log_mu = _log_mu_table(MaxCCC(1.0, noise, log_R, u, rule), refine) if refine else None
    return log_R, u, log_mu


@frozen_pytree
class Heuristic(_Feedback):
    """The one-parameter schedule ``c_t = kappa sqrt(2 R_t + sigma^2)``, ``eta_t = eta / mu``.

    ``sigma^2`` defaults to the law's ``E[eps^2]``; for laws without one (Cauchy, Student-t with
    ``df <= 2``) pass a finite ``sigma2`` explicitly (for example ``scale^2``).

    ``log mu`` at the threshold is tabulated by :func:`heuristic` on a grid evenly spaced in
    ``log R`` (``log_R``, the end points; ``log_mu`` and its ``log R``-derivative ``d_log_mu``,
    from forward-mode autodiff) and interpolated by cubic Hermite polynomials, clamped outside
    the grid, with relative error at most 1e-5 in ``mu`` for the default grid wherever
    ``mu >= 1e-6`` (tests/test_feedback_tables.py); without a table (``None``) ``mu`` is
    evaluated exactly at every call.
    """

    eta: ArrayLike
    kappa: ArrayLike
    noise: NoiseLaw
    sigma2: ArrayLike
    rule: object = None
    log_R: Array | None = None
    log_mu: Array | None = None
    d_log_mu: Array | None = None

    @uses_x64
    def threshold(self, R: Array) -> Array:
        return _like(self.kappa, R) * jnp.sqrt(2.0 * R + _like(self.sigma2, R))

    def _log_mu_table(self, R: Array) -> Array:
        x = _like(self.log_R, R)
        return _hermite_uniform(jnp.log(R), x[..., 0], x[..., -1], _like(self.log_mu, R),
                                _like(self.d_log_mu, R))


@uses_x64
def heuristic(
    eta: ArrayLike, kappa: ArrayLike, noise: NoiseLaw, sigma2: ArrayLike | None = None, rule=None,
    *, R_min: float = 1e-14, R_max: float = 1e12, points: int = 2049,
) -> Heuristic:
    """The heuristic schedule of the paper's v2 (theory/derivation.md, eq. (5.2)).

    Args:
        eta: base learning rate (the compensated rate is ``eta / mu``).
        kappa: the threshold's factor.
        noise: the noise law.
        sigma2: ``sigma^2`` in the threshold (default: the law's ``E[eps^2]``).
        rule: the clipping rule whose ``mu`` compensates the learning rate.
        R_min, R_max: the ``mu`` table's range of ``R``, in units of ``max(sigma^2, scale^2)``.
        points: the ``mu`` table's grid points, evenly spaced in ``log R`` (``0``: no table,
            ``mu`` exact at every call). The default keeps the interpolation error below 1e-5
            relative wherever ``mu >= 1e-6`` (measured and tested).

    Raises:
        ValueError: for ``kappa <= 0`` or a law of infinite variance with no ``sigma2`` given.
    """
    _check_eta(eta)
    validation.noise_law(noise)
    validation.clip_rule(rule)
    # Within the magnitude bounds: kappa = 1e-200 made every threshold 0 and sigma2 = 1e300 a
    # table of nan, both reported as a divergence at t = 0.
    validation.positive("kappa", kappa, owner="heuristic")
    if sigma2 is None:
        sigma2 = noise.second_moment
        if not np.isfinite(float(sigma2)):
            raise ValueError(
                "heuristic: the noise law has infinite variance, so kappa*sqrt(2R + sigma^2) is "
                "undefined; give sigma2 explicitly (e.g. heuristic:kappa=K,sigma2=S) or use max-ccc"
            )
    validation.nonnegative("sigma2", sigma2, owner="heuristic")
    points = validation.integer("points", points, 0, high=validation.MAX_POINTS, owner="heuristic")
    if points:
        for name, value in (("R_min", R_min), ("R_max", R_max)):
            validation.single(name, value, owner="heuristic", what="one risk")
            validation.positive(name, value, owner="heuristic")
        if not R_min < R_max:
            raise ValueError(f"heuristic: R_min={R_min} and R_max={R_max} are not allowed; R_min "
                             "must be < R_max")
        if points < 2:
            raise ValueError(f"heuristic: points={points} is not allowed; use 0 (no table) or >= 2")
    sched = Heuristic(eta, kappa, noise, sigma2, rule)
    scale = float(noise.scale) if np.isfinite(float(noise.scale)) else 0.0
    if points == 0 or np.ndim(kappa) or np.ndim(sigma2) or (float(sigma2) == 0 and scale > 0):
        # No table: batched parameters (build one schedule per value instead), or sigma2 = 0
        # with noise, where mu ~ sqrt(R) keeps changing below any finite grid.
        return sched
    s = math.sqrt(max(float(sigma2), scale * scale)) or 1.0
    log_R = jnp.linspace(math.log(R_min * s * s), math.log(R_max * s * s), points)
    log_mu, slope = _heuristic_table(noise, rule, jnp.asarray(kappa, float),
                                     jnp.asarray(sigma2, float), log_R)
    return dataclasses.replace(sched, log_R=log_R[jnp.array([0, -1])], log_mu=log_mu,
                               d_log_mu=slope)


@jax.jit
def _heuristic_table(noise, rule, kappa, sigma2, log_R):
    """``log mu`` and its ``log R``-derivative on ``log_R`` (one compilation per kind of law and
    rule: the parameters are arguments)."""
    f = _log_mu_fn(noise, rule, lambda R: kappa * jnp.sqrt(2.0 * R + sigma2))
    # A few points at a time: some rules' factors have large intermediate arrays.
    return jax.lax.map(lambda x: jax.jvp(f, (x,), (jnp.ones_like(x),)), log_R, batch_size=64)


# ---- the values a schedule gives ----------------------------------------------------------------

# Their constructors checked these kinds' parameters, so their values are allowed wherever they
# are evaluated (eta > 0, c >= 0; a feedback rule's from its tables). Exact types: a user's
# subclass may compute its values otherwise.
_VALUES_CHECKED = (Constant, StepDecay, PiecewiseConstant, MaxCCC, Heuristic)


def values_allowed(eta: Array, c: Array) -> Array:
    """Whether a schedule's ``(eta, c)`` are allowed: both ``>= 0``, ``eta`` finite (``c = inf``:
    unclipped; a ``nan`` is not allowed). An infinite rate used to reach the ODE, whose steps
    then shrank to the floor: "step size underflow", not the schedule named."""
    return (eta >= 0) & (eta < jnp.inf) & (c >= 0)


def checks_values(schedule) -> bool:
    """Whether the engines must check a schedule's values as they run: every kind but clipdyn's
    own constants, steps and feedback rules (a :class:`TimeVarying`'s functions, a user's class).

    Unchecked, a user's schedule whose threshold went negative ran as unclipped SGD in the ODE
    (``mu = 1`` for ``c < 0``) and as steps against the gradient in the simulators: 2.4x apart.
    """
    return type(schedule) not in _VALUES_CHECKED


def guard_rate(schedule, eta: Array, c: Array) -> Array:
    """``eta``, or ``nan`` where ``(eta, c)`` are not allowed (:func:`values_allowed`), for the
    simulators: the run's next risk is then ``nan`` and the engines' one divergence guard stops
    it there, at the step the schedule went wrong (the ODE refuses the schedule at that time,
    status 4). The identity, traced as such, for the kinds whose values were checked when built."""
    if not checks_values(schedule):
        return eta
    return jnp.where(values_allowed(eta, c), eta, jnp.nan)
