"""Clipping bias on a finite sum (Chen, Wu, Hong, NeurIPS 2020) and the perturbation that removes it.

f(x) = mean_i (x - a_i)^2 / 2, clipped SGD x <- x - eta clip_c(x - a_i + k zeta), c = 1
(theory/clipping_bias.md). Saves: the exact clipped-gradient field h(x) for several k on
Chen et al.'s Example 2 (a = (-3, 3)) and on a skewed example (a = (-1, 0, 5), x* = 4/3); the
zero and the bias |zero - x*| against k for the skewed example and for a = (0, 0, 0, 1) (no bias
at k = 0), with the large-k asymptote mu_3 / (6 k^2) (eq. (8)) and the slope h'(zero) that the
perturbation costs; how often the bias is not monotone in k over random finite sums; and clipped
SGD runs on the skewed example (paths, and each seed's iterate averaged over the second half)
against the predicted zeros, with eq. (9)'s standard error and stationary shift.

Usage: python experiments/clipping_bias.py --out figures/data/clipping_bias.npz [--size ...]
"""

import math

import jax
import numpy as np

from clipdyn.runs.results import save_results
from clipdyn.sources import finite_sum as fs

import common

SIZES = {"tiny": dict(seeds=4, steps=2_000, every=20, n_random=10, n_k=16),
         "default": dict(seeds=24, steps=20_000, every=20, n_random=100, n_k=48),
         "paper": dict(seeds=128, steps=100_000, every=100, n_random=2000, n_k=128)}
CLIP = 1.0
STEP = 0.02
EXAMPLE2 = np.array([-3.0, 3.0])
SKEWED = np.array([-1.0, 0.0, 5.0])
UNBIASED_AT_0 = np.array([0.0, 0.0, 0.0, 1.0])  # every |x* - a_i| <= c: no clipping at x*
FIELD_K = np.array([0.0, 0.5, 1.0, 2.0, 4.0])
SGD_K = np.array([0.0, 1.0, 3.0, 10.0])


def field(points, ks, xs):
    with jax.enable_x64(True):
        h = jax.jit(jax.vmap(lambda k: jax.vmap(lambda x: fs.clipped_gradient(
            fs.FiniteSum(points, CLIP, k), x))(xs)))
        return np.asarray(h(ks))


def slopes(points, ks, xs):
    """h'(x) by eq. (6), exact (autodiff of the closed form), for pairs (k, x)."""
    with jax.enable_x64(True):
        g = jax.jit(jax.vmap(lambda k, x: jax.grad(
            lambda y: fs.clipped_gradient(fs.FiniteSum(points, CLIP, k), y))(x)))
        return np.asarray(g(ks, xs))


def stationary_shift(points, k, z, rng):
    """Predicted mean offset of clipped SGD from the zero ``z``, eq. (9) (and its kink form at k = 0).

    ``s^2``, the variance of one clipped step at ``z``, is estimated by Monte Carlo (2e6 draws):
    it enters a correction of order ``eta``, so its 1e-3 relative error does not matter.
    """
    n = 2_000_000
    g = np.clip(z - points[rng.integers(0, points.size, n)] + k * rng.normal(size=n), -CLIP, CLIP)
    s2 = g.var()
    if k == 0:  # kink: one-sided slopes = shares of unclipped terms just right / left of z
        right = np.mean(np.abs(z + 1e-9 - points) < CLIP)
        left = np.mean(np.abs(z - 1e-9 - points) < CLIP)
        sd_r, sd_l = math.sqrt(STEP * s2 / (2 * right)), math.sqrt(STEP * s2 / (2 * left))
        return math.sqrt(2 / math.pi) * (sd_r - sd_l)
    with jax.enable_x64(True):
        h = lambda y: fs.clipped_gradient(fs.FiniteSum(points, CLIP, k), y)  # noqa: E731
        h1, h2 = float(jax.grad(h)(z)), float(jax.grad(jax.grad(h))(z))
    var = STEP * s2 / (h1 * (2 - STEP * h1))
    return -h2 * var / (2 * h1)


def non_monotone_fraction(n_random, ks, rng):
    """Share of random 5-point sums whose bias |zero - x*| rises somewhere along ``ks``."""
    rises = []
    for _ in range(n_random):
        a = rng.normal(size=5) * rng.uniform(0.5, 4.0)
        b = fs.bias(fs.finite_sum(a, CLIP, ks))
        rises.append(np.max(np.diff(b)))
    rises = np.asarray(rises)
    return rises, float(np.mean(rises > 1e-9))


