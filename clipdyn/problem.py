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

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from clipdyn.noise import NoiseLaw

Array = jax.Array

__all__ = ["Problem", "make_problem", "identity_spectrum", "power_law_spectrum", "load_spectrum"]


def identity_spectrum(d: int) -> np.ndarray:
    """``lam_i = 1`` for ``i = 1..d``."""
    _check_dim(d)
    return np.ones(int(d))


def power_law_spectrum(d: int, alpha: float) -> np.ndarray:
    """``lam_i = i^-alpha`` for ``i = 1..d``."""
    _check_dim(d)
    if not np.isfinite(alpha):
        raise ValueError(f"power-law: alpha={alpha} is not allowed; alpha must be finite")
    return np.arange(1, int(d) + 1, dtype=float) ** (-float(alpha))


def load_spectrum(path: str | Path) -> np.ndarray:
    """A spectrum from a ``.npy`` file holding a 1-D array of eigenvalues."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"spectrum file {str(path)!r} does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise ValueError(f"spectrum file {str(path)!r} is not a readable .npy array ({err})") from None
    return check_spectrum(arr, f"spectrum file {str(path)!r}")


def check_spectrum(lam: ArrayLike, what: str = "spectrum") -> np.ndarray:
    """Validate a spectrum: 1-D, finite, non-negative, not all zero."""
    lam = np.asarray(lam, dtype=float)
    if lam.ndim != 1 or lam.size == 0:
        raise ValueError(f"{what}: must be a non-empty 1-D array; got shape {lam.shape}")
    bad = ~np.isfinite(lam) | (lam < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{what}: entry {i} is {lam[i]}; eigenvalues must be finite and >= 0"
        )
    if not lam.sum() > 0:
        raise ValueError(f"{what}: all eigenvalues are zero; at least one must be positive")
    return lam


def _check_dim(d) -> None:
    if int(d) != d or d < 1:
        raise ValueError(f"dimension d={d} is not allowed; d must be a positive integer")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
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
    def trace(self) -> Array:
        """``Tr K``: one unit of ODE time is ``Tr K`` SGD steps."""
        return jnp.sum(self.lam)

    @property
    def R0(self) -> Array:
        """The initial risk ``sum_i lam_i v_i(0)``."""
        return jnp.sum(self.lam * self.v0)

    @property
    def intrinsic_dimension(self) -> Array:
        """``d_int = Tr K / ||K||_op``; the theory is exact as it grows."""
        return self.trace / jnp.max(self.lam)


def make_problem(
    lam: ArrayLike, noise: NoiseLaw, R0: float = 1.0, v0: ArrayLike | None = None
) -> Problem:
    """Build a :class:`Problem`, validating its inputs.

    Args:
        lam: the spectrum (see :func:`identity_spectrum`, :func:`power_law_spectrum`,
            :func:`load_spectrum`).
        noise: a noise law from :mod:`clipdyn.noise`.
        R0: initial risk ``> 0``, used for the default start ``v_i(0) = R0 / Tr K``.
        v0: explicit initial mode energies (then ``R0`` is ignored); non-negative, finite.

    Returns:
        The problem, in float64.

    References:
        theory/derivation.md, eq. (1.4).
    """
    lam = check_spectrum(lam)
    if v0 is None:
        if not (np.isfinite(R0) and R0 > 0):
            raise ValueError(f"R0={R0} is not allowed; R0 must be finite and > 0")
        v0 = np.full_like(lam, float(R0) / lam.sum())
    else:
        v0 = np.asarray(v0, dtype=float)
        if v0.shape != lam.shape:
            raise ValueError(f"v0 has shape {v0.shape}; it must match the spectrum, {lam.shape}")
        if not np.all(np.isfinite(v0) & (v0 >= 0)):
            raise ValueError("v0: mode energies must be finite and >= 0")
        if not np.sum(lam * v0) > 0:
            raise ValueError("v0: the initial risk sum(lam * v0) must be > 0")
    return Problem(jnp.asarray(lam), jnp.asarray(v0), noise)
