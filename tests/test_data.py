"""Real data (clipdyn.data): the loaders on tiny files written here in each format, their errors,
the protocol against a direct NumPy computation, the cache, and the data simulator against a
plain NumPy loop fed the same rows.

Precision: float64 throughout (the conftest turns on x64; the protocol is NumPy float64). The
protocol is checked against independent NumPy references (``np.linalg.pinv``, ``eigvalsh`` of
``K``) to 1e-10 relative: both sides are backward-stable float64 computations on matrices with
condition number below 1e3 here, so they agree to ~1e-13 and 1e-10 leaves a wide margin.
"""

import pickle
import shutil
import warnings
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipdyn import sim as sm
from clipdyn.data import (DataProblem, FeatureMap, from_arrays, load_problem, load_source,
                          parse_features)
from clipdyn.data import cache as data_cache
from clipdyn.data.protocol import rank_cutoff
from clipdyn.runs.sweep import simulate_runs
from clipdyn.theory.noise import Empirical
from clipdyn.theory.ode import solve_ode
from clipdyn.theory.schedules import constant


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every test caches into its own folder, never the user's ~/.cache."""
    monkeypatch.setenv(data_cache.ENV, str(tmp_path / "cache"))


# ---- tiny files in each format ---------------------------------------------------------------

def tiny_arrays(n=120, seed=0, integer_y=True):
    """Inputs with a constant column (dropped) and a duplicate column (rank deficient)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)) @ rng.standard_normal((6, 6)) + rng.uniform(-2, 2, 6)
    X = np.column_stack([X[:, :3], np.full(n, 3.5), X[:, 3:], X[:, 1]])
    if integer_y:  # four classes cut from a noisy linear score, so there is something to learn
        score = X[:, 0] - X[:, 4] + 0.5 * rng.standard_normal(n)
        y = np.digitize(score, np.quantile(score, [0.25, 0.5, 0.75]))
    else:
        y = X[:, 0] - 2 * X[:, 4] + rng.standard_t(3, n) + 10.0
    return X, y


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def write_cifar(folder, rows=4, seed=0, skip=None, broken=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, name in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                              "data_batch_5", "test_batch"]):
        if name == skip:
            continue
        batch = {b"batch_label": f"batch {i}".encode(),
                 b"labels": [int(v) for v in rng.integers(0, 10, rows)],
                 b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
                 b"filenames": [b"x.png"] * rows}
        if name == broken:
            del batch[b"labels"]
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return folder


WIKI = """
 = Valkyria Chronicles III =

 Senjo no Valkyria 3 : Unrecorded Chronicles is a tactical role @-@ playing video game .
 The game began development in 2010 , carrying over a large portion of the work .
 It met with positive sales in Japan , and was praised by both Japanese and western critics .
