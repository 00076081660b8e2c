"""Shared set-up of the studies: the problem family, sizes, and seed statistics.

Every study uses lam_i = i^-0.3 (the paper's synthetic spectrum) at the size's dimension, R0 = 1,
and compares the ODE (float64) with simulations (float32, common random numbers across configs).
"""

import argparse

import jax
import matplotlib
import numpy as np
from out_path import check_out

matplotlib.use("Agg")  # figures are files; plot scripts import this module before pyplot
# These programs compute in float64 (the studies jit clipdyn's factors themselves); switching
# their own process's mode here is explicit, not a library's side effect.
jax.config.update("jax_enable_x64", True)

from clipdyn.runs.results import load_results, seed_statistics
from clipdyn.theory.problem import make_problem, power_law_spectrum


def parse(doc, default_out, sizes):
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--size", default="default", choices=list(sizes))
    args = ap.parse_args()
    check_out(ap, args.out)
    return args, sizes[args.size]


def problem(noise, d):
    return make_problem(power_law_spectrum(d, 0.3), noise, R0=1.0)


def seed_mean(risk):
    """Mean over seeds (axis 0) of the runs still alive; nan where none is."""
    return seed_statistics(risk)[0]


def plot_main(draw):
    """Command line of a plot script: ``plot_<study>.py RESULTS.npz FIGURE.png``.

    ``draw(arrays, meta)`` returns a matplotlib figure built from the saved results alone.
    """
    import sys

    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} RESULTS.npz FIGURE.png")
    from pathlib import Path

    src, dst = sys.argv[1:3]
    arrays, meta = load_results(src)
    # Another study's file ended in a KeyError traceback (or, with matching array names, could
    # draw the wrong figure): the study a results file records must be this script's.
    want = Path(sys.argv[0]).stem.removeprefix("plot_")
    got = meta.get("config", {}).get("study")
    if got != want:
        sys.exit(f"{sys.argv[0]}: {src} holds the results of study {got!r}, not {want!r}")
    fig = draw(arrays, meta)
    fig.savefig(dst, dpi=110)
    print(f"wrote {dst}")


class EngineLog:
    """Which engine ran a study's simulations, for its sidecar.

    ``run_sweep`` picks the engine per sweep (``engine="auto"``) and records it in its result's
    config; a study runs many sweeps, so it passes each result through this log and saves
    :meth:`counts` (``{"block": 6, "step": 2}``) with its configuration.
    """

    def __init__(self):
        self._counts = {}

    def __call__(self, result):
        engine = result.config["engine"]
        self._counts[engine] = self._counts.get(engine, 0) + 1
        return result

    def counts(self):
        return dict(sorted(self._counts.items()))


def first_only(laws, size):
    """At the tiny size (a smoke test of the pipeline) a study runs its first law only."""
    return dict(list(laws.items())[:1]) if size == "tiny" else dict(laws)
