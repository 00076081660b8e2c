"""clipdyn: high-dimensional dynamics of SGD with gradient clipping on streaming least squares.

Importing clipdyn turns on JAX's float64 support (``jax_enable_x64``): the theory and the ODE
run in float64, and the simulators use float32 unless asked for float64.
"""

import jax

jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"

from clipdyn import factors, noise  # noqa: E402
from clipdyn.factors import (  # noqa: E402
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
from clipdyn.noise import Empirical, Gaussian, GaussianMixture, Rademacher, StudentT, cauchy  # noqa: E402
