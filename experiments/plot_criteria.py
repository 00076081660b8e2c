"""Draw figures/criteria.png from the saved criteria results (no recomputation).

Usage: python experiments/plot_criteria.py figures/data/criteria.npz figures/criteria.png
"""

from common import plot_main  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def draw(a, meta):
    cfg = meta["config"]
    names = cfg["laws"]
    c = a["c"]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.6), constrained_layout=True)
    colors = ["k"] + list(plt.cm.viridis(np.linspace(0.15, 0.9, len(names) - 1)))
    # Laws of infinite variance (df <= 2) have nu = 0, so CCC = inf at every finite c: say so
    # in the legend instead of leaving a silently empty curve.
    infinite = [not np.isfinite(a[f"ccc_{i}"]).any() for i in range(len(names))]
    label = [n + (" (CCC = inf: infinite variance)" if inf else "") for n, inf in zip(names, infinite)]
    styles = ["-", "--", ":"]
    ax = axes[0]
    for i, name in enumerate(names):
        for j, R in enumerate(a["R_levels"]):
            ax.semilogx(c, np.where(np.isfinite(a[f"ccc_{i}"][j]), a[f"ccc_{i}"][j], np.nan),
                        styles[j], color=colors[i], label=label[i] if j == 0 else None)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(2 / np.pi, color="gray", lw=0.8, ls="-.")
    ax.set(xlabel="threshold c", ylabel="CCC = mu^2 / nu",
           title="CCC (solid R=%g, dashed %g, dotted %g)" % tuple(a["R_levels"]), ylim=(0, 4))
    ax.legend(fontsize=7, loc="lower right")

    ax = axes[1]
    for i, name in enumerate(names):
        cs = a[f"cstar_{i}"]
        finite = np.isfinite(cs)
        tag = "" if finite.any() else " (c* = inf: never clip)"
        ax.loglog(a["R_grid"][finite], cs[finite], color=colors[i], label=name + tag)
    ax.set(xlabel="risk R", ylabel="c*(R) = argmax CCC",
           title="optimal threshold (ends where c* = inf)")
    ax.legend(fontsize=8)

    ax = axes[2]
    for i, name in enumerate(names):
        if not infinite[i]:
            ax.semilogx(a["R_grid"], a[f"cccstar_{i}"], color=colors[i], label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set(xlabel="risk R", ylabel="max_c CCC", title="best attainable CCC (>1: clipping helps)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)

    ax = axes[3]
    for k, (name, col) in enumerate(zip(cfg["stability_laws"], ["C0", "C3"])):
        for j, R in enumerate(a["R_levels"]):
            ax.semilogx(c, a[f"csc_{name}"][j], styles[j], color=col,
                        label=f"{name}" if j == 0 else None)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set(xlabel="threshold c", ylabel="mu / nu", title="stability: eta_max = 2 mu/nu (>1 widens)")
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 1e3)
    ax.legend(fontsize=8)
    fig.suptitle("Clipping criteria, noise scale 1 (THEORY.md section 4)")
    return fig


if __name__ == "__main__":
    plot_main(draw)
