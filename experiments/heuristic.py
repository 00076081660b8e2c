"""The one-parameter heuristic c_t = kappa sqrt(2 R_t + sigma^2) against the max-CCC schedule.

For Student-t noise with df 2.5, 3, 5 and 10 (scale 1): the fraction of the best CCC that the
heuristic attains, CCC(kappa sqrt(2R + sigma^2), R) / max_c CCC(c, R), over a grid of kappa and R;
and, for the heaviest and the lightest of these tails (df 2.5 and 10), risk curves (ODE and
simulation, lam_i = i^-0.3, R0 = 1, eta 0.5) of the heuristic with the kappa that maximises the
worst-case fraction over the R grid, against max-CCC and unclipped SGD. (Curves for df 3 and 5
as well would double the compilation, one ODE and one simulation program per schedule and df,
for curves that lie between these two.)

Usage: python experiments/heuristic.py --out figures/data/heuristic.npz [--size ...]
"""

import jax
import jax.numpy as jnp
import numpy as np

import clipdyn as cd
from clipdyn.runs.results import save_results
from clipdyn.runs.sweep import simulate_runs
from clipdyn.theory import factors
from clipdyn.theory.ode import solve_ode
from clipdyn.theory.schedules import constant, heuristic, max_ccc

import common

SIZES = {"tiny": dict(d=128, n_kappa=4, n_R=3, seeds=2, T=2.0, points=5),
         "default": dict(d=500, n_kappa=40, n_R=30, seeds=6, T=20.0, points=41),
         "paper": dict(d=4000, n_kappa=80, n_R=60, seeds=32, T=40.0, points=101)}
DFS = [2.5, 3.0, 5.0, 10.0]
CURVE_DFS = [2.5, 10.0]  # risk curves for these
ETA = 0.5


def main():
    args, size = common.parse(__doc__, "figures/data/heuristic.npz", SIZES)
    kappa = np.geomspace(0.1, 10.0, size["n_kappa"])
    R = np.geomspace(1e-3, 10.0, size["n_R"])
    arrays = {"kappa": kappa, "R": R}
    best_kappa = {}
    ran = common.EngineLog()
    dfs = DFS[:1] if args.size == "tiny" else DFS  # tiny: a smoke test of the whole pipeline
    for i, df in enumerate(dfs):
        law = cd.StudentT(df, 1.0)
        sigma2 = float(law.second_moment)
        c_star = np.asarray(jax.jit(lambda r: factors.optimal_threshold(law, r))(jnp.asarray(R)))
        best = np.asarray(factors.ccc(law, jnp.asarray(R), jnp.asarray(c_star)))
        c_h = kappa[:, None] * np.sqrt(2 * R[None, :] + sigma2)
        got = np.asarray(jax.jit(lambda r, c: factors.ccc(law, r, c))(jnp.asarray(R)[None, :], jnp.asarray(c_h)))
        frac = got / best[None, :]
        arrays[f"fraction_{i}"] = frac
        k_best = float(kappa[np.argmax(frac.min(axis=1))])
        best_kappa[df] = {"kappa": k_best, "worst_fraction": float(frac.min(axis=1).max())}
        if df not in CURVE_DFS:
            continue
        prob = common.problem(law, size["d"])
        scheds = {"max-CCC": max_ccc(ETA, law), f"heuristic kappa={k_best:.2f}": heuristic(ETA, k_best, law),
                  "unclipped SGD": constant(ETA, np.inf)}
        for j, sched in enumerate(scheds.values()):
            runs = ran(simulate_runs(prob, sched, range(size["seeds"]), size["T"], size["points"]))
            arrays[f"sim_{i}_{j}"] = runs.risk[:, 0]
            arrays[f"ode_{i}_{j}"] = np.asarray(solve_ode(prob, sched, size["T"], times=runs.t).risk)
            arrays["t"] = runs.t
        arrays[f"labels_{i}"] = np.array(list(scheds))
    save_results(args.out, arrays, {"study": "heuristic", "size": args.size, **size, "dfs": dfs,
                                    "curve_dfs": [df for df in dfs if df in CURVE_DFS], "eta": ETA,
                                    "best_kappa": {str(k): v for k, v in best_kappa.items()},
                                    "engines": ran.counts()},
                 precision="float64 theory and ODE, float32 simulations")
    print(best_kappa)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
