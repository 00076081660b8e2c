"""L0-L1 acceleration: iterations to ||grad f|| <= eps against M for fixed-step, clipped and normalised GD.

Zhang et al. (ICLR 2020) prove that on (L0, L1)-smooth functions clipped and normalised gradient
descent need a number of iterations independent of M = sup{||grad f|| : f <= f(x0)}, while gradient
descent with a fixed step needs Omega(M / log M) (theory/l0l1.md, eqs. (4)-(6)). For four
functions and a range of starts x0 (so of M):

* f = cosh x - 1 in 1-D, (L0, L1) = (1, 1), eps = 1e-6;
* f = x^4 / 4 in 1-D, (L0, L1) = (4, 1), eps = 1e-3 (the minimum is degenerate, so GD's count
  near it grows like eps^-2/3 whatever the step; 1e-3 keeps the fixed-step runs affordable);
* f = sum_i lam_i (cosh x_i - 1) in d dimensions, lam_i = i^-0.5 (condition number sqrt d),
  x0 = r (1, ..., 1), (L0, L1) = (1, 1), eps = 1e-6;
* f = sum_i x_i^4 / 4 in d dimensions, x0 = r (i^-0.5)_i, (L0, L1) = (4, 1), eps = 1e-3;

the starts are set so that M runs over one geometric grid from 2 to M_max for all four. In 1-D the
gradient points at the minimiser, so a tuned step can land next to it by luck (a few iterations);
in d dimensions with unequal curvatures or coordinates it cannot, which makes those the fair test.

Six methods: GD with the step that guarantees descent, 1 / (L0 + L1 M) (eq. (2)); GD with the best
fixed step on a grid from that step to 4 / L0 that decreases f monotonically; clipped GD and
normalised GD with Zhang et al.'s constants (eqs. (5)-(6)), and each with the best multiplier s of
those constants on a grid (s = 1 included), under the same monotone-decrease rule. Runs stop at
max_iter; counts that did not reach eps are saved as not reached, never as numbers. float64.

Usage: python experiments/l0l1_acceleration.py --out figures/data/l0l1_acceleration.npz [--size ...]
"""

import jax
import jax.numpy as jnp
import numpy as np

from clipdyn.runs.results import save_results
from clipdyn.sources import smoothness as sm
from clipdyn.theory.problem import power_law_spectrum

import common

SIZES = {"tiny": dict(points=3, M_max=1e4, grid=8, mults=5, max_iter=100_000, d=10),
         "default": dict(points=9, M_max=1e5, grid=30, mults=17, max_iter=3_000_000, d=50),
         "paper": dict(points=17, M_max=1e6, grid=60, mults=33, max_iter=30_000_000, d=200)}
METHODS = ("gd_descent", "gd_best", "clipped", "clipped_best", "normalized", "normalized_best")


def functions(size):
    """name -> (function, start x0 per M, eps).

    The starts are set so that M runs over the same geometric grid for every function; they are
    then generic numbers, so no step lands on the minimiser exactly by arithmetic accident.
    """
    M = np.geomspace(2.0, size["M_max"], size["points"])
    d = size["d"]
    lam = power_law_spectrum(d, 0.5)
    w = power_law_spectrum(d, 0.5)  # direction of the quartic's start
    f0_cosh = np.sqrt(1.0 + M * M) - 1.0  # CoshSum: M^2 = f0^2 + 2 f0 max(lam), max(lam) = 1
    f0_quartic = M ** (4.0 / 3.0) / 4.0  # QuarticSum: M = (4 f0)^(3/4)
    return {"cosh": (sm.cosh_sum([1.0]), np.arcsinh(M)[:, None], 1e-6),
            "quartic": (sm.quartic_sum(), (M ** (1.0 / 3.0))[:, None], 1e-3),
            "cosh_d": (sm.cosh_sum(lam), np.arccosh(1.0 + f0_cosh / lam.sum())[:, None] * np.ones(d), 1e-6),
            "quartic_d": (sm.quartic_sum(), (f0_quartic / np.sum(w ** 4 / 4.0))[:, None] ** 0.25 * w, 1e-3)}


