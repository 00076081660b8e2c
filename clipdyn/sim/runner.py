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

from clipdyn import validation
from clipdyn.precision import uses_x64
from clipdyn.sim.block import block_sgd
from clipdyn.sim.core import (SimProblem, divergence_bound, draw_block, initial_error, row_gram,
                              rows_of, split_seed, start_state)
from clipdyn.sim.step import METHODS, simulator

__all__ = ["run_batch", "output_steps", "check_engine", "choose_engine", "parse_engine",
           "engine_block", "ENGINES", "REQUESTS"]

ENGINES = ("step", "block")
REQUESTS = ENGINES + ("auto",)

AUTO_MIN_CONFIGS = 8
"""``engine="auto"`` runs a C-SGD sweep on the block engine from this many configurations per
device on. Measured crossover (BENCHMARKS.md, CPU): at 8 configurations the block engine is
1.1x the step engine for ``B = 1``, ``d = 1000`` (0.9x at ``d = 200``), 1.7x for ``B = 8`` and
3.5x for ``B = 2``; at 4 it is 0.9x (``B = 1``) and 0.8x (``B = 8``); at 16, 1.9x (``B = 1``)."""

MAX_BLOCK = 256
"""The block engine's longest block in steps (measured: longer blocks gain nothing, and the
recurrence's cost per step grows with the block)."""

SUB_STEPS = 16
"""Steps per sub-block of the block engine's recurrence (measured best of 8, 16, 32)."""


def output_steps(T: float, points: int, trace: float, dt: float | None = None) -> np.ndarray:
    """Steps at which the risk is recorded: ``round(t_j / dt)`` for ``t_j = linspace(0, T, points)``
    with ``dt = 1 / Tr K`` unless given."""
    validation.positive("T", T, bounded=False)
    points = validation.integer("points", points, 2, high=validation.MAX_POINTS)
    validation.positive("trace", trace, bounded=False)
    if dt is not None:
        validation.positive("dt", dt, bounded=False)
    dt = 1.0 / trace if dt is None else dt
    return np.rint(np.linspace(0.0, T, points) / dt).astype(np.int64)


def parse_engine(engine: str) -> tuple[str, int | None]:
    """``("step", None)``, ``("block", None)`` or ``("block", steps)`` for ``"block:STEPS"``."""
    name, _, size = str(engine).partition(":")
    if name == "block" and size:
        try:
            steps = int(size)
        except ValueError:
            steps = 0
        if steps < 1 or steps % min(steps, SUB_STEPS):
            raise ValueError(f"engine {engine!r} is not allowed: block:STEPS needs STEPS >= 1, a "
                             f"multiple of {SUB_STEPS} or less than it")
        return name, steps
    if size or name not in ENGINES:
        raise ValueError(f"engine {engine!r} is not allowed; use one of {', '.join(ENGINES)}")
    return name, None


def check_engine(engine: str, method: str) -> None:
    """Raise ``ValueError`` unless ``engine`` can run ``method``."""
    name, _ = parse_engine(engine)
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not allowed; use one of {', '.join(METHODS)}")
    if name == "block" and method != "sgd":
        raise ValueError("engine 'block' runs C-SGD only; use engine 'step' for method 'hsgd'")


def choose_engine(engine: str, method: str, configs_per_device: int) -> str:
    """The engine that runs a sweep: ``engine`` itself, or for ``"auto"`` the faster one.

    ``"auto"`` picks the block engine for C-SGD (every clipping rule) when a device runs at
    least :data:`AUTO_MIN_CONFIGS` configurations in one program, and the step engine otherwise:
    C-HSGD, single runs and narrow sweeps (where the block engine's per-block work is not paid
    back, whatever the rule: measured).

    Args:
        engine: ``"step"``, ``"block"`` or ``"auto"``.
        method: ``"sgd"`` or ``"hsgd"``.
        configs_per_device: configurations one device runs in one program (a chunk's share).

    Returns:
        ``"step"`` or ``"block"``.

    Raises:
        ValueError: for another ``engine``.
    """
    if engine not in REQUESTS:
        raise ValueError(f"engine {engine!r} is not allowed; use one of {', '.join(REQUESTS)}")
    if engine != "auto":
        return engine
    return "block" if method == "sgd" and configs_per_device >= AUTO_MIN_CONFIGS else "step"


