"""Network clipping: PS-Clip-SGD's rules on a small MLP on scikit-learn's digits, clean and noisy targets.

Nobile and Grohs (arXiv 2605.02701) claim that per-sample clipping trains faster and more robustly
than SGD with momentum and than batch clipping, with per-index thresholds C k^(1/beta), and that with
gradient accumulation clipping each micro-batch beats clipping once after accumulating. Six rules
(clipdyn.sources.networks.RULES) train a 64-64-10 tanh MLP (squared loss on one-hot targets) by SGD
with momentum 0.9, batch 32 (micro-batches of 8 for the accumulation rules), on clean targets and on
targets with Student-t noise (df 1.5, infinite variance) added to the training split.

Tuning, identical for every rule: 20 configurations on 2 tuning seeds (their own data splits and
noise draws), the clipping rules over 5 learning rates x 4 thresholds, unclipped SGD over 20
log-spaced learning rates (a wider range: it has no threshold to tame large steps); the
configuration with the lowest mean final validation loss (clean targets) wins, and one diverging
on any tuning seed is out. The winner is then trained on the
evaluation seeds, whose test split is never used for tuning. Wall-clock time per epoch is measured
per rule on one training run (jitted, no evaluation, best of 5 after compilation); the process's
CPU time and the load average are recorded beside it, and the figure's time axis is CPU time when
the machine was busier than its cores (wall-clock there measures the other processes). Chen, Wu and
Hong's symmetry proxy is measured on per-sample gradient noise at checkpoints of the tuned
unclipped and per-sample runs (seed 0).

Usage: python experiments/network_clipping.py --out figures/data/network_clipping.npz [--size ...]
"""

import os
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from clipdyn.data.sources import array_digest
from clipdyn.runs.results import save_results
from clipdyn.sources import networks as nw

import common

SIZES = {
    "tiny": dict(epochs=3, lrs=[0.01, 0.03], clips=[3.0], none_lrs=(0.01, 0.03), tune_seeds=1, eval_seeds=1,
                 timing_repeats=1, n_projections=4, n_null=4, n_points=128),
    "default": dict(epochs=20, lrs=[3e-3, 1e-2, 3e-2, 1e-1, 3e-1], clips=[0.3, 1.0, 3.0, 10.0],
                    none_lrs=(1e-4, 0.3), tune_seeds=2, eval_seeds=20, timing_repeats=5, n_projections=16,
                    n_null=8, n_points=256),
    "paper": dict(epochs=60, lrs=list(np.geomspace(1e-3, 1.0, 7)), clips=list(np.geomspace(0.1, 30, 6)),
                  none_lrs=(1e-5, 1.0), tune_seeds=3, eval_seeds=63, timing_repeats=10, n_projections=64,
                  n_null=32, n_points=1024),
}
NOISES = {"clean": 0.0, "noisy": 0.1}
NOISE_DF = 1.5
BATCH, MICRO, BETA, MOMENTUM, SIZES_MLP = 32, 8, 2.0, 0.9, (nw.N_FEATURES, 64, nw.N_CLASSES)
DIVERGED_LOSS = 1e6  # losses start near 2.2; a run past this (or non-finite) has diverged
SYMMETRY_RULES = ("none", "per-sample")
TUNE_SEED0 = 1000  # tuning splits are seeds 1000.., evaluation splits 0..: disjoint


def grid(rule, size):
    """The rule's configurations: lr x threshold, or, for unclipped SGD, as many log-spaced lrs
    over the wider range ``none_lrs`` (it has no threshold to tame large steps)."""
    lrs, clips = size["lrs"], size["clips"]
    n = len(lrs) * len(clips)
    if rule == "none":
        return np.geomspace(*size["none_lrs"], n), np.full(n, np.inf)
    lr, c = np.meshgrid(np.asarray(lrs, float), np.asarray(clips, float), indexing="ij")
    return lr.ravel(), c.ravel()


def stack(splits):
    return nw.DigitsSplit(*[np.stack(a) for a in zip(*splits)])


def diverged_epoch(val_loss):
    """First epoch whose validation loss is non-finite or above DIVERGED_LOSS, per run; -1 if none."""
    bad = ~np.isfinite(val_loss) | (np.abs(val_loss) > DIVERGED_LOSS)
    return np.where(bad.any(axis=-1), bad.argmax(axis=-1), -1)


def mask_diverged(curve, div):
    """Metrics from a run's divergence on become nan (the run is reported as diverged, not plotted)."""
    epochs = np.arange(curve.shape[-1])
    return np.where((div[:, None] >= 0) & (epochs[None] >= div[:, None]), np.nan, curve)


