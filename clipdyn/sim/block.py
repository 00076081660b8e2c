"""The block engine: C-SGD ``block`` steps at a time by matrix products (theory/derivation.md,
section 7; theory/clip_rules.md, section 4).

All runs of a seed share the block's rows ``Z`` (``block * n_rows x d``: each step's data rows,
then its pre-clip and DP rows). With the Gram matrices ``G = Z Z^T`` and ``H = Z Lam Z^T`` and
the projections ``P = E Z^T``, ``Q = (E Lam) Z^T`` of the block's starting errors, step ``j`` of
a run needs only its rows' slices:

    r = P_rows[:B] - eps_j,   a = (eta / Tr K) rule.coefficients(r, G_rows,rows, C),
    R <- R - a . Q_rows + a^T H_rows,rows a / 2,   P <- P - a^T G_rows,:,   Q <- Q - a^T H_rows,:,

an ``O(block * n_rows)`` recurrence, and the block ends with ``E <- E - A Z``. The Gram matrix
gives the norms of per-sample gradients and of (micro-)batch means exactly, so every clipping
rule runs here. The risk is recomputed from ``E`` at the end of each block, so the incremental
update never drifts. Steps at or beyond ``hi`` are masked (``a = 0``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clipdyn import rules as clip_rules
from clipdyn.sim.core import RunState, SimProblem, data_rows, draw_block

__all__ = ["block_sgd"]


def block_sgd(prob: SimProblem, schedules, rules, stream_key, states: RunState, lo, hi,
              block: int, bound) -> RunState:
    """C-SGD steps ``lo..hi-1`` of one seed's ``C`` runs (batched ``schedules`` and ``rules``)."""
    lam, trace = prob.lam, prob.trace
    n_blocks = (hi - lo + block - 1) // block
    plain = rules.plain
    n, B = rules.n_rows, rules.batch

    def one_block(b, states):
        k0 = lo + b * block
        samples = draw_block(stream_key, k0, block, prob, B, rules.n_extra)
        if plain:
            Z = data_rows(prob, samples.x)
            eps = samples.eps[:, None]
        else:
            X = data_rows(prob, samples.x)
            Z = jnp.concatenate([X, samples.extra], axis=1) if rules.n_extra else X
            Z = Z.reshape(block * n, -1)
            eps = samples.eps
        G = Z @ Z.T
        H = (Z * lam[None, :]) @ Z.T
        P = states.e @ Z.T
        Q = (states.e * lam[None, :]) @ Z.T

        def per_run(P, Q, st, sched, rule):
            def step(j, c):
                P, Q, R, div, dstep, A = c
                k = k0 + j
                eta, clip = sched(k.astype(R.dtype) / trace, R)
                C = clip * jnp.sqrt(trace)
                live = ~div & (k < hi)
                if plain:
                    r = P[j] - eps[j, 0]
                    scale = clip_rules.clip_scale(jnp.abs(r) * jnp.sqrt(G[j, j]), C)
                    a = jnp.where(live, (eta / trace) * scale * r, 0.0)[None]
                    R_new = R - a[0] * Q[j] + 0.5 * a[0] * a[0] * H[j, j]
                else:
                    s = j * n
                    g = jax.lax.dynamic_slice(G, (s, s), (n, n))
                    h = jax.lax.dynamic_slice(H, (s, s), (n, n))
                    r = jax.lax.dynamic_slice(P, (s,), (n,))[:B] - eps[j]
                    w = rule.coefficients(r, g, C, prob.pre_scale)
                    a = jnp.where(live, (eta / trace) * w, 0.0)
                    R_new = R - a @ jax.lax.dynamic_slice(Q, (s,), (n,)) + 0.5 * a @ (h @ a)
                blown = ~(R_new <= bound) & live
                a = jnp.where(blown, 0.0, a)
                moved = live & ~blown
                R = jnp.where(moved, R_new, R)
                s = j * n
                P = P - a @ jax.lax.dynamic_slice(G, (s, 0), (n, G.shape[1]))
                Q = Q - a @ jax.lax.dynamic_slice(H, (s, 0), (n, H.shape[1]))
                return (P, Q, R, div | blown,
                        jnp.where(blown, (k + 1).astype(dstep.dtype), dstep),
                        jax.lax.dynamic_update_slice(A, a, (s,)))

            init = (P, Q, st.risk, st.diverged, st.diverged_step, jnp.zeros((block * n,), P.dtype))
            _, _, R, div, dstep, A = jax.lax.fori_loop(0, block, step, init)
            return R, div, dstep, A

        R, div, dstep, A = jax.vmap(per_run)(P, Q, states, schedules, rules)
        e = states.e - A @ Z
        risk = jnp.where(div, R, 0.5 * jnp.sum(lam[None, :] * e * e, axis=-1))
        return RunState(e, risk, states.k, div, dstep)

    out = jax.lax.fori_loop(0, n_blocks, one_block, states)
    return out._replace(k=jnp.broadcast_to(hi, out.k.shape).astype(out.k.dtype))
