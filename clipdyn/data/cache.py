"""The spectral decomposition of a dataset's features, computed once and cached on disk.

A cache file ``svd-<fingerprint>.npz`` holds the arrays of
:func:`clipdyn.data.protocol.decompose` (singular values, right singular vectors = eigenvectors
of ``K``, and ``U^T theta*``) exactly as computed, with the fingerprint and a sha256 checksum of
the arrays. A hit returns bit-identical arrays; a file that cannot be read, names another
fingerprint, has other arrays, shapes or dtypes, or fails its checksum is recomputed and
overwritten, never trusted. Files are written atomically
(:func:`clipdyn.runs.results.atomic_savez`), so concurrent runs never see half a file.

The folder is ``$CLIPDYN_CACHE`` if set (``off`` disables the cache), else ``~/.cache/clipdyn``.
A folder that cannot be written only costs the recomputation next time (a warning says so).

References:
    theory/real_data.md, section 4.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from clipdyn.runs.results import atomic_savez

__all__ = ["ENV", "cache_dir", "cache_path", "cached"]

ENV = "CLIPDYN_CACHE"
_OFF = ("off", "none", "0", "false")


def cache_dir(cache: bool | str | Path = True) -> Path | None:
    """The cache folder: ``None`` for ``False``, ``None`` or the words ``off``/``none``/``false``/``0``
    (as ``$CLIPDYN_CACHE`` takes them); ``cache`` itself for another string or path; for ``True``,
    ``$CLIPDYN_CACHE`` (``None`` if it says ``off``) or ``~/.cache/clipdyn``."""
    if cache is False or cache is None:
        return None
    if isinstance(cache, str) and cache.strip().lower() in _OFF:
        return None
    if isinstance(cache, (str, Path)):
        if not str(cache).strip():
            raise ValueError("cache='' is not allowed; give True, False, 'off' or a folder")
        return Path(cache).expanduser()
    if cache is not True:
        raise ValueError(f"cache={cache!r} is not allowed; give True, False, 'off' or a folder")
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in _OFF or not env.strip() else Path(env).expanduser()
    return Path.home() / ".cache" / "clipdyn"


def cache_path(folder: Path, fingerprint: str) -> Path:
    return Path(folder) / f"svd-{fingerprint}.npz"


def _checksum(fingerprint: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(fingerprint.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _read(path: Path, fingerprint: str, shapes: dict[str, tuple]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or ``None`` if the file is absent or not to be trusted."""
    if not path.is_file():
        return None
    try:
        # Opened here, not by np.load: on a truncated file np.load raises before closing its own.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            arrays = {name: z[name] for name in shapes}
            ok = (set(z.files) == set(shapes) | {"fingerprint", "checksum"}
                  and str(z["fingerprint"]) == fingerprint
                  and all(a.dtype == np.float64 and a.shape == shapes[n] for n, a in arrays.items())
                  and str(z["checksum"]) == _checksum(fingerprint, arrays))
    except Exception:  # noqa: BLE001 - whatever is wrong with the file, it is recomputed
        ok = False
    if not ok:
        warnings.warn(f"ignoring the corrupt or foreign cache file {str(path)!r}; recomputing it",
                      RuntimeWarning, stacklevel=3)
        return None
    return arrays


def cached(fingerprint: str, compute: Callable[[], dict[str, np.ndarray]], shapes: dict[str, tuple],
           cache: bool | str | Path = True) -> tuple[dict[str, np.ndarray], str]:
    """``compute()`` (float64 arrays of the given ``shapes``), through the cache.

    Args:
        fingerprint: the key; it must identify what ``compute`` returns (data, features and
            protocol version).
        compute: computes the arrays on a miss.
        shapes: the name and shape of every array, to check a cached file against.
        cache: ``True`` (the default folder), ``False`` (no cache) or a folder.

    Returns:
        ``(arrays, status)`` with ``status`` one of ``"hit"``, ``"computed"`` (and written) and
        ``"uncached"`` (no cache folder, or it could not be written).
    """
    folder = cache_dir(cache)
    if folder is not None:
        path = cache_path(folder, fingerprint)
        got = _read(path, fingerprint, shapes)
        if got is not None:
            return got, "hit"
    arrays = {name: np.ascontiguousarray(a, np.float64) for name, a in compute().items()}
    if folder is None:
        return arrays, "uncached"
    try:
        atomic_savez(path, fingerprint=np.array(fingerprint),
                     checksum=np.array(_checksum(fingerprint, arrays)), **arrays)
    except OSError as err:
        warnings.warn(f"could not write the cache file {str(path)!r} ({err}); set ${ENV} to a "
                      "writable folder or to 'off'", RuntimeWarning, stacklevel=2)
        return arrays, "uncached"
    return arrays, "computed"
