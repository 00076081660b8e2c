"""Concentration: the ODE-vs-simulation gap of single C-SGD runs shrinks like d^-1/2.

For each d, spectrum lam_i evenly spaced in [0.1, 1] (so d_int = Tr K / ||K|| = 0.55 d grows
linearly with d), Gaussian noise sigma 0.5, eta 1, c 0.5, R0 1: the relative gap of each seed's
risk curve to the ODE, sup over t in [0, T], and its mean over seeds. The paper's Theorem 1 bounds
the gap by O(log(d) d^-1/2); the fitted slope on log-log axes should be about -1/2.

Usage: python experiments/concentration.py --out figures/data/concentration.npz [--size ...]
"""


import numpy as np

import clipdyn as cd
from clipdyn.runs.results import save_results
from clipdyn.theory.ode import solve_ode
from clipdyn.theory.problem import make_problem

from clipdyn.runs.sweep import simulate_runs
from clipdyn.theory.schedules import constant

import common

SIZES = {"tiny": dict(dims=[100, 1000], seeds=2, T=1.0),
         "default": dict(dims=[100, 316, 1000, 3162, 10000], seeds=8, T=2.0),
         "paper": dict(dims=[100, 316, 1000, 3162, 10000, 31623, 100000], seeds=16, T=4.0)}


def main():
    args, size = common.parse(__doc__, "figures/data/concentration.npz", SIZES)
    points = 41
    sched = constant(1.0, 0.5)
    gaps, d_int, ran = [], [], common.EngineLog()
    for d in size["dims"]:
        problem = make_problem(np.linspace(1.0, 0.1, d), cd.Gaussian(0.5))
        res = ran(simulate_runs(problem, sched, range(size["seeds"]), size["T"], points))
        ode = np.asarray(solve_ode(problem, sched, size["T"], times=res.t).risk)
        rel = np.abs(res.risk[:, 0, :] - ode) / ode
        gaps.append(rel.max(axis=1))
        d_int.append(float(problem.intrinsic_dimension))
    gaps = np.array(gaps)
    slope = np.polyfit(np.log(size["dims"]), np.log(gaps.mean(axis=1)), 1)[0]
    save_results(args.out, {"d": np.array(size["dims"]), "d_int": np.array(d_int), "gap": gaps,
                            "slope": np.array(slope)},
                 {"study": "concentration", "size": args.size, **size, "points": points,
                  "spectrum": "linspace(1, 0.1, d)", "noise": "gaussian:sigma=0.5", "eta": 1.0,
                  "clip": 0.5, "R0": 1.0, "statistic": "sup_t |R_sim - R_ode| / R_ode per seed",
                  "engines": ran.counts()},
                 precision="float32 simulations, float64 ODE")
    print(f"wrote {args.out} (fitted slope {slope:.3f})")


if __name__ == "__main__":
    main()