def main():
    args, size = common.parse(__doc__, "figures/data/clipping_bias.npz", SIZES)
    xs = np.linspace(-5.0, 7.0, 481)
    ks = np.concatenate([[0.0], np.geomspace(0.01, 100.0, size["n_k"])])
    arrays = {"x": xs, "field_k": FIELD_K, "k": ks, "sgd_k": SGD_K,
              "field_example2": field(EXAMPLE2, FIELD_K, xs), "field_skewed": field(SKEWED, FIELD_K, xs),
              "zeros_example2": fs.zero_interval(fs.finite_sum(EXAMPLE2, CLIP, FIELD_K)),
              "zeros_skewed_field": fs.zero_interval(fs.finite_sum(SKEWED, CLIP, FIELD_K))}
    summary = {}
    for name, pts in (("skewed", SKEWED), ("unbiased_at_0", UNBIASED_AT_0)):
        z = fs.zero_interval(fs.finite_sum(pts, CLIP, ks))
        arrays[f"zeros_{name}"] = z
        arrays[f"bias_{name}"] = fs.bias(fs.finite_sum(pts, CLIP, ks))
        arrays[f"mu3_{name}"] = np.mean((pts - pts.mean()) ** 3)
        arrays[f"slope_{name}"] = slopes(pts, ks, z[:, 0])
        b = arrays[f"bias_{name}"]
        summary[name] = {"points": pts, "x_star": pts.mean(), "bias_k0": b[0], "max_bias": b.max(),
                         "k_of_max_bias": ks[np.argmax(b)],
                         "monotone_in_k": bool(np.all(np.diff(b) <= 1e-12))}
    rises, frac = non_monotone_fraction(size["n_random"], ks, np.random.default_rng(0))
    arrays["random_rises"] = rises
    summary["random_non_monotone_fraction"] = frac

    # Clipped SGD on the skewed example: where do the iterates end up?
    paths, tail_mean, tail_se, z_sgd, spread, shift = [], [], [], [], [], []
    rng = np.random.default_rng(1)
    for k in SGD_K:
        prob = fs.finite_sum(SKEWED, CLIP, k)
        z = float(fs.zero_interval(prob)[0])
        shift.append(stationary_shift(SKEWED, k, z, rng))
        p = fs.clipped_sgd(prob, 0.0, STEP, size["steps"], range(size["seeds"]), size["every"])
        avg = p[:, p.shape[1] // 2:].mean(axis=1)  # each seed's second-half average
        paths.append(p)
        tail_mean.append(avg.mean())
        tail_se.append(avg.std(ddof=1) / math.sqrt(avg.size))
        z_sgd.append(z)
        spread.append(p[:, -1].std(ddof=1))
    arrays.update(sgd_paths=np.stack(paths), sgd_tail_mean=np.array(tail_mean),
                  sgd_tail_se=np.array(tail_se), sgd_zero=np.array(z_sgd),
                  sgd_final_spread=np.array(spread), sgd_shift=np.array(shift),
                  sgd_t=np.arange(paths[0].shape[1]) * size["every"])
    summary["sgd"] = [{"k": k, "predicted_zero": z, "tail_mean": m, "tail_se": s,
                       "gap_in_se": (m - z) / s, "predicted_shift": d,
                       "gap_after_shift_in_se": (m - z - d) / s, "final_spread": sp}
                      for k, z, m, s, d, sp in zip(SGD_K, z_sgd, tail_mean, tail_se, shift, spread)]
    save_results(args.out, arrays,
                 {"study": "clipping_bias", "size": args.size, **size, "clip": CLIP, "step": STEP,
                  "example2": EXAMPLE2, "skewed": SKEWED, "unbiased_at_0": UNBIASED_AT_0,
                  "summary": summary},
                 precision="float64")
    print(f"wrote {args.out}")
    for name in ("skewed", "unbiased_at_0"):
        s = summary[name]
        print(f"{name}: bias(k=0) = {s['bias_k0']:.4g}, max {s['max_bias']:.4g} at k = "
              f"{s['k_of_max_bias']:.3g}, monotone: {s['monotone_in_k']}")
    print(f"random 5-point sums with a bias that rises somewhere in k: {frac:.0%}")
    for r in summary["sgd"]:
        print(f"SGD k={r['k']:g}: zero {r['predicted_zero']:.4f}, tail mean {r['tail_mean']:.4f} "
              f"+- {r['tail_se']:.4f} ({r['gap_in_se']:+.1f} s.e.; {r['gap_after_shift_in_se']:+.1f} "
              f"s.e. after eq. (9)'s shift {r['predicted_shift']:+.4f}), final spread "
              f"{r['final_spread']:.3f}")


if __name__ == "__main__":
    main()
