"""Data sources: where a dataset's inputs and labels come from (nothing is downloaded).

Each loader returns a :class:`Dataset` (the raw inputs as read, class indices or regression
values, and a digest of those arrays); :mod:`clipdyn.data.protocol` turns it into a
least-squares problem. SPEC strings (``name:key=value,...``; a path may not contain a comma):

* ``sklearn:name=digits|breast_cancer|wine|iris|diabetes``: scikit-learn's bundled datasets
  (``sklearn.datasets.load_*``, shipped inside the package);
* ``cifar10:path=DIR[,n=N]``: the "CIFAR-10 python version" of Krizhevsky's page, all six files
  ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` in that order (60000 rows of 3072
  ``uint8`` pixels, 10 classes), optionally subsampled to ``N`` rows;
* ``wikitext2:path=DIR[,window=W,buckets=H,n=N]``: WikiText-2's training split
  (``wiki.train.raw`` or ``wiki.train.tokens``) as hashed bags of the previous ``W`` tokens
  with the next token's log-frequency as target (theory/real_data.md, section 2; defaults
  ``W = 16``, ``H = 512``, ``N = 20000``);
* ``npz:path=FILE``: arrays ``X`` (``N x D``, real) and ``y`` (``N``,): integer ``y`` are class
  labels, floating ``y`` a regression target.

A subsample of ``n`` rows out of ``M`` is ``sorted(default_rng(0).choice(M, n, replace=False))``.
Every missing or malformed input raises ``ValueError`` with one line naming what is missing and
where to get it.

References:
    theory/real_data.md, sections 1-2; A. Krizhevsky, "Learning Multiple Layers of Features from
    Tiny Images" (2009); S. Merity, C. Xiong, J. Bradbury, R. Socher, "Pointer Sentinel Mixture
    Models" (ICLR 2017) for WikiText-2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np

from clipdyn import validation

__all__ = ["Dataset", "parse_spec", "load_source", "load_sklearn", "load_cifar10", "load_wikitext2",
           "load_npz", "from_arrays", "SOURCES", "SKLEARN_NAMES", "subsample"]

SOURCES = ("sklearn", "cifar10", "wikitext2", "npz")
SKLEARN_NAMES = ("digits", "breast_cancer", "wine", "iris", "diabetes")
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
WIKITEXT_URL = ("https://www.salesforce.com/blog/the-wikitext-long-term-dependency-language-"
                "modeling-dataset/ (wikitext-2-raw-v1.zip or wikitext-2-v1.zip)")
WIKITEXT_DEFAULTS = {"window": 16, "buckets": 512, "n": 20000}


def _describe(name: str, origin: str) -> str:
    """A dataset's name in messages, with where it was read from where that differs."""
    return name if origin == name else f"{name}: {origin}"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset as read, before the protocol (standardisation, features, target).

    Attributes:
        name: the source without its location, e.g. ``"sklearn:name=digits"`` or
            ``"wikitext2:window=16,buckets=512,n=20000"`` (enters the fingerprint).
        origin: where it was read from (a path, or the scikit-learn loader), for messages.
        inputs: ``(N, D_in)`` real inputs in the dtype read (``uint8`` pixels, counts, floats).
        labels: ``(N,)`` class indices in ``[0, n_classes)`` for classification, else ``None``.
        values: ``(N,)`` float64 regression target for regression, else ``None``.
        n_classes: number of classes (classification), else ``None``.
        digest: sha256 (hex) of the arrays read (dtype, shape and bytes of ``X`` and ``y``), so a
            moved file keeps its fingerprint.
    """

    name: str
    origin: str
    inputs: np.ndarray
    labels: np.ndarray | None
    values: np.ndarray | None
    n_classes: int | None
    digest: str

    @property
    def where(self) -> str:
        """The dataset as messages name it: its name, and where it was read where that differs."""
        return _describe(self.name, self.origin)

    @property
    def kind(self) -> str:
        return "classification" if self.labels is not None else "regression"

    @property
    def n(self) -> int:
        return int(self.inputs.shape[0])


# ---- SPEC strings ----------------------------------------------------------------------------

def parse_spec(spec: str, what: str = "data") -> tuple[str, dict[str, str]]:
    """``name:key=value,...`` into ``(name, params)``; duplicate or malformed keys are refused."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{what} spec {spec!r} is not allowed; give a non-empty SPEC string")
    name, _, rest = spec.strip().partition(":")
    params: dict[str, str] = {}
    if rest.strip():
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or not key or not value:
                # "npz:path=a,b.npz" splits into "path=a" and "b.npz": say why
                comma = ("; a value cannot contain ',', which separates the pairs"
                         if params and not eq else "")
                raise ValueError(f"{what} spec {spec!r}: {part!r} is not of the form "
                                 f"key=value{comma}")
            if key in params:
                raise ValueError(f"{what} spec {spec!r}: {key}= is given twice")
            params[key] = value
    return name.strip().lower(), params


