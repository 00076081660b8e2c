"""clipdyn benchmarks: simulator throughput against a NumPy loop and a plain lax.scan loop, and the
ODE's speed and accuracy. Prints one JSON object; with ``--markdown FILE`` also rewrites the
results section of BENCHMARKS.md and draws ``bench/throughput.png``.

    python bench/bench.py [--mode quick|full] [--markdown BENCHMARKS.md]

With ``--markdown`` the JSON is also kept in ``bench/results.json``. Everything runs in one
process, side by side, so the ratios compare like with like. Throughput is
run-steps per second (one SGD step of one run), median of repeats after a warm-up (compilation
excluded). The problem is THEORY.md's: lam_i = i^-0.3, Gaussian noise sigma 0.5, eta 1, c 0.5.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # as measured before: int64 counters, float64 ODE
import jax.numpy as jnp
import numpy as np

import clipdyn as cd
from clipdyn import sim as sm
from clipdyn.runs.sweep import run_sweep, seed_keys, stack_schedules
from clipdyn.theory.ode import solve_ode
from clipdyn.theory.problem import make_problem, power_law_spectrum
from clipdyn.theory.rules import clip_scale, default_rule, per_sample, stack_rules
from clipdyn.theory.schedules import Constant, constant

ROOT = Path(__file__).resolve().parents[1]
PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
MODES = {
    "quick": dict(dims=[1000, 10000], runs=[1, 16, 256, 1024], steps=512, block_steps=2048,
                  repeats=3, ode_dims=[1000, 10000, 100000], numpy_steps=2000),
    "full": dict(dims=[1000, 10000], runs=[1, 16, 256, 1024], steps=2048, block_steps=8192,
                 repeats=5, ode_dims=[1000, 10000, 100000], numpy_steps=10000),
}


def median_time(fn, repeats):
    fn()  # warm-up (compilation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---- the reference a researcher would write: one run, a NumPy loop over samples --------------
def numpy_loop(lam, steps, eta=1.0, c=0.5, sigma=0.5, seed=0):
    rng = np.random.default_rng(seed)
    trace = lam.sum()
    sqrt_lam = np.sqrt(lam)
    e = -np.sqrt(2.0 / trace) * rng.choice([-1.0, 1.0], lam.size)
    limit = c * math.sqrt(trace)
    for _ in range(steps):
        x = sqrt_lam * rng.standard_normal(lam.size)
        r = x @ e - sigma * rng.standard_normal()
        g = r * x
        norm = np.linalg.norm(g)
        if norm > limit:
            g *= limit / norm
        e -= eta / trace * g
    return 0.5 * np.sum(lam * e * e)


# ---- a straightforward JAX loop: lax.scan, samples drawn step by step ------------------------
def scan_loop(lam, steps, eta=1.0, c=0.5, sigma=0.5):
    lam = jnp.asarray(lam, jnp.float32)
    trace = jnp.sum(lam)
    sqrt_lam = jnp.sqrt(lam)
    limit = c * jnp.sqrt(trace)

    @jax.jit
    def run(key):
        e0 = -jnp.sqrt(2.0 / trace) * jax.random.rademacher(key, lam.shape, jnp.float32)

        def body(e, k):
            kz, ke = jax.random.split(jax.random.fold_in(key, k))
            x = sqrt_lam * jax.random.normal(kz, lam.shape, jnp.float32)
            r = jnp.dot(x, e) - sigma * jax.random.normal(ke, (), jnp.float32)
            norm = jnp.abs(r) * jnp.linalg.norm(x)
            scale = clip_scale(norm, limit)
            return e - eta / trace * scale * r * x, None

        e, _ = jax.lax.scan(body, e0, jnp.arange(steps))
        return 0.5 * jnp.sum(lam * e * e)

    return lambda: run(jax.random.key(0)).block_until_ready()


def sweep_args(problem, n_runs, steps, prng_impl=None, rule=None):
    """``run_batch``'s arguments (schedules, rules, problem, keys, output steps) for ``n_runs``
    thresholds sharing one seed and ``steps`` SGD steps, float32."""
    clips = jnp.asarray(np.geomspace(0.1, 10.0, n_runs), jnp.float32)
    sched = Constant(jnp.full((n_runs,), 1.0, jnp.float32), clips)
    rules = stack_rules([default_rule() if rule is None else rule] * n_runs)
    return (sched, rules, sm.prepare(problem, jnp.float32), seed_keys([0], prng_impl),
            jnp.asarray([0, steps]))


def clipdyn_sweep(problem, n_runs, steps, engine="step", prng_impl=None, rule=None):
    """n_runs thresholds sharing one seed, ``steps`` SGD steps, through clipdyn's runner."""
    args = sweep_args(problem, n_runs, steps, prng_impl, rule)
    run = jax.jit(lambda s, r, p, k, st: sm.run_batch(p, s, r, k, st, engine=engine))
    return lambda: run(*args)[0].block_until_ready()


