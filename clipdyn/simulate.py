"""Jitted streaming simulators: clipped SGD (C-SGD), unclipped SGD and clipped homogenized SGD.

Everything runs in the eigenbasis of ``K``: a sample is ``x = sqrt(lam) * z`` with
``z ~ N(0, I_d)``, so a step costs ``O(d)`` and ``K`` is never formed (THEORY.md section 1). The
state is the error ``e = theta - theta*`` in eigen-coordinates; the risk is
``R = 1/2 sum_i lam_i e_i^2``.

* C-SGD (theory/derivation.md, eq. (1.3)), one fresh sample per step, ODE time ``t = k / Tr K``:
  ``e <- e - (eta / Tr K) clip_{c sqrt(Tr K)}((<x, e> - eps) x)``; ``c = inf`` is plain SGD.
* C-HSGD (eq. (2.8)): ``de_i = -eta mu lam_i e_i dt + eta sqrt(nu_abs lam_i / Tr K) dB_i``,
  discretised by the exact Ornstein-Uhlenbeck step with ``mu``, ``nu_abs`` frozen over the step
  (exponential Euler-Maruyama, eq. (2.10)) and ``dt = 1 / Tr K`` by default, so one HSGD step
  stands for one SGD step and the time step is ``1 / Tr K`` against the ODE's ``O(1)`` scales.

Simulators are ``(init_fn, step_fn)`` pairs over a :class:`RunState` pytree (as in jax-md).
The sample stream of a seed is ``draw_sample(stream_key, k)``: runs that share a seed share their
samples (common random numbers), and the batched runner draws each seed's samples once and uses
them for every configuration. Learning rate and threshold come from a schedule evaluated at the
run's own current ``(t, R)``.

Divergence: a run whose risk exceeds ``divergence_factor * R0`` or becomes non-finite is frozen
and flagged with the step at which it happened; it cannot affect other runs.

References:
    Marshall, Xiao, Agarwala, Paquette, arXiv 2406.11733, sections 1-2 and Theorem 1;
    theory/derivation.md, sections 1-2.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clipdyn import factors
from clipdyn.problem import Problem

Array = jax.Array

__all__ = [
    "RunState",
    "SimProblem",
    "Sample",
    "prepare",
    "split_seed",
    "draw_sample",
    "initial_error",
    "sgd",
    "hsgd",
    "simulator",
    "output_steps",
    "run_batch",
]

METHODS = ("sgd", "hsgd")


class SimProblem(NamedTuple):
    """The problem in the simulation precision, with ``sqrt(lam)`` and ``Tr K`` precomputed."""

    lam: Array
    sqrt_lam: Array
    v0: Array
    trace: Array
    R0: Array
    noise: object


class RunState(NamedTuple):
    """State of one run.

    Attributes:
        e: ``theta - theta*`` in eigen-coordinates, ``(d,)``.
        risk: current risk ``R``.
        k: steps taken.
        diverged: whether the run diverged (it is then frozen).
        diverged_step: the step at which it diverged (``-1`` if it did not).
    """

    e: Array
    risk: Array
    k: Array
    diverged: Array
    diverged_step: Array


class Sample(NamedTuple):
    """One step's randomness: ``z ~ N(0, I_d)`` and the label noise ``eps``."""

    z: Array
    eps: Array


PAD = 64


def prepare(problem: Problem, dtype=jnp.float32) -> SimProblem:
    """Cast the problem to the simulation dtype and pad ``d`` to a multiple of :data:`PAD`.

    The padding modes have ``lam = 0`` and ``v(0) = 0``: they never move and add exact zeros to
    every sum. They are there for reproducibility: XLA vectorises elementwise work over the
    flattened batch, and with ``d`` a multiple of 64 no element of a run ever falls in the scalar
    remainder loop (which rounds differently, without fused multiply-adds), so a run computes the
    same numbers alone and inside a sweep of any size.
    """
    lam = np.asarray(problem.lam, np.float64)
    v0 = np.asarray(problem.v0, np.float64)
    pad = (-lam.size) % PAD
    lam_p = jnp.asarray(np.pad(lam, (0, pad)), dtype)
    return SimProblem(
        lam=lam_p,
        sqrt_lam=jnp.sqrt(lam_p),
        v0=jnp.asarray(np.pad(v0, (0, pad)), dtype),
        trace=jnp.asarray(lam.sum(), dtype),
        R0=jnp.asarray(np.sum(lam * v0), dtype),
        noise=problem.noise.astype(dtype),
    )


