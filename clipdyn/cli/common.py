"""What every ``clipdyn`` command shares: output (table or strict JSON), option parsing with
one-line errors, and the problem, schedule and clipping-rule options.

Every parse error is a ``ValueError`` (or :class:`CLIError` from argparse) whose message names
the bad value and what is allowed; :func:`clipdyn.cli.main` prints it as one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

__all__ = ["Parser", "CLIError", "emit", "format_table", "positive", "positive_list",
           "threshold_list", "int_at_least", "add_problem_args", "add_rule_args",
           "problem_from_args", "build_problem", "rule_from_args", "risk_series", "none_if_nan"]


class CLIError(Exception):
    """A command-line error (from argparse or a command): one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, negative values read as values, no abbreviations
    (``--R 2`` meant ``--R0 2`` silently) and no repeated options (the last one won silently:
    ``--noise gaussian:sigma=1 --noise cauchy`` ran Cauchy)."""

    def __init__(self, *args, **kwargs):
        from clipdyn.cli.specs import NEGATIVE_VALUE

        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # "--c -inf" and "--R -1e-3" are values to check, not unknown options.
        self._negative_number_matcher = NEGATIVE_VALUE

    def parse_known_args(self, args=None, namespace=None):
        import sys

        argv = sys.argv[1:] if args is None else list(args)
        seen = set()
        for word in argv:
            if word == "--":
                break
            if word.startswith("--"):
                name = word.split("=", 1)[0]
                if name in seen:
                    self.error(f"option {name} is given twice; give each option once")
                seen.add(name)
        return super().parse_known_args(argv, namespace)

    def error(self, message):  # one line, no usage dump
        raise CLIError(message)


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


def none_if_nan(x) -> list:
    """Values for output: ``None`` where not finite (after a divergence)."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(x, float)]


def risk_series(risk) -> list:
    """Risk values for output: ``None`` where the run had diverged."""
    return none_if_nan(risk)


def positive(text: str, what: str, bounded: bool = False) -> float:
    """A finite value > 0 (within the library's magnitudes ``[1e-100, 1e100]`` when ``bounded``:
    scales), or a one-line ValueError naming the bad value."""
    from clipdyn import validation
    from clipdyn.cli.specs import parse_float

    return float(validation.positive(what, parse_float(text, what), bounded=bounded))


def non_negative(text: str, what: str) -> float:
    """A finite value >= 0, or a one-line ValueError naming the bad value."""
    from clipdyn.cli.specs import parse_float

    x = parse_float(text, what)
    if not (math.isfinite(x) and x >= 0):
        raise ValueError(f"{what}={text} is not allowed; it must be finite and >= 0")
    return x


def positive_list(text: str, what: str, bounded: bool = True) -> np.ndarray:
    """A LIST of finite values > 0 (within the library's magnitude bounds when ``bounded``: risks,
    say), or a one-line ValueError naming the bad values (clipdyn.validation's rule)."""
    from clipdyn import validation
    from clipdyn.cli.specs import parse_list

    return validation.positive(what, parse_list(text, what), bounded=bounded)


def integer_list(text: str, what: str, least: int = 1) -> np.ndarray:
    """A LIST of integers ``>= least`` (batch sizes, say), or a one-line ValueError quoting what
    was typed."""
    from clipdyn import validation
    from clipdyn.cli.specs import parse_list

    values = parse_list(text, what).tolist()
    try:  # clipdyn.validation's integer rule, with the message quoting the whole LIST as typed
        return np.array([validation.integer(what, v, least) for v in values])
    except ValueError:
        raise ValueError(f"{what}={text} is not allowed; values must be integers >= {least}") from None


def non_negative_list(text: str, what: str) -> np.ndarray:
    """A LIST of finite values >= 0, or a one-line ValueError naming the bad values."""
    from clipdyn.cli.specs import parse_list

    x = parse_list(text, what)
    if not np.all(np.isfinite(x) & (x >= 0)):
        raise ValueError(f"{what}: {x.tolist()} is not allowed; values must be finite and >= 0")
    return x


def threshold_list(text: str, what: str) -> np.ndarray:
    """A LIST of thresholds >= 0 (``inf``: unclipped), or a one-line ValueError."""
    from clipdyn.cli.specs import parse_list

    from clipdyn import validation

    try:
        c = parse_list(text, what)
    except ValueError as err:
        raise ValueError(f"{err}; thresholds are numbers >= 0 or inf") from None
    return validation.threshold(what, c)


def int_at_least(text: str, what: str, low: int) -> int:
    """An integer option ``>= low``, or a one-line ValueError naming the bad value."""
    from clipdyn.cli.specs import parse_int

    return parse_int(text, what, low)


NOISE_HELP = ("gaussian:sigma=S | student-t:df=D,scale=S | cauchy:scale=S | rademacher:sigma=S | "
              "mixture:weights=W1/W2,means=M1/M2,sigmas=S1/S2 | empirical:file=PATH.npy")
DATA_HELP = "sklearn:name=N | cifar10:path=DIR | wikitext2:path=DIR | npz:path=FILE"
FEATURES_HELP = "with --data: raw (default) | relu:d=D,seed=S"


