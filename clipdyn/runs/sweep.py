"""Sweeps: many simulation runs as one vmapped, sharded, chunked and resumable program.

A sweep is ``S`` seeds x ``C`` configurations (schedules with batched parameters, for example
every threshold x every learning rate). Runs that share a seed share their data stream (common
random numbers), so threshold comparisons are not drowned in seed noise.

* The configuration axis is split into fixed-size chunks (one compilation for all of them; the
  last chunk is padded) and each chunk is sharded over all devices with ``jax.shard_map``: in a
  multi-process run (:mod:`clipdyn.runs.distributed`) the devices of every process, with process 0
  alone writing checkpoints and results.
* Each finished chunk is written atomically to ``OUT.npz.partial/``; a rerun of the same sweep
  loads the finished chunks instead of recomputing them, so an interruption (Ctrl-C raises
  :class:`SweepInterrupted`, a ``KeyboardInterrupt`` saying what was kept) loses at most the chunk
  in flight. "The same sweep" is decided by content: the sha256 of the spectrum, start, noise
  law, dataset, schedules and rules, with the configuration, is stamped on the folder and recorded
  in the results (``config["fingerprints"]``). Chunks of another sweep, and finished results of
  another sweep, are never mixed in or replaced without ``overwrite``; a chunk file that cannot be
  read is recomputed. The merged result is written with :func:`clipdyn.runs.results.save_results`.
* Sizes are checked before anything runs: the horizon against the engines' int32 step counters
  (:data:`MAX_STEPS`), the output times against the step, and the memory the sweep needs
  (:func:`memory_estimate`) against what the machine has available.
* A run's numbers depend only on its seed and configuration: alone or in a sweep, sharded or
  not, they are the same (tested).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from clipdyn import sim
from clipdyn import validation
from clipdyn.precision import uses_x64
from clipdyn.pytrees import cast_floats, content_hash, stack, to_device  # content_hash re-exported
from clipdyn.runs import distributed
from clipdyn.runs.results import (ChunkStore, check_overwrite, code_version, results_paths,
                                  save_results)
from clipdyn.sim.runner import block_size, choose_engine, engine_block
from clipdyn.theory import rules as clip_rules
from clipdyn.theory.problem import Problem, check_problem

__all__ = ["SweepResult", "SweepInterrupted", "stack_schedules", "run_sweep", "simulate_runs",
           "seed_keys", "checked_output_steps", "memory_estimate", "content_hash", "MAX_STEPS"]

PRECISIONS = {"32": jnp.float32, "64": jnp.float64}

MAX_STEPS = 2_000_000_000
"""The most steps a run may take. The engines count steps in int32 (``RunState.k``, at most
``2^31 - 1 = 2.147e9``) and advance them in blocks of up to 64, so a horizon ``T`` whose
``T x Tr K`` steps exceed this bound is refused rather than left to wrap around."""

LONG_RUN_SECONDS = 10.0
"""A run estimated to take longer gets an up-front estimate line and a progress bar (with
``progress``), even when stderr is not a terminal."""

CALIBRATION_MIN_WORK = 1e8
"""Runs of fewer mode-steps per seed and chunk (steps x configurations x padded ``d``) are not
timed for an estimate: they take well under a second."""


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep: still a ``KeyboardInterrupt``, saying what was kept.

    Attributes:
        kept: finished chunks (saved in ``partial`` when the sweep has an ``out``).
        total: the sweep's chunks.
        partial: the folder holding them, or ``None`` without ``out``.
    """

    def __init__(self, kept: int, total: int, partial: Path | None):
        self.kept, self.total, self.partial = kept, total, partial
        if partial is not None:
            text = (f"{kept} of {total} chunk(s) are kept in {partial}/; rerun the same command "
                    "to resume")
        else:
            text = "nothing is saved without an output file"
        super().__init__(text)