def rng_only(problem, steps):
    """The sample draws of one seed alone, as clipdyn draws them (blocks of steps)."""
    prob = sm.prepare(problem, jnp.float32)

    block = int(max(1, min(64, 2**22 // prob.lam.shape[0])))  # as run_batch draws them

    @jax.jit
    def draws(key):
        _, stream = sm.split_seed(key)

        def body(b, acc):
            s = jax.vmap(lambda k: sm.draw_sample(stream, k, prob))(b * block + jnp.arange(block))
            return acc + jnp.sum(s.x) + jnp.sum(s.eps)

        return jax.lax.fori_loop(0, steps // block, body, jnp.zeros((), jnp.float32))

    return lambda: draws(jax.random.key(0)).block_until_ready()


def engine_variants(args, engine, patches):
    """The engine compiled once per variant: ``patches`` maps a name to ``(module, attribute,
    value)``, set while that variant is traced. ``run_batch`` is traced through (not its own
    jit, whose cache would serve the first variant's program to the others)."""
    programs = {}
    for name, (module, attr, value) in patches.items():
        saved = getattr(module, attr)
        setattr(module, attr, value)
        try:
            fn = jax.jit(lambda s, r, p, k, st: sm.run_batch.__wrapped__(p, s, r, k, st, engine=engine))
            programs[name] = fn.lower(*args).compile()
        finally:
            setattr(module, attr, saved)
    return programs


def alternate_times(programs, args, repeats):
    """Each program's wall-clock times on ``args``, the programs timed in turn (so a drift of
    the machine's speed hits them alike); ``2 repeats + 1`` rounds."""
    times = {k: [] for k in programs}
    for _ in range(2 * repeats + 1):
        for k, f in programs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[k].append(time.perf_counter() - t0)
    return times


def median_ratio(times, a, b):
    """The median of the paired ratios ``times[a] / times[b]``."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def draw_comparison(problem, cases, repeats):
    """The engines with their normals drawn by ``jax.random.normal`` (JAX's threefry, a loop of
    rounds on CPU) against clipdyn's own draws (:mod:`clipdyn.sim.threefry`, the same bits with
    the hash written out), timed alternately in one process; the results must be identical.

    ``cases``: ``(runs, engine, steps)``. Returns one row per case.
    """
    from clipdyn.sim import threefry

    out = []
    for n_runs, engine, steps in cases:
        args = sweep_args(problem, n_runs, steps)
        programs = engine_variants(args, engine, {"jax": (threefry, "normal", jax.random.normal),
                                                  "clipdyn": (threefry, "normal", threefry.normal)})
        first = {k: [np.asarray(x) for x in f(*args)] for k, f in programs.items()}
        same = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(first["jax"], first["clipdyn"]))
        times = alternate_times(programs, args, repeats)
        out.append({"runs": n_runs, "engine": engine, "identical": bool(same),
                    "jax_run_steps_per_s": n_runs * steps / statistics.median(times["jax"]),
                    "clipdyn_run_steps_per_s": n_runs * steps / statistics.median(times["clipdyn"]),
                    "speedup_median_of_pairs": median_ratio(times, "jax", "clipdyn")})
    return out


# The sweep of issue 11, typed as a user types it: 1024 thresholds, d = 1000, T = 600.
E2E_ARGS = ["sweep", "--spectrum", "power-law:d=1000,alpha=0.3", "--noise", "gaussian:sigma=0.5",
            "--eta", "1", "--clip", "0.01:10:1024", "--T", "600", "--seeds", "1"]


def end_to_end(t_np, tmp, repeats=3):
    """``clipdyn sweep`` with its default engine (auto) in a fresh process, as a user runs it:
    interpreter start, imports, compilation, the sweep and saving the results file included;
    the median of ``repeats`` processes (one run of a shared VM varies by 10-50 %)."""
    exe = Path(sys.executable).with_name("clipdyn")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "clipdyn.cli"]),
           *E2E_ARGS, "--out", str(tmp), "--overwrite"]
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        walls.append(time.perf_counter() - t0)
    wall = float(np.median(walls))
    config = json.loads(tmp.with_suffix(".json").read_text())["config"]
    steps = int(round(float(config["T"]) * float(config["trace"])))
    run_steps = config["n_configs"] * steps
    return {"command": "clipdyn " + " ".join(E2E_ARGS), "runs": config["n_configs"], "steps": steps,
            "engine": config["engine"], "seconds": wall, "seconds_each": walls,
            "run_steps_per_s": run_steps / wall,
            "ratio_to_numpy": run_steps / wall * t_np}


def feedback_cost(d, n_eta, T):
    """A Student-t max-CCC sweep against the same sweep at constant thresholds (``n_eta``
    learning rates, one seed, ``T`` in ODE time), wall-clock after compilation; the schedule's
    one-off table build is timed on its own."""
    from clipdyn.theory import schedules

    law = cd.StudentT(3.0, 1.0)
    problem = make_problem(power_law_spectrum(d, 0.3), law)
    etas = jnp.asarray(np.geomspace(0.25, 2.0, n_eta))
    schedules._MAX_CCC_TABLES.clear()
    t0 = time.perf_counter()
    schedules.max_ccc(1.0, law)
    build = time.perf_counter() - t0
    feedback = stack_schedules([schedules.max_ccc(float(e), law) for e in etas])  # tables shared
    const = Constant(etas, jnp.full(n_eta, 1.0))
    # Each sweep takes about 0.01 s: medians of 9 (of 3, one run read 5.2x where reruns read 1.3-2x).
    t_fb = median_time(lambda: run_sweep(problem, feedback, [0], T, 2, progress=False), 9)
    t_c = median_time(lambda: run_sweep(problem, const, [0], T, 2, progress=False), 9)
    return {"d": d, "learning_rates": n_eta, "T": T, "table_build_seconds": build,
            "max_ccc_sweep_seconds": t_fb, "constant_sweep_seconds": t_c, "ratio": t_fb / t_c}


def machine_ceilings():
    """Measured ceilings: float32 matrix products (FLOP/s) at the operands' precision (what
    clipdyn asks for, :func:`clipdyn.precision.matmul`) and at JAX's default (TensorFloat-32 on
    recent NVIDIA GPUs, the same as float32 on CPUs), and a large copy (bytes/s). The products
    are sized to fill the device (2048 on CPUs, 8192 on accelerators)."""
    from clipdyn.precision import MATMUL_PRECISION

    n = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)  # not zeros (METHOD.md)
    out = {"matmul_n": n}
    for name, prec in (("matmul_gflops", MATMUL_PRECISION), ("matmul_default_gflops", None)):
        mm = jax.jit(lambda x, p=prec: jnp.matmul(x, x, precision=p))
        t = median_time(lambda: mm(a).block_until_ready(), 5)
        out[name] = 2 * n**3 / t / 1e9
    big = jnp.ones((64 * 2**20,), jnp.float32)  # 256 MiB
    cp = jax.jit(lambda x: x * 1.0000001)
    t = median_time(lambda: cp(big).block_until_ready(), 5)
    out["copy_gbytes_per_s"] = 2 * big.nbytes / t / 1e9
    return out


def matmul_precision(problem, n_runs, steps, repeats):
    """The block engine with its products at the operands' precision (clipdyn's setting) against
    JAX's default precision, which rounds float32 operands to TensorFloat-32 on recent NVIDIA
    GPUs: speed (timed alternately) and the final risks' largest relative difference from the
    step engine's (float32 too, the same samples, no matrix products)."""
    from clipdyn import precision

    args32 = sweep_args(problem, n_runs, steps)
    programs = engine_variants(args32, "block", {
        "operands": (precision, "MATMUL_PRECISION", precision.MATMUL_PRECISION),
        "default": (precision, "MATMUL_PRECISION", None)})  # read when the engine is traced
    # The step engine forms no matrix products (sums of elementwise products): the reference.
    ref = np.asarray(sm.run_batch(*[args32[i] for i in (2, 0, 1, 3, 4)], engine="step")[0], np.float64)
    errors = {}
    for k, f in programs.items():  # the final risks (no run of this sweep diverges)
        errors[k] = float(np.max(np.abs(np.asarray(f(*args32)[0], np.float64)[..., -1] / ref[..., -1] - 1)))
    times = alternate_times(programs, args32, repeats)
    return {"runs": n_runs, "steps": steps,
            **{f"{k}_run_steps_per_s": n_runs * steps / statistics.median(v) for k, v in times.items()},
            **{f"{k}_max_rel_diff_vs_step": e for k, e in errors.items()},
            "speedup_default_median_of_pairs": median_ratio(times, "operands", "default")}


