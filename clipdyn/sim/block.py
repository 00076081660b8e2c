"""The block engine: C-SGD ``block`` steps at a time by matrix products (theory/derivation.md,
section 7; theory/clip_rules.md, section 4).

All runs of a seed share the block's rows ``Z`` (``block * n_rows x d``: each step's data rows,
then its pre-clip and DP rows). With the Gram matrices ``G = Z Z^T`` and ``H = Z Lam Z^T`` and
the projections ``P = E Z^T``, ``Q = E (Z Lam)^T`` of the block's starting errors, step ``j`` of
a run needs only its rows' slices:

    r = P_rows[:B] - eps_j,   a = (eta / Tr K) rule.coefficients(r, G_rows,rows, C),
    R <- R - a . Q_rows + a^T H_rows,rows a / 2,   P <- P - a^T G_rows,:,   Q <- Q - a^T H_rows,:,

and the block ends with ``E <- E - A Z``. The Gram matrix gives the norms of per-sample gradients
and of (micro-)batch means exactly, so every clipping rule runs here.

How the work is laid out (each choice measured, see BENCHMARKS.md):

* The recurrence is blocked like a triangular solve: the block's steps run in sub-blocks of
  ``sub`` steps; inside one the steps run one after another and update only the sub-block's own
  rows of ``P`` (and ``Q``), and the sub-block's coefficients then update every row at once by
  one small matrix product. The sequential part is ``O(sub)`` per step instead of ``O(block)``, so
  blocks can be long (fewer passes over ``E``, larger and faster products).
* When no schedule of the sweep reads the risk (constants, functions of time: see
  :func:`reads_risk`), ``Q`` and ``H`` are not formed: a third of the products. The risk is then
  only needed for the divergence guard, and a cheap bound replaces it inside the block:
  ``sqrt(2 R_j) <= sqrt(2 R_start) + sum_i |a_i| ||z_i||_Lam`` (triangle inequality in the
  ``Lam``-norm), evaluated once per block from all its coefficients. A block whose bound stays
  below the divergence threshold cannot contain a divergence; if the bound crosses it for any
  run, the block's coefficients are recomputed from its start with ``Q`` and ``H``, which finds
  the exact step (the coefficients of the runs that did not diverge are computed by the same
  code in both passes), and ``E`` is updated once, with whichever coefficients stand.
* The risk is recomputed from ``E`` at the end of every block, so the incremental update never
  drifts. Steps at or beyond ``hi`` are masked (``a = 0``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clipdyn.precision import matmul
from clipdyn.sim.core import RunState, SimProblem, data_rows, draw_block, guarded
from clipdyn.theory import rules as clip_rules
from clipdyn.theory.schedules import guard_rate

__all__ = ["block_sgd", "reads_risk", "RISK_FREE_SCHEDULES"]

RISK_FREE_SCHEDULES = ("Constant", "TimeVarying", "StepDecay", "PiecewiseConstant")
"""Schedules of :mod:`clipdyn.theory.schedules` whose ``(eta, c)`` do not depend on the risk."""

_MARGIN = 0.999  # the bound must stay below this fraction of the threshold (rounding headroom)

_DECAY = 1.0 / 16.0
"""A block in which any run's risk falls below this fraction of its start is recomputed step by
step (:func:`_stepwise`). The block's projections and its end ``E - A Z`` are formed from the
block's starting errors, so they carry rounding of ``eps |e_start|``: a run whose error shrinks by
a factor ``f`` inside the block keeps only ``eps f`` relative accuracy (noiseless problems of small
``Tr K / lam_max``: 200x off at ``d = 4`` in float32, and false divergences of risk-reading
schedules, whose tracked risk went negative). Below this fraction ``f <= 4``."""


def reads_risk(schedules) -> bool:
    """Whether a (batched) schedule's ``(eta, c)`` may depend on the risk ``R``.

    A schedule class can say so with a ``reads_risk`` class attribute; clipdyn's constant and
    time-only schedules do not read it, and any other schedule is assumed to.
    """
    cls = type(schedules)
    flag = getattr(cls, "reads_risk", None)
    if flag is not None:
        return bool(flag)
    return not (cls.__module__ == "clipdyn.theory.schedules" and cls.__name__ in RISK_FREE_SCHEDULES)


def _block_rows(prob: SimProblem, rules, stream_key, k0, block):
    """The block's rows ``Z`` (``block * n_rows x d``) and label noise ``(block, B)``."""
    samples = draw_block(stream_key, k0, block, prob, rules.batch, rules.n_extra)
    if rules.plain:
        return data_rows(prob, samples.x), samples.eps[:, None]
    X = data_rows(prob, samples.x)
    Z = jnp.concatenate([X, samples.extra], axis=1) if rules.n_extra else X
    return Z.reshape(block * rules.n_rows, -1), samples.eps


