"""clipdyn.pytrees: registration, stacking configurations, content hashes, and the sweep's time
estimate.

Exact checks (dtypes, equality); no tolerances.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import clipdyn as cd
from clipdyn.precision import x64
from clipdyn.pytrees import cast_floats, content_hash, frozen_pytree, stack, to_device
import clipdyn.runs.sweep as sw
from clipdyn.theory import batch_factors, rules
from clipdyn.theory.schedules import Constant


def test_host_values_reach_the_device_as_jnp_asarray_would_without_compiling(caplog):
    # Exact: the same dtype and bits as jnp.asarray gives (its cast rounds as NumPy's does), and
    # no program compiled (jnp.asarray compiles a staging program per new shape and dtype).
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5)) * 1e3
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        caplog.clear()
        moved = [to_device(x), to_device(x, np.float32), to_device(np.float64(2.5), jnp.float32),
                 to_device(np.arange(7)), cast_floats({"a": x[:, :2]}, np.float32)["a"],
                 stack([{"a": 1.0}, {"a": 2.0}])["a"]]
        assert not [r for r in caplog.records if "Compiling" in r.getMessage()]
    want = [jnp.asarray(x), jnp.asarray(x, jnp.float32), jnp.asarray(2.5, jnp.float32),
            jnp.asarray(np.arange(7)), jnp.asarray(x[:, :2], jnp.float32), jnp.asarray([1.0, 2.0])]
    for got, ref in zip(moved, want):
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    # Other leaves are left as jnp.asarray makes them (a Python int stays weakly typed).
    assert cast_floats({"n": 3}, np.float32)["n"].weak_type
    with jax.enable_x64(False):  # canonicalised to the current precision, as jnp.asarray does
        assert to_device(x).dtype == jnp.asarray(x).dtype == jnp.float32


def test_structures_of_different_classes_differ():
    # jaxlib 0.10's register_dataclass structures of two classes with one field each compare
    # equal; jit then served Rademacher's program to a Gaussian now and then. Ours must not.
    same_layout = [cd.Gaussian(0.7), cd.Rademacher(0.7)]
    a, b = (jax.tree.structure(x) for x in same_layout)
    assert a != b
    assert a == jax.tree.structure(cd.Gaussian(0.1))
    rebuilt = jax.tree.map(lambda v: v, cd.StudentT(2.5, 1.0))
    assert isinstance(rebuilt, cd.StudentT) and rebuilt == cd.StudentT(2.5, 1.0)


def test_jit_dispatches_by_class():
    # The failure this guards against depends on hash-table probing, so it is triggered by
    # numbers: 80 classes of one layout, each a different function under one jit. Under the
    # jaxlib fault, plain register_dataclass classes here got another class's value in 26 of the
    # 160 calls (110 of 800 with 400 classes); the structure test above is the exact check.
    classes = []
    for i in range(80):
        cls = type(f"Law{i}", (), {"__annotations__": {"x": float}, "k": float(i)})
        classes.append(frozen_pytree(cls))
    f = jax.jit(lambda law: law.x * type(law).k)
    got = [float(f(cls(1.0))) for cls in classes + classes]
    assert got == [float(i) for i in range(80)] * 2


def test_preclip_factors_distinguish_gaussian_from_rademacher():
    # The suite's observed failure: Gaussian(0.7) returned Rademacher(0.7)'s factors.
    with x64():
        r = [float(v) for v in batch_factors.preclip_factors(cd.Rademacher(0.7), 0.01, 0.2, 1.0)]
        g = [float(v) for v in batch_factors.preclip_factors(cd.Gaussian(0.7), 0.01, 0.2, 1.0)]
    assert abs(g[0] - r[0]) > 0.02  # 0.1355 against 0.1112


def test_stack_matches_jnp_stack_values_and_dtypes():
    trees = [Constant(1.0, np.float32(0.5)), Constant(2.0, np.float32(0.25))]
    out = stack(trees)
    ref = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    with x64():
        out = stack(trees)
        ref = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_stack_with_dtype_and_under_jit():
    r = rules.stack_rules([rules.index_thresholds(4, 2.0), rules.index_thresholds(4, 3.0)])
    assert r.beta.shape == (2,) and np.array_equal(np.asarray(r.beta), [2.0, 3.0])
    out = jax.jit(lambda a: stack([a, a + 1.0]))(jnp.ones(3))
    assert np.array_equal(np.asarray(out), [[1.0] * 3, [2.0] * 3])


def test_content_hash_names_values_and_structure():
    assert content_hash(np.float32(0.5)) == content_hash(0.5)
    assert content_hash(Constant(1.0, 0.5)) == content_hash(Constant(1.0, 0.5))
    assert content_hash(Constant(1.0, 0.5)) != content_hash(Constant(1.0, 0.25))
    assert content_hash([1.0, 2.0]) != content_hash((1.0, 2.0))
    assert sw.content_hash is content_hash  # one implementation, re-exported by the sweep


@pytest.mark.parametrize("hiccup", [None, 2, 3])
def test_time_estimate_is_not_fooled_by_blocks_or_warm_up(monkeypatch, hiccup):
    """A fake program on a fake clock: the first call after compiling costs 0.5 s, a call then
    costs 0.01 s plus 1e-4 s per step of whole 224-step blocks of each output interval (as the
    block engine runs); ``hiccup``: that call takes 0.2 s longer (the machine was busy). The
    estimate must be the steady 1e-4 s per step within 5 %, and every timed call a whole number of
    blocks (a hiccup in the last timing may overstate it by the overhead of the timing before).
    Timing 8 steps (a block's cost charged to 8 steps), a call with 101 outputs, the first call
    or the hiccup gives many times that: the code before whole blocks returned 2.9e-2 s per
    step with a hiccup at the first timed call (a 6 s sweep announced as 26 min)."""
    clock = [0.0]
    calls = []

    def fake_call(steps_in):
        steps = np.asarray(steps_in)
        calls.append(int(steps[-1]))
        blocks = sum(math.ceil(int(b - a) / 224) for a, b in zip(steps[:-1], steps[1:]))
        clock[0] += 0.5 if len(calls) == 1 else 0.01 + 1e-4 * 224 * blocks
        clock[0] += 0.2 if len(calls) == hiccup else 0.0
        return jnp.zeros(())

    monkeypatch.setattr(sw.time, "perf_counter", lambda: clock[0])
    steps = jnp.asarray(np.rint(np.linspace(0, 100_000, 101)).astype(np.int64))
    per_step = sw._seconds_per_step(fake_call, steps, work=1e12, granule=224)
    if hiccup == 3:  # in the last timing: bounded by the one before, overhead included
        assert 0.95e-4 <= per_step <= (0.01 + 1e-4 * 224) / 224
    else:
        assert per_step == pytest.approx(1e-4, rel=0.05)
    assert all(n % 224 == 0 for n in calls) and max(calls) <= 25_000  # a quarter of the run


def test_frozen_pytree_takes_a_frozen_dataclass_and_refuses_a_mutable_one():
    # "@frozen_pytree @dataclass(frozen=True)" is the natural way to write a user's law or
    # schedule; it failed with "Cannot overwrite attribute __setattr__" from dataclasses.
    import dataclasses

    import jax
    import pytest

    from clipdyn.pytrees import frozen_pytree

    @frozen_pytree
    @dataclasses.dataclass(frozen=True)
    class Twice:
        x: float = 1.0

    leaves, tree = jax.tree_util.tree_flatten(Twice(2.0))
    assert leaves == [2.0] and jax.tree_util.tree_unflatten(tree, [3.0]) == Twice(3.0)
    with pytest.raises(TypeError, match="Mutable is already a dataclass that is not frozen"):
        @frozen_pytree
        @dataclasses.dataclass
        class Mutable:
            x: float = 1.0
