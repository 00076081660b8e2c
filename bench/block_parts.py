"""Where the block engine's time goes: its two products per block and the Gram matrix alone,
the per-run recurrence between them and the block's draws alone, against the whole engine at
steady state (d = 1000, 1024 runs, 256-step blocks, float32).

Measures only; prints one line per part, with the float32 matrix ceiling measured in the same
run. BENCHMARKS.md, "What bounds the numbers".

    python bench/block_parts.py
"""

import jax
import jax.numpy as jnp
import numpy as np

import clipdyn as cd
from clipdyn import sim
from clipdyn.runs.sweep import seed_keys
from clipdyn.sim.block import _block_rows, _recurrence
from clipdyn.sim.runner import SUB_STEPS
from clipdyn.theory.problem import make_problem
from clipdyn.theory.rules import default_rule, stack_rules
from clipdyn.theory.schedules import Constant

from bench import median_time  # the same timing as make bench (and its float64 mode)

D, RUNS, BLOCK = 1000, 1024, 256


def main():
    a = jnp.ones((2048, 2048), jnp.float32)
    square = jax.jit(lambda x: x @ x)
    ceiling = 2 * 2048**3 / median_time(lambda: square(a).block_until_ready(), 7)
    print(f"float32 matrix ceiling: {ceiling / 1e9:.0f} GFLOP/s")

    Z = jax.random.normal(jax.random.key(0), (BLOCK, D), jnp.float32)
    E = jax.random.normal(jax.random.key(1), (RUNS, D), jnp.float32)
    A = 1e-3 * jax.random.normal(jax.random.key(2), (BLOCK, RUNS), jnp.float32)
    parts = {
        "P = Z E^T": (jax.jit(lambda Z, E, A: Z @ E.T), 2 * BLOCK * D * RUNS),
        "E - A^T Z": (jax.jit(lambda Z, E, A: E - A.T @ Z), 2 * BLOCK * D * RUNS),
        "both + Gram Z Z^T": (jax.jit(lambda Z, E, A: (Z @ E.T, E - A.T @ Z, Z @ Z.T)),
                              4 * BLOCK * D * RUNS + 2 * BLOCK * BLOCK * D),
    }
    for name, (fn, flops) in parts.items():
        t = median_time(lambda: jax.block_until_ready(fn(Z, E, A)), 7)
        print(f"{name}: {t * 1e3:.2f} ms per block, {flops / t / ceiling:.0%} of the ceiling, "
              f"{t / (BLOCK * RUNS) * 1e9:.1f} ns per run-step")

    prob = sim.prepare(make_problem(jnp.asarray(np.arange(1, D + 1) ** -0.3), cd.Gaussian(0.5)),
                       jnp.float32)
    sched = Constant(jnp.ones(RUNS, jnp.float32), jnp.asarray(np.geomspace(0.1, 10, RUNS), jnp.float32))
    rules, keys = stack_rules([default_rule()] * RUNS), seed_keys([0])
    # The per-run recurrence alone (the engine's own code, no risk tracking, as for constant
    # schedules): what runs between the products, step after step.
    G = Z @ Z.T
    P = (Z @ E.T) * 1e-2
    eps = jax.random.normal(jax.random.key(3), (BLOCK, 1), jnp.float32)
    states = sim.RunState(E, jnp.ones(RUNS, jnp.float32), jnp.zeros(RUNS, jnp.int32),
                          jnp.zeros(RUNS, bool), jnp.full(RUNS, -1, jnp.int32))
    rec = jax.jit(lambda P, G, eps, st: _recurrence(
        prob, sched, rules, P, None, G, None, eps, 0, BLOCK, st, 1e6, SUB_STEPS, False))
    t = median_time(lambda: jax.block_until_ready(rec(P, G, eps, states)), 7)
    print(f"recurrence alone ({SUB_STEPS}-step sub-blocks, their G_s A products included): "
          f"{t * 1e3:.2f} ms per block, {t / (BLOCK * RUNS) * 1e9:.1f} ns per run-step")

    # The block's draws alone (shared by the runs of a seed; threefry, as the engine draws them).
    draws = jax.jit(lambda k0: _block_rows(prob, rules, keys[0], k0, BLOCK))
    t = median_time(lambda: jax.block_until_ready(draws(jnp.int32(0))), 7)
    print(f"draws alone: {t * 1e3:.2f} ms per block, {t / (BLOCK * RUNS) * 1e9:.1f} ns per run-step")

    run = jax.jit(lambda s, r, p, k, st: sim.run_batch(p, s, r, k, st, engine="block"))
    for steps in (512, 2048):
        out_steps = jnp.asarray([0, steps])
        t = median_time(lambda: run(sched, rules, prob, keys, out_steps)[0].block_until_ready(), 3)
        print(f"whole engine, {steps} steps: {t / (RUNS * steps) * 1e9:.1f} ns per run-step, "
              f"{4 * D * RUNS * steps / t / ceiling:.0%} of the ceiling (4 d flops per run-step)")


if __name__ == "__main__":
    main()
