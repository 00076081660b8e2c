"""Results files: ``NAME.npz`` arrays plus a ``NAME.json`` sidecar with configuration and provenance.

**Paths** (:func:`results_paths`). A results path ``OUT`` that ends in ``.npz`` is used as given;
any other ``OUT`` gets ``.npz`` appended (no other suffix is ever replaced, so ``run.a`` and
``run.b`` stay two files: ``run.a.npz`` and ``run.b.npz``). The sidecar is the ``.npz`` path with
``.npz`` replaced by ``.json``.

Both files are written atomically (to a temporary file in the same folder, then renamed), so an
interrupted run never leaves a half-written file, and the sidecar records the ``.npz`` file's
sha256, so :func:`load_results` refuses a pair that does not belong together; they get the permissions the user's umask
gives any new file. The sidecar records the whole configuration the caller passes and
:func:`provenance`: package, JAX and NumPy versions, backend and devices, the PRNG
implementation, the precision and the git commit.

**Chunks** (:class:`ChunkStore`). A long computation keeps its finished pieces in
``OUT.npz.partial/``, stamped with the fingerprint of what it computes; a rerun reuses them only
under the same stamp, and recomputes (with a :class:`ChunkWarning`) a chunk file it cannot read.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["save_results", "load_results", "results_paths", "provenance", "atomic_write_bytes",
           "atomic_savez", "seed_statistics", "ChunkStore", "ChunkWarning", "check_overwrite"]


def _git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10)
        if out.returncode != 0:
            return "unknown"
        # "+dirty" means the code differs from the commit; results and figures being rewritten
        # (by the very run that records this) do not count.
        code = ["clipdyn", "experiments", "bench", "pyproject.toml"]
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True,
                             text=True, timeout=10).stdout.strip() or str(here)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *code],
                               cwd=top, capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# The code that runs is the code imported: a long run whose tree changes before it saves (a
# commit, an edit) must still record the commit it started from.
_COMMIT_AT_IMPORT = _git_commit()


RESULTS_FORMAT = "clipdyn-results-1"
"""The sidecar's ``format``; sidecars without one are of this format."""


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def code_version() -> dict[str, Any]:
    """The code a computation runs with, as far as it decides the numbers: clipdyn's version and
    the commit it was imported from, JAX's and jaxlib's versions and the backend (a resumed
    computation's chunks must all come from one, the one its sidecar names). No git call: the
    commit is the one read at import."""
    import jax
    import jaxlib

    import clipdyn

    return {
        "clipdyn_version": clipdyn.__version__,
        "git_commit": _COMMIT_AT_IMPORT,
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "backend": jax.default_backend(),
    }


def provenance(precision: str | None = None, prng_impl: str | None = None) -> dict[str, Any]:
    """Versions, backend, PRNG implementation and commit, for results sidecars.

    ``git_commit`` is read when clipdyn was imported (the code that ran); if the tree has changed
    since, the commit at saving is added as ``git_commit_at_save``. ``prng_impl`` is the
    implementation the run used where the caller names it, else JAX's default (what a run that
    names none draws with).
    """
    import jax

    return {
        **code_version(),
        "numpy_version": np.__version__,
        # the networks, tuning and real-data results also depend on these
        "optax_version": _version("optax"),
        "scikit_learn_version": _version("scikit-learn"),
        "python_version": platform.python_version(),
        "devices": [str(d) for d in jax.devices()],
        "prng_impl": prng_impl or str(jax.config.jax_default_prng_impl),
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "precision": precision,
        **({"git_commit_at_save": now} if (now := _git_commit()) != _COMMIT_AT_IMPORT else {}),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def results_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(arrays, sidecar)`` paths of the results path ``path``.

    ``path`` is used as given when it ends in ``.npz``, and a sidecar's path (``.json``) names its
    pair; otherwise ``.npz`` is appended (another suffix is kept: ``run.a`` gives ``run.a.npz``).
    The sidecar replaces ``.npz`` by ``.json``.

    Raises:
        ValueError: for an empty path, or one whose file name is only the suffix (``runs/.npz``).
    """
    text = str(os.fspath(path))
    if not text.strip():
        raise ValueError(f"results path {text!r} is not allowed; it must name a file, e.g. runs/sweep.npz")
    if text.endswith(".json"):
        text = text[: -len(".json")] + ".npz"
    npz = Path(text if text.endswith(".npz") else f"{text}.npz")
    if npz.name == ".npz":  # Path(".npz").with_suffix gave the sidecar ".npz.json"
        raise ValueError(f"results path {text!r} is not allowed; it must name a file before .npz, "
                         "e.g. runs/sweep.npz")
    return npz, npz.with_suffix(".json")


def _umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:  # Linux >= 4.7
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way to read it is to set it; it is restored at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename.

    The file gets the mode any new file gets (``0o666`` less the umask), not the ``0o600`` of the
    temporary file it is written through.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _npz_bytes(arrays: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def atomic_savez(path: Path, **arrays) -> None:
    """``np.savez`` to ``path``, atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, _npz_bytes(arrays))