@dataclass
class SweepResult:
    """Output of a sweep.

    Attributes:
        t: output times ``(P,)``.
        risk: ``(S, C, P)`` risks; ``nan`` at and after a run's divergence.
        diverged: ``(S, C)`` flags.
        diverged_at: ``(S, C)`` ODE time of divergence (``nan`` if none).
        seeds: ``(S,)`` seeds.
        config: the sweep's configuration: its values (``T``, seeds, method, precision, engine,
            rules, ...), the noise law as written (``noise_law``, where short), and the
            spectrum, start, noise law, data, schedules and rules by content
            (``config["fingerprints"]``, sha256). The command line adds its options as typed;
            from Python, pass what rebuilds your problem (a spectrum's parameters, say) as
            ``config=``.
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


@uses_x64
def stack_schedules(schedules: Sequence) -> Any:
    """One batched schedule (leading axis ``C``) from ``C`` schedules of the same kind."""
    for i, s in enumerate(schedules):
        validation.schedule(s, f"schedules[{i}]")
    kinds = {type(s) for s in schedules}
    if len(kinds) != 1:
        raise ValueError(f"a sweep's schedules must be of one kind; got {sorted(k.__name__ for k in kinds)}")
    return stack(schedules)


@uses_x64
def seed_keys(seeds: Sequence[int], impl: str | None = None) -> Array:
    """Typed PRNG keys for integer seeds (``impl``: ``threefry2x32``, ``rbg``, ``unsafe_rbg``).

    One vmapped call: the same keys as ``jax.random.key(int(s))`` seed by seed (int64 under x64,
    so seeds up to ``2^32 - 1`` map alike), but stacking thousands of typed keys one by one took
    seconds (14 s for 3000).
    """
    seeds = jnp.asarray(np.asarray(seeds, np.int64).reshape(-1))
    return jax.vmap(lambda s: jax.random.key(s, impl=impl))(seeds)


Array = jax.Array


def _take(tree, idx: np.ndarray):
    """The configurations ``idx`` of a batched pytree, taken on the host (one transfer per leaf,
    no gather program to compile)."""
    return jax.tree.map(lambda x: to_device(np.asarray(x)[idx]), tree)


def _sharded_runner(method, divergence_factor, dt, devices, engine="step"):
    """``(schedules, rules, prob, keys, steps) -> (risk, diverged, diverged_step)``, sharded over
    ``devices`` on the configuration axis.

    One jitted function per ``(method, divergence_factor, dt, devices, engine)``, kept for the
    process: sweeps of the same shapes (a bisection, a rerun, a resumed sweep) reuse its
    compilation instead of compiling the same program again.

    The problem, keys and steps are arguments, not closed-over constants: XLA would otherwise
    specialise the program on their values (dividing by a constant ``Tr K`` becomes a
    multiplication by its reciprocal, say) in ways that depend on the batch shape, and a run's
    last bits would change with the size of the sweep.
    """
    return _cached_runner(method, float(divergence_factor), None if dt is None else float(dt),
                          tuple(devices), engine)


@functools.lru_cache(maxsize=32)
def _cached_runner(method, divergence_factor, dt, devices, engine):
    def body(schedules, rules, prob, keys, steps):
        return sim.run_batch(prob, schedules, rules, keys, steps, method, divergence_factor, dt, engine)

    if len(devices) == 1:
        return jax.jit(body)
    mesh = jax.sharding.Mesh(np.asarray(devices), ("runs",))
    spec = P(None, "runs")
    # The runs' initial states do not depend on the (sharded) configuration, so the loop carry
    # starts replicated and becomes varying; check_vma=False lets shard_map accept that.
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("runs"), P("runs"), P(), P(), P()),
                                 out_specs=(spec, spec, spec), check_vma=False))


def _law_text(law) -> str:
    """The noise law as written (``StudentT(df=3.0, scale=1.0, n_nodes=160)``); a law holding
    arrays (an empirical law's atoms) by its kind, its content being in the fingerprints."""
    text = repr(law)
    return text if len(text) <= 200 else f"{type(law).__name__} (see fingerprints: noise law)"


def _fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sha256(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a, np.float64)).tobytes()).hexdigest()


def _round_digits(x: float, up: bool, digits: int = 6) -> float:
    """``x`` rounded up (or down) at ``digits`` significant digits: a bound the user can type back."""
    if not (x > 0 and math.isfinite(x)):
        return x
    unit = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return (math.ceil(x / unit * (1 - 1e-12)) if up else math.floor(x / unit * (1 + 1e-12))) * unit


