"""Draw figures/schedules.png from saved results.

Usage: python experiments/plot_schedules.py figures/data/schedules.npz figures/schedules.png
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clipdyn.results import load_results  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import common  # noqa: E402


def main(src, dst):
    a, meta = load_results(src)
    cfg = meta["config"]
    t = a["t"]
    fig, axes = plt.subplots(1, len(cfg["laws"]), figsize=(13, 4.8), constrained_layout=True, squeeze=False)
    axes = axes[0]
    for i, (ax, name) in enumerate(zip(axes, cfg["laws"])):
        res = cfg["results"][name]
        for j, label in enumerate(cfg["labels"]):
            col = "C0" if label.startswith("C-SGD") else f"C{j + 1}"
            ax.plot(t, common.seed_mean(a[f"sim_{i}_{j}"]), color=col,
                    label=f"{label}: R(T) = {res[label]['sim_final']:.3f} (ODE {res[label]['ode_final']:.3f})")
            ax.plot(t, a[f"ode_{i}_{j}"], "--", color=col, lw=0.9)
        ax.set(xlabel="t", ylabel="risk (solid: mean of seeds, dashed: ODE)", yscale="log",
               title=f"{name} noise")
        ax.legend(fontsize=7)
    fig.savefig(dst, dpi=110)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
