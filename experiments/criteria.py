"""When can clipping help? CCC against c, the optimal threshold c*(R), and mu/nu (stability).

Saves ``figures/data/criteria.npz``: CCC on a grid of thresholds for Gaussian and Student-t noise
(df 1.5, 2.5, 3, 5, 10) at several risks, c*(R) and the CCC it attains, and mu/nu for Gaussian
and Rademacher noise. Pure theory (float64); the plot is experiments/plot_criteria.py.

Usage: python experiments/criteria.py --out figures/data/criteria.npz [--size default|paper|tiny]
"""


import jax
import numpy as np

import clipdyn as cd
from clipdyn.runs.results import save_results
from clipdyn.theory import factors

import common

DFS = [1.5, 2.5, 3.0, 5.0, 10.0]
SIZES = {"tiny": dict(n_c=24, n_R=8), "default": dict(n_c=240, n_R=60), "paper": dict(n_c=600, n_R=150)}
RISKS = [0.01, 0.1, 1.0]


def laws():
    out = {"gaussian": cd.Gaussian(1.0)}
    out.update({f"student-t df={df:g}": cd.StudentT(df, 1.0) for df in DFS})
    return out


def main():
    args, size = common.parse(__doc__, "figures/data/criteria.npz", SIZES)
    n_c, n_R = size["n_c"], size["n_R"]

    c_grid = np.geomspace(1e-2, 1e2, n_c)
    R_grid = np.geomspace(1e-4, 1e2, n_R)
    arrays = {"c": c_grid, "R_levels": np.array(RISKS), "R_grid": R_grid}
    chosen = laws() if args.size != "tiny" else dict(list(laws().items())[:2])
    names = list(chosen)
    for i, (name, law) in enumerate(chosen.items()):
        ccc = jax.jit(lambda R, c: factors.ccc(law, R[:, None], c[None, :]))
        arrays[f"ccc_{i}"] = np.asarray(ccc(np.array(RISKS), c_grid))
        c_star = np.asarray(jax.jit(lambda R: factors.optimal_threshold(law, R))(R_grid))
        arrays[f"cstar_{i}"] = c_star
        arrays[f"cccstar_{i}"] = np.asarray(factors.ccc(law, R_grid, c_star))
    stab = {"gaussian": cd.Gaussian(1.0), "rademacher": cd.Rademacher(1.0)}
    for name, law in stab.items():
        csc = jax.jit(lambda R, c: factors.csc(law, R[:, None], c[None, :]))
        arrays[f"csc_{name}"] = np.asarray(csc(np.array(RISKS), c_grid))
    config = {"study": "criteria", "size": args.size, "laws": names, "noise_scale": 1.0,
              "stability_laws": list(stab), "risks": RISKS}
    save_results(args.out, arrays, config, precision="float64")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