"""


def write_wiki(folder, text=WIKI, name="wiki.train.raw"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return folder


# ---- loaders ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, shape, classes", [("digits", (1797, 64), 10), ("breast_cancer", (569, 30), 2),
                                                  ("wine", (178, 13), 3), ("iris", (150, 4), 3),
                                                  ("diabetes", (442, 10), None)])
def test_sklearn_sources(name, shape, classes):
    from sklearn import datasets

    ds = load_source(f"sklearn:name={name}")
    bunch = getattr(datasets, f"load_{name}")()
    assert ds.inputs.shape == shape and ds.n_classes == classes
    np.testing.assert_array_equal(ds.inputs, bunch.data)
    if classes is None:
        np.testing.assert_array_equal(ds.values, bunch.target)
    else:
        np.testing.assert_array_equal(ds.labels, bunch.target)


def test_cifar10_reads_six_batches_in_order(tmp_path):
    folder = write_cifar(tmp_path / "cifar")
    ds = load_source(f"cifar10:path={folder}")
    want_x, want_y = [], []
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch"]:
        with open(folder / name, "rb") as f:
            b = pickle.load(f)
        want_x.append(b[b"data"])
        want_y += b[b"labels"]
    np.testing.assert_array_equal(ds.inputs, np.concatenate(want_x))
    np.testing.assert_array_equal(ds.labels, want_y)
    assert ds.inputs.dtype == np.uint8 and ds.n_classes == 10 and ds.name == "cifar10"
    sub = load_source(f"cifar10:path={folder},n=10")  # the documented subsample
    rows = np.sort(np.random.default_rng(0).choice(24, 10, replace=False))
    np.testing.assert_array_equal(sub.inputs, ds.inputs[rows])
    np.testing.assert_array_equal(sub.labels, ds.labels[rows])
    dp = load_problem(f"cifar10:path={folder}", "relu:d=16,seed=1")
    np.testing.assert_array_equal(dp.target, np.where(ds.labels >= 5, 1.0, -1.0))


@pytest.mark.parametrize("case, match", [
    ("no-dir", r"cifar10: folder .* not found; download the 'CIFAR-10 python version' from https://www\.cs\.toronto\.edu/~kriz/cifar\.html"),
    ("no-file", r"cifar10: '.*data_batch_3' not found; download the 'CIFAR-10 python version' from https://www\.cs\.toronto\.edu/~kriz/cifar\.html and extract it"),
    ("no-labels", r"data_batch_2' has no 'labels' entry"),
    ("shape", r"'data' is uint8 of shape \(4, 100\); it must be uint8 of shape \(N, 3072\)"),
    ("garbage", r"is not a CIFAR-10 python batch"),
    ("code", r"is not a CIFAR-10 python batch .*posix\.system is not allowed"),
    ("label-range", r"label 12 is outside 0\.\.9"),
])
def test_cifar10_errors(tmp_path, case, match):
    folder = tmp_path / "cifar"
    if case != "no-dir":
        write_cifar(folder, skip="data_batch_3" if case == "no-file" else None,
                    broken="data_batch_2" if case == "no-labels" else None)
    f = folder / "data_batch_4"
    if case == "shape":
        f.write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}))
    if case == "garbage":
        f.write_bytes(b"not a pickle at all")
    if case == "code":  # a pickle that would run a shell command when loaded naively
        f.write_bytes(b"cposix\nsystem\n(S'echo owned'\ntR.")
    if case == "label-range":
        f.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 12]}))
    with pytest.raises(ValueError, match=match) as err:
        load_source(f"cifar10:path={folder}")
    assert "\n" not in str(err.value)


def test_wikitext2_protocol(tmp_path):
    # Row p: counts of crc32 buckets of tokens p-W..p-1; value log(count of token p), checked
    # against a direct recomputation; the .tokens name reads the same and keeps the fingerprint.
    folder = write_wiki(tmp_path / "wt")
    W, H = 3, 8
    ds = load_source(f"wikitext2:path={folder},window={W},buckets={H},n=100000")
    tokens = WIKI.split()
    counts = {t: tokens.count(t) for t in tokens}
    want = np.zeros((len(tokens) - W, H))
    for r, p in enumerate(range(W, len(tokens))):
        for t in tokens[p - W:p]:
            want[r, zlib.crc32(t.encode()) % H] += 1
    np.testing.assert_array_equal(ds.inputs, want)
    np.testing.assert_allclose(ds.values, [np.log(counts[t]) for t in tokens[W:]], rtol=1e-15)
    assert ds.labels is None and ds.name == f"wikitext2:window={W},buckets={H},n=100000"
    sub = load_source(f"wikitext2:path={folder},window={W},buckets={H},n=20")
    rows = np.sort(np.random.default_rng(0).choice(len(tokens) - W, 20, replace=False))
    np.testing.assert_array_equal(sub.inputs, want[rows])
    other = write_wiki(tmp_path / "wt2", name="wiki.train.tokens")
    dp1 = load_problem(f"wikitext2:path={folder},window={W},buckets={H}", "raw")
    dp2 = load_problem(f"wikitext2:path={other},window={W},buckets={H}", "raw")
    assert dp1.fingerprint == dp2.fingerprint and dp1.kind == "regression"
    assert abs(np.mean(dp1.target)) < 1e-12 and np.std(dp1.target) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("case, match", [
    ("no-dir", r"wikitext2: folder .* not found; download WikiText-2 from https://"),
    ("no-file", r"wikitext2: '.*wiki\.train\.raw' \(or wiki\.train\.tokens\) not found; download WikiText-2"),
    ("short", r"has 5 tokens; window=16 needs at least 18"),
    ("binary", r"is not UTF-8 text"),
    ("buckets", r"wikitext2: 53 rows x buckets=100000000000 needs about 77\.1 TB of memory"),
])
def test_wikitext2_errors(tmp_path, case, match):
    folder = tmp_path / "wt"
    if case == "no-file":
        write_wiki(folder, name="wiki.valid.raw")
    if case == "short":
        write_wiki(folder, text="a b c d e")
    if case == "binary":
        folder.mkdir()
        (folder / "wiki.train.raw").write_bytes(b"\xff\xfe\x00 abc")
    if case == "buckets":  # refused before the counts are allocated
        write_wiki(folder)
        with pytest.raises(ValueError, match=match):
            load_source(f"wikitext2:path={folder},window=2,buckets=1e11")
        return
    with pytest.raises(ValueError, match=match):
        load_source(f"wikitext2:path={folder}")


def test_npz_source_and_targets(tmp_path):
    X, y = tiny_arrays()
    ds = load_source(f"npz:path={write_npz(tmp_path / 'd.npz', X=X, y=y)}")
    np.testing.assert_array_equal(ds.inputs, X)
    np.testing.assert_array_equal(ds.labels, y)  # 0..3 are their own ranks
    dp = load_problem(ds)
    np.testing.assert_array_equal(dp.target, np.where(y >= 2, 1.0, -1.0))  # n_classes / 2 = 2
    labels = np.array([10, 30, 20, 30, 10, 20])  # classes are the sorted values: index = rank
    ds2 = from_arrays(np.arange(12.0).reshape(6, 2) ** 2, labels)
    np.testing.assert_array_equal(ds2.labels, [0, 2, 1, 2, 0, 1])
    Xr, yr = tiny_arrays(integer_y=False)
    dpr = load_problem(f"npz:path={write_npz(tmp_path / 'r.npz', X=Xr, y=yr)}")
    np.testing.assert_allclose(dpr.target, (yr - yr.mean()) / yr.std(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("col, factor", [(2, 1e160), (1, 1e-170), (None, 1e200), (None, 1e-300)])
def test_standardisation_does_not_depend_on_a_columns_scale(col, factor):
    # float64. Standardising is scale-free (real_data.md eq. (3.1)): a column (or all of X)
    # times 1e160 or 1e-300 is the same problem, to rounding (1e-12 relative). Before, its
    # squares overflowed or underflowed: a silently different problem (rank 4 of 5) or a
    # wrong refusal. A regression target times 1e300 is the same target too.
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 5)), rng.normal(size=50)
    Xs = X * factor if col is None else X * np.where(np.arange(5) == col, factor, 1.0)
    want = load_problem(from_arrays(X, y), cache=False)
    got = load_problem(from_arrays(Xs, y * 1e300), cache=False)
    for a, b in [(got.problem.lam, want.problem.lam), (got.problem.R0, want.problem.R0),
                 (got.target, want.target)]:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("arrays, match", [
    (None, r"npz: '.*missing\.npz' not found; it needs arrays X \(N x D, real\) and y \(N,\)"),
    ("garbage", r"is not a readable \.npz archive"),
    ("not zip", r"is not an \.npz \(zip\) archive; it needs arrays X"),
    ("npy", r"is a single \.npy array; it needs arrays X"),
    (dict(X=np.ones((3, 2))), r"has arrays \['X'\]; missing y"),
    (dict(X=np.ones(5), y=np.ones(5)), r"X has shape \(5,\); it must be \(N, D\)"),
    (dict(X=np.ones((5, 2)), y=np.ones(4)), r"y has shape \(4,\); it must be \(5,\)"),
    (dict(X=np.array([["a", "b"], ["c", "d"]]), y=np.ones(2)), r"X must hold real numbers; got dtype <U1"),
    (dict(X=np.array([[1, None], [2, 3]], dtype=object), y=np.ones(2)), r"holds non-numeric \(pickled\) arrays"),
    (dict(X=np.array([[1.0, np.nan], [2, 3]]), y=np.ones(2)), r"X has 1 non-finite value"),
    (dict(X=np.ones((4, 2)), y=np.zeros(4, int)), r"y has a single class"),
])
def test_npz_errors(tmp_path, arrays, match):
    f = tmp_path / "missing.npz"
    if arrays == "garbage":
        f.write_bytes(b"PK\x03\x04 truncated")
    elif arrays == "not zip":
        f.write_bytes(b"not a zip")
    elif arrays == "npy":
        with open(f, "wb") as handle:
            np.save(handle, np.ones((3, 2)))
    elif arrays is not None:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=match) as err:
        load_source(f"npz:path={f}")
    assert "\n" not in str(err.value)


def test_integer_spec_values_keep_every_digit():
    # Parsed through float, seed=2^53+1 became 2^53 (another W), and 2^63-2 was refused as 2^63.
    from clipdyn.data.sources import int_param

    assert int_param("s", "seed", "9007199254740993", 0) == 9007199254740993
    assert int_param("s", "seed", " 9223372036854775806", 0) == 2**63 - 2
    assert int_param("s", "buckets", "1e4", 2) == 10000
    for bad in ("1.5", "-1", "nan", "inf", "1e400"):
        with pytest.raises(ValueError, match=f"seed={bad} is not allowed; seed must be an integer >= 0"):
            int_param("s", "seed", bad, 0)
    for bad in ("x", "1_000", "\uff13"):  # Python's int() reads the last two as 1000 and 3
        with pytest.raises(ValueError, match="is not a number"):
            int_param("s", "seed", bad, 0)
    assert parse_features("relu:d=5,seed=9007199254740993").seed == 9007199254740993


def test_sklearn_dataset_names_are_case_insensitive_as_the_source():
    # SKLEARN:name=digits was accepted, sklearn:name=Digits refused; one dataset, one fingerprint
    assert load_source("sklearn:name=Digits").name == load_source("SKLEARN:name=digits").name == "sklearn:name=digits"


@pytest.mark.parametrize("spec, features, match", [
    ("mnist:path=x", None, r"unknown source 'mnist'; allowed: sklearn, cifar10, wikitext2, npz"),
    ("sklearn:name=digits,n=3", None, r"unknown key\(s\) \['n'\]; allowed: \['name'\]"),
    ("sklearn", None, r"missing name=\.\.\."),
    ("sklearn:name=iris,name=wine", None, r"name= is given twice"),
    ("sklearn:name", None, r"'name' is not of the form key=value"),
    ("npz:path=a,b.npz", None, r"'b.npz' is not of the form key=value; a value cannot contain ','"),
    ("sklearn:name=iris", "relu:d=5,seed=18446744073709551616",
     r"seed=18446744073709551616 is not allowed; seed must be an integer >= 0 and <= 9223372036854775807"),
    ("sklearn:name=mnist", None, r"sklearn: name='mnist' is not allowed; use one of digits, breast_cancer"),
    ("wikitext2:path=x,window=0", None, r"window=0 is not allowed; window must be an integer >= 1"),
    ("sklearn:name=iris", "relu", r"features spec 'relu': missing d=\.\.\."),
    ("sklearn:name=iris", "relu:d=0", r"d=0 is not allowed"),
    ("sklearn:name=iris", "relu:d=10,seed=1,seed=2", r"seed= is given twice"),
    ("sklearn:name=iris", "relu:d=10,width=3", r"unknown key\(s\) \['width'\]"),
    ("sklearn:name=iris", "rbf:d=10", r"unknown features 'rbf'; allowed: raw, relu:d=D,seed=S"),
])
def test_spec_errors(spec, features, match):
    with pytest.raises(ValueError, match=match):
        load_problem(spec, features)


# ---- the protocol against NumPy --------------------------------------------------------------

def direct(X, y, features="raw", seed=0, d=None):
    """The protocol written out with NumPy: features, K, theta* = pinv(X) y, residuals."""
    keep = X.max(0) > X.min(0)
    u = (X[:, keep] - X[:, keep].mean(0)) / X[:, keep].std(0)
    if features == "relu":
        W = np.random.default_rng(seed).standard_normal((u.shape[1], d))
        u = np.maximum(u @ (W / np.sqrt(u.shape[1])), 0.0)
    K = u.T @ u / len(u)
    theta = np.linalg.pinv(u) @ y
    return u, K, theta, y - u @ theta


@pytest.mark.parametrize("features", ["raw", "relu:d=9,seed=4", "relu:d=300,seed=0"])
def test_protocol_matches_numpy(tmp_path, features):
    # relu:d=300 > N=120: K is singular with rank <= N, the minimum-norm solution is pinv's.
    X, y_cls = tiny_arrays()
    y = np.where(y_cls >= 2, 1.0, -1.0)
    dp = load_problem(from_arrays(X, y_cls), features)
    fmap = parse_features(features)
    u, K, theta, eps = direct(X, y, fmap.kind, fmap.seed, fmap.d)
    assert dp.n_dropped_columns == 1 and dp.d_in == 7 and dp.N == 120 and dp.d == u.shape[1]
    lam_np = np.sort(np.linalg.eigvalsh(K))[::-1]
    top = lam_np[0]
    np.testing.assert_allclose(dp.lam, np.where(lam_np > 1e-9 * top, lam_np, 0.0), rtol=0, atol=1e-10 * top)
    assert dp.rank == np.linalg.matrix_rank(u)  # the duplicate column costs one rank (raw)
    np.testing.assert_allclose(dp.features @ dp.eigvecs.T, u, rtol=0, atol=1e-12 * np.abs(u).max())
    np.testing.assert_allclose(dp.theta_star, theta, rtol=0, atol=1e-10 * np.linalg.norm(theta))
    np.testing.assert_allclose(dp.residuals, eps, rtol=0, atol=1e-10)
    assert isinstance(dp.problem.noise, Empirical)
    np.testing.assert_array_equal(np.asarray(dp.problem.noise.atoms), dp.residuals)
    # v_i(0) = 1/2 (u_i^T theta*)^2 with u_i NumPy's own eigenvectors (signs do not matter)
    _, vecs = np.linalg.eigh(K)
    v0_np = 0.5 * (vecs[:, ::-1].T @ theta) ** 2
    pos = dp.lam > 0
    np.testing.assert_allclose(np.asarray(dp.problem.v0)[pos], v0_np[pos], rtol=0,
                               atol=1e-10 * v0_np.sum())
    R0 = 0.5 * theta @ K @ theta
    assert dp.R0 == pytest.approx(R0, rel=1e-10)
    assert float(dp.problem.R0) == pytest.approx(R0, rel=1e-10)
    np.testing.assert_allclose(dp.e0, -dp.eigvecs.T @ dp.theta_star, rtol=0, atol=1e-12)
    assert dp.describe() == f"arrays features={fmap.describe()}"
    assert dp.d_int == pytest.approx(lam_np.sum() / top, rel=1e-12)


def test_nearly_collinear_features_keep_theta_star():
    # Two columns equal up to 1e-7 noise: kappa(X) = 2e7. Through the SVD theta* carries errors of
    # order eps kappa = 5e-9 (observed 8e-10 against lstsq); through eigh(K) of order
    # eps kappa^2 ~ 0.1 (observed 12 %), which is why the protocol decomposes X itself.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5))
    X = np.column_stack([X, X[:, 4] + 1e-7 * rng.standard_normal(200)])
    y = X[:, 0] + X[:, 4] - 0.5 * X[:, 5] + 0.3 * rng.standard_normal(200)
    dp = load_problem(from_arrays(X, y))
    u = (X - X.mean(0)) / X.std(0)
    target = (y - y.mean()) / y.std()
    theta = np.linalg.lstsq(u, target, rcond=None)[0]
    np.testing.assert_allclose(dp.theta_star, theta, rtol=0, atol=1e-7 * np.linalg.norm(theta))
    np.testing.assert_allclose(dp.residuals, target - u @ theta, rtol=0, atol=1e-7)


def test_relu_features_not_centred_and_reproducible():
    ds = load_source("sklearn:name=iris")
    a = load_problem(ds, "relu:d=50,seed=3")
    b = load_problem(ds, FeatureMap("relu", 50, 3), cache=False)
    c = load_problem(ds, "relu:d=50,seed=4")
    np.testing.assert_array_equal(a.features, b.features)  # same seed, same numbers
    assert a.fingerprint == b.fingerprint != c.fingerprint
    X = a.features @ a.eigvecs.T
    assert np.all(X >= -1e-12) and np.mean(X) > 0.2  # ReLU outputs: non-negative, mean ~ 0.4
    assert a.d_int < 10  # the mean direction dominates K


def test_rank_cutoff_rule():
    s = np.array([10.0, 1.0, 1e-20])
    assert rank_cutoff(s, (100, 3)) == 10.0 * 100 * np.finfo(float).eps


def test_constant_target_and_inputs_refused():
    with pytest.raises(ValueError, match="regression target is constant"):
        load_problem(from_arrays(np.random.default_rng(0).standard_normal((5, 2)), np.ones(5)))
    with pytest.raises(ValueError, match="every input column is constant"):
        load_problem(from_arrays(np.ones((5, 2)), np.arange(5.0)))


def test_the_problem_is_the_same_whatever_the_blas_thread_count():
    # The ReLU product, the SVD and the residuals changed in their last bits between one and two
    # OpenBLAS threads (trial-newuser3), and a sweep's identity hashes them: a resume or a process
    # with another thread count was refused as a different sweep of unchanged data. The protocol
    # now runs its BLAS calls on one thread; bit for bit. (On a one-core machine both counts are
    # one thread and this cannot tell; CI has two cores.)
    from threadpoolctl import threadpool_limits

    built = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            built.append(load_problem("sklearn:name=digits", "relu:d=400,seed=0", cache=False))
    one, two = built
    for name in ("features", "residuals", "e0", "eigvecs"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)
    np.testing.assert_array_equal(np.asarray(one.problem.lam), np.asarray(two.problem.lam))


def test_constant_target_and_inputs_refused():
    with pytest.raises(ValueError, match=r"npz: d\.npz: the regression target is constant"):
        load_problem(from_arrays(np.random.default_rng(0).standard_normal((5, 2)), np.ones(5),
                                 name="npz", origin="d.npz"))


def test_constant_class_target_refused():
    # Labels 0..3 of 8 classes all fall below n_classes / 2: the target is -1 everywhere. Before,
    # this gave theta* ~ 1e-17 and R0 ~ 1e-33 (rounding) instead of an error.
    X = np.random.default_rng(0).standard_normal((40, 3))
    with pytest.raises(ValueError, match="every class index is below n_classes/2 = 4, so the target "
                                         "is constant -1"):
        load_problem(from_arrays(X, np.arange(40) % 4, n_classes=8), cache=False)


@pytest.mark.parametrize("bad, allowed", [("3", "not str"), (3.5, "an integer >= 2"),
                                          (0, "an integer >= 2"), (True, "not bool")])
def test_bad_class_count_named(bad, allowed):
    with pytest.raises(ValueError, match=f"n_classes={bad!r}|n_classes={bad}") as err:
        from_arrays(np.eye(4), np.array([0, 1, 0, 1]), n_classes=bad)
    assert allowed in str(err.value)


def test_theta_star_zero_refused_despite_rounding():
    # A target orthogonal to the (centred) feature: theta* is 0 up to rounding.
    x = np.array([1.0, -1.0, 1.0, -1.0, 2.0, -2.0])
    y = np.array([1.0, 1.0, -1.0, -1.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="theta\\* is 0"):
        load_problem(from_arrays(x[:, None], y), cache=False)


# ---- the cache -------------------------------------------------------------------------------

def test_dataset_is_a_frozen_copy_so_the_cache_cannot_go_stale():
    # Editing the caller's arrays after from_arrays used to leave the digest (and so the cache's
    # answer) naming the old bytes: a cache hit with another problem's spectrum.
    X, y = tiny_arrays(integer_y=False)
    ds = from_arrays(X, y)
    first = load_problem(ds)
    X[:, 0] *= 3.0
    X[0, 1] = 100.0
    assert load_problem(ds).cache_status == "hit"
    np.testing.assert_array_equal(load_problem(ds).lam, first.lam)  # ds still holds the old data
    edited = load_problem(from_arrays(X, y))
    assert edited.fingerprint != first.fingerprint and edited.cache_status == "computed"
    with pytest.raises(ValueError, match="read-only"):
        ds.inputs[0, 0] = 1.0


def test_problem_arrays_are_read_only():
    # Sweeps name the rows by the fingerprint: rows edited in place between an interrupted sweep
    # and its resumption were mixed into one results file.
    dp = load_problem(from_arrays(*tiny_arrays()), cache=False)
    for name in ("features", "residuals", "e0", "target", "eigvecs"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(dp, name)[0] = 1.0


def test_a_problem_that_is_not_the_datasets_is_refused():
    # Only d was compared: another problem of the same d mixed its spectrum (the risk) with the
    # dataset's rows (the steps), and the results recorded its R0.
    from clipdyn.theory.problem import make_problem

    dp = load_problem("sklearn:name=iris", cache=False)
    other = make_problem(np.ones(4), Empirical(dp.residuals), R0=1.0)
    with pytest.raises(ValueError, match=r"the problem is not the dataset's \(its spectrum differs at mode 0"):
        simulate_runs(other, constant(0.5, 0.5), [0], T=0.5, points=2, data=dp)
    moved = make_problem(dp.lam, Empirical(dp.residuals), v0=2.0 * np.asarray(dp.problem.v0))
    with pytest.raises(ValueError, match="its start differs at mode 0"):
        simulate_runs(moved, constant(0.5, 0.5), [0], T=0.5, points=2, data=dp)


def test_from_arrays_digest_is_of_the_arrays_and_n_classes_needs_labels():
    # The digest is always the arrays' own (a caller's digest was trusted: two datasets under one
    # digest shared a cached decomposition); n_classes with a regression target was ignored.
    X, y = tiny_arrays(integer_y=False)
    with pytest.raises(TypeError):
        from_arrays(X, y, digest="0" * 64)
    with pytest.raises(ValueError, match=r"n_classes=3 is for integer class labels; y holds float64"):
        from_arrays(X, y, n_classes=3)
    assert from_arrays(X, y).digest == from_arrays(X.copy(order="F"), list(y)).digest


def test_integer_columns_at_their_types_minimum():
    # |int8(-128)| is -128 in int8: a column {-128, 0} got scale 0 and NaN features. The same
    # data as int16 is the reference (standardisation does not depend on the dtype).
    rng = np.random.default_rng(1)
    X = rng.standard_normal((30, 4))
    y = (X[:, 0] > 0).astype(int)
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        low = np.iinfo(dtype).min
        Xi = np.column_stack([(X * 10).astype(dtype), np.where(X[:, 1] > 0, low, 0).astype(dtype)])
        got = load_problem(from_arrays(Xi, y), cache=False)
        want = load_problem(from_arrays(Xi.astype(np.float64), y), cache=False)
        np.testing.assert_array_equal(got.lam, want.lam)


def test_class_count_enters_the_fingerprint():
    # Labels 0..5 as 6 classes (ranks) and as 6 of 10: different targets (threshold 3 against 5),
    # so different fingerprints; 6 given explicitly is the ranks' own count: the same problem.
    rng = np.random.default_rng(1)
    X, labels = rng.standard_normal((60, 4)), np.arange(60) % 6
    own = load_problem(from_arrays(X, labels))
    six = load_problem(from_arrays(X, labels, n_classes=6))
    ten = load_problem(from_arrays(X, labels, n_classes=10))
    assert own.fingerprint == six.fingerprint != ten.fingerprint
    assert ten.cache_status == "computed"
    np.testing.assert_array_equal(ten.target, np.where(labels >= 5, 1.0, -1.0))
    u = (X - X.mean(0)) / X.std(0)
    theta = np.linalg.lstsq(u, ten.target, rcond=None)[0]
    np.testing.assert_allclose(ten.theta_star, theta, rtol=0, atol=1e-10 * np.linalg.norm(theta))


def test_cache_hit_is_identical_and_corrupt_files_are_recomputed(tmp_path):
    X, y = tiny_arrays()
    f = write_npz(tmp_path / "d.npz", X=X, y=y)
    first = load_problem(f"npz:path={f}", "relu:d=20,seed=0")
    assert first.cache_status == "computed"
    path = data_cache.cache_path(data_cache.cache_dir(), first.fingerprint)
    assert path.is_file()
    second = load_problem(f"npz:path={f}", "relu:d=20,seed=0")
    assert second.cache_status == "hit"

    def same(a, b):
        for name in ("features", "residuals", "e0", "eigvecs", "target"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        np.testing.assert_array_equal(np.asarray(a.problem.lam), np.asarray(b.problem.lam))
        np.testing.assert_array_equal(np.asarray(a.problem.v0), np.asarray(b.problem.v0))

    same(first, second)
    # A moved file keeps its fingerprint (and its cache entry).
    moved = tmp_path / "elsewhere" / "d.npz"
    moved.parent.mkdir()
    shutil.copy(f, moved)
    assert load_problem(f"npz:path={moved}", "relu:d=20,seed=0").cache_status == "hit"
    # Truncated file, and a valid archive whose numbers were altered (checksum fails).
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.warns(RuntimeWarning, match="corrupt or foreign cache file"):
        third = load_problem(f"npz:path={f}", "relu:d=20,seed=0")
    assert third.cache_status == "computed"
    same(first, third)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["coef"] = arrays["coef"] * 2.0
    np.savez(path, **arrays)
    with pytest.warns(RuntimeWarning, match="corrupt or foreign cache file"):
        fourth = load_problem(f"npz:path={f}", "relu:d=20,seed=0")
    same(first, fourth)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_problem(f"npz:path={f}", "relu:d=20,seed=0").cache_status == "hit"
    assert load_problem(f"npz:path={f}", "relu:d=20,seed=0", cache=False).cache_status == "uncached"


def test_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv(data_cache.ENV, "off")
    dp = load_problem("sklearn:name=iris")
    assert dp.cache_status == "uncached"
    # The argument takes the environment's words too (it used to create a folder named 'off').
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(data_cache.ENV)
    for word in ("off", "none", "False", "0"):
        assert load_problem("sklearn:name=iris", cache=word).cache_status == "uncached"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"cache=0 is not allowed; give True, False, 'off' or a folder"):
        load_problem("sklearn:name=iris", cache=0)


# ---- simulation and ODE on the data ----------------------------------------------------------

def numpy_data_sgd(X, y, theta_star, idx, eta, c, record):
    """Plain NumPy C-SGD in the ORIGINAL feature coordinates on rows ``idx[k]``; risk
    ``1/2 (theta - theta*)^T K (theta - theta*)`` with ``K = X^T X / N`` at the steps in ``record``."""
    K = X.T @ X / len(X)
    trace = np.trace(K)
    theta = np.zeros(X.shape[1])
    out = []
    for k in range(max(record) + 1):
        if k in record:
            e = theta - theta_star
            out.append(0.5 * e @ K @ e)
        if k == max(record):
            break
        x = X[idx[k]]
        g = (x @ theta - y[idx[k]]) * x
        norm = np.linalg.norm(g)
        limit = c * np.sqrt(trace)
        theta = theta - eta / trace * (1.0 if norm <= limit else limit / norm) * g
    return np.array(out)


@pytest.mark.parametrize("features, eta, c, engine", [("raw", 0.7, 0.3, "step"),
                                                      ("relu:d=40,seed=2", 0.2, np.inf, "step"),
                                                      ("relu:d=40,seed=2", 0.7, 0.5, "block")])
def test_data_simulator_matches_numpy_loop(features, eta, c, engine):
    # float64, same rows: only rounding separates the engine (eigen-coordinates, pairwise sums)
    # from the loop (original coordinates), so 1e-10 relative after 1000 steps (observed 2e-14).
    X, y_cls = tiny_arrays(n=150, seed=1)
    dp = load_problem(from_arrays(X, y_cls), features)
    fmap = parse_features(features)
    u, K, theta, _ = direct(X, np.where(y_cls >= 2, 1.0, -1.0), fmap.kind, fmap.seed, fmap.d)
    seed, points = 5, 5
    T = 1000 / dp.trace
    prob = sm.prepare(dp.problem, jnp.float64, dp)
    _, stream = sm.split_seed(jax.random.key(seed))
    steps = sm.output_steps(T, points, dp.trace)
    x = np.asarray(jax.jit(jax.vmap(lambda k: sm.draw_sample(stream, k, prob).x))(jnp.arange(steps[-1])))
    rows = np.asarray(prob.rows)
    idx = np.array([np.flatnonzero((rows == r).all(1))[0] for r in x])  # which row each step drew
    assert len(np.unique(idx)) > 0.9 * len(X)  # rows are drawn uniformly with replacement
    want = numpy_data_sgd(u, dp.target, theta, idx, eta, c, list(steps))
    res = simulate_runs(dp.problem, constant(eta, c), [seed], T, points, precision="64", data=dp,
                        engine=engine)
    np.testing.assert_allclose(res.risk[0, 0], want, rtol=1e-10)
    assert res.risk[0, 0, 0] == pytest.approx(0.5 * theta @ K @ theta, rel=1e-12)  # R(theta_0) exact
    assert res.config["data_fingerprint"] == dp.fingerprint  # recorded with the results
    assert res.config["data"] == f"arrays features={fmap.describe()}"
    assert want[-1] < 0.5 * want[0]  # it learned something: the comparison is not of constants


def test_initial_risk_of_the_ode_is_exact():
    # R(0) = 1/2 theta*^T K theta* computed directly; the ODE's first point evaluates
    # sum_i lam_i v_i(0), the same number in float64: 1e-12 relative. (The simulation's first
    # point is checked the same way in test_data_simulator_matches_numpy_loop.)
    ds = load_source("sklearn:name=wine")
    dp = load_problem(ds, "relu:d=64,seed=0")
    u, K, theta, _ = direct(ds.inputs, np.where(ds.labels >= 1.5, 1.0, -1.0), "relu", 0, 64)
    ode = solve_ode(dp.problem, constant(0.5, 1.0), 1.0, 3)
    assert float(ode.risk[0]) == pytest.approx(0.5 * theta @ K @ theta, rel=1e-12)
    assert float(ode.risk[-1]) < float(ode.risk[0])


def test_hsgd_refuses_data():
    dp = load_problem("sklearn:name=iris", "raw")
    with pytest.raises(ValueError, match="hsgd"):
        simulate_runs(dp.problem, constant(0.5, 1.0), [0], 1.0, 3, data=dp, method="hsgd")


def test_summary_is_json_ready():
    import json

    dp = load_problem("sklearn:name=diabetes")
    s = dp.summary()
    json.dumps(s)
    assert isinstance(dp, DataProblem) and s["kind"] == "regression" and s["N"] == 442
    assert s["residual_mean"] == pytest.approx(float(np.mean(dp.residuals)))
