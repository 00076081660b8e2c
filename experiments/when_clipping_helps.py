"""When clipping helps: best clipped SGD against best unclipped SGD, by sweeping.

For Gaussian noise and Student-t noise with df 1.5, 2.5 and 5 (scale 1), lam_i = i^-0.3, R0 = 1,
horizon T: sweep constant thresholds x learning rates for C-SGD, and learning rates for SGD, both
with simulations (seeds sharing their samples) and with the ODE. The best configuration is the one
with the smallest mean final risk R(T). Saves the final-risk grids and the risk curves of the best
configurations.

Usage: python experiments/when_clipping_helps.py --out figures/data/when_clipping_helps.npz [--size ...]
"""

import math

import jax.numpy as jnp
import numpy as np

import clipdyn as cd
from clipdyn.runs.results import save_results
from clipdyn.runs.sweep import run_sweep, simulate_runs
from clipdyn.theory import tuning
from clipdyn.theory.ode import solve_ode
from clipdyn.theory.schedules import Constant, constant

import common

SIZES = {"tiny": dict(d=128, n_c=3, n_eta=3, seeds=2, T=2.0, points=5),
         "default": dict(d=500, n_c=10, n_eta=9, seeds=6, T=10.0, points=41),
         "paper": dict(d=4000, n_c=20, n_eta=16, seeds=32, T=20.0, points=101)}
LAWS = {"gaussian": cd.Gaussian(1.0), "student-t df=5": cd.StudentT(5.0, 1.0),
        "student-t df=2.5": cd.StudentT(2.5, 1.0), "student-t df=1.5": cd.StudentT(1.5, 1.0)}


def main():
    args, size = common.parse(__doc__, "figures/data/when_clipping_helps.npz", SIZES)
    laws = common.first_only(LAWS, args.size)
    c = np.concatenate([np.geomspace(0.1, 10.0, size["n_c"]), [math.inf]])
    eta = np.geomspace(0.05, 2.0, size["n_eta"])
    cc, ee = np.meshgrid(c, eta, indexing="ij")
    grid = Constant(jnp.asarray(ee.ravel()), jnp.asarray(cc.ravel()))
    arrays = {"c": c, "eta": eta}
    summary = {}
    ran = common.EngineLog()
    for i, (name, law) in enumerate(laws.items()):
        prob = common.problem(law, size["d"])
        ode_risk, status = tuning.ode_final_risks(prob, grid, size["T"])
        ode_final = np.where(status == 0, ode_risk[:, -1], np.inf).reshape(cc.shape)
        res = ran(run_sweep(prob, grid, range(size["seeds"]), size["T"], 2, progress=False))
        final = np.where(res.diverged, np.inf, res.risk[:, :, -1])
        sim_final = np.where(np.isfinite(final).all(0), final.mean(0), np.inf).reshape(cc.shape)
        arrays[f"ode_final_{i}"], arrays[f"sim_final_{i}"] = ode_final, sim_final
        best = {}
        for label, rows in (("clipped", slice(0, -1)), ("unclipped", slice(-1, None))):
            sub = sim_final[rows]
            if not np.isfinite(sub).any():
                best[label] = None
                continue
            j, k = np.unravel_index(np.argmin(sub), sub.shape)
            cj, ek = float(c[rows][j]), float(eta[k])
            sched = constant(ek, cj)
            runs = ran(simulate_runs(prob, sched, range(size["seeds"]), size["T"], size["points"]))
            ode = solve_ode(prob, sched, size["T"], times=runs.t)
            arrays[f"curve_{label}_sim_{i}"] = runs.risk[:, 0]
            arrays[f"curve_{label}_ode_{i}"] = np.asarray(ode.risk)
            arrays["t"] = runs.t
            best[label] = {"c": cj, "eta": ek, "sim_final": float(sub[j, k]),
                           "ode_final": float(ode_final[rows][j, k])}
        summary[name] = best
    save_results(args.out, arrays, {"study": "when_clipping_helps", "size": args.size, **size,
                                    "laws": list(laws), "best": summary,
                                    "criterion": "smallest mean R(T) over seeds",
                                    "engines": ran.counts()},
                 precision="float64 ODE, float32 simulations")
    for name, best in summary.items():
        print(name, best)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