def time_per_epoch(config, argv, repeats):
    """Seconds per epoch of one training run alone (no evaluation): wall-clock and the process's CPU
    time, best of ``repeats`` after compiling, and the 1-minute load average when timing began."""
    timed = jax.jit(partial(nw.train, config._replace(evaluate=False, checkpoints=())))
    jax.block_until_ready(timed(*argv))
    load = os.getloadavg()[0]
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(timed(*argv))
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall) / config.epochs, min(cpu) / config.epochs, load


def symmetry_proxy(ckpt_params, data, n_checkpoints, size):
    """Chen et al.'s proxy at every checkpoint of the SYMMETRY_RULES runs (seed 0), and the value
    for a skewed reference sample of the same size (a centred 2-D exponential)."""
    sym = jax.jit(partial(nw.projected_gradient_symmetry, n_projections=size["n_projections"],
                          n_points=size["n_points"], n_null=size["n_null"]))
    h = np.zeros((len(NOISES), len(SYMMETRY_RULES), n_checkpoints, size["n_projections"]))
    null = np.zeros(h.shape + (size["n_null"],))
    for n, noise in enumerate(NOISES):
        d = data[(noise, 0)]
        for q, rule in enumerate(SYMMETRY_RULES):
            for k in range(n_checkpoints):
                params = jax.tree.map(lambda a: a[k], ckpt_params[(n, rule)])
                h[n, q, k], null[n, q, k] = jax.device_get(sym(params, d.x_train, d.y_train, jax.random.key(k)))
    skew = np.random.default_rng(0).exponential(size=(size["n_points"], 2))
    skewed = float(nw.symmetry_statistic(jnp.asarray(skew - skew.mean(axis=0), jnp.float32)))
    return h, null, skewed


