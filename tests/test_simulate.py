"""Simulators: exactness against a NumPy loop, statistics against the ODE, sweep invariances.

Statistical tests use fixed seeds. Their tolerance is ``4 * standard error of the seed mean +
2 / d_int`` (relative): the first term bounds the seed noise (a 4-sigma event has probability
6e-5), the second the finite-size bias, which Theorem 1 of the paper and the ODE derivation put at
O(1 / d_int) for the mean (and O(d^-1/2) for a single run).
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clipdyn as cd
from clipdyn import sim as sm
from clipdyn.pytrees import frozen_pytree
from clipdyn.runs import sweep as sw
from clipdyn.runs.results import load_results, seed_statistics
from clipdyn.theory.ode import solve_ode
from clipdyn.theory.problem import make_problem, power_law_spectrum
from clipdyn.theory.schedules import Constant, constant, heuristic, max_ccc

import reference as ref

ROOT = Path(__file__).resolve().parents[1]
CHECK = dict(spectrum=power_law_spectrum(1000, 0.3), noise=cd.Gaussian(0.5))


def _samples(prob, key, K):
    _, stream = sm.split_seed(key)
    draw = jax.jit(jax.vmap(lambda k: sm.draw_sample(stream, k, prob)))
    s = draw(jnp.arange(K))
    return np.asarray(s.x), np.asarray(s.eps)


@pytest.mark.parametrize("noise, c", [(cd.Gaussian(0.5), 0.3), (cd.StudentT(2.5, 1.0), 1.0),
                                      (cd.Rademacher(0.7), math.inf)])
def test_step_matches_numpy_loop_float64(noise, c):
    # Same samples, same start: only rounding separates the two (float64; the JAX side sums
    # pairwise, NumPy with its own pairwise sum), so 1e-10 relative after 600 steps.
    lam = power_law_spectrum(64, 0.7)
    problem = make_problem(lam, noise)
    prob = sm.prepare(problem, jnp.float64)
    key = jax.random.key(3)
    K = 600
    z, eps = _samples(prob, key, K)
    init_key, _ = sm.split_seed(key)
    e0 = np.asarray(sm.initial_error(init_key, prob))
    lam = np.asarray(prob.lam, np.float64)  # padded to a multiple of 64 with zero modes
    assert 0.5 * np.sum(lam * e0 * e0) == pytest.approx(1.0, rel=1e-14)  # R(theta_0) = R0 exactly
    record = [0, 100, 300, 600]
    want = ref.numpy_csgd(lam, e0, z, eps, 0.8, c, record)
    trace = lam.sum()
    res = sw.simulate_runs(problem, constant(0.8, c), [3], T=600 / trace, points=2, precision="64")
    steps = sm.output_steps(600 / trace, 2, trace)
    assert steps[-1] == 600
    np.testing.assert_allclose(res.risk[0, 0, -1], want[-1], rtol=1e-10)
    # The (init_fn, step_fn) pair gives the same trajectory step by step.
    init_fn, step_fn = sm.sgd(prob, constant(0.8, c))
    state = init_fn(init_key)
    step = jax.jit(step_fn)
    got = []
    for k in range(601):
        if k in record:
            got.append(float(state.risk))
        if k < 600:
            state = step(state, sm.Sample(jnp.asarray(z[k]), jnp.asarray(eps[k])))
    np.testing.assert_allclose(got, want, rtol=1e-10)


def _stat_check(method, schedule, noise, seeds=16, T=4.0, points=5):
    problem = make_problem(CHECK["spectrum"], noise)
    res = sw.simulate_runs(problem, schedule, range(seeds), T, points, method=method)
    ode = solve_ode(problem, schedule, T, points, times=res.t)
    mean, se, n = seed_statistics(res.risk[:, 0, :])
    d_int = float(problem.intrinsic_dimension)
    gap = np.abs(mean - np.asarray(ode.risk)) / np.asarray(ode.risk)
    tol = 4 * se / np.asarray(ode.risk) + 2.0 / d_int
    assert np.all(gap[1:] <= tol[1:]), (gap, tol)
    return gap


def test_csgd_mean_matches_ode():
    _stat_check("sgd", constant(1.0, 0.5), cd.Gaussian(0.5))


def test_chsgd_mean_matches_ode():
    _stat_check("hsgd", constant(1.0, 0.5), cd.Gaussian(0.5))


@pytest.mark.slow
def test_feedback_schedule_simulation_matches_ode():
    law = cd.StudentT(3.0, 1.0)
    _stat_check("sgd", max_ccc(0.5, law), law, seeds=8, T=2.0, points=3)


def test_public_check_value_8_seeds():
    # THEORY.md section 5: the mean of 8 seeds agrees with the ODE within 1 %.
    gap = _stat_check("sgd", constant(1.0, 0.5), cd.Gaussian(0.5), seeds=8, T=4.0, points=41)
    assert gap.max() < 0.01


def test_run_alone_equals_run_in_sweep_and_chunking():
    # Gaussian noise: the guarantee is about the program's layout, not the law (the Student-t
    # sampler is checked against NumPy above and doubles the compilation of each program here).
    problem = make_problem(power_law_spectrum(150, 0.5), cd.Gaussian(0.5))
    scheds = [Constant(eta, c) for eta in (0.5, 1.0) for c in (0.1, 0.5, math.inf)]
    big = sw.run_sweep(problem, sw.stack_schedules(scheds), [0, 1, 2], 2.0, 5, progress=False)
    other = sw.run_sweep(problem, sw.stack_schedules(scheds), [0, 1, 2], 2.0, 5, chunk_size=4,
                         progress=False)
    np.testing.assert_array_equal(big.risk, other.risk)
    for s_i, seed in enumerate([0, 1, 2]):
        for j in (0, 4):
            alone = sw.simulate_runs(problem, scheds[j], [seed], 2.0, 5)
            np.testing.assert_array_equal(alone.risk[0, 0], big.risk[s_i, j])
    # Common random numbers: configurations of one seed see the same start.
    assert np.all(big.risk[:, :, 0] == big.risk[:, :1, 0])


def test_sharded_equals_unsharded(tmp_path):
    # Four forced CPU devices in a fresh process; the sweep axis is sharded over them.
    script = f"""
