"""The real-data protocol: from a dataset to a least-squares problem the ODE and engines share.

Steps (theory/real_data.md, eqs. (3.1)-(3.9); THEORY.md section 7):

1. standardise every input column over the dataset (mean 0, standard deviation 1, population
   formula); columns with ``max == min`` are dropped;
2. features ``raw`` (``x = u``) or ``relu:d=D,seed=S``: ``x = max(0, u^T (W / sqrt(D_in)))``
   with ``W`` (``D_in x D``) drawn ``N(0, 1)`` by ``numpy.random.default_rng(S)``
   (``standard_normal((D_in, D))``), no bias and not centred, so ``K`` keeps the large mean
   direction of real features;
3. target ``y = +1`` if the class index is ``>= n_classes / 2`` else ``-1``; a regression target
   is standardised;
4. ``K = X^T X / N = U diag(lam) U^T`` through the singular value decomposition
   ``X = Q S U^T`` (float64, cached): ``lam = s^2 / N``; singular values at or below
   ``s_max max(N, d) eps_64`` count as 0 (NumPy's ``lstsq``/``matrix_rank`` rule);
   ``theta*`` the minimum-norm least-squares solution, ``U^T theta* = S^+ Q^T y``; residuals
   ``eps_j = y_j - x_j^T theta*``. (Through ``eigh`` of ``K`` the error of ``theta*`` would
   grow with the square of the condition number of ``X``, through the SVD only linearly);
5. the ODE starts at ``theta_0 = 0``: ``v_i(0) = 1/2 (u_i^T theta*)^2``, noise law
   ``Empirical(eps)``; the engines draw rows ``x_j U`` with their ``eps_j``.

References:
    theory/real_data.md; Marshall, Xiao, Agarwala, Paquette, arXiv 2406.11733, Figure 1 (real
    data panels).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from clipdyn import validation
from clipdyn.data import cache as svd_cache
from clipdyn.data.sources import Dataset, int_param, parse_spec, take_keys
from clipdyn.theory.noise import Empirical
from clipdyn.theory.problem import Problem, make_problem

__all__ = ["PROTOCOL_VERSION", "FeatureMap", "parse_features", "DataProblem", "standardisation",
           "feature_matrix", "protocol_target", "fingerprint", "build_problem", "rank_cutoff",
           "decompose"]

PROTOCOL_VERSION = "clipdyn-real-data-protocol-1"
"""Enters every fingerprint: change it whenever the protocol's numbers would change (the cache is
keyed by the fingerprint and cannot tell otherwise)."""

_CHUNK = 8192  # rows per block: standardised float64 copies of huge inputs are never whole


@dataclasses.dataclass(frozen=True)
class FeatureMap:
    """A feature construction: ``raw`` (``x = u``) or ``relu`` (random ReLU features).

    Attributes:
        kind: ``"raw"`` or ``"relu"``.
        d: number of ReLU features (``relu`` only).
        seed: seed of ``numpy.random.default_rng`` for ``W`` (``relu`` only).
    """

    kind: str = "raw"
    d: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ("raw", "relu"):
            raise ValueError(f"features kind={self.kind!r} is not allowed; use raw or relu")
        if self.kind == "relu":
            object.__setattr__(self, "d", validation.integer("d", self.d, 1, owner="relu features"))
            object.__setattr__(self, "seed", validation.integer("seed", self.seed, 0,
                                                                high=2**63 - 1, owner="relu features"))

    def describe(self) -> str:
        return "raw" if self.kind == "raw" else f"relu:d={self.d},seed={self.seed}"


def parse_features(spec: str | FeatureMap | None) -> FeatureMap:
    """``raw`` (default for ``None``) or ``relu:d=D[,seed=S]`` (seed 0 unless given)."""
    if spec is None:
        return FeatureMap()
    if isinstance(spec, FeatureMap):
        return spec
    name, params = parse_spec(spec, "features")
    if name == "raw":
        take_keys(spec, params, what="features")
        return FeatureMap()
    if name == "relu":
        p = take_keys(spec, params, ("d",), {"seed": "0"}, what="features")
        return FeatureMap("relu", int_param(spec, "d", p["d"], 1, "features"),
                          validation.integer_text("seed", p["seed"], 0, high=2**63 - 1,
                                                  owner=f"features spec {spec!r}"))
    raise ValueError(f"features spec {spec!r}: unknown features {name!r}; allowed: raw, relu:d=D,seed=S")


def rank_cutoff(sing: np.ndarray, shape: tuple[int, int]) -> float:
    """Singular values of ``X`` (shape ``(N, d)``) at or below ``s_max max(N, d) eps_64`` count
    as 0: the SVD computes them with absolute error of order ``eps_64 s_max``, so smaller ones
    carry no information (NumPy's ``lstsq`` and ``matrix_rank`` default)."""
    return float(np.max(sing, initial=0.0)) * max(shape) * np.finfo(np.float64).eps


def _one_blas_thread(fn):
    """``fn`` run with one BLAS thread (restored after): the protocol's products and SVD change in
    their last bits with the thread count (OPENBLAS_NUM_THREADS=1 against 2 on digits), and a
    sweep's identity hashes the derived problem, so a resume or a process of a multi-process
    sweep under another thread count was refused as "a different sweep" of unchanged data.
    One thread makes them the same on one kind of CPU; another CPU's BLAS kernels may still
    differ in the last bits."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapped


@_one_blas_thread
def decompose(X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The SVD ``X = Q S U^T`` and the minimum-norm least-squares solution (eqs. (3.5)-(3.7)).

    Returns:
        ``sing``: the ``d`` singular values, decreasing (zeros appended when ``N < d``);
        ``vecs``: ``U`` (``d x d``), the right singular vectors = eigenvectors of ``K``;
        ``coef``: ``U^T theta* = S^+ Q^T y`` (0 on singular values below :func:`rank_cutoff`).
    """
    n, d = X.shape
    Q, sing, vt = np.linalg.svd(X, full_matrices=n < d)
    sing = np.concatenate([sing, np.zeros(d - sing.size)])
    keep = sing > rank_cutoff(sing, X.shape)
    coef = np.zeros(d)
    coef[keep] = (Q[:, keep[:Q.shape[1]]].T @ y) / sing[keep]
    return {"sing": sing, "vecs": vt.T, "coef": coef}


def _scaled_blocks(inputs: np.ndarray, keep: np.ndarray, scale: np.ndarray):
    """``(start, block)``: the kept columns over their scales, in float64, ``_CHUNK`` rows at a time."""
    for start in range(0, inputs.shape[0], _CHUNK):
        yield start, inputs[start:start + _CHUNK][:, keep].astype(np.float64) / scale


def standardisation(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(keep, scale, mean, sd)``: the non-constant columns (``max > min``), their largest
    magnitude, and the mean and population standard deviation of ``column / scale`` over the
    rows, in float64 (two passes, by blocks). The standardised column is
    ``(column / scale - mean) / sd``: dividing by the largest magnitude first keeps every sum
    finite and normal whatever the column's scale (1e160 overflowed the squares, 1e-170
    underflowed them), so standardisation does not depend on it."""
    col_max, col_min = np.max(inputs, axis=0), np.min(inputs, axis=0)
    keep = col_max > col_min
    n = inputs.shape[0]
    # In float64 before the absolute value: |int8(-128)| wraps to -128 in the input's own type.
    col_max, col_min = col_max.astype(np.float64), col_min.astype(np.float64)
    scale = np.maximum(np.abs(col_max), np.abs(col_min))[keep]
    mean = sum(np.sum(block, axis=0) for _, block in _scaled_blocks(inputs, keep, scale)) / n
    ss = sum(np.sum((block - mean) ** 2, axis=0) for _, block in _scaled_blocks(inputs, keep, scale))
    return keep, scale, mean, np.sqrt(ss / n)


@_one_blas_thread
def feature_matrix(dataset: Dataset, features: FeatureMap) -> tuple[np.ndarray, int]:
    """``(X, n_dropped)``: the ``(N, d)`` float64 feature matrix (eqs. (3.1)-(3.3)) and the number
    of constant input columns dropped."""
    keep, scale, mean, sd = standardisation(dataset.inputs)
    d_in = int(keep.sum())
    if d_in == 0:
        raise ValueError(f"{dataset.where}: every input column is constant; nothing to learn from")
    n = dataset.n
    d = d_in if features.kind == "raw" else features.d
    validation.check_memory(8.0 * (3 * n * d + 4 * d * d + (d_in * d if features.kind == "relu" else 0)),
                            f"{dataset.name} with features {features.describe()} (N={n}, d={d})")
    if features.kind == "relu":
        rng = np.random.default_rng(features.seed)
        W = rng.standard_normal((d_in, d)) / math.sqrt(d_in)
    X = np.empty((n, d))
    for start, block in _scaled_blocks(dataset.inputs, keep, scale):
        u = (block - mean) / sd
        X[start:start + _CHUNK] = u if features.kind == "raw" else np.maximum(u @ W, 0.0)
    return X, int(keep.size - d_in)


def protocol_target(dataset: Dataset) -> np.ndarray:
    """``y`` (eq. (3.4)): ``+1`` if the class index is ``>= n_classes / 2`` else ``-1``; a
    regression target minus its mean, over its population standard deviation."""
    if dataset.labels is not None:
        y = np.where(dataset.labels >= dataset.n_classes / 2, 1.0, -1.0)
        if np.all(y == y[0]):
            side = "at or above" if y[0] > 0 else "below"
            raise ValueError(f"{dataset.where}: every class index is {side} n_classes/2 = "
                             f"{dataset.n_classes / 2:g}, so the target is constant {y[0]:+g}; "
                             "nothing to learn")
        return y
    v = np.asarray(dataset.values, np.float64)
    v = v / max(float(np.max(np.abs(v))), np.finfo(np.float64).tiny)  # as the inputs: scale-free
    sd = v.std()
    if not sd > 0:
        raise ValueError(f"{dataset.where}: the regression target is constant; nothing to learn")
    return (v - v.mean()) / sd


def fingerprint(dataset: Dataset, features: FeatureMap) -> str:
    """sha256 over the protocol version, the source (without its location), the arrays read, the
    class count where it is not the bytes' own and the feature map: the same data and features
    give the same fingerprint wherever they lie.

    The target depends on the class count (eq. (3.4)). Labels read with no class count are
    mapped to their ranks, and a class count equal to the number of distinct labels gives the
    same target (labels must then be ``0..n-1``), so only a larger one, with classes no label
    uses, enters the text (and fingerprints made before it did stay valid).
    """
    parts = [PROTOCOL_VERSION, dataset.name, dataset.digest]
    if dataset.labels is not None and dataset.n_classes != np.unique(dataset.labels).size:
        parts.append(f"n_classes={dataset.n_classes}")
    text = "\n".join(parts + [features.describe()])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class DataProblem:
    """A dataset as a least-squares problem in the eigenbasis of ``K`` (what the ODE and both
    engines take: ``problem`` as the problem, the object itself as ``data=``).

    Attributes:
        problem: spectrum ``lam`` (decreasing), ``v0 = 1/2 (U^T theta*)^2`` and
            ``noise = Empirical(residuals)``.
        features: ``(N, d)`` rows ``x_j^T U`` (eigen-coordinates), float64.
        residuals: ``(N,)`` ``eps_j = y_j - x_j^T theta*``.
        e0: ``(d,)`` initial error ``U^T (theta_0 - theta*) = -U^T theta*``.
        target: ``(N,)`` the protocol target ``y``.
        eigvecs: ``(d, d)`` the eigenvectors ``U`` (columns, in the order of ``lam``).
        fingerprint: sha256 of protocol version, source, arrays read and feature map.
        source: the source name (without location); origin: where it was read from.
        feature_map: the :class:`FeatureMap`.
        kind: ``"classification"`` or ``"regression"``; n_classes: classes (or ``None``).
        d_in: input columns kept; n_dropped_columns: constant columns dropped.
        rank: number of positive eigenvalues (singular values above :func:`rank_cutoff`).
        cache_status: ``"hit"``, ``"computed"`` or ``"uncached"`` (the decomposition).
    """

    problem: Problem
    features: np.ndarray
    residuals: np.ndarray
    e0: np.ndarray
    target: np.ndarray
    eigvecs: np.ndarray
    fingerprint: str
    source: str
    origin: str
    feature_map: FeatureMap
    kind: str
    n_classes: int | None
    d_in: int
    n_dropped_columns: int
    rank: int
    cache_status: str

    @property
    def N(self) -> int:
        return int(self.features.shape[0])

    @property
    def d(self) -> int:
        return int(self.features.shape[1])

    @property
    def lam(self) -> np.ndarray:
        return np.asarray(self.problem.lam)

    @property
    def trace(self) -> float:
        return float(np.sum(self.lam))

    @property
    def d_int(self) -> float:
        """Intrinsic dimension ``Tr K / ||K||_op``."""
        return self.trace / float(np.max(self.lam))

    @property
    def R0(self) -> float:
        """``R(theta_0 = 0) = 1/2 theta*^T K theta*``."""
        return float(0.5 * np.sum(self.lam * self.e0 ** 2))

    @property
    def theta_star(self) -> np.ndarray:
        """``theta*`` in feature coordinates."""
        return self.eigvecs @ (-self.e0)

    def describe(self) -> str:
        return f"{self.source} features={self.feature_map.describe()}"

    def summary(self) -> dict:
        """The numbers about the dataset that the real-data study records in its results
        (experiments/real_data.py). A sweep's results (``clipdyn sweep --data``, ``run_sweep``)
        record the data SPEC, its fingerprint and the problem's content fingerprints instead: this
        summary names the file's location (``origin``), which a resumed sweep may have moved.

        ``row_norm2_*`` describe ``r_j = ||x_j||^2 / Tr K`` (mean exactly 1): the ODE assumes
        ``r_j -> 1`` (Gaussian features, eq. (5.1)); ``E r^2`` is their second moment and the
        factor by which unclipped SGD's stable learning rates shrink (eq. (5.2)).
        """
        res = self.residuals
        r = np.einsum("ij,ij->i", self.features, self.features) / self.trace  # mean exactly 1
        return {"data": self.describe(), "origin": self.origin, "fingerprint": self.fingerprint,
                "protocol": PROTOCOL_VERSION, "N": self.N, "d": self.d, "d_in": self.d_in,
                "n_dropped_columns": self.n_dropped_columns, "rank": self.rank, "kind": self.kind,
                "n_classes": self.n_classes, "trace": self.trace, "d_int": self.d_int,
                "R0": self.R0, "row_norm2_second_moment": float(np.mean(r * r)),
                "row_norm2_max": float(r.max()), "residual_mean": float(res.mean()),
                "residual_second_moment": float(np.mean(res ** 2)),
                "residual_excess_kurtosis": float(np.mean((res - res.mean()) ** 4) / res.var() ** 2 - 3)
                if res.var() > 0 else 0.0}


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@_one_blas_thread
def build_problem(dataset: Dataset, features: str | FeatureMap | None = None,
                  cache: bool | str | Path = True) -> DataProblem:
    """Apply the protocol (module doc) to ``dataset``.

    Args:
        dataset: from :mod:`clipdyn.data.sources`.
        features: ``"raw"`` (default), ``"relu:d=D,seed=S"`` or a :class:`FeatureMap`.
        cache: the decomposition cache (:mod:`clipdyn.data.cache`): ``True`` (``$CLIPDYN_CACHE`` or
            ``~/.cache/clipdyn``), ``False``, or a folder.

    Returns:
        :class:`DataProblem`.

    Raises:
        ValueError: for a bad feature spec, constant inputs or target, or ``theta* = 0``.

    References:
        theory/real_data.md, eqs. (3.1)-(3.9).
    """
    fmap = parse_features(features)
    X, dropped = feature_matrix(dataset, fmap)
    y = protocol_target(dataset)
    n, d = X.shape
    key = fingerprint(dataset, fmap)
    svd, status = svd_cache.cached(key, lambda: decompose(X, y),
                                   {"sing": (d,), "vecs": (d, d), "coef": (d,)}, cache)
    sing, vecs, coef = svd["sing"], svd["vecs"], svd["coef"]
    keep = sing > rank_cutoff(sing, X.shape)
    lam = np.where(keep, sing * sing / n, 0.0)
    rows = X @ vecs
    del X
    residuals = y - rows @ coef
    # theta* = 0 in exact arithmetic (a target orthogonal to the centred features, a constant
    # one say) leaves only rounding: fitted values ~1e-16 of the target's size. 1e-10 is far above
    # that and far below any target a feature explains.
    if not np.linalg.norm(rows @ coef) > 1e-10 * np.linalg.norm(y):
        raise ValueError(f"{dataset.name} with features {fmap.describe()}: the least-squares "
                         "solution theta* is 0 (the target is orthogonal to every feature), so "
                         "the risk starts at 0 and there is nothing to learn")
    problem = make_problem(lam, Empirical(residuals), v0=0.5 * coef * coef)
    # Read-only, like the Dataset's arrays: sweeps name the rows by the fingerprint, so rows
    # edited in place between an interrupted sweep and its resumption would be mixed in silently.
    rows, residuals, e0, y, vecs = (_read_only(a) for a in (rows, residuals, -coef, y, vecs))
    return DataProblem(problem=problem, features=rows, residuals=residuals, e0=e0, target=y,
                       eigvecs=vecs, fingerprint=key, source=dataset.name, origin=dataset.origin,
                       feature_map=fmap, kind=dataset.kind, n_classes=dataset.n_classes,
                       d_in=int(dataset.inputs.shape[1] - dropped), n_dropped_columns=dropped,
                       rank=int(keep.sum()), cache_status=status)