def main():
    args, size = common.parse(__doc__, "figures/data/network_clipping.npz", SIZES)
    start = time.perf_counter()
    E, S, T = size["epochs"], size["eval_seeds"], size["tune_seeds"]
    checkpoints = tuple(sorted({0, 1, max(1, E // 10), max(1, E // 3), E}))
    data = {(noise, seed): nw.load_digits_split(seed, level, noise_df=NOISE_DF)
            for noise, level in NOISES.items()
            for seed in [*range(S), *range(TUNE_SEED0, TUNE_SEED0 + T)]}
    # Initial parameters and batch orders per seed, shared by every rule (common random numbers).
    all_seeds = [*range(S), *range(TUNE_SEED0, TUNE_SEED0 + T)]
    keys = jax.vmap(jax.random.key)(jnp.asarray(all_seeds))
    init_keys, batch_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    n_train = data[(list(NOISES)[0], 0)].x_train.shape[0]
    params0 = jax.device_get(jax.jit(jax.vmap(partial(nw.init_mlp, sizes=SIZES_MLP)))(init_keys))
    batches = np.asarray(jax.jit(jax.vmap(partial(nw.shuffled_batches, n_train=n_train, epochs=E,
                                                  batch=BATCH)))(batch_keys))
    seed_index = {seed: i for i, seed in enumerate(all_seeds)}
    n_runs = max(len(grid("batch", size)[0]) * T, len(NOISES) * S)
    rules = nw.RULES
    shape = (len(NOISES), len(rules), S, E + 1)
    out = {k: np.full(shape, np.nan) for k in ("val_loss", "test_loss", "test_acc")}
    diverged = np.full(shape[:3], -1)
    G = len(grid("batch", size)[0])
    grid_lr, grid_clip = np.zeros((len(rules), G)), np.zeros((len(rules), G))
    grid_score = np.full((len(NOISES), len(rules), G), np.inf)
    grid_diverged = np.zeros((len(NOISES), len(rules), G), int)
    best_lr, best_clip = np.zeros((len(NOISES), len(rules))), np.zeros((len(NOISES), len(rules)))
    sec_per_epoch, cpu_sec_per_epoch, load = np.zeros(len(rules)), np.zeros(len(rules)), np.zeros(len(rules))
    ckpt_params = {}

    for r, rule in enumerate(rules):
        config = nw.TrainConfig(rule, epochs=E, batch=BATCH, sizes=SIZES_MLP, momentum=MOMENTUM,
                                beta=BETA, micro=MICRO, checkpoints=checkpoints)
        # One program per rule: tuning and evaluation calls share its shape (n_runs, padded).
        program = jax.jit(jax.vmap(partial(nw.train, config)))

        def run(lrs, clips, seeds_noise):
            k = len(lrs)
            pad = n_runs - k
            lrs, clips = np.r_[lrs, np.full(pad, lrs[0])], np.r_[clips, np.full(pad, clips[0])]
            seeds_noise = seeds_noise + [seeds_noise[0]] * pad
            splits = stack([data[(noise, seed)] for seed, noise in seeds_noise])
            idx = np.asarray([seed_index[seed] for seed, _ in seeds_noise])
            res = jax.device_get(program(np.asarray(lrs, np.float32),
                                         np.asarray(np.minimum(clips, np.finfo(np.float32).max), np.float32),
                                         splits, jax.tree.map(lambda a: a[idx], params0), batches[idx]))
            return jax.tree.map(lambda a: np.asarray(a)[:k], res)

        lr_g, clip_g = grid(rule, size)
        grid_lr[r], grid_clip[r] = lr_g, clip_g
        for n, noise in enumerate(NOISES):
            seeds = [(TUNE_SEED0 + t, noise) for t in range(T) for _ in range(G)]
            res = run(np.tile(lr_g, T), np.tile(clip_g, T), seeds)
            val = res.val_loss.reshape(T, G, E + 1)
            div = diverged_epoch(val.reshape(T * G, -1)).reshape(T, G)
            grid_diverged[n, r] = (div >= 0).sum(axis=0)
            grid_score[n, r] = np.where(grid_diverged[n, r] > 0, np.inf, val[:, :, -1].mean(axis=0))
            if not np.isfinite(grid_score[n, r]).any():
                print(f"{rule}, {noise}: every configuration diverged in tuning; evaluating the first "
                      "(its runs will be reported as diverged)", flush=True)
            best = int(np.argmin(grid_score[n, r]))
            best_lr[n, r], best_clip[n, r] = lr_g[best], clip_g[best]
        # Evaluation: both noise conditions, every evaluation seed, at their tuned configuration.
        pairs = [(s, noise) for noise in NOISES for s in range(S)]
        res = run(np.repeat(best_lr[:, r], S), np.repeat(best_clip[:, r], S), pairs)
        for n in range(len(NOISES)):
            sl = slice(n * S, (n + 1) * S)
            div = diverged_epoch(res.val_loss[sl])
            diverged[n, r] = div
            for key in out:
                out[key][n, r] = mask_diverged(getattr(res, key)[sl], div)
            if rule in SYMMETRY_RULES:
                ckpt_params[(n, rule)] = jax.tree.map(lambda a: a[n * S], res.checkpoints)

        one = data[(list(NOISES)[0], 0)]
        argv = (np.float32(best_lr[0, r]), np.float32(min(best_clip[0, r], np.finfo(np.float32).max)),
                one, jax.tree.map(lambda a: a[0], params0), batches[0])
        sec_per_epoch[r], cpu_sec_per_epoch[r], load[r] = time_per_epoch(config, argv, size["timing_repeats"])
        print(f"{rule:>10}: clean acc {np.nanmean(out['test_acc'][0, r, :, -1]):.3f}, noisy acc "
              f"{np.nanmean(out['test_acc'][1, r, :, -1]):.3f}, {1e3 * sec_per_epoch[r]:.1f} ms/epoch "
              f"({time.perf_counter() - start:.0f} s)", flush=True)

    sym_h, sym_null, sym_skewed = symmetry_proxy(ckpt_params, data, len(checkpoints), size)

    arrays = dict(epochs=np.arange(E + 1), **out, diverged_epoch=diverged, sec_per_epoch=sec_per_epoch,
                  cpu_sec_per_epoch=cpu_sec_per_epoch, load_average=load,
                  grid_lr=grid_lr, grid_clip=grid_clip, grid_score=grid_score, grid_diverged=grid_diverged,
                  best_lr=best_lr, best_clip=best_clip, sym_epochs=np.asarray(checkpoints), sym_h=sym_h,
                  sym_null=sym_null, sym_skewed=np.asarray(sym_skewed))
    config = {"study": "network_clipping", "size": args.size, **size, "rules": list(rules),
              "noises": list(NOISES), "label_noise": NOISES, "noise_df": NOISE_DF, "batch": BATCH,
              "micro": MICRO, "beta": BETA, "momentum": MOMENTUM, "mlp_sizes": list(SIZES_MLP),
              "loss": "1/2 ||f(x) - y||^2, one-hot targets", "symmetry_rules": list(SYMMETRY_RULES),
              "tuning": "lowest mean final validation loss over the tuning seeds; a configuration "
                        "diverging on any tuning seed is excluded",
              "tune_seeds_first": TUNE_SEED0, "diverged_loss": DIVERGED_LOSS, "cpu_count": os.cpu_count(),
              "data": "scikit-learn digits, one split per (noise, seed); the fingerprint is over "
                      "every split's arrays, splits in (noise, seed) order",
              "data_fingerprint": array_digest(*(a for split in data.values() for a in split)),
              "runtime_s": time.perf_counter() - start}
    save_results(args.out, arrays, config, precision="float32")
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