def checked_output_steps(T: float, points: int, trace: float, dt: float | None = None,
                         names: tuple[str, str] = ("T", "points")) -> np.ndarray:
    """The output steps of a run (:func:`clipdyn.sim.output_steps`), refusing horizons the engines
    cannot count or resolve.

    Args:
        T, points: horizon and number of output times.
        trace: ``Tr K``; one step is ``dt = 1 / Tr K`` of ODE time unless ``dt`` is given.
        dt: C-HSGD's time step, or ``None`` for one SGD step.
        names: how messages name ``T`` and ``points`` (``("--T", "--points")`` on the command line).

    Raises:
        ValueError: when ``T / dt`` exceeds :data:`MAX_STEPS` (the number of steps it would need
            is named), or when output times fall closer than one step, so that recorded steps
            would repeat (``T < (points - 1) dt``; the least ``T`` is named).
    """
    tname, pname = names
    step = 1.0 / trace if dt is None else float(dt)
    need = float(T) / step
    if not need <= MAX_STEPS:
        raise ValueError(
            f"{tname}={T:g} is not allowed: it needs {need:.4g} steps ({tname} / dt with one step "
            f"dt = {'1 / Tr K = ' if dt is None else ''}{step:.6g}), and the engines count at most {MAX_STEPS:,} steps "
            f"(int32 step counters); {tname} must be at most {_round_digits(MAX_STEPS * step, False):.6g}"
        )
    steps = sim.output_steps(float(T), int(points), trace, dt)
    if np.any(np.diff(steps) <= 0):
        least = _round_digits((int(points) - 1) * step, True)
        raise ValueError(
            f"{tname}={T:g} with {pname}={points} is not allowed: the output times would fall closer "
            f"than one step (dt = {step:.6g}) and repeat; {tname} must be at least "
            f"({pname} - 1) x dt = {least:.6g}, or use fewer {pname}"
        )
    return steps


def memory_estimate(d: int, n_seeds: int, n_configs: int, points: int, chunk: int, itemsize: int,
                    n_rows: int = 1, engine: str = "step", data_rows: int = 0) -> dict[str, float]:
    """Bytes a sweep needs, by part (an estimate, rounded up).

    * ``results``: the ``(S, C, P)`` float64 risks held on the host, their copy in the saved
      ``.npz`` buffer and the chunks being merged (3 copies), plus flags and seeds;
    * ``engine``: one seed's chunk at a time (seeds run one after another): the ``chunk x d_pad``
      states with their updates and the loop's double buffer (4 copies), the block of drawn
      samples (``block x rows x d_pad``, 3 copies), and for the block engine its Gram matrices;
    * ``problem``: the padded spectrum, start and masks, and a dataset's rows, on the device,
      and the float64 spectrum and start the problem keeps on the host (left out before, the
      estimate was 25 % low at ``d = 2e7``: 0.82 GB against 1.09 GB measured above the
      interpreter's own; with them 1.12 GB).
    """
    d_pad = d + (-d) % sim.PAD
    block = block_size(d_pad, n_rows)
    parts = {
        "results": 3.0 * n_seeds * n_configs * points * 8 + n_seeds * n_configs * 24.0 + n_seeds * 100.0,
        "engine": (4.0 * chunk * d_pad + 3.0 * block * n_rows * d_pad + 2.0 * chunk * points) * itemsize,
        "problem": (4.0 + data_rows) * d_pad * itemsize + 2.0 * 8.0 * d,
    }
    if engine == "block":
        m = engine_block(np.array([0, 2**30]), d_pad, n_rows) * n_rows
        parts["engine"] += (2.0 * m * m + 3.0 * chunk * m + m * d_pad) * itemsize
    return parts


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.3g} days"


