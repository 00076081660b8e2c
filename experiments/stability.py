"""Stability: the largest stable learning rate of clipped SGD against the threshold c.

For Gaussian and Rademacher noise (sigma 0.5), R0 = 1, lam_i = i^-0.3: a run is stable when its
risk at T is below R0. Three estimates per threshold: the frozen-factor criterion 2 mu/nu at R0
(theory eq. (4.2)); bisection on eta with the ODE; bisection on eta with simulations (the median
over seeds of R(T) below R0; diverged runs count as unstable). Unclipped SGD (c = inf) is the
reference, with eta_max = 2 in theory.

Usage: python experiments/stability.py --out figures/data/stability.npz [--size ...]
"""

import math

import jax.numpy as jnp
import numpy as np

import clipdyn as cd
from clipdyn.runs.results import save_results
from clipdyn.runs.sweep import run_sweep
from clipdyn.theory import factors, tuning
from clipdyn.theory.schedules import Constant

import common

SIZES = {"tiny": dict(d=128, n_c=3, seeds=2, T=4.0, iters=4),
         "default": dict(d=500, n_c=12, seeds=8, T=15.0, iters=10),
         "paper": dict(d=4000, n_c=24, seeds=32, T=20.0, iters=14)}
LAWS = {"gaussian": cd.Gaussian(0.5), "rademacher": cd.Rademacher(0.5)}


def main():
    args, size = common.parse(__doc__, "figures/data/stability.npz", SIZES)
    laws = common.first_only(LAWS, args.size)
    c = np.concatenate([np.geomspace(0.05, 10.0, size["n_c"]), [math.inf]])
    arrays = {"c": c}
    ran = common.EngineLog()
    for name, law in laws.items():
        prob = common.problem(law, size["d"])
        R0 = float(prob.R0)
        arrays[f"{name}_theory"] = np.asarray(factors.max_stable_lr(law, R0, jnp.asarray(c)))

        def make(etas):
            return Constant(jnp.asarray(etas), jnp.asarray(c))

        ode_stable = tuning.ode_is_stable(prob, make, size["T"])
        arrays[f"{name}_ode"] = tuning.bisect_max_lr(ode_stable, 0.05, 200.0, size["iters"] + 6, n=c.size)

        def sim_stable(etas):
            res = ran(run_sweep(prob, make(etas), range(size["seeds"]), size["T"], 2, progress=False))
            final = np.where(res.diverged, np.inf, res.risk[:, :, -1])
            return np.median(final, axis=0) < R0

        arrays[f"{name}_sim"] = tuning.bisect_max_lr(sim_stable, 0.05, 200.0, size["iters"], n=c.size)
    save_results(args.out, arrays, {"study": "stability", "size": args.size, **size, "sigma": 0.5,
                                    "laws": list(laws), "stable_if": "R(T) < R0 (median over seeds)",
                                    "bracket": [0.05, 200.0], "engines": ran.counts()},
                 precision="float64 ODE, float32 simulations")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
