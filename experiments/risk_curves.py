"""The paper's Figure 1 (synthetic panels): C-SGD, C-HSGD and the ODE on lam_i = i^-0.3, i <= 1000.

Panel data saved to ``figures/data/risk_curves.npz``:

* Gaussian noise (sigma 0.5), eta 1, c 0.5: C-SGD over seeds, C-HSGD over seeds, the clipped ODE,
  and the unclipped ODE for reference;
* Cauchy noise (scale 0.5), eta 0.5, c 0.5: the same, plus unclipped SGD over the same seeds,
  which does not converge (runs that diverge are recorded as diverged, with their times).

Usage: python experiments/risk_curves.py --out figures/data/risk_curves.npz [--size tiny|default|paper]
"""

import math

import numpy as np

import clipdyn as cd
from clipdyn.runs.results import save_results
from clipdyn.theory.ode import solve_ode
from clipdyn.theory.problem import make_problem, power_law_spectrum

from clipdyn.runs.sweep import run_sweep, stack_schedules
from clipdyn.theory.schedules import constant

import common

SIZES = {"tiny": dict(d=200, seeds=2, T=2.0, points=11),
         "default": dict(d=1000, seeds=10, T=10.0, points=101),
         "paper": dict(d=1000, seeds=50, T=20.0, points=201)}
PANELS = {
    "gaussian": dict(noise=cd.Gaussian(0.5), spec="gaussian:sigma=0.5", eta=1.0, clip=0.5),
    "cauchy": dict(noise=cd.cauchy(0.5), spec="cauchy:scale=0.5", eta=0.5, clip=0.5),
}


def main():
    args, size = common.parse(__doc__, "figures/data/risk_curves.npz", SIZES)
    lam = power_law_spectrum(size["d"], 0.3)
    seeds = list(range(size["seeds"]))
    arrays, config = {}, {"study": "risk_curves", "size": args.size, **size, "alpha": 0.3,
                          "panels": {k: {kk: vv for kk, vv in v.items() if kk != "noise"}
                                     for k, v in PANELS.items()}}
    ran = common.EngineLog()
    for name, panel in PANELS.items():
        problem = make_problem(lam, panel["noise"])
        scheds = stack_schedules([constant(panel["eta"], panel["clip"]), constant(panel["eta"], math.inf)])
        for method in ("sgd", "hsgd"):
            res = ran(run_sweep(problem, scheds, seeds, size["T"], size["points"], method=method,
                                progress=False))
            arrays[f"{name}_{method}_clipped"] = res.risk[:, 0]
            arrays[f"{name}_{method}_unclipped"] = res.risk[:, 1]
            arrays[f"{name}_{method}_unclipped_diverged_at"] = res.diverged_at[:, 1]
            arrays["t_sim"] = res.t
        for label, c in (("clipped", panel["clip"]), ("unclipped", math.inf)):
            ode = solve_ode(problem, constant(panel["eta"], c), size["T"], times=arrays["t_sim"])
            arrays[f"{name}_ode_{label}"] = np.asarray(ode.risk)
            arrays[f"{name}_ode_{label}_diverged_at"] = np.asarray(float(ode.diverged_at))
    config["engines"] = ran.counts()
    save_results(args.out, arrays, config, precision="float32 simulations, float64 ODE")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
