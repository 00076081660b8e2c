"""Clipping rules in the simulators: each rule's step against a plain NumPy implementation fed
the same samples (float64), the block engine against the step engine, ``B = 1`` against the
numbers of the one-sample engine before rules existed (bit for bit), and per-sample clipping and
DP noise against optax's own transforms on the same inputs.
"""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import clipdyn as cd
from clipdyn import sim
from clipdyn.runs import sweep as sw
from clipdyn.theory import rules
from clipdyn.theory.problem import make_problem, power_law_spectrum
from clipdyn.theory.schedules import Constant, constant

import reference as ref

DATA = Path(__file__).resolve().parent / "data"

RULES = {
    "per-sample B=4": rules.per_sample(4),
    "batch B=4": rules.batch_mean(4),
    "micro B=6 size=2": rules.micro_batch(6, 2),
    "index B=4 beta=2": rules.index_thresholds(4, 2.0),
    "per-sample B=3 preclip": rules.per_sample(3, preclip_noise=0.7),
    "index B=3 beta=1 preclip+dp": rules.index_thresholds(3, 1.0, dp_noise=0.3, preclip_noise=0.4),
    "batch B=4 dp": rules.batch_mean(4, dp_noise=0.5),
}


def _numpy_run(prob, rule, key, eta, c, K):
    """The rule's trajectory from the engine's own samples, updated by the NumPy reference."""
    init_key, stream = sim.split_seed(key)
    e = np.asarray(sim.initial_error(init_key, prob), np.float64)
    lam = np.asarray(prob.lam, np.float64)
    trace = float(prob.trace)
    d = int(np.sum(np.asarray(prob.active)))
    draw = jax.jit(lambda k: sim.draw_sample(stream, k, prob, rule.batch, rule.n_extra))
    C = c * math.sqrt(trace)
    for k in range(K):
        s = draw(k)
        x = np.sqrt(lam) * np.asarray(s.x, np.float64)
        extra = np.asarray(s.extra, np.float64)
        zeta = extra[: rule.batch] * (float(rule.preclip_noise) * math.sqrt(trace / d)) if rule.use_preclip else None
        zdp = extra[-1] if rule.use_dp else None
        G = ref.numpy_rule_update(rule.kind, rule.batch, rule.size, float(rule.beta),
                                  float(rule.dp_noise), float(rule.preclip_noise), x,
                                  np.asarray(s.eps, np.float64), e, C, trace, zeta, zdp)
        e = e - eta / trace * G
    return 0.5 * np.sum(lam * e * e)


def test_rows_of_a_batch_draw_from_independent_keys():
    """Every random quantity of a step (each row's features and label noise, the extra rows) is
    drawn from its own key. Row b's key was fold_in(K, b), and under JAX's partitionable
    threefry (the default) fold_in(K, 1) is split(K)[1], row 0's noise key: the Student-t
    sampler's numerator of row 0's noise was row 1's first feature (Spearman 0.97).

    Spearman's rank correlation of independent samples has standard error 1/sqrt(n - 1) (0.0071
    at n = 20000); every pair below must stay under 5 standard errors (float32, Student-t df 3:
    its sampler splits its key, as the batch does)."""
    from scipy.stats import spearmanr

    problem = make_problem(np.ones(3), cd.StudentT(3.0, 1.0))
    prob = sim.prepare(problem, jnp.float32)
    _, stream = sim.split_seed(jax.random.key(0))
    n = 20000
    s = jax.jit(jax.vmap(lambda k: sim.draw_sample(stream, k, prob, 3, 2)))(jnp.arange(n))
    x, eps, extra = (np.asarray(a, np.float64) for a in (s.x, s.eps, s.extra))
    columns = [eps[:, b] for b in range(3)] + [x[:, b, i] for b in range(3) for i in range(3)]
    columns += [extra[:, j, i] for j in range(2) for i in range(3)]
    rho = spearmanr(np.stack(columns, axis=1)).statistic
    worst = np.max(np.abs(rho - np.eye(len(columns))))
    assert worst < 5 / math.sqrt(n - 1), worst


# Two rules cover every code path (group clipping, index thresholds, pre-clip and DP noise)
# in the fast suite; the other five run with the slow suite.
FAST_RULES = ("micro B=6 size=2", "index B=3 beta=1 preclip+dp")


