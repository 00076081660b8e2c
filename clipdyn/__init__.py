"""clipdyn: high-dimensional dynamics of SGD with gradient clipping on streaming least squares.

Importing clipdyn changes no global state: JAX's ``jax_enable_x64`` keeps the value the user gave
it. The theory, the ODE and the float64 simulations still run in float64: each public entry point
runs under ``jax.enable_x64(True)``, a thread-local context restored when the call returns (see
:mod:`clipdyn.precision`). Inside a caller's own ``jit``/``vmap``/``grad``, the caller's precision
applies.

Bad arguments raise ``ValueError`` naming the bad value and what is allowed, with the same rules
and messages as the command line (:mod:`clipdyn.validation`).
"""

__version__ = "0.1.0"

from clipdyn import precision, validation
from clipdyn.theory import factors, noise
from clipdyn.theory.factors import (
    Factors,
    ccc,
    csc,
    max_stable_lr,
    mu,
    nu,
    nu_abs,
    optimal_threshold,
    reduction_factors,
)
from clipdyn.theory.noise import Empirical, Gaussian, GaussianMixture, Rademacher, StudentT, cauchy
