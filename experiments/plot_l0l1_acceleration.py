"""Draw figures/l0l1_acceleration.png from saved results.

Usage: python experiments/plot_l0l1_acceleration.py figures/data/l0l1_acceleration.npz \
           figures/l0l1_acceleration.png
"""

from common import plot_main  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TITLES = {"cosh": "cosh x - 1 (1-D)", "quartic": "x^4 / 4 (1-D)",
          "cosh_d": "sum_i lam_i (cosh x_i - 1), lam_i = i^-0.5", "quartic_d": "sum_i x_i^4 / 4, x0 ~ (i^-0.5)_i"}
STYLE = {"gd_descent": ("C0", "-", "GD, step 1/(L0 + L1 M)"),
         "gd_best": ("C0", "--", "GD, best descending fixed step"),
         "clipped": ("C3", "-", "clipped GD, Zhang et al.'s constants"),
         "clipped_best": ("C3", "--", "clipped GD, best multiplier"),
         "normalized": ("C2", "-", "normalised GD, Zhang et al.'s constants"),
         "normalized_best": ("C2", "--", "normalised GD, best multiplier")}


def draw(a, meta):
    cfg = meta["config"]
    names = list(cfg["functions"])
    fig, axes = plt.subplots(2, 2, figsize=(13, 10), constrained_layout=True)
    cap = cfg["max_iter"]
    for ax, name in zip(axes.flat, names):
        fn = cfg["functions"][name]
        M = a[f"{name}_M"]
        for m in cfg["methods"]:
            color, ls, label = STYLE[m]
            its = a[f"{name}_{m}_iterations"].astype(float)
            ok = a[f"{name}_{m}_reached"]
            ax.loglog(M[ok], its[ok], ls, marker="o", ms=4, color=color, label=label)
            if (~ok).any():
                ax.plot(M[~ok], np.full((~ok).sum(), cap), "x", color=color, ms=10, mew=2)
        ax.axhline(cap, color="gray", lw=0.8, ls=":")
        ax.text(M[0], cap * 1.15, f"cap {cap:.0e} (x: not reached)", fontsize=8, color="gray")
        ref = a[f"{name}_gd_descent_iterations"][0]
        if ref > 0:
            ax.loglog(M, ref * M / M[0], ":", color="k", lw=0.8, label="proportional to M")
        dim = fn["dim"]
        ax.set(xlabel="M = sup ||grad f|| on {f <= f(x0)}", ylabel=f"iterations to ||grad f|| <= {fn['eps']:g}",
               title=f"{TITLES[name]}{'' if dim == 1 else f', d = {dim}'}: "
                     f"(L0, L1) = ({fn['L0']:g}, {fn['L1']:g})",
               ylim=(0.7, cap * 3))
    axes.flat[0].legend(fontsize=8, loc="center left")
    return fig


if __name__ == "__main__":
    plot_main(draw)