def take_keys(spec: str, params: dict, required: tuple = (), optional: dict | None = None,
              what: str = "data") -> dict:
    """The allowed keys of ``params``: every ``required`` one, ``optional`` ones with defaults."""
    optional = optional or {}
    allowed = sorted(set(required) | set(optional))
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"{what} spec {spec!r}: unknown key(s) {unknown}; allowed: {allowed}")
    out = dict(optional)
    for key in required:
        if key not in params:
            raise ValueError(f"{what} spec {spec!r}: missing {key}=...")
    out.update(params)
    return out


def int_param(spec: str, key: str, text, low: int, what: str = "data") -> int:
    """``key=text`` of a SPEC as an integer ``>= low`` (:func:`clipdyn.validation.integer_text`)."""
    return validation.integer_text(key, text, low, owner=f"{what} spec {spec!r}")


def load_source(spec: str) -> Dataset:
    """The :class:`Dataset` a data SPEC names (see the module doc)."""
    name, params = parse_spec(spec)
    if name == "sklearn":
        p = take_keys(spec, params, ("name",))
        return load_sklearn(p["name"])
    if name == "cifar10":
        p = take_keys(spec, params, ("path",), {"n": None})
        n = None if p["n"] is None else int_param(spec, "n", p["n"], 2)
        return load_cifar10(p["path"], n=n)
    if name == "wikitext2":
        p = take_keys(spec, params, ("path",), {k: str(v) for k, v in WIKITEXT_DEFAULTS.items()})
        return load_wikitext2(p["path"], window=int_param(spec, "window", p["window"], 1),
                              buckets=int_param(spec, "buckets", p["buckets"], 2),
                              n=int_param(spec, "n", p["n"], 2))
    if name == "npz":
        p = take_keys(spec, params, ("path",))
        return load_npz(p["path"])
    raise ValueError(f"data spec {spec!r}: unknown source {name!r}; allowed: {', '.join(SOURCES)}")


# ---- helpers ---------------------------------------------------------------------------------

def subsample(m: int, n: int | None) -> np.ndarray | None:
    """Row indices of the documented subsample of ``n`` rows out of ``m`` (``None``: all rows)."""
    if n is None or n >= m:
        return None
    return np.sort(np.random.default_rng(0).choice(m, n, replace=False))