def block_size(d_pad: int, n_rows: int) -> int:
    """Steps per block of drawn samples: at most 64, and at most ``2^22`` floats of rows."""
    return int(max(1, min(64, 2**22 // (d_pad * n_rows))))


def engine_block(steps: np.ndarray, d_pad: int, n_rows: int) -> int:
    """Steps per block of the block engine for output steps ``steps``.

    Every interval between output steps is cut into ``ceil(L / max)`` blocks, ``L`` the longest
    interval and ``max`` the most steps whose rows fit in ``2^22`` floats (at most
    :data:`MAX_BLOCK`), each ``L`` divided among them rounded up to a multiple of
    :data:`SUB_STEPS`: the masked steps at the end of an interval stay few (an interval of
    1074 steps runs as 5 blocks of 224, not 5 of 256).
    """
    steps = np.asarray(steps)
    longest = int(np.max(np.diff(steps))) if steps.size > 1 else 1
    cap = max(SUB_STEPS, min(MAX_BLOCK, 2**22 // (d_pad * n_rows)) // SUB_STEPS * SUB_STEPS)
    n = -(-max(longest, 1) // cap)
    per = -(-max(longest, 1) // n)
    if per < SUB_STEPS:
        return int(per)
    return int(-(-per // SUB_STEPS) * SUB_STEPS)


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
        rules: a :class:`clipdyn.theory.rules.ClipRule` whose array leaves have a leading axis ``C``.
        keys: ``S`` PRNG keys (one per seed).
        steps: increasing output steps, ``(P,)``, starting at 0.
        method: ``"sgd"`` or ``"hsgd"``.
        divergence_factor: a run diverges once ``R > divergence_factor * R0`` (finite, ``> 1``).
        dt: C-HSGD's time step (default ``1 / Tr K``, one SGD step); SGD's step is ``1 / Tr K``.
        engine: ``"step"`` (one vmapped step at a time; bit-identical alone and in any sweep) or
            ``"block"`` (C-SGD only: blocks of steps by matrix products, see
            :mod:`clipdyn.sim.block`; much faster for wide sweeps, equal to ``"step"`` up to
            rounding), or ``"block:STEPS"`` for blocks of ``STEPS`` steps (default: the
            longest that fits, see :func:`engine_block`; :func:`clipdyn.runs.sweep.run_sweep` picks
            them from its output steps).

    Returns:
        ``(risk, diverged, diverged_step)`` of shapes ``(S, C, P)``, ``(S, C)``, ``(S, C)``;
        ``risk`` is ``nan`` at and after a run's divergence.
    """
    check_engine(engine, method)
    engine, engine_steps = parse_engine(engine)
    if validation.clip_rule(rules, "rules") is None:
        raise ValueError("rules must be a clipdyn clipping rule batched over the configurations "
                         "(clipdyn.theory.rules.stack_rules); got None")
    n_cfg = validation.schedule_batch(schedules, "run_batch", "sim.sgd steps one")
    batch, n_extra = (rules.batch, rules.n_extra) if method == "sgd" else (1, 0)
    block = block_size(prob.lam.shape[0], batch + n_extra)
    bound = divergence_bound(prob, divergence_factor)
    shared_gram = method == "sgd" and not rules.plain
    big = engine_steps or engine_block(np.array([0, 2**30]), prob.lam.shape[0], batch + n_extra)

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
                states = block_sgd(prob, schedules, rules, stream_key, states, lo, hi, big, bound,
                                   SUB_STEPS)
            else:
                n_blocks = (hi - lo + block - 1) // block
                states, _, _ = jax.lax.fori_loop(0, n_blocks, run_block, (states, lo, hi))
            return states, jnp.where(states.diverged, jnp.nan, states.risk)

        end, risks = jax.lax.scan(interval, states, (steps[:-1], steps[1:]))
        risk0 = jnp.where(states.diverged, jnp.nan, states.risk)
        risk = jnp.concatenate([risk0[None], risks], axis=0).T  # (C, P)
        return risk, end.diverged, end.diverged_step

    return jax.lax.map(per_seed, keys)