def _tdot(g: jax.Array, a: jax.Array) -> jax.Array:
    """``g^T a`` for ``g`` (``S x n``) and ``a`` (``S x C``), as a matrix product (the same sum
    written as an elementwise product summed over ``S`` made the whole engine 4.7x slower:
    measured side by side, 2026-11-22)."""
    return matmul(g.T, a)


def _step_coefficients(prob: SimProblem, schedules, rules, k, R, r, g, live):
    """One step's coefficients ``a`` (``n_rows x C``) of the runs' rows: the schedules' ``(eta, c)``
    at step ``k`` and risk ``R``, the rule's weights of the residuals ``r`` (``B x C``) given the
    rows' Gram matrix ``g``, times ``eta / Tr K``; 0 for runs not ``live``."""
    trace = prob.trace
    eta, clip = jax.vmap(lambda sc, rr: sc(k.astype(r.dtype) / trace, rr))(schedules, R)
    eta = guard_rate(schedules, eta, clip)
    thr = clip * jnp.sqrt(trace)
    if rules.plain:
        w = clip_rules.clip_scale(jnp.abs(r) * jnp.sqrt(g[0, 0]), thr[None, :]) * r
    else:
        w = jax.vmap(lambda ru, rr, cc: ru.coefficients(rr, g, cc, prob.pre_scale),
                     in_axes=(0, 1, 0))(rules, r, thr).T
    return jnp.where(live[None, :], (eta / trace)[None, :] * w, 0.0)


def _stepwise(prob: SimProblem, schedules, rules, Z, eps, k0, hi, states: RunState, bound):
    """The block's steps one at a time on the runs' errors themselves: ``(e, R, diverged,
    diverged_step)`` at its end, with the relative accuracy of the step engine (the fallback of
    :data:`_DECAY`). The same rows, coefficients and divergence rule as the recurrence."""
    n, B = rules.n_rows, rules.batch

    def step(j, st):
        k = k0 + j
        Zj = jax.lax.dynamic_slice_in_dim(Z, j * n, n, axis=0)
        r = matmul(Zj, st.e.T)[:B] - jax.lax.dynamic_index_in_dim(eps, j, keepdims=False)[:, None]
        live = ~st.diverged & (k < hi)
        a = _step_coefficients(prob, schedules, rules, k, st.risk, r, matmul(Zj, Zj.T), live)
        # the engines' one divergence rule (a masked step, a = 0, leaves the run as it is)
        return jax.vmap(lambda s, e: guarded(prob, s, e, bound))(st, st.e - matmul(a.T, Zj))

    # guarded counts steps from the run's k: this block's first step is k0
    start = states._replace(k=jnp.broadcast_to(k0, states.k.shape).astype(states.k.dtype))
    end = jax.lax.fori_loop(0, eps.shape[0], step, start)
    return end.e, end.risk, end.diverged, end.diverged_step


