"""Draw figures/clipping_bias.png from saved results.

Usage: python experiments/plot_clipping_bias.py figures/data/clipping_bias.npz figures/clipping_bias.png
"""

from common import plot_main  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def draw(a, meta):
    cfg = meta["config"]
    skewed = np.asarray(cfg["skewed"], float)
    x_star = skewed.mean()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5.0), constrained_layout=True)
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(a["field_k"])))

    # (1) the exact clipped-gradient field
    x = a["x"]
    lo, hi = a["zeros_example2"][0]
    ax1.axvspan(lo, hi, color="0.88", zorder=0)
    ax1.plot(x, a["field_example2"][0], color="k", lw=1.0,
             label=f"Example 2, a = (-3, 3), k = 0: h = 0 on [{lo:g}, {hi:g}]")
    for k, h, z, col in zip(a["field_k"], a["field_skewed"], a["zeros_skewed_field"], colors):
        ax1.plot(x, h, color=col, lw=1.8, label=f"a = (-1, 0, 5), k = {k:g}")
        ax1.plot([z[0]], [0.0], "o", color=col, ms=6)
    ax1.axvline(x_star, color="C3", ls=":", label=f"x* = {x_star:.3g}")
    ax1.axhline(0.0, color="0.5", lw=0.6)
    ax1.set(xlabel="x", ylabel="h(x) = mean_i E clip_c(x - a_i + k zeta)", ylim=(-1.1, 1.1),
            title=f"exact clipped-gradient field, c = {cfg['clip']:g} (dots: zeros)")
    ax1.legend(fontsize=7.5, loc="upper left")

    # (2) the bias against k, its asymptote, and the slope it costs
    k = a["k"]
    pos = k > 0
    for name, label, col in (("skewed", "a = (-1, 0, 5)", "C0"),
                             ("unbiased_at_0", "a = (0, 0, 0, 1)", "C1")):
        b = a[f"bias_{name}"]
        ax2.loglog(k[pos], b[pos], color=col, lw=2,
                   label=f"{label}: |zero - x*| (k = 0: {b[0]:.3g})")
        ax2.loglog(k[pos], np.abs(a[f"mu3_{name}"]) / (6 * k[pos] ** 2), color=col, ls="--", lw=1,
                   label="|mu_3| / (6 k^2), eq. (8)")
    sk = a["sgd_k"] > 0
    gap = np.abs(a["sgd_tail_mean"] - x_star)[sk]
    err = 2 * a["sgd_tail_se"][sk]
    floor = 1e-5  # the axis' bottom: a bar reaching it means "consistent with no bias"
    ax2.errorbar(a["sgd_k"][sk], gap, yerr=[np.minimum(err, gap - floor), err], fmt="s", color="C0",
                 mfc="white", capsize=3,
                 label=f"clipped SGD, |mean - x*| +- 2 s.e. ({cfg['seeds']} seeds)")
    ax2.set(xlabel="pre-clip perturbation k", ylabel="bias", ylim=(floor, 5),
            title="bias against k (right: slope h'(zero), the price)")
    ax2.legend(fontsize=7.5, loc="lower left")
    twin = ax2.twinx()
    twin.loglog(k[pos], a["slope_skewed"][pos], color="0.4", ls=":", lw=1.5)
    big = k >= 1
    twin.loglog(k[big], np.sqrt(2 / np.pi) * cfg["clip"] / k[big], color="0.7", ls=":", lw=1)
    twin.set_ylim(3e-3, 3)
    twin.set_ylabel("h'(zero) of a = (-1, 0, 5) (dotted; light: c sqrt(2/pi) / k)", color="0.4")

    # (3) clipped SGD runs against the predicted zeros
    t = a["sgd_t"]
    sgd_colors = plt.cm.plasma(np.linspace(0.0, 0.8, len(a["sgd_k"])))
    for kk, p, z, col in zip(a["sgd_k"], a["sgd_paths"], a["sgd_zero"], sgd_colors):
        q10, q50, q90 = np.percentile(p, [10, 50, 90], axis=0)
        ax3.fill_between(t, q10, q90, color=col, alpha=0.18, lw=0)
        ax3.plot(t, q50, color=col, lw=1.2, label=f"k = {kk:g}: median, 10-90 % of seeds")
        ax3.axhline(z, color=col, ls="--", lw=1.2)
    ax3.axhline(x_star, color="C3", ls=":", lw=1.5, label="x*")
    ax3.set(xlabel="step", ylabel="x",
            title=f"clipped SGD, a = (-1, 0, 5), step {cfg['step']:g} (dashed: zeros)")
    ax3.legend(fontsize=7.5, loc="lower right")
    return fig


if __name__ == "__main__":
    plot_main(draw)
