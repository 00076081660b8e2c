"""Draw figures/real_data.png from saved results (no recomputation).

Panels: (a) risk curves at the learning rate ``curve_eta``: unclipped SGD, C-SGD at the simulation's best
threshold and at a small one, simulation mean and 10-90 % spread over seeds against the ODE;
(b) final risk against the threshold for every learning rate, ODE (line), simulation on the data
and on its Gaussian twin (mean and 10-90 %), each one's best threshold marked; (c) ``||x_j||^2 / Tr K`` over the dataset's rows
(the ODE assumes it concentrates at 1); (d) the residual law against a Gaussian of the same mean
and variance. Diverged runs are left out of means from their divergence on and counted in the
legend, never drawn as nan.

Usage: python experiments/plot_real_data.py figures/data/real_data.npz figures/real_data.png
"""

from common import plot_main  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clipdyn.runs.results import seed_statistics  # noqa: E402


def spread(runs):
    """Mean of the runs alive and their 10-90 % percentiles, per time."""
    mean = seed_statistics(runs)[0]
    alive = np.where(np.isfinite(runs), runs, np.nan)
    if np.isfinite(alive).sum(axis=0).min() == 0:
        return mean, mean, mean
    return mean, np.nanpercentile(alive, 10, axis=0), np.nanpercentile(alive, 90, axis=0)


def label_c(c):
    return "inf (SGD)" if not np.isfinite(c) else f"{c:.3g}"


def draw(a, meta):
    import warnings

    warnings.simplefilter("ignore", RuntimeWarning)  # percentiles of all-diverged columns
    cfg = meta["config"]
    ds = cfg["dataset"]
    c, etas, t = a["c"], a["etas"], a["t"]
    fin = np.isfinite(c)
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5), constrained_layout=True)
    fig.suptitle(f"{ds['data']}: N={ds['N']}, d={ds['d']}, d_int={ds['d_int']:.3g}, "
                 f"R0={ds['R0']:.3g}, {cfg['seeds']} seeds, block engine")

    ax = axes[0, 0]
    k = int(np.argmin(np.abs(etas - cfg["curve_eta"])))
    s0 = cfg["summary"][k]
    j_best = int(np.flatnonzero(c == float(s0["c_best_sim"]))[0])  # JSON writes inf as "inf"
    picks = [(len(c) - 1, "C3"), (j_best, "C0"), (min(1, len(c) - 2), "C2")]
    for j, color in picks:
        runs = a["sim_risk"][k, :, j]
        mean, lo, hi = spread(runs)
        n_div = int(np.isfinite(a["sim_diverged_at"][k, :, j]).sum())
        extra = f", {n_div} diverged" if n_div else ""
        ax.plot(t, mean, color=color, lw=1.8, label=f"C-SGD c={label_c(c[j])} (mean, 10-90%{extra})")
        ax.fill_between(t, lo, hi, color=color, alpha=0.2, lw=0)
        ax.plot(t, a["ode_risk"][k, j], "--", color=color, lw=1.3, alpha=0.9)
    ax.plot([], [], "k--", label="ODE (same colour)")
    ax.set_yscale("log")
    R0 = float(ds["R0"])
    ax.set_ylim(top=30 * R0)  # unclipped SGD may leave the plot: its legend entry says so
    ax.set(xlabel="t = steps / Tr K", ylabel="risk R(t)", title=f"(a) risk curves, eta={etas[k]:g}")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    tops = []
    for i, eta in enumerate(etas):
        color = f"C{i}"
        s = cfg["summary"][i]
        ode_final = a["ode_risk"][i, :, -1]
        n_div = int(np.isfinite(a["sim_diverged_at"][i, :, -1]).sum())
        sgd = f"SGD diverged in {n_div}/{cfg['seeds']} seeds" if n_div else "SGD converged"
        ax.plot(c[fin], ode_final[fin], "-", color=color, lw=1.5,
                label=f"ODE, eta={eta:g}: best c {label_c(float(s['c_best_ode']))}; SGD (dotted) {ode_final[-1]:.3g}")
        ax.axhline(ode_final[-1], color=color, ls=":", lw=1)
        for key, style, what in (("sim", "o", "C-SGD on the data"), ("twin", "s", "Gaussian twin")):
            runs = a[f"{key}_risk"][i, :, :, -1]  # (S, C)
            stats = [spread(runs[:, j:j + 1]) for j in range(len(c))]
            mean, lo, hi = (np.array([m[k][0] for m in stats]) for k in range(3))
            tops.append(np.nanmax(hi[fin]))
            best = label_c(float(s[f"c_best_{key}"]))
            note = f"; {sgd}" if key == "sim" else ""
            ax.errorbar(c[fin] * (1.0 if key == "sim" else 1.06), mean[fin],
                        yerr=[mean[fin] - lo[fin], hi[fin] - mean[fin]], fmt=style, color=color,
                        mfc=color if key == "sim" else "white", ms=4, capsize=2, lw=0.8,
                        label=f"{what}, eta={eta:g}: best c {best}{note}")
        for key, mark in (("c_best_ode", "-"), ("c_best_sim", "--")):
            if np.isfinite(float(s[key])):
                ax.axvline(float(s[key]), color=color, ls=mark, lw=0.8, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(top=max(tops) * 3.5)
    ax.set(xlabel="threshold c (vertical lines: best c by ODE solid, by simulation dashed)",
           ylabel=f"R(T={cfg['T']:g})", title="(b) final risk against the threshold (mean, 10-90%)")
    ax.legend(fontsize=7, loc="upper center")

    ax = axes[1, 0]
    r = a["row_norm2_over_trace"]
    ax.hist(r, bins=np.geomspace(max(r.min(), 1e-3), r.max() * 1.01, 60), color="C0", alpha=0.8)
    ax.axvline(1.0, color="k", ls="--", lw=1, label="Gaussian features, d_int -> inf: 1")
    q = cfg["row_norm2_over_trace_quantiles"]
    ax.set_xscale("log")
    ax.set(xlabel="||x_j||^2 / Tr K", ylabel="rows",
           title=f"(c) r = ||x_j||^2 / Tr K: median {q['q50']:.2f}, 99% {q['q99']:.2f}, max {q['max']:.1f}, "
                 f"E r^2 = {ds['row_norm2_second_moment']:.2f}")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    eps = a["residuals"]
    ax.hist(eps, bins=60, density=True, color="C1", alpha=0.8, label="residuals eps_j (the noise law)")
    x = np.linspace(eps.min(), eps.max(), 400)
    m, s = eps.mean(), eps.std()
    ax.plot(x, np.exp(-0.5 * ((x - m) / s) ** 2) / (s * np.sqrt(2 * np.pi)), "k--", lw=1.2,
            label="Gaussian, same mean and variance")
    ax.set(xlabel="eps", ylabel="density",
           title=f"(d) residual law: E eps^2 = {ds['residual_second_moment']:.3g}, "
                 f"excess kurtosis {ds['residual_excess_kurtosis']:.2f}")
    ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    plot_main(draw)