def add_problem_args(p: argparse.ArgumentParser, schedule: bool = True, rule_lists: bool = False) -> None:
    """The problem options shared by ``ode``, ``simulate``, ``sweep`` and ``validate``."""
    p.add_argument("--spectrum", help="identity:d=D | power-law:d=D,alpha=A | file:PATH.npy")
    p.add_argument("--noise", help=NOISE_HELP)
    p.add_argument("--data", default=None, help=f"a dataset instead of --spectrum/--noise: {DATA_HELP}")
    p.add_argument("--features", default=None, help=FEATURES_HELP)
    if schedule:
        if rule_lists:  # sweep
            p.add_argument("--eta", required=True, help="LIST of learning rates (> 0), e.g. 0.5,1 or 0.1:2:8")
            p.add_argument("--clip", required=True,
                           help="LIST of C >= 0 (inf: unclipped), e.g. 0.01:10:64 | max-ccc | "
                                "heuristic:kappa=K1/K2/...[,sigma2=S]")
        else:
            p.add_argument("--eta", required=True, help="learning rate (> 0)")
            p.add_argument("--clip", required=True, help="C >= 0 | inf | max-ccc | heuristic:kappa=K[,sigma2=S]")
    # No default here: --R0 given at all is refused with --data (r0_text gives the default).
    p.add_argument("--R0", default=None, help="initial risk (> 0), default 1 (not with --data)")
    p.add_argument("--T", required=True, help="horizon in ODE time t = steps / Tr K (> 0)")
    p.add_argument("--points", default="101", help="output times, evenly spaced in [0, T] (default 101)")
    add_rule_args(p, rule_lists)


def add_rule_args(p: argparse.ArgumentParser, lists: bool = False) -> None:
    """``--batch``, ``--clip-rule``, ``--dp-noise``, ``--preclip-noise`` (LISTs for ``sweep``)."""
    kind = "LIST of " if lists else ""
    p.add_argument("--batch", default="1", help=f"{kind}samples per step B (default 1)")
    p.add_argument("--clip-rule", default="per-sample",
                   help=f"{kind}per-sample (default) | batch | micro:size=b | index:beta=P")
    p.add_argument("--dp-noise", default=None, help=f"{kind}DP noise multiplier S (>= 0): G += (S C / B) z")
    p.add_argument("--preclip-noise", default=None,
                   help=f"{kind}pre-clip noise K (>= 0; per-sample and index rules)")


def rule_from_args(args):
    """The one clipping rule the options describe."""
    from clipdyn.cli.specs import parse_rule

    batch = int_at_least(args.batch, "--batch", 1)
    dp = None if args.dp_noise is None else non_negative(args.dp_noise, "--dp-noise")
    pre = None if args.preclip_noise is None else non_negative(args.preclip_noise, "--preclip-noise")
    return parse_rule(args.clip_rule, batch, dp, pre)


def r0_text(args) -> str:
    """``--R0`` as given, or its default ``"1"``."""
    return "1" if args.R0 is None else args.R0


def problem_from_args(args):
    """``(problem, data, T, points)`` from the shared problem options (not ``--eta``/``--clip``).

    ``data`` is the :class:`clipdyn.data.DataProblem` of ``--data`` (``None`` for Gaussian data).
    """
    from clipdyn.theory.problem import make_problem
    from clipdyn.cli.specs import parse_noise, parse_spectrum

    T = positive(args.T, "--T", bounded=True)
    points = int_at_least(args.points, "--points", 2)
    # run-safety (issue 12, item 7): every output time is a row of the output and a time the ODE
    # solver must stop at; more than MAX_LIST of them is no table anyone reads (--points 1e9
    # used to run for minutes and then fill memory).
    from clipdyn.cli.specs import MAX_LIST

    if points > MAX_LIST:
        raise ValueError(f"--points={args.points} is not allowed; it must be an integer in "
                         f"[2, {MAX_LIST:,}]")
    if args.data is not None:
        if args.spectrum is not None or args.noise is not None:
            raise ValueError("--data replaces --spectrum and --noise; give one or the other")
        if args.R0 is not None:  # given at all, even as 1: the dataset fixes the start
            raise ValueError(f"--R0={args.R0} is not allowed with --data: the start is theta_0 = 0, so R0 is "
                             "the dataset's own risk at 0")
        from clipdyn.data import load_problem

        data = load_problem(args.data, args.features)
        return data.problem, data, T, points
    if args.features is not None:
        raise ValueError("--features is only allowed with --data")
    if args.spectrum is None or args.noise is None:
        raise ValueError("give --spectrum SPEC and --noise SPEC (or --data SPEC)")
    law = parse_noise(args.noise)
    lam = parse_spectrum(args.spectrum)
    R0 = positive(r0_text(args), "--R0", bounded=True)
    return make_problem(lam, law, R0=R0), None, T, points


def build_problem(args):
    """The problem, dataset, schedule, rule, ``T`` and ``points`` that the options describe."""
    from clipdyn.cli.specs import make_schedule, parse_clip

    problem, data, T, points = problem_from_args(args)
    # within the library's magnitudes, like every scale: 1e300 overflowed float32 into "eta=[inf]"
    eta = positive(args.eta, "--eta", bounded=True)
    clip = parse_clip(args.clip)
    rule = rule_from_args(args)
    schedule = make_schedule(clip, eta, problem.noise, rule)
    return problem, data, schedule, rule, T, points
