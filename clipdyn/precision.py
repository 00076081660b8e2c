"""Float64 where clipdyn needs it, without touching JAX's global configuration.

The theory (reduction factors, optimal thresholds, schedule tables) and the ODE need float64:
the factors are checked to 1e-8 relative, and the ODE's error control works at ``rtol`` down to
1e-14. JAX computes in float32 unless ``jax_enable_x64`` is on, and that switch is global state
of the user's process. So importing clipdyn changes nothing; instead each public entry point that
computes is decorated with :func:`uses_x64`, which runs it under ``jax.enable_x64(True)``, JAX's
context manager for the setting. That context is thread-local and restores the previous value
when the call returns, so a user's own JAX code keeps its dtypes, and other threads are not
affected.

Inside a transformation, the caller's precision applies. When the entry point is called while a
``jit``, ``vmap`` or ``grad`` trace is active (or with traced arguments), switching precision in
the middle of the trace would mix float32 tracers with float64 constants, so :func:`uses_x64`
leaves the setting alone: the computation runs in the precision the trace was started with. To
get float64 inside your own transformations, start them under the context yourself::

    with jax.enable_x64(True):          # or clipdyn.precision.x64()
        f = jax.jit(lambda r, c: clipdyn.reduction_factors(law, r, c))(R, c)

Values come back as float64 arrays. In a process running in 32-bit mode, further JAX arithmetic
on them is float32 (JAX's rule, not clipdyn's); ``float(x)`` and ``np.asarray(x)`` keep float64.

Matrix products are computed at the precision of their operands: :func:`matmul` asks for it.
JAX's default lets a float32 product round its operands on accelerators (to TensorFloat-32,
10 mantissa bits, on NVIDIA GPUs since Ampere; to bfloat16 on TPUs), so without it a float32
simulation on a GPU would carry relative errors near ``1e-3`` in every residual and gradient
norm, and disagree with the same simulation on a CPU far beyond float32 rounding. On CPUs the
request changes nothing: their float32 products are float32 already.

References:
    JAX documentation, "Double (64 bit) precision" (``jax.enable_x64``) and "Matmul precision"
    (``precision=`` of ``jax.lax.dot_general``).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, TypeVar

import jax
import jax.numpy as jnp

__all__ = ["x64", "uses_x64", "tracing", "matmul", "MATMUL_PRECISION"]

F = TypeVar("F", bound=Callable)

MATMUL_PRECISION = jax.lax.Precision.HIGHEST
"""The precision of clipdyn's matrix products: that of their operands (see the module doc)."""


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` at the operands' own precision on every backend (see the module doc).

    Example:
        >>> import jax.numpy as jnp
        >>> from clipdyn.precision import matmul
        >>> matmul(jnp.ones((2, 3)), jnp.ones((3,))).tolist()
        [3.0, 3.0]
    """
    return jnp.matmul(a, b, precision=MATMUL_PRECISION)


def _trace_state_clean() -> bool:
    try:  # JAX keeps no public query for "is a trace active"; fall back to argument inspection
        from jax._src.core import trace_state_clean
    except ImportError:  # pragma: no cover - depends on the JAX version
        return True
    return bool(trace_state_clean())


def tracing(*values) -> bool:
    """Whether a JAX trace is active, or any of ``values`` holds a tracer."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(values)):
        return True
    return not _trace_state_clean()


@contextlib.contextmanager
def x64() -> Iterator[None]:
    """Run the block with float64 enabled in this thread (a no-op while a trace is active)."""
    if jax.config.jax_enable_x64 or tracing():
        yield
        return
    with jax.enable_x64(True):
        yield


def uses_x64(fn: F) -> F:
    """Decorate a public entry point to run under :func:`x64` (see the module doc)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if jax.config.jax_enable_x64 or tracing(args, kwargs):
            return fn(*args, **kwargs)
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
