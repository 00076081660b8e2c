"""clipdyn.sim.threefry: the unrolled Threefry-2x32 hash and the draws built on it.

Exact checks, no tolerances (the widths, float16, the other PRNG implementations and JAX's older
layout run in the slow suite): the hash against the published known-answer vectors of Random123
(the reference implementation of Salmon et al. 2011; the same vectors JAX's own tests use), and
the bits and normals against ``jax.random.bits`` / ``jax.random.normal`` bit for bit, in every
width and precision the simulators can ask for (float32, float64 under x64, float16).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipdyn.precision import x64
from clipdyn.sim import threefry

# Random123's kat_vectors for threefry2x32_20: (key, counter) -> output.
KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]

SHAPES = [(), (3, 5, 2), (2, 1001)]


def test_hash_matches_known_answers():
    key, ctr, expected = (np.asarray(list(col), np.uint32).T for col in zip(*KAT))
    out = jax.jit(threefry.threefry2x32)(key[0], key[1], ctr[0], ctr[1])
    np.testing.assert_array_equal(np.stack([np.asarray(o) for o in out]), expected)


def _keys():
    base = jax.random.key(20260511)
    return jnp.stack([base, jax.random.fold_in(base, 7), jax.random.split(jax.random.key(3))[1]])


def _both(ours, ref, *static):
    """``ours`` and ``ref`` over three keys (one jitted vmap each: few compilations)."""
    run = lambda fn: np.asarray(jax.jit(jax.vmap(lambda k: fn(k, *static)))(_keys()))  # noqa: E731
    return run(ours), run(ref)


@pytest.mark.slow
@pytest.mark.parametrize("width", [8, 16, 32, 64])
def test_bits_equal_jax(width):
    dtype = np.dtype(f"uint{width}")
    with x64():
        for shape in SHAPES:
            ours, ref = _both(lambda k: threefry.random_bits(jax.random.key_data(k), width, shape),
                              lambda k: jax.random.bits(k, shape, dtype))
            assert ours.dtype == ref.dtype == dtype and ours.shape == ref.shape
            np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("dtype", ["float32", "float64",
                                   pytest.param("float16", marks=pytest.mark.slow)])
def test_normal_equals_jax_normal(dtype):
    with x64():
        for shape in SHAPES:
            ours, ref = _both(threefry.normal, jax.random.normal, shape, dtype)
            assert ours.dtype == ref.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(ours, ref)
        raw = jax.random.PRNGKey(5)  # a raw uint32 key of the default implementation
        np.testing.assert_array_equal(np.asarray(threefry.normal(raw, (9,), dtype)),
                                      np.asarray(jax.random.normal(raw, (9,), dtype)))


def test_normal_equals_jax_under_jit_and_vmap():
    # The simulators draw a block of steps as a vmap over keys folded from one stream key.
    stream = jax.random.key(11)

    def block(draw):
        return jax.jit(jax.vmap(lambda k: draw(jax.random.fold_in(stream, k), (1000,), jnp.float32)))

    k = jnp.arange(5, 69)
    np.testing.assert_array_equal(np.asarray(block(threefry.normal)(k)),
                                  np.asarray(block(jax.random.normal)(k)))


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_other_implementations_pass_through(impl):
    key = jax.random.key(4, impl=impl)
    np.testing.assert_array_equal(np.asarray(threefry.normal(key, (33,), jnp.float32)),
                                  np.asarray(jax.random.normal(key, (33,), jnp.float32)))


@pytest.mark.slow
def test_original_layout_when_partitionable_is_off():
    # A user may switch JAX back to its older threefry layout; the draws must follow it.
    key = jax.random.key(9)
    with jax.threefry_partitionable(False):
        np.testing.assert_array_equal(np.asarray(threefry.normal(key, (3, 7), jnp.float32)),
                                      np.asarray(jax.random.normal(key, (3, 7), jnp.float32)))
