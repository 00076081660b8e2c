"""Smoothness: Zhang et al.'s local smoothness estimate against the gradient norm along training.

Along every training step Delta the estimate ||grad f(x + Delta/2) - grad f(x)|| / ||Delta/2||
(theory/l0l1.md, eq. (7)) with the full training objective f, against ||grad f(x)||:

* a tanh MLP 64-64-10 (clipdyn.sources.networks) on scikit-learn's digits, trained by minibatch
  SGD (optax.sgd, batch 32), without clipping and with optax.clip_by_global_norm(c), c a quarter
  of the gradient norm at initialisation (fixed, not tuned); two objectives: cross-entropy
  (Zhang et al.'s setting) and the squared loss on one-hot targets (networks.py's objective). The
  learning rate of each (objective, clipping) pair is the one with the lowest final training loss
  on a grid (same initialisation and batch order for all; one vmapped program per pair, the
  estimate measured at every other step of every run, so the run shown is the grid's own);
* the negative control, clipdyn's least-squares model (lam_i = i^-0.3, Gaussian noise sigma 0.5,
  R0 = 1, theory/l0l1.md eq. (8)): streaming SGD unclipped and clipped (eta = 1, c = 0.5), whose
  Hessian is constant (L1 = 0), and full-batch GD, where the estimate drifts with the gradient
  norm although L1 = 0 (eq. (13)).

Fitted slopes of log estimate against log gradient norm are saved with the traces. Everything
runs in float64 (the estimate differences two gradients a half-step apart).

Usage: python experiments/smoothness.py --out figures/data/smoothness.npz [--size ...]
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

import clipdyn as cd
from clipdyn.runs.results import save_results
from clipdyn.sources import networks as nw
from clipdyn.sources import smoothness as sm

import common

SIZES = {"tiny": dict(epochs=1, lrs=[0.3, 1.0], d=64, T=2.0),
         "default": dict(epochs=20, lrs=[0.1, 0.3, 1.0, 3.0, 10.0], d=500, T=10.0),
         "paper": dict(epochs=60, lrs=list(np.geomspace(0.03, 30.0, 13)), d=2000, T=20.0)}
WIDTHS = (nw.N_FEATURES, 64, nw.N_CLASSES)
BATCH = 32
SEED = 0
CLIP_FRACTION = 0.25  # threshold = this fraction of ||grad f|| at initialisation
MEASURE_EVERY = 2  # the estimate costs two full-data gradients; measure every other step
LS = dict(alpha=0.3, sigma=0.5, eta=1.0, clip=0.5)  # alpha: common.problem's spectrum


def cross_entropy(params, batch):
    logits = nw.apply_mlp(params, batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()


def squared(params, batch):
    return nw.loss_fn(params, batch["x"], batch["y"])


def sgd(h):
    return optax.chain(optax.clip_by_global_norm(h["clip"]), optax.sgd(h["lr"]))


OBJECTIVES = {"xent": cross_entropy, "square": squared}


def batch_order(n, epochs, key):
    """Each epoch a fresh permutation (epoch folded into the key), the last partial batch dropped."""
    per = n // BATCH
    perms = [jax.random.permutation(jax.random.fold_in(key, e), n) for e in range(epochs)]
    return jnp.concatenate([p[: per * BATCH].reshape(per, BATCH) for p in perms])


def network(size, objectives, arrays, fits):
    """Train the MLP per objective and threshold; returns the digits split's fingerprint."""
    split = nw.load_digits_split(SEED)
    data = {"x": jnp.asarray(split.x_train, jnp.float64), "y": jnp.asarray(split.y_train, jnp.float64),
            "labels": jnp.asarray(split.labels_train)}
    k_init, k_order = jax.random.split(jax.random.PRNGKey(SEED))
    params = otu.tree_cast(nw.init_mlp(k_init, WIDTHS), jnp.float64)
    batches = batch_order(data["x"].shape[0], size["epochs"], k_order)
    batches = batches[: batches.shape[0] // MEASURE_EVERY * MEASURE_EVERY]
    lrs = jnp.asarray(size["lrs"], jnp.float64)
    for name, loss in objectives.items():
        g0 = float(otu.tree_norm(jax.grad(loss)(params, data)))
        clip = CLIP_FRACTION * g0
        arrays[f"{name}_clip"] = np.asarray(clip)
        for tag, c in (("sgd", jnp.inf), ("clipped", clip)):
            c = jnp.asarray(c, jnp.float64)
            # One vmapped program over the grid: the run reported is the grid's own run.
            grid = jax.vmap(lambda lr: sm.training_trace(loss, sgd, {"lr": lr, "clip": c}, params, data,
                                                         batches, measure_every=MEASURE_EVERY))(lrs)
            grid = jax.tree.map(np.asarray, grid)
            final = np.where(grid.diverged_at < 0, grid.final_loss, np.inf)
            key = f"{name}_{tag}"
            arrays[f"{key}_grid_final"] = final
            arrays[f"{key}_grid_diverged_at"] = grid.diverged_at
            if not np.isfinite(final).any():
                raise RuntimeError(f"{key}: every learning rate on the grid diverged")
            best = int(np.argmin(final))
            arrays[f"{key}_lr"] = np.asarray(lrs[best])
            arrays[f"{key}_loss"] = np.append(grid.loss[best], grid.final_loss[best])
            arrays[f"{key}_grad_norm"] = grid.grad_norm[best]
            arrays[f"{key}_smoothness"] = grid.smoothness[best]
            arrays[f"{key}_clipped_fraction"] = np.asarray(np.mean(grid.batch_grad_norm[best] > float(c)))
            fits[key] = trace_fit(grid.grad_norm[best], grid.smoothness[best])
            print(f"{key}: lr {float(lrs[best]):g}, final loss {final[best]:.3g}, slope "
                  f"{fits[key]['slope']:.3f} +- {fits[key]['stderr']:.3f}", flush=True)
    return split.fingerprint()


def trace_fit(grad_norm, est):
    """log-log fit of the estimate against the gradient norm (the best runs never diverge)."""
    g, e = np.asarray(grad_norm), np.asarray(est)
    keep = np.isfinite(g) & np.isfinite(e) & (g > 0) & (e > 0)
    slope, intercept, se = sm.loglog_slope(g[keep], e[keep])
    return {"slope": slope, "intercept": intercept, "stderr": se, "points": int(keep.sum())}


def least_squares(size, arrays, fits):
    prob = common.problem(cd.Gaussian(LS["sigma"]), size["d"])  # lam_i = i^-0.3, R0 = 1
    steps = int(round(size["T"] * float(prob.trace)))
    arrays["ls_lam_range"] = np.array([float(jnp.min(prob.lam)), float(jnp.max(prob.lam))])
    runs = {"sgd": ("sgd", np.inf), "clipped": ("sgd", LS["clip"]), "gd": ("gd", np.inf)}
    for tag, (method, c) in runs.items():
        tr = sm.least_squares_trace(prob, LS["eta"], c, steps, jax.random.PRNGKey(SEED), method=method)
        key = f"ls_{tag}"
        arrays[f"{key}_risk"] = np.asarray(tr.risk)
        arrays[f"{key}_grad_norm"] = np.asarray(tr.grad_norm)
        arrays[f"{key}_smoothness"] = np.asarray(tr.smoothness)
        fits[key] = trace_fit(tr.grad_norm, tr.smoothness)
        print(f"{key}: slope {fits[key]['slope']:.3f} +- {fits[key]['stderr']:.3f}", flush=True)


def main():
    args, size = common.parse(__doc__, "figures/data/smoothness.npz", SIZES)
    arrays, fits = {}, {}
    objectives = common.first_only(OBJECTIVES, args.size)
    with jax.enable_x64(True):
        digits = network(size, objectives, arrays, fits)
        least_squares(size, arrays, fits)
    for key, fit in fits.items():
        arrays[f"{key}_fit"] = np.array([fit["slope"], fit["intercept"], fit["stderr"]])
    save_results(args.out, arrays,
                 {"study": "smoothness", "size": args.size, **size, "widths": list(WIDTHS), "batch": BATCH,
                  "seed": SEED, "clip_fraction": CLIP_FRACTION, "measure_every": MEASURE_EVERY,
                  "objectives": list(objectives), "data": f"scikit-learn digits, split seed {SEED}",
                  "data_fingerprint": digits,
                  "least_squares": LS, "fits": fits,
                  "estimator": "||grad f(x + Delta/2) - grad f(x)|| / ||Delta/2||, f the full training objective",
                  "lr_choice": "lowest final training loss on the grid, diverged runs excluded"},
                 precision="float64")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