def _recurrence(prob, schedules, rules, P, Q, G, H, eps, k0, hi, states, bound, sub, track):
    """The block's coefficients ``A`` (``block * n_rows x C``) and the runs' end-of-block
    ``(R, diverged, diverged_step)`` (``R`` tracked only with ``track``; else the block's start).

    The runs are the last (contiguous) axis of every array here, so a step reads and writes
    whole rows. The block's steps run in sub-blocks of ``sub`` steps. A sub-block's projections
    are formed when it starts, from the block's starting projections ``P`` (``block * n_rows x
    C``) and the coefficients so far (one product with ``A``, whose later rows are still 0);
    inside it the steps run one after another and update only the sub-block's own rows.
    """
    dtype = P.dtype
    n, B = rules.n_rows, rules.batch
    m, n_cfg = P.shape
    S = sub * n

    def sub_block(i, carry):
        st, A = carry
        s0 = i * S
        Ps = jax.lax.dynamic_slice_in_dim(P, s0, S, axis=0)
        Qs = Hs = None
        if m > S:
            Ps = Ps - matmul(jax.lax.dynamic_slice_in_dim(G, s0, S, axis=0), A)
        Gs = jax.lax.dynamic_slice(G, (s0, s0), (S, S))
        if track:
            Qs = jax.lax.dynamic_slice_in_dim(Q, s0, S, axis=0)
            if m > S:
                Qs = Qs - matmul(jax.lax.dynamic_slice_in_dim(H, s0, S, axis=0), A)
            Hs = jax.lax.dynamic_slice(H, (s0, s0), (S, S))
        es = jax.lax.dynamic_slice_in_dim(eps, i * sub, sub, axis=0)

        def step(jj, c):
            As, (R, div, dstep) = c
            k = k0 + i * sub + jj
            live = ~div & (k < hi)
            j0 = jj * n
            # This step's rows of the projections: the sub-block's starting ones less the
            # terms of its earlier steps (As is still 0 from this step on).
            g_cols = jax.lax.dynamic_slice_in_dim(Gs, j0, n, axis=1)
            p = jax.lax.dynamic_slice_in_dim(Ps, j0, n, axis=0) - _tdot(g_cols, As)
            g = jax.lax.dynamic_slice_in_dim(g_cols, j0, n, axis=0)
            r = p[:B] - jax.lax.dynamic_index_in_dim(es, jj, keepdims=False)[:, None]
            a = _step_coefficients(prob, schedules, rules, k, R, r, g, live)
            if track:
                h_cols = jax.lax.dynamic_slice_in_dim(Hs, j0, n, axis=1)
                h = jax.lax.dynamic_slice_in_dim(h_cols, j0, n, axis=0)
                q = jax.lax.dynamic_slice_in_dim(Qs, j0, n, axis=0) - _tdot(h_cols, As)
                R_new = R - jnp.sum(a * q, 0) + 0.5 * jnp.sum(a * _tdot(h, a), 0)
                blown = ~(R_new <= bound) & live
                a = jnp.where(blown[None, :], 0.0, a)
                R = jnp.where(live & ~blown, R_new, R)
                div = div | blown
                dstep = jnp.where(blown, (k + 1).astype(dstep.dtype), dstep)
            As = jax.lax.dynamic_update_slice_in_dim(As, a, j0, axis=0)
            return As, (R, div, dstep)

        As, st = jax.lax.fori_loop(0, sub, step, (jnp.zeros((S, n_cfg), dtype), st))
        return st, jax.lax.dynamic_update_slice_in_dim(A, As, s0, axis=0)

    st = (states.risk, states.diverged, states.diverged_step)
    st, A = jax.lax.fori_loop(0, m // S, sub_block, (st, jnp.zeros((m, n_cfg), dtype)))
    R, div, dstep = st
    return A, R, div, dstep


def block_sgd(prob: SimProblem, schedules, rules, stream_key, states: RunState, lo, hi,
              block: int, bound, sub: int = 16, track_risk: bool | None = None) -> RunState:
    """C-SGD steps ``lo..hi-1`` of one seed's ``C`` runs (batched ``schedules`` and ``rules``).

    Args:
        prob: the prepared problem.
        schedules, rules: batched (leading axis ``C``).
        stream_key: the seed's sample stream.
        states: the runs' states at step ``lo``.
        lo, hi: the steps to take.
        block: steps per block (static; a multiple of ``sub``, or shorter than it); the last
            block of ``lo..hi`` is masked beyond ``hi``.
        bound: the divergence threshold on ``R``.
        sub: steps per sub-block of the recurrence (static).
        track_risk: follow ``R`` step by step inside blocks (``Q`` and ``H``); default: when a
            schedule reads the risk (:func:`reads_risk`). Without it divergence is caught by
            the bound of the module doc and the block recomputed with it.

    Returns:
        The runs' states at step ``hi``.
    """
    sub = min(int(sub), int(block))
    if block % sub:
        raise ValueError(f"block={block} must be a multiple of sub={sub}")
    lam = prob.lam
    track = reads_risk(schedules) if track_risk is None else bool(track_risk)

    def one_block(b, states):
        k0 = lo + b * block
        Z, eps = _block_rows(prob, rules, stream_key, k0, block)
        ZL = Z * lam[None, :]
        G = matmul(Z, Z.T)
        P = matmul(Z, states.e.T)

        def coefficients(track):
            Q, H = (matmul(ZL, states.e.T), matmul(Z, ZL.T)) if track else (None, None)
            return _recurrence(prob, schedules, rules, P, Q, G, H, eps, k0, hi, states, bound,
                               sub, track)

        A, R, div, dstep = coefficients(track)
        if not track:
            # The bound of the module doc, from the whole block's coefficients at once (one
            # reduction, not one per step); it only decides whether to recompute the block.
            norms = jnp.sqrt(jnp.sum(Z * ZL, axis=-1))
            top = jnp.sqrt(2.0 * states.risk) + jnp.sum(jnp.abs(A) * norms[:, None], axis=0)
            # Written so that a nan (a schedule's refused values, clipdyn.theory.schedules.
            # guard_rate) is suspect too: it reached the risk unflagged as diverged.
            suspect = ~(0.5 * top * top <= _MARGIN * bound) & ~states.diverged
            # Only the coefficients are chosen here; the update of E below is shared. (Choosing
            # between two updated states copied E every block: 5-8 % of the engine's time.)
            A, R, div, dstep = jax.lax.cond(jnp.any(suspect), lambda: coefficients(True),
                                            lambda: (A, R, div, dstep))
        e = states.e - matmul(A.T, Z)
        exact = 0.5 * jnp.sum(lam[None, :] * e * e, axis=-1)
        # A diverged run keeps the risk it diverged at (R stays at the block's start when the
        # risk was not tracked: no run diverged there).
        R = jnp.where(div, R, exact)
        # A run whose risk fell by more than _DECAY takes the block again step by step. That
        # covers a divergence flagged only through the rounding of a tracked risk (it went
        # negative or nan: the risk had fallen to ~eps of its start by then, and the frozen run
        # keeps that risk). Real divergences are not retaken: their steps were the same in every
        # sweep measured (256 rates, half diverging), and retaking cost 35-50 % there.
        fell = ~states.diverged & (exact < _DECAY * states.risk)
        e, R, div, dstep = jax.lax.cond(
            jnp.any(fell),
            lambda: _stepwise(prob, schedules, rules, Z, eps, k0, hi, states, bound),
            lambda: (e, R, div, dstep))
        return RunState(e, R, states.k, div, dstep)

    n_blocks = (hi - lo + block - 1) // block
    out = jax.lax.fori_loop(0, n_blocks, one_block, states)
    return out._replace(k=jnp.broadcast_to(hi, out.k.shape).astype(out.k.dtype))
