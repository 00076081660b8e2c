"""Draw figures/network_clipping.png from saved results.

Usage: python experiments/plot_network_clipping.py figures/data/network_clipping.npz figures/network_clipping.png
"""

from common import plot_main  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clipdyn.runs.results import seed_statistics  # noqa: E402

STYLE = {"none": ("k", "-"), "batch": ("C0", "-"), "per-sample": ("C3", "-"), "index": ("C1", "--"),
         "micro-clip": ("C2", "-"), "accum-clip": ("C4", ":")}


def label(rule, n, r, a, cfg):
    lr, c = a["best_lr"][n, r], a["best_clip"][n, r]
    div = int((a["diverged_epoch"][n, r] >= 0).sum())
    text = f"{rule} (lr {lr:.2g}" + ("" if rule == "none" else f", C {c:.2g}") + ")"
    return text + (f", {div}/{a['diverged_epoch'].shape[2]} diverged" if div else "")


def time_basis(a, cfg):
    """Seconds per epoch per rule and the axis label: wall-clock, unless the machine was busier
    than its cores while timing (then the process's CPU time, and the label says so)."""
    load, cores = float(np.max(a["load_average"])), cfg["cpu_count"]
    if load <= cores:
        return a["sec_per_epoch"], "wall-clock training time [s]"
    return a["cpu_sec_per_epoch"], f"training CPU time [s] (machine shared: load {load:.0f} on {cores} cores)"


def curves(ax, a, cfg, n, metric, wall):
    epochs = a["epochs"]
    per_epoch = time_basis(a, cfg)[0]
    for r, rule in enumerate(cfg["rules"]):
        mean, se, _ = seed_statistics(a[metric][n, r])
        x = epochs * per_epoch[r] if wall else epochs
        keep = slice(1, None) if wall else slice(None)
        color, ls = STYLE.get(rule, (None, "-"))
        ax.plot(x[keep], mean[keep], color=color, ls=ls, label=label(rule, n, r, a, cfg))
        ax.fill_between(x[keep], (mean - se)[keep], (mean + se)[keep], color=color, alpha=0.15, lw=0)
    if wall:
        ax.set_xscale("log")
    if metric == "test_loss":
        ax.set_yscale("log")


def draw(a, meta):
    cfg = meta["config"]
    S = a["test_acc"].shape[2]
    fig = plt.figure(figsize=(18, 13), constrained_layout=True)
    grid = fig.add_gridspec(3, 4)
    for n, noise in enumerate(cfg["noises"]):
        level = cfg["label_noise"][noise]
        what = "clean targets" if level == 0 else f"targets + {level:g} t(df {cfg['noise_df']:g}) noise"
        for j, (metric, wall) in enumerate([("test_acc", False), ("test_acc", True),
                                             ("test_loss", False), ("test_loss", True)]):
            ax = fig.add_subplot(grid[n, j])
            curves(ax, a, cfg, n, metric, wall)
            ax.set(xlabel=time_basis(a, cfg)[1] if wall else "epoch",
                   ylabel="test accuracy" if metric == "test_acc" else "test loss (clean targets)",
                   title=f"{what}, {S} seeds (mean +- s.e.)")
            ax.title.set_fontsize(10)
            ax.xaxis.label.set_fontsize(9)
            if metric == "test_acc":
                ax.set_ylim(max(0.0, np.nanmin(np.nanmean(a["test_acc"][n, :, :, -1], axis=1)) - 0.15), 1.0)
            if j == 0:
                ax.legend(fontsize=7, loc="lower right")
    # Final test accuracy per rule.
    ax = fig.add_subplot(grid[2, :2])
    rules = cfg["rules"]
    width = 0.8 / len(cfg["noises"])
    for n, noise in enumerate(cfg["noises"]):
        final = a["test_acc"][n, :, :, -1]
        mean, se, count = seed_statistics(final.T)
        xs = np.arange(len(rules)) + (n - (len(cfg["noises"]) - 1) / 2) * width
        ax.bar(xs, mean, width, yerr=se, capsize=3, color=f"C{7 + n}", label=f"{noise} ({count.min()}+ seeds alive)")
        for x, m in zip(xs, mean):
            ax.text(x, m + 0.005, f"{m:.3f}", ha="center", va="bottom", fontsize=7)
    per_epoch, basis = time_basis(a, cfg)
    unit = "ms/epoch" if basis.startswith("wall") else "ms CPU/epoch"
    ax.set_xticks(np.arange(len(rules)), [f"{r}\n{1e3 * t:.1f}\n{unit}" for r, t in zip(rules, per_epoch)],
                  fontsize=8)
    lo = np.nanmin(np.nanmean(a["test_acc"][:, :, :, -1], axis=2))
    ax.set(ylim=(max(0.0, lo - 0.1), 1.0), ylabel=f"final test accuracy (epoch {a['epochs'][-1]})",
           title="tuned rules, final test accuracy (mean +- s.e.) and training time per epoch")
    ax.legend(fontsize=8)
    # Chen et al.'s symmetry proxy.
    ax = fig.add_subplot(grid[2, 2:])
    ep = a["sym_epochs"]
    for n, noise in enumerate(cfg["noises"]):
        for q, rule in enumerate(cfg["symmetry_rules"]):
            h = a["sym_h"][n, q]
            se = h.std(axis=1, ddof=1) / np.sqrt(h.shape[1])
            ax.errorbar(ep + 0.15 * (2 * n + q), h.mean(axis=1), yerr=se, marker="os"[n],
                        color=STYLE[rule][0], ls=["-", "--"][n], capsize=3,
                        label=f"{noise}, {rule} run")
            null = a["sym_null"][n, q].reshape(len(ep), -1)
            ax.plot(ep + 0.15 * (2 * n + q), np.quantile(null, 0.95, axis=1), ls="none", marker="_",
                    ms=14, mew=2, color=STYLE[rule][0])
    ax.axhline(float(a["sym_skewed"]), color="gray", ls=":", label="skewed reference (centred exponential)")
    ax.set(xscale="symlog", xlabel="epoch (checkpoint)", ylabel="asymmetry H = (A - D) / A",
           yscale="log",
           title="Chen et al.'s symmetry proxy: per-sample gradient noise on random 2-D subspaces\n"
                 "(mean +- s.e. over subspaces; bars: 95 % quantile of the sign-flip null)")
    ax.legend(fontsize=7)
    fig.suptitle("PS-Clip-SGD's rules on a 64-64-10 MLP, digits, SGD with momentum 0.9, batch 32 "
                 f"(micro-batches of {cfg['micro']}), index thresholds C k^(1/{cfg['beta']:g})")
    return fig


if __name__ == "__main__":
    plot_main(draw)