def split_seed(key: Array) -> tuple[Array, Array]:
    """``(init_key, stream_key)`` of a run's seed key."""
    k1, k2 = jax.random.split(key)
    return k1, k2


def draw_sample(stream_key: Array, k: Array, prob: SimProblem) -> Sample:
    """Step ``k``'s sample of a seed's stream: a pure function of ``(stream_key, k)``."""
    kz, ke = jax.random.split(jax.random.fold_in(stream_key, k))
    dtype = prob.lam.dtype
    return Sample(jax.random.normal(kz, prob.lam.shape, dtype), prob.noise.sample(ke, (), dtype))


def initial_error(init_key: Array, prob: SimProblem) -> Array:
    """``e_0 = theta_0 - theta* = -theta*`` with ``|theta*_i| = sqrt(2 v_i(0))`` and random signs,
    so that ``v_i(0)`` is exact and ``R(theta_0) = R0`` (theory/derivation.md, eq. (1.4))."""
    signs = jax.random.rademacher(init_key, prob.lam.shape, prob.lam.dtype)
    return -signs * jnp.sqrt(2.0 * prob.v0)


def batch_invariant_sum(x: Array, block: int = 8) -> Array:
    """Sum over the last axis in a fixed pairwise order, whatever the batch shape around it.

    XLA plans ``jnp.sum`` (and ``jnp.dot``) differently for different batch sizes, so the last
    bits of a run's reductions, and after many steps its trajectory, would depend on how many
    runs share the program. Here the order is fixed by slices and elementwise adds in blocks of
    ``block`` (8: about 1.3x the cost of ``jnp.sum`` on CPU), so a run gives the same numbers
    alone and inside any sweep; pairwise summation is also more accurate than a running sum.
    """
    n = x.shape[-1]
    while n > 1:
        blocks = -(-n // block)
        width = 1 << (min(n, block) - 1).bit_length()
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, blocks * width - n)])
        x = x.reshape(x.shape[:-1] + (blocks, width))
        while width > 1:
            width //= 2
            x = x[..., :width] + x[..., width:]
        x = x[..., 0]
        n = blocks
    return x[..., 0]


def _risk(prob: SimProblem, e: Array) -> Array:
    return 0.5 * batch_invariant_sum(prob.lam * e * e)


def start_state(prob: SimProblem, e: Array) -> RunState:
    """A fresh run at error ``e``."""
    return RunState(e, _risk(prob, e), jnp.zeros((), jnp.int32), jnp.zeros((), bool),
                    jnp.full((), -1, jnp.int32))


def _init(prob: SimProblem, init_key: Array) -> RunState:
    return start_state(prob, initial_error(init_key, prob))


def _divergence_bound(prob: SimProblem, divergence_factor) -> Array:
    """Runs diverge once ``R > divergence_factor * R0``."""
    return jnp.asarray(divergence_factor, prob.lam.dtype) * prob.R0


def _guarded(prob: SimProblem, state: RunState, e_new: Array, bound: Array) -> RunState:
    """Accept ``e_new`` unless the risk leaves ``[0, bound]`` (or the run had diverged)."""
    r_new = _risk(prob, e_new)
    blown = ~(r_new <= bound) & ~state.diverged
    keep = state.diverged | blown
    k = state.k + 1
    return RunState(
        e=jnp.where(keep, state.e, e_new),
        risk=jnp.where(keep, state.risk, r_new),
        k=k,
        diverged=state.diverged | blown,
        diverged_step=jnp.where(blown, k, state.diverged_step),
    )


