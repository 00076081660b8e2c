"""Draw figures/smoothness.png from saved results.

Usage: python experiments/plot_smoothness.py figures/data/smoothness.npz figures/smoothness.png
"""

from common import plot_main  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

TITLES = {"xent": "MLP on digits, cross-entropy", "square": "MLP on digits, squared loss (networks.py)"}
STYLE = {"sgd": ("C0", "SGD"), "clipped": ("C3", "clipped SGD"), "gd": ("C2", "full-batch GD")}


def minor_label(v, _):
    """Label the minor ticks 2, 3 and 5 of a decade (for axes spanning little more than a decade)."""
    mantissa = v / 10.0 ** np.floor(np.log10(v))
    return f"{v:g}" if np.any(np.isclose(mantissa, (2.0, 3.0, 5.0))) else ""


def scatter(ax, a, key, tag, extra=""):
    color, label = STYLE[tag]
    g, e = a[f"{key}_grad_norm"], a[f"{key}_smoothness"]
    slope, intercept, se = a[f"{key}_fit"]
    ax.loglog(g, e, ".", ms=2, alpha=0.35, color=color)
    xs = np.geomspace(g.min(), g.max(), 50)
    ax.loglog(xs, np.exp(intercept) * xs ** slope, "-", color=color, lw=1.5,
              label=f"{label}{extra}: slope {slope:.2f} $\\pm$ {se:.2f}")
    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        short = np.log10(lim[1] / lim[0]) < 1.5
        axis.set_minor_formatter(FuncFormatter(minor_label) if short else NullFormatter())


def draw(a, meta):
    cfg = meta["config"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9), constrained_layout=True)
    for ax, name in zip(axes[0, :2], cfg["objectives"]):
        for tag in ("sgd", "clipped"):
            key = f"{name}_{tag}"
            clipped = float(a[f"{key}_clipped_fraction"])
            note = f", {clipped:.0%} of steps clipped" if clipped else ""
            scatter(ax, a, key, tag, f" (lr {float(a[f'{key}_lr']):g}{note})")
        ax.set(xlabel="||grad f|| (full training objective)", ylabel="smoothness estimate",
               title=f"{TITLES[name]}\nclip c = {float(a[f'{name}_clip']):.3g}")
        ax.legend(fontsize=8)
    ax = axes[0, 2]
    for tag in ("sgd", "clipped", "gd"):
        scatter(ax, a, f"ls_{tag}", tag)
    for lam in a["ls_lam_range"]:
        ax.axhline(lam, color="gray", lw=0.8, ls=":")
    ax.set(xlabel="||grad R||", ylabel="smoothness estimate",
           title=f"least squares, lam_i = i^-0.3, d = {cfg['d']} (L1 = 0)\ndotted: lam_min, lam_max")
    ax.legend(fontsize=8)
    for ax, name in zip(axes[1, :2], cfg["objectives"]):
        for tag in ("sgd", "clipped"):
            key = f"{name}_{tag}"
            color, label = STYLE[tag]
            loss = a[f"{key}_loss"]
            ax.semilogy(np.arange(loss.size), loss, color=color,
                        label=f"{label}, lr {float(a[f'{key}_lr']):g}: final {loss[-1]:.3g}")
        ax.set(xlabel="step", ylabel="training loss", title=f"{TITLES[name]}: best learning rate of each")
        ax.legend(fontsize=8)
    ax = axes[1, 2]
    lrs = np.asarray(cfg["lrs"], float)
    for j, name in enumerate(cfg["objectives"]):
        for tag, ls in (("sgd", "-"), ("clipped", "--")):
            final = a[f"{name}_{tag}_grid_final"]
            ok = np.isfinite(final)
            ax.loglog(lrs[ok], final[ok], ls, marker="o", color=f"C{4 + j}", label=f"{name}, {STYLE[tag][1]}")
            if (~ok).any():
                ax.plot(lrs[~ok], np.full((~ok).sum(), np.nanmax(final[ok]) * 3), "x", color=f"C{4 + j}", ms=9)
    ax.set(xlabel="learning rate", ylabel=f"training loss after {cfg['epochs']} epochs",
           title="learning-rate grid (x: diverged, drawn above the rest)")
    ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    plot_main(draw)
