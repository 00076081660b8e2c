"""The streaming least-squares problem: covariance spectrum, start, and noise law.

Data ``x ~ N(0, K)`` with ``K = U diag(lam) U^T``; everything is written in the eigenbasis of
``K``, so ``K`` is never formed. The state of both engines is described by the mode energies
``v_i = 1/2 <theta - theta*, u_i>^2`` and the risk ``R = sum_i lam_i v_i`` (THEORY.md section 1).

The default start is ``theta_0 = 0`` with ``theta*`` of equal-magnitude eigen-coordinates
``sqrt(2 R0 / Tr K)``, so ``v_i(0) = R0 / Tr K`` and ``R(theta_0) = R0`` exactly
(theory/derivation.md, eq. (1.4)).

References:
    Marshall, Xiao, Agarwala, Paquette, arXiv 2406.11733, section 1; theory/derivation.md, section 1.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from clipdyn import validation
from clipdyn.precision import uses_x64
from clipdyn.pytrees import frozen_pytree, to_device
from clipdyn.theory.noise import NoiseLaw

Array = jax.Array

_BYTES_PER_MODE = 64
"""Memory a problem takes per mode, for the up-front size check: the spectrum and start in
NumPy and in JAX (float64), and their copies while building (8 arrays of 8 bytes)."""

__all__ = ["Problem", "check_problem", "make_problem", "identity_spectrum", "power_law_spectrum", "load_spectrum"]


def identity_spectrum(d: int) -> np.ndarray:
    """``lam_i = 1`` for ``i = 1..d``."""
    return np.ones(_check_dim(d, "identity"))


def power_law_spectrum(d: int, alpha: float) -> np.ndarray:
    """``lam_i = i^-alpha`` for ``i = 1..d`` (eigenvalues below float64's range are 0)."""
    d = _check_dim(d, "power-law")
    validation.single("alpha", alpha, owner="power-law", what="one exponent")
    validation.check_value("power-law", "alpha", alpha, np.isfinite, "finite")
    with np.errstate(under="ignore", over="ignore"):
        lam = np.arange(1, d + 1, dtype=float) ** (-float(alpha))
    return check_spectrum(lam, f"power-law spectrum (d={d}, alpha={float(alpha):g})")


def load_spectrum(path: str | Path) -> np.ndarray:
    """A spectrum from a ``.npy`` file holding a 1-D array of real eigenvalues.

    Refused, with the file named: a missing or unreadable file, a ``.npz`` archive, arrays that
    are not 1-D, and arrays that are not of a real numeric dtype (complex, string, boolean).
    """
    arr = validation.load_npy_vector(path, "spectrum")
    return check_spectrum(arr, f"spectrum file {str(Path(path))!r}")


def check_spectrum(lam: ArrayLike, what: str = "spectrum") -> np.ndarray:
    """Validate a spectrum and return it as float64.

    Eigenvalues must be real, finite, ``>= 0`` and at most ``1e100``, and the largest must be at
    least ``1e-100``: time is counted in units of ``Tr K`` steps and the start is
    ``v_i = R0 / Tr K``, which must stay in float64's normal range (a spectrum of ``1e-320``
    makes ``R0 / Tr K`` infinite, one of ``1e308`` makes ``Tr K`` infinite). Rescale such a
    spectrum, and the horizon with it: ``lam -> s lam`` runs the same dynamics ``s`` times faster
    (``R_{s lam}(t) = R_lam(s t)``; see the README).
    """
    lam = validation.real_vector(lam, what)
    bad = ~(np.isfinite(lam) & (lam >= 0) & (lam <= validation.MAX_MAGNITUDE))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{what}: entry {i} is {float(lam[i])!r}; eigenvalues must be finite, >= 0 and "
            f"<= {validation.number_text(validation.MAX_MAGNITUDE)}"
        )
    top = float(lam.max())
    if top == 0:
        raise ValueError(f"{what}: all eigenvalues are zero; at least one must be positive")
    if top < validation.MIN_MAGNITUDE:
        raise ValueError(
            f"{what}: the largest eigenvalue is {top!r}; it must be >= "
            f"{validation.number_text(validation.MIN_MAGNITUDE)} "
            "so that Tr K and R0 / Tr K stay in float64's normal range (rescale the spectrum)"
        )
    return lam


