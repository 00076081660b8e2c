"""(L0, L1)-smoothness (Zhang, He, Sra, Jadbabaie, ICLR 2020): test functions, step rules, the estimator.

Zhang et al. relax L-smoothness to ``||Hess f(x)|| <= L0 + L1 ||grad f(x)||`` (theory/l0l1.md,
eq. (1)) and prove that clipped and normalised gradient descent need a number of iterations
independent of ``M = sup{||grad f(x)|| : f(x) <= f(x0)}``, while gradient descent with a fixed
step needs ``Omega(M / log M)`` (eqs. (4)-(6)). This module gives

* test functions with known ``(L0, L1)`` and closed-form ``M`` (:func:`cosh_sum`,
  :func:`quartic_sum`, and :func:`quadratic`, the ``L1 = 0`` control);
* step rules ``h(g) = min(eta, gamma / (||g|| + beta))`` covering fixed, clipped and normalised
  steps (eq. (3)), Zhang et al.'s constants (:func:`zhang_clipped`, :func:`zhang_normalized`)
  and the step that guarantees descent, ``1 / (L0 + L1 M)`` (:func:`descent_step`, eq. (2));
* :func:`run_gd`, a jitted ``lax.while_loop`` that counts iterations to ``||grad f|| <= eps``
  and says honestly when a run did not get there (cap, increase of ``f``, divergence), and
  :func:`best_descending_step`, the best rule of a grid that decreases ``f`` monotonically;
* :func:`local_smoothness`, the authors' estimator along a training step ``Delta``,
  ``||grad f(x + Delta/2) - grad f(x)|| / ||Delta/2||`` (eq. (7)), on any parameter pytree;
* :func:`training_trace`: the estimator along minibatch training with an optax optimiser (the
  network study), and :func:`least_squares_trace`: the same along streaming (clipped) SGD on
  clipdyn's least-squares model, whose Hessian is constant (``L1 = 0``; the control, eq. (8)).

Everything runs in the dtype of its inputs: pass float64 arrays (inside ``jax.enable_x64(True)``)
for iteration counts at small ``eps``.

References:
    J. Zhang, T. He, S. Sra, A. Jadbabaie, *Why gradient clipping accelerates training: a
    theoretical justification for adaptivity*, ICLR 2020; theory/l0l1.md.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from jax.typing import ArrayLike

from clipdyn import validation
from clipdyn.precision import matmul, uses_x64
from clipdyn.pytrees import frozen_pytree
from clipdyn.sim.core import label_noise
from clipdyn.theory.problem import Problem
from clipdyn.validation import check_value

Array = jax.Array

__all__ = [
    "CoshSum",
    "QuarticSum",
    "Quadratic",
    "cosh_sum",
    "quartic_sum",
    "quadratic",
    "StepRule",
    "fixed_step",
    "clipped_step",
    "normalized_step",
    "zhang_clipped",
    "zhang_normalized",
    "descent_step",
    "GDResult",
    "run_gd",
    "best_descending_step",
    "Smoothness",
    "local_smoothness",
    "TrainingTrace",
    "training_trace",
    "LeastSquaresTrace",
    "least_squares_trace",
    "loglog_slope",
]


# ---- test functions ------------------------------------------------------------------------


def _check_weights(name: str, lam) -> jax.Array:
    """The weights as stored: checked in the dtype JAX keeps them in (float32 unless 64-bit mode is
    on), where 1e-320 became 0 and 1e308 inf after passing a float64 check."""
    validation.check_real(name, "lam", lam)
    arr = np.asarray(lam, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: weights must be a non-empty 1-D array; got shape {arr.shape}")
    check_value(name, "lam", arr, lambda a: np.isfinite(a) & (a > 0), "finite and > 0")
    with np.errstate(over="ignore", under="ignore"):
        stored = jnp.asarray(arr)
    if not bool(jnp.all(jnp.isfinite(stored) & (stored > 0))):
        bad = arr[~np.asarray(jnp.isfinite(stored) & (stored > 0))]
        raise ValueError(f"{name}: lam containing {bad[:4].tolist()} is not representable as "
                         f"{stored.dtype} (0 or inf there); use weights within its range, or "
                         "float64 inside jax.enable_x64(True)")
    return stored


@frozen_pytree
class CoshSum:
    """``f(x) = sum_i lam_i (cosh x_i - 1)``: ``(L0, L1) = (max lam, 1)`` (theory/l0l1.md, eq. (9)).

    ``f`` is written ``2 lam sinh(x/2)^2`` so that it keeps full relative precision near the
    minimum, where the monotone-decrease check of :func:`run_gd` compares tiny values.
    """

    lam: Array

    def value(self, x: Array) -> Array:
        return jnp.sum(self.lam * 2.0 * jnp.sinh(0.5 * x) ** 2)

    def grad(self, x: Array) -> Array:
        return self.lam * jnp.sinh(x)

    def hessian_norm(self, x: Array) -> Array:
        """``||Hess f(x)||_2 = max_i lam_i cosh x_i`` (the Hessian is diagonal)."""
        return jnp.max(self.lam * jnp.cosh(x))

    @property
    def l0(self) -> Array:
        return jnp.max(self.lam)

    @property
    def l1(self) -> Array:
        return jnp.ones_like(jnp.max(self.lam))

    def grad_bound(self, x0: Array) -> Array:
        """``M = sup ||grad f||`` on ``{f <= f(x0)}``: ``sqrt(f0^2 + 2 f0 max lam)`` (eq. (10))."""
        f0 = self.value(x0)
        return jnp.sqrt(f0 * f0 + 2.0 * f0 * self.l0)


@frozen_pytree
class QuarticSum:
    """``f(x) = sum_i x_i^4 / 4``: ``(L0, L1) = (4, 1)``, the smallest ``L0`` for ``L1 = 1`` (eq. (11))."""

    def value(self, x: Array) -> Array:
        return 0.25 * jnp.sum(x ** 4)

    def grad(self, x: Array) -> Array:
        return x ** 3

    def hessian_norm(self, x: Array) -> Array:
        return 3.0 * jnp.max(x * x)

    @property
    def l0(self) -> float:
        return 4.0

    @property
    def l1(self) -> float:
        return 1.0

    def grad_bound(self, x0: Array) -> Array:
        """``M = (4 f(x0))^(3/4)`` (eq. (12))."""
        return (4.0 * self.value(x0)) ** 0.75


@frozen_pytree
class Quadratic:
    """``f(x) = 1/2 sum_i lam_i x_i^2``: L-smooth, ``(L0, L1) = (max lam, 0)`` (the control)."""

    lam: Array

    def value(self, x: Array) -> Array:
        return 0.5 * jnp.sum(self.lam * x * x)

    def grad(self, x: Array) -> Array:
        return self.lam * x

    def hessian_norm(self, x: Array) -> Array:
        return jnp.max(self.lam) * jnp.ones_like(x[0])

    @property
    def l0(self) -> Array:
        return jnp.max(self.lam)

    @property
    def l1(self) -> Array:
        return jnp.zeros_like(jnp.max(self.lam))

    def grad_bound(self, x0: Array) -> Array:
        """``M = sqrt(2 f(x0) max lam)`` (the sublevel set is an ellipsoid)."""
        return jnp.sqrt(2.0 * self.value(x0) * self.l0)


def cosh_sum(lam: ArrayLike) -> CoshSum:
    """:class:`CoshSum` with weights ``lam > 0`` (``[1.0]`` is 1-D ``cosh x - 1``)."""
    return CoshSum(_check_weights("cosh_sum", lam))


def quartic_sum() -> QuarticSum:
    """:class:`QuarticSum` (any dimension: the shape comes from ``x``)."""
    return QuarticSum()


def quadratic(lam: ArrayLike) -> Quadratic:
    """:class:`Quadratic` with curvatures ``lam > 0``."""
    return Quadratic(_check_weights("quadratic", lam))


# ---- step rules ----------------------------------------------------------------------------


@frozen_pytree
class StepRule:
    """The step ``h(g) = min(eta, gamma / (||g|| + beta))`` (theory/l0l1.md, eq. (3)).

    Fixed step: ``gamma = inf``; clipped: ``beta = 0`` (the update is at most ``gamma`` long);
    normalised: ``eta = inf``. A pytree of arrays, so a batch of rules vmaps.
    """

    eta: ArrayLike
    gamma: ArrayLike
    beta: ArrayLike

    def __call__(self, gnorm: Array) -> Array:
        return jnp.minimum(self.eta, self.gamma / (gnorm + self.beta))


def _positive(rule: str, name: str, value, allow_inf: bool = False) -> None:
    ok = (lambda a: ~np.isnan(a) & (a > 0)) if allow_inf else (lambda a: np.isfinite(a) & (a > 0))
    check_value(rule, name, value, ok, "> 0" if allow_inf else "finite and > 0")


def fixed_step(h: ArrayLike) -> StepRule:
    """Gradient descent with the fixed step ``h``."""
    _positive("fixed_step", "h", h)
    h = jnp.asarray(h, float)
    return StepRule(h, jnp.full_like(h, jnp.inf), jnp.zeros_like(h))


def clipped_step(eta: ArrayLike, gamma: ArrayLike) -> StepRule:
    """Clipped gradient descent, ``h = min(eta, gamma / ||g||)``: updates at most ``gamma`` long."""
    _positive("clipped_step", "eta", eta)
    _positive("clipped_step", "gamma", gamma, allow_inf=True)
    eta, gamma = jnp.broadcast_arrays(jnp.asarray(eta, float), jnp.asarray(gamma, float))
    return StepRule(eta, gamma, jnp.zeros_like(eta))


def normalized_step(eta: ArrayLike, beta: ArrayLike) -> StepRule:
    """Normalised gradient descent, ``h = eta / (||g|| + beta)``."""
    _positive("normalized_step", "eta", eta)
    check_value("normalized_step", "beta", beta, lambda a: np.isfinite(a) & (a >= 0), "finite and >= 0")
    eta, beta = jnp.broadcast_arrays(jnp.asarray(eta, float), jnp.asarray(beta, float))
    return StepRule(jnp.full_like(eta, jnp.inf), eta, beta)


def _check_l(l0, l1, need_l1: bool) -> None:
    validation.single("L0", l0, owner="smoothness", what="one function's constant")
    validation.single("L1", l1, owner="smoothness", what="one function's constant")
    # L0 down to 1e-300: the steps 1 / (10 L0) must stay finite
    check_value("smoothness", "L0", l0, lambda a: np.isfinite(a) & (a >= 1e-300), "finite and >= 1e-300")
    ok = (lambda a: np.isfinite(a) & (a > 0)) if need_l1 else (lambda a: np.isfinite(a) & (a >= 0))
    check_value("smoothness", "L1", l1, ok, "finite and > 0" if need_l1 else "finite and >= 0")


def zhang_clipped(l0: float, l1: float) -> StepRule:
    """Clipped GD with Zhang et al.'s Theorem 3 constants (theory/l0l1.md, eq. (5)).

    ``eta_c = 1 / (10 L0)``, ``gamma_Z = min(1 / eta_c, L0 / L1)``, step
    ``min(eta_c, gamma_Z eta_c / ||g||)``: updates are at most ``min(1, 1 / (10 L1))`` long.
    """
    _check_l(l0, l1, need_l1=False)
    l0, l1 = float(l0), float(l1)
    eta = 1.0 / (10.0 * l0)
    gamma_z = min(1.0 / eta, l0 / l1) if l1 > 0 else 1.0 / eta
    return clipped_step(eta, gamma_z * eta)


def zhang_normalized(l0: float, l1: float) -> StepRule:
    """Normalised GD with Zhang et al.'s Theorem 4 constants: ``eta_n = 1/(10 L1)``, ``beta = L0/L1``.

    The step is ``1 / (10 (L0 + L1 ||g||))`` (theory/l0l1.md, eq. (6)); it needs ``L1 > 0``.
    """
    _check_l(l0, l1, need_l1=True)
    l0, l1 = float(l0), float(l1)
    return normalized_step(1.0 / (10.0 * l1), l0 / l1)


def descent_step(l0: float, l1: float, M: float) -> float:
    """``1 / (L0 + L1 M)``: the fixed step that guarantees descent from ``x0`` (theory/l0l1.md, eq. (2))."""
    _check_l(l0, l1, need_l1=False)
    validation.single("M", M, owner="descent_step", what="one gradient norm")
    check_value("descent_step", "M", M, lambda a: np.isfinite(a) & (a >= 0), "finite and >= 0")
    return 1.0 / (float(l0) + float(l1) * float(M))


# ---- gradient descent to a tolerance ------------------------------------------------------


class GDResult(NamedTuple):
    """Outcome of :func:`run_gd`.

    ``iterations`` counts gradient steps taken; it is the number of iterations to the tolerance
    only where ``reached`` is true. Otherwise the run stopped at the cap, at the first increase of
    ``f`` (``increased``, when asked to stop there) or at divergence (``diverged``: a non-finite
    value or gradient), and ``iterations`` says when.
    """

    iterations: Array
    reached: Array
    increased: Array
    diverged: Array
    grad_norm: Array
    value: Array


# ``f`` may rise by rounding alone once it is near its floor; a rise counts as an increase only
# beyond this many ulps of the current value.
_ROUNDING_ULPS = 16


@functools.partial(jax.jit, static_argnames=("stop_on_increase",))
def _run_gd(fn, x0, rule, eps, max_iter, stop_on_increase):
    tiny = float(_ROUNDING_ULPS * jnp.finfo(x0.dtype).eps)

    def state(x):
        g = fn.grad(x)
        return fn.value(x), g, jnp.linalg.norm(g)

    f0, g0, n0 = state(x0)

    def cond(s):
        k, _, f, _, gn, inc, div = s
        stop = (gn <= eps) | div | (inc & stop_on_increase)
        return (k < max_iter) & ~stop

    def body(s):
        k, x, f, g, gn, inc, _ = s
        x = x - rule(gn) * g
        f_new, g, gn = state(x)
        div = ~(jnp.isfinite(f_new) & jnp.isfinite(gn))
        inc = inc | (f_new > f + tiny * jnp.abs(f))
        return k + 1, x, f_new, g, gn, inc, div

    init = (jnp.zeros((), jnp.int32), x0, f0, g0, n0, jnp.zeros((), bool),
            ~(jnp.isfinite(f0) & jnp.isfinite(n0)))
    k, _, f, _, gn, inc, div = jax.lax.while_loop(cond, body, init)
    return GDResult(k, (gn <= eps) & ~div, inc, div, gn, f)


def run_gd(fn, x0: ArrayLike, rule: StepRule, eps: float, max_iter: int,
           stop_on_increase: bool = False) -> GDResult:
    """Gradient descent ``x <- x - h(||g||) g`` until ``||grad f(x)|| <= eps``, jitted.

    Args:
        fn: a test function (:class:`CoshSum`, :class:`QuarticSum`, :class:`Quadratic`, or any
            pytree with ``value`` and ``grad``).
        x0: the start, a 1-D array; its dtype is the run's.
        rule: a :class:`StepRule` of scalars (for a batch, :func:`best_descending_step`).
        eps: gradient-norm tolerance, ``> 0``.
        max_iter: iteration cap, ``>= 1`` (at most ``2^31 - 1``).
        stop_on_increase: stop at the first step that increases ``f`` (used by
            :func:`best_descending_step`, where such a step is disqualified).

    Returns:
        A :class:`GDResult`; ``reached`` is false for a run cut off by the cap, an increase or a
        divergence, never a good-looking number.

    References:
        theory/l0l1.md, eqs. (2)-(6).
    """
    x0 = jnp.asarray(x0)
    if x0.ndim != 1 or x0.size == 0 or not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"run_gd: x0 must be a non-empty 1-D float array; got {x0.dtype} of shape {x0.shape}")
    dims = np.shape(getattr(fn, "lam", x0))
    if dims != x0.shape:  # it would broadcast: a 1-D function run on a 2-D point
        raise ValueError(f"run_gd: x0 of shape {x0.shape} does not match the function's "
                         f"{dims[0]} dimension(s)")
    stop_on_increase = validation.flag("stop_on_increase", stop_on_increase, owner="run_gd")
    check_value("run_gd", "eps", eps, lambda a: np.isfinite(a) & (a > 0), "finite and > 0")
    max_iter = validation.integer("max_iter", max_iter, 1, high=2**31 - 1, owner="run_gd")
    if not isinstance(rule, StepRule):
        raise ValueError(f"run_gd: rule must be a StepRule (fixed_step, clipped_step, normalized_step, "
                         f"zhang_clipped, zhang_normalized); {validation.got(rule)}")
    if any(np.ndim(a) != 0 for a in jax.tree.leaves(rule)):
        # A batch broadcast against x0 ran one rule per coordinate, silently.
        raise ValueError(f"run_gd: rule must be one StepRule of scalars; got a batch of shape "
                         f"{np.shape(rule.eta)} (best_descending_step runs a batch)")
    rule = jax.tree.map(lambda a: jnp.asarray(a, x0.dtype), rule)
    return _run_gd(fn, x0, rule, jnp.asarray(eps, x0.dtype), jnp.asarray(int(max_iter), jnp.int32),
                   bool(stop_on_increase))


def best_descending_step(fn, x0: ArrayLike, rules: StepRule, eps: float, max_iter: int):
    """The rule of a batch that reaches ``eps`` in the fewest iterations while decreasing ``f``.

    The rules are run in the order given, each stopping at its first increase of ``f``; among
    those that reach the tolerance with ``f`` decreasing monotonically the fewest iterations wins
    (ties: the earlier). A rule cannot win once it has taken as many iterations as the best so
    far, so each run is capped there (branch and bound: the winner is exact, and list the
    likely-fast rules first, e.g. fixed steps from large to small, to save time).
    With ``fixed_step(grid)`` this is the best fixed step on a grid that still descends.

    Args:
        fn, x0, eps, max_iter: as for :func:`run_gd`.
        rules: a :class:`StepRule` whose leaves have one leading axis (the batch), e.g.
            ``fixed_step(np.geomspace(...)[::-1])``.

    Returns:
        ``(index, best, results)``: the winner's index (``-1`` if none qualifies), its
        :class:`GDResult` (``None`` if none), and every rule's result (a :class:`GDResult` of
        NumPy arrays over the batch; a run cut at the best count so far shows ``reached`` false).
    """
    leaves = [jnp.asarray(a) for a in jax.tree.leaves(rules)]
    n = leaves[0].shape[0] if leaves and leaves[0].ndim == 1 else 0
    if n == 0 or any(a.shape != (n,) for a in leaves):
        raise ValueError("best_descending_step: rules must be a StepRule of 1-D arrays of one length")
    runs, best, best_count, cap = [], -1, None, int(max_iter)
    for i in range(n):
        r = run_gd(fn, x0, jax.tree.map(lambda a: a[i], rules), eps, cap, stop_on_increase=True)
        runs.append(r)
        if bool(r.reached) and not bool(r.increased) and (best < 0 or int(r.iterations) < best_count):
            best, best_count = i, int(r.iterations)
            cap = max(best_count, 1)
    results = GDResult(*(np.array([np.asarray(getattr(r, f)) for r in runs]) for f in GDResult._fields))
    return best, (runs[best] if best >= 0 else None), results


# ---- the smoothness estimator --------------------------------------------------------------


class Smoothness(NamedTuple):
    """The local smoothness estimate along a step and the gradient norm where it starts."""

    estimate: Array
    grad_norm: Array


def local_smoothness(grad_fn: Callable, x, delta) -> Smoothness:
    """Zhang et al.'s estimate ``||grad f(x + Delta/2) - grad f(x)|| / ||Delta/2||`` (theory/l0l1.md, eq. (7)).

    On a quadratic ``1/2 x^T H x`` it is ``||H u||`` for ``u = Delta / ||Delta||`` exactly, the
    curvature along ``Delta`` in 1-D (eq. (8)). ``x`` and ``delta`` may be any matching pytrees
    (network parameters); jit-able and vmap-able. A zero ``delta`` gives ``nan`` (the ratio is
    undefined).

    Args:
        grad_fn: ``x -> grad f(x)``, a pytree like ``x``.
        x: the point.
        delta: the training step taken from ``x`` (``x_{t+1} - x_t``).

    Returns:
        :class:`Smoothness` ``(estimate, grad_norm)``, ``grad_norm = ||grad f(x)||``.
    """
    half = otu.tree_scale(0.5, delta)
    g0 = grad_fn(x)
    g1 = grad_fn(otu.tree_add(x, half))
    return Smoothness(otu.tree_norm(otu.tree_sub(g1, g0)) / otu.tree_norm(half), otu.tree_norm(g0))


class TrainingTrace(NamedTuple):
    """What :func:`training_trace` records; step ``t`` takes ``x_t`` to ``x_{t+1}``.

    ``loss``: the full objective at ``x_t`` for every step (before it); ``batch_grad_norm``: the
    norm of the minibatch gradient fed to the optimiser, every step; ``grad_norm`` and
    ``smoothness``: ``||grad f(x_t)||`` and the estimate along ``Delta_t = x_{t+1} - x_t`` at the
    measured steps ``t = 0, m, 2m, ...`` (``m = measure_every``); ``final_loss``: the objective
    after the last step; ``diverged_at``: the first step whose loss is not finite (``-1`` if
    none; the last step's index + 1 if only the final loss is), values from there on are not
    results.
    """

    loss: Array
    batch_grad_norm: Array
    grad_norm: Array
    smoothness: Array
    final_loss: Array
    diverged_at: Array


@functools.partial(jax.jit, static_argnames=("loss_fn", "make_tx", "measure_every"))
def training_trace(loss_fn: Callable, make_tx: Callable, hparams, params, data, batches: Array,
                   measure_every: int = 1) -> TrainingTrace:
    """Train with an optax optimiser on minibatches and measure Zhang et al.'s smoothness along the way.

    At every step the full objective ``f = loss_fn(., data)`` is evaluated at ``x_t`` and the
    optimiser steps from the minibatch gradient; every ``measure_every`` steps
    :func:`local_smoothness` of ``f`` is measured along that step (theory/l0l1.md, eq. (7)): the
    gradient in the estimate is the full-data gradient, the step the one training took (the
    measurements never feed back into training).

    Args:
        loss_fn: ``(params, batch) -> scalar``, ``batch`` a pytree like ``data`` (static: pass
            the same function object to reuse the compilation).
        make_tx: ``hparams -> optax.GradientTransformation`` (static), e.g.
            ``lambda h: optax.chain(optax.clip_by_global_norm(h["clip"]), optax.sgd(h["lr"]))``;
            the hyperparameters stay traced, so one compilation serves (and vmaps over) a grid.
        hparams: the hyperparameters ``make_tx`` reads (a pytree of scalars).
        params: initial parameters (their dtype is the run's).
        data: pytree of arrays with a leading sample axis (the whole training set).
        batches: ``(steps, batch)`` integer sample indices, one row a step; ``steps`` a multiple
            of ``measure_every``.
        measure_every: measure at every ``m``-th step (static; two full-data gradients each).

    Returns:
        A :class:`TrainingTrace`.
    """
    measure_every = validation.integer("measure_every", measure_every, 1, owner="training_trace")
    if batches.shape[0] % measure_every:
        raise ValueError(f"training_trace: measure_every={measure_every} is not allowed; it must be an "
                         f"integer >= 1 dividing the number of steps, {batches.shape[0]}")

    def objective(p):
        return loss_fn(p, data)

    full_grad = jax.grad(objective)
    tx = make_tx(hparams)

    def step(carry, idx, measure):
        p, s = carry
        g = jax.grad(loss_fn)(p, jax.tree.map(lambda a: a[idx], data))
        updates, s = tx.update(g, s, p)
        out = (objective(p), otu.tree_norm(g))
        if measure:
            est = local_smoothness(full_grad, p, updates)
            out = out + (est.estimate, est.grad_norm)
        return (optax.apply_updates(p, updates), s), out

    def block(carry, idx):
        carry, (loss0, bnorm0, est, gnorm) = step(carry, idx[0], True)
        carry, (loss, bnorm) = jax.lax.scan(functools.partial(step, measure=False), carry, idx[1:])
        return carry, (jnp.append(loss0, loss), jnp.append(bnorm0, bnorm), est, gnorm)

    blocks = batches.reshape(-1, measure_every, batches.shape[1])
    (p, _), (loss, bnorm, est, gnorm) = jax.lax.scan(block, (params, tx.init(params)), blocks)
    loss, bnorm = loss.reshape(-1), bnorm.reshape(-1)
    final = objective(p)
    bad = ~jnp.isfinite(jnp.append(loss, final))
    diverged_at = jnp.where(bad.any(), jnp.argmax(bad), -1)
    return TrainingTrace(loss, bnorm, gnorm, est, final, diverged_at)


def loglog_slope(x: ArrayLike, y: ArrayLike) -> tuple[float, float, float]:
    """Least-squares line ``log y = a + b log x``: ``(b, a, standard error of b)``.

    The standard error is the ordinary least-squares one (independent residuals); along a
    training trajectory consecutive points are correlated, so it understates the uncertainty
    there and is reported as a guide, not a test tolerance.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 3:
        raise ValueError(f"loglog_slope: needs two 1-D arrays of the same length >= 3; got {x.shape}, {y.shape}")
    if not (np.all(np.isfinite(x) & (x > 0)) and np.all(np.isfinite(y) & (y > 0))):
        raise ValueError("loglog_slope: values must be finite and > 0")
    lx, ly = np.log(x), np.log(y)
    xm, ym = lx - lx.mean(), ly - ly.mean()
    sxx = float(xm @ xm)
    if not sxx > 0:
        raise ValueError("loglog_slope: x takes a single value; the slope is undefined")
    b = float(xm @ ym) / sxx
    resid = ym - b * xm
    se = math.sqrt(float(resid @ resid) / (lx.size - 2) / sxx)
    return b, float(ly.mean() - b * lx.mean()), se


# ---- the negative control: clipdyn's least-squares model ----------------------------------


class LeastSquaresTrace(NamedTuple):
    """Per step of :func:`least_squares_trace`: risk after the step, ``||grad R||`` and the estimate before it."""

    risk: Array
    grad_norm: Array
    smoothness: Array


@functools.partial(jax.jit, static_argnames=("steps", "method"))
def _ls_trace(lam, theta_star, noise, eta, c, key, steps, method):
    trace_k = jnp.sum(lam)

    def grad_risk(theta):
        return lam * (theta - theta_star)

    def step(theta, key):
        if method == "gd":
            delta = -(eta / trace_k) * grad_risk(theta)
        else:
            kx, ke = jax.random.split(key)
            x = jnp.sqrt(lam) * jax.random.normal(kx, lam.shape, lam.dtype)
            r = matmul(x, theta - theta_star) - label_noise(noise, ke, lam.dtype)
            g = r * x
            scale = jnp.minimum(1.0, c * jnp.sqrt(trace_k) / jnp.linalg.norm(g))
            delta = -(eta / trace_k) * scale * g
        est = local_smoothness(grad_risk, theta, delta)
        new = theta + delta
        risk = 0.5 * jnp.sum(lam * (new - theta_star) ** 2)
        return new, (risk, est.grad_norm, est.estimate)

    _, out = jax.lax.scan(step, jnp.zeros_like(lam), jax.random.split(key, steps))
    return LeastSquaresTrace(*out)


@uses_x64  # make_problem's arrays are float64; in JAX's 32-bit mode the scan's carry was not
def least_squares_trace(problem: Problem, eta: float, c: float, steps: int, key: Array,
                        method: str = "sgd") -> LeastSquaresTrace:
    """Zhang et al.'s estimator along (clipped) SGD on clipdyn's least-squares model.

    The risk ``R(theta) = 1/2 (theta - theta*)^T K (theta - theta*)`` has the constant Hessian
    ``K``, so ``L1 = 0``; the estimate uses the exact ``grad R = K (theta - theta*)`` and equals
    ``||K Delta|| / ||Delta||`` (theory/l0l1.md, eq. (8)). Along streaming SGD ``Delta`` is
    parallel to the fresh sample ``x``, independent of the current gradient, so the estimate is
    flat in the gradient norm. Along full-batch GD (``method="gd"``) ``Delta`` is parallel to
    ``grad R`` and the estimate drifts down as the error moves to small eigenvalues: a
    correlation with ``||grad R||`` although ``L1 = 0`` (eq. (13)).

    Args:
        problem: the model (:func:`clipdyn.theory.problem.make_problem`); ``theta_0 = 0`` and
            ``theta*_i = s_i sqrt(2 v_i(0))`` with random signs ``s_i`` (theory/derivation.md,
            eq. (1.4)). Computed in ``problem.lam``'s dtype.
        eta: learning rate, ``> 0``: SGD steps by ``(eta / Tr K) clip_{c sqrt(Tr K)}(g)``
            (theory/derivation.md, eq. (1.3)); GD by ``(eta / Tr K) grad R``, SGD's mean step
            (so both move on the time scale ``t = steps / Tr K``).
        c: threshold (``inf``: unclipped); GD takes ``inf`` only.
        steps: number of steps, ``>= 1``.
        key: PRNG key (signs of ``theta*``, samples, noise).
        method: ``"sgd"`` (streaming, one fresh sample a step) or ``"gd"`` (full batch).

    Returns:
        :class:`LeastSquaresTrace` of ``(steps,)`` arrays.
    """
    if method not in ("sgd", "gd"):
        raise ValueError(f"least_squares_trace: method={method!r} is not allowed; use 'sgd' or 'gd'")
    check_value("least_squares_trace", "eta", eta, lambda a: np.isfinite(a) & (a > 0), "finite and > 0")
    check_value("least_squares_trace", "c", c, lambda a: ~np.isnan(a) & (a > 0), "> 0 (inf: unclipped)")
    if method == "gd" and math.isfinite(c):
        raise ValueError(f"least_squares_trace: c={c} is not allowed with method='gd'; it takes c=inf")
    steps = validation.integer("steps", steps, 1, owner="least_squares_trace")
    lam = problem.lam
    k_sign, k_run = jax.random.split(key)
    signs = jnp.where(jax.random.bernoulli(k_sign, 0.5, lam.shape), 1.0, -1.0).astype(lam.dtype)
    theta_star = signs * jnp.sqrt(2.0 * problem.v0.astype(lam.dtype))
    dt = lam.dtype
    return _ls_trace(lam, theta_star, problem.noise, jnp.asarray(eta, dt), jnp.asarray(c, dt), k_run,
                     int(steps), method)
