"""Sweeps: many simulation runs as one vmapped, sharded, chunked and resumable program.

A sweep is ``S`` seeds x ``C`` configurations (schedules with batched parameters, for example
every threshold x every learning rate). Runs that share a seed share their data stream (common
random numbers), so threshold comparisons are not drowned in seed noise.

* The configuration axis is split into fixed-size chunks (one compilation for all of them; the
  last chunk is padded) and each chunk is sharded over all local devices with
  ``jax.shard_map``.
* Each finished chunk is written atomically to ``OUT.partial/``; a rerun of the same sweep loads
  the finished chunks instead of recomputing them, so an interruption loses at most the chunk in
  flight. The merged result is written with :func:`clipdyn.results.save_results`.
* A run's numbers depend only on its seed and configuration: alone or in a sweep, sharded or
  not, they are the same (tested).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from clipdyn import simulate as sim
from clipdyn.problem import Problem
from clipdyn.noise import cast_floats
from clipdyn.results import atomic_savez, atomic_write_bytes, save_results

__all__ = ["SweepResult", "stack_schedules", "run_sweep", "simulate_runs", "seed_keys"]

PRECISIONS = {"32": jnp.float32, "64": jnp.float64}


@dataclass
class SweepResult:
    """Output of a sweep.

    Attributes:
        t: output times ``(P,)``.
        risk: ``(S, C, P)`` risks; ``nan`` at and after a run's divergence.
        diverged: ``(S, C)`` flags.
        diverged_at: ``(S, C)`` ODE time of divergence (``nan`` if none).
        seeds: ``(S,)`` seeds.
        config: everything needed to reproduce the sweep.
    """

    t: np.ndarray
    risk: np.ndarray
    diverged: np.ndarray
    diverged_at: np.ndarray
    seeds: np.ndarray
    config: dict = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"t": self.t, "risk": self.risk, "diverged": self.diverged,
                "diverged_at": self.diverged_at, "seeds": self.seeds}


def stack_schedules(schedules: Sequence) -> Any:
    """One batched schedule (leading axis ``C``) from ``C`` schedules of the same kind."""
    kinds = {type(s) for s in schedules}
    if len(kinds) != 1:
        raise ValueError(f"a sweep's schedules must be of one kind; got {sorted(k.__name__ for k in kinds)}")
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *schedules)


def seed_keys(seeds: Sequence[int], impl: str | None = None) -> Array:
    """Typed PRNG keys for integer seeds (``impl``: ``threefry2x32``, ``rbg``, ``unsafe_rbg``)."""
    return jnp.stack([jax.random.key(int(s), impl=impl) for s in seeds])


Array = jax.Array


def _take(tree, idx: np.ndarray):
    return jax.tree.map(lambda x: x[idx], tree)


def _sharded_runner(method, divergence_factor, dt, devices, engine="step"):
    """``(schedules, prob, keys, steps) -> (risk, diverged, diverged_step)``, sharded over
    ``devices`` on the configuration axis.

    The problem, keys and steps are arguments, not closed-over constants: XLA would otherwise
    specialise the program on their values (dividing by a constant ``Tr K`` becomes a
    multiplication by its reciprocal, say) in ways that depend on the batch shape, and a run's
    last bits would change with the size of the sweep.
    """

    def body(schedules, prob, keys, steps):
        return sim.run_batch(prob, schedules, keys, steps, method, divergence_factor, dt, engine)

    if len(devices) == 1:
        return jax.jit(body)
    mesh = jax.sharding.Mesh(np.asarray(devices), ("runs",))
    spec = P(None, "runs")
    # The runs' initial states do not depend on the (sharded) configuration, so the loop carry
    # starts replicated and becomes varying; check_vma=False lets shard_map accept that.
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("runs"), P(), P(), P()),
                                 out_specs=(spec, spec, spec), check_vma=False))


def _fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_sweep(
    problem: Problem,
    schedules: Any,
    seeds: Sequence[int],
    T: float,
    points: int = 101,
    *,
    method: str = "sgd",
    precision: str = "32",
    chunk_size: int | None = None,
    out: str | Path | None = None,
    config: dict | None = None,
    divergence_factor: float = 1e6,
    dt: float | None = None,
    prng_impl: str | None = None,
    devices: Sequence | None = None,
    progress: bool = True,
    engine: str = "step",
) -> SweepResult:
    """Run every configuration in ``schedules`` (leading axis ``C``) for every seed.

    Args:
        problem: the problem (spectrum, start, noise).
        schedules: a batched schedule, see :func:`stack_schedules`.
        seeds: integer seeds; runs with the same seed share their samples.
        T, points: horizon (ODE time) and number of evenly spaced output times.
        method: ``"sgd"`` (C-SGD / SGD) or ``"hsgd"`` (C-HSGD).
        precision: ``"32"`` (default) or ``"64"``.
        chunk_size: configurations per chunk (default: all, rounded up to the device count).
        out: results path (``.npz``; JSON sidecar beside it). With ``out``, finished chunks are
            kept in ``OUT.partial/`` and reused by a rerun of the same sweep.
        config: extra configuration recorded in the results (CLI arguments, say).
        divergence_factor: runs diverge once ``R > divergence_factor * R0``.
        dt: C-HSGD time step (default ``1 / Tr K``).
        prng_impl: JAX PRNG implementation (default: JAX's default, recorded in the results).
        devices: devices to shard over (default: all local devices).
        progress: show a progress bar over chunks.
        engine: ``"step"`` (default; a run's numbers are bit-identical alone and in any sweep) or
            ``"block"`` (C-SGD by blocks of matrix products: several times faster for wide
            sweeps, equal to ``"step"`` up to rounding; see :func:`clipdyn.simulate.run_batch`).

    Returns:
        :class:`SweepResult`.

    Raises:
        ValueError: for bad arguments.
    """
    if method not in sim.METHODS:
        raise ValueError(f"method {method!r} is not allowed; use one of {', '.join(sim.METHODS)}")
    if str(precision) not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not allowed; use 32 or 64")
    if not (math.isfinite(T) and T > 0):
        raise ValueError(f"T={T} is not allowed; T must be finite and > 0")
    if int(points) != points or points < 2:
        raise ValueError(f"points={points} is not allowed; points must be an integer >= 2")
    seeds = np.asarray(list(seeds), dtype=np.int64)
    if seeds.size == 0:
        raise ValueError("at least one seed is needed")
    dtype = PRECISIONS[str(precision)]
    devices = list(devices) if devices is not None else jax.local_devices()
    n_dev = len(devices)
    n_cfg = int(jax.tree.leaves(schedules)[0].shape[0])
    chunk = n_cfg if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size={chunk_size} is not allowed; it must be >= 1")
    chunk = n_dev * math.ceil(chunk / n_dev)
    n_chunks = math.ceil(n_cfg / chunk)

    prob = sim.prepare(problem, dtype)
    trace = float(np.sum(np.asarray(problem.lam, np.float64)))
    steps = sim.output_steps(T, int(points), trace, dt)
    dt_used = 1.0 / trace if dt is None else float(dt)
    t = steps * dt_used
    keys = seed_keys(seeds, prng_impl)
    schedules = cast_floats(schedules, dtype)
    sim.check_engine(engine, method)
    run = _sharded_runner(method, divergence_factor, dt, devices, engine)
    steps_arr = jnp.asarray(steps)

    full_config = {
        "method": method, "precision": str(precision), "T": float(T), "points": int(points),
        "seeds": seeds.tolist(), "n_configs": n_cfg, "chunk_size": chunk,
        "divergence_factor": float(divergence_factor), "dt": dt_used,
        "prng_impl": prng_impl or str(jax.config.jax_default_prng_impl),
        "d": int(problem.lam.shape[0]), "trace": trace, "R0": float(problem.R0),
        "schedule_kind": type(schedules).__name__, "engine": engine,
        **(config or {}),
    }
    partial = None
    if out is not None:
        out = Path(out).with_suffix(".npz")
        partial = out.parent / (out.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        fp = _fingerprint(full_config) + "-" + _fingerprint(
            jax.tree.map(lambda x: np.asarray(x).tolist(), schedules))
        stamp = partial / "fingerprint"
        if stamp.exists() and stamp.read_text() != fp:
            raise ValueError(
                f"{partial} holds chunks of a different sweep; remove it or choose another --out"
            )
        atomic_write_bytes(stamp, fp.encode())

    risk = np.empty((seeds.size, n_cfg, len(steps)), np.float64)
    diverged = np.zeros((seeds.size, n_cfg), bool)
    div_step = np.full((seeds.size, n_cfg), -1, np.int64)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_chunks, desc="sweep chunks", unit="chunk", leave=False)
    for j in range(n_chunks):
        lo, hi = j * chunk, min((j + 1) * chunk, n_cfg)
        path = partial / f"chunk_{j:06d}.npz" if partial is not None else None
        if path is not None and path.exists():
            with np.load(path) as z:
                r, dv, ds = z["risk"], z["diverged"], z["diverged_step"]
        else:
            idx = np.minimum(np.arange(lo, lo + chunk), n_cfg - 1)  # pad with the last config
            r, dv, ds = (np.asarray(a) for a in run(_take(schedules, idx), prob, keys, steps_arr))
            r, dv, ds = r[:, : hi - lo], dv[:, : hi - lo], ds[:, : hi - lo]
            if path is not None:
                atomic_savez(path, risk=r, diverged=dv, diverged_step=ds)
        risk[:, lo:hi], diverged[:, lo:hi], div_step[:, lo:hi] = r, dv, ds
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    diverged_at = np.where(diverged, div_step * dt_used, np.nan)
    result = SweepResult(t, risk, diverged, diverged_at, seeds, full_config)
    if out is not None:
        arrays = result.arrays()
        arrays.update({f"schedule_{k}": np.asarray(v) for k, v in _schedule_arrays(schedules).items()})
        save_results(out, arrays, full_config, precision=f"float{precision}")
        shutil.rmtree(partial, ignore_errors=True)
    return result


def _schedule_arrays(schedules) -> dict[str, np.ndarray]:
    """The batched schedule's per-configuration parameters (scalars per config only)."""
    out = {}
    for name in getattr(schedules, "__dataclass_fields__", {}):
        value = getattr(schedules, name)
        if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 1:
            out[name] = np.asarray(value)
    return out


def simulate_runs(problem: Problem, schedule, seeds: Sequence[int], T: float, points: int = 101,
                  **kwargs) -> SweepResult:
    """Run one schedule for several seeds (a sweep with one configuration).

    Returns:
        :class:`SweepResult` with ``C = 1``.
    """
    return run_sweep(problem, stack_schedules([schedule]), seeds, T, points, progress=False, **kwargs)
