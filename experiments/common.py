"""Shared set-up of the studies: the problem family, sizes, and seed statistics.

Every study uses lam_i = i^-0.3 (the paper's synthetic spectrum) at the size's dimension, R0 = 1,
and compares the ODE (float64) with simulations (float32, common random numbers across configs).
"""

import argparse

import numpy as np

from clipdyn.problem import make_problem, power_law_spectrum


def parse(doc, default_out, sizes):
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--size", default="default", choices=list(sizes))
    args = ap.parse_args()
    return args, sizes[args.size]


def problem(noise, d):
    return make_problem(power_law_spectrum(d, 0.3), noise, R0=1.0)


def seed_mean(risk):
    """Mean over seeds (axis 0) of runs alive; nan where none is."""
    alive = np.isfinite(risk)
    n = alive.sum(0)
    return np.where(n > 0, np.where(alive, risk, 0).sum(0) / np.maximum(n, 1), np.nan)


def first_only(laws, size):
    """At the tiny size (a smoke test of the pipeline) a study runs its first law only."""
    return dict(list(laws.items())[:1]) if size == "tiny" else dict(laws)
