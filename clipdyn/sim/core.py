"""What every simulator shares: the prepared problem, the run state, the sample stream, the
divergence guard and the batch-invariant sum.

Everything runs in the eigenbasis of ``K``. The state is the error ``e = theta - theta*`` in
eigen-coordinates; the risk is ``R = 1/2 sum_i lam_i e_i^2``. A step's data rows come from one of
two samplers:

* Gaussian data (THEORY.md section 1): ``x = sqrt(lam) * z``, ``z ~ N(0, I_d)``, ``eps`` from the
  noise law, ``O(d)`` work per row and ``K`` never formed;
* a dataset (THEORY.md section 7): rows ``x_j`` (already rotated into the eigenbasis of
  ``K = X^T X / N``) and their residuals ``eps_j``, drawn uniformly with replacement.

The sample stream of a seed is a pure function of ``(stream_key, k)``: runs that share a seed
share their samples (common random numbers). Row 0 of step ``k`` uses the key
``fold_in(stream_key, k)`` exactly as the one-sample engine always has, so ``B = 1`` reproduces
the paper's C-SGD bit for bit; row ``b >= 1`` uses ``fold_in(fold_in(stream_key, k), 2^30 + b)``,
so a run with batch ``B`` shares its first rows with every run of a smaller batch. (Not ``b``:
under JAX's partitionable threefry, the default, ``fold_in(K, 1)`` is ``split(K)[1]``, row 0's
label-noise key, so row 1's features reused it: the numerator of row 0's Student-t noise was row
1's first feature, Spearman correlation 0.97.)

References:
    Marshall, Xiao, Agarwala, Paquette, arXiv 2406.11733, sections 1-2; theory/derivation.md,
    section 1; theory/clip_rules.md.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clipdyn.precision import uses_x64
from clipdyn.pytrees import to_device
from clipdyn.sim import threefry
from clipdyn import validation
from clipdyn.theory.problem import Problem, check_problem

Array = jax.Array

__all__ = ["SimProblem", "RunState", "Sample", "PAD", "prepare", "split_seed", "draw_sample",
           "draw_block", "initial_error", "batch_invariant_sum", "risk_of", "start_state",
           "divergence_bound", "guarded", "step_time", "data_rows", "rows_of", "row_gram"]

PAD = 64
_EXTRA = 2**31  # fold_in data for the pre-clip and DP rows, far from any row index
_ROWS = 2**30  # fold_in data of row b >= 1 is _ROWS + b: split(K) uses 0 and 1


class SimProblem(NamedTuple):
    """The problem in the simulation precision.

    Attributes:
        lam, sqrt_lam, v0: padded spectrum, its square root, and mode energies ``(d_pad,)``.
        trace: ``Tr K``. R0: initial risk.
        noise: the noise law (Gaussian sampler).
        active: 1 on the ``d`` real modes, 0 on padding (isotropic noise is masked by it).
        pre_scale: ``sqrt(Tr K / d)``, the unit of pre-clip noise.
        rows: dataset rows in eigen-coordinates ``(N, d_pad)``, or ``None`` for Gaussian data.
        row_eps: the rows' residuals ``(N,)``, or ``None``.
        e0: the fixed initial error ``(d_pad,)`` of a dataset (``-U^T theta*``), or ``None``
            for the random-sign default start.
    """

    lam: Array
    sqrt_lam: Array
    v0: Array
    trace: Array
    R0: Array
    noise: object
    active: Array
    pre_scale: Array
    rows: Array | None = None
    row_eps: Array | None = None
    e0: Array | None = None


class RunState(NamedTuple):
    """State of one run.

    Attributes:
        e: ``theta - theta*`` in eigen-coordinates, ``(d,)``.
        risk: current risk ``R``.
        k: steps taken.
        diverged: whether the run diverged (it is then frozen).
        diverged_step: the step at which it diverged (``-1`` if it did not).
    """

    e: Array
    risk: Array
    k: Array
    diverged: Array
    diverged_step: Array


class Sample(NamedTuple):
    """One step's randomness.

    Attributes:
        x: the data rows, ``(d,)`` for the one-sample rule, else ``(B, d)``; for Gaussian data
            the standard normal ``z`` (the row is ``sqrt(lam) * z``, see :func:`data_rows`).
        eps: their label noise, ``()`` or ``(B,)``.
        extra: isotropic rows ``(n_extra, d)`` (pre-clip ``zeta_b``, then the DP ``z``), or an
            empty ``(0, d)`` array.
    """

    x: Array
    eps: Array
    extra: Array | None = None


def _pad(a: np.ndarray, pad: int, dtype) -> Array:
    return to_device(np.pad(np.asarray(a, np.float64), [(0, 0)] * (a.ndim - 1) + [(0, pad)]), dtype)


def _check_data_matches(lam: np.ndarray, v0: np.ndarray, feats: np.ndarray, e0: np.ndarray) -> None:
    """Refuse a dataset that is not the problem's: the risk is computed from ``lam`` and the
    steps from the rows, and a problem of the same ``d`` (another dataset's, or other features')
    mixed them silently. The rows' second moments are the spectrum (``K = X^T X / N`` in its own
    eigenbasis, to the SVD's rounding, far below 1e-6 of ``lam_max``) and ``v(0) = e0^2 / 2``."""
    second = np.einsum("ij,ij->j", feats, feats) / feats.shape[0]
    top = float(np.max(lam, initial=0.0))
    off = np.abs(second - lam) > 1e-6 * top
    if not e0.shape == lam.shape:
        raise ValueError(f"data e0 has shape {e0.shape}; it must be ({lam.size},)")
    start = np.abs(0.5 * e0 * e0 - v0) > 1e-12 * np.abs(v0) + 1e-300
    if off.any() or start.any():
        i, what = (int(np.argmax(off)), "spectrum") if off.any() else (int(np.argmax(start)), "start")
        raise ValueError(
            f"the problem is not the dataset's (its {what} differs at mode {i}: lam={lam[i]:.6g} "
            f"against the rows' {second[i]:.6g}, v0={v0[i]:.6g} against e0^2/2={0.5 * e0[i] ** 2:.6g});"
            " pass data.problem as the problem")