import numpy as np, jax
import clipdyn as cd
from clipdyn.runs import sweep as sw
from clipdyn.theory.problem import make_problem, power_law_spectrum
from clipdyn.theory.schedules import Constant
assert len(jax.devices()) == 4
problem = make_problem(power_law_spectrum(150, 0.5), cd.Gaussian(0.5))
scheds = [Constant(eta, c) for eta in (0.5, 1.0) for c in (0.1, 0.5, float('inf'))]
a = sw.run_sweep(problem, sw.stack_schedules(scheds), [0, 1], 2.0, 5, progress=False)
b = sw.run_sweep(problem, sw.stack_schedules(scheds), [0, 1], 2.0, 5, progress=False,
                 devices=jax.devices()[:1])
np.save({str(tmp_path / 'a.npy')!r}, a.risk); np.save({str(tmp_path / 'b.npy')!r}, b.risk)
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    # ... and equal to the same sweep in this (single-device) process.
    problem = make_problem(power_law_spectrum(150, 0.5), cd.Gaussian(0.5))
    scheds = [Constant(eta, c) for eta in (0.5, 1.0) for c in (0.1, 0.5, math.inf)]
    here = sw.run_sweep(problem, sw.stack_schedules(scheds), [0, 1], 2.0, 5, progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), here.risk)


def test_divergence_flagged_for_unclipped_sgd_above_eta_2():
    problem = make_problem(power_law_spectrum(500, 0.3), cd.Gaussian(0.5))
    scheds = [constant(3.0, math.inf), constant(1.0, math.inf)]
    res = sw.run_sweep(problem, sw.stack_schedules(scheds), [0, 1], 40.0, 9, progress=False)
    assert res.diverged[:, 0].all() and not res.diverged[:, 1].any()
    t_div = res.diverged_at[:, 0]
    assert np.all((t_div > 0) & (t_div < 40))
    # The risk is nan only from the divergence on; the healthy runs are untouched.
    for s in range(2):
        after = res.t >= t_div[s]
        assert np.all(np.isnan(res.risk[s, 0, after]))
        assert np.all(np.isfinite(res.risk[s, 0, res.t < t_div[s] - 40 / 8]))
    assert np.all(np.isfinite(res.risk[:, 1]))
    # The ODE predicts the divergence too, at a similar time.
    ode = solve_ode(problem, constant(3.0, math.inf), 40.0, 9)
    assert bool(ode.diverged) and abs(float(ode.diverged_at) - t_div.mean()) < 0.3 * float(ode.diverged_at)


