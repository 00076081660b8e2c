"""The digits network and PS-Clip-SGD's gradient rules (clipdyn.sources.networks).

Precision: the networks and the rules run in float32 (the module casts learning rates and
thresholds to float32, as training does); tolerances are then a few float32 roundings (eps 6e-8)
of O(1) quantities, relative 1e-6, or 1e-5 where sums of ~5000 terms are compared with a float64
NumPy reference. The symmetry statistic is checked in float64 (``jax.enable_x64``), where its exact
identities hold to 1e-12.
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from clipdyn.sources import networks as nw

SMALL = (nw.N_FEATURES, 16, nw.N_CLASSES)


@pytest.fixture(scope="module")
def digits():
    return nw.load_digits_split(0, 0.1)


@pytest.fixture(scope="module")
def params():
    """One initialisation shared by the tests that need any (random-number code compiles slowly)."""
    return jax.jit(partial(nw.init_mlp, sizes=SMALL))(jax.random.key(0))


def _flat(tree):
    return np.concatenate([np.asarray(a, np.float64).reshape(a.shape[0], -1) for a in jax.tree.leaves(tree)], 1)


# ---- data and model -----------------------------------------------------------------------------

def test_digits_split_is_reproducible_standardised_and_noisy_only_in_training():
    a, b = nw.load_digits_split(3, 0.5), nw.load_digits_split(3, 0.5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    other = nw.load_digits_split(4, 0.5)
    assert not np.array_equal(a.labels_test, other.labels_test)
    assert a.x_train.dtype == np.float32 and a.labels_train.dtype == np.int32
    n = a.x_train.shape[0] + a.x_val.shape[0] + a.x_test.shape[0]
    assert n == 1797 and a.x_val.shape[0] == 256 and a.x_test.shape[0] == 450
    # Standardised with the training split's own statistics: mean 0 (float32 rounding), std 1 or 0.
    np.testing.assert_allclose(a.x_train.mean(axis=0), 0.0, atol=1e-5)
    std = a.x_train.std(axis=0)
    assert np.all((np.abs(std - 1) < 1e-4) | (std == 0))
    eye = np.eye(nw.N_CLASSES, dtype=np.float32)
    np.testing.assert_array_equal(a.y_val, eye[a.labels_val])
    np.testing.assert_array_equal(a.y_test, eye[a.labels_test])
    noise = (a.y_train - eye[a.labels_train]) / 0.5
    assert np.abs(noise).max() > 10  # Student-t(1.5): ~11 000 draws reach far beyond Gaussian range
    clean = nw.load_digits_split(3)
    np.testing.assert_array_equal(clean.y_train, eye[clean.labels_train])
    np.testing.assert_array_equal(clean.x_train, a.x_train)


def test_digits_split_fingerprint_names_its_arrays():
    a = nw.load_digits_split(3, 0.5)
    assert a.fingerprint() == nw.load_digits_split(3, 0.5).fingerprint()
    # Another seed, other noise, or one value changed: another fingerprint.
    assert a.fingerprint() != nw.load_digits_split(4, 0.5).fingerprint()
    assert a.fingerprint() != nw.load_digits_split(3).fingerprint()
    y = a.y_train.copy()
    y[0, 0] = np.nextafter(y[0, 0], np.float32(np.inf))
    assert a._replace(y_train=y).fingerprint() != a.fingerprint()
    # The dtype is part of the data: the same values stored in float64 are other bytes.
    assert a._replace(x_train=a.x_train.astype(np.float64)).fingerprint() != a.fingerprint()


@pytest.mark.parametrize("call, match", [
    (lambda: nw.load_digits_split(-1), "seed"),
    (lambda: nw.load_digits_split(0, -0.1), "label_noise"),
    (lambda: nw.load_digits_split(0, noise_df=0), "noise_df"),
    (lambda: nw.load_digits_split(0, n_val=1000, n_test=700), "n_val"),
    (lambda: nw.init_mlp(jax.random.key(0), (64,)), "sizes"),
    (lambda: nw.gradient_rule("adam", 0.1, 1.0, batch=4), "rule"),
    (lambda: nw.gradient_rule("micro-clip", 0.1, 1.0, batch=32, micro=5), "micro"),
    (lambda: nw.gradient_rule("none", 0.1, 1.0, batch=4, momentum=1.0), "momentum"),
    (lambda: nw.index_thresholds(1.0, 4, 0.0), "beta"),
    (lambda: nw.symmetry_statistic(jnp.zeros((1, 2))), "points"),
])
def test_bad_input_raises_value_error_naming_it(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_loss_rejects_targets_of_the_wrong_shape(digits, params):
    with pytest.raises(ValueError, match="targets"):
        nw.loss_fn(params, digits.x_train[:4], digits.labels_train[:4])


def test_per_example_grads_average_to_the_batch_gradient(digits, params):
    """float32: the mean of 32 per-example gradients against jax.grad of the mean loss (rel. 1e-5)."""
    x, y = digits.x_train[:32], digits.y_train[:32]
    per = jax.jit(nw.per_example_grads)(params, x, y)
    batch = jax.jit(jax.grad(nw.loss_fn))(params, x, y)
    for p, b in zip(jax.tree.leaves(per), jax.tree.leaves(batch)):
        assert p.shape == (32,) + b.shape
        np.testing.assert_allclose(p.mean(axis=0), b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


# ---- the rules -----------------------------------------------------------------------------------

def test_per_example_clip_equals_optax_private_aggregation_and_a_numpy_reference(digits, params):
    """Real per-example gradients (float32), thresholds that clip some samples and not others.

    optax.contrib.differentially_private_aggregate with zero noise computes the same clipped sum
    and divides by the batch; its noise is 0 * z = 0 exactly, so the two agree to float32 rounding
    (rel. 1e-6). The NumPy reference (float64) clips each row by min(1, C / ||g_b||): rel. 1e-5.
    """
    grads = jax.jit(nw.per_example_grads)(params, digits.x_train[:32], digits.y_train[:32])
    flat = _flat(grads)
    norms = np.linalg.norm(flat, axis=1)
    C = float(np.median(norms))
    ours, _ = jax.jit(nw.per_example_clip(C).update)(grads, None)
    dp = optax.contrib.differentially_private_aggregate(C, 0.0, key=jax.random.key(0))
    theirs, _ = jax.jit(dp.update)(grads, dp.init(params))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7 * float(jnp.abs(b).max()))
    ref = (flat * np.minimum(1.0, C / norms)[:, None]).mean(axis=0)
    got = _flat(jax.tree.map(lambda a: a[None], ours))[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert 0 < (norms > C).sum() < 32  # the test clips some samples, not all


def test_index_thresholds_on_a_hand_made_batch():
    """Thresholds C k^(1/beta), k = position in the batch; float32, rel. 1e-6."""
    C, beta = 2.0, 2.0
    thr = nw.index_thresholds(C, 4, beta)
    np.testing.assert_allclose(thr, [2.0, 2.0 * math.sqrt(2), 2.0 * math.sqrt(3), 4.0], rtol=1e-6)
    g = jnp.asarray([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [0.0, 0.0]], jnp.float32)  # norms 5, 1, 10, 0
    out, _ = nw.per_example_clip(thr).update({"w": g}, None)
    # Row 1 (norm 5 > 2) shrinks to norm 2; row 2 (1 < 2 sqrt 2) and row 4 (zero) stay; row 3
    # (norm 10 > 2 sqrt 3) shrinks to norm 2 sqrt 3.
    expected = (np.array([3.0, 4.0]) * 2 / 5 + np.array([0.0, 1.0])
                + np.array([6.0, 8.0]) * 2 * math.sqrt(3) / 10) / 4
    np.testing.assert_allclose(out["w"], expected, rtol=1e-6)
    # Position matters: the same samples in another order are clipped differently.
    swapped, _ = nw.per_example_clip(thr).update({"w": g[jnp.asarray([2, 1, 0, 3])]}, None)
    expected_swapped = (np.array([6.0, 8.0]) * 2 / 10 + np.array([0.0, 1.0])
                        + np.array([3.0, 4.0]) * 2 * math.sqrt(3) / 5) / 4
    np.testing.assert_allclose(swapped["w"], expected_swapped, rtol=1e-6)
    # The rule built by gradient_rule uses exactly these thresholds (plain SGD: lr 1, no momentum).
    rule = nw.gradient_rule("index", 1.0, C, batch=4, beta=beta, momentum=0.0)
    assert rule.per_example and rule.chunk == 4
    upd, _ = rule.tx.update({"w": g}, rule.tx.init({"w": g[0]}), {"w": g[0]})
    np.testing.assert_allclose(upd["w"], -expected, rtol=1e-6)


def test_micro_batch_clip_then_accumulate_against_accumulate_then_clip():
    """Two micro-batch gradients g1 = (3, 4), g2 = (0, -1), C = 2, lr 1, no momentum (float32, rel. 1e-6).

    Clip each, then accumulate: mean(clip(g1), clip(g2)) = mean((1.2, 1.6), (0, -1)) = (0.6, 0.3).
    Accumulate, then clip: mean = (1.5, 1.5), norm 2.12 > 2, so (1.5, 1.5) * 2 / 2.12 = (sqrt 2, sqrt 2).
    The first micro-step applies no update (optax.MultiSteps returns zeros).
    """
    params = {"w": jnp.zeros(2, jnp.float32)}
    g1, g2 = jnp.asarray([3.0, 4.0], jnp.float32), jnp.asarray([0.0, -1.0], jnp.float32)
    expected = {"micro-clip": np.array([0.6, 0.3]), "accum-clip": np.array([math.sqrt(2), math.sqrt(2)])}
    for name, want in expected.items():
        rule = nw.gradient_rule(name, 1.0, 2.0, batch=4, micro=2, momentum=0.0)
        assert not rule.per_example and rule.chunk == 2
        state = rule.tx.init(params)
        first, state = rule.tx.update({"w": g1}, state, params)
        np.testing.assert_array_equal(first["w"], 0.0)
        second, state = rule.tx.update({"w": g2}, state, params)
        np.testing.assert_allclose(second["w"], -want, rtol=1e-6)
    # Accumulate-then-clip is batch clipping of the whole batch's mean.
    batch = nw.gradient_rule("batch", 1.0, 2.0, batch=4, momentum=0.0)
    upd, _ = batch.tx.update({"w": (g1 + g2) / 2}, batch.tx.init(params), params)
    np.testing.assert_allclose(upd["w"], -expected["accum-clip"], rtol=1e-6)


# ---- training ------------------------------------------------------------------------------------

@partial(jax.jit, static_argnums=1)
def _start(key, n_train):
    k_init, k_batch = jax.random.split(key)
    return nw.init_mlp(k_init, SMALL), nw.shuffled_batches(k_batch, n_train, 3, 32)


# One training loop serves every rule, and each rule's arithmetic has its own test above; the
# fast suite trains with three of them (no clipping, per-sample, and micro-batches accumulated),
# the slow suite with all six.
@pytest.mark.parametrize("rule", [r if r in ("none", "per-sample", "micro-clip")
                                  else pytest.param(r, marks=pytest.mark.slow) for r in nw.RULES])
def test_training_is_deterministic_and_decreases_the_loss(digits, rule):
    """float32, 3 epochs of a 64-16-10 network: the same seed gives bitwise the same curves and
    parameters (two separate calls), another seed different ones, and the validation loss falls
    (from ~2.2 at initialisation; one epoch of any rule brings it below 1)."""
    config = nw.TrainConfig(rule, epochs=3, sizes=SMALL, checkpoints=(0, 3))
    run = jax.jit(partial(nw.train, config))

    def seeded(seed):
        params, batches = _start(jax.random.key(seed), digits.x_train.shape[0])
        return jax.device_get(run(0.01, 3.0, digits, params, batches)), params

    (a, p0), (b, _), (c, _) = seeded(0), seeded(0), seeded(1)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.val_loss, c.val_loss)
    assert a.val_loss.shape == (4,) and np.all(np.isfinite(a.val_loss))
    assert np.all(np.diff(a.val_loss) < 0) and a.val_loss[-1] < 0.5 * a.val_loss[0]
    assert a.test_acc[-1] > 0.5
    for ck, init, final in zip(jax.tree.leaves(a.checkpoints), jax.tree.leaves(p0), jax.tree.leaves(a.params)):
        np.testing.assert_array_equal(ck[0], init)
        np.testing.assert_array_equal(ck[1], final)


def test_shuffled_batches_are_permutations():
    b = np.asarray(nw.shuffled_batches(jax.random.key(0), 100, 3, 32))
    assert b.shape == (3, 3, 32)
    for epoch in b:
        assert len(set(epoch.ravel())) == 96 and epoch.max() < 100
    assert not np.array_equal(b[0], b[1])


# ---- symmetry proxy ------------------------------------------------------------------------------

def _energy_reference(p):
    """Plain NumPy double loop of H = (A - D) / A (float64)."""
    n = len(p)
    s = sum(np.linalg.norm(p[i] + p[j]) for i in range(n) for j in range(n)) / n**2
    d = sum(np.linalg.norm(p[i] - p[j]) for i in range(n) for j in range(n)) / n**2
    return (s - d) / s


def test_symmetry_statistic_identities_and_reference():
    """float64: a sample equal to its reflection gives 0, a point mass away from 0 gives 1 (1e-12);
    a small skewed sample matches the NumPy double loop (1e-12)."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        half = rng.normal(size=(50, 2))
        assert abs(float(nw.symmetry_statistic(jnp.asarray(np.vstack([half, -half]))))) < 1e-12
        assert abs(float(nw.symmetry_statistic(jnp.ones((7, 2)) * 3.0)) - 1.0) < 1e-12
        p = rng.exponential(size=(20, 2)) - 1.0
        assert abs(float(nw.symmetry_statistic(jnp.asarray(p))) - _energy_reference(p)) < 1e-12
        assert abs(float(nw.symmetry_statistic(jnp.asarray(p[:, 0]))) - _energy_reference(p[:, :1])) < 1e-12


