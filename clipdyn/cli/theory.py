"""Theory commands of the ``clipdyn`` command line: ``factors`` and ``ode``."""

from __future__ import annotations

import numpy as np

from clipdyn.cli.common import (DATA_HELP, FEATURES_HELP, NOISE_HELP, add_problem_args, add_rule_args,
                                build_problem, emit, format_table, positive, positive_list,
                                risk_series, rule_from_args, threshold_list)

__all__ = ["add_commands"]

_PIECE = 4096  # (R, c) pairs per compiled call of `factors`


def cmd_factors(args) -> None:
    import jax

    from clipdyn.theory import factors
    from clipdyn.cli.specs import parse_noise

    if args.data is not None:
        if args.noise is not None:
            raise ValueError("--data replaces --noise; give one or the other")
        from clipdyn.data import load_problem

        law = load_problem(args.data, args.features).problem.noise
    elif args.features is not None:
        raise ValueError("--features is only allowed with --data")
    elif args.noise is None:
        raise ValueError("give --noise SPEC (or --data SPEC)")
    else:
        law = parse_noise(args.noise)
    rule = rule_from_args(args)
    R = positive_list(args.R, "--R")
    c = threshold_list(args.c, "--c")
    from clipdyn import validation

    n = R.size * c.size
    # The output rows, a few hundred bytes each as Python records and text (the factors
    # themselves are computed in pieces of _PIECE pairs: a Student-t law's quadrature takes
    # about 28 kB per pair, and 1e5 x 1e5 pairs ran out of memory inside JAX).
    validation.check_memory(2e3 * n, f"--R x --c: {R.size} x {c.size} = {n:,} (R, c) pairs")
    RR, CC = np.meshgrid(R, c, indexing="ij")
    r_all, c_all = RR.ravel(), CC.ravel()
    width = min(n, _PIECE)
    f_jit = jax.jit(lambda r, cc: factors.reduction_factors(law, r, cc, rule))
    pieces = []
    for i in range(0, n, width):  # the last piece padded to the same width: one compilation
        take = np.minimum(np.arange(i, i + width), n - 1)
        pieces.append({k: np.asarray(v)[: min(width, n - i)]
                       for k, v in f_jit(r_all[take], c_all[take])._asdict().items()})
    f = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]
         if not k.startswith("iso") or rule.use_dp or rule.use_preclip}
    records = [
        {"R": float(r), "c": float(cc), **{k: float(f[k][i]) for k in f}}
        for i, (r, cc) in enumerate(zip(RR.ravel(), CC.ravel()))
    ]
    keys = ["R", "c"] + list(f)
    emit(records, args.json, lambda: format_table(keys, [[rec[k] for k in keys] for rec in records]))


def cmd_ode(args) -> None:
    from clipdyn.theory.ode import solve_ode

    problem, _, schedule, rule, T, points = build_problem(args)
    from clipdyn import validation
    from clipdyn.cli.specs import parse_float

    rtol = validation.rtol(parse_float(args.rtol, "--rtol"), "--rtol")
    res = solve_ode(problem, schedule, T, points, rtol=rtol, rule=rule)
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


def add_commands(sub) -> None:
    p = sub.add_parser("factors", help="reduction factors and criteria on a grid of (R, c)")
    p.add_argument("--noise", default=None, help=NOISE_HELP)
    p.add_argument("--data", default=None,
                   help=f"a dataset, whose residuals' law is the noise law: {DATA_HELP}")
    p.add_argument("--features", default=None, help=FEATURES_HELP)
    p.add_argument("--R", required=True, help="LIST of risks (> 0)")
    p.add_argument("--c", required=True, help="LIST of thresholds (>= 0, inf allowed)")
    add_rule_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_factors)

    p = sub.add_parser("ode", help="solve the deterministic ODE for the risk curve")
    add_problem_args(p)
    p.add_argument("--rtol", default="1e-9",
                   help="the solver's relative tolerance, in [1e-14, 0.1] (default 1e-9)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ode)