def test_overflowing_noise_samples_are_capped_and_do_not_fake_divergence():
    # Student-t with df = 0.05 in float32: about one sample in 80 overflows to inf. An infinite
    # residual made a clipped step 0 * inf = nan, and clipped runs were reported as diverged.
    # Samples are now capped at noise_cap (beyond where clipping saturates); exact checks.
    problem = make_problem(power_law_spectrum(64, 0.5), cd.StudentT(0.05, 0.1))
    prob = sm.prepare(problem, jnp.float32)
    _, stream = sm.split_seed(jax.random.key(0))
    eps = np.asarray(jax.jit(lambda: sm.draw_block(stream, 0, 2000, prob).eps)())
    cap = sm.noise_cap(np.float32)
    assert np.isfinite(eps).all() and (np.abs(eps) == np.float32(cap)).sum() >= 5
    scheds = sw.stack_schedules([Constant(1.0, 0.2), Constant(1.0, math.inf)])
    res = sw.run_sweep(problem, scheds, [0], 2000 / float(prob.trace), 3, progress=False)
    assert not res.diverged[0, 0] and np.isfinite(res.risk[0, 0]).all()
    assert res.diverged[0, 1]  # unclipped SGD meets a sample of ~cap and diverges


def test_cauchy_unclipped_fails_clipped_converges():
    problem = make_problem(power_law_spectrum(500, 0.3), cd.cauchy(0.5))
    scheds = [constant(0.5, math.inf), constant(0.5, 0.5)]
    res = sw.run_sweep(problem, sw.stack_schedules(scheds), range(4), 8.0, 5, progress=False)
    sgd = res.risk[:, 0, -1]
    clipped = res.risk[:, 1, -1]
    # Unclipped: every seed ends diverged or far above its start (a few Cauchy kicks suffice).
    assert np.all(~np.isfinite(sgd) | (sgd > 3.0))
    # Clipped: every seed converges below the start, as the ODE predicts.
    ode = solve_ode(problem, constant(0.5, 0.5), 8.0, 5)
    assert np.all(clipped < 0.9) and float(ode.risk[-1]) < 0.9
    assert np.all(np.abs(clipped - float(ode.risk[-1])) < 0.15)


class _Interrupt(Exception):
    pass


def test_resume_after_interruption(tmp_path, monkeypatch):
    problem = make_problem(power_law_spectrum(100, 0.5), cd.Gaussian(0.5))
    scheds = sw.stack_schedules([Constant(1.0, c) for c in (0.1, 0.3, 1.0, 3.0, math.inf)])
    out = tmp_path / "sweep.npz"
    real = sw._sharded_runner
    calls = {"n": 0}

    def counting(*args, **kwargs):
        fn = real(*args, **kwargs)

        def wrapped(*x):
            calls["n"] += 1
            if calls.get("fail_at") == calls["n"]:
                raise _Interrupt
            return fn(*x)

        return wrapped

    monkeypatch.setattr(sw, "_sharded_runner", counting)
    calls["fail_at"] = 5  # 2 calls (seeds) per chunk: chunks 0 and 1 finish, chunk 2 is interrupted
    with pytest.raises(_Interrupt):
        sw.run_sweep(problem, scheds, [0, 1], 1.0, 3, chunk_size=2, out=out, progress=False)
    partial = tmp_path / "sweep.npz.partial"
    assert sorted(p.name for p in partial.glob("chunk_*.npz")) == ["chunk_000000.npz", "chunk_000001.npz"]
    assert not out.exists()
    calls.update(n=0, fail_at=None)
    res = sw.run_sweep(problem, scheds, [0, 1], 1.0, 3, chunk_size=2, out=out, progress=False)
    assert calls["n"] == 2  # only the unfinished third chunk ran (once per seed)
    full = sw.run_sweep(problem, scheds, [0, 1], 1.0, 3, chunk_size=2, progress=False)
    np.testing.assert_array_equal(res.risk, full.risk)
    arrays, meta = load_results(out)
    np.testing.assert_array_equal(arrays["risk"], full.risk)
    assert meta["config"]["chunk_size"] == 2 and meta["provenance"]["prng_impl"]
    assert not partial.exists()
    # A different sweep refuses to reuse another sweep's chunks.
    partial.mkdir()
    (partial / "fingerprint").write_text("something else")
    np.savez(partial / "chunk_000000.npz", risk=np.zeros((2, 2, 3)))  # a finished chunk of it
    with pytest.raises(ValueError, match="different sweep"):
        sw.run_sweep(problem, scheds, [0, 1], 1.0, 3, chunk_size=2, out=out, progress=False)


