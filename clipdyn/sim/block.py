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
  ``sub`` steps; inside one the steps are unrolled and update only the sub-block's own columns of
  ``P`` (and ``Q``), and the sub-block's coefficients then update every column at once by one
  small matrix product. The sequential part is ``O(sub)`` per step instead of ``O(block)``, so
  blocks can be long (fewer passes over ``E``, larger and faster products).
* When no schedule of the sweep reads the risk (constants, functions of time: see
  :func:`reads_risk`), ``Q`` and ``H`` are not formed: a third of the products. The risk is then
  only needed for the divergence guard, and a cheap bound replaces it inside the block:
  ``sqrt(2 R_j) <= sqrt(2 R_start) + sum_i |a_i| ||z_i||_Lam`` (triangle inequality in the
  ``Lam``-norm). A block whose bound stays below the divergence threshold cannot contain a
  divergence; if the bound crosses it for any run, the block is recomputed from its start with
  ``Q`` and ``H``, which finds the exact step (the coefficients of the runs that did not diverge
  are computed by the same code in both passes).
* The risk is recomputed from ``E`` at the end of every block, so the incremental update never
  drifts. Steps at or beyond ``hi`` are masked (``a = 0``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clipdyn import rules as clip_rules
from clipdyn.sim.core import RunState, SimProblem, data_rows, draw_block

__all__ = ["block_sgd", "reads_risk", "RISK_FREE_SCHEDULES"]

RISK_FREE_SCHEDULES = ("Constant", "TimeVarying", "StepDecay", "PiecewiseConstant")
"""Schedules of :mod:`clipdyn.schedules` whose ``(eta, c)`` do not depend on the risk."""

_MARGIN = 0.999  # the bound must stay below this fraction of the threshold (rounding headroom)


def reads_risk(schedules) -> bool:
    """Whether a (batched) schedule's ``(eta, c)`` may depend on the risk ``R``.

    A schedule class can say so with a ``reads_risk`` class attribute; clipdyn's constant and
    time-only schedules do not read it, and any other schedule is assumed to.
    """
    cls = type(schedules)
    flag = getattr(cls, "reads_risk", None)
    if flag is not None:
        return bool(flag)
    return not (cls.__module__ == "clipdyn.schedules" and cls.__name__ in RISK_FREE_SCHEDULES)


def _block_rows(prob: SimProblem, rules, stream_key, k0, block):
    """The block's rows ``Z`` (``block * n_rows x d``) and label noise ``(block, B)``."""
    samples = draw_block(stream_key, k0, block, prob, rules.batch, rules.n_extra)
    if rules.plain:
        return data_rows(prob, samples.x), samples.eps[:, None]
    X = data_rows(prob, samples.x)
    Z = jnp.concatenate([X, samples.extra], axis=1) if rules.n_extra else X
    return Z.reshape(block * rules.n_rows, -1), samples.eps


def _recurrence(prob, schedules, rules, P, Q, G, H, norms, eps, k0, hi, states, bound, sub, panel,
                track):
    """The block's coefficients ``A`` (``C x block * n_rows``) and the runs' end-of-block
    ``(R, diverged, diverged_step, grow)``; ``grow`` is the divergence bound's increment.

    The block's steps are cut into panels of ``panel`` steps (a loop); a panel's projections are
    formed when it starts, from the block's starting projections and the coefficients so far
    (one product with ``A``, whose later columns are still 0). Inside a panel the steps are
    solved like a triangular system by recursive halving: solve the first half, update the
    second half's projections by one product with the first half's coefficients, solve the
    second half; halves of ``sub`` steps are unrolled step by step.
    """
    trace = prob.trace
    sqrt_trace = jnp.sqrt(trace)
    dtype = P.dtype
    n, B = rules.n_rows, rules.batch
    n_cfg, m = P.shape
    W = panel * n
    plain = rules.plain

    def coefficients(r, g, thr):
        if plain:
            return (clip_rules.clip_scale(jnp.abs(r[:, 0]) * jnp.sqrt(g[0, 0]), thr) * r[:, 0])[:, None]
        return jax.vmap(lambda ru, rr, cc: ru.coefficients(rr, g, cc, prob.pre_scale))(rules, r, thr)

    def chain(k_first, Ps, Qs, Gs, Hs, ns, es, st):
        """``sub`` steps one after another; ``Ps``, ``Qs``: their columns at the first step."""
        R, div, dstep, grow = st
        cols = []
        for jj in range(Ps.shape[1] // n):
            k = k_first + jj
            eta, clip = jax.vmap(lambda sc, rr: sc(k.astype(dtype) / trace, rr))(schedules, R)
            live = ~div & (k < hi)
            rows = slice(jj * n, (jj + 1) * n)
            p = Ps[:, rows]
            for ii, a_i in enumerate(cols):
                p = p - a_i @ Gs[ii * n:(ii + 1) * n, rows]
            r = p[:, :B] - es[jj][None, :]
            w = coefficients(r, Gs[rows, rows], clip * sqrt_trace)
            a = jnp.where(live[:, None], (eta / trace)[:, None] * w, 0.0)
            if track:
                q = Qs[:, rows]
                for ii, a_i in enumerate(cols):
                    q = q - a_i @ Hs[ii * n:(ii + 1) * n, rows]
                R_new = R - jnp.sum(a * q, -1) + 0.5 * jnp.sum(a * (a @ Hs[rows, rows]), -1)
                blown = ~(R_new <= bound) & live
                a = jnp.where(blown[:, None], 0.0, a)
                R = jnp.where(live & ~blown, R_new, R)
                div = div | blown
                dstep = jnp.where(blown, (k + 1).astype(dstep.dtype), dstep)
            else:
                grow = grow + jnp.sum(jnp.abs(a) * ns[rows][None, :], -1)
            cols.append(a)
        return jnp.concatenate(cols, axis=1), (R, div, dstep, grow)

    def solve(k_first, Pw, Qw, Gw, Hw, nw, ew, st):
        """Steps ``k_first ..`` of a window: ``Pw``, ``Qw`` its columns, ``Gw``, ``Hw`` its square
        blocks of ``G`` and ``H``, ``nw`` its row norms, ``ew`` its label noise."""
        width = Pw.shape[1]
        if width <= sub * n:
            return chain(k_first, Pw, Qw, Gw, Hw, nw, ew, st)
        h = (width // n // 2) * n
        A1, st = solve(k_first, Pw[:, :h], None if Qw is None else Qw[:, :h], Gw[:h, :h],
                       None if Hw is None else Hw[:h, :h], None if nw is None else nw[:h],
                       ew[:h // n], st)
        P2 = Pw[:, h:] - A1 @ Gw[:h, h:]
        Q2 = None if Qw is None else Qw[:, h:] - A1 @ Hw[:h, h:]
        A2, st = solve(k_first + h // n, P2, Q2, Gw[h:, h:], None if Hw is None else Hw[h:, h:],
                       None if nw is None else nw[h:], ew[h // n:], st)
        return jnp.concatenate([A1, A2], axis=1), st

    def one_panel(i, carry):
        st, A = carry
        s0 = i * W
        Pw = jax.lax.dynamic_slice_in_dim(P, s0, W, axis=1)
        Qw = Hw = nw = None
        if m > W:
            Pw = Pw - A @ jax.lax.dynamic_slice_in_dim(G, s0, W, axis=1)
        Gw = jax.lax.dynamic_slice(G, (s0, s0), (W, W))
        if track:
            Qw = jax.lax.dynamic_slice_in_dim(Q, s0, W, axis=1)
            if m > W:
                Qw = Qw - A @ jax.lax.dynamic_slice_in_dim(H, s0, W, axis=1)
            Hw = jax.lax.dynamic_slice(H, (s0, s0), (W, W))
        else:
            nw = jax.lax.dynamic_slice_in_dim(norms, s0, W)
        ew = jax.lax.dynamic_slice_in_dim(eps, i * panel, panel, axis=0)
        Aw, st = solve(k0 + i * panel, Pw, Qw, Gw, Hw, nw, ew, st)
        return st, jax.lax.dynamic_update_slice_in_dim(A, Aw, s0, axis=1)

    st = (states.risk, states.diverged, states.diverged_step, jnp.zeros((n_cfg,), dtype))
    A = jnp.zeros((n_cfg, m), dtype)
    if m == W:
        st, A = one_panel(0, (st, A))
    else:
        st, A = jax.lax.fori_loop(0, m // W, one_panel, (st, A))
    R, div, dstep, grow = st
    return A, R, div, dstep, grow


def block_sgd(prob: SimProblem, schedules, rules, stream_key, states: RunState, lo, hi,
              block: int, bound, sub: int = 8, panel: int | None = None,
              track_risk: bool | None = None) -> RunState:
    """C-SGD steps ``lo..hi-1`` of one seed's ``C`` runs (batched ``schedules`` and ``rules``).

    Args:
        prob: the prepared problem.
        schedules, rules: batched (leading axis ``C``).
        stream_key: the seed's sample stream.
        states: the runs' states at step ``lo``.
        lo, hi: the steps to take.
        block: steps per block (static; a multiple of ``panel``).
        bound: the divergence threshold on ``R``.
        sub: steps solved one after another at the bottom of the recurrence (static).
        panel: steps per panel of the recurrence (static; default ``block``; ``sub`` times a
            power of 2).
        track_risk: follow ``R`` step by step inside blocks (``Q`` and ``H``); default: when a
            schedule reads the risk (:func:`reads_risk`). Without it divergence is caught by
            the bound of the module doc and the block recomputed with it.

    Returns:
        The runs' states at step ``hi``.
    """
    panel = block if panel is None else panel
    if block % panel or panel % sub:
        raise ValueError(f"block={block}, panel={panel}, sub={sub}: each must divide the one before")
    lam = prob.lam
    track = reads_risk(schedules) if track_risk is None else bool(track_risk)
    n_blocks = (hi - lo + block - 1) // block

    def one_block(b, states):
        k0 = lo + b * block
        Z, eps = _block_rows(prob, rules, stream_key, k0, block)
        ZL = Z * lam[None, :]
        G = Z @ Z.T
        P = states.e @ Z.T

        def run(track):
            if track:
                Q, H, norms = states.e @ ZL.T, Z @ ZL.T, None
            else:
                Q, H, norms = None, None, jnp.sqrt(jnp.sum(Z * ZL, axis=-1))
            A, R, div, dstep, grow = _recurrence(prob, schedules, rules, P, Q, G, H, norms, eps,
                                                 k0, hi, states, bound, sub, panel, track)
            e = states.e - A @ Z
            exact = 0.5 * jnp.sum(lam[None, :] * e * e, axis=-1)
            risk = jnp.where(div, R, exact) if track else jnp.where(div, states.risk, exact)
            return RunState(e, risk, states.k, div, dstep), grow

        if track:
            return run(True)[0]
        fast, grow = run(False)
        top = jnp.sqrt(2.0 * states.risk) + grow
        suspect = (0.5 * top * top > _MARGIN * bound) & ~states.diverged
        return jax.lax.cond(jnp.any(suspect), lambda: run(True)[0], lambda: fast)

    out = jax.lax.fori_loop(0, n_blocks, one_block, states)
    return out._replace(k=jnp.broadcast_to(hi, out.k.shape).astype(out.k.dtype))
