"""Real data: a dataset and a feature map as the least-squares problem the ODE and the engines
share (THEORY.md section 7; theory/real_data.md).

Typical use::

    from clipdyn.data import load_problem
    from clipdyn.theory.ode import solve_ode
    from clipdyn.theory.schedules import constant
    from clipdyn.runs.sweep import simulate_runs

    dp = load_problem("sklearn:name=digits", "relu:d=1000,seed=0")
    ode = solve_ode(dp.problem, constant(0.5, 1.0), T=5.0)
    runs = simulate_runs(dp.problem, constant(0.5, 1.0), range(4), T=5.0, data=dp)

:mod:`clipdyn.data.sources` reads the data (scikit-learn's bundled datasets, CIFAR-10,
WikiText-2, a user's ``.npz``; nothing is downloaded), :mod:`clipdyn.data.protocol` turns it into
a :class:`DataProblem`, :mod:`clipdyn.data.cache` keeps the eigendecomposition of ``K``.
"""

from __future__ import annotations

from pathlib import Path

from clipdyn.data.protocol import (PROTOCOL_VERSION, DataProblem, FeatureMap, build_problem,
                                   parse_features)
from clipdyn.data.sources import (Dataset, from_arrays, load_cifar10, load_npz, load_sklearn,
                                  load_source, load_wikitext2)

__all__ = ["load_problem", "DataProblem", "Dataset", "FeatureMap", "PROTOCOL_VERSION",
           "build_problem", "parse_features", "load_source", "load_sklearn", "load_cifar10",
           "load_wikitext2", "load_npz", "from_arrays"]


def load_problem(data: str | Dataset, features: str | FeatureMap | None = None,
                 cache: bool | str | Path = True) -> DataProblem:
    """The :class:`DataProblem` of a dataset and a feature map.

    Args:
        data: a data SPEC (``sklearn:name=digits``, ``cifar10:path=DIR``,
            ``wikitext2:path=DIR``, ``npz:path=FILE``; see :mod:`clipdyn.data.sources`) or a
            :class:`Dataset` (for example from :func:`from_arrays`).
        features: ``None`` or ``"raw"`` (the standardised inputs), ``"relu:d=D,seed=S"``, or a
            :class:`FeatureMap`.
        cache: where the eigendecomposition of ``K`` is cached: ``True`` (``$CLIPDYN_CACHE``,
            else ``~/.cache/clipdyn``), ``False`` (not at all) or a folder.

    Returns:
        :class:`DataProblem`: ``.problem`` for the ODE and engines, itself as their ``data=``.

    Raises:
        ValueError: one line naming a missing or malformed input and where to get it, or a bad
            SPEC (unknown, missing or repeated keys).

    References:
        theory/real_data.md.
    """
    dataset = data if isinstance(data, Dataset) else load_source(data)
    return build_problem(dataset, features, cache)