@pytest.mark.parametrize("name", [n if n in FAST_RULES else pytest.param(n, marks=pytest.mark.slow)
                                  for n in RULES])
def test_rule_step_matches_numpy(name):
    # float64; same samples, same start: only rounding separates the two (pairwise sums in
    # clipdyn vs NumPy's), so 1e-10 relative after 150 steps of a contraction. Gaussian noise:
    # the rule's update reads the samples, whatever their law (the Student-t sampler is checked
    # against NumPy in test_simulate.py and doubles the compilation here).
    rule = RULES[name]
    problem = make_problem(power_law_spectrum(64, 0.5), cd.Gaussian(0.5))
    prob = sim.prepare(problem, jnp.float64)
    trace = float(prob.trace)
    K, eta, c = 150, 1.5, 0.4
    want = _numpy_run(prob, rule, jax.random.key(5), eta, c, K)
    res = sw.simulate_runs(problem, constant(eta, c), [5], T=K / trace, points=2, precision="64",
                           rules=rule)
    assert sim.output_steps(K / trace, 2, trace)[-1] == K
    np.testing.assert_allclose(res.risk[0, 0, -1], want, rtol=1e-10)


@pytest.mark.parametrize("name", [pytest.param("batch B=4", marks=pytest.mark.slow),
                                  pytest.param("micro B=6 size=2", marks=pytest.mark.slow),
                                  "index B=3 beta=1 preclip+dp"])
def test_block_engine_equals_step_engine(name):
    # float64: the block engine's Gram-matrix recurrence is exact algebra, so the two engines
    # differ only by rounding (1e-10 relative over ~400 steps).
    rule = RULES[name]
    problem = make_problem(power_law_spectrum(100, 0.3), cd.Gaussian(0.5))
    scheds = sw.stack_schedules([Constant(1.0, 0.3), Constant(2.0, 1.0), Constant(0.5, math.inf)])
    kw = dict(precision="64", rules=rule, progress=False)
    a = sw.run_sweep(problem, scheds, [0, 1], 12.0, 4, **kw)
    b = sw.run_sweep(problem, scheds, [0, 1], 12.0, 4, engine="block", **kw)
    np.testing.assert_allclose(b.risk, a.risk, rtol=1e-10)


@pytest.mark.parametrize("case", [
    ("gauss", "32", "sgd", "step"), ("gauss", "32", "sgd", "block"),
    pytest.param(("gauss", "32", "hsgd", "step"), marks=pytest.mark.slow),
    pytest.param(("student", "64", "sgd", "step"), marks=pytest.mark.slow),
    pytest.param(("student", "64", "sgd", "block"), marks=pytest.mark.slow)])
def test_b1_is_todays_csgd_bit_for_bit(case):
    # With B = 1 and no options every rule is the paper's one-sample C-SGD. The file
    # tests/data/b1_reference.npz was written by the one-sample engine at commit b52634c, before
    # clipping rules existed. The step engine (the bit-reproducible one, and C-HSGD) must
    # reproduce it bit for bit with every rule, in both precisions. The block engine promises
    # equality with the step engine up to rounding only (its matrix-product kernels' last bits
    # depend on the layout, README "Reproducibility"): there every rule must reproduce the
    # rule-free block run bit for bit, and the reference to a few ulps (float32: rtol 1e-6,
    # ~8 ulp; float64: rtol 1e-13; measured: 1 ulp).
    ref_runs = np.load(DATA / "b1_reference.npz")
    lam = power_law_spectrum(200, 0.3)
    sch = sw.stack_schedules([constant(1.0, 0.3), constant(1.5, 1.0), constant(0.7, np.inf)])
    name, prec, method, engine = case
    law = cd.Gaussian(0.5) if name == "gauss" else cd.StudentT(2.5, 0.5)
    prob = make_problem(lam, law, R0=1.0)
    ref = ref_runs[f"{name}_{prec}_{method}_{engine}"]
    base = None
    for rule in (None, rules.per_sample(1), rules.batch_mean(1), rules.micro_batch(1, 1),
                 rules.index_thresholds(1, 3.0)):
        res = sw.run_sweep(prob, sch, [0, 3], 2.0, 5, method=method, precision=prec,
                           engine=engine, progress=False, rules=rule)
        if engine == "step":
            np.testing.assert_array_equal(res.risk, ref, err_msg=f"{name} {prec} {method} {rule}")
        elif base is None:
            base = res.risk
            np.testing.assert_allclose(base, ref, rtol=1e-6 if prec == "32" else 1e-13, atol=0)
        else:
            np.testing.assert_array_equal(res.risk, base, err_msg=f"{name} {prec} block {rule}")