def array_digest(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' dtypes, shapes and bytes, in order: the fingerprint of data."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _directory(path: str, source: str, get: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{source}: folder {str(folder)!r} not found; {get}")
    return folder


def _class_indices(labels: np.ndarray, n_classes: int, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise ValueError(f"{where}: labels must be a 1-D array of integers; got dtype {labels.dtype}, "
                         f"shape {labels.shape}")
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        raise ValueError(f"{where}: label {labels[np.argmax(bad)]} is outside 0..{n_classes - 1}")
    return labels.astype(np.int64)


def _frozen(a, dtype=None) -> np.ndarray:
    """A read-only copy of ``a``."""
    a = np.array(a, dtype)
    a.flags.writeable = False
    return a


def from_arrays(X, y, *, name: str = "arrays", origin: str = "arrays",
                n_classes: int | None = None) -> Dataset:
    """A :class:`Dataset` from in-memory arrays (the Python form of ``npz:path=FILE``).

    Args:
        X: ``(N, D)`` real inputs, finite, ``N >= 2``.
        y: ``(N,)`` integer class labels (their sorted distinct values are the classes
            ``0..n_classes-1``) or floating regression values.
        name, origin: how the dataset is named in fingerprints and messages.
        n_classes: for integer ``y`` that are already class indices, the number of classes
            (default: the number of distinct values, each mapped to its rank); refused for
            floating ``y``.

    Returns:
        The :class:`Dataset`. It holds read-only copies of ``X`` and ``y`` and their digest, so
        editing the caller's arrays afterwards cannot change it.
    """
    where = _describe(name, origin)
    # Copied and frozen: the digest names these arrays, so an array the caller edits in place
    # afterwards must not change the dataset behind its fingerprint (and the cache's answer).
    X, y = _frozen(X), _frozen(y)
    if X.dtype.kind not in "iuf":
        raise ValueError(f"{where}: X must hold real numbers; got dtype {X.dtype}")
    if y.dtype.kind not in "iuf":
        raise ValueError(f"{where}: y must hold real numbers; got dtype {y.dtype}")
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        raise ValueError(f"{where}: X has shape {X.shape}; it must be (N, D) with N >= 2 rows")
    if y.shape != (X.shape[0],):
        raise ValueError(f"{where}: y has shape {y.shape}; it must be ({X.shape[0]},), one value per row of X")
    if X.dtype.kind == "f" and not np.all(np.isfinite(X)):
        raise ValueError(f"{where}: X has {int(np.size(X) - np.isfinite(X).sum())} non-finite value(s)")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"{where}: y has {int(np.size(y) - np.isfinite(y).sum())} non-finite value(s)")
    # The digest of the arrays themselves, whatever file they came from: a digest taken on
    # trust (the caller's) let two datasets share one cached decomposition.
    digest = array_digest(X, y)
    if y.dtype.kind in "iu":
        if n_classes is None:
            classes, idx = np.unique(y, return_inverse=True)
            if classes.size < 2:
                raise ValueError(f"{where}: y has a single class ({classes[0]}); at least two are needed")
            return Dataset(name, origin, X, _frozen(idx, np.int64), None, int(classes.size), digest)
        n_classes = validation.integer("n_classes", n_classes, 2, owner=where)
        return Dataset(name, origin, X, _frozen(_class_indices(y, n_classes, where)), None, n_classes,
                       digest)
    if n_classes is not None:
        raise ValueError(f"{where}: n_classes={n_classes!r} is for integer class labels; y holds "
                         f"{y.dtype} regression values (give integer labels to classify)")
    return Dataset(name, origin, X, None, _frozen(y, np.float64), None, digest)


# ---- the sources -----------------------------------------------------------------------------

def load_sklearn(name: str) -> Dataset:
    """One of scikit-learn's bundled datasets (no download): ``digits`` (1797 x 64, 10 classes),
    ``breast_cancer`` (569 x 30, 2), ``wine`` (178 x 13, 3), ``iris`` (150 x 4, 3) or
    ``diabetes`` (442 x 10, regression)."""
    if isinstance(name, str):  # as the source's own name, case-insensitive: one fingerprint
        name = name.strip().lower()
    if name not in SKLEARN_NAMES:
        raise ValueError(f"sklearn: name={name!r} is not allowed; use one of {', '.join(SKLEARN_NAMES)}")
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    X, y = np.asarray(bunch.data), np.asarray(bunch.target)
    n_classes = len(bunch.target_names) if hasattr(bunch, "target_names") else None
    return from_arrays(X, y, name=f"sklearn:name={name}", origin=f"sklearn.datasets.load_{name}",
                       n_classes=n_classes)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and NumPy arrays only: a pickle is code, and a folder given
    on the command line must not run any. (``_codecs.encode`` is how Python 3 pickles bytes at
    protocol 2; it only turns text into bytes.)"""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def _cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise ValueError(f"cifar10: {where} is not a CIFAR-10 python batch ({type(err).__name__}: "
                         f"{err}); download the 'CIFAR-10 python version' from {CIFAR_URL}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"cifar10: {where} holds a {type(batch).__name__}, not a CIFAR-10 batch dict")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise ValueError(f"cifar10: {where} has no {' or '.join(repr(k) for k in missing)} entry; "
                         f"a CIFAR-10 python batch has 'data' (N x 3072 uint8) and 'labels'")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"cifar10: {where}: 'data' is {data.dtype} of shape {data.shape}; it must be "
                         "uint8 of shape (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"cifar10: {where}: 'labels' has shape {labels.shape}; it must be "
                         f"({data.shape[0]},)")
    return data, _class_indices(labels, 10, f"cifar10: {where}")


def load_cifar10(path: str, n: int | None = None) -> Dataset:
    """CIFAR-10's python version from ``path``: the six files ``data_batch_1..5``, ``test_batch``
    (in that order), optionally subsampled to ``n`` rows. Labels 0..9."""
    get = f"download the 'CIFAR-10 python version' from {CIFAR_URL} and extract it"
    folder = _directory(path, "cifar10", get)
    data, labels = [], []
    for fname in CIFAR_FILES:
        f = folder / fname
        if not f.is_file():
            raise ValueError(f"cifar10: {str(f)!r} not found; {get}")
        raw = f.read_bytes()
        x, lab = _cifar_batch(raw, repr(str(f)))
        data.append(x)
        labels.append(lab)
    X, y = np.concatenate(data), np.concatenate(labels)
    rows = subsample(X.shape[0], n)
    if rows is not None:
        X, y = X[rows], y[rows]
    name = "cifar10" if rows is None else f"cifar10:n={n}"
    return from_arrays(X, y, name=name, origin=str(folder), n_classes=10)


def _bucket(token: str, buckets: int) -> int:
    return zlib.crc32(token.encode("utf-8")) % buckets


def load_wikitext2(path: str, window: int = 16, buckets: int = 512, n: int = 20000) -> Dataset:
    """WikiText-2's training split as a regression dataset (theory/real_data.md, eq. (2.1)).

    Tokens are the whitespace-separated words of ``wiki.train.raw`` (or ``wiki.train.tokens``),
    read as UTF-8, line ends included as separators. Position ``p >= window`` of the token stream
    is one row: its input counts, for each bucket ``h < buckets``, the previous ``window`` tokens
    whose ``zlib.crc32(utf-8 bytes) % buckets == h``; its regression value is
    ``log(count of token p in the split)``. ``n`` rows are kept (the documented subsample).
    """
    get = f"download WikiText-2 from {WIKITEXT_URL} and extract it"
    folder = _directory(path, "wikitext2", get)
    for fname in ("wiki.train.raw", "wiki.train.tokens"):
        f = folder / fname
        if f.is_file():
            break
    else:
        raise ValueError(f"wikitext2: {str(folder / 'wiki.train.raw')!r} (or wiki.train.tokens) not found; {get}")
    raw = f.read_bytes()
    try:
        tokens = raw.decode("utf-8").split()
    except UnicodeDecodeError as err:
        raise ValueError(f"wikitext2: {str(f)!r} is not UTF-8 text ({err})") from None
    if len(tokens) < window + 2:
        raise ValueError(f"wikitext2: {str(f)!r} has {len(tokens)} tokens; window={window} needs at "
                         f"least {window + 2}")
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(t, len(vocab)) for t in tokens), np.int64, len(tokens))
    counts = np.bincount(ids, minlength=len(vocab))
    bucket_of = np.array([_bucket(t, buckets) for t in vocab], np.int64)[ids]
    positions = np.arange(window, len(tokens))
    rows = subsample(positions.size, n)
    if rows is not None:
        positions = positions[rows]
    # The counts and from_arrays' frozen copy of them, before either is allocated.
    validation.check_memory(2 * 8.0 * positions.size * buckets,
                            f"wikitext2: {positions.size} rows x buckets={buckets}")
    X = np.zeros((positions.size, buckets), np.float64)
    r = np.arange(positions.size)
    for lag in range(1, window + 1):
        np.add.at(X, (r, bucket_of[positions - lag]), 1.0)
    values = np.log(counts[ids[positions]].astype(np.float64))
    name = f"wikitext2:window={window},buckets={buckets},n={n}"
    return from_arrays(X, values, name=name, origin=str(f))


def load_npz(path: str) -> Dataset:
    """Arrays ``X`` (``N x D`` real) and ``y`` (``N``,) from an ``.npz`` file (no pickles)."""
    f = Path(path).expanduser()
    need = "it needs arrays X (N x D, real) and y (N,), e.g. np.savez(FILE, X=X, y=y)"
    if not f.is_file():
        raise ValueError(f"npz: {str(f)!r} {'is a folder' if f.is_dir() else 'not found'}; {need}")
    raw = f.read_bytes()
    if not raw.startswith(b"PK"):  # every .npz is a zip archive
        kind = "a single .npy array" if raw.startswith(b"\x93NUMPY") else "not an .npz (zip) archive"
        raise ValueError(f"npz: {str(f)!r} is {kind}; {need}")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            names = list(z.files)
            missing = [k for k in ("X", "y") if k not in names]
            if missing:
                raise ValueError(f"npz: {str(f)!r} has arrays {names}; missing {', '.join(missing)}; {need}")
            X, y = z["X"], z["y"]
    except ValueError as err:
        if str(err).startswith("npz:"):
            raise
        raise ValueError(f"npz: {str(f)!r} holds non-numeric (pickled) arrays ({err}); {need}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"npz: {str(f)!r} is not a readable .npz archive ({err}); {need}") from None
    return from_arrays(X, y, name="npz", origin=str(f))