def _clip_scale(g_norm: Array, limit: Array) -> Array:
    """``min(1, C / ||g||)``, written so that ``||g|| = 0`` and ``C = inf`` give 1 without 0/0 or inf/inf."""
    return jnp.where(g_norm > limit, limit / jnp.where(g_norm > 0, g_norm, 1.0), 1.0)


def _draw_block(stream_key: Array, k0: Array, block: int, prob: SimProblem) -> Sample:
    """The samples of steps ``k0 .. k0 + block - 1``, leaves with a leading ``block`` axis."""
    return jax.vmap(lambda k: draw_sample(stream_key, k, prob))(k0 + jnp.arange(block))


def _sgd_step(prob: SimProblem, schedule: Callable, bound: Array, state: RunState,
              sample: Sample) -> RunState:
    t = state.k.astype(prob.lam.dtype) / prob.trace
    eta, c = schedule(t, state.risk)
    x = prob.sqrt_lam * sample.z
    r = batch_invariant_sum(x * state.e) - sample.eps
    g_norm = jnp.abs(r) * jnp.sqrt(batch_invariant_sum(x * x))
    scale = _clip_scale(g_norm, c * jnp.sqrt(prob.trace))
    e_new = state.e - (eta / prob.trace) * (scale * r) * x
    return _guarded(prob, state, e_new, bound)


def _hsgd_step(prob: SimProblem, schedule: Callable, bound: Array, dt: Array, state: RunState,
               sample: Sample) -> RunState:
    t = state.k.astype(prob.lam.dtype) * dt
    eta, c = schedule(t, state.risk)
    m, na, _ = factors._factors_scalar(prob.noise, state.risk, c)
    m, na = m.astype(prob.lam.dtype), na.astype(prob.lam.dtype)
    rate = eta * m * prob.lam
    decay = jnp.exp(-rate * dt)
    # Variance of the OU step, (1 - e^{-2 rate dt}) / (2 rate), continuous at rate = 0.
    rate_safe = jnp.where(rate > 0, rate, 1.0)
    var_factor = jnp.where(rate > 0, -jnp.expm1(-2.0 * rate_safe * dt) / (2.0 * rate_safe), dt)
    std = eta * jnp.sqrt(na * prob.lam / prob.trace * var_factor)
    e_new = decay * state.e + std * sample.z
    return _guarded(prob, state, e_new, bound)


def sgd(prob: SimProblem, schedule: Callable, divergence_factor=1e6):
    """Streaming C-SGD (unclipped SGD when the schedule's threshold is ``inf``).

    Args:
        prob: the prepared problem (:func:`prepare`).
        schedule: ``(t, R) -> (eta, c)``.
        divergence_factor: a run diverges once ``R > divergence_factor * R0``.

    Returns:
        ``(init_fn, step_fn)``: ``init_fn(init_key) -> RunState`` and
        ``step_fn(state, sample) -> RunState``.

    References:
        theory/derivation.md, eq. (1.3).
    """
    bound = _divergence_bound(prob, divergence_factor)
    return functools.partial(_init, prob), functools.partial(_sgd_step, prob, schedule, bound)


def hsgd(prob: SimProblem, schedule: Callable, divergence_factor=1e6, dt=None):
    """Clipped homogenized SGD by the exact OU step with frozen factors.

    Args:
        dt: time step; default ``1 / Tr K`` (one SGD step).

    Returns:
        ``(init_fn, step_fn)`` as :func:`sgd`.

    References:
        theory/derivation.md, eqs. (2.8) and (2.10).
    """
    bound = _divergence_bound(prob, divergence_factor)
    dt = 1.0 / prob.trace if dt is None else jnp.asarray(dt, prob.lam.dtype)
    return (functools.partial(_init, prob),
            functools.partial(_hsgd_step, prob, schedule, bound, dt))