def mult_rule(rule: sm.StepRule, mults):
    """The rule with eta and gamma scaled by each multiplier (beta, a gradient scale, kept)."""
    s = jnp.asarray(mults, jnp.float64)
    return sm.StepRule(rule.eta * s, rule.gamma * s, jnp.broadcast_to(rule.beta, s.shape))


def study(fn, x0, eps, size):
    x0 = jnp.asarray(x0, jnp.float64)
    l0, l1 = float(fn.l0), float(fn.l1)
    M = float(fn.grad_bound(x0))
    cap = size["max_iter"]
    h = sm.descent_step(l0, l1, M)
    mults = np.sort(10.0 ** np.linspace(-1.0, 3.0, size["mults"]))[::-1]  # large first (see best_descending_step)
    out = {}
    res = sm.run_gd(fn, x0, sm.fixed_step(h), eps, cap)
    out["gd_descent"] = (res, h)
    steps = np.geomspace(h, 4.0 / l0, size["grid"])[::-1]
    i, best, _ = sm.best_descending_step(fn, x0, sm.fixed_step(steps), eps, cap)
    out["gd_best"] = (best, steps[i] if i >= 0 else np.nan)
    for name, rule in (("clipped", sm.zhang_clipped(l0, l1)), ("normalized", sm.zhang_normalized(l0, l1))):
        out[name] = (sm.run_gd(fn, x0, rule, eps, cap), 1.0)
        i, best, _ = sm.best_descending_step(fn, x0, mult_rule(rule, mults), eps, cap)
        out[f"{name}_best"] = (best, mults[i] if i >= 0 else np.nan)
    return M, out


def main():
    args, size = common.parse(__doc__, "figures/data/l0l1_acceleration.npz", SIZES)
    arrays, summary = {}, {}
    with jax.enable_x64(True):
        for name, (fn, starts, eps) in functions(size).items():
            Ms = []
            its, reached, param = ({m: [] for m in METHODS} for _ in range(3))
            for x0 in starts:
                M, out = study(fn, x0, eps, size)
                Ms.append(M)
                for m in METHODS:
                    res, p = out[m]
                    ok = res is not None and bool(res.reached) and not bool(res.diverged)
                    its[m].append(int(res.iterations) if ok else -1)
                    reached[m].append(ok)
                    param[m].append(p)
                print(f"{name} M={M:.3g} " + " ".join(f"{m}={its[m][-1]}" for m in METHODS), flush=True)
            arrays[f"{name}_M"] = np.array(Ms)
            arrays[f"{name}_x0_norm"] = np.linalg.norm(starts, axis=1)
            for m in METHODS:
                arrays[f"{name}_{m}_iterations"] = np.array(its[m])  # -1: not reached (see _reached)
                arrays[f"{name}_{m}_reached"] = np.array(reached[m])
                arrays[f"{name}_{m}_param"] = np.array(param[m], float)
            summary[name] = {"L0": float(fn.l0), "L1": float(fn.l1), "eps": eps, "dim": int(starts.shape[1])}
    save_results(args.out, arrays,
                 {"study": "l0l1_acceleration", "size": args.size, **size, "functions": summary,
                  "methods": list(METHODS),
                  "param": "gd_descent, gd_best: the step; clipped, normalized: 1 (Zhang et al.'s constants); "
                           "*_best: the chosen multiplier of those constants",
                  "fixed_step_grid": "geomspace(1/(L0+L1 M), 4/L0, grid)",
                  "multiplier_grid": "10**linspace(-1, 3, mults)",
                  "descends": "f decreases at every step (a rise beyond 16 ulps disqualifies)"},
                 precision="float64")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
