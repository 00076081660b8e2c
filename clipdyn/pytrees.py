"""Pytree helpers shared by the laws, schedules, rules and sweeps.

* :func:`frozen_pytree`: the frozen dataclass + pytree registration every law, schedule and rule uses.
* :func:`cast_floats`: a pytree's floating leaves in one precision.
* :func:`stack`: one batched pytree (leading axis) from many of one structure: how a sweep's
  configurations become one vmapped program.
* :func:`to_device`: a host (NumPy) value on the device, without compiling anything.
* :func:`content_hash`: what names a pytree by its values. A sweep records these hashes in its
  results (``config["fingerprints"]``), so an interrupted run is never resumed against changed
  inputs, and the max-CCC schedule keys its per-process tables by them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clipdyn import validation

__all__ = ["frozen_pytree", "cast_floats", "stack", "to_device", "content_hash"]


def frozen_pytree(cls):
    """A frozen dataclass registered as a JAX pytree (fields marked ``static`` are metadata).

    Registered as a custom node (flatten/unflatten functions), not with
    :func:`jax.tree_util.register_dataclass`: in jaxlib 0.10 the tree structures of two different
    ``register_dataclass`` classes with the same field layout compare *equal* (their hashes
    differ), so a ``jit``-compiled function called with ``Gaussian(0.7)`` could, now and then,
    run the program compiled for ``Rademacher`` (observed in the test suite; reproduced with
    400 such classes: 110 of 800 calls returned another class's result). A custom node's
    structure compares by its registration, i.e. by class. Unflattening calls the constructor,
    as ``register_dataclass`` does, so ``__post_init__`` checks concrete values.

    Args:
        cls: the class to decorate.

    Returns:
        The frozen dataclass, registered.

    Raises:
        TypeError: for a class already made a dataclass that is not frozen (a pytree's fields
            must not change under JAX). One already made a frozen dataclass is taken as it is
            (applying ``dataclass`` twice failed with "Cannot overwrite attribute __setattr__").

    Example:
        >>> import jax.numpy as jnp
        >>> from clipdyn.pytrees import frozen_pytree
        >>> @frozen_pytree
        ... class Halving:  # a schedule: eta halves at t = 1, threshold 0.5
        ...     eta: float = 1.0
        ...     def __call__(self, t, R):
        ...         return jnp.where(t < 1.0, self.eta, 0.5 * self.eta), jnp.asarray(0.5)
        >>> Halving(2.0)(1.5, 0.3)[0]
        Array(1., dtype=float32, weak_type=True)
    """
    own = cls.__dict__.get("__dataclass_params__")
    if own is not None and "__dataclass_fields__" in cls.__dict__:
        if not own.frozen:
            raise TypeError(f"frozen_pytree: {cls.__name__} is already a dataclass that is not "
                            "frozen; drop its @dataclass (frozen_pytree makes it a frozen one)")
    else:
        cls = dataclasses.dataclass(frozen=True)(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    data = tuple(f.name for f in fields if not f.metadata.get("static", False))
    meta = tuple(f.name for f in fields if f.metadata.get("static", False))
    keys = tuple(jax.tree_util.GetAttrKey(name) for name in data)

    def flatten(obj):
        return [getattr(obj, n) for n in data], tuple(getattr(obj, n) for n in meta)

    def flatten_with_keys(obj):
        children, aux = flatten(obj)
        return list(zip(keys, children)), aux

    def unflatten(aux, children):
        with validation.rebuilding():  # JAX's placeholders (None, sentinels) pass the checks
            return cls(**dict(zip(data, children)), **dict(zip(meta, aux)))

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    return cls


def to_device(x, dtype=None) -> jax.Array:
    """The host value ``x`` (NumPy array or scalar) as a device array of ``dtype`` (default: its
    own, canonicalised to the current precision as :func:`jax.numpy.asarray` would).

    The cast happens on the host (IEEE rounding, as on the device) and the array is moved by
    :func:`jax.device_put`: ``jnp.asarray`` of a host array compiles a small staging program for
    every new shape and dtype (jax 0.10: 10-40 ms each, measured), which a sweep's start-up paid
    for every leaf and setting it moved.
    """
    return jax.device_put(np.asarray(x, dtype))


def cast_floats(tree, dtype):
    """``tree`` with its floating leaves cast to ``dtype`` (other leaves untouched)."""

    def cast(path, x):
        if isinstance(x, jax.core.Tracer):
            return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
        # Concrete leaves are cast on the host: the same rounding, and no small program to
        # compile per leaf and dtype (a sweep's start-up paid a few of them).
        a = np.asarray(x)
        if not jnp.issubdtype(a.dtype, jnp.floating):
            return jnp.asarray(x)
        with np.errstate(over="ignore"):
            narrow = a.astype(dtype)
        if np.any(np.isinf(narrow) & np.isfinite(a)):
            # eta = 1e50 became inf in float32 and was refused as "eta=[inf]", after a NumPy
            # warning line: name the value and the way out instead.
            big = float(np.max(np.abs(a[np.isfinite(a)])))
            raise ValueError(f"{type(tree).__name__} field {jax.tree_util.keystr(path).lstrip('.')}="
                             f"{big:g} is beyond {np.dtype(dtype).name}'s range (largest "
                             f"{float(np.finfo(dtype).max):.3g}); run in float64 (precision 64, "
                             "--precision 64)")
        return to_device(narrow)

    return jax.tree_util.tree_map_with_path(cast, tree)


def stack(trees: Sequence[Any], dtype=None) -> Any:
    """One pytree whose leaves stack the leaves of ``trees`` (all of one structure) on a new
    leading axis.

    Concrete leaves are stacked on the host and moved once: a sweep of 1024 configurations
    would otherwise pay 1024 small device transfers per leaf (seconds, measured). Traced leaves
    (inside ``jit``) are stacked by ``jnp.stack``.

    Args:
        trees: the pytrees (at least one).
        dtype: the leaves' dtype (default: as :func:`jax.numpy.asarray` gives them, in the
            current precision).

    Returns:
        The stacked pytree.
    """
    def one(*xs):
        if any(isinstance(x, jax.core.Tracer) for x in xs):
            return jnp.stack([jnp.asarray(x, dtype) for x in xs])
        arrays = [np.asarray(x) for x in xs]
        kind = dtype if dtype is not None else jnp.result_type(*[
            x if isinstance(x, (bool, int, float, complex)) else a.dtype for x, a in zip(xs, arrays)])
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, which the checks name
            return to_device(np.stack(arrays).astype(jax.dtypes.canonicalize_dtype(kind)))

    return jax.tree.map(one, *trees)


def content_hash(tree) -> str:
    """sha256 of a pytree's structure (static fields included) and leaf values.

    Floating leaves are hashed as float64, so the hash names the values, not how they were
    passed. A sweep records the hashes of its spectrum, start, noise law (an empirical law's
    atoms included), schedules and rules (``config["fingerprints"]``), so changing a file's
    contents between an interrupted run and its rerun is noticed, not mixed in.

    Args:
        tree: any pytree of array-likes (a noise law, a schedule, a rule, an array).

    Returns:
        The hex digest.

    Example:
        >>> import numpy as np
        >>> content_hash(np.float32(0.5)) == content_hash(0.5)
        True
        >>> content_hash([1.0, 2.0]) == content_hash((1.0, 2.0))
        False
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    h = hashlib.sha256(str(treedef).encode())
    for leaf in leaves:
        a = np.asarray(leaf)
        if a.dtype.kind == "f":
            a = a.astype(np.float64)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