def test_symmetry_statistic_separates_symmetric_from_skewed_samples():
    """Sign-flip null (float64, n = 400, 99 flips): under a symmetric law the observed H is
    exchangeable with its sign-flipped copies, so its rank among them is uniform; we require it
    below the largest flip (chance 1 % of failing for a random seed; the seed is fixed). A centred
    exponential sample must exceed every flip (its population H is ~0.05, the flips' ~1/n)."""
    rng = np.random.default_rng(1)
    n = 400
    samples = {"symmetric": rng.standard_t(3, size=(n, 2)),
               "skewed": rng.exponential(size=(n, 2)) - 1.0}
    signs = rng.choice([-1.0, 1.0], size=(99, n, 1))
    with jax.enable_x64(True):
        stat = jax.jit(jax.vmap(nw.symmetry_statistic))
        for name, p in samples.items():
            h = float(nw.symmetry_statistic(jnp.asarray(p)))
            null = np.asarray(stat(jnp.asarray(signs * p[None])))
            if name == "symmetric":
                assert h < null.max() and h < 0.02
            else:
                assert h > null.max() and h > 0.02


def test_projected_gradient_symmetry_shapes_and_range(digits, params):
    sym = jax.jit(partial(nw.projected_gradient_symmetry, n_projections=3, n_points=100, n_null=5))
    h, h0 = sym(params, digits.x_train[:200], digits.y_train[:200], jax.random.key(1))
    assert h.shape == (3,) and h0.shape == (3, 5)
    assert np.all((np.asarray(h) >= 0) & (np.asarray(h) <= 1)) and np.all(np.asarray(h0) >= 0)