def _check_fits(lam: np.ndarray, v0: np.ndarray, dtype) -> None:
    """Refuse a problem whose risk the simulation's dtype cannot hold: ``R0`` (allowed up to
    1e100) overflowed float32 beyond 3.4e38 (every run flagged diverged at once), and terms below
    its smallest normal number (1.2e-38) are flushed to 0 (a risk of 0 throughout, where the ODE
    had 3.7e-41)."""
    R0 = float(np.sum(lam * v0))
    tiny = np.finfo(dtype).tiny  # XLA flushes subnormal numbers to zero on CPU

    def flushed(a):
        return np.where(np.abs(a) < tiny, 0, a).astype(dtype)

    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        # as the runs start: e = sqrt(2 v0) per mode, R = 1/2 sum lam e^2, all in dtype
        e = flushed(np.sqrt(2.0 * v0).astype(dtype))
        held = 0.5 * float(np.sum(flushed(flushed(lam.astype(dtype)) * flushed(e * e)), dtype=dtype))
    if not abs(held - R0) <= 1e-3 * R0:
        name = np.dtype(dtype).name
        raise ValueError(f"R0={R0:.3g} does not fit the simulation's {name} (it holds "
                         f"{held:.3g} there); simulate in float64 (precision '64', --precision 64)"
                         " or rescale the problem")


@uses_x64
def prepare(problem: Problem, dtype=jnp.float32, data=None) -> SimProblem:
    """Cast the problem to the simulation dtype and pad ``d`` to a multiple of :data:`PAD`.

    The padding modes have ``lam = 0`` and ``v(0) = 0``: they never move and add exact zeros to
    every sum. They are there for reproducibility: XLA vectorises elementwise work over the
    flattened batch, and with ``d`` a multiple of 64 no element of a run ever falls in the scalar
    remainder loop (which rounds differently, without fused multiply-adds), so a run computes the
    same numbers alone and inside a sweep of any size.

    Args:
        problem: the problem (spectrum, start, noise law).
        dtype: simulation dtype.
        data: a dataset in eigen-coordinates (an object with ``features`` ``(N, d)``,
            ``residuals`` ``(N,)`` and ``e0`` ``(d,)``, such as
            :class:`clipdyn.data.DataProblem`); ``None`` for Gaussian data.
    """
    check_problem(problem)
    if jnp.dtype(dtype) not in (jnp.float32, jnp.float64):
        raise ValueError(f"dtype={dtype!r} is not allowed; the engines run in float32 or float64")
    lam = np.asarray(problem.lam, np.float64)
    v0 = np.asarray(problem.v0, np.float64)
    _check_fits(lam, v0, dtype)
    d = lam.size
    pad = (-d) % PAD
    lam_p = _pad(lam, pad, dtype)
    rows = row_eps = e0 = None
    if data is not None:
        feats = np.asarray(data.features)
        if feats.ndim != 2 or feats.shape[1] != d:
            raise ValueError(f"data features have shape {feats.shape}; they must be (N, {d})")
        _check_data_matches(lam, v0, feats, np.asarray(data.e0, np.float64))
        rows = _pad(feats, pad, dtype)
        row_eps = to_device(np.asarray(data.residuals, np.float64), dtype)
        e0 = _pad(np.asarray(data.e0), pad, dtype)
    return SimProblem(
        lam=lam_p,
        sqrt_lam=to_device(np.sqrt(np.asarray(lam_p))),  # on the host: IEEE sqrt, no program
        v0=_pad(v0, pad, dtype),
        trace=to_device(lam.sum(), dtype),
        R0=to_device(np.sum(lam * v0), dtype),
        noise=problem.noise.astype(dtype),
        active=to_device(np.arange(d + pad) < d, dtype),
        pre_scale=to_device(np.sqrt(lam.sum() / d), dtype),
        rows=rows,
        row_eps=row_eps,
        e0=e0,
    )