def _per_example(B=5, d=7, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, d)) * np.linspace(0.5, 2.0, d)
    r = rng.standard_t(2.0, size=B) * 3.0
    return x, r


def test_per_sample_and_dp_equal_optax():
    # float64 (jax.enable_x64); optax's own DP-SGD aggregation and per-example
    # clipping on the same per-example gradients g_b = r_b x_b and the same noise draw: equal
    # to rounding (1e-13).
    with jax.enable_x64(True):
        x, r = _per_example()
        B, d = x.shape
        g = jnp.asarray(r[:, None] * x)
        C, S = 2.5, 0.8
        tx = optax.contrib.differentially_private_aggregate(C, S, key=jax.random.key(11))
        state = tx.init(jnp.zeros(d))
        want, _ = tx.update(g, state)
        # optax draws its noise from split(key)[1] for the single leaf.
        _, noise_key = jax.random.split(jax.random.key(11))
        z = jax.random.normal(noise_key, (d,), jnp.float64)
        rule = rules.per_sample(B, dp_noise=S)
        rows = jnp.concatenate([jnp.asarray(x), z[None]])
        coef = rule.coefficients(jnp.asarray(r), rows @ rows.T, jnp.asarray(C), jnp.asarray(1.0))
        np.testing.assert_allclose(coef @ rows, want, rtol=1e-13, atol=1e-14)
        # Per-sample clipping alone: optax's per_example_global_norm_clip returns the sum.
        summed, _ = optax.per_example_global_norm_clip([g], C)
        coef = rules.per_sample(B).coefficients(jnp.asarray(r), jnp.asarray(x @ x.T), jnp.asarray(C),
                                                jnp.asarray(1.0))
        np.testing.assert_allclose(coef @ jnp.asarray(x), summed[0] / B, rtol=1e-13)


def test_batch_and_micro_equal_optax_clip_by_global_norm():
    # float64: clip_by_global_norm on the batch mean (batch rule) and on each micro-batch mean,
    # then averaged (micro rule), against the rule's coefficients; equal to rounding.
    with jax.enable_x64(True):
        x, r = _per_example(B=6)
        B, d = x.shape
        g = r[:, None] * x
        C = 1.5
        clip = optax.clip_by_global_norm(C)
        want, _ = clip.update(jnp.asarray(g.mean(0)), clip.init(None))
        coef = rules.batch_mean(B).coefficients(jnp.asarray(r), jnp.asarray(x @ x.T), jnp.asarray(C),
                                                jnp.asarray(1.0))
        np.testing.assert_allclose(coef @ jnp.asarray(x), want, rtol=1e-13)
        groups = [clip.update(jnp.asarray(gr.mean(0)), clip.init(None))[0] for gr in g.reshape(3, 2, d)]
        coef = rules.micro_batch(B, 2).coefficients(jnp.asarray(r), jnp.asarray(x @ x.T),
                                                    jnp.asarray(C), jnp.asarray(1.0))
        np.testing.assert_allclose(coef @ jnp.asarray(x), np.mean(groups, axis=0), rtol=1e-13)


def test_rule_validation():
    with pytest.raises(ValueError, match="does not divide"):
        rules.micro_batch(6, 4)
    with pytest.raises(ValueError, match="pre-clip noise is not allowed"):
        rules.ClipRule("batch", 4, 4, preclip_noise=0.5, use_preclip=True)
    with pytest.raises(ValueError, match="dp_noise"):
        rules.per_sample(2, dp_noise=-1.0)
    with pytest.raises(ValueError, match="beta"):
        rules.index_thresholds(4, 0.0)
    with pytest.raises(ValueError, match="batch"):
        rules.per_sample(0)
    # an array for one rule's parameter failed later in the factors, naming nothing (trial-rules)
    with pytest.raises(ValueError, match=r"beta=\[1.0, 2.0\] is not allowed; beta must be a single number"):
        rules.index_thresholds(4, [1.0, 2.0])
    with pytest.raises(ValueError, match="preclip_noise=.* must be a single number"):
        rules.per_sample(2, preclip_noise=np.ones(2))


