"""DP-SGD and pre-clip noise: what privacy noise does to the best threshold, and how noise added
before clipping revives clipped SGD where it stalls.

Panel data (lam_i = i^-0.3, R0 = 1, per-sample clipping, THEORY.md section 6):

1. DP-SGD, batch B, Gaussian label noise (sigma 0.5): the ODE's final risk R(T) against the
   threshold c for several noise multipliers S, each at its best learning rate per threshold (a
   grid), with simulations (seeds sharing their samples) at the ODE's best learning rate on a
   coarser threshold grid. DP noise (S C / B) z grows with C, so the best threshold should shrink
   as S grows.
2. Pre-clip noise, B = 1, Rademacher label noise +-1 and a threshold c = 0.2 below the noise
   level, over a long horizon: without it mu = P(|w| <= c) -> 0 as R -> 0 and clipped SGD stalls; noise K before
   clipping keeps mu > 0 (theory/clip_rules.md, eq. (5)). R(T) against K, ODE and simulation,
   and the risk curves for K = 0 and the best K.

Usage: python experiments/dp.py --out figures/data/dp.npz [--size tiny|default|paper]
"""

import math

import jax.numpy as jnp
import numpy as np

import clipdyn as cd
from clipdyn.runs.results import save_results
from clipdyn.runs.sweep import run_sweep, simulate_runs
from clipdyn.theory import rules, tuning
from clipdyn.theory.ode import solve_ode
from clipdyn.theory.schedules import Constant, constant

import common

SIZES = {"tiny": dict(d=128, B=4, n_c=4, n_eta=3, n_sim_c=2, seeds=2, T=2.0, n_K=3, T_pre=4.0,
                     points=5),
         "default": dict(d=500, B=8, n_c=16, n_eta=10, n_sim_c=5, seeds=6, T=6.0, n_K=8, T_pre=200.0,
                         points=41),
         "paper": dict(d=4000, B=16, n_c=32, n_eta=16, n_sim_c=10, seeds=32, T=10.0, n_K=17,
                       T_pre=400.0, points=101)}
DP_NOISE = (0.0, 0.25, 0.5, 1.0)


def best_over_eta(final, n_c, n_eta):
    """Best (smallest) final risk over learning rates for each threshold, and its index."""
    grid = final.reshape(n_c, n_eta)
    k = np.argmin(np.where(np.isfinite(grid), grid, np.inf), axis=1)
    return grid[np.arange(n_c), k], k


def dp_panel(size, arrays, summary, ran):
    B = size["B"]
    prob = common.problem(cd.Gaussian(0.5), size["d"])
    c = np.geomspace(0.05, 5.0, size["n_c"])
    eta = np.geomspace(0.25, 4.0 * B, size["n_eta"])
    cc, ee = np.meshgrid(c, eta, indexing="ij")
    grid = Constant(jnp.asarray(ee.ravel()), jnp.asarray(cc.ravel()))
    sim_idx = np.unique(np.rint(np.linspace(0, size["n_c"] - 1, size["n_sim_c"])).astype(int))
    arrays["dp_c"], arrays["dp_S"], arrays["dp_sim_c"] = c, np.asarray(DP_NOISE), c[sim_idx]
    for j, S in enumerate(DP_NOISE):
        rule = rules.per_sample(B, dp_noise=S)
        risk, status = tuning.ode_final_risks(prob, grid, size["T"], rules=rule)
        final = np.where(status == 0, risk[:, -1], np.inf)
        best, k = best_over_eta(final, size["n_c"], size["n_eta"])
        arrays[f"dp_ode_{j}"], arrays[f"dp_eta_{j}"] = best, eta[k]
        scheds = Constant(jnp.asarray(eta[k][sim_idx]), jnp.asarray(c[sim_idx]))
        res = ran(run_sweep(prob, scheds, range(size["seeds"]), size["T"], 2, progress=False,
                            rules=rule))
        fin = np.where(res.diverged, np.nan, res.risk[:, :, -1])
        arrays[f"dp_sim_{j}"] = np.nanmean(fin, axis=0)
        arrays[f"dp_sim_se_{j}"] = np.nanstd(fin, axis=0, ddof=1) / np.sqrt(np.isfinite(fin).sum(0))
        summary[f"S={S:g}"] = {"best_c_ode": float(c[np.nanargmin(best)]),
                               "best_risk_ode": float(np.nanmin(best))}


def preclip_panel(size, arrays, summary, ran):
    law = cd.Rademacher(1.0)
    prob = common.problem(law, size["d"])
    c, eta, T = 0.2, 1.0, size["T_pre"]
    K = np.concatenate([[0.0], np.geomspace(0.1, 3.0, size["n_K"] - 1)])
    arrays["pre_K"] = K
    ode_final, sim_mean, sim_se = [], [], []
    for k in K:
        rule = rules.per_sample(1, preclip_noise=float(k)) if k > 0 else rules.per_sample(1)
        sched = constant(eta, c)
        runs = ran(simulate_runs(prob, sched, range(size["seeds"]), T, size["points"], rules=rule))
        ode = solve_ode(prob, sched, T, times=runs.t, rule=rule)
        fin = runs.risk[:, 0, -1]
        ode_final.append(float(ode.risk[-1]))
        sim_mean.append(float(np.nanmean(fin)))
        sim_se.append(float(np.nanstd(fin, ddof=1) / np.sqrt(np.isfinite(fin).sum())))
        arrays[f"pre_curve_sim_{len(ode_final) - 1}"] = runs.risk[:, 0]
        arrays[f"pre_curve_ode_{len(ode_final) - 1}"] = np.asarray(ode.risk)
        arrays["pre_t"] = runs.t
    arrays["pre_ode"], arrays["pre_sim"], arrays["pre_sim_se"] = map(np.asarray, (ode_final, sim_mean, sim_se))
    best = int(np.argmin(ode_final))
    summary["preclip"] = {"c": c, "eta": eta, "T": T, "noise": "rademacher sigma=1", "R_T_without": ode_final[0],
                          "best_K": float(K[best]), "R_T_best": ode_final[best],
                          "mu_at_R_small_without": float(cd.mu(law, 1e-4, c)),
                          "mu_at_R_small_best": float(cd.mu(law, 1e-4, c, rules.per_sample(1, preclip_noise=float(K[best]))))
                          if K[best] > 0 else None}


def main():
    args, size = common.parse(__doc__, "figures/data/dp.npz", SIZES)
    arrays, summary, ran = {}, {}, common.EngineLog()
    dp_panel(size, arrays, summary, ran)
    preclip_panel(size, arrays, summary, ran)
    save_results(args.out, arrays, {"study": "dp", "size": args.size, **size, "dp_noise": list(DP_NOISE),
                                    "summary": summary, "spectrum": "power-law alpha=0.3",
                                    "dp_label_noise": "gaussian sigma=0.5", "rule": "per-sample",
                                    "criterion": "smallest R(T), best eta on a grid per threshold",
                                    "engines": ran.counts()},
                 precision="float64 ODE, float32 simulations")
    for k, v in summary.items():
        print(k, v)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