@pytest.mark.parametrize("call, match", [
    # A negative threshold ran gradient ascent (validation loss 2.1 -> 5e4), a NaN one trained
    # unclipped, a string learning rate was accepted.
    (lambda: nw.gradient_rule("per-sample", 0.1, -1.0, batch=4), r"clip=-1.0 is not allowed; clip must be > 0"),
    (lambda: nw.gradient_rule("batch", 0.1, float("nan"), batch=4), r"clip=nan is not allowed"),
    (lambda: nw.gradient_rule("index", 0.1, jnp.array([1.0, -2.0]), batch=4), r"clip=\[1.0, -2.0\]"),
    (lambda: nw.gradient_rule("none", "0.1", 1.0, batch=4), r"learning_rate='0.1' is not allowed"),
    (lambda: nw.gradient_rule("none", float("inf"), 1.0, batch=4), r"learning_rate=inf is not allowed"),
    (lambda: nw.index_thresholds(0.0, 4, 2.0), r"clip=0.0 is not allowed"),
    (lambda: nw.init_mlp(0, (64, 10)), r"key=0 is not allowed; key must be a JAX PRNG key"),
    (lambda: nw.init_mlp(jax.random.key(0), 64), r"sizes=64 is not allowed"),
    (lambda: nw.apply_mlp(nw.init_mlp(jax.random.key(0), (64, 10)), jnp.zeros((3, 5))),
     r"shape \(3, 5\) do not fit the network: their last axis must be its input width 64"),
    # The public transform checked nothing (-1: gradient ascent, nan: unclipped); a NaN sample
    # looked perfectly symmetric (0.0); rule "none" refused clip=None although it ignores clip.
    (lambda: nw.per_example_clip(-1.0), r"l2_norm_clip=-1.0 is not allowed; l2_norm_clip must be > 0"),
    (lambda: nw.per_example_clip(float("nan")), r"l2_norm_clip=nan is not allowed"),
    (lambda: nw.symmetry_statistic(jnp.array([[np.nan, 1.0], [1.0, 2.0]])), r"points=.* must be finite"),
])
def test_bad_rates_keys_and_shapes_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_unclipped_threshold_inf_is_allowed_and_equals_no_clipping(digits, params):
    """float32: clipping at inf is the identity, so one step equals the unclipped rule's bit for bit."""
    g = jax.grad(nw.loss_fn)(params, digits.x_train[:8], digits.y_train[:8])
    outs = []
    for name, clip in (("none", 1.0), ("batch", float("inf"))):
        rule = nw.gradient_rule(name, 0.1, clip, batch=8)
        outs.append(rule.tx.update(g, rule.tx.init(params), params)[0])
    jax.tree.map(np.testing.assert_array_equal, *outs)