def ode_bench(d, T=100.0):
    from scipy.integrate import solve_ivp
    from scipy.special import erf, erfc

    lam = power_law_spectrum(d, 1.0)
    problem = make_problem(lam, cd.Gaussian(0.5))
    sched = constant(1.0, 0.5)
    t_wall = median_time(lambda: solve_ode(problem, sched, T, 11).risk.block_until_ready(), 3)
    risk = np.asarray(solve_ode(problem, sched, T, 11).risk)
    trace = lam.sum()

    def f(t, v):  # independent reference: closed-form Gaussian factors, explicit DOP853
        R = lam @ v
        s2 = 2 * R + 0.25
        z = 0.5 / math.sqrt(s2)
        mu = erf(z / math.sqrt(2))
        nu = s2 * (mu - math.sqrt(2 / math.pi) * z * math.exp(-z * z / 2) + z * z * erfc(z / math.sqrt(2)))
        return lam * (-2 * mu * v + nu / (2 * trace))

    t0 = time.perf_counter()
    ref = solve_ivp(f, (0, T), np.asarray(problem.v0), method="DOP853", rtol=1e-12, atol=1e-16,
                    t_eval=np.linspace(0, T, 11))
    t_ref = time.perf_counter() - t0
    rel = float(np.max(np.abs(risk / (lam @ ref.y) - 1)))
    return {"d": d, "T": T, "seconds_after_compile": t_wall, "rel_error_vs_dop853_rtol1e-12": rel,
            "scipy_dop853_seconds": t_ref}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default=os.environ.get("BENCH", "quick"), choices=list(MODES))
    ap.add_argument("--markdown", default=None, help="update this BENCHMARKS.md")
    args = ap.parse_args(argv)
    cfg = MODES[args.mode]
    out = {"mode": args.mode, "machine": machine_info(), "ceilings": machine_ceilings(),
           "simulator": [], "ode": []}
    for d in cfg["dims"]:
        problem = make_problem(power_law_spectrum(d, 0.3), cd.Gaussian(0.5))
        lam = np.asarray(problem.lam)
        n_np = max(200, cfg["numpy_steps"] * 1000 // d)
        t_np = median_time(lambda: numpy_loop(lam, n_np), 1 if args.mode == "quick" else 3) / n_np
        t_scan = median_time(scan_loop(lam, cfg["steps"]), cfg["repeats"]) / cfg["steps"]
        t_rng = median_time(rng_only(problem, cfg["steps"]), cfg["repeats"]) / cfg["steps"]
        rows = {"d": d, "numpy_loop_run_steps_per_s": 1 / t_np, "lax_scan_run_steps_per_s": 1 / t_scan,
                "rng_seconds_per_step": t_rng, "clipdyn": []}
        for n, engine in [(n, e) for n in cfg["runs"] for e in ("step", "block")]:
            # The block engine runs longer, as a sweep does: its first block carries start-up work.
            steps = cfg["steps"] if engine == "step" else cfg["block_steps"]
            t = median_time(clipdyn_sweep(problem, n, steps, engine), cfg["repeats"]) / steps
            thr = n / t
            # Flops per run-step: step engine ~10 d (products, sums, update, risk); block engine
            # 4 d in matrix products for these constant schedules (P = E Z^T and E -= A Z; the
            # Lam-weighted Q and H, 2 d more, are formed only when a schedule reads the risk) and
            # O(block) in the recurrence, not counted.
            flops = (10 if engine == "step" else 4) * d * thr
            rows["clipdyn"].append({
                "engine": engine, "runs": n, "steps": steps, "run_steps_per_s": thr,
                "ratio_to_numpy": thr * t_np, "ratio_to_lax_scan": thr * t_scan, "gflops": flops / 1e9,
                # Bytes of state moved per run-step: the step engine reads and writes the float32
                # error vector every step (8 d); the block engine reads it twice (P, the update)
                # and writes it once per block of 256 steps (12 d / 256).
                "gbytes_per_s_state": (8 * d if engine == "step" else 12 * d / 256) * thr / 1e9,
                "rng_share": min(1.0, t_rng / t),
            })
        # Batches: B = 8 per-sample clipping (8 samples per step), 256 thresholds, both engines.
        rows["batch8_per_sample"] = []
        for engine in ("step", "block"):
            t = median_time(clipdyn_sweep(problem, 256, cfg["steps"], engine, rule=per_sample(8)),
                            cfg["repeats"]) / cfg["steps"]
            rows["batch8_per_sample"].append({"engine": engine, "runs": 256, "run_steps_per_s": 256 / t,
                                              "samples_per_s": 8 * 256 / t,
                                              "ratio_to_numpy_samples": 8 * 256 / t * t_np})
        if d == 1000:
            rows["end_to_end"] = end_to_end(t_np, ROOT / "bench" / ".e2e_tmp.npz")
            for p in (ROOT / "bench" / ".e2e_tmp.npz", ROOT / "bench" / ".e2e_tmp.json"):
                p.unlink(missing_ok=True)
        rows["prng_single_run_steps_per_s"] = {
            impl: 1 / (median_time(clipdyn_sweep(problem, 1, cfg["steps"], "step", impl), cfg["repeats"]) / cfg["steps"])
            for impl in PRNG_IMPLS}
        rows["prng_block_1024_run_steps_per_s"] = {
            impl: 1024 / (median_time(clipdyn_sweep(problem, 1024, cfg["block_steps"], "block", impl),
                                      cfg["repeats"]) / cfg["block_steps"])
            for impl in PRNG_IMPLS}
        rows["matmul_precision"] = matmul_precision(problem, 1024, cfg["block_steps"], cfg["repeats"])
        rows["draws"] = draw_comparison(problem, [(1, "step", cfg["steps"]),
                                                  (1024, "block", cfg["block_steps"])], cfg["repeats"])
        out["simulator"].append(rows)
    for d in cfg["ode_dims"]:
        out["ode"].append(ode_bench(d))
    out["feedback"] = feedback_cost(200, 16, 1.0)
    print(json.dumps(out, indent=1))
    if args.markdown:
        # One section (and results file, and plot) per kind of backend: a GPU run keeps the CPU
        # numbers, which are the reference machine's, and the other way round.
        suffix = "" if out["machine"]["backend"] == "cpu" else "_" + out["machine"]["backend"]
        (ROOT / "bench" / f"results{suffix}.json").write_text(json.dumps(out, indent=1))
        write_markdown(out, Path(args.markdown), suffix.replace("_", "-"))
        plot(out, ROOT / "bench" / f"throughput{suffix}.png")
    return out


def machine_info():
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "unknown"

    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
            "python": platform.python_version(), "date": datetime.date.today().isoformat(),
            "commit": git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")}


def write_markdown(out, path, section=""):
    m = out["machine"]
    c = out["ceilings"]
    on = (f"{m['cpu']} ({m['cores']} cores, backend {m['backend']})" if m["backend"] == "cpu" else
          f"{m['device_kind']} (backend {m['backend']}; host {m['cpu']}, {m['cores']} cores)")
    lines = [
        f"Measured {m['date']} on {on}, jax {m['jax']}, "
        f"commit {m['commit']}, by `make bench{' BENCH=full' if out['mode'] == 'full' else ''}` "
        f"(`python bench/bench.py --mode {out['mode']} --markdown BENCHMARKS.md`).",
        "",
        f"Ceilings measured in the same run: float32 matrix product {c['matmul_gflops']:.0f} GFLOP/s "
        f"at float32 precision, as clipdyn computes ({c['matmul_default_gflops']:.0f} GFLOP/s "
        f"at JAX's default precision, TensorFloat-32 on recent NVIDIA GPUs), "
        f"large copy {c['copy_gbytes_per_s']:.1f} GB/s (read + write).",
        "",
        "| d | runs | engine | clipdyn run-steps/s | x NumPy loop | x lax.scan loop | GFLOP/s | of matmul ceiling | state GB/s | RNG share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rows in out["simulator"]:
        for r in rows["clipdyn"]:
            lines.append(f"| {rows['d']} | {r['runs']} | {r['engine']} | {r['run_steps_per_s']:.3g} | {r['ratio_to_numpy']:.1f} | "
                         f"{r['ratio_to_lax_scan']:.2f} | {r['gflops']:.2f} | {100 * r['gflops'] / out['ceilings']['matmul_gflops']:.0f} % | "
                         f"{r['gbytes_per_s_state']:.2f} | "
                         f"{r['rng_share']:.2f} |")
    lines += ["", "| d | NumPy loop run-steps/s | lax.scan loop run-steps/s | clipdyn one run, threefry2x32 | rbg | unsafe_rbg |",
              "|---|---|---|---|---|---|"]
    for rows in out["simulator"]:
        pr = rows["prng_single_run_steps_per_s"]
        lines.append(f"| {rows['d']} | {rows['numpy_loop_run_steps_per_s']:.3g} | {rows['lax_scan_run_steps_per_s']:.3g} | "
                     f"{pr['threefry2x32']:.3g} | {pr['rbg']:.3g} | {pr['unsafe_rbg']:.3g} |")
    lines += ["", "The same for the block engine, 1024 runs (run-steps/s):", "",
              "| d | threefry2x32 | rbg | unsafe_rbg |", "|---|---|---|---|"]
    for rows in out["simulator"]:
        pr = rows["prng_block_1024_run_steps_per_s"]
        lines.append(f"| {rows['d']} | {pr['threefry2x32']:.3g} | {pr['rbg']:.3g} | {pr['unsafe_rbg']:.3g} |")
    lines += ["", "Matrix-product precision: the block engine (1024 runs) with its products at float32 "
              "precision (clipdyn's setting, `clipdyn.precision.matmul`) against JAX's default "
              "precision (TensorFloat-32 operands on recent NVIDIA GPUs, bfloat16 on TPUs), timed "
              "alternately; the difference is the final risks' largest relative difference from the "
              "step engine (float32, the same samples, no matrix products).", "",
              "| d | float32 products run-steps/s | default products run-steps/s | speed-up of default | "
              "float32: max rel. diff. from step engine | default: max rel. diff. |",
              "|---|---|---|---|---|---|"]
    for rows in out["simulator"]:
        r = rows["matmul_precision"]
        lines.append(f"| {rows['d']} | {r['operands_run_steps_per_s']:.3g} | {r['default_run_steps_per_s']:.3g} | "
                     f"{r['speedup_default_median_of_pairs']:.2f}x | {r['operands_max_rel_diff_vs_step']:.1e} | "
                     f"{r['default_max_rel_diff_vs_step']:.1e} |")
    lines += ["", "Draws: the engines with their normals from `jax.random.normal` (JAX's threefry, lowered on "
              "CPU as a loop of rounds) against clipdyn's (`clipdyn.sim.threefry`: the same bits, the hash "
              "written out), alternately in one process; speed-up is the median of paired timings.", "",
              "| d | runs | engine | jax.random.normal run-steps/s | clipdyn draws run-steps/s | speed-up | results identical |",
              "|---|---|---|---|---|---|---|"]
    for rows in out["simulator"]:
        for r in rows["draws"]:
            lines.append(f"| {rows['d']} | {r['runs']} | {r['engine']} | {r['jax_run_steps_per_s']:.3g} | "
                         f"{r['clipdyn_run_steps_per_s']:.3g} | {r['speedup_median_of_pairs']:.2f}x | "
                         f"{'yes' if r['identical'] else 'NO'} |")
    lines += ["", "Clipping rules: `B = 8` per-sample clipping, 256 thresholds sharing one seed (a run-step "
              "uses 8 samples; the NumPy ratio counts samples, against the one-sample NumPy loop).", "",
              "| d | engine | run-steps/s | samples/s | x NumPy loop (samples) |", "|---|---|---|---|---|"]
    for rows in out["simulator"]:
        for r in rows["batch8_per_sample"]:
            lines.append(f"| {rows['d']} | {r['engine']} | {r['run_steps_per_s']:.3g} | {r['samples_per_s']:.3g} | "
                         f"{r['ratio_to_numpy_samples']:.1f} |")
    lines += ["", "End to end: `" + next((r["end_to_end"]["command"] for r in out["simulator"] if "end_to_end" in r), "")
              + " --out PATH` in a fresh process (default engine; interpreter start, imports, compilation, "
              "the sweep and saving included; median of 3 processes), against the NumPy loop's rate:", "",
              "| d | runs | steps | engine chosen | seconds (range) | run-steps/s | x NumPy loop |", "|---|---|---|---|---|---|---|"]
    for rows in out["simulator"]:
        if "end_to_end" in rows:
            e = rows["end_to_end"]
            each = e["seconds_each"]
            lines.append(f"| {rows['d']} | {e['runs']} | {e['steps']} | {e['engine']} | {e['seconds']:.1f} "
                         f"({min(each):.1f}-{max(each):.1f}) | "
                         f"{e['run_steps_per_s']:.3g} | {e['ratio_to_numpy']:.0f} |")
    fb = out["feedback"]
    lines += ["", "Feedback schedules (Student-t df 3, `d = 200`, 16 learning rates, one seed, `T = 1`; "
              "after compilation):", "",
              "| max-CCC table build (once per law) | max-CCC sweep | constant-threshold sweep | ratio |",
              "|---|---|---|---|",
              f"| {fb['table_build_seconds']:.1f} s | {fb['max_ccc_sweep_seconds']:.3f} s | "
              f"{fb['constant_sweep_seconds']:.3f} s | {fb['ratio']:.1f}x |"]
    lines += ["", "| ODE d | T | seconds after compilation | rel. error vs DOP853 (rtol 1e-12) | scipy DOP853 seconds |",
              "|---|---|---|---|---|"]
    for r in out["ode"]:
        lines.append(f"| {r['d']} | {r['T']:g} | {r['seconds_after_compile']:.3f} | "
                     f"{r['rel_error_vs_dop853_rtol1e-12']:.1e} | {r['scipy_dop853_seconds']:.1f} |")
    block = "\n".join(lines)
    start, end = f"<!-- results{section}:start -->", f"<!-- results{section}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start not in text:
        text += f"\n## Results ({m['backend']})\n\n{start}\n{end}\n"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{start}\n{block}\n{end}{tail}")


def plot(out, dst):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for rows in out["simulator"]:
        for engine, style in (("step", "o-"), ("block", "s--")):
            rs = [r for r in rows["clipdyn"] if r["engine"] == engine]
            axes[0].loglog([r["runs"] for r in rs], [r["run_steps_per_s"] for r in rs], style,
                           label=f"clipdyn {engine}, d={rows['d']}")
        axes[0].axhline(rows["numpy_loop_run_steps_per_s"], ls=":", color="gray")
    axes[0].set(xlabel="runs in the sweep (one shared seed)", ylabel="run-steps per second",
                title="throughput against sweep size (dotted: NumPy loop)")
    axes[0].legend()
    dims = [rows["d"] for rows in out["simulator"]]
    for k, n in enumerate(out["simulator"][0]["clipdyn"]):
        axes[1].loglog(dims, [rows["clipdyn"][k]["run_steps_per_s"] for rows in out["simulator"]],
                       "o-" if n["engine"] == "step" else "s--", label=f"{n['runs']} runs, {n['engine']}")
    axes[1].loglog(dims, [rows["numpy_loop_run_steps_per_s"] for rows in out["simulator"]], "k:", label="NumPy loop")
    axes[1].set(xlabel="d", ylabel="run-steps per second", title="throughput against d")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.savefig(dst, dpi=100)


if __name__ == "__main__":
    main()