def test_per_sample_factors_reduce_to_paper_factors():
    # float64: B = 1 rules give the paper's factors exactly; per-sample with B divides nu by B
    # and keeps mu and the unitless nu and CCC (THEORY.md section 6).
    law = cd.StudentT(3.0, 1.0)
    with jax.enable_x64(True):
        base = cd.reduction_factors(law, 0.3, 0.8)
        for rule in (rules.per_sample(1), rules.index_thresholds(1, 2.0)):
            f = cd.reduction_factors(law, 0.3, 0.8, rule)
            np.testing.assert_allclose([f.mu, f.nu_abs, f.ccc], [base.mu, base.nu_abs, base.ccc], rtol=1e-14)
        f = cd.reduction_factors(law, 0.3, 0.8, rules.per_sample(8))
        np.testing.assert_allclose([f.mu, f.nu_abs * 8, f.nu, f.ccc],
                                   [base.mu, base.nu_abs, base.nu, base.ccc], rtol=1e-14)
        assert float(cd.max_stable_lr(law, 0.3, math.inf, rules.per_sample(8))) == pytest.approx(16.0)


@pytest.mark.parametrize("law", [cd.Gaussian(1.0), cd.StudentT(2.5, 1.0)], ids=["gaussian", "t2.5"])
def test_ccc_at_zero_threshold_with_a_rule_is_the_limit(law):
    # float64. c = 0 is a 0/0 limit, evaluated just above 0. The per-sample rule's CCC does not
    # depend on B, so at c = 0 it is the single-sample limit (exact there); it was 5e-8 off when
    # evaluated at 1e-7 threshold units. 1e-11 allows the 5e-13 measured at 1e-12 units.
    with jax.enable_x64(True):
        exact = float(cd.reduction_factors(law, 0.5, 0.0).ccc)
        got = float(cd.reduction_factors(law, 0.5, 0.0, rules.per_sample(4)).ccc)
    assert got == pytest.approx(exact, rel=1e-11)
    if isinstance(law, cd.Gaussian):
        assert exact == pytest.approx(2 / math.pi, rel=1e-15)


def test_factor_table_interpolates_to_stated_accuracy():
    # float64. The table (8 points per decade, cubic Hermite with autodiff slopes) against the exact
    # factors between grid points, for the batch rule under Gaussian noise (closed form, so the
    # reference is exact): the stated accuracy is 1e-5 relative (O(h^4) with h = ln(10)/8).
    law, c = cd.Gaussian(1.0), 0.7
    rule = rules.batch_mean(8)
    table_rule = rules.tabulate(rule, law, c, R_min=1e-4, R_max=1e3)
    with jax.enable_x64(True):
        R = jnp.exp(jnp.linspace(np.log(1e-4), np.log(1e3), 57) + 0.0137)[:-1]
        exact = jax.jit(jax.vmap(lambda r: rule.ode_factors(law, r, c)))(R)
        approx = jax.jit(jax.vmap(lambda r: table_rule.ode_factors(law, r, c)))(R)
        np.testing.assert_allclose(approx.mu, exact.mu, rtol=3e-5)
        np.testing.assert_allclose(approx.nu, exact.nu, rtol=3e-5)
        # Asked at another threshold, the table answers nan instead of a wrong number.
        assert np.isnan(float(table_rule.ode_factors(law, 0.5, 0.8).mu))


@pytest.mark.slow  # 14 s: compiles the Student-t index factors, exactly and under jvp
def test_tables_at_several_thresholds_match_exact_factors():
    # float64. The study of make clip-rules tabulates every rule under Student-t noise at each
    # threshold (one compilation, the threshold is an argument): each table must answer for its
    # own threshold. Index rule (per-sample factors at c k^(1/beta), each a 2048-node mixture),
    # exact factors as the reference, 8 points per decade: the stated 3e-5 relative.
    law = cd.StudentT(2.5, 1.0)
    rule = rules.index_thresholds(2, 2.0)
    with jax.enable_x64(True):
        R = jnp.exp(jnp.linspace(np.log(1e-2), np.log(50.0), 6) + 0.0137)
        for c in (0.3, 2.0):
            table_rule = rules.tabulate(rule, law, c, R_min=1e-2, R_max=1e2)
            exact = jax.vmap(lambda r: rule.ode_factors(law, r, c))(R)
            approx = jax.vmap(lambda r: table_rule.ode_factors(law, r, c))(R)
            np.testing.assert_allclose(approx.mu, exact.mu, rtol=3e-5)
            np.testing.assert_allclose(approx.nu, exact.nu, rtol=3e-5)


