"""Threefry-2x32 random bits as one fused pass: the same numbers as JAX's, several times faster
on CPU.

The simulators draw every sample from JAX's default PRNG (threefry-2x32 keys). On CPU, JAX
lowers the threefry hash as a loop of five rounds-of-four whose rotation amounts are loop
variables (to keep compilation short), so each draw makes five passes over its counters with
shifts XLA cannot specialise: at ``d = 1000`` the draws were about an eighth of the 1024-run
block engine's time (a quarter when timed alone) and three quarters of a single run's
(BENCHMARKS.md). :func:`normal` draws the same normals from the
same keys through a PRNG implementation whose only difference is the hash written out in full
(:func:`threefry2x32`, constant rotations: one pass that XLA vectorises); its seeding, splitting
and folding are JAX's own, and JAX's own ``uniform``/``normal`` turn the bits into numbers. The
results are bit-identical to ``jax.random.normal`` (tested over shapes, dtypes and keys), so a
seed gives the same samples whichever draws them.

References:
    Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011
    (Threefry-2x32 with 20 rounds).
"""

from __future__ import annotations

import math

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np

__all__ = ["threefry2x32", "random_bits", "normal", "UNROLLED_THREEFRY"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x: jax.Array, r: int) -> jax.Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array):
    """The Threefry-2x32 hash (20 rounds) of the counter pairs ``(x1, x2)`` under key ``(k1, k2)``,
    all ``uint32``; written out round by round, so the rotations are constants.

    Returns:
        The two ``uint32`` output words, shaped like ``x1``.
    """
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = _rotl(x2, r) ^ x1
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def random_bits(key_data: jax.Array, bit_width: int, shape) -> jax.Array:
    """``bit_width``-bit words for a raw threefry key ``(2,) uint32``, laid out as JAX's
    partitionable threefry (its default): word ``n`` (row-major) hashes the counter pair
    ``(n >> 32, n mod 2^32)``; 64-bit words join the two outputs, narrower ones xor them.
    """
    shape = tuple(shape)
    size = math.prod(shape)
    if size >= 2**32 or not jax.config.jax_threefry_partitionable:
        # JAX's own (also for its older, non-partitionable layout, should a user set it).
        return jex_random.threefry_prng_impl.random_bits(key_data, bit_width, shape)
    lo = jax.lax.iota(np.uint32, size).reshape(shape)
    b1, b2 = threefry2x32(key_data[0], key_data[1], jnp.zeros_like(lo), lo)
    if bit_width == 64:
        return (b1.astype(np.uint64) << np.uint64(32)) | b2.astype(np.uint64)
    bits = b1 ^ b2
    return bits if bit_width == 32 else bits.astype(np.dtype(f"uint{bit_width}"))


_IMPL = jex_random.threefry_prng_impl
UNROLLED_THREEFRY = jex_random.define_prng_impl(
    key_shape=_IMPL.key_shape, seed=_IMPL.seed, split=_IMPL.split, random_bits=random_bits,
    fold_in=_IMPL.fold_in, name="threefry2x32_unrolled", tag="fry_u")
"""A PRNG implementation equal to JAX's ``threefry2x32`` but for the unrolled hash."""


def normal(key: jax.Array, shape, dtype) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, bit for bit, drawn with the unrolled hash when
    ``key`` is a threefry-2x32 key (other implementations are passed through unchanged)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != "threefry2x32":
            return jax.random.normal(key, shape, dtype)
        key = jax.random.key_data(key)
    elif key.shape[-1:] != (2,):  # a raw key of another implementation
        return jax.random.normal(key, shape, dtype)
    return jax.random.normal(jax.random.wrap_key_data(key, impl=UNROLLED_THREEFRY), shape, dtype)
