"""Running many simulations as one program: ``S`` seeds x ``C`` configurations.

A configuration is a schedule and a clipping rule (both pytrees whose array leaves have a
leading axis ``C``; the rule's static fields, such as its batch size, are shared by the
configurations of one program).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from clipdyn.sim.block import block_sgd
from clipdyn.sim.core import (SimProblem, divergence_bound, draw_block, initial_error, row_gram,
                              rows_of, split_seed, start_state)
from clipdyn.sim.step import METHODS, simulator

__all__ = ["run_batch", "output_steps", "check_engine", "ENGINES"]

ENGINES = ("step", "block")


def output_steps(T: float, points: int, trace: float, dt: float | None = None) -> np.ndarray:
    """Steps at which the risk is recorded: ``round(t_j / dt)`` for ``t_j = linspace(0, T, points)``
    with ``dt = 1 / Tr K`` unless given."""
    dt = 1.0 / trace if dt is None else dt
    return np.rint(np.linspace(0.0, T, points) / dt).astype(np.int64)


def check_engine(engine: str, method: str) -> None:
    """Raise ``ValueError`` unless ``engine`` can run ``method``."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is not allowed; use one of {', '.join(ENGINES)}")
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not allowed; use one of {', '.join(METHODS)}")
    if engine == "block" and method != "sgd":
        raise ValueError("engine 'block' runs C-SGD only; use engine 'step' for method 'hsgd'")


def block_size(d_pad: int, n_rows: int) -> int:
    """Steps per block of drawn samples: at most 64, and at most ``2^22`` floats of rows."""
    return int(max(1, min(64, 2**22 // (d_pad * n_rows))))


BLOCK_STEPS = 256
SUB_STEPS = 8


def engine_block(d_pad: int, n_rows: int) -> tuple[int, int]:
    """``(block, sub)`` of the block engine: steps per block and per sub-block of its recurrence.

    Blocks of up to :data:`BLOCK_STEPS` steps (at most ``2^22`` floats of rows, like the draws),
    a multiple of the sub-block of :data:`SUB_STEPS` steps.
    """
    sub = SUB_STEPS
    block = min(BLOCK_STEPS, 2**22 // (d_pad * n_rows))
    block = max(sub, block // sub * sub)
    return int(block), int(sub)


@functools.partial(jax.jit, static_argnames=("method", "engine"))
def run_batch(prob: SimProblem, schedules, rules, keys, steps, method: str = "sgd",
              divergence_factor=1e6, dt=None, engine: str = "step"):
    """Run ``S`` seeds x ``C`` configurations as one program.

    Seeds run one after another (``lax.map``); within a seed the ``C`` configurations run as one
    ``vmap`` and share that seed's samples (common random numbers). Samples are drawn for a block
    of steps at once, in a loop of their own, and then consumed by the step loop; the Gram matrix
    of a step's rows (needed by batch rules) is computed once per step for all configurations.

    This layout is what makes a run's numbers independent of the sweep around it: XLA compiles
    a vmapped step identically for any number of configurations, but fuses differently when the
    seed axis is batched or when the draw shares a loop with the step, and the last bits of a
    run would then change with the number of seeds.

    Args:
        prob: the prepared problem (:func:`clipdyn.sim.prepare`).
        schedules: a schedule pytree whose array leaves have a leading axis of size ``C``.
        rules: a :class:`clipdyn.rules.ClipRule` whose array leaves have a leading axis ``C``.
        keys: ``S`` PRNG keys (one per seed).
        steps: increasing output steps, ``(P,)``, starting at 0.
        method: ``"sgd"`` or ``"hsgd"``.
        engine: ``"step"`` (one vmapped step at a time; bit-identical alone and in any sweep) or
            ``"block"`` (C-SGD only: blocks of steps by matrix products, see
            :mod:`clipdyn.sim.block`; much faster for wide sweeps, equal to ``"step"`` up to
            rounding).

    Returns:
        ``(risk, diverged, diverged_step)`` of shapes ``(S, C, P)``, ``(S, C)``, ``(S, C)``;
        ``risk`` is ``nan`` at and after a run's divergence.
    """
    check_engine(engine, method)
    n_cfg = jax.tree.leaves(schedules)[0].shape[0]
    batch, n_extra = (rules.batch, rules.n_extra) if method == "sgd" else (1, 0)
    block = block_size(prob.lam.shape[0], batch + n_extra)
    bound = divergence_bound(prob, divergence_factor)
    shared_gram = method == "sgd" and not rules.plain

    def sim(schedule, rule):
        return simulator(method, prob, schedule, divergence_factor, dt, rule)

    def step_configs(states, sample):
        gram = row_gram(rows_of(prob, sample, rules)) if shared_gram else None
        return jax.vmap(lambda st, sc, ru: sim(sc, ru)[1](st, sample, gram))(states, schedules, rules)

    def per_seed(key):
        init_key, stream_key = split_seed(key)
        e0 = initial_error(init_key, prob)
        states = jax.vmap(lambda _: start_state(prob, e0))(jnp.arange(n_cfg))

        def run_block(b, carry):
            states, lo, hi = carry
            k0 = lo + b * block
            samples = draw_block(stream_key, k0, block, prob, batch, n_extra)

            def one(i, states):
                return step_configs(states, jax.tree.map(lambda x: x[i], samples))

            return jax.lax.fori_loop(0, jnp.minimum(block, hi - k0), one, states), lo, hi

        def interval(states, bounds):
            lo, hi = bounds
            if engine == "block":
                big, sub = engine_block(prob.lam.shape[0], batch + n_extra)
                states = block_sgd(prob, schedules, rules, stream_key, states, lo, hi, big, bound, sub)
            else:
                n_blocks = (hi - lo + block - 1) // block
                states, _, _ = jax.lax.fori_loop(0, n_blocks, run_block, (states, lo, hi))
            return states, jnp.where(states.diverged, jnp.nan, states.risk)

        end, risks = jax.lax.scan(interval, states, (steps[:-1], steps[1:]))
        risk0 = jnp.where(states.diverged, jnp.nan, states.risk)
        risk = jnp.concatenate([risk0[None], risks], axis=0).T  # (C, P)
        return risk, end.diverged, end.diverged_step

    return jax.lax.map(per_seed, keys)