def test_float32_default_and_float64_on_request():
    problem = make_problem(power_law_spectrum(100, 0.5), cd.Gaussian(0.5))
    prob32 = sm.prepare(problem)
    assert prob32.lam.dtype == jnp.float32
    a = sw.simulate_runs(problem, constant(1.0, 0.5), [0], 1.0, 3)
    b = sw.simulate_runs(problem, constant(1.0, 0.5), [0], 1.0, 3, precision="64")
    # The start is exact up to the precision's rounding (the draws differ between precisions).
    assert abs(a.risk[0, 0, 0] - 1.0) < 4e-7 and abs(b.risk[0, 0, 0] - 1.0) < 1e-15
    assert a.config["precision"] == "32" and b.config["precision"] == "64"
    assert sm.prepare(problem, jnp.float64).lam.dtype == jnp.float64


def test_bad_sweep_arguments():
    problem = make_problem(power_law_spectrum(10, 0.5), cd.Gaussian(0.5))
    s = sw.stack_schedules([constant(1.0, 1.0)])
    with pytest.raises(ValueError, match="method 'adam'"):
        sw.run_sweep(problem, s, [0], 1.0, 3, method="adam")
    with pytest.raises(ValueError, match="precision"):
        sw.run_sweep(problem, s, [0], 1.0, 3, precision="16")
    with pytest.raises(ValueError, match="one kind"):
        sw.stack_schedules([constant(1.0, 1.0), heuristic(1.0, 1.0, cd.Gaussian(0.5))])


@pytest.mark.parametrize("precision, rtol", [("64", 1e-12), pytest.param("32", 5e-5, marks=pytest.mark.slow)])
def test_block_engine_agrees_with_step_engine(precision, rtol):
    # Same samples, different arithmetic (matrix products and a Gram-matrix recurrence): equal up
    # to rounding. float64: ~1e-14 observed; float32: rounding of O(d) sums over ~1e3 steps.
    problem = make_problem(power_law_spectrum(300, 0.3), cd.StudentT(2.5, 0.5))
    scheds = sw.stack_schedules([Constant(eta, c) for eta in (0.5, 3.0) for c in (0.1, 0.5, math.inf)])
    # 7 output times that are not multiples of the 64-step block: partial blocks are masked.
    a = sw.run_sweep(problem, scheds, [0, 1], 30.0, 7, precision=precision, progress=False)
    b = sw.run_sweep(problem, scheds, [0, 1], 30.0, 7, precision=precision, progress=False,
                     engine="block")
    np.testing.assert_array_equal(a.diverged, b.diverged)
    assert a.diverged[:, 5].all()  # eta 3, unclipped: diverges in both engines, at the same step
    np.testing.assert_array_equal(a.diverged_at, b.diverged_at)
    np.testing.assert_allclose(a.risk, b.risk, rtol=rtol)  # nan where both diverged