def test_group_rules_take_the_cosine_terms_their_lowest_risk_needs():
    # Atoms far apart (theory/clip_rules.md, eq. (18a)): where the factors are traced (the ODE,
    # C-HSGD, the criteria) the rule carries its cosine terms; resolved() raises them to what
    # batch_factors.cos_terms_needed asks at the lowest risk, and solve_ode does so with the
    # lowest risk it reached, solving again when that needed more.
    from clipdyn.theory import batch_factors as bf
    from clipdyn.theory import ode

    law = cd.Empirical(np.array([0.0, 0.4, 8.0]))
    rule = rules.batch_mean(4)
    need = bf.cos_terms_needed(law, 1e-4, 4)
    assert need > bf.DEFAULT_COS_TERMS
    assert rules.resolved(rule, law, 1e-4).cos_terms == need
    assert rules.resolved(rule, law, 0.1) is rule  # the default suffices there
    assert rules.resolved(rules.micro_batch(8, 2), law, 1e-4).cos_terms == bf.cos_terms_needed(law, 1e-4, 2)
    assert rules.resolved(rules.per_sample(4), law, 1e-6) == rules.per_sample(4)
    assert rules.resolved(rule, cd.StudentT(3.0, 1.0), 1e-6) is rule
    more = rules.ClipRule("batch", 4, 4, cos_terms=2 * need)
    assert rules.resolved(more, law, 1e-4) is more  # never lowered
    with pytest.raises(ValueError, match=r"clip rule: cos_terms=8 is not allowed"):
        rules.ClipRule("batch", 4, 4, cos_terms=8)
    # solve_ode's check after a solve: the lowest finite risk decides
    risk = np.array([1.0, 1e-2, 1e-4, np.nan])
    assert ode.resolved_rule(rule, law, risk).cos_terms == need
    assert ode.resolved_rule(rule, law, np.array([1.0, 0.5])) is rule
    with pytest.raises(ValueError, match=r"solve_ode: the risk fell to R=1e-07, where group factors"):
        ode.resolved_rule(rule, law, np.array([1.0, 1e-7]))
    # rules with different terms are different programs
    assert rules.static_signature(more) != rules.static_signature(rule)


@pytest.mark.slow  # two compilations of a group rule's ODE: 20-60 s
def test_ode_final_risks_solves_again_where_the_risk_needs_more_cosine_terms(monkeypatch):
    # The criteria (stability bisection, learning-rate searches) trace the rule's factors through
    # ode_final_risks, which, like solve_ode, solves again with the rule resolved at the lowest
    # risk it reached. The law here needs no more than the default; cos_terms_needed is made to
    # ask for twice that below R = 0.5, so that the repeat is cheap (float64, x64 ODE at rtol 1e-8).
    from clipdyn.theory import batch_factors as bf
    from clipdyn.theory import tuning

    law = cd.Empirical(np.array([0.0, 0.4, 8.0]))
    monkeypatch.setattr(bf, "cos_terms_needed", lambda noise, R, n: (
        2 * bf.DEFAULT_COS_TERMS if float(np.min(R)) < 0.5 else bf.DEFAULT_COS_TERMS))
    seen = []
    solve = tuning._final_risks
    monkeypatch.setattr(tuning, "_final_risks",
                        lambda core, noise, s, r, *a: seen.append(r.cos_terms) or solve(core, noise, s, r, *a))
    prob = make_problem(np.ones(4), law)
    schedules = constant(np.array([0.5, 0.05]), np.array([1.0, 1.0]))
    risk, status = tuning.ode_final_risks(prob, schedules, 3.0, rules=rules.batch_mean(4))
    assert seen == [bf.DEFAULT_COS_TERMS, 2 * bf.DEFAULT_COS_TERMS]
    assert np.all(status == 0) and risk[0, -1] < 0.5  # the fast run went below, the slow one not
    finer = rules.ClipRule("batch", 4, 4, cos_terms=2 * bf.DEFAULT_COS_TERMS)
    np.testing.assert_array_equal(risk, tuning.ode_final_risks(prob, schedules, 3.0, rules=finer)[0])
    assert seen[-1] == 2 * bf.DEFAULT_COS_TERMS and len(seen) == 3  # enough already: solved once
