"""The simulation engines: streaming C-SGD under every clipping rule, unclipped SGD and C-HSGD,
on Gaussian data or on a dataset's rows.

* :mod:`clipdyn.sim.core`: the prepared problem, run state, sample stream and divergence guard;
* :mod:`clipdyn.sim.threefry`: the stream's normals, JAX's threefry bits with the hash unrolled;
* :mod:`clipdyn.sim.step`: the ``(init_fn, step_fn)`` simulators (C-SGD, C-HSGD);
* :mod:`clipdyn.sim.block`: C-SGD by blocks of matrix products;
* :mod:`clipdyn.sim.runner`: seeds x configurations as one jitted program.

Sweeps over many configurations, chunking, resuming and sharding live in :mod:`clipdyn.runs.sweep`.
"""

from clipdyn.sim.core import (PAD, RunState, Sample, SimProblem, batch_invariant_sum, draw_block,
                              draw_sample, initial_error, noise_cap, prepare, split_seed,
                              start_state)
from clipdyn.sim.runner import ENGINES, check_engine, output_steps, run_batch
from clipdyn.sim.step import METHODS, hsgd, sgd, simulator

__all__ = ["PAD", "RunState", "Sample", "SimProblem", "batch_invariant_sum", "draw_block",
           "draw_sample", "initial_error", "noise_cap", "prepare", "split_seed", "start_state",
           "ENGINES", "check_engine", "output_steps", "run_batch", "METHODS", "hsgd", "sgd",
           "simulator"]
