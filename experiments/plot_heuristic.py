"""Draw figures/heuristic.png from saved results.

Usage: python experiments/plot_heuristic.py figures/data/heuristic.npz figures/heuristic.png
"""

from common import plot_main, seed_mean  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def draw(a, meta):
    cfg = meta["config"]
    dfs = cfg["dfs"]
    curve_dfs = cfg.get("curve_dfs", dfs)
    fig = plt.figure(figsize=(4.4 * len(dfs), 8), constrained_layout=True)
    grid = fig.add_gridspec(2, len(dfs) * len(curve_dfs))
    top = [fig.add_subplot(grid[0, i * len(curve_dfs):(i + 1) * len(curve_dfs)]) for i in range(len(dfs))]
    bottom = [fig.add_subplot(grid[1, k * len(dfs):(k + 1) * len(dfs)]) for k in range(len(curve_dfs))]
    for i, df in enumerate(dfs):
        ax = top[i]
        im = ax.pcolormesh(a["R"], a["kappa"], a[f"fraction_{i}"], vmin=0.5, vmax=1.0, shading="auto",
                           cmap="viridis")
        kb = cfg["best_kappa"][str(df)]
        ax.axhline(kb["kappa"], color="w", ls="--", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="risk R", ylabel="kappa",
               title=f"df={df:g}: CCC(heuristic)/max CCC\nkappa*={kb['kappa']:.2f}, worst {kb['worst_fraction']:.3f}")
        if df not in curve_dfs:
            continue
        ax = bottom[curve_dfs.index(df)]
        t = a["t"]
        for j, label in enumerate(a[f"labels_{i}"]):
            ax.plot(t, seed_mean(a[f"sim_{i}_{j}"]), color=f"C{j}", label=f"{label} (sim)")
            ax.plot(t, a[f"ode_{i}_{j}"], "--", color=f"C{j}", lw=0.9)
        ax.set(xlabel="t", ylabel="risk (dashed: ODE)", yscale="log", title=f"df={df:g}, eta={cfg['eta']}")
        ax.legend(fontsize=7)
    fig.colorbar(im, ax=top, shrink=0.8, label="fraction of max CCC (clipped at 0.5)")
    return fig


if __name__ == "__main__":
    plot_main(draw)
