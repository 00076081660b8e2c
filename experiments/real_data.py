"""Real data: the paper's real-data panels on scikit-learn's digits with random ReLU features.

The protocol of theory/real_data.md (standardised inputs, ``relu:d=1000,seed=0`` features, target
+1 for digits 5-9 and -1 for 0-4, theta* the least-squares solution, residuals as the noise law,
theta_0 = 0). For each learning rate and every threshold of a grid (plus unclipped SGD):

* C-SGD simulations drawing rows of the dataset with replacement (``run_sweep``, block engine,
  float32, common random numbers across thresholds), recorded on the ODE's time grid;
* the ODE (float64) on the dataset's spectrum, start and residual law;
* a Gaussian twin: the same simulations on Gaussian features with the same spectrum, mode
  energies v_i(0) and residual law drawn independently of the features (the data the ODE is
  derived for, at the dataset's own d_int). The ODE is the same for both, so the twin's gap is
  the finite-d_int error and the rest of the data's gap is what real data adds.

Saved: both risk curves for every (eta, c), the final risks, the ODE's and the simulation's best
threshold, the relative gap between the seed mean and the ODE, and what the ODE assumes that the
data violate: the spread of ``||x_j||^2 / Tr K`` (Gaussian features concentrate it at 1) and the
residual law (independent of the features in the theory).

Usage: python experiments/real_data.py --out figures/data/real_data.npz [--size tiny|default|paper]
       [--data SPEC] [--features SPEC]   (e.g. --data cifar10:path=DIR; make real-data DATA=...)
"""

import argparse
import sys
import time

import jax.numpy as jnp
import numpy as np

from clipdyn.data import load_problem
from out_path import check_out
from clipdyn.runs.results import save_results, seed_statistics
from clipdyn.runs.sweep import run_sweep
from clipdyn.theory.ode import solve_ode
from clipdyn.theory.schedules import Constant, constant

SIZES = {"tiny": dict(features="relu:d=64,seed=0", etas=[0.5], curve_eta=0.5, seeds=2, n_c=2,
                     T=0.5, points=6),
         "default": dict(features="relu:d=1000,seed=0", etas=[0.25, 0.5, 1.0], curve_eta=0.5, seeds=8,
                         n_c=10, T=5.0, points=51),
         "paper": dict(features="relu:d=1000,seed=0", etas=[0.25, 0.5, 1.0], curve_eta=0.5, seeds=32,
                       n_c=20, T=10.0, points=101)}
C_RANGE = (0.03, 3.0)


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="figures/data/real_data.npz")
    ap.add_argument("--size", default="default", choices=list(SIZES))
    ap.add_argument("--data", default="sklearn:name=digits", help="data SPEC (default sklearn:name=digits)")
    ap.add_argument("--features", default=None, help="features SPEC (default: the size's relu:d=D,seed=0)")
    args = ap.parse_args()
    check_out(ap, args.out)
    return args, dict(SIZES[args.size])


def best(c, final):
    """The threshold with the lowest final risk (``inf`` for a run that diverged)."""
    return float(c[int(np.argmin(np.where(np.isfinite(final), final, np.inf)))])


def finals(res, ode):
    """Seed means ``(C, P)``, final risks (``inf`` where a seed diverged) and the sup-in-time
    relative gap of the mean to the ODE per configuration."""
    mean = np.stack([seed_statistics(res.risk[:, j])[0] for j in range(res.risk.shape[1])])
    final = np.where(res.diverged.any(axis=0), np.inf, mean[:, -1])
    return mean, final, np.nanmax(np.abs(mean - ode) / ode, axis=1)