def _seconds_per_step(call, steps, work: float, granule: int = 1) -> float | None:
    """Seconds per step of one seed of a compiled chunk program, timed on a few steps.

    The output steps are an argument of the program, so timing it on ``0 .. n`` steps reuses the
    compilation and leaves the real run untouched. The calibration outputs only at its last step:
    101 outputs inside a few steps would cut the block engine's blocks short and overstate a
    step's cost many times. For the same reason ``n`` is a whole number of ``granule`` steps (the
    block engine's block): 8 steps inside a block of 224 cost the whole block, and a sweep of
    6 s was once announced as 26 min. ``n`` at least doubles until a timing takes about 0.05 s
    (at most a quarter of the run), and the estimate is the difference of the last two timings,
    which drops the per-call overhead. A hiccup of the machine in an earlier timing is skipped
    (that timing is slower than the next); one in the last timing is bounded by the earlier
    timing's own rate. ``None`` for runs too small to be worth it.
    """
    if work < CALIBRATION_MIN_WORK:
        return None
    steps = np.asarray(steps)  # the output steps, on the host
    total = int(steps[-1])
    g = max(1, int(granule))
    cal = np.zeros_like(steps)

    def timed(n):
        cal[-1] = n
        t0 = time.perf_counter()
        jax.block_until_ready(call(to_device(cal)))
        return time.perf_counter() - t0

    n = -(-8 // g) * g
    limit = max(n, (total // 4) // g * g)
    timed(n)  # compilation, and a first run: the first call after compiling is several times slower
    prev = None
    while True:
        elapsed = timed(n)
        if prev is not None and elapsed > prev[1] and (elapsed >= 0.05 or n >= limit):
            # A hiccup in the last timing shows as a rate above the earlier timing's own
            # (overhead included): that one is then the better estimate.
            return min((elapsed - prev[1]) / (n - prev[0]), prev[1] / prev[0])
        if n >= limit:
            return elapsed / n
        prev = (n, elapsed)
        grow = min(64.0, max(2.0, 0.075 / max(elapsed, 1e-6)))
        n = min(limit, -(-int(n * grow) // g) * g)


@uses_x64
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
    engine: str = "auto",
    rules: Any = None,
    data: Any = None,
    overwrite: bool = False,
) -> SweepResult:
    """Run every configuration in ``schedules`` (leading axis ``C``) for every seed.

    Args:
        problem: the problem (spectrum, start, noise).
        schedules: a batched schedule, see :func:`stack_schedules`.
        seeds: integer seeds; runs with the same seed share their samples.
        T, points: horizon (ODE time) and number of evenly spaced output times.
        method: ``"sgd"`` (C-SGD / SGD) or ``"hsgd"`` (C-HSGD).
        precision: ``"32"`` (default) or ``"64"``.
        chunk_size: configurations per chunk (default and at most: all of them; rounded up to
            the device count).
        out: results path: ``OUT`` if it ends in ``.npz``, else ``OUT.npz``; the JSON sidecar
            replaces ``.npz`` by ``.json`` (:func:`clipdyn.runs.results.results_paths`). With ``out``,
            finished chunks are kept in ``OUT.npz.partial/`` and reused by a rerun of the same
            sweep (same configuration, same contents of spectrum, noise law, data, schedules and
            rules, same chunk size); a chunk file that cannot be read is recomputed with a
            :class:`clipdyn.runs.results.ChunkWarning`.
        config: extra entries recorded in the results (the command line's options, labels for
            the configurations): descriptions, so they are not part of the sweep's identity,
            which is what it computes (its own entries and content fingerprints: ``eta 1`` and
            ``eta 1.0`` are one sweep). They may not reuse the names of the sweep's own entries.
        divergence_factor: runs diverge once ``R > divergence_factor * R0``.
        dt: C-HSGD time step (default ``1 / Tr K``); refused for C-SGD, whose step is ``1 / Tr K``.
        prng_impl: JAX PRNG implementation (default: JAX's default, recorded in the results).
        devices: devices to shard over (default: all devices, every process's in a multi-process
            run; such a run equals one process with the same number of devices, see
            :mod:`clipdyn.runs.distributed`).
        progress: report progress on stderr: a bar over seeds x chunks when stderr is a
            terminal or the sweep is long, and for a long sweep an up-front line with its size
            and estimated time (timed on a few steps; numbers are the same with and without).
        engine: ``"auto"`` (default), ``"step"`` or ``"block"``. ``"step"``: a run's numbers are
            bit-identical alone and in any sweep, chunking or sharding; ``"block"``: C-SGD by
            blocks of matrix products, many times faster for wide sweeps and for batch rules,
            equal to ``"step"`` up to rounding, and the same numbers for the same sweep layout
            (configurations per device, output steps); ``"auto"`` picks one
            (:func:`clipdyn.sim.runner.choose_engine`). The results' config records ``"engine"`` (the
            one that ran) and ``"engine_requested"``.
        rules: the clipping rule of every configuration: one :class:`clipdyn.theory.rules.ClipRule`
            for all, or a sequence of ``C`` rules (default: one sample, per-sample clipping).
            Rules with different batch sizes or kinds run as separate programs (their samples
            still agree on the rows they share: common random numbers across ``B``).
        data: a dataset in eigen-coordinates (:class:`clipdyn.data.DataProblem`) whose rows
            the simulation draws instead of Gaussian samples; ``problem`` must be its problem.
            Its ``fingerprint`` (a hash of its contents) identifies it for resuming.
        overwrite: replace finished results of a different sweep at ``out`` and discard finished
            chunks of a different sweep in its ``.partial/`` folder (without it, both are
            refused). Results of the same sweep are always recomputed and replaced.

    Returns:
        :class:`SweepResult`.

    Raises:
        ValueError: for bad arguments; for a horizon beyond :data:`MAX_STEPS` steps or with
            output times closer than one step (:func:`checked_output_steps`); for a sweep that
            needs more memory than this machine has available (:func:`memory_estimate`); for an
            ``out`` that would overwrite another sweep's results or chunks without ``overwrite``.
        SweepInterrupted: on Ctrl-C (a ``KeyboardInterrupt``), once the finished chunks are saved.
    """
    check_problem(problem)
    validation.schedule(schedules, "schedules")
    validation.data_problem(data)
    if method not in sim.METHODS:
        raise ValueError(f"method {method!r} is not allowed; use one of {', '.join(sim.METHODS)}")
    if str(precision) not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not allowed; use 32 or 64")
    validation.single("T", T, what="one horizon")
    validation.positive("T", T, bounded=False)
    points = validation.integer("points", points, 2, high=validation.MAX_POINTS)
    progress = validation.flag("progress", progress)
    overwrite = validation.flag("overwrite", overwrite)
    chunk_size = validation.optional_integer("chunk_size", chunk_size, 1)
    validation.divergence_factor(divergence_factor)
    if dt is not None:
        validation.single("dt", dt, what="one time step")
        validation.positive("dt", dt, bounded=False)
        if method != "hsgd":  # one SGD step is 1 / Tr K of ODE time; another dt relabelled the times
            raise ValueError(f"dt={dt} is not allowed with method {method!r}: a step of SGD is "
                             "dt = 1 / Tr K of ODE time by definition; dt is C-HSGD's time step")
    # jnp.array(0.5) has __len__ too; np.ndim would build range(10**9) as an array
    if not hasattr(seeds, "__len__") or getattr(seeds, "ndim", 1) != 1:
        seeds = validation.seeds(seeds)
    n_seeds = len(seeds)
    dtype = PRECISIONS[str(precision)]
    # Every process's devices: in a multi-process run (clipdyn.runs.distributed) the mesh is global.
    if devices is None:
        devices = distributed.global_devices()
    else:
        given = devices
        iterable = hasattr(given, "__iter__") and not isinstance(given, (str, bytes))
        devices = list(given) if iterable else []
        if not devices or not all(isinstance(x, jax.Device) for x in devices):
            raise ValueError(f"devices must be None (every device) or a non-empty list of JAX "
                             f"devices (jax.devices()); {validation.got(given)}")
    n_dev = len(devices)
    n_cfg = validation.schedule_batch(
        schedules, "run_sweep", "pass stack_schedules([schedule]), or use simulate_runs for one schedule")
    rule_list = _rule_list(rules, n_cfg)
    # A chunk holds configurations of one rule group (_chunk_plan); one wider than the largest
    # group would only be padding (chunk_size=1e9 padded to 1e9 runs; 4 rules of 4 thresholds
    # each ran 4 programs of 16 runs, 4 of them real, and chose its engine for 16).
    widest = max(g.size for g in _chunk_plan(rule_list, n_cfg))
    chunk = min(widest if chunk_size is None else chunk_size, widest)
    chunk = n_dev * math.ceil(chunk / n_dev)

    trace = float(np.sum(np.asarray(problem.lam, np.float64)))
    steps = checked_output_steps(T, points, trace, dt)
    requested = engine
    engine = choose_engine(engine, method, chunk // n_dev)
    need = memory_estimate(int(problem.lam.shape[0]), n_seeds, n_cfg, points, chunk,
                           jnp.dtype(dtype).itemsize, max(r.n_rows for r in rule_list), engine,
                           0 if data is None else int(np.shape(data.features)[0]))
    big = max(need, key=need.get)
    validation.check_memory(
        sum(need.values()),
        f"the runs ({n_seeds} seed(s) x {n_cfg} configuration(s) x {points} output times, "
        f"d = {int(problem.lam.shape[0])}, chunks of {chunk}; {big} {validation.bytes_text(need[big])})")
    seeds = validation.seeds(seeds)
    prob = sim.prepare(problem, dtype, data)
    dt_used = 1.0 / trace if dt is None else float(dt)
    t = steps * dt_used
    keys = seed_keys(seeds, prng_impl)
    schedules = cast_floats(schedules, dtype)
    sim.check_engine(engine, method)
    d_pad = int(prob.lam.shape[0])
    block_steps = (engine_block(steps, d_pad, max(r.n_rows for r in rule_list))
                   if engine == "block" else None)
    if data is not None and method != "sgd":
        raise ValueError("method 'hsgd' (--method hsgd) runs on Gaussian data only; a dataset "
                         "(data=, --data) runs with method 'sgd'")
    full_config = {
        "method": method, "precision": str(precision), "T": float(T), "points": int(points),
        "seeds": seeds.tolist(), "n_configs": n_cfg, "chunk_size": chunk,
        "divergence_factor": float(divergence_factor), "dt": dt_used,
        "prng_impl": prng_impl or str(jax.config.jax_default_prng_impl),
        # JAX's flag changes which bits a key's splits and draws give (one seed gave R = 0.9217
        # with it, 0.8885 without): a sweep resumed under the other would mix two streams.
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "d": int(problem.lam.shape[0]), "trace": trace, "R0": float(problem.R0),
        "noise_law": _law_text(problem.noise),
        "schedule_kind": type(schedules).__name__, "engine": engine,
        "engine_requested": requested, "engine_block_steps": block_steps,
        "rules": [r.describe() for r in rule_list],
        "batch": [int(r.batch) for r in rule_list],
        "samples": [int(steps[-1]) * int(r.batch) for r in rule_list],
        "dp_noise": [_param(r.dp_noise) if r.use_dp else None for r in rule_list],
        "preclip_noise": [_param(r.preclip_noise) if r.use_preclip else None for r in rule_list],
        "data": None if data is None else getattr(data, "describe", lambda: "dataset")(),
        "data_fingerprint": None if data is None else getattr(data, "fingerprint", None),
    }
    extra = dict(config or {})
    clash = sorted(set(extra) & (set(full_config) | {"fingerprints"}))
    if clash:
        raise ValueError(f"config entries {clash} are not allowed: the sweep records entries of these "
                         "names itself; give yours other names")
    # What the sweep computes, by content: a changed file is a different sweep.
    parts = {
        "spectrum": _sha256(problem.lam), "start": _sha256(problem.v0),
        "noise law": content_hash(problem.noise),
        "data": None if data is None else str(getattr(data, "fingerprint", None) or content_hash(
            (data.features, data.residuals, data.e0))),
        "schedules": content_hash(schedules), "clipping rules": content_hash(rule_list),
    }
    full_config["fingerprints"] = dict(parts)
    # The chunk size decides which configurations a chunk file holds, not the numbers: it is left
    # out of the results' identity and kept in the chunks' layout.
    identity = {k: v for k, v in full_config.items() if k not in ("chunk_size", "engine_requested")}
    full_config["fingerprints"]["sweep"] = _fingerprint(identity)
    full_config.update(extra)
    # Every process must compute the same sweep in the same chunks, or the writer would save
    # one process's labels over another's numbers (checked before the first collective).
    code = code_version()
    distributed.check_agreement({**identity, "chunk_size": chunk, "extra": extra, "code": code})
    run = _sharded_runner(method, divergence_factor, dt, devices,
                          engine if block_steps is None else f"block:{block_steps}")
    steps_arr = to_device(steps)
    plan = _chunk_plan(rule_list, chunk)
    n_chunks = len(plan)
    store = None
    if out is not None:
        out, _ = results_paths(validation.output_path(out, "out"))
        # The block engine's last bits depend on the per-device batch (README: the same numbers
        # for the same layout): chunks of another device count are not resumed into its results
        # (a 2 x 2 sweep resumed on 1 device mixed both layouts, 3e-7 apart, under one sidecar).
        layout = {"chunk_size": chunk, **({"devices": n_dev} if engine == "block" else {})}
        stamp = {"sweep": full_config["fingerprints"]["sweep"], "layout": layout,
                 "code": code,
                 "config": {k: v for k, v in full_config.items() if k not in ("fingerprints", "chunk_size")},
                 "parts": parts}
        store = ChunkStore(Path(f"{out}.partial"), stamp)
        # On the writer process only (clipdyn.runs.distributed); a refusal reaches every process. The
        # caller's entries are not the identity, but they name best what differs (the options).
        def check_out():
            check_overwrite(out, full_config["fingerprints"]["sweep"], overwrite, {**extra, **identity})

        distributed.on_writer(check_out)
        distributed.on_writer(store.open, overwrite)

    n_points = len(steps)
    risk = np.empty((n_seeds, n_cfg, n_points), np.float64)
    diverged = np.zeros((n_seeds, n_cfg), bool)
    div_step = np.full((n_seeds, n_cfg), -1, np.int64)
    show = bool(progress) and distributed.is_writer()  # until the bar is set up
    bar = None
    done = 0  # finished chunks
    units = n_chunks * n_seeds  # progress counts one seed of one chunk at a time
    try:
        for j, members in enumerate(plan):
            expect = {"risk": ((n_seeds, members.size, n_points), jnp.dtype(dtype).name),
                      "diverged": ((n_seeds, members.size), "b"),
                      "diverged_step": ((n_seeds, members.size), "i")}
            # The writer's checkpoint, on every process: all processes skip the same chunks.
            z = None if store is None else store.load(j, expect, read=_writer_bytes)
            if z is not None:
                r, dv, ds = z["risk"], z["diverged"], z["diverged_step"]
                if bar is not None:
                    bar.update(n_seeds)
            else:
                idx = np.concatenate([members, np.full(chunk - members.size, members[-1])])  # pad
                chunk_scheds = _take(schedules, idx)
                chunk_rules = cast_floats(clip_rules.stack_rules([rule_list[i] for i in idx]), dtype)

                def call(steps_in, i=0):
                    return run(chunk_scheds, chunk_rules, prob, keys[i:i + 1], steps_in)

                if show:
                    show = False
                    bar = _start_progress(call, steps, units, j * n_seeds, n_seeds, chunk,
                                          int(problem.lam.shape[0]), block_steps or 1)
                # Seeds one at a time (as inside the program, so the numbers are the same): the
                # bar moves, and Ctrl-C is answered, after every seed.
                outs = []
                for i in range(n_seeds):
                    outs.append(distributed.to_host(call(steps_arr, i)))
                    if bar is not None:
                        bar.update(1)
                r, dv, ds = (np.concatenate([o[k] for o in outs])[:, : members.size] for k in range(3))
                if store is not None:
                    distributed.on_writer(store.save, j,
                                          {"risk": r, "diverged": dv, "diverged_step": ds})
            risk[:, members], diverged[:, members], div_step[:, members] = r, dv, ds
            done += 1
    except KeyboardInterrupt:
        raise SweepInterrupted(done, n_chunks, None if store is None else store.folder) from None
    except jax.errors.JaxRuntimeError as err:
        if jax.process_count() == 1:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        kept = "" if store is None else f" from the finished chunks in {store.folder}"
        raise RuntimeError(f"{first} (a process of the sweep stopped; {done} of {n_chunks} chunk(s) "
                           f"finished). Rerun the same command on every process to resume{kept}") from err
    finally:
        if bar is not None:
            bar.close()
    diverged_at = np.where(diverged, div_step * dt_used, np.nan)
    result = SweepResult(t, risk, diverged, diverged_at, seeds, full_config)
    if out is not None:
        arrays = result.arrays()
        arrays.update({f"schedule_{k}": np.asarray(v) for k, v in _schedule_arrays(schedules).items()})

        def save():  # on the writer process only; the others return once it is saved
            # Again: another sweep may have finished on this --out while this one ran (its chunk
            # folder then reads as emptied, which ChunkStore.save lets this sweep go on from).
            check_out()
            save_results(out, arrays, full_config, precision=f"float{precision}",
                         prng_impl=full_config["prng_impl"])
            store.remove()

        distributed.on_writer(save)
    return result


def _writer_bytes(path: Path) -> bytes | None:
    """The writer's file ``path`` on every process (``None`` if it has none)."""
    data = b""
    if distributed.is_writer() and path.exists():
        try:
            data = b"+" + path.read_bytes()  # "+": the file exists (it may be empty)
        except OSError:
            data = b"+"
    data = distributed.broadcast_bytes(data)
    return data[1:] if data else None


def _start_progress(call, steps, units: int, done: int, n_seeds: int, chunk: int, d: int,
                    granule: int):
    """The progress bar of a sweep (``None`` when it is neither long nor on a terminal), after an
    up-front line with the sweep's size and estimated time when it is long.

    The block engine computes every output interval in whole blocks of ``granule`` steps (the
    steps past the interval's end masked), so the estimate counts those: 7 % more than the
    steps for intervals of 716 steps in blocks of 192, say."""
    steps = np.asarray(steps)  # the output steps, on the host
    total = int(steps[-1])
    computed = int(np.sum(-(-np.diff(steps) // granule))) * granule
    work = float(total) * chunk * (d + (-d) % sim.PAD)
    per_step = (_seconds_per_step(call, steps, work, granule) if jax.process_count() == 1
                else None)
    left = units - done
    long_run = per_step is not None and per_step * computed * left > LONG_RUN_SECONDS
    if long_run:
        print(f"clipdyn: about {total:,} steps x {left} seed-chunk(s) ({n_seeds} seed(s), chunks of "
              f"{chunk} configuration(s), d = {d}); estimated {_duration(per_step * computed * left)} "
              "(Ctrl-C stops; with an output file, rerunning resumes from the finished chunks)",
              file=sys.stderr, flush=True)
    if not (long_run or sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=units, initial=done, desc="runs", unit="seed-chunk", leave=False,
                file=sys.stderr)


def _param(x):
    return np.asarray(x, float).tolist()


def _rule_list(rules, n_cfg: int) -> list:
    if rules is None:
        return [clip_rules.default_rule()] * n_cfg
    if isinstance(rules, clip_rules.ClipRule):
        return [rules] * n_cfg
    what = (f"rules must be None, one clipdyn clipping rule (clipdyn.theory.rules.per_sample, batch_mean, "
            f"micro_batch, index_thresholds) or a sequence of {n_cfg} (one per configuration)")
    if isinstance(rules, (str, bytes)) or not hasattr(rules, "__iter__"):
        raise ValueError(f"{what}; {validation.got(rules)}")
    rule_list = list(rules)
    if len(rule_list) != n_cfg or not all(isinstance(r, clip_rules.ClipRule) for r in rule_list):
        raise ValueError(f"{what}; got {len(rule_list)} item(s) of type(s) "
                         f"{sorted({type(r).__name__ for r in rule_list})}")
    return rule_list


def _chunk_plan(rule_list: list, chunk: int) -> list[np.ndarray]:
    """Configuration indices of each chunk: configurations whose rules share their static fields
    (kind, batch size, options) run together, in chunks of at most ``chunk``."""
    groups: dict = {}
    for i, r in enumerate(rule_list):
        groups.setdefault(clip_rules.static_signature(r), []).append(i)
    plan = []
    for members in groups.values():
        members = np.asarray(members)
        plan += [members[i:i + chunk] for i in range(0, members.size, chunk)]
    return plan


def _schedule_arrays(schedules) -> dict[str, np.ndarray]:
    """The batched schedule's per-configuration parameters (scalars per config only)."""
    out = {}
    for name in getattr(schedules, "__dataclass_fields__", {}):
        value = getattr(schedules, name)
        if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 1:
            out[name] = np.asarray(value)
    return out


@uses_x64
def simulate_runs(problem: Problem, schedule, seeds: Sequence[int], T: float, points: int = 101,
                  **kwargs) -> SweepResult:
    """Run one schedule for several seeds (a sweep with one configuration), on the step engine
    unless ``engine`` is given (one configuration gains little from the block engine, and the
    step engine's numbers are bit-identical however the run is sharded or batched).

    Returns:
        :class:`SweepResult` with ``C = 1``.
    """
    kwargs.setdefault("progress", False)
    kwargs.setdefault("engine", "step")  # one configuration: the bit-reproducible engine
    validation.one_schedule(schedule, "simulate_runs")
    return run_sweep(problem, stack_schedules([schedule]), seeds, T, points, **kwargs)
