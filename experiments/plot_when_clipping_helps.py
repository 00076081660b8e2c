"""Draw figures/when_clipping_helps.png from saved results.

Usage: python experiments/plot_when_clipping_helps.py figures/data/when_clipping_helps.npz figures/when_clipping_helps.png
"""

from common import plot_main, seed_mean  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def draw(a, meta):
    cfg = meta["config"]
    c, t = a["c"], a.get("t")
    fin = np.isfinite(c)
    n = len(cfg["laws"])
    fig, axes = plt.subplots(2, n, figsize=(4.6 * n, 8), constrained_layout=True, squeeze=False)
    for i, name in enumerate(cfg["laws"]):
        best = cfg["best"][name]
        ax = axes[0, i]
        sim_best_c = np.min(a[f"sim_final_{i}"], axis=1)
        ode_best_c = np.min(a[f"ode_final_{i}"], axis=1)
        ax.semilogx(c[fin], ode_best_c[fin], "k-", label="ODE (best eta per c)")
        ax.semilogx(c[fin], np.where(np.isfinite(sim_best_c[fin]), sim_best_c[fin], np.nan), "o",
                    color="C0", label=f"C-SGD, mean of {cfg['seeds']} seeds")
        if np.isfinite(sim_best_c[-1]):
            ax.axhline(sim_best_c[-1], color="C3", ls="--", label="best unclipped SGD (sim)")
            ax.axhline(ode_best_c[-1], color="C3", ls=":", label="best unclipped SGD (ODE)")
        else:
            ax.text(0.05, 0.92, "unclipped SGD: no stable eta\n(infinite noise variance)",
                    transform=ax.transAxes, color="C3", fontsize=8, va="top")
        ax.set(xlabel="threshold c", ylabel=f"final risk R(T={cfg['T']:g})", title=name)
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper right")
        ax = axes[1, i]
        for label, col in (("clipped", "C0"), ("unclipped", "C3")):
            if best.get(label) is None:
                continue
            sim = a[f"curve_{label}_sim_{i}"]
            b = best[label]
            tag = f"c={b['c']:.3g}" if label == "clipped" else "SGD"
            ax.plot(t, seed_mean(sim), color=col, label=f"{tag}, eta={b['eta']:.3g} (sim)")
            ax.plot(t, a[f"curve_{label}_ode_{i}"], "k--", lw=1)
        gain = (best["unclipped"]["sim_final"] / best["clipped"]["sim_final"]
                if best.get("unclipped") and best.get("clipped") else np.inf)
        ax.set(xlabel="t", ylabel="risk", yscale="log",
               title=f"best configurations (dashed: ODE); gain x{gain:.3g}")
        ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    plot_main(draw)
