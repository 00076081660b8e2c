"""Simulation commands of the ``clipdyn`` command line: ``simulate``, ``sweep``, ``validate``.

They share the problem options of ``clipdyn ode`` and its conventions (table by default, JSON with
``--json``, one-line errors). Seeds are ``0 .. S-1`` (``--seed-offset`` shifts them).
"""

from __future__ import annotations

import math

import numpy as np

from clipdyn.cli import int_at_least
from clipdyn.results import seed_statistics

__all__ = ["add_commands"]


def _sim_args(p) -> None:
    p.add_argument("--seeds", default="8", help="number of seeds S (default 8)")
    p.add_argument("--seed-offset", default="0", help="first seed (default 0)")
    p.add_argument("--method", default="sgd", choices=["sgd", "hsgd"], help="C-SGD/SGD or C-HSGD")
    p.add_argument("--precision", default="32", choices=["32", "64"], help="float32 (default) or float64")
    p.add_argument("--prng-impl", default=None, choices=["threefry2x32", "rbg", "unsafe_rbg"],
                   help="JAX PRNG implementation (default threefry2x32: fastest measured on CPU)")
    p.add_argument("--json", action="store_true")


def _seeds(args) -> list[int]:
    n = int_at_least(args.seeds, "--seeds", 1)
    off = int_at_least(args.seed_offset, "--seed-offset", 0)
    return list(range(off, off + n))


def _none_if_nan(x) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(x, float)]


def cmd_simulate(args) -> None:
    from clipdyn.cli import build_problem, emit, format_table
    from clipdyn.sweep import simulate_runs

    problem, schedule, clip, eta, T, points = build_problem(args)
    res = simulate_runs(problem, schedule, _seeds(args), T, points, method=args.method,
                        precision=args.precision, prng_impl=args.prng_impl)
    risk = res.risk[:, 0, :]
    mean, se, n = seed_statistics(risk)
    out = {
        "t": res.t.tolist(),
        "risk_mean": _none_if_nan(mean),
        "risk_stderr": _none_if_nan(se),
        "risk": [_none_if_nan(r) for r in risk],
        "diverged": _none_if_nan(res.diverged_at[:, 0]),
        "seeds": res.seeds.tolist(),
    }

    def table():
        rows = [[t, m, s, int(k)] for t, m, s, k in zip(out["t"], out["risk_mean"], out["risk_stderr"], n)]
        div = [f"seed {s}: t = {t:.6g}" for s, t in zip(out["seeds"], out["diverged"]) if t is not None]
        note = ("\n# diverged: " + "; ".join(div)) if div else ""
        return format_table(["t", "risk_mean", "risk_stderr", "alive"], rows) + note

    emit(out, args.json, table)


def _sweep_schedules(args, law):
    """The configurations of ``clipdyn sweep``: every threshold x every learning rate."""
    from clipdyn import schedules as sch
    from clipdyn.cli import positive_list, threshold_list
    from clipdyn.specs import _split, parse_float, parse_list

    etas = positive_list(args.eta, "--eta")
    text = args.clip.strip().lower()
    records, scheds = [], []
    if text == "max-ccc":
        base = sch.max_ccc(float(etas[0]), law)
        for e in etas:
            scheds.append(sch.MaxCCC(float(e), base.noise, base.log_R, base.u))
            records.append({"eta": float(e), "clip": "max-ccc"})
    elif text.startswith("heuristic"):
        _, params = _split(text, "clip")
        if "kappa" not in params:
            raise ValueError("--clip heuristic needs kappa=LIST, e.g. heuristic:kappa=0.5/1/2")
        kappas = parse_list(params["kappa"].replace("/", ","), "heuristic kappa")
        sigma2 = parse_float(params["sigma2"], "heuristic sigma2") if "sigma2" in params else None
        for k in kappas:
            for e in etas:
                scheds.append(sch.heuristic(float(e), float(k), law, sigma2))
                records.append({"eta": float(e), "clip": f"heuristic:kappa={k:g}", "kappa": float(k)})
    else:
        for c in threshold_list(args.clip, "--clip"):
            for e in etas:
                scheds.append(sch.constant(float(e), float(c)))
                records.append({"eta": float(e), "clip": float(c)})
    return scheds, records