def split_seed(key: Array) -> tuple[Array, Array]:
    """``(init_key, stream_key)`` of a run's seed key."""
    k1, k2 = jax.random.split(key)
    return k1, k2


def noise_cap(dtype) -> float:
    """The largest label-noise magnitude a sample keeps: ``max_float^0.3`` of ``dtype`` (3.6e11
    in float32, 3.0e92 in float64).

    Heavy-tailed laws overflow: the Student-t sampler returns ``inf`` for ``df = 0.05`` in
    float32 one draw in 9 (``df = 0.01`` in float64, one in 34), and an infinite residual made a clipped
    step ``0 * inf``, so clipped runs that cannot diverge were reported as diverged. Beyond the
    cap clipping has long saturated (the step is ``C`` along the sample's direction, whatever the
    residual's size), so capping changes no clipped step beyond rounding; an unclipped run still
    takes a step of ``~cap`` and diverges. ``cap^2 * Tr K`` stays finite in both precisions.
    """
    return float(np.finfo(dtype).max) ** 0.3


def _row(key: Array, prob: SimProblem) -> tuple[Array, Array]:
    kz, ke = jax.random.split(key)
    dtype = prob.lam.dtype
    if prob.rows is not None:
        j = jax.random.randint(kz, (), 0, prob.rows.shape[0])
        return prob.rows[j], prob.row_eps[j]
    return threefry.normal(kz, prob.lam.shape, dtype), label_noise(prob.noise, ke, dtype)


def label_noise(noise, key: Array, dtype) -> Array:
    """One label-noise sample of the law ``noise``, capped at :func:`noise_cap` (every simulator
    draws its noise here)."""
    cap = noise_cap(dtype)
    return jnp.clip(noise.sample(key, (), dtype), -cap, cap)


@uses_x64
def draw_sample(stream_key: Array, k: Array, prob: SimProblem, batch: int = 1,
                n_extra: int = 0) -> Sample:
    """Step ``k``'s sample of a seed's stream: a pure function of ``(stream_key, k)``.

    ``batch = 1`` with no extra rows gives ``x`` of shape ``(d,)`` (the one-sample engine's
    layout); otherwise ``(batch, d)`` rows and ``n_extra`` isotropic ``N(0, I_d)`` rows (zero on
    padding modes).
    """
    key = jax.random.fold_in(stream_key, k)
    x0, e0 = _row(key, prob)
    dtype = prob.lam.dtype
    extra = jnp.zeros((n_extra,) + prob.lam.shape, dtype)
    if n_extra:
        keys = jax.vmap(lambda i: jax.random.fold_in(key, _EXTRA + i))(jnp.arange(n_extra))
        extra = prob.active[None, :] * jax.vmap(lambda kk: threefry.normal(kk, prob.lam.shape, dtype))(keys)
    if batch == 1 and n_extra == 0:
        return Sample(x0, e0, extra)
    if batch > 1:
        keys = jax.vmap(lambda b: jax.random.fold_in(key, _ROWS + b))(jnp.arange(1, batch))
        xs, es = jax.vmap(lambda kk: _row(kk, prob))(keys)
        return Sample(jnp.concatenate([x0[None], xs]), jnp.concatenate([e0[None], es]), extra)
    return Sample(x0[None], e0[None], extra)


@uses_x64
def draw_block(stream_key: Array, k0: Array, block: int, prob: SimProblem, batch: int = 1,
               n_extra: int = 0) -> Sample:
    """The samples of steps ``k0 .. k0 + block - 1``, leaves with a leading ``block`` axis."""
    return jax.vmap(lambda k: draw_sample(stream_key, k, prob, batch, n_extra))(k0 + jnp.arange(block))


