"""Draw figures/risk_curves.png from saved results (no recomputation).

Diverged runs are masked from their divergence on and marked with an x at the time they
diverged, never drawn as nan.

Usage: python experiments/plot_risk_curves.py figures/data/risk_curves.npz figures/risk_curves.png
"""

from common import plot_main, seed_mean  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def band(ax, t, runs, color, label):
    """Mean (of runs alive) and 10-90 % spread over seeds."""
    alive = np.isfinite(runs)
    mean = seed_mean(runs)
    lo = np.nanpercentile(np.where(alive, runs, np.nan), 10, axis=0) if alive.any() else mean
    hi = np.nanpercentile(np.where(alive, runs, np.nan), 90, axis=0) if alive.any() else mean
    ax.plot(t, mean, color=color, lw=1.8, label=label)
    ax.fill_between(t, lo, hi, color=color, alpha=0.25, lw=0)


def draw(a, meta):
    import warnings

    warnings.simplefilter("ignore", RuntimeWarning)  # percentiles of all-diverged columns
    cfg = meta["config"]
    t = a["t_sim"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    for ax, name in zip(axes, ["gaussian", "cauchy"]):
        p = cfg["panels"][name]
        band(ax, t, a[f"{name}_sgd_clipped"], "C0", f"C-SGD, c={p['clip']} (mean, 10-90%)")
        band(ax, t, a[f"{name}_hsgd_clipped"], "C2", "C-HSGD (mean, 10-90%)")
        ax.plot(t, a[f"{name}_ode_clipped"], "k--", lw=1.4, label="ODE, clipped")
        if name == "gaussian":
            ax.plot(t, a[f"{name}_ode_unclipped"], ":", color="gray", lw=1.6, label="ODE, unclipped SGD")
        else:
            runs = a[f"{name}_sgd_unclipped"]
            for i, r in enumerate(runs):
                ax.plot(t, r, color="C3", lw=0.8, alpha=0.7,
                        label="unclipped SGD (each seed)" if i == 0 else None)
            div = a[f"{name}_sgd_unclipped_diverged_at"]
            hit = np.isfinite(div)
            if hit.any():
                ax.plot(div[hit], np.full(hit.sum(), 1e6 * 0.9), "x", color="C3",
                        label=f"diverged ({hit.sum()} of {len(div)} seeds)")
            ode_div = float(a[f"{name}_ode_unclipped_diverged_at"])
            if np.isfinite(ode_div):
                ax.axvline(ode_div, color="gray", ls=":", lw=1)
                ax.text(ode_div, 2.0, " unclipped ODE: infinite noise term", color="gray", fontsize=8)
        ax.set_yscale("log")
        ax.set(xlabel="t = steps / Tr K", ylabel="risk R(t)",
               title=f"{name} noise, eta={p['eta']}, lam_i = i^-0.3, d={cfg['d']}, {cfg['seeds']} seeds")
        ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    plot_main(draw)
