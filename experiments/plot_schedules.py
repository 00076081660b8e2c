"""Draw figures/schedules.png from saved results.

Usage: python experiments/plot_schedules.py figures/data/schedules.npz figures/schedules.png
"""

from common import plot_main, seed_mean  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def draw(a, meta):
    cfg = meta["config"]
    t = a["t"]
    fig, axes = plt.subplots(1, len(cfg["laws"]), figsize=(13, 4.8), constrained_layout=True, squeeze=False)
    axes = axes[0]
    for i, (ax, name) in enumerate(zip(axes, cfg["laws"])):
        res = cfg["results"][name]
        for j, label in enumerate(cfg["labels"]):
            col = "C0" if label.startswith("C-SGD") else f"C{j + 1}"
            ax.plot(t, seed_mean(a[f"sim_{i}_{j}"]), color=col,
                    label=f"{label}: R(T) = {res[label]['sim_final']:.3f} (ODE {res[label]['ode_final']:.3f})")
            ax.plot(t, a[f"ode_{i}_{j}"], "--", color=col, lw=0.9)
        ax.set(xlabel="t", ylabel="risk (solid: mean of seeds, dashed: ODE)", yscale="log",
               title=f"{name} noise")
        ax.legend(fontsize=7)
    return fig


if __name__ == "__main__":
    plot_main(draw)