def _json_default(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _finite_json(x):
    """Replace non-finite floats by strings so the sidecar is strict JSON."""
    if isinstance(x, dict):
        return {k: _finite_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_json(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return "nan" if np.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def save_results(path: str | Path, arrays: dict[str, Any], config: dict[str, Any],
                 precision: str | None = None, prng_impl: str | None = None) -> Path:
    """Save ``arrays`` and ``config`` plus provenance to the paths :func:`results_paths` gives.

    Args:
        path: the results path (:func:`results_paths`).
        arrays: the arrays, saved in ``NAME.npz``.
        config: the configuration, saved in the ``NAME.json`` sidecar with the provenance.
        precision: the precision the numbers were computed in, in words.
        prng_impl: the PRNG implementation the run drew with (default: JAX's default).

    Returns:
        The ``.npz`` path.
    """
    path, sidecar = results_paths(path)
    data = _npz_bytes(arrays)
    # The sidecar names its arrays by their file's sha256: the two files are written one after the
    # other, and a pair left mixed by an interruption between them (or put together by hand from
    # two runs) is refused by load_results instead of drawn with the other run's configuration.
    meta = {"format": RESULTS_FORMAT, "config": config, "provenance": provenance(precision, prng_impl),
            "arrays": sorted(arrays), "npz_sha256": hashlib.sha256(data).hexdigest()}
    meta = json.loads(json.dumps(meta, default=_json_default))
    # The sidecar first: a save stopped between the two leaves a sidecar naming this computation
    # (so rerunning it resumes and replaces it) beside no file or the old one (refused as a pair).
    atomic_write_bytes(sidecar, json.dumps(_finite_json(meta), indent=2, allow_nan=False).encode())
    atomic_write_bytes(path, data)
    return path


def load_results(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load ``(arrays, metadata)`` saved by :func:`save_results` (same path rule).

    Raises:
        ValueError: naming the file, for a missing or unreadable ``.npz`` or sidecar, a sidecar of
            another format, or a pair that does not belong together: the sidecar's
            ``npz_sha256`` is not the ``.npz`` file's (files of two runs, or a save interrupted
            between its two files), or its array names are not the file's. Sidecars written before
            the digest existed are checked by their array names only.
    """
    path, meta_path = results_paths(path)
    if path.is_dir():
        raise ValueError(f"results file {str(path)!r} is a folder, not a results file")
    if not path.is_file():
        raise ValueError(f"results file {str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as err:  # noqa: BLE001 - whatever is wrong with it, it is named
        raise ValueError(f"results file {str(path)!r} is not a readable .npz archive of arrays "
                         f"({type(err).__name__}: {err})") from None
    if not meta_path.is_file():
        raise ValueError(f"results file {str(path)!r} has no sidecar {str(meta_path)!r} (results "
                         "are saved in pairs by save_results)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"sidecar {str(meta_path)!r} is not readable JSON ({err})") from None
    if (not isinstance(meta, dict) or not {"config", "arrays"} <= set(meta)
            or not isinstance(meta["arrays"], list)):
        raise ValueError(f"sidecar {str(meta_path)!r} is not a clipdyn results sidecar (it needs "
                         "'config' and 'arrays', a list of names)")
    if meta.get("format", RESULTS_FORMAT) != RESULTS_FORMAT:
        raise ValueError(f"sidecar {str(meta_path)!r} has format {meta['format']!r}; this clipdyn "
                         f"reads {RESULTS_FORMAT!r}")
    digest = meta.get("npz_sha256")
    if digest is not None and digest != hashlib.sha256(data).hexdigest():
        raise ValueError(f"{str(path)!r} and {str(meta_path)!r} do not belong together: the sidecar "
                         "describes other arrays (files of two runs, or a save interrupted between "
                         "its two files); rerun to write both")
    if sorted(meta["arrays"]) != sorted(arrays):
        raise ValueError(f"{str(path)!r} and {str(meta_path)!r} do not belong together: the sidecar "
                         f"lists arrays {sorted(meta['arrays'])}, the file holds {sorted(arrays)}")
    return arrays, meta


def seed_statistics(risk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard error and count over seeds (axis 0) of the runs alive at each time.

    Diverged runs (``nan`` from their divergence on) are left out; the standard error is
    ``std(ddof=1) / sqrt(n)`` and ``nan`` with fewer than two runs.
    """
    alive = np.isfinite(risk)
    n = alive.sum(axis=0)
    total = np.where(alive, risk, 0.0).sum(axis=0)
    mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    dev = np.where(alive, risk - mean, 0.0)
    var = (dev * dev).sum(axis=0) / np.maximum(n - 1, 1)
    se = np.where(n > 1, np.sqrt(var / np.maximum(n, 1)), np.nan)
    return mean, se, n


def _differing(old: dict, new: dict, values: bool = True) -> list[str]:
    """The keys of ``new`` whose value in ``old`` differs, each with both values where they are
    short (``values``: hashes are named only)."""
    out = []
    for key, value in new.items():
        was = old.get(key)
        if was == value:
            continue
        if isinstance(was, dict) and isinstance(value, dict):  # the options as typed, say
            out += _differing(was, value, values)
            continue
        a, b = json.dumps(was, default=str), json.dumps(value, default=str)
        name = key.replace("_", " ")
        out.append(f"{name} ({a} there, {b} here)" if values and len(a) + len(b) <= 60 else name)
    return out


def _config_differences(old: dict, new: dict) -> str:
    """What separates two sweeps' configurations: their entries and their content fingerprints."""
    new = _finite_json(json.loads(json.dumps(new, default=_json_default)))  # as the sidecar holds it
    diffs = _differing(old, {k: v for k, v in new.items() if k != "fingerprints"})
    parts = {k: v for k, v in new.get("fingerprints", {}).items() if k != "sweep"}
    diffs += _differing(old.get("fingerprints") or {}, parts, values=False)
    return _differs_in(diffs, old, new)


# What a dataset's problem derives from its data (by the protocol's BLAS calls), and the sweep's
# fingerprint, which hashes them.
_DERIVED = {"spectrum", "start", "noise law", "trace", "R0", "dt", "sweep"}


def derived_only_note(names, old_data: str | None, new_data: str | None) -> str:
    """Where only a dataset's derived problem differs (``names``), not its data fingerprint: what
    that means, to append to a refusal (an empty string otherwise)."""
    if old_data is None or old_data != new_data or not set(names) <= _DERIVED:
        return ""
    return (" (the data fingerprint is the same: the problem derived from the same data differs "
            "in its last bits, as the BLAS of another CPU can make it)")


def _differs_in(diffs: list[str], old: dict, new: dict) -> str:
    """The differences named once each (a noise law differs both as written and by content), and
    what it means when only a dataset's derived problem differs, not its data."""
    seen, once = set(), []
    for d in diffs:
        name = d.split(" (")[0]
        if name not in seen:
            seen.add(name)
            once.append(d)
    if not once:
        return "its configuration differs"
    return "it differs in: " + ", ".join(once) + derived_only_note(
        seen, old.get("data_fingerprint"), new.get("data_fingerprint"))


def check_overwrite(path: str | os.PathLike, fingerprint: str, overwrite: bool = False,
                    config: dict | None = None) -> None:
    """Refuse to replace finished results of another computation without ``overwrite``.

    Results at ``path`` (see :func:`results_paths`) may be replaced when ``overwrite`` is set or
    when their sidecar records the same ``config["fingerprints"]["sweep"]`` (the same
    computation, recomputed). A results path that is a folder is always refused.

    Args:
        path: the results path, as :func:`results_paths` reads it.
        fingerprint: the new computation's fingerprint (``config["fingerprints"]["sweep"]``).
        overwrite: replace results of a different computation.
        config: the new computation's configuration (the entries its fingerprint covers): the
            refusal then names the entries that differ from the sidecar's.

    Raises:
        ValueError: naming the file, what differs (given ``config``) and ``--overwrite``.
    """
    npz, sidecar = results_paths(path)
    for p in (npz, sidecar):
        if p.is_dir():
            raise ValueError(f"{str(p)!r} is an existing folder; the results need it as a file name "
                             "(choose another --out)")
    if overwrite or not (npz.exists() or sidecar.exists()):
        return
    try:
        old_config = json.loads(sidecar.read_text())["config"]
        old = old_config["fingerprints"]["sweep"]
    except (OSError, ValueError, KeyError, TypeError):
        old_config, old = None, None
    if old == fingerprint:
        return
    what = ("results this sweep cannot identify as its own (its sidecar records no sweep fingerprint)"
            if old is None else "the results of a different sweep" if config is None else
            f"the results of a different sweep ({_config_differences(old_config, config)})")
    held = npz if npz.exists() else sidecar  # name the file that is there
    raise ValueError(f"{str(held)!r} already holds {what}; rerun with --overwrite (overwrite=True) to "
                     "replace them, or choose another --out")


class ChunkWarning(UserWarning):
    """A chunk file could not be used (unreadable, or not the chunk it should hold); it is recomputed."""


class ChunkStore:
    """Finished chunks of one computation, kept in a folder until the whole result is saved.

    The folder holds a stamp (``fingerprint``: JSON with the computation's ``"sweep"``
    fingerprint, its ``"parts"`` and its ``"layout"``, the parameters that decide which items a
    chunk holds) and one ``chunk_NNNNNN.npz`` per finished chunk, each written atomically. Chunks
    are reused only under an equal fingerprint and layout; a stamp with no chunk beside it (a run
    killed in its first chunk) is simply replaced.

    The stamp's ``"code"`` (:func:`code_version`) is compared too: chunks computed by another
    version of clipdyn or JAX, or on another backend, are not resumed into this one's results,
    whose sidecar names one version. Each chunk file carries its computation's identity and its
    own index (``sweep_identity``), checked when it is read, and the stamp is checked before each
    chunk is written: two computations started on one folder (the same ``--out`` typed twice)
    would otherwise take each other's chunks as their own, since the stamp is only compared when a
    computation opens the folder.

    Args:
        folder: the folder, by convention the results path plus ``.partial``.
        stamp: the computation's stamp (``"sweep"``, and ``"layout"``, ``"code"``, ``"parts"``,
            ``"config"`` where known).
    """

    _IDENTITY = ("sweep", "layout", "code")

    def __init__(self, folder: str | os.PathLike, stamp: dict):
        self.folder = Path(folder)
        self.stamp = stamp

    def identity(self, j: int) -> str:
        """What chunk ``j``'s file records: the computation's identity and the chunk's index."""
        return json.dumps({**{k: self.stamp.get(k) for k in self._IDENTITY}, "chunk": int(j)},
                          sort_keys=True)

    def _is_ours(self, stamp: dict | None) -> bool:
        return stamp is not None and all(stamp.get(k) == self.stamp.get(k) for k in self._IDENTITY)

    @property
    def stamp_path(self) -> Path:
        return self.folder / "fingerprint"

    def chunk_path(self, j: int) -> Path:
        return self.folder / f"chunk_{j:06d}.npz"

    def finished(self) -> list[Path]:
        """The chunk files present (readable or not)."""
        return sorted(self.folder.glob("chunk_*.npz")) if self.folder.is_dir() else []

    def read_stamp(self) -> dict | None:
        """The stamp, ``None`` if absent; a stamp in an older format reads as ``{"sweep": text}``."""
        try:
            text = self.stamp_path.read_text()
        except OSError:
            return None
        try:
            stamp = json.loads(text)
        except ValueError:
            stamp = None
        return stamp if isinstance(stamp, dict) and "sweep" in stamp else {"sweep": text}

    @staticmethod
    def _differences(old: dict, new: dict) -> str:
        if "parts" not in old:
            return "it was written by another version of clipdyn"
        diffs = []
        if "config" in old:  # entries by value (stamps before this recorded only their hash)
            fresh = json.loads(json.dumps(new.get("config", {}), default=_json_default))
            diffs += _differing(old["config"], fresh)
        diffs += _differing(old["parts"], new.get("parts", {}), values=False)
        diffs += _differing(old.get("layout", {}), new.get("layout", {}))
        diffs += _differing(old.get("code") or {}, new.get("code", {}))
        return _differs_in(diffs, old.get("config") or {}, new.get("config") or {})

    def open(self, overwrite: bool = False) -> int:
        """Prepare the folder for the computation the stamp describes.

        Returns:
            The number of chunk files kept for reuse.

        Raises:
            ValueError: if the folder holds finished chunks of another computation (or of this
                one in another layout) and ``overwrite`` is not set; with ``overwrite`` they are
                deleted.
        """
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{str(self.folder)!r} exists and is not a folder; it is where this "
                             "sweep keeps its finished chunks (move it away or choose another --out)")
        try:  # missing parent folders are created, as for the results file
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create {str(self.folder)!r}, where this sweep keeps its finished "
                             f"chunks ({e.strerror}); choose another --out") from None
        for tmp in self._own_temporaries():  # left by a run killed while writing
            tmp.unlink(missing_ok=True)
        old = self.read_stamp()
        chunks = self.finished()
        same = self._is_ours(old)
        if chunks and not same:
            if not overwrite:
                why = ("it has no fingerprint" if old is None else self._differences(old, self.stamp))
                raise ValueError(
                    f"{self.folder} holds {len(chunks)} finished chunk(s) of a different sweep "
                    f"({why}); rerun with --overwrite (overwrite=True) to discard them, or choose "
                    "another --out"
                )
            for p in chunks:
                p.unlink()
            chunks = []
        if not same:
            atomic_write_bytes(self.stamp_path, json.dumps(self.stamp, sort_keys=True).encode())
        return len(chunks)

    def load(self, j: int, expect: dict[str, tuple[tuple, str]],
             read: Callable[[Path], bytes | None] | None = None) -> dict[str, np.ndarray] | None:
        """Chunk ``j``'s arrays, or ``None`` when it must be computed.

        Args:
            j: the chunk index.
            expect: ``{name: (shape, dtype)}`` of the arrays the chunk must hold (a dtype name
                such as ``"float32"``, or a kind as in ``numpy.dtype.kind``: ``"b"``, ``"i"``).
            read: how to read the file's bytes (``None`` if absent); by default from this
                process's disk (a multi-process sweep passes the writer's bytes to everyone).

        A file that cannot be read, that belongs to another computation (its ``sweep_identity``
        is not this one's, or it has none), or that lacks an array or holds one of another shape
        or dtype, is reported by a :class:`ChunkWarning` naming it and computed again.
        """
        path = self.chunk_path(j)
        if read is None:
            try:
                raw = path.read_bytes() if path.exists() else None
            except OSError:
                raw = b""
        else:
            raw = read(path)
        if raw is None:
            return None
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                missing = sorted(set(expect) - set(z.files))
                arrays = {k: z[k] for k in expect if k in z.files}
                identity = str(z["sweep_identity"]) if "sweep_identity" in z.files else None
        except Exception as err:  # noqa: BLE001 - any unreadable file: recompute it
            return self._reject(path, f"it cannot be read ({type(err).__name__}: {err})")
        if identity != self.identity(j):
            return self._reject(path, "it records no sweep fingerprint" if identity is None else
                                "it belongs to another sweep or another chunk (its fingerprint is "
                                "not this one's)")
        if missing:
            return self._reject(path, f"it lacks the array(s) {missing}")
        for name, (shape, kind) in expect.items():
            a = arrays[name]
            ok_kind = a.dtype.kind == kind if len(kind) == 1 else a.dtype == np.dtype(kind)
            if a.shape != tuple(shape) or not ok_kind:
                return self._reject(path, f"its {name!r} is {a.dtype}{list(a.shape)}, this chunk's is "
                                          f"{kind}{list(shape)}")
        return arrays

    @staticmethod
    def _reject(path: Path, why: str) -> None:
        warnings.warn(f"chunk file {str(path)!r} is not usable: {why}; recomputing it", ChunkWarning,
                      stacklevel=3)
        return None

    def save(self, j: int, arrays: dict[str, Any]) -> None:
        """Write chunk ``j`` atomically, with this computation's identity.

        Raises:
            ValueError: if the folder's stamp is no longer this computation's: another one was
                started on the same folder while this one ran and took it over.
        """
        stamp = self.read_stamp()
        if stamp is None and not self.finished():
            # The folder was emptied, not taken over: a run of this same sweep on this --out
            # finished and removed it. Carry on (its results are this sweep's numbers too).
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.stamp_path, json.dumps(self.stamp, sort_keys=True).encode())
        elif not self._is_ours(stamp):
            raise ValueError(
                f"{self.folder} was taken over by another sweep while this one ran (its fingerprint "
                "file changed): two sweeps are writing to the same --out. This one stops so that "
                "neither mixes in the other's chunks; rerun it once the other has finished, or give "
                "each its own --out")
        atomic_savez(self.chunk_path(j), **arrays, sweep_identity=np.array(self.identity(j)))

    def _own_temporaries(self) -> list[Path]:
        """Temporary files of this class's atomic writes (:func:`atomic_write_bytes` names them
        after their target), and nothing else a user keeps in the folder."""
        return [*self.folder.glob("chunk_*.npz.*.tmp"), *self.folder.glob(f"{self.stamp_path.name}.*.tmp")]

    def remove(self) -> None:
        """Delete the chunk files and the stamp (once the whole result is saved), then the folder
        if nothing else is in it: files the computation did not write are left, and so is a
        folder another computation has taken over meanwhile."""
        if not self._is_ours(self.read_stamp()):
            return
        for p in [*self.finished(), *self._own_temporaries(), self.stamp_path]:
            p.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:  # not empty: someone else's files
            pass
