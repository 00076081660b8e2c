"""Simulation commands of the ``clipdyn`` command line: ``simulate``, ``sweep``, ``validate``.

They share the problem options of ``clipdyn ode`` and its conventions (table by default, JSON with
``--json``, one-line errors). Seeds are ``0 .. S-1`` (``--seed-offset`` shifts them).

What they refuse up front (exit status 2, one line): seeds beyond ``jax.random.key``'s 32-bit
range; a horizon whose ``T x Tr K`` steps exceed the engines' int32 step counters, or whose
output times fall closer than one step; sweeps of more than ``MAX_LIST`` configurations; runs
that need more memory than the machine has available; an ``--out`` that is a folder, or that
holds another sweep's results or chunks (without ``--overwrite``). Long runs print an estimate and
a progress bar on stderr (not with ``--json``); Ctrl-C prints one line (and, for ``sweep``, how
many chunks are kept) and exits with status 130.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import warnings

import numpy as np

from clipdyn.cli.common import (add_problem_args, build_problem, emit, format_table, int_at_least,
                                integer_list, none_if_nan, non_negative_list, positive_list,
                                problem_from_args, r0_text)
from clipdyn.runs.results import seed_statistics

__all__ = ["add_commands"]


def _sim_args(p) -> None:
    p.add_argument("--seeds", default="8", help="number of seeds S (default 8)")
    p.add_argument("--seed-offset", default="0", help="first seed (default 0)")
    p.add_argument("--method", default="sgd", choices=["sgd", "hsgd"], help="C-SGD/SGD or C-HSGD")
    p.add_argument("--precision", default="32", choices=["32", "64"], help="float32 (default) or float64")
    p.add_argument("--prng-impl", default=None, choices=["threefry2x32", "rbg", "unsafe_rbg"],
                   help="JAX PRNG implementation (default threefry2x32: fastest measured on CPU)")
    p.add_argument("--json", action="store_true")


def _seeds(args) -> range:
    """Seeds ``off .. off + S - 1``, within ``jax.random.key``'s 32-bit range (checked before any
    list is built: ``--seeds 1e12`` is refused, not allocated)."""
    from clipdyn.validation import MAX_SEED

    from clipdyn.cli.specs import parse_int

    n = int_at_least(args.seeds, "--seeds", 1)
    off = parse_int(args.seed_offset, "--seed-offset", 0, high=MAX_SEED)  # seeds are 32-bit
    if off + n - 1 > MAX_SEED:
        raise ValueError(f"--seeds={args.seeds} is not allowed with --seed-offset={off}: the last seed "
                         f"would be {off + n - 1}, and seeds are 32-bit (0 to {MAX_SEED}); --seeds "
                         f"must be at most {MAX_SEED - off + 1}")
    return range(off, off + n)


def _check_horizon(problem, T, points) -> None:
    """Refuse, naming ``--T`` and ``--points``, horizons the engines cannot count or resolve."""
    from clipdyn.runs.sweep import checked_output_steps

    trace = float(np.sum(np.asarray(problem.lam, np.float64)))
    checked_output_steps(T, points, trace, names=("--T", "--points"))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"clipdyn: warning: {message}", file=sys.stderr, flush=True)


def _guarded(cmd):
    """A command that prints library warnings as one line each and answers Ctrl-C with one line
    (the library's message says what was kept) and exit status 130."""

    @functools.wraps(cmd)
    def run(args) -> None:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                cmd(args)
            except KeyboardInterrupt as err:
                text = str(err)
                print(f"clipdyn: interrupted{': ' + text if text else ''}", file=sys.stderr, flush=True)
                raise SystemExit(130) from None

    return run


def _simulate(args):
    """The problem the arguments describe and its seeds' runs: ``(problem, schedule, rule, T,
    points, result)`` (shared by ``simulate`` and ``validate``)."""
    from clipdyn.runs.sweep import simulate_runs

    problem, data, schedule, rule, T, points = build_problem(args)
    _check_horizon(problem, T, points)
    res = simulate_runs(problem, schedule, _seeds(args), T, points, method=args.method,
                        precision=args.precision, prng_impl=args.prng_impl, rules=rule, data=data,
                        progress=not args.json)
    return problem, schedule, rule, T, points, res


def cmd_simulate(args) -> None:
    problem, schedule, rule, T, points, res = _simulate(args)
    risk = res.risk[:, 0, :]
    mean, se, n = seed_statistics(risk)
    out = {
        "t": res.t.tolist(),
        "risk_mean": none_if_nan(mean),
        "risk_stderr": none_if_nan(se),
        "risk": [none_if_nan(r) for r in risk],
        "diverged": none_if_nan(res.diverged_at[:, 0]),
        "seeds": res.seeds.tolist(),
        "samples": int(res.config["samples"][0]),
    }

    def table():
        rows = [[t, m, s, int(k)] for t, m, s, k in zip(out["t"], out["risk_mean"], out["risk_stderr"], n)]
        div = [f"seed {s}: t = {t:.6g}" for s, t in zip(out["seeds"], out["diverged"]) if t is not None]
        note = ("\n# diverged: " + "; ".join(div)) if div else ""
        return format_table(["t", "risk_mean", "risk_stderr", "alive"], rows) + note

    emit(out, args.json, table)


def _sweep_schedules(args, law, rule=None):
    """The schedules of ``clipdyn sweep``: every threshold x every learning rate (feedback
    schedules use the factors of ``rule``)."""
    from clipdyn.theory import schedules as sch
    from clipdyn.cli.specs import parse_clip_list

    etas = positive_list(args.eta, "--eta")
    clips = parse_clip_list(args.clip, "--clip")
    records, scheds = [], []
    if clips[0].kind == "max-ccc":
        base = sch.max_ccc(float(etas[0]), law, rule=rule)
        for e in etas:
            scheds.append(dataclasses.replace(base, eta=float(e)))  # shares the tables
            records.append({"eta": float(e), "clip": "max-ccc"})
        return scheds, records
    for spec in clips:
        for e in etas:
            if spec.kind == "heuristic":
                scheds.append(sch.heuristic(float(e), spec.kappa, law, spec.sigma2, rule=rule))
                records.append({"eta": float(e), "clip": spec.describe(), "kappa": spec.kappa})
            else:
                scheds.append(sch.constant(float(e), spec.value))
                records.append({"eta": float(e), "clip": spec.value})
    return scheds, records


def _n_clips(args) -> int:
    """How many thresholds ``--clip`` lists (without building their schedules)."""
    from clipdyn.cli.specs import parse_clip_list

    return len(parse_clip_list(args.clip, "--clip"))


def _sweep_rules(args, points: int):
    """Every clipping rule x batch size x DP noise x pre-clip noise the options list (after
    checking that the whole sweep's results fit in memory, before any configuration is built)."""
    from clipdyn import validation
    from clipdyn.cli.specs import MAX_LIST, parse_rule, split_items
    from clipdyn.runs.sweep import memory_estimate

    batches = integer_list(args.batch, "--batch")
    specs = split_items(args.clip_rule, "--clip-rule")
    dps = [None] if args.dp_noise is None else non_negative_list(args.dp_noise, "--dp-noise").tolist()
    pres = ([None] if args.preclip_noise is None
            else non_negative_list(args.preclip_noise, "--preclip-noise").tolist())
    # Every configuration is a Python object before it is a column of the program: count them
    # before building any (a product of long LISTs would otherwise run out of memory silently).
    sizes = {"--clip": _n_clips(args), "--eta": len(positive_list(args.eta, "--eta")),
             "--clip-rule": len(specs), "--batch": len(batches), "--dp-noise": len(dps),
             "--preclip-noise": len(pres)}
    n_cfg = math.prod(sizes.values())
    if n_cfg > MAX_LIST:
        shown = " x ".join(f"{n} {k}" for k, n in sizes.items() if n > 1)
        raise ValueError(f"this sweep has {n_cfg:,} configurations ({shown}); at most {MAX_LIST:,} "
                         "are allowed in one sweep: split it into several --out files")
    # The results alone (seeds x configurations x output times) are known now; building a
    # million configurations first took 40 s before the same refusal.
    n_seeds = len(_seeds(args))
    need = memory_estimate(1, n_seeds, n_cfg, points, 1, 4)["results"]
    validation.check_memory(need, f"this sweep ({n_seeds} seed(s) x {n_cfg:,} configuration(s) x "
                                  f"{points} output times; its results alone)")
    out = []
    for spec in specs:
        for b in batches.tolist():
            for dp in dps:
                for pre in pres:
                    rule = parse_rule(spec, b, dp, pre)
                    out.append((rule, {"rule": rule.describe(), "batch": b, "dp_noise": dp,
                                       "preclip_noise": pre}))
    return out


def cmd_sweep(args) -> None:
    from clipdyn.runs import distributed

    # Join a multi-process run (--coordinator ... or --distributed) before any other JAX call.
    with distributed.session(distributed.cluster_from_args(args)):
        _sweep(args)


def _sweep(args) -> None:
    from clipdyn.runs import distributed
    from clipdyn.runs.sweep import run_sweep, stack_schedules

    from clipdyn.theory.rules import static_signature

    from clipdyn.runs.results import results_paths
    from clipdyn.cli.specs import parse_int
    from clipdyn.validation import output_path

    npz, sidecar = results_paths(output_path(args.out, "--out"))
    problem, data, T, points = problem_from_args(args)
    _check_horizon(problem, T, points)
    rule_recs = _sweep_rules(args, points)
    feedback = args.clip.strip().lower() == "max-ccc" or args.clip.strip().lower().startswith("heuristic")
    if feedback and len({static_signature(r) for r, _ in rule_recs}) > 1:
        raise ValueError("a max-ccc or heuristic sweep takes one --clip-rule and one --batch at a "
                         "time (its schedule carries the rule's factors); sweep the others separately")
    all_scheds, all_rules, all_records = [], [], []
    for rule, rrec in rule_recs:  # rules outermost: configurations of one rule run together
        scheds, records = _sweep_schedules(args, problem.noise, None if rule.plain else rule)
        for sched, rec in zip(scheds, records):
            all_scheds.append(sched)
            all_rules.append(rule)
            all_records.append({**rec, **rrec})
    chunk = None if args.chunk_size is None else parse_int(args.chunk_size, "--chunk-size", 1)
    # The options as typed: a description (run_sweep's own entries hold the values it computed
    # with, and its identity is by content, so "--eta 1.0" reruns "--eta 1").
    config = {"options": {"spectrum": args.spectrum, "noise": args.noise, "data": args.data,
                          "features": args.features, "eta": args.eta, "clip": args.clip,
                          "clip_rule": args.clip_rule, "batch": args.batch, "dp_noise": args.dp_noise,
                          "preclip_noise": args.preclip_noise,
                          # with --data the data set R0 (config R0), and --R0 is refused
                          "R0": None if args.data is not None else r0_text(args)},
              "configs": all_records}
    res = run_sweep(problem, stack_schedules(all_scheds), _seeds(args), T, points, method=args.method,
                    precision=args.precision, chunk_size=chunk, out=args.out, config=config,
                    progress=not args.json, engine=args.engine, prng_impl=args.prng_impl,
                    rules=all_rules, data=data, overwrite=args.overwrite)
    summary = []
    for j, rec in enumerate(all_records):
        mean, se, n = seed_statistics(res.risk[:, j, :])
        div = res.diverged_at[:, j]
        summary.append({**rec, "final_risk_mean": mean[-1], "final_risk_stderr": se[-1],
                        "n_diverged": int(np.isfinite(div).sum()),
                        "first_divergence": float(np.nanmin(div)) if np.isfinite(div).any() else None})
    out = {"out": str(npz), "sidecar": str(sidecar), "configs": summary}

    def table():
        # The noise columns where a sweep varies or sets them (else their rows looked identical).
        noise = [k for k in ("dp_noise", "preclip_noise") if any(r.get(k) for r in summary)]
        keys = ["eta", "clip", "rule", "batch", *noise, "final_risk_mean", "final_risk_stderr",
                "n_diverged", "first_divergence"]
        rows = [[r[k] if not isinstance(r[k], float) or math.isfinite(r[k]) else (
            "inf" if r[k] == math.inf else None) for k in keys] for r in summary]
        return format_table(keys, rows) + f"\n# results: {npz} (configuration: {sidecar})"

    if distributed.is_writer():  # one summary per multi-process run
        emit(out, args.json, table)


def cmd_validate(args) -> None:
    from clipdyn.theory.ode import solve_ode

    problem, schedule, rule, T, points, res = _simulate(args)
    ode = solve_ode(problem, schedule, T, points, times=res.t, rule=rule)  # at the simulation's step times
    mean, se, n = seed_statistics(res.risk[:, 0, :])
    report = compare_to_ode(res.t, np.asarray(ode.risk, float), float(ode.diverged_at),
                            res.risk[:, 0, :], res.diverged_at[:, 0])
    out = {
        "t": res.t.tolist(),
        "ode": none_if_nan(np.asarray(ode.risk, float)),
        "sim_mean": none_if_nan(mean),
        "sim_stderr": none_if_nan(se),
        "alive": n.tolist(),
        "rel_gap": none_if_nan(report["rel_gap"]),
        "max_rel_gap": report["max_rel_gap"],
        "max_rel_gap_until": report["max_rel_gap_until"],
        "diverged": report["diverged"],
        "seeds": res.seeds.tolist(),
        "n_diverged": int(res.diverged.sum()),
        "ode_diverged_at": float(ode.diverged_at),
        "method": args.method,
        "rule": rule.describe(),
        "batch": rule.batch,
        "d_int": float(problem.intrinsic_dimension),
    }

    def table():
        rows = [[t, o, m, s, k, g] for t, o, m, s, k, g in zip(
            out["t"], out["ode"], out["sim_mean"], out["sim_stderr"], out["alive"], out["rel_gap"])]
        note = f"\n# {report['note']}" if report["note"] else ""
        last = (f"max_rel_gap {out['max_rel_gap']:.6g}" if out["max_rel_gap"] is not None
                else "max_rel_gap none (no gap to report: something diverged at once)")
        return (format_table(["t", "ode", "sim_mean", "sim_stderr", "alive", "rel_gap"], rows)
                + f"\nd_int {out['d_int']:.6g}{note}\n{last}")

    emit(out, args.json, table)


def compare_to_ode(t, ode_risk, ode_diverged_at: float, sim_risk, sim_diverged_at) -> dict:
    """The relative gap between the seeds' mean risk and the ODE, where both are alive.

    A diverged run has no risk to compare (``nan`` from its divergence on), so:

    * ``rel_gap[k] = |mean_k - ode_k| / ode_k`` where the ODE is alive and at least one seed is
      (the mean is over the seeds alive then); ``nan`` elsewhere;
    * ``max_rel_gap`` is the largest gap over the times where the ODE and *every* seed are alive
      (a mean over the survivors alone leans towards the runs that did not blow up); ``None``
      when that leaves only ``t = 0`` (the start, equal up to rounding) while something diverged;
    * ``diverged`` says what diverged and when, and ``note`` says it in one line.

    Args:
        t: output times ``(P,)``.
        ode_risk: the ODE's risk ``(P,)`` (``nan`` after its divergence).
        ode_diverged_at: its divergence time (``nan`` if none).
        sim_risk: the seeds' risks ``(S, P)`` (``nan`` at and after a divergence).
        sim_diverged_at: their divergence times ``(S,)`` (``nan`` if none).

    Returns:
        ``{"rel_gap", "max_rel_gap", "max_rel_gap_until", "diverged", "note"}``.
    """
    t = np.asarray(t, float)
    ode_risk = np.asarray(ode_risk, float)
    sim_risk = np.asarray(sim_risk, float)
    div_at = np.asarray(sim_diverged_at, float)
    mean, _, n = seed_statistics(sim_risk)
    ode_alive = np.isfinite(ode_risk)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(ode_alive & (n > 0), np.abs(mean - ode_risk) / np.abs(ode_risk), np.nan)
    everyone = ode_alive & (n == sim_risk.shape[0]) & np.isfinite(gap)
    n_div = int(np.isfinite(div_at).sum())
    ode_div = math.isfinite(ode_diverged_at)
    diverged = {"ode": ode_diverged_at if ode_div else None, "seeds": n_div,
                "of": int(sim_risk.shape[0]),
                "first_seed_at": float(np.nanmin(div_at)) if n_div else None}
    if not ode_div and n_div == 0:
        best = float(np.max(gap[everyone])) if everyone.any() else None
        return {"rel_gap": gap, "max_rel_gap": best, "max_rel_gap_until": float(t[-1]),
                "diverged": diverged, "note": None}
    what = (f"ODE diverged at t = {ode_diverged_at:.6g}" if ode_div else "the ODE did not diverge")
    what += f"; {n_div}/{sim_risk.shape[0]} seeds diverged"
    if n_div:
        what += f" (first at t = {diverged['first_seed_at']:.6g})"
    window = np.flatnonzero(everyone)
    if window.size < 2:
        return {"rel_gap": gap, "max_rel_gap": None, "max_rel_gap_until": None,
                "diverged": diverged, "note": what + ": no gap to report"}
    until = float(t[window[-1]])
    return {"rel_gap": gap, "max_rel_gap": float(np.max(gap[window])), "max_rel_gap_until": until,
            "diverged": diverged,
            "note": what + f": max_rel_gap is over t <= {until:.6g}, where the ODE and every seed are alive"}


def add_commands(sub) -> None:
    p = sub.add_parser("simulate", help="simulate streaming C-SGD / SGD / C-HSGD over seeds")
    add_problem_args(p)
    _sim_args(p)
    p.set_defaults(func=_guarded(cmd_simulate))

    p = sub.add_parser("sweep", help="a grid of thresholds x learning rates x rules x seeds, saved to a file")
    add_problem_args(p, rule_lists=True)
    _sim_args(p)
    p.add_argument("--out", required=True,
                   help="results file: OUT if it ends in .npz, else OUT.npz; the .json sidecar "
                        "replaces .npz by .json")
    p.add_argument("--overwrite", action="store_true",
                   help="replace another sweep's results at --out and discard its unfinished chunks "
                        "(without it both are refused; the same sweep is always recomputed)")
    p.add_argument("--chunk-size", default=None, help="configurations per chunk (resume granularity)")
    p.add_argument("--engine", default="auto", choices=["auto", "step", "block"],
                   help="auto (default): block for C-SGD sweeps of 8+ configurations per device, "
                        "else step (the one that ran is recorded in the results); step: "
                        "bit-identical runs; block: C-SGD by matrix products, equal up to rounding")
    from clipdyn.runs.distributed import add_cli_options

    add_cli_options(p)
    p.set_defaults(func=_guarded(cmd_sweep))

    p = sub.add_parser("validate", help="ODE against the mean of simulation seeds")
    add_problem_args(p)
    _sim_args(p)
    p.set_defaults(func=_guarded(cmd_validate))
