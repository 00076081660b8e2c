"""Draw figures/concentration.png from saved results (no recomputation).

Usage: python experiments/plot_concentration.py figures/data/concentration.npz figures/concentration.png
"""

from common import plot_main  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def draw(a, meta):
    d, gap = a["d"], a["gap"]
    mean = gap.mean(axis=1)
    se = gap.std(axis=1, ddof=1) / np.sqrt(gap.shape[1]) if gap.shape[1] > 1 else 0 * mean
    fig, ax = plt.subplots(figsize=(6.4, 4.8), constrained_layout=True)
    for j in range(gap.shape[1]):
        ax.loglog(d, gap[:, j], ".", color="C0", alpha=0.35, label="single runs" if j == 0 else None)
    ax.errorbar(d, mean, yerr=se, fmt="o-", color="C0", label="mean over seeds (+- s.e.)")
    ref = mean[0] * np.sqrt(d[0] / d)
    ax.loglog(d, ref, "k--", label="d^-1/2 (Theorem 1)")
    ax.set(xlabel="dimension d (d_int = 0.55 d)", ylabel="sup_t |R_sim - R_ode| / R_ode",
           title=f"ODE vs single C-SGD runs: fitted slope {float(a['slope']):.2f}")
    ax.legend()
    return fig


if __name__ == "__main__":
    plot_main(draw)
