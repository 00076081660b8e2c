"""Matrix products at their operands' precision (:func:`clipdyn.precision.matmul`).

JAX's default precision rounds float32 operands of a matrix product to TensorFloat-32 on recent
NVIDIA GPUs and to bfloat16 on TPUs. On an H100 that moved the block engine's final risks 1.5e-4
(relative) away from the step engine's, against 5.9e-7 with float32 products (BENCHMARKS.md, the
GPU section). A CPU computes float32 products in float32 either way, so these tests read the
precision each product asks for in the lowered program instead: every ``dot_general`` of the
block engine and of the networks must ask for HIGHEST on both operands. The programs are lowered
in float32, the precision the request matters for; nothing is computed, so no tolerance.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clipdyn as cd
from clipdyn import sim as sm
from clipdyn.runs.sweep import seed_keys, stack_schedules
from clipdyn.sources import networks as nw
from clipdyn.theory.problem import make_problem, power_law_spectrum
from clipdyn.theory.rules import default_rule, per_sample, stack_rules
from clipdyn.theory.schedules import Constant, heuristic


def _dot_precisions(lowered) -> list[str]:
    """The ``precision = [...]`` of every dot_general in a lowered program ('' where absent)."""
    text = lowered.as_text()
    lines = [ln for ln in text.splitlines() if "stablehlo.dot_general" in ln]
    return [(re.search(r"precision = \[([A-Z, ]+)\]", ln) or [None, ""])[1] for ln in lines]


def _block_program(schedules, rule, n):
    problem = make_problem(power_law_spectrum(64, 0.3), cd.Gaussian(0.5))
    prob = sm.prepare(problem, jnp.float32)
    rules = stack_rules([rule] * n)
    fn = jax.jit(lambda s, r, p, k, st: sm.run_batch(p, s, r, k, st, engine="block"))
    return fn.lower(schedules, rules, prob, seed_keys([0]), jnp.asarray([0, 64]))


@pytest.mark.parametrize("case", ["constant-plain", "heuristic-per-sample"])
def test_every_product_of_the_block_engine_asks_for_the_operands_precision(case):
    if case == "constant-plain":  # Q and H are not formed (no schedule reads the risk)
        sched, rule = Constant(jnp.ones(3, jnp.float32), jnp.asarray([0.5, 1.0, 2.0], jnp.float32)), default_rule()
    else:  # the risk is tracked inside blocks: Q, H and their products too
        sched = stack_schedules([heuristic(1.0, k, cd.Gaussian(0.5), points=0) for k in (0.5, 1.0, 2.0)])
        rule = per_sample(4)
    precisions = _dot_precisions(_block_program(sched, rule, 3))
    assert len(precisions) >= 4, precisions  # G, P, the sub-block updates and E's update at least
    assert set(precisions) == {"HIGHEST, HIGHEST"}, precisions


def test_every_product_of_network_training_asks_for_the_operands_precision():
    params = nw.init_mlp(jax.random.key(0), (nw.N_FEATURES, 8, nw.N_CLASSES))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((5, nw.N_FEATURES)), jnp.float32)
    y = jax.nn.one_hot(jnp.arange(5) % nw.N_CLASSES, nw.N_CLASSES, dtype=jnp.float32)
    # per-example gradients: forward and backward products (the transpose keeps the precision)
    precisions = _dot_precisions(jax.jit(nw.per_example_grads).lower(params, x, y))
    assert len(precisions) >= 4, precisions
    assert set(precisions) == {"HIGHEST, HIGHEST"}, precisions


def test_the_default_precision_is_visible_to_the_check():
    """The check above can fail: a plain float32 ``@`` lowers without HIGHEST."""
    a = jnp.ones((3, 3), jnp.float32)
    assert _dot_precisions(jax.jit(lambda u: u @ u).lower(a)) != ["HIGHEST, HIGHEST"]
    assert _dot_precisions(jax.jit(lambda u: cd.precision.matmul(u, u)).lower(a)) == ["HIGHEST, HIGHEST"]
