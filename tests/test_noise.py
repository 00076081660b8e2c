"""Noise laws: moments, sampling statistics, validation. Sampling tests run in float64 with
fixed seeds; their tolerances are 5 standard errors of the sample mean of the statistic."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clipdyn as cd

N = 200_000


def _sample(law, seed=0, n=N):
    return np.asarray(jax.jit(lambda k: law.sample(k, (n,), jnp.float64))(jax.random.key(seed)))


@pytest.mark.parametrize(
    "law",
    [cd.Gaussian(0.7), cd.Rademacher(1.3), cd.StudentT(5.0, 0.5),
     cd.GaussianMixture([0.2, 0.8], [2.0, -0.5], [0.3, 1.0]),
     cd.Empirical(np.array([0.1, -2.0, 3.0, 0.5]))],
)
def test_sample_moments_match_reported_moments(law):
    x = _sample(law)
    m2 = float(law.second_moment)
    # Standard error of the mean of eps^2 from the sample itself; 5 s.e. is a 1-in-3e6 event.
    se2 = np.std(x * x) / math.sqrt(N)
    assert abs(np.mean(x * x) - m2) <= 5 * se2 + 1e-12 * m2  # + rounding for constant eps^2
    se1 = np.std(x) / math.sqrt(N)
    assert abs(np.mean(x) - float(law.mean)) < 5 * se1
    assert float(law.variance) == pytest.approx(m2 - float(law.mean) ** 2, rel=1e-12)


def test_student_t_sampling_matches_cdf():
    # Kolmogorov distance of 2e5 draws: the 1e-6 quantile of the KS statistic is about 1.9/sqrt(n).
    from scipy import stats

    law = cd.StudentT(1.5, 2.0)
    x = np.sort(_sample(law, seed=3))
    ks = np.max(np.abs(stats.t.cdf(x, 1.5, scale=2.0) - np.arange(1, N + 1) / N))
    assert ks < 1.9 / math.sqrt(N)


def test_infinite_moments_reported():
    assert math.isinf(float(cd.StudentT(2.0).second_moment))
    assert float(cd.StudentT(2.5, 1.0).second_moment) == pytest.approx(5.0)
    assert math.isnan(float(cd.cauchy().mean))


def test_sampling_under_vmap_and_dtype():
    law = cd.Gaussian(1.0).astype(jnp.float32)
    keys = jax.random.split(jax.random.key(1), 4)
    x = jax.vmap(lambda k: law.sample(k, (3,), jnp.float32))(keys)
    assert x.shape == (4, 3) and x.dtype == jnp.float32
    # Each vmapped draw equals the draw made alone with the same key.
    np.testing.assert_array_equal(np.asarray(x[2]), np.asarray(law.sample(keys[2], (3,), jnp.float32)))


@pytest.mark.parametrize(
    "make, text",
    [
        (lambda: cd.Gaussian(-1.0), "sigma=-1.0"),
        (lambda: cd.StudentT(0.0), "df=0.0"),
        (lambda: cd.StudentT(2.0, -1.0), "scale=-1.0"),
        (lambda: cd.Rademacher(float("nan")), "sigma=nan"),
        (lambda: cd.GaussianMixture([1.0, 1.0], [0.0], [1.0, 1.0]), "same length"),
        (lambda: cd.GaussianMixture([1.0, -1.0], [0.0, 1.0], [1.0, 1.0]), "weights"),
        (lambda: cd.Empirical(np.array([])), "at least one"),
        (lambda: cd.Empirical(np.array([1.0, np.inf])), "finite"),
    ],
)
def test_bad_parameters_raise_clear_errors(make, text):
    with pytest.raises(ValueError, match=text.replace("[", r"\[")):
        make()


def test_laws_cast_for_float32_simulation():
    # A float32 simulation casts the law's parameters; the cast law must pass its own checks.
    # Mixture weights 0.9 and 0.1 sum to 1 - 2.2e-8 in float32 (refused until 2026-11-22), and
    # df = 0.01 becomes 0.0099999998 (refused as below the range).
    mix = cd.GaussianMixture([0.9, 0.1], [0.0, 3.0], [0.3, 2.0]).astype(np.float32)
    assert float(np.sum(mix.weights)) == pytest.approx(1.0, abs=1e-12)
    assert cd.StudentT(0.01, 1.0).astype(np.float32).n_nodes == cd.StudentT(0.01, 1.0).n_nodes
    # Typed weights are still held to 1e-9, and df to its range.
    with pytest.raises(ValueError, match="sum to 1"):
        cd.GaussianMixture([0.9, 0.1 + 1e-8], [0.0, 3.0], [0.3, 2.0])
    with pytest.raises(ValueError, match="df=0.0099"):
        cd.StudentT(0.0099, 1.0)