def cmd_sweep(args) -> None:
    from clipdyn.cli import emit, format_table, problem_from_args
    from clipdyn.sweep import run_sweep, stack_schedules

    problem, T, points = problem_from_args(args)
    clip_text = args.clip
    scheds, records = _sweep_schedules(args, problem.noise)
    chunk = int_at_least(args.chunk_size, "--chunk-size", 1) if args.chunk_size else None
    config = {"spectrum": args.spectrum, "noise": args.noise, "eta": args.eta, "clip": clip_text,
              "R0": args.R0, "configs": records}
    res = run_sweep(problem, stack_schedules(scheds), _seeds(args), T, points, method=args.method,
                    precision=args.precision, chunk_size=chunk, out=args.out, config=config,
                    progress=not args.json, engine=args.engine, prng_impl=args.prng_impl)
    summary = []
    for j, rec in enumerate(records):
        mean, se, n = seed_statistics(res.risk[:, j, :])
        div = res.diverged_at[:, j]
        summary.append({**rec, "final_risk_mean": mean[-1], "final_risk_stderr": se[-1],
                        "n_diverged": int(np.isfinite(div).sum()),
                        "first_divergence": float(np.nanmin(div)) if np.isfinite(div).any() else None})
    out = {"out": str(args.out), "configs": summary}

    def table():
        keys = ["eta", "clip", "final_risk_mean", "final_risk_stderr", "n_diverged"]
        rows = [[r[k] if not isinstance(r[k], float) or math.isfinite(r[k]) else (
            "inf" if r[k] == math.inf else None) for k in keys] for r in summary]
        return format_table(keys, rows) + f"\n# results: {args.out}"

    emit(out, args.json, table)


def cmd_validate(args) -> None:
    from clipdyn.cli import build_problem, emit, format_table
    from clipdyn.ode import solve_ode
    from clipdyn.sweep import simulate_runs

    problem, schedule, clip, eta, T, points = build_problem(args)
    res = simulate_runs(problem, schedule, _seeds(args), T, points, method=args.method,
                        precision=args.precision, prng_impl=args.prng_impl)
    ode = solve_ode(problem, schedule, T, points, times=res.t)  # at the simulation's step times
    mean, se, n = seed_statistics(res.risk[:, 0, :])
    ode_r = np.asarray(ode.risk, float)
    gap = np.abs(mean - ode_r) / np.abs(ode_r)
    finite = np.isfinite(gap)
    out = {
        "t": res.t.tolist(),
        "ode": _none_if_nan(ode_r),
        "sim_mean": _none_if_nan(mean),
        "sim_stderr": _none_if_nan(se),
        "rel_gap": _none_if_nan(gap),
        "max_rel_gap": float(np.max(gap[finite])) if finite.any() else None,
        "seeds": res.seeds.tolist(),
        "n_diverged": int(res.diverged.sum()),
        "ode_diverged_at": float(ode.diverged_at),
        "method": args.method,
    }

    def table():
        rows = [[t, o, m, s, g] for t, o, m, s, g in zip(out["t"], out["ode"], out["sim_mean"],
                                                         out["sim_stderr"], out["rel_gap"])]
        return (format_table(["t", "ode", "sim_mean", "sim_stderr", "rel_gap"], rows)
                + f"\nmax_rel_gap {out['max_rel_gap']}")

    emit(out, args.json, table)


def add_commands(sub, problem_args) -> None:
    p = sub.add_parser("simulate", help="simulate streaming C-SGD / SGD / C-HSGD over seeds")
    problem_args(p)
    _sim_args(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("sweep", help="a grid of thresholds x learning rates x seeds, saved to a file")
    problem_args(p)
    _sim_args(p)
    p.add_argument("--out", required=True, help="results file (.npz, with a .json sidecar)")
    p.add_argument("--chunk-size", default=None, help="configurations per chunk (resume granularity)")
    p.add_argument("--engine", default="step", choices=["step", "block"],
                   help="step: bit-identical runs (default); block: C-SGD by matrix products, "
                        "faster for wide sweeps, equal up to rounding")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("validate", help="ODE against the mean of simulation seeds")
    problem_args(p)
    _sim_args(p)
    p.set_defaults(func=cmd_validate)
