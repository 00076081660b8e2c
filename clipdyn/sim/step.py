"""The step engines: streaming C-SGD under any clipping rule, and clipped homogenized SGD.

* C-SGD (theory/derivation.md, eq. (1.3); theory/clip_rules.md, eq. (1)), ``B`` fresh samples
  per step, ODE time ``t = k / Tr K``: ``e <- e - (eta / Tr K) G`` with ``G`` the rule's
  combination of the clipped per-sample gradients ``(<x_b, e> - eps_b) x_b`` (``c = inf`` is
  plain SGD). The rule object (:class:`clipdyn.theory.rules.ClipRule`) turns the residuals and the Gram
  matrix of the step's rows into coefficients; the engine only forms rows and sums.
* C-HSGD (eq. (2.8)): ``de_i = -eta mu lam_i e_i dt + eta sqrt(nu lam_i / Tr K + iso_d / d +
  iso_1) dB_i`` with the rule's factors, discretised by the exact Ornstein-Uhlenbeck step with
  the factors frozen over the step (exponential Euler-Maruyama, eq. (2.10)) and ``dt = 1 / Tr K``
  by default, so one HSGD step stands for one SGD step.

Simulators are ``(init_fn, step_fn)`` pairs over a :class:`~clipdyn.sim.core.RunState` pytree
(as in jax-md). Learning rate and threshold come from a schedule evaluated at the run's own
current ``(t, R)``.

References:
    Marshall, Xiao, Agarwala, Paquette, arXiv 2406.11733, sections 1-2 and Theorem 1;
    theory/derivation.md, sections 1-2; theory/clip_rules.md.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax.numpy as jnp

from clipdyn import validation
from clipdyn.precision import uses_x64
from clipdyn.sim.core import (RunState, Sample, SimProblem, batch_invariant_sum, divergence_bound,
                              data_rows, guarded, init_run, row_gram, rows_of,
                              step_time)
from clipdyn.theory import rules as clip_rules
from clipdyn.theory.schedules import guard_rate

__all__ = ["sgd", "hsgd", "simulator", "METHODS"]

METHODS = ("sgd", "hsgd")


def _sgd_step(prob: SimProblem, schedule: Callable, rule, bound, state: RunState, sample: Sample,
              gram=None) -> RunState:
    t = step_time(prob, state.k)
    eta, c = schedule(t, state.risk)
    eta = guard_rate(schedule, eta, c)
    C = c * jnp.sqrt(prob.trace)
    if rule.plain:
        # The paper's C-SGD, written as it always was so that B = 1 keeps its numbers bit for bit.
        x = data_rows(prob, sample.x)
        r = batch_invariant_sum(x * state.e) - sample.eps
        g_norm = jnp.abs(r) * jnp.sqrt(batch_invariant_sum(x * x))
        scale = clip_rules.clip_scale(g_norm, C)
        e_new = state.e - (eta / prob.trace) * (scale * r) * x
        return guarded(prob, state, e_new, bound)
    rows = rows_of(prob, sample, rule)
    gram = row_gram(rows) if gram is None else gram
    r = batch_invariant_sum(rows[: rule.batch] * state.e[None, :]) - sample.eps
    a = (eta / prob.trace) * rule.coefficients(r, gram, C, prob.pre_scale)
    e_new = state.e - batch_invariant_sum(a[None, :] * rows.T)
    return guarded(prob, state, e_new, bound)


def _hsgd_step(prob: SimProblem, schedule: Callable, rule, bound, dt, state: RunState,
               sample: Sample, gram=None) -> RunState:
    t = state.k.astype(prob.lam.dtype) * dt
    eta, c = schedule(t, state.risk)
    eta = guard_rate(schedule, eta, c)
    f = rule.ode_factors(prob.noise, state.risk, c)
    m, nu = f.mu.astype(prob.lam.dtype), f.nu.astype(prob.lam.dtype)
    rate = eta * m * prob.lam
    decay = jnp.exp(-rate * dt)
    # Variance of the OU step, (1 - e^{-2 rate dt}) / (2 rate), continuous at rate = 0.
    rate_safe = jnp.where(rate > 0, rate, 1.0)
    var_factor = jnp.where(rate > 0, -jnp.expm1(-2.0 * rate_safe * dt) / (2.0 * rate_safe), dt)
    diffusion = nu * prob.lam / prob.trace
    if not rule.plain:
        d = jnp.sum(prob.active)
        iso = (f.iso_d / d + f.iso_1).astype(prob.lam.dtype)
        diffusion = diffusion + iso * prob.active
    std = eta * jnp.sqrt(diffusion * var_factor)
    e_new = decay * state.e + std * sample.x  # C-HSGD draws one standard normal z per step
    return guarded(prob, state, e_new, bound)


def _no_data_for_hsgd() -> None:
    raise ValueError("C-HSGD runs on Gaussian data only: it replaces the data by its Gaussian "
                     "equivalent, so a dataset has nothing to give it; use method 'sgd'")


@uses_x64
def sgd(prob: SimProblem, schedule: Callable, divergence_factor=1e6, rule=None):
    """Streaming C-SGD (unclipped SGD when the schedule's threshold is ``inf``).

    Args:
        prob: the prepared problem (:func:`clipdyn.sim.prepare`).
        schedule: ``(t, R) -> (eta, c)``.
        divergence_factor: a run diverges once ``R > divergence_factor * R0``.
        rule: a :class:`clipdyn.theory.rules.ClipRule` (default: one sample, per-sample clipping).

    Returns:
        ``(init_fn, step_fn)``: ``init_fn(init_key) -> RunState`` and
        ``step_fn(state, sample) -> RunState``, with samples from
        :func:`clipdyn.sim.draw_sample` (``batch = rule.batch``, ``n_extra = rule.n_extra``).

    References:
        theory/derivation.md, eq. (1.3); theory/clip_rules.md, eq. (1).
    """
    validation.schedule(schedule)
    rule = clip_rules.default_rule() if validation.clip_rule(rule) is None else rule
    bound = divergence_bound(prob, divergence_factor)
    return (uses_x64(functools.partial(init_run, prob)),
            uses_x64(functools.partial(_sgd_step, prob, schedule, rule, bound)))


@uses_x64
def hsgd(prob: SimProblem, schedule: Callable, divergence_factor=1e6, dt=None, rule=None):
    """Clipped homogenized SGD by the exact OU step with frozen factors.

    Args:
        prob: the prepared problem (:func:`clipdyn.sim.prepare`; Gaussian data only).
        schedule: ``(t, R) -> (eta, c)``.
        divergence_factor: a run diverges once ``R > divergence_factor * R0``.
        dt: time step; default ``1 / Tr K`` (one SGD step).
        rule: the clipping rule whose factors drive the SDE.

    Returns:
        ``(init_fn, step_fn)`` as :func:`sgd`.

    References:
        theory/derivation.md, eqs. (2.8) and (2.10); theory/clip_rules.md, eq. (7).
    """
    validation.schedule(schedule)
    rule = clip_rules.default_rule() if validation.clip_rule(rule) is None else rule
    if prob.rows is not None:
        _no_data_for_hsgd()
    bound = divergence_bound(prob, divergence_factor)
    if dt is not None:
        validation.positive("dt", dt, bounded=False)  # a concrete dt; a traced one was checked before
    dt = 1.0 / prob.trace if dt is None else jnp.asarray(dt, prob.lam.dtype)
    return (uses_x64(functools.partial(init_run, prob)),
            uses_x64(functools.partial(_hsgd_step, prob, schedule, rule, bound, dt)))


def simulator(method: str, prob: SimProblem, schedule, divergence_factor=1e6, dt=None, rule=None):
    """``(init_fn, step_fn)`` for ``method`` in ``("sgd", "hsgd")``."""
    if method == "sgd":
        return sgd(prob, schedule, divergence_factor, rule)
    if method == "hsgd":
        return hsgd(prob, schedule, divergence_factor, dt, rule)
    raise ValueError(f"method {method!r} is not allowed; use one of {', '.join(METHODS)}")
