"""Tuning through the engines: learning-rate bisection, grid minima, schedules optimised through the ODE.

These are the pieces the studies in ``experiments/`` rely on:

* :func:`bisect_max_lr`: the largest learning rate at which a batch of configurations is still
  stable, by bisection run for all configurations at once (each iteration is one vmapped ODE
  solve or one simulation sweep);
* :func:`ode_final_risks`: ``R(T)`` of many schedules by one vmapped ODE solve;
* :func:`optimize_lr_schedule`: a piecewise-constant learning-rate schedule for unclipped SGD
  optimised by gradient descent (optax's Adam) on the ODE's final risk, with forward-mode
  gradients through the adaptive solver (its ``while_loop`` is not reverse-differentiable).

References:
    Marshall, Xiao, Agarwala, Paquette, arXiv 2406.11733, sections 4-5; theory/derivation.md,
    eqs. (4.1)-(4.2) and (5.1).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clipdyn import validation
from clipdyn.precision import uses_x64
from clipdyn.theory.ode import merge_modes, ode_risk, resolved_rule
from clipdyn.theory.problem import Problem, check_problem
from clipdyn.theory.schedules import PiecewiseConstant

Array = jax.Array

__all__ = ["bisect_max_lr", "ode_final_risks", "ode_is_stable", "optimize_lr_schedule", "LRSchedule"]


def bisect_max_lr(is_stable: Callable[[np.ndarray], np.ndarray], lo, hi, iters: int = 20,
                  n: int | None = None) -> np.ndarray:
    """Largest stable learning rate for ``n`` configurations at once, by bisection in ``log eta``.

    Args:
        is_stable: ``etas (n,) -> stable (n,)`` (bool), assumed monotone: stable below a
            threshold, unstable above.
        lo: learning rates taken as stable, scalar or ``(n,)``.
        hi: learning rates taken as unstable, scalar or ``(n,)``.
        iters: bisection steps; the bracket shrinks by ``2^-iters`` in ``log eta``.
        n: number of configurations (default: from ``lo`` or ``hi``; with both scalars, from
            the length of ``is_stable``'s answer).

    Returns:
        ``(n,)`` estimates, the geometric midpoints of the final brackets.

    Raises:
        ValueError: where ``lo`` is not stable or ``hi`` is stable for some configuration (the
            bracket holds no threshold there, and bisection would return an end of it as if it
            were the answer); the message names the configurations and the end.
    """
    if not callable(is_stable):
        raise ValueError(f"is_stable must be a function etas -> stable; got {type(is_stable).__name__}")
    validation.check_real("", "lo", lo)
    validation.check_real("", "hi", hi)
    iters = validation.integer("iters", iters, 1)
    from_answer = n is None and np.size(lo) == 1 and np.size(hi) == 1
    if n is None:
        n = max(np.size(lo), np.size(hi))
    n = validation.integer("n", n, 1)
    lo = np.broadcast_to(np.asarray(lo, float), (n,)).copy()
    hi = np.broadcast_to(np.asarray(hi, float), (n,)).copy()
    for name, end in (("lo", lo), ("hi", hi)):  # inf bisected in log space stays inf: refused
        if not np.all(np.isfinite(end)):
            raise ValueError(f"bisect_max_lr: {name}={end[~np.isfinite(end)][0]} is not allowed; "
                             "the bracket's ends must be finite")
    if np.any(~(lo > 0) | ~(hi > lo)):
        raise ValueError("bisect_max_lr needs 0 < lo < hi")

    def checked(ok):  # one answer per configuration (n, set below where the answer decides it)
        ok = np.asarray(ok)
        if ok.shape != (n,):
            raise ValueError(f"bisect_max_lr: is_stable must return one bool per learning rate, "
                             f"shape ({n},); it returned shape {ok.shape}")
        return ok.astype(bool)

    ok_lo = np.asarray(is_stable(lo))
    if from_answer and ok_lo.ndim == 1 and ok_lo.size > 1:  # one bracket for every configuration
        n = ok_lo.size
        lo, hi = np.full(n, lo[0]), np.full(n, hi[0])
    ok_lo = checked(ok_lo)
    for end, etas, want in (("lo", lo, True), ("hi", hi, False)):
        ok = ok_lo if end == "lo" else checked(is_stable(etas))
        bad = np.flatnonzero(ok != want)
        if bad.size:
            which = "unstable" if want else "stable"
            raise ValueError(f"bisect_max_lr: {end} is {which} for configuration(s) "
                             f"{bad[:5].tolist()}{' ...' if bad.size > 5 else ''} "
                             f"({end} = {etas[bad[0]]:g} there); the bracket must have a stable lo "
                             "and an unstable hi")
    log_lo, log_hi = np.log(lo), np.log(hi)
    for _ in range(iters):
        mid = 0.5 * (log_lo + log_hi)
        ok = checked(is_stable(np.exp(mid)))
        log_lo = np.where(ok, mid, log_lo)
        log_hi = np.where(ok, log_hi, mid)
    return np.exp(0.5 * (log_lo + log_hi))


@uses_x64
def ode_final_risks(problem: Problem, schedules, T: float, points: int = 2, rtol: float = 1e-8,
                    rules=None):
    """``R(t)`` at ``points`` times in ``[0, T]`` for a batch of schedules, by one vmapped ODE solve.

    Args:
        problem: the problem.
        schedules: ``C`` schedules of one kind batched by
            :func:`clipdyn.runs.sweep.stack_schedules`: every parameter with the leading axis ``C``.
        T: the horizon, finite and ``> 0``.
        points: output times ``linspace(0, T, points)``, an integer in ``[2, 1e6]``.
        rtol: the ODE's relative tolerance, in ``[1e-14, 0.1]`` (absolute: ``rtol * 1e-3``).
        rules: ``None`` (the paper's C-SGD), one :class:`clipdyn.theory.rules.ClipRule` for every
            schedule, or a batched rule (leading axis ``C``, see
            :func:`clipdyn.theory.rules.stack_rules`).

    Returns:
        ``(risk (C, points), status (C,))``; diverged runs have ``nan`` risk and status 1.
    """
    check_problem(problem)
    validation.single("T", T, what="one horizon")
    validation.positive("T", T, bounded=False)
    points = validation.integer("points", points, 2, high=validation.MAX_POINTS)
    validation.rtol(rtol)
    core, _, _ = merge_modes(problem)
    t_out = jnp.linspace(0.0, float(T), points)
    n_cfg = validation.schedule_batch(schedules, "ode_final_risks", "solve_ode solves one")
    batched = rules is not None and jnp.ndim(jnp.asarray(rules.dp_noise)) == 1 and n_cfg > 0

    # Group rules (batch, micro) evaluate their factors by Laplace inversion, whose intermediate
    # arrays are large: solve a few configurations at a time instead of all at once.
    group = rules is not None and rules.kind in ("batch", "micro") and not rules.plain and rules.table is None
    size = min(n_cfg, 4) if group else n_cfg
    while True:  # ends: each repeat doubles the rule's cosine terms at least, up to their cap
        risk, status = _final_risks(core, problem.noise, schedules, rules, t_out, float(rtol),
                                    batched, size)
        finer = resolved_rule(rules, problem.noise, risk, "ode_final_risks")
        if finer is rules:
            return np.asarray(risk), np.asarray(status)
        rules = finer  # the risk went where the group factors need more cosine terms: again


@functools.partial(jax.jit, static_argnames=("rtol", "batched", "size"))
def _final_risks(core, noise, schedules, rules, t_out, rtol, batched, size):
    """One compiled program per problem layout, schedule and rule structure and batch: the
    bisections and grid searches call it many times with new learning rates."""
    n_cfg = jax.tree.leaves(schedules)[0].shape[0]

    def one(args):
        s, r = args
        return ode_risk(core, noise, s, t_out, rtol, rtol * 1e-3, rule=r if batched else rules)[:3]

    risk, _, status = jax.lax.map(one, (schedules, rules if batched else jnp.zeros(n_cfg)),
                                  batch_size=size)
    return risk, status


def ode_is_stable(problem: Problem, make_schedules: Callable[[np.ndarray], object], T: float,
                  rules=None):
    """A predicate for :func:`bisect_max_lr`: the ODE's risk at ``T`` is below ``R0``."""
    check_problem(problem)
    if not callable(make_schedules):
        raise ValueError("make_schedules must be a function etas -> batched schedule; got "
                         f"{type(make_schedules).__name__}")
    validation.positive("T", T, bounded=False)
    R0 = float(problem.R0)

    def is_stable(etas):
        risk, status = ode_final_risks(problem, make_schedules(etas), T, rules=rules)
        return (status == 0) & (risk[:, -1] < R0)

    return is_stable


class LRSchedule(NamedTuple):
    """Result of :func:`optimize_lr_schedule`."""

    schedule: PiecewiseConstant
    final_risk: float
    history: np.ndarray


def _lr_schedule_loss(problem: Problem, T: float, clip: float, pieces: int, eta_max: float,
                      rtol: float):
    """``(schedule, loss)``: the piecewise-constant schedule of parameters ``p`` and ``log R(T)``.

    The solver is asked for the risk at every piece boundary, so its steps end there: a step
    across a jump of the learning rate gives an accurate ``R(T)`` (the error control sees the
    jump) but a wrong forward-mode derivative (the step's error estimate, not the solution,
    carries the jump: with outputs at ``[0, T]`` only, ``d log R(T) / d p_1`` came out -0.008
    against 0.466 by finite differences).
    """
    core, _, _ = merge_modes(problem)
    t_out = jnp.linspace(0.0, float(T), pieces + 1)  # the boundaries are output times
    bounds = t_out[1:-1]

    def schedule(p):
        return PiecewiseConstant(bounds, eta_max * jax.nn.sigmoid(p), jnp.asarray(clip))

    def loss(p):
        risk = ode_risk(core, problem.noise, schedule(p), t_out, rtol, rtol * 1e-3)[0][-1]
        return jnp.log(risk)

    return schedule, loss


@uses_x64
def optimize_lr_schedule(problem: Problem, T: float, *, clip: float = math.inf, pieces: int = 8,
                         eta_init: float = 1.0, steps: int = 60, learning_rate: float = 0.1,
                         eta_max: float = 4.0, rtol: float = 1e-7) -> LRSchedule:
    """Optimise a piecewise-constant learning rate through the ODE to minimise ``R(T)``.

    The schedule has ``pieces`` equal pieces on ``[0, T]`` with ``eta_j = eta_max * sigmoid(p_j)``
    (kept in ``(0, eta_max)``); the parameters ``p`` follow optax's Adam on ``log R(T)``, whose
    gradient is taken in forward mode through the adaptive ODE solver.

    Args:
        problem: the problem.
        T: horizon.
        clip: constant threshold (``inf``: the unclipped SGD the study needs).
        pieces: number of constant pieces.
        eta_init: initial learning rate on every piece.
        steps: Adam steps.
        learning_rate: Adam's step size on ``p``.
        eta_max: upper bound of the learning rate.
        rtol: the ODE's relative tolerance, in ``[1e-14, 0.1]`` (its absolute tolerance is
            ``rtol * 1e-3``).

    Returns:
        :class:`LRSchedule` with the best schedule seen, its ``R(T)`` and the history of ``R(T)``
        (``inf`` for an optimiser step whose schedule diverged; the search stops there).

    Raises:
        ValueError: where the ODE gives no finite ``R(T)`` under the starting schedule itself
            (``eta_init`` on every piece; it diverges, or its solver fails): there is no finite
            risk to improve on.
    """
    check_problem(problem)
    validation.positive("T", T, bounded=False)
    validation.threshold("clip", clip)
    pieces = validation.integer("pieces", pieces, 1)
    steps = validation.integer("steps", steps, 1)
    validation.positive("learning_rate", learning_rate, bounded=False)
    validation.positive("eta_max", eta_max, bounded=False)
    validation.check_real("", "eta_init", eta_init)
    validation.rtol(rtol)
    if not 0 < eta_init < eta_max:
        raise ValueError(f"eta_init={eta_init} must be in (0, eta_max={eta_max})")
    schedule, loss = _lr_schedule_loss(problem, T, clip, pieces, eta_max, rtol)
    value_and_grad = jax.jit(lambda p: (loss(p), jax.jacfwd(loss)(p)))
    p = jnp.full((pieces,), math.log(eta_init / (eta_max - eta_init)))
    opt = optax.adam(learning_rate)
    with jax.numpy_dtype_promotion("standard"):
        state = opt.init(p)
    history, best = [], (math.inf, p)
    for _ in range(steps):
        val, grad = value_and_grad(p)
        val = float(val)
        history.append(math.exp(val) if math.isfinite(val) else math.inf)
        if math.isfinite(val) and val < best[0]:
            best = (val, p)
        if not np.all(np.isfinite(np.asarray(grad))):
            break
        # optax's bias correction mixes its int32 step count with floats; allow that here even
        # when the caller (our test suite) runs JAX with strict dtype promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, state = opt.update(grad, state)
            p = optax.apply_updates(p, updates)
    if not math.isfinite(best[0]):
        raise ValueError(f"optimize_lr_schedule: the ODE gives no finite R(T) under the starting "
                         f"schedule (eta_init={eta_init} on every piece, clip={clip}): it diverges "
                         f"before T={T} (or its solver fails); start from a smaller eta_init")
    return LRSchedule(schedule(best[1]), math.exp(best[0]), np.asarray(history))