def test_other_prng_implementations_in_both_engines(tmp_path):
    # rbg keys are drawn by jax.random itself (clipdyn.sim.threefry passes them through): a seed
    # still gives the same numbers, the engines agree as above (float64), the results record the
    # implementation, and its stream is not threefry's.
    problem = make_problem(power_law_spectrum(128, 0.3), cd.Gaussian(0.5))
    scheds = sw.stack_schedules([Constant(1.0, c) for c in (0.1, 0.5, 2.0)])
    kw = dict(precision="64", progress=False)
    a = sw.run_sweep(problem, scheds, [4], 3.0, 4, prng_impl="rbg", **kw)
    np.testing.assert_array_equal(a.risk, sw.run_sweep(problem, scheds, [4], 3.0, 4,
                                                       prng_impl="rbg", **kw).risk)
    b = sw.run_sweep(problem, scheds, [4], 3.0, 4, prng_impl="rbg", engine="block", **kw)
    np.testing.assert_allclose(a.risk, b.risk, rtol=1e-12)
    assert a.config["prng_impl"] == "rbg"
    # The sidecar's provenance names the implementation the run drew with, not JAX's default
    # (it said threefry2x32 beside config.prng_impl "rbg").
    sw.run_sweep(problem, scheds, [4], 3.0, 4, prng_impl="rbg", out=tmp_path / "rbg", **kw)
    meta = load_results(tmp_path / "rbg")[1]
    assert meta["provenance"]["prng_impl"] == meta["config"]["prng_impl"] == "rbg"
    threefry = sw.run_sweep(problem, scheds, [4], 3.0, 4, **kw)
    assert not np.allclose(a.risk[..., 1:], threefry.risk[..., 1:], rtol=1e-3)


@frozen_pytree
class _RiskThreshold:
    """A feedback schedule without tables: ``c = scale * sqrt(R)`` (reads the risk)."""

    eta: float
    scale: float
    reads_risk = True

    def __call__(self, t, R):
        return jnp.full_like(R, self.eta), self.scale * jnp.sqrt(R)


@pytest.mark.parametrize("kind", ["risk-threshold", pytest.param("max-ccc", marks=pytest.mark.slow)])
def test_block_engine_with_feedback_schedule(kind):
    # float64: with a schedule that reads the risk, the block engine tracks R step by step
    # through the Lam-weighted projections; the engines agree to rounding (1e-12). The max-CCC
    # table costs ~10 s to build, so the fast suite uses a schedule of its own, under Gaussian
    # noise (max-CCC clips nothing there; a Student-t sampler doubles the compilation).
    law = cd.StudentT(3.0, 1.0) if kind == "max-ccc" else cd.Gaussian(0.5)
    problem = make_problem(power_law_spectrum(300, 0.3), law)
    if kind == "max-ccc":
        sched = max_ccc(0.5, law, points=41, refine=2)  # the engines must agree whatever the table
    else:
        sched = _RiskThreshold(1.5, 0.7)
    a = sw.simulate_runs(problem, sched, [0, 1], 3.0, 4, precision="64")
    b = sw.simulate_runs(problem, sched, [0, 1], 3.0, 4, precision="64", engine="block")
    assert not a.diverged.any()
    np.testing.assert_allclose(a.risk, b.risk, rtol=1e-12)
    with pytest.raises(ValueError, match="C-SGD only"):
        sw.simulate_runs(problem, sched, [0], 1.0, 2, method="hsgd", engine="block")


@pytest.mark.slow
def test_single_run_gap_shrinks_like_inverse_sqrt_d():
    # Theorem 1: a single run's gap to the ODE is O(log(d) d^-1/2). Flat spectrum in [0.1, 1]
    # (d_int = 0.55 d), 12 seeds per d over a 16-fold range of d: the fitted log-log slope of the
    # mean sup-gap must be within [-0.75, -0.3] (the standard error of the slope from 12 seeds is
    # about 0.07, so this is a > 3-sigma band around -1/2 that still excludes O(1) and O(1/d)).
    dims = [250, 1000, 4000]
    gaps = []
    for d in dims:
        problem = make_problem(np.linspace(1.0, 0.1, d), cd.Gaussian(0.5))
        res = sw.simulate_runs(problem, constant(1.0, 0.5), range(12), 2.0, 21)
        ode = np.asarray(solve_ode(problem, constant(1.0, 0.5), 2.0, times=res.t).risk)
        gaps.append(np.mean(np.max(np.abs(res.risk[:, 0] - ode) / ode, axis=1)))
    slope = np.polyfit(np.log(dims), np.log(gaps), 1)[0]
    assert -0.75 < slope < -0.3, (slope, gaps)
