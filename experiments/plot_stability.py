"""Draw figures/stability.png from saved results.

Usage: python experiments/plot_stability.py figures/data/stability.npz figures/stability.png
"""

from common import plot_main  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def draw(a, meta):
    cfg = meta["config"]
    c = a["c"]
    fin = np.isfinite(c)
    fig, axes = plt.subplots(1, len(cfg["laws"]), figsize=(12, 4.6), constrained_layout=True, squeeze=False)
    axes = axes[0]
    for ax, name in zip(axes, cfg["laws"]):
        ax.loglog(c[fin], a[f"{name}_theory"][fin], "k-", label="theory: 2 mu/nu at R0")
        ax.loglog(c[fin], a[f"{name}_ode"][fin], "C0--", label="ODE, bisection on eta")
        ax.loglog(c[fin], a[f"{name}_sim"][fin], "o", color="C1", label=f"C-SGD, bisection ({cfg['seeds']} seeds)")
        ax.axhline(a[f"{name}_sim"][~fin][0], color="C1", ls=":", label="unclipped SGD (simulated)")
        ax.axhline(2.0, color="gray", lw=0.8, label="unclipped SGD theory: 2")
        ax.set(xlabel="threshold c", ylabel="largest stable eta",
               title=f"{name} noise, sigma={cfg['sigma']}: stable iff R(T={cfg['T']:g}) < R0")
        ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    plot_main(draw)
