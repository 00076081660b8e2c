"""Draw figures/clip_rules.png from the results of experiments/clip_rules.py (saved results only)."""

import numpy as np

import common  # noqa: F401  (sets the Agg backend)
import matplotlib.pyplot as plt


def draw(a, meta):
    cfg = meta["config"]
    laws, rule_names = cfg["laws"], cfg["rules"]
    fig, axes = plt.subplots(1, len(laws), figsize=(5.2 * len(laws), 4.3), squeeze=False)
    for i, law in enumerate(laws):
        ax = axes[0, i]
        for j, rname in enumerate(rule_names):
            line, = ax.loglog(a["c"], a[f"ode_{i}_{j}"], label=f"{rname} (ODE)")
            ax.errorbar(a["sim_c"], a[f"sim_{i}_{j}"], yerr=2 * a[f"sim_se_{i}_{j}"], fmt="o", ms=4,
                        color=line.get_color())
        sgd = float(a[f"sgd_ode_{i}"])
        if np.isfinite(sgd):
            ax.axhline(sgd, color="k", ls="--", lw=1, label="unclipped SGD (ODE)")
            if f"sgd_sim_{i}" in a:
                m, se = a[f"sgd_sim_{i}"]
                ax.axhspan(m - 2 * se, m + 2 * se, color="k", alpha=0.12, label="unclipped SGD (sim ±2 s.e.)")
        else:
            ax.text(0.04, 0.04, "unclipped SGD diverges\n(infinite noise variance)", transform=ax.transAxes,
                    fontsize=8)
        ax.set_title(f"{law}, B = {cfg['B']}, equal samples")
        ax.set_xlabel("threshold c")
        ax.set_ylabel(f"R(T = {cfg['T']:g}) at the best learning rate")
        ax.legend(fontsize=7, title="points: simulation ±2 s.e.", title_fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    common.plot_main(draw)