def _check_dim(d, what: str) -> int:
    d = validation.integer("d", d, 1, owner=what)
    validation.check_memory(d * _BYTES_PER_MODE, f"{what}: d={d}")
    return d


@frozen_pytree
class Problem:
    """A streaming least-squares problem in the eigenbasis of ``K``.

    Attributes:
        lam: eigenvalues ``lam_i >= 0`` of ``K``, shape ``(d,)``.
        v0: initial mode energies ``v_i(0) >= 0``, shape ``(d,)``.
        noise: the label-noise law.
    """

    lam: Array
    v0: Array
    noise: NoiseLaw

    @property
    def d(self) -> int:
        return self.lam.shape[0]

    @property
    @uses_x64
    def trace(self) -> Array:
        """``Tr K``: one unit of ODE time is ``Tr K`` SGD steps."""
        return jnp.sum(self.lam)

    @property
    @uses_x64
    def R0(self) -> Array:
        """The initial risk ``sum_i lam_i v_i(0)``."""
        return jnp.sum(self.lam * self.v0)

    @property
    @uses_x64
    def intrinsic_dimension(self) -> Array:
        """``d_int = Tr K / ||K||_op``; the theory is exact as it grows."""
        return self.trace / jnp.max(self.lam)


def check_problem(problem, name: str = "problem") -> Problem:
    """``problem`` if it is a :class:`Problem`, else a ``ValueError`` naming what it got (one
    check for the ODE, the sweeps and the engines)."""
    if not isinstance(problem, Problem):
        raise ValueError(f"{name} must be a clipdyn Problem (from clipdyn.theory.problem.make_problem); "
                         f"got {type(problem).__name__}")
    return problem


@uses_x64
def make_problem(
    lam: ArrayLike, noise: NoiseLaw, R0: float = 1.0, v0: ArrayLike | None = None
) -> Problem:
    """Build a :class:`Problem`, validating its inputs.

    Args:
        lam: the spectrum (see :func:`identity_spectrum`, :func:`power_law_spectrum`,
            :func:`load_spectrum`).
        noise: a noise law from :mod:`clipdyn.theory.noise`.
        R0: initial risk, finite and within ``[1e-100, 1e100]``, used for the default start
            ``v_i(0) = R0 / Tr K``.
        v0: explicit initial mode energies (then ``R0`` is ignored); real, finite, ``>= 0``, with
            ``sum(lam * v0)`` within ``[1e-100, 1e100]``.

    Returns:
        The problem, in float64 (whatever JAX's global precision setting).

    Raises:
        ValueError: for a bad spectrum, noise law, ``R0`` or ``v0``.

    References:
        theory/derivation.md, eq. (1.4).
    """
    validation.noise_law(noise)
    lam = check_spectrum(lam)
    if v0 is None:
        validation.single("R0", R0, what="one initial risk")
        validation.positive("R0", R0)
        v0 = np.full_like(lam, float(R0) / lam.sum())
    else:
        v0 = validation.real_vector(v0, "v0")
        if v0.shape != lam.shape:
            raise ValueError(f"v0 has shape {v0.shape}; it must match the spectrum, {lam.shape}")
        if not np.all(np.isfinite(v0) & (v0 >= 0)):
            raise ValueError("v0: mode energies must be finite and >= 0")
        with np.errstate(over="ignore", under="ignore"):
            r0 = float(np.sum(lam * v0))
        if not (validation.MIN_MAGNITUDE <= r0 <= validation.MAX_MAGNITUDE):
            raise ValueError(
                f"v0: the initial risk sum(lam * v0) = {r0!r} is not allowed; it must be within "
                f"[{validation.number_text(validation.MIN_MAGNITUDE)}, "
                f"{validation.number_text(validation.MAX_MAGNITUDE)}]"
            )
    return Problem(to_device(lam), to_device(v0), noise)
