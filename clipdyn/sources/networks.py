"""A small network on scikit-learn's digits, trained with the clipping rules of PS-Clip-SGD.

Nobile and Grohs (arXiv 2605.02701) clip every per-sample gradient before averaging, with the
threshold ``alpha k^(1/beta)`` for the ``k``-th sample of the batch, and report that with gradient
accumulation clipping each micro-batch beats clipping once after accumulating. This module
provides the pieces to test those claims on real data with the tools practice uses:

* the data: :func:`load_digits_split` (scikit-learn's digits, shipped with the package, no
  download), optionally with heavy-tailed (Student-t) noise on the training targets;
* the model: :func:`init_mlp`, :func:`apply_mlp`, :func:`loss_fn` (squared loss on one-hot
  targets), :func:`per_example_grads` (``jax.vmap`` of ``jax.grad``);
* the gradient rules as optax transformations (:func:`gradient_rule`): no clipping, batch clipping
  (``optax.clip_by_global_norm``), per-sample clipping (:func:`per_example_clip`, built on
  ``optax.per_example_global_norm_clip``), index thresholds (:func:`index_thresholds`), and
  gradient accumulation with ``optax.MultiSteps``, clipping each micro-batch or once after
  accumulating;
* training (:func:`train`: SGD with momentum, jitted, ``lax.scan`` over steps, vmappable over
  learning rates, thresholds, data sets and seeds);
* Chen, Wu and Hong's symmetry proxy (:func:`symmetry_statistic`,
  :func:`projected_gradient_symmetry`).

*Why squared loss and Student-t target noise.* "Heavy-tailed label noise" has a precise meaning
only for a real-valued target: replacing a class label by a random one is bounded noise (with
cross-entropy every per-sample output gradient has norm at most ``sqrt 2``), so it cannot make the
gradient noise heavy-tailed. We therefore train on the one-hot targets with the squared loss, as a
regression (squared loss is competitive with cross-entropy for classification: Hui and Belkin,
ICLR 2021), and add i.i.d. Student-t noise to every entry of the training targets. With ``df <= 2``
the noise has infinite variance, and so does the per-sample gradient ``J^T (f(x) - y)``: this is
the regime of PS-Clip-SGD's theory and of clipdyn's Student-t noise laws (theory, section 7 of
THEORY.md uses the same squared loss on real data). Validation and test targets stay clean.

References:
    D. Nobile, P. Grohs, *Robust and Fast Training via Per-Sample Clipping*, arXiv 2605.02701.
    X. Chen, Z. S. Wu, M. Hong, *Understanding Gradient Clipping in Private SGD: A Geometric
    Perspective*, NeurIPS 2020 (arXiv 2006.15429).
    L. Hui, M. Belkin, *Evaluation of Neural Architectures Trained with Square Loss vs
    Cross-Entropy in Classification Tasks*, ICLR 2021.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clipdyn import validation
from clipdyn.data.sources import array_digest
from clipdyn.precision import MATMUL_PRECISION, matmul

__all__ = [
    "N_CLASSES", "N_FEATURES", "RULES", "DigitsSplit", "load_digits_split", "init_mlp", "apply_mlp",
    "loss_fn", "accuracy", "per_example_grads", "per_example_clip", "index_thresholds",
    "GradientRule", "gradient_rule", "TrainConfig", "TrainResult", "shuffled_batches", "train",
    "symmetry_statistic", "projected_gradient_symmetry",
]

N_CLASSES = 10
N_FEATURES = 64
DTYPE = jnp.float32
RULES = ("none", "batch", "per-sample", "index", "micro-clip", "accum-clip")


# ---- data -------------------------------------------------------------------------------------

class DigitsSplit(NamedTuple):
    """Standardised digits, split three ways. A pytree: splits of several seeds stack and vmap.

    ``x_*``: float32 ``(n, 64)``; ``y_*``: float32 ``(n, 10)`` targets (one-hot, plus the noise on
    the training split); ``labels_*``: int32 ``(n,)`` clean class labels.
    """

    x_train: Any
    y_train: Any
    labels_train: Any
    x_val: Any
    y_val: Any
    labels_val: Any
    x_test: Any
    y_test: Any
    labels_test: Any

    def fingerprint(self) -> str:
        """sha256 over every array of the split (dtype, shape and bytes, in field order): the data a
        run was trained, tuned and scored on, for a results file."""
        return array_digest(*(np.asarray(a) for a in self))


def _check_int(name, value, low):
    return validation.integer(name, value, low, owner="networks")


def _check_positive(name, value, allow_zero=False):
    check = validation.nonnegative if allow_zero else validation.positive
    return float(check(name, value, owner="networks"))


def _check_rate(name, value, allowed_inf: bool):
    """A learning rate or threshold: ``> 0`` (and ``inf``, unclipped, for a threshold), a scalar
    or any array of them (grids); tracers pass (a vmapped grid was checked before tracing)."""
    ok = (lambda a: a > 0) if allowed_inf else (lambda a: (a > 0) & np.isfinite(a))
    validation.check_value("networks", name, value, ok,
                           "> 0 (inf: unclipped)" if allowed_inf else "finite and > 0")
    return value


def load_digits_split(seed: int, label_noise: float = 0.0, *, noise_df: float = 1.5,
                      n_val: int = 256, n_test: int = 450) -> DigitsSplit:
    """scikit-learn's digits (1797 images, 8x8), split into train/validation/test by ``seed``.

    The split is stratified by class (``sklearn.model_selection.train_test_split`` with
    ``random_state=seed``). Inputs are standardised per pixel with the training split's mean and
    standard deviation (pixels constant on the training split are only centred). Training targets
    are ``e_label + label_noise * T`` with ``T`` i.i.d. Student-t with ``noise_df`` degrees of freedom
    per entry (NumPy's ``default_rng(seed)``); validation and test targets are clean one-hot.

    Args:
        seed: integer >= 0; fixes the split and the noise.
        label_noise: scale of the Student-t noise on the training targets (0: clean).
        noise_df: its degrees of freedom (> 0; ``<= 2``: infinite variance).
        n_val: size of the validation split (used for tuning).
        n_test: size of the test split (used for reporting only).

    Returns:
        A :class:`DigitsSplit` of NumPy arrays (float32 inputs and targets, int32 labels).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    seed = _check_int("seed", seed, 0)
    label_noise = _check_positive("label_noise", label_noise, allow_zero=True)
    noise_df = _check_positive("noise_df", noise_df)
    n_val = _check_int("n_val", n_val, 1)
    n_test = _check_int("n_test", n_test, 1)
    x, labels = load_digits(return_X_y=True)
    if n_val + n_test > len(labels) - 100:
        raise ValueError(f"n_val + n_test must leave at least 100 of the {len(labels)} digits for "
                         f"training, got n_val={n_val}, n_test={n_test}")
    x_rest, x_test, l_rest, l_test = train_test_split(x, labels, test_size=n_test, random_state=seed,
                                                      stratify=labels)
    x_tr, x_val, l_tr, l_val = train_test_split(x_rest, l_rest, test_size=n_val, random_state=seed,
                                                stratify=l_rest)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    def inputs(a):
        return ((a - mean) / std).astype(np.float32)

    def onehot(lab):
        return np.eye(N_CLASSES, dtype=np.float32)[lab]

    noise = np.random.default_rng(seed).standard_t(noise_df, size=(len(l_tr), N_CLASSES))
    y_tr = (onehot(l_tr) + label_noise * noise).astype(np.float32)
    return DigitsSplit(inputs(x_tr), y_tr, l_tr.astype(np.int32), inputs(x_val), onehot(l_val),
                       l_val.astype(np.int32), inputs(x_test), onehot(l_test), l_test.astype(np.int32))


# ---- model --------------------------------------------------------------------------------------

def init_mlp(key: jax.Array, sizes) -> tuple[dict[str, jax.Array], ...]:
    """Parameters of a tanh MLP with layer widths ``sizes`` (input first, output last).

    LeCun-normal weights (``N(0, 1 / fan_in)``), zero biases, float32. tanh keeps the loss twice
    differentiable, so local smoothness (Zhang et al.) is well defined along training.

    Args:
        key: a JAX PRNG key.
        sizes: at least two positive integers, e.g. ``(64, 64, 10)``.

    Returns:
        A tuple of ``{"w": (fan_in, fan_out), "b": (fan_out,)}`` dicts, one per layer.
    """
    if not isinstance(key, (jax.Array, np.ndarray)):
        raise ValueError(f"networks: key={key!r} is not allowed; key must be a JAX PRNG key, e.g. "
                         "jax.random.key(0)")
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise ValueError(f"networks: sizes={sizes!r} is not allowed; sizes must be a sequence of "
                         "layer widths, e.g. (64, 64, 10)")
    sizes = tuple(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes must list at least the input and output widths, got {sizes!r}")
    for s in sizes:
        _check_int("every layer width in sizes", s, 1)
    keys = jax.random.split(key, len(sizes) - 1)
    return tuple({"w": jax.random.normal(k, (m, n), DTYPE) / np.float32(math.sqrt(m)),
                  "b": jnp.zeros((n,), DTYPE)}
                 for k, m, n in zip(keys, sizes[:-1], sizes[1:]))


def _affine(h, layer):
    b = layer["b"]
    return matmul(h, layer["w"]) + jnp.broadcast_to(b, h.shape[:-1] + b.shape)


def apply_mlp(params, x: jax.Array) -> jax.Array:
    """The outputs for inputs ``x`` of shape ``(..., fan_in)``: tanh hidden layers, linear output."""
    width = params[0]["w"].shape[0]
    if np.shape(x)[-1:] != (width,):
        raise ValueError(f"networks: inputs x of shape {np.shape(x)} do not fit the network: their "
                         f"last axis must be its input width {width}")
    h = x
    for layer in params[:-1]:
        h = jnp.tanh(_affine(h, layer))
    return _affine(h, params[-1])


def loss_fn(params, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean over samples of ``1/2 ||f(x) - y||^2`` (squared loss on targets ``y`` of shape ``(n, 10)``).

    Args:
        params: from :func:`init_mlp`.
        x: inputs ``(n, fan_in)``.
        y: float targets ``(n, fan_out)`` (one-hot labels, possibly noisy).

    Returns:
        A scalar.
    """
    out = apply_mlp(params, x)
    if out.shape != y.shape:
        raise ValueError(f"targets y must have the network's output shape {out.shape}, got {y.shape}")
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


def accuracy(params, x: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of the inputs whose largest output is their label."""
    return _hits(apply_mlp(params, x), labels)


def _hits(outputs, labels):
    predicted = jnp.argmax(outputs, axis=-1)
    return jnp.mean((predicted == jnp.asarray(labels).astype(predicted.dtype)).astype(DTYPE))


def per_example_grads(params, x: jax.Array, y: jax.Array):
    """The gradient of :func:`loss_fn` at each sample: ``jax.vmap`` of ``jax.grad``.

    Returns:
        A pytree like ``params`` with a leading batch axis of size ``n``.
    """
    # loss_fn of one unbatched sample is its own loss; vmapping it (rather than a batch of one)
    # turns the forward pass into matrix products and the weight gradients into outer products.
    return jax.vmap(jax.grad(loss_fn), in_axes=(None, 0, 0))(params, x, y)


# ---- gradient rules -----------------------------------------------------------------------------

def per_example_clip(l2_norm_clip) -> optax.GradientTransformation:
    """Clip every per-example gradient to global norm ``l2_norm_clip`` and average them.

    The input updates carry a leading batch axis (from :func:`per_example_grads`); the output has
    none. The clipping is optax's own (``optax.per_example_global_norm_clip``: multiplier
    ``min(1, C / ||g_b||)``, 1 for a zero gradient); this transform only divides the clipped sum by
    the batch size, as ``optax.contrib.differentially_private_aggregate`` does with zero noise.
    ``l2_norm_clip`` may be a scalar or a vector of one threshold per example (see
    :func:`index_thresholds`): optax's multiplier broadcasts over the batch.

    Args:
        l2_norm_clip: threshold ``C > 0``, scalar or shape ``(batch,)``.

    Returns:
        A stateless :class:`optax.GradientTransformation`.

    Raises:
        ValueError: for a threshold that is not ``> 0`` (``inf``: unclipped); a negative one
            turned the update into gradient ascent, ``nan`` left it unclipped.
    """
    _check_rate("l2_norm_clip", l2_norm_clip, allowed_inf=True)

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        n = leaves[0].shape[0]
        summed, _ = optax.per_example_global_norm_clip(leaves, l2_norm_clip)
        return jax.tree.unflatten(treedef, [s / n for s in summed]), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def index_thresholds(clip, batch: int, beta: float) -> jax.Array:
    """PS-Clip-SGD's thresholds ``C k^(1/beta)`` for the samples ``k = 1..batch`` of a batch.

    ``k`` is the sample's position in the batch as drawn (batches are random draws, so the
    position is itself random; Nobile and Grohs' ``alpha k^(1/beta)`` with ``alpha = C``, as in
    clipdyn's ``index:beta=P`` rule, THEORY.md section 6).

    Returns:
        float32 vector of shape ``(batch,)``.
    """
    _check_rate("clip", clip, allowed_inf=True)
    batch = _check_int("batch", batch, 1)
    beta = _check_positive("beta", beta)
    k = jnp.arange(1, batch + 1, dtype=DTYPE)
    return jnp.asarray(clip, DTYPE) * k ** np.float32(1.0 / beta)


def _standard_promotion(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` run under JAX's standard dtype promotion.

    ``optax.MultiSteps`` divides float gradients by its int32 step count, which JAX's strict
    promotion mode (used by clipdyn's test suite) rejects; the wrapper keeps the rules usable
    under either mode without changing the caller's setting.
    """
    def init_fn(params):
        with jax.numpy_dtype_promotion("standard"):
            return tx.init(params)

    def update_fn(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params)

    return optax.GradientTransformation(init_fn, update_fn)


class GradientRule(NamedTuple):
    """An optimizer and how a training step feeds it.

    Attributes:
        tx: the optax transformation (clipping chained with SGD with momentum).
        per_example: whether ``tx`` takes per-example gradients (a leading batch axis).
        chunk: samples per call of ``tx.update`` (the batch, or the micro-batch for accumulation).
    """

    tx: optax.GradientTransformation
    per_example: bool
    chunk: int


def gradient_rule(name: str, learning_rate, clip, *, batch: int, momentum: float = 0.9,
                  beta: float = 2.0, micro: int = 8) -> GradientRule:
    """SGD with momentum (``optax.sgd``) after one of the clipping rules.

    Every rule takes one optimizer step per ``batch`` samples:

    * ``"none"``: the batch-mean gradient;
    * ``"batch"``: ``optax.clip_by_global_norm(C)`` of the batch-mean gradient;
    * ``"per-sample"``: mean of the per-example gradients, each clipped to ``C`` (:func:`per_example_clip`);
    * ``"index"``: the same with thresholds ``C k^(1/beta)`` (:func:`index_thresholds`);
    * ``"micro-clip"``: the batch as ``batch / micro`` micro-batches accumulated by
      ``optax.MultiSteps``, each micro-batch mean clipped to ``C`` before accumulation:
      ``mean_groups clip_C(group mean)``;
    * ``"accum-clip"``: the same accumulation with the clip after it, inside ``MultiSteps``:
      ``clip_C(mean_groups group mean)``, which is ``"batch"`` computed in pieces.

    Args:
        name: one of :data:`RULES`.
        learning_rate, clip: scalars (may be traced, so grids vmap); cast to float32. ``clip`` is
            ignored by ``"none"``.
        batch: samples per optimizer step.
        momentum: heavy-ball momentum of ``optax.sgd``.
        beta: exponent of the index thresholds.
        micro: micro-batch size of the accumulation rules; must divide ``batch``.

    Returns:
        A :class:`GradientRule`.
    """
    if name not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {name!r}")
    batch = _check_int("batch", batch, 1)
    validation.check_value("networks", "momentum", momentum, lambda a: (a >= 0) & (a < 1), "in [0, 1)")
    momentum = float(momentum)
    _check_rate("learning_rate", learning_rate, allowed_inf=False)
    if name != "none":
        _check_rate("clip", clip, allowed_inf=True)
    lr = jnp.asarray(learning_rate, DTYPE)
    c = jnp.asarray(jnp.inf if name == "none" else clip, DTYPE)  # "none" ignores clip (None too)
    sgd = optax.sgd(lr, momentum=momentum)
    if name == "none":
        return GradientRule(sgd, False, batch)
    if name == "batch":
        return GradientRule(optax.chain(optax.clip_by_global_norm(c), sgd), False, batch)
    if name == "per-sample":
        return GradientRule(optax.chain(per_example_clip(c), sgd), True, batch)
    if name == "index":
        return GradientRule(optax.chain(per_example_clip(index_thresholds(c, batch, beta)), sgd), True, batch)
    micro = _check_int("micro", micro, 1)
    if batch % micro:
        raise ValueError(f"micro must divide batch={batch}, got {micro}")
    k = batch // micro
    if name == "micro-clip":
        tx = optax.chain(optax.clip_by_global_norm(c), optax.MultiSteps(sgd, k).gradient_transformation())
    else:
        tx = optax.MultiSteps(optax.chain(optax.clip_by_global_norm(c), sgd), k).gradient_transformation()
    return GradientRule(_standard_promotion(tx), False, micro)


# ---- training -----------------------------------------------------------------------------------

class TrainConfig(NamedTuple):
    """Static settings of :func:`train` (hashable: pass it as a static argument to ``jax.jit``).

    Attributes:
        rule: one of :data:`RULES`.
        epochs: passes over the training split (the last partial batch of each pass is dropped).
        batch: samples per optimizer step.
        sizes: layer widths of the MLP.
        momentum, beta, micro: as in :func:`gradient_rule`.
        checkpoints: epochs (0 = initialisation) at which to return the parameters.
        evaluate: whether to compute the per-epoch metrics (off for timing the training alone).
    """

    rule: str
    epochs: int = 30
    batch: int = 32
    sizes: tuple = (N_FEATURES, 64, N_CLASSES)
    momentum: float = 0.9
    beta: float = 2.0
    micro: int = 8
    checkpoints: tuple = ()
    evaluate: bool = True


class TrainResult(NamedTuple):
    """Per-epoch metrics, index 0 at initialisation (shape ``(epochs + 1,)`` each).

    ``val_loss``, ``test_loss`` and ``test_acc`` use the clean validation and test targets (the
    training objective itself is not evaluated: on noisy targets it measures the noise).
    ``params``: the parameters after the last epoch. ``checkpoints``: the parameters at ``config.checkpoints``, stacked on a leading axis (``None``
    when there are none). Metrics are ``None`` when ``config.evaluate`` is off. A diverged run
    shows as non-finite losses from its divergence on (callers report it; see the study script);
    its accuracy stays a finite number there (the arg-max of non-finite outputs), not a sign of
    divergence.
    """

    val_loss: Any
    test_loss: Any
    test_acc: Any
    params: Any
    checkpoints: Any


def shuffled_batches(key: jax.Array, n_train: int, epochs: int, batch: int) -> jax.Array:
    """The sample indices of every batch: one fresh permutation of the training split per epoch.

    Epoch ``e`` uses ``jax.random.permutation(fold_in(key, e), n_train)`` and drops the last
    partial batch. Kept out of :func:`train` so that the rules share their batches (common random
    numbers) and random-number code is compiled once, not once per rule.

    Returns:
        int32 array ``(epochs, n_train // batch, batch)``.
    """
    n_train = _check_int("n_train", n_train, 1)
    epochs = _check_int("epochs", epochs, 1)
    batch = _check_int("batch", batch, 1)
    if batch > n_train:
        raise ValueError(f"batch must be at most n_train={n_train}, got {batch}")
    steps = n_train // batch

    def one(e):
        order = jax.random.permutation(jax.random.fold_in(key, e), n_train)
        return order[: steps * batch].reshape(steps, batch).astype(jnp.int32)

    return jax.vmap(one)(jnp.arange(epochs))


def train(config: TrainConfig, learning_rate, clip, data: DigitsSplit, params, batches) -> TrainResult:
    """Train the MLP with SGD with momentum under ``config.rule``; pure, so it jits and vmaps.

    No random numbers are drawn inside: the initial ``params`` (:func:`init_mlp`) and the batch
    order ``batches`` (:func:`shuffled_batches`) come in, so rules given the same ones are
    compared on common random numbers, and one compiled program serves every seed.

    Args:
        config: static settings (:class:`TrainConfig`).
        learning_rate, clip: scalars (vmap over them to sweep a grid).
        data: a :class:`DigitsSplit` (vmap over stacked splits for several seeds).
        params: initial parameters, with ``config.sizes``.
        batches: int ``(config.epochs, steps, config.batch)`` sample indices into the training split.

    Returns:
        A :class:`TrainResult`.
    """
    if config.rule not in RULES:
        raise ValueError(f"config.rule must be one of {', '.join(RULES)}, got {config.rule!r}")
    epochs = _check_int("epochs", config.epochs, 1)
    for e in config.checkpoints:
        if isinstance(e, bool) or not isinstance(e, numbers.Integral) or not 0 <= e <= epochs:
            raise ValueError(f"checkpoints must be epochs in [0, {epochs}], got {config.checkpoints!r}")
    if not hasattr(batches, "ndim") or batches.ndim != 3 or batches.shape[0] != epochs or (
            batches.shape[2] != config.batch):
        raise ValueError(f"batches must be an array of shape (epochs={epochs}, steps, "
                         f"batch={config.batch}), got {getattr(batches, 'shape', type(batches).__name__)}")
    widths = (int(np.shape(params[0]["w"])[0]), *(int(np.shape(p["w"])[1]) for p in params))
    if widths != tuple(config.sizes):
        raise ValueError(f"params have layer widths {widths}; config.sizes={tuple(config.sizes)} "
                         "(init_mlp(key, config.sizes) makes them)")
    n_train = int(np.shape(data.x_train)[0])
    if validation.is_concrete(batches):
        # JAX clamps an index out of range: every step would silently reuse the last sample.
        b = np.asarray(batches)
        if b.dtype.kind not in "iu" or (b.size and (b.min() < 0 or b.max() >= n_train)):
            raise ValueError(f"batches must be integer indices into the {n_train} training samples "
                             f"(0..{n_train - 1}); got dtype {b.dtype}, range "
                             f"{b.min() if b.size else None}..{b.max() if b.size else None}")
    # Indexed by the scan's traced batch indices, the splits must be JAX arrays (a DigitsSplit
    # holds NumPy arrays; under jit they arrive as arrays anyway).
    data = jax.tree.map(jnp.asarray, data)
    rule = gradient_rule(config.rule, learning_rate, clip, batch=config.batch,
                         momentum=config.momentum, beta=config.beta, micro=config.micro)
    opt_state = rule.tx.init(params)
    grad_fn = per_example_grads if rule.per_example else jax.grad(loss_fn)

    def metrics(p):
        if not config.evaluate:
            return None
        out = apply_mlp(p, data.x_test)
        test_loss = 0.5 * jnp.mean(jnp.sum((out - data.y_test) ** 2, axis=-1))
        return loss_fn(p, data.x_val, data.y_val), test_loss, _hits(out, data.labels_test)

    def step(carry, idx):
        p, s = carry
        g = grad_fn(p, data.x_train[idx], data.y_train[idx])
        updates, s = rule.tx.update(g, s, p)
        return (optax.apply_updates(p, updates), s), None

    def epoch(carry, order):
        carry, _ = jax.lax.scan(step, carry, order.reshape(-1, rule.chunk))
        return carry, (metrics(carry[0]), carry[0] if config.checkpoints else None)

    (final, _), (per_epoch, params_seq) = jax.lax.scan(epoch, (params, opt_state), batches)

    def with_init(first, rest):
        return jnp.concatenate([first[None], rest])

    m0 = metrics(params)
    curves = (None,) * 3 if m0 is None else jax.tree.map(with_init, m0, per_epoch)
    ckpt = None
    if config.checkpoints:
        every = jax.tree.map(with_init, params, params_seq)
        ckpt = jax.tree.map(lambda a: a[np.asarray(config.checkpoints)], every)
    return TrainResult(*curves, final, ckpt)


# ---- Chen, Wu and Hong's symmetry proxy ---------------------------------------------------------

def symmetry_statistic(points: jax.Array) -> jax.Array:
    """How far an empirical distribution is from its reflection through the origin, in ``[0, 1]``.

    With ``A = mean_ij |p_i + p_j|`` and ``D = mean_ij |p_i - p_j|`` (all ordered pairs, ``i = j``
    included), the energy distance between the empirical law ``P`` of the points and its reflection
    ``-P`` is ``2 E|X + X'| - 2 E|X - X'| = 2 (A - D) >= 0``, and the statistic is
    ``H = (A - D) / A``: 0 exactly when the sample equals its reflection (a symmetric sample), 1
    for a point mass away from 0. Being a ratio of distances it does not depend on the scale.

    Args:
        points: ``(n, k)`` (``k = 2`` for Chen et al.'s projections), or ``(n,)``.

    Returns:
        Scalar ``H``.

    References:
        Chen, Wu, Hong (NeurIPS 2020): the clipping bias is bounded by the distance between the
        gradient-noise law and a symmetric one. Szekely and Rizzo, *Energy statistics* (2013).
    """
    p = jnp.asarray(points)
    if p.ndim == 1:
        p = p[:, None]
    if p.ndim != 2 or p.shape[0] < 2:
        raise ValueError(f"points must have shape (n, k) or (n,) with n >= 2, got {p.shape}")
    validation.check_value("symmetry_statistic", "points", points, np.isfinite, "finite")
    s = jnp.linalg.norm(p[:, None, :] + p[None, :, :], axis=-1).mean()
    d = jnp.linalg.norm(p[:, None, :] - p[None, :, :], axis=-1).mean()
    return jnp.where(s > 0, (s - d) / jnp.where(s > 0, s, 1), 0.0)


def projected_gradient_symmetry(params, x: jax.Array, y: jax.Array, key: jax.Array, *,
                                n_projections: int = 32, n_points: int = 512,
                                n_null: int = 16) -> tuple[jax.Array, jax.Array]:
    """Chen et al.'s symmetry proxy: per-sample gradient noise projected on random 2-D subspaces.

    The gradient noise of sample ``i`` is ``xi_i = g_i - mean_j g_j`` (its per-sample gradient
    minus the full-batch gradient over all of ``x``). For each of ``n_projections`` random 2-D
    subspaces (orthonormalised Gaussian pairs in parameter space), ``n_points`` samples' noise is
    projected and :func:`symmetry_statistic` computed. The null reference flips each projected
    point's sign at random (``n_null`` times per subspace): a sample that is exactly symmetric in
    law with the same radii and size, so it shows the value ``H`` takes for a symmetric law by
    sampling alone.

    Args:
        params: network parameters; x, y: the samples and targets (all of them define the mean).
        key: PRNG key (subspaces, subsample, signs).
        n_projections, n_points, n_null: sizes (``n_points`` is capped at ``len(x)``).

    Returns:
        ``(h, h_null)`` of shapes ``(n_projections,)`` and ``(n_projections, n_null)``.
    """
    n_projections = _check_int("n_projections", n_projections, 1)
    n_points = _check_int("n_points", n_points, 2)
    n_null = _check_int("n_null", n_null, 1)
    g = per_example_grads(params, x, y)
    flat = jnp.concatenate([a.reshape(a.shape[0], -1) for a in jax.tree.leaves(g)], axis=1)
    xi = flat - flat.mean(axis=0, keepdims=True)
    k_sub, k_pts, k_sign = jax.random.split(key, 3)
    xi = xi[jax.random.permutation(k_pts, xi.shape[0])[: min(n_points, xi.shape[0])]]
    basis = jax.random.normal(k_sub, (n_projections, xi.shape[1], 2), xi.dtype)
    basis = jnp.linalg.qr(basis)[0]
    proj = jnp.einsum("nd,pdk->pnk", xi, basis, precision=MATMUL_PRECISION)
    signs = jax.random.rademacher(k_sign, (n_projections, n_null, proj.shape[1], 1), xi.dtype)

    def one(args):
        pts, sg = args
        return symmetry_statistic(pts), jax.vmap(symmetry_statistic)(sg * pts[None])

    return jax.lax.map(one, (proj, signs))
