"""Draw figures/dp.png from the results of experiments/dp.py (saved results only)."""

import numpy as np

import common  # noqa: F401  (sets the Agg backend)
import matplotlib.pyplot as plt


def draw(a, meta):
    cfg = meta["config"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    ax = axes[0]
    for j, S in enumerate(a["dp_S"]):
        line, = ax.loglog(a["dp_c"], a[f"dp_ode_{j}"], label=f"S = {S:g} (ODE)")
        ax.errorbar(a["dp_sim_c"], a[f"dp_sim_{j}"], yerr=2 * a[f"dp_sim_se_{j}"], fmt="o",
                    color=line.get_color(), ms=4)
        best = np.nanargmin(a[f"dp_ode_{j}"])
        ax.axvline(a["dp_c"][best], color=line.get_color(), ls=":", lw=0.8)
    ax.set_xlabel("threshold c")
    ax.set_ylabel(f"R(T = {cfg['T']:g}) at the best learning rate")
    ax.set_title(f"DP-SGD, per-sample, B = {cfg['B']}: best c (dotted) vs noise multiplier S")
    ax.legend(fontsize=8, title="points: simulation ±2 s.e.", title_fontsize=8)

    ax = axes[1]
    K = a["pre_K"]
    ax.plot(K, a["pre_ode"], "-", label="ODE")
    ax.errorbar(K, a["pre_sim"], yerr=2 * a["pre_sim_se"], fmt="o", ms=4, label="simulation ±2 s.e.")
    ax.set_yscale("log")
    ax.set_xlabel("pre-clip noise K")
    s = cfg["summary"]["preclip"]
    ax.set_ylabel(f"R(T = {s['T']:g})")
    ax.set_title(f"Rademacher noise ±1, c = {s['c']:g}, eta = {s['eta']:g}: R(T) against K")
    ax.legend(fontsize=8)

    ax = axes[2]
    t = a["pre_t"]
    best = int(np.argmin(a["pre_ode"]))
    for i, label in ((0, "K = 0 (stalls: mu -> 0)"), (best, f"K = {K[best]:.2g}")):
        line, = ax.semilogy(t, a[f"pre_curve_ode_{i}"], label=f"{label}, ODE")
        sim = a[f"pre_curve_sim_{i}"]
        ax.semilogy(t, np.nanmean(sim, axis=0), "o", ms=3, color=line.get_color(), label=f"{label}, sim. mean")
    ax.set_xlabel("t = steps / Tr K")
    ax.set_ylabel("risk R(t)")
    ax.set_title("pre-clip noise revives clipped SGD")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    common.plot_main(draw)
