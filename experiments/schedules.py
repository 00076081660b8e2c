"""Schedules: clipped SGD with the max-CCC schedule against the best SGD learning-rate schedules.

For Gaussian noise (sigma 1) and Student-t noise (df 2.5, scale 1), lam_i = i^-0.3, R0 = 1:
unclipped SGD with (a) its best constant learning rate, (b) its best step decay (grid over eta0,
factor and period) and (c) a piecewise-constant schedule optimised through the ODE (Adam on
log R(T), forward-mode gradients through the solver), against clipped SGD with the max-CCC
schedule (its base learning rate chosen on a grid). Each is found with the ODE and then simulated.
The paper's claim: under heavy tails max-CCC beats every SGD schedule; under Gaussian noise it is
SGD (c* = inf) and never wins.

Usage: python experiments/schedules.py --out figures/data/schedules.npz [--size ...]
"""

import itertools

import jax.numpy as jnp
import numpy as np

import clipdyn as cd
from clipdyn.runs.results import save_results
from clipdyn.runs.sweep import simulate_runs
from clipdyn.theory import tuning
from clipdyn.theory.ode import solve_ode
from clipdyn.theory.schedules import Constant, MaxCCC, StepDecay, max_ccc

import common

SIZES = {"tiny": dict(d=128, n_eta=3, seeds=2, T=2.0, points=5, pieces=2, adam_steps=2),
         "default": dict(d=500, n_eta=12, seeds=8, T=20.0, points=41, pieces=8, adam_steps=40),
         "paper": dict(d=4000, n_eta=24, seeds=32, T=40.0, points=101, pieces=16, adam_steps=100)}
LAWS = {"gaussian": cd.Gaussian(1.0), "student-t df=2.5": cd.StudentT(2.5, 1.0)}


def main():
    args, size = common.parse(__doc__, "figures/data/schedules.npz", SIZES)
    laws = common.first_only(LAWS, args.size)
    T = size["T"]
    etas = np.geomspace(0.02, 1.9, size["n_eta"])
    arrays, summary, ran = {}, {}, common.EngineLog()
    for i, (name, law) in enumerate(laws.items()):
        prob = common.problem(law, size["d"])
        final = lambda sched: tuning.ode_final_risks(prob, sched, T)[0][:, -1]  # noqa: E731
        chosen = {}
        # (a) best constant learning rate for SGD.
        r = final(Constant(jnp.asarray(etas), jnp.full(etas.shape, jnp.inf)))
        chosen["SGD, best constant"] = Constant(float(etas[np.nanargmin(r)]), np.inf)
        # (b) best step decay: eta0 x factor x period.
        grid = list(itertools.product(etas, [0.3, 0.5, 0.7], [T / 8, T / 4, T / 2]))
        g = np.array(grid)
        r = final(StepDecay(jnp.asarray(g[:, 0]), jnp.asarray(g[:, 1]), jnp.asarray(g[:, 2]),
                            jnp.full(len(g), jnp.inf)))
        e0, fac, every = grid[int(np.nanargmin(r))]
        chosen["SGD, best step decay"] = StepDecay(float(e0), float(fac), float(every), np.inf)
        # (c) piecewise-constant schedule optimised through the ODE, started at the best constant.
        opt = tuning.optimize_lr_schedule(prob, T, pieces=size["pieces"], steps=size["adam_steps"],
                                          eta_init=float(chosen["SGD, best constant"].eta))
        chosen["SGD, optimised through the ODE"] = opt.schedule
        arrays[f"adam_history_{i}"] = opt.history
        # (d) max-CCC with the best base learning rate.
        base = max_ccc(1.0, law)
        r = final(MaxCCC(jnp.asarray(etas), jax_tile(base.noise, len(etas)),
                         jnp.tile(base.log_R, (len(etas), 1)), jnp.tile(base.u, (len(etas), 1))))
        chosen["C-SGD, max-CCC"] = MaxCCC(float(etas[np.nanargmin(r)]), base.noise, base.log_R, base.u)
        summary[name] = {}
        for j, (label, sched) in enumerate(chosen.items()):
            runs = ran(simulate_runs(prob, sched, range(size["seeds"]), T, size["points"]))
            ode = solve_ode(prob, sched, T, times=runs.t)
            arrays[f"sim_{i}_{j}"] = runs.risk[:, 0]
            arrays[f"ode_{i}_{j}"] = np.asarray(ode.risk)
            arrays["t"] = runs.t
            mean = common.seed_mean(runs.risk[:, 0])
            summary[name][label] = {"ode_final": float(ode.risk[-1]), "sim_final": float(mean[-1]),
                                    "params": describe(sched)}
    save_results(args.out, arrays, {"study": "schedules", "size": args.size, **size,
                                    "laws": list(laws), "labels": list(chosen), "results": summary,
                                    "engines": ran.counts()},
                 precision="float64 ODE, float32 simulations")
    for name, s in summary.items():
        for label, v in s.items():
            print(f"{name:18s} {label:32s} ODE R(T)={v['ode_final']:.4f} sim={v['sim_final']:.4f}")
    print(f"wrote {args.out}")


def jax_tile(tree, n):
    import jax

    return jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (n,) + jnp.shape(x)), tree)


def describe(sched):
    out = {}
    for k in ("eta", "factor", "every", "etas", "boundaries", "clip"):
        if hasattr(sched, k):
            v = np.asarray(getattr(sched, k), float)
            out[k] = v.tolist()
    return out


if __name__ == "__main__":
    main()