def simulator(method: str, prob: SimProblem, schedule, divergence_factor=1e6, dt=None):
    """``(init_fn, step_fn)`` for ``method`` in ``("sgd", "hsgd")``."""
    if method == "sgd":
        return sgd(prob, schedule, divergence_factor)
    if method == "hsgd":
        return hsgd(prob, schedule, divergence_factor, dt)
    raise ValueError(f"method {method!r} is not allowed; use one of {', '.join(METHODS)}")


def output_steps(T: float, points: int, trace: float, dt: float | None = None) -> np.ndarray:
    """Steps at which the risk is recorded: ``round(t_j / dt)`` for ``t_j = linspace(0, T, points)``
    with ``dt = 1 / Tr K`` unless given."""
    dt = 1.0 / trace if dt is None else dt
    return np.rint(np.linspace(0.0, T, points) / dt).astype(np.int64)


ENGINES = ("step", "block")


def check_engine(engine: str, method: str) -> None:
    """Raise ``ValueError`` unless ``engine`` can run ``method``."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is not allowed; use one of {', '.join(ENGINES)}")
    if engine == "block" and method != "sgd":
        raise ValueError("engine 'block' runs C-SGD only; use engine 'step' for method 'hsgd'")


def _block_sgd(prob: SimProblem, schedules, stream_key: Array, states: RunState, lo, hi,
               block: int, bound: Array) -> RunState:
    """C-SGD steps ``lo..hi-1`` of one seed's ``C`` runs, ``block`` steps at a time, by matrix products.

    All runs of a seed share the block's samples ``X`` (``block x d``). With the Gram matrices
    ``G = X X^T`` and ``H = X Lam X^T`` and the projections ``P = E X^T``, ``Q = (E Lam) X^T`` of the
    block's starting errors, step ``j`` of a run needs only

        r_j = P_j - eps_j,   ||g_j|| = |r_j| sqrt(G_jj),   a_j = (eta / Tr K) min(1, C/||g_j||) r_j,
        R_{j+1} = R_j - a_j Q_j + a_j^2 H_jj / 2,   then  P <- P - a_j G_j,  Q <- Q - a_j H_j,

    an ``O(block)`` recurrence, and the block ends with ``E <- E - A X``. The risk is recomputed
    from ``E`` at the end of each block, so the incremental update never drifts. Per run-step this
    is ``6 d`` flops in matrix products instead of ``~10 d`` in vector passes over the state.
    Steps at or beyond ``hi`` are masked (``a = 0``).
    """
    lam, trace = prob.lam, prob.trace
    n_blocks = (hi - lo + block - 1) // block

    def one_block(b, states):
        k0 = lo + b * block
        samples = _draw_block(stream_key, k0, block, prob)
        X = prob.sqrt_lam[None, :] * samples.z
        G = X @ X.T
        H = (X * lam[None, :]) @ X.T
        P = states.e @ X.T
        Q = (states.e * lam[None, :]) @ X.T

        def per_run(P, Q, st, sched):
            def step(j, c):
                P, Q, R, div, dstep, A = c
                k = k0 + j
                eta, clip = sched(k.astype(R.dtype) / trace, R)
                r = P[j] - samples.eps[j]
                g_norm = jnp.abs(r) * jnp.sqrt(G[j, j])
                scale = _clip_scale(g_norm, clip * jnp.sqrt(trace))
                a = jnp.where(div | (k >= hi), 0.0, (eta / trace) * scale * r)
                R_new = R - a * Q[j] + 0.5 * a * a * H[j, j]
                blown = ~(R_new <= bound) & ~div & (k < hi)
                a = jnp.where(blown, 0.0, a)
                R = jnp.where(blown | (a == 0), R, R_new)
                return (P - a * G[j], Q - a * H[j], R, div | blown,
                        jnp.where(blown, (k + 1).astype(dstep.dtype), dstep),
                        A.at[j].set(a))

            init = (P, Q, st.risk, st.diverged, st.diverged_step, jnp.zeros((block,), P.dtype))
            _, _, R, div, dstep, A = jax.lax.fori_loop(0, block, step, init)
            return R, div, dstep, A

        R, div, dstep, A = jax.vmap(per_run)(P, Q, states, schedules)
        e = states.e - A @ X
        risk = jnp.where(div, R, 0.5 * jnp.sum(lam[None, :] * e * e, axis=-1))
        return RunState(e, risk, states.k, div, dstep)

    out = jax.lax.fori_loop(0, n_blocks, one_block, states)
    return out._replace(k=jnp.broadcast_to(hi, out.k.shape).astype(out.k.dtype))


@functools.partial(jax.jit, static_argnames=("method", "engine"))
def run_batch(prob: SimProblem, schedules, keys: Array, steps: Array, method: str = "sgd",
              divergence_factor=1e6, dt=None, engine: str = "step"):
    """Run ``S`` seeds x ``C`` configurations as one program.

    Seeds run one after another (``lax.map``); within a seed the ``C`` configurations run as one
    ``vmap`` and share that seed's samples (common random numbers). Samples are drawn for a block
    of steps at once, in a loop of their own, and then consumed by the step loop.

    This layout is what makes a run's numbers independent of the sweep around it: XLA compiles
    a vmapped step identically for any number of configurations, but fuses differently when the
    seed axis is batched or when the draw shares a loop with the step, and the last bits of a
    run would then change with the number of seeds.

    Args:
        prob: the prepared problem.
        schedules: a schedule pytree whose array leaves have a leading axis of size ``C``.
        keys: ``S`` PRNG keys (one per seed).
        steps: increasing output steps, ``(P,)``, starting at 0.
        method: ``"sgd"`` or ``"hsgd"``.
        engine: ``"step"`` (one vmapped step at a time; bit-identical alone and in any sweep) or
            ``"block"`` (C-SGD only: blocks of 64 steps by matrix products, see
            :func:`_block_sgd`; much faster for wide sweeps, equal to ``"step"`` up to rounding).

    Returns:
        ``(risk, diverged, diverged_step)`` of shapes ``(S, C, P)``, ``(S, C)``, ``(S, C)``;
        ``risk`` is ``nan`` at and after a run's divergence.
    """
    check_engine(engine, method)
    n_cfg = jax.tree.leaves(schedules)[0].shape[0]
    d_pad = prob.lam.shape[0]
    block = int(max(1, min(64, 2**22 // d_pad)))
    bound = _divergence_bound(prob, divergence_factor)

    def sim(schedule):
        return simulator(method, prob, schedule, divergence_factor, dt)

    def step_configs(states, sample):
        return jax.vmap(lambda st, sc: sim(sc)[1](st, sample))(states, schedules)

    def per_seed(key):
        init_key, stream_key = split_seed(key)
        e0 = initial_error(init_key, prob)
        states = jax.vmap(lambda _: start_state(prob, e0))(jnp.arange(n_cfg))

        def run_block(b, carry):
            states, lo, hi = carry
            k0 = lo + b * block
            samples = _draw_block(stream_key, k0, block, prob)

            def one(i, states):
                return step_configs(states, jax.tree.map(lambda x: x[i], samples))

            return jax.lax.fori_loop(0, jnp.minimum(block, hi - k0), one, states), lo, hi

        def interval(states, bounds):
            lo, hi = bounds
            if engine == "block":
                states = _block_sgd(prob, schedules, stream_key, states, lo, hi, block, bound)
            else:
                n_blocks = (hi - lo + block - 1) // block
                states, _, _ = jax.lax.fori_loop(0, n_blocks, run_block, (states, lo, hi))
            return states, jnp.where(states.diverged, jnp.nan, states.risk)

        end, risks = jax.lax.scan(interval, states, (steps[:-1], steps[1:]))
        risk0 = jnp.where(states.diverged, jnp.nan, states.risk)
        risk = jnp.concatenate([risk0[None], risks], axis=0).T  # (C, P)
        return risk, end.diverged, end.diverged_step

    return jax.lax.map(per_seed, keys)