@uses_x64
def initial_error(init_key: Array, prob: SimProblem) -> Array:
    """``e_0 = theta_0 - theta* = -theta*``: a dataset's own ``e0``, or ``|theta*_i| =
    sqrt(2 v_i(0))`` with random signs, so that ``v_i(0)`` is exact and ``R(theta_0) = R0``
    (theory/derivation.md, eq. (1.4))."""
    if prob.e0 is not None:
        return prob.e0
    signs = jax.random.rademacher(init_key, prob.lam.shape, prob.lam.dtype)
    return -signs * jnp.sqrt(2.0 * prob.v0)


def batch_invariant_sum(x: Array, block: int = 8) -> Array:
    """Sum over the last axis in a fixed pairwise order, whatever the batch shape around it.

    XLA plans ``jnp.sum`` (and ``jnp.dot``) differently for different batch sizes, so the last
    bits of a run's reductions, and after many steps its trajectory, would depend on how many
    runs share the program. Here the order is fixed by slices and elementwise adds in blocks of
    ``block`` (8: about 1.3x the cost of ``jnp.sum`` on CPU), so a run gives the same numbers
    alone and inside any sweep; pairwise summation is also more accurate than a running sum.
    """
    n = x.shape[-1]
    while n > 1:
        blocks = -(-n // block)
        width = 1 << (min(n, block) - 1).bit_length()
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, blocks * width - n)])
        x = x.reshape(x.shape[:-1] + (blocks, width))
        while width > 1:
            width //= 2
            x = x[..., :width] + x[..., width:]
        x = x[..., 0]
        n = blocks
    return x[..., 0]


def risk_of(prob: SimProblem, e: Array) -> Array:
    """``R = 1/2 sum_i lam_i e_i^2``, exactly (batch-invariant order)."""
    return 0.5 * batch_invariant_sum(prob.lam * e * e)


def start_state(prob: SimProblem, e: Array) -> RunState:
    """A fresh run at error ``e``."""
    return RunState(e, risk_of(prob, e), jnp.zeros((), jnp.int32), jnp.zeros((), bool),
                    jnp.full((), -1, jnp.int32))


def init_run(prob: SimProblem, init_key: Array) -> RunState:
    return start_state(prob, initial_error(init_key, prob))


def divergence_bound(prob: SimProblem, divergence_factor) -> Array:
    """Runs diverge once ``R > divergence_factor * R0`` (the one divergence rule of the engines).

    Capped at the dtype's largest finite number: in float32 ``1e6 R0`` is ``inf`` from
    ``R0 ~ 3e32``, and ``inf <= inf`` let runs whose risk overflowed go on unflagged."""
    validation.divergence_factor(divergence_factor)  # concrete ones; run_sweep checked traced ones
    dtype = prob.lam.dtype
    return jnp.minimum(jnp.asarray(divergence_factor, dtype) * prob.R0, jnp.finfo(dtype).max)


def guarded(prob: SimProblem, state: RunState, e_new: Array, bound: Array) -> RunState:
    """Accept ``e_new`` unless the risk leaves ``[0, bound]`` (or the run had diverged)."""
    r_new = risk_of(prob, e_new)
    blown = ~(r_new <= bound) & ~state.diverged
    keep = state.diverged | blown
    k = state.k + 1
    return RunState(
        e=jnp.where(keep, state.e, e_new),
        risk=jnp.where(keep, state.risk, r_new),
        k=k,
        diverged=state.diverged | blown,
        diverged_step=jnp.where(blown, k, state.diverged_step),
    )


def step_time(prob: SimProblem, k: Array) -> Array:
    """ODE time ``t = k / Tr K`` of step ``k``."""
    return k.astype(prob.lam.dtype) / prob.trace


def data_rows(prob: SimProblem, x: Array) -> Array:
    """The data rows of a sample: ``sqrt(lam) * z`` for Gaussian data, a dataset's rows as drawn."""
    return x if prob.rows is not None else along_last(prob.sqrt_lam, x) * x


def along_last(v: Array, x: Array) -> Array:
    """``v`` (``(d,)``) shaped to broadcast against ``x`` along its last axis."""
    return v.reshape((1,) * (x.ndim - 1) + v.shape)


def rows_of(prob: SimProblem, sample: Sample, rule) -> Array:
    """The step's rows ``(n_rows, d)``: data rows, then the isotropic rows."""
    x = data_rows(prob, sample.x if sample.x.ndim == 2 else sample.x[None])
    return jnp.concatenate([x, sample.extra]) if rule.n_extra else x


def row_gram(rows: Array) -> Array:
    """Inner products of a step's rows, in the batch-invariant order."""
    return batch_invariant_sum(rows[:, None, :] * rows[None, :, :])
