"""Results files: ``NAME.npz`` arrays plus a ``NAME.json`` sidecar with configuration and provenance.

Both files are written atomically (to a temporary file in the same folder, then renamed), so an
interrupted run never leaves a half-written result. The sidecar records the whole configuration
the caller passes and :func:`provenance`: package, JAX and NumPy versions, backend and devices,
the PRNG implementation, the precision and the git commit.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["save_results", "load_results", "provenance", "atomic_write_bytes", "atomic_savez",
           "seed_statistics"]


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


def provenance(precision: str | None = None) -> dict[str, Any]:
    """Versions, backend, PRNG implementation and commit, for results sidecars."""
    import jax
    import jaxlib

    import clipdyn

    return {
        "clipdyn_version": clipdyn.__version__,
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "prng_impl": str(jax.config.jax_default_prng_impl),
        "precision": precision,
        "git_commit": _git_commit(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_savez(path: Path, **arrays) -> None:
    """``np.savez`` to ``path``, atomically (see :func:`atomic_write_bytes`)."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())


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
                 precision: str | None = None) -> Path:
    """Save ``arrays`` to ``path`` (``.npz``) and ``config`` plus provenance to the ``.json`` beside it.

    Returns:
        The ``.npz`` path.
    """
    path = Path(path).with_suffix(".npz")
    meta = {"config": config, "provenance": provenance(precision), "arrays": sorted(arrays)}
    meta = json.loads(json.dumps(meta, default=_json_default))
    atomic_savez(path, **arrays)
    atomic_write_bytes(path.with_suffix(".json"),
                       json.dumps(_finite_json(meta), indent=2, allow_nan=False).encode())
    return path


def load_results(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load ``(arrays, metadata)`` saved by :func:`save_results`."""
    path = Path(path).with_suffix(".npz")
    if not path.is_file():
        raise ValueError(f"results file {str(path)!r} does not exist")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
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
