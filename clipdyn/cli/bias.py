"""The ``clipdyn bias`` command: where clipped SGD's mean field vanishes on a finite sum.

``clipdyn bias --points A1,A2,... --clip C --perturbation K1,K2,... [--json]`` prints, per ``k``,
``{"k": k, "zeros": [[lo, hi], ...], "x_star": mean of the points}``: the zero set of the
expected clipped gradient ``h(x) = mean_i E clip_C(x - a_i + k zeta)`` of
``f(x) = mean_i 1/2 (x - a_i)^2`` (a point has ``lo == hi``) and the minimiser ``x*``
(Chen, Wu, Hong, NeurIPS 2020; :mod:`clipdyn.sources.finite_sum`; theory/clipping_bias.md).
"""

from __future__ import annotations

import numpy as np

__all__ = ["add_command"]


def cmd_bias(args) -> None:
    from clipdyn.cli.common import emit, format_table, non_negative_list, positive
    from clipdyn.sources import finite_sum as fs
    from clipdyn.cli.specs import parse_list

    points = parse_list(args.points, "--points")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"--points: {points.tolist()} is not allowed; points must be finite numbers")
    clip = positive(args.clip, "--clip")
    ks = non_negative_list(args.perturbation, "--perturbation")
    zeros = fs.zero_interval(fs.finite_sum(points, clip, ks))  # (K, 2), one compiled call
    x_star = float(np.mean(points))
    records = [{"k": float(k), "zeros": [[float(lo), float(hi)]], "x_star": x_star}
               for k, (lo, hi) in zip(ks, zeros)]

    def table():
        rows = [[r["k"], lo, hi, r["x_star"], max(abs(lo - x_star), abs(hi - x_star))]
                for r in records for lo, hi in r["zeros"]]
        return format_table(["k", "zero_lo", "zero_hi", "x_star", "bias"], rows)

    emit(records, args.json, table)


def add_command(sub) -> None:
    """Register ``bias`` on the subparsers object ``sub`` of the main parser."""
    p = sub.add_parser(
        "bias", help="zero set of the expected clipped gradient on a finite sum (Chen et al. 2020)",
        description="Zero set of h(x) = mean_i E clip_C(x - a_i + k zeta) for f(x) = mean_i "
                    "(x - a_i)^2 / 2, per perturbation k, and the minimiser x* = mean_i a_i.")
    p.add_argument("--points", required=True, help="LIST of the points a_i, e.g. -3,3 (finite)")
    p.add_argument("--clip", required=True, help="threshold C (finite, > 0)")
    p.add_argument("--perturbation", default="0",
                   help="LIST of pre-clip perturbation scales k (finite, >= 0; default 0)")
    p.add_argument("--json", action="store_true", help="a JSON list of {k, zeros, x_star} records")
    p.set_defaults(func=cmd_bias)