def test_train_runs_eagerly_on_numpy_splits(digits, params):
    """Without jax.jit, train indexed the split's NumPy arrays with the scan's traced indices
    (TracerArrayConversionError). Eager and jitted runs are the same float32 program: equal to
    float32 rounding (1e-5 relative; XLA may fuse the two differently)."""
    cfg = nw.TrainConfig("per-sample", epochs=1, batch=16, sizes=SMALL)
    split = nw.DigitsSplit(*(np.asarray(a) for a in digits))
    batches = nw.shuffled_batches(jax.random.key(0), split.x_train.shape[0], 1, 16)
    eager = nw.train(cfg, 0.05, 1.0, split, params, batches)
    jitted = jax.jit(nw.train, static_argnums=0)(cfg, 0.05, 1.0, split, params, batches)
    np.testing.assert_allclose(eager.val_loss, jitted.val_loss, rtol=1e-5)


def test_train_refuses_batch_indices_outside_the_training_split(digits, params):
    # JAX clamps an index out of range: every step silently reused the last sample (acc 0.16).
    cfg = nw.TrainConfig("per-sample", epochs=1, batch=16, sizes=SMALL)
    n = digits.x_train.shape[0]
    batches = nw.shuffled_batches(jax.random.key(0), n, 1, 16)
    with pytest.raises(ValueError, match=rf"integer indices into the {n} training samples \(0..{n - 1}\)"):
        nw.train(cfg, 0.05, 1.0, digits, params, batches + n)
    with pytest.raises(ValueError, match="got dtype float32"):
        nw.train(cfg, 0.05, 1.0, digits, params, batches.astype(jnp.float32))
    with pytest.raises(ValueError, match="batches must be an array of shape"):
        nw.train(cfg, 0.05, 1.0, digits, params, batches.tolist())
    # rule "none" ignores its threshold, None included
    assert nw.gradient_rule("none", 0.1, None, batch=4).per_example is False


def test_train_refuses_params_of_other_widths(digits, params):
    # config.sizes was ignored: a network of other widths trained under a config that names others.
    cfg = nw.TrainConfig("per-sample", epochs=1, batch=16, sizes=(64, 32, 10))
    batches = nw.shuffled_batches(jax.random.key(0), digits.x_train.shape[0], 1, 16)
    with pytest.raises(ValueError, match=r"params have layer widths \(64, \d+, 10\); config.sizes=\(64, 32, 10\)"):
        nw.train(cfg, 0.05, 1.0, digits, params, batches)