def main():
    args, size = parse()
    features = args.features or size["features"]
    t0 = time.time()
    try:
        dp = load_problem(args.data, features)
    except ValueError as err:  # a missing or malformed dataset: one line, as the CLI does
        print(f"real_data.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    t_load = time.time() - t0
    c = np.concatenate([np.geomspace(*C_RANGE, size["n_c"]), [np.inf]])
    etas = np.asarray(size["etas"], float)
    seeds = list(range(size["seeds"]))
    T, points = size["T"], size["points"]
    ode_risk, sim_risk, sim_div_at, twin_risk, twin_div_at = [], [], [], [], []
    summary = []
    t_ode = t_sim = 0.0
    for eta in etas:
        sched = Constant(jnp.full(c.size, eta), jnp.asarray(c))
        t1 = time.time()
        res = run_sweep(dp.problem, sched, seeds, T, points, data=dp, engine="block", progress=False)
        twin = run_sweep(dp.problem, sched, seeds, T, points, engine="block", progress=False)
        t2 = time.time()
        # The ODE at the simulation's own times (whole steps / Tr K), as `clipdyn validate` does:
        # early on the top mode decays within a few steps, so rounding t to a step matters there.
        runs = [solve_ode(dp.problem, constant(float(eta), float(cc)), T, times=res.t) for cc in c]
        t3 = time.time()
        t_sim, t_ode = t_sim + t2 - t1, t_ode + t3 - t2
        ode = np.stack([np.asarray(r.risk, float) for r in runs])  # nan after a divergence
        twin_risk.append(twin.risk)
        twin_div_at.append(twin.diverged_at)
        ode_risk.append(ode)
        sim_risk.append(res.risk)
        sim_div_at.append(res.diverged_at)
        mean, final_sim, gap = finals(res, ode)
        _, final_twin, gap_twin = finals(twin, ode)
        c_ode, c_sim = best(c, ode[:, -1]), best(c, final_sim)
        j_ode = int(np.flatnonzero(c == c_ode)[0])
        summary.append({"eta": float(eta), "c_best_ode": c_ode, "c_best_sim": c_sim,
                        "sim_final_at_ode_choice": float(final_sim[j_ode]),
                        "sim_final_best": float(np.min(final_sim)),
                        "ode_final_best": float(np.nanmin(ode[:, -1])),
                        "c_best_twin": best(c, final_twin),
                        "max_rel_gap_per_c": gap.tolist(),
                        "twin_max_rel_gap_per_c": gap_twin.tolist(),
                        "n_diverged_per_c": res.diverged.sum(axis=0).tolist(),
                        "twin_n_diverged_per_c": twin.diverged.sum(axis=0).tolist()})
        print(f"eta={eta:g}: best c by ODE {c_ode:.3g}, by simulation {c_sim:.3g}; "
              f"sim R(T) at the ODE's choice {final_sim[j_ode]:.4g} vs best {np.min(final_sim):.4g}; "
              f"max rel gap over clipped c {np.nanmax(gap[np.isfinite(c)]):.3g} "
              f"(Gaussian twin {np.nanmax(gap_twin[np.isfinite(c)]):.3g})")
    rows = dp.features
    norm2 = np.einsum("ij,ij->i", rows, rows) / dp.trace
    arrays = {"c": c, "etas": etas, "t": res.t, "ode_risk": np.stack(ode_risk),
              "sim_risk": np.stack(sim_risk), "sim_diverged_at": np.stack(sim_div_at),
              "twin_risk": np.stack(twin_risk), "twin_diverged_at": np.stack(twin_div_at),
              "lam": dp.lam, "row_norm2_over_trace": norm2, "residuals": dp.residuals}
    config = {"study": "real_data", "size": args.size, **size, "features": features,
              "dataset": dp.summary(), "c_range": list(C_RANGE), "summary": summary,
              "engine": "block", "seconds": {"load": t_load, "ode": t_ode, "simulation": t_sim},
              "row_norm2_over_trace_quantiles": dict(zip(["q50", "q90", "q99", "max"],
                                                         np.quantile(norm2, [0.5, 0.9, 0.99, 1.0]).tolist()))}
    save_results(args.out, arrays, config, precision="float32 simulations, float64 ODE and protocol")
    print(f"{dp.describe()}: N={dp.N}, d={dp.d}, d_int={dp.d_int:.4g}, R0={dp.R0:.4g}; "
          f"load {t_load:.1f}s, ODE {t_ode:.1f}s, simulations {t_sim:.1f}s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
