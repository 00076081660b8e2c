"""The ``clipdyn`` command line.

Every command prints a table by default and JSON with ``--json``. Bad input exits with status 2
and one line on stderr (``clipdyn: error: ...``), never a traceback. In JSON, infinite values are
written as the string ``"inf"`` and missing ones (after a divergence) as ``null``, so the output
is strict JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise _CLIError(message)


class _CLIError(Exception):
    pass


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def emit(obj, as_json: bool, table) -> None:
    """Print ``obj`` as JSON or as the table ``table()`` returns."""
    if as_json:
        print(json.dumps(_jsonable(obj), allow_nan=False))
    else:
        print(table())


def format_table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, (float, np.floating)):
            return "nan" if math.isnan(v) else f"{float(v):.6g}"
        return str(v)

    cells = [header] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells)


def _positive(text: str, what: str) -> float:
    from clipdyn.specs import parse_float

    x = parse_float(text, what)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{what}={text} is not allowed; it must be finite and > 0")
    return x


def positive_list(text: str, what: str) -> np.ndarray:
    """A LIST of finite values > 0, or a one-line ValueError naming the bad values."""
    from clipdyn.specs import parse_list

    x = parse_list(text, what)
    if not np.all(np.isfinite(x) & (x > 0)):
        raise ValueError(f"{what}: {x.tolist()} is not allowed; values must be finite and > 0")
    return x


def threshold_list(text: str, what: str) -> np.ndarray:
    """A LIST of thresholds >= 0 (``inf``: unclipped), or a one-line ValueError."""
    from clipdyn.specs import parse_list

    try:
        c = parse_list(text, what)
    except ValueError as err:
        raise ValueError(f"{err}; thresholds are numbers >= 0 or inf") from None
    if np.any(np.isnan(c) | (c < 0)):
        raise ValueError(f"{what}: {c.tolist()} is not allowed; thresholds must be >= 0 (inf allowed)")
    return c


def int_at_least(text: str, what: str, low: int) -> int:
    """An integer option ``>= low``, or a one-line ValueError naming the bad value."""
    from clipdyn.specs import parse_float

    x = parse_float(text, what)
    if not (x.is_integer() and x >= low):
        raise ValueError(f"{what}={text} is not allowed; it must be an integer >= {low}")
    return int(x)


def cmd_factors(args) -> None:
    import jax

    from clipdyn import factors
    from clipdyn.specs import parse_noise

    law = parse_noise(args.noise)
    R = positive_list(args.R, "--R")
    c = threshold_list(args.c, "--c")
    RR, CC = np.meshgrid(R, c, indexing="ij")
    f = jax.jit(lambda r, cc: factors.reduction_factors(law, r, cc))(RR.ravel(), CC.ravel())
    f = {k: np.asarray(v) for k, v in f._asdict().items()}
    records = [
        {"R": float(r), "c": float(cc), **{k: float(f[k][i]) for k in f}}
        for i, (r, cc) in enumerate(zip(RR.ravel(), CC.ravel()))
    ]
    keys = ["R", "c", "mu", "nu_abs", "nu", "ccc", "csc"]
    emit(records, args.json, lambda: format_table(keys, [[rec[k] for k in keys] for rec in records]))


def _problem_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spectrum", required=True, help="identity:d=D | power-law:d=D,alpha=A | file:PATH.npy")
    p.add_argument("--noise", required=True, help="e.g. gaussian:sigma=0.5, student-t:df=3,scale=1")
    p.add_argument("--eta", required=True, help="learning rate (> 0)")
    p.add_argument("--clip", required=True, help="C >= 0 | inf | max-ccc | heuristic:kappa=K[,sigma2=S]")
    p.add_argument("--R0", default="1", help="initial risk (> 0), default 1")
    p.add_argument("--T", required=True, help="horizon in ODE time t = steps / Tr K (> 0)")
    p.add_argument("--points", default="101", help="output times, evenly spaced in [0, T] (default 101)")


def problem_from_args(args):
    """``(problem, T, points)`` from the shared problem options (not ``--eta`` / ``--clip``)."""
    from clipdyn.problem import make_problem
    from clipdyn.specs import parse_noise, parse_spectrum

    law = parse_noise(args.noise)
    lam = parse_spectrum(args.spectrum)
    R0 = _positive(args.R0, "--R0")
    T = _positive(args.T, "--T")
    points = int_at_least(args.points, "--points", 2)
    return make_problem(lam, law, R0=R0), T, points


def build_problem(args):
    """The problem and the one schedule (``--eta``, ``--clip``) that the options describe."""
    from clipdyn.specs import make_schedule, parse_clip

    problem, T, points = problem_from_args(args)
    eta = _positive(args.eta, "--eta")
    clip = parse_clip(args.clip)
    return problem, make_schedule(clip, eta, problem.noise), clip, eta, T, points


def risk_series(risk) -> list:
    """Risk values for output: ``None`` where the run had diverged."""
    return [None if not math.isfinite(float(r)) else float(r) for r in np.asarray(risk)]


def cmd_ode(args) -> None:
    from clipdyn.ode import solve_ode

    problem, schedule, _, _, T, points = build_problem(args)
    res = solve_ode(problem, schedule, T, points, rtol=args.rtol)
    out = {
        "t": np.asarray(res.t).tolist(),
        "risk": risk_series(res.risk),
        "diverged": bool(res.diverged),
        "diverged_at": float(res.diverged_at),
    }

    def table():
        rows = [[t, r] for t, r in zip(out["t"], out["risk"])]
        note = f"\n# diverged at t = {out['diverged_at']:.6g}" if out["diverged"] else ""
        return format_table(["t", "risk"], rows) + note

    emit(out, args.json, table)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="clipdyn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("factors", help="reduction factors and criteria on a grid of (R, c)")
    p.add_argument("--noise", required=True)
    p.add_argument("--R", required=True, help="LIST of risks (> 0)")
    p.add_argument("--c", required=True, help="LIST of thresholds (>= 0, inf allowed)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_factors)

    p = sub.add_parser("ode", help="solve the deterministic ODE for the risk curve")
    _problem_args(p)
    p.add_argument("--rtol", type=float, default=1e-9, help="solver tolerance (default 1e-9)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ode)

    from clipdyn import cli_sim  # the simulation commands live beside the engine they drive

    cli_sim.add_commands(sub, _problem_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = make_parser().parse_args(argv)
        args.func(args)
    except (_CLIError, ValueError, OSError) as err:
        print(f"clipdyn: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - solver failures and the like: one line too
        print(f"clipdyn: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
