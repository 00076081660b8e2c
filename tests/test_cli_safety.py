"""The command line's answers to impossible or unsafe requests (issue 12, items 1-8 and 10).

The standard (DEVELOPERS.md): one line ``clipdyn: error: ...`` naming the bad value and what is
allowed, exit status 2, nothing lost, no garbage with exit status 0; Ctrl-C: one line and exit
status 130. Simulations run in float32 (the default) on ``d = 300``; numbers are compared
exactly, since a run's numbers depend only on its seed and configuration.
"""

import hashlib
import json
import math

import numpy as np
import pytest

from clipdyn.cli import main
from clipdyn.runs import results
from clipdyn.runs import sweep as sw
from clipdyn.theory.problem import power_law_spectrum

PROBLEM = ["--spectrum", "power-law:d=300,alpha=0.3", "--noise", "gaussian:sigma=0.5"]
SIM = [*PROBLEM, "--eta", "1", "--clip", "0.5", "--T", "1", "--points", "3", "--seeds", "2"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_interrupted(capsys, *argv):
    """``(exit status, stderr)`` of a command stopped by Ctrl-C (a test failure, not the end of
    the test session, if the KeyboardInterrupt escapes)."""
    try:
        with pytest.raises(SystemExit) as stop:
            run(capsys, *argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the command line (a traceback instead of one line)")
    return stop.value.code, capsys.readouterr().err


def one_line_error(code, err, *words):
    assert code == 2, err
    assert err.startswith("clipdyn: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)


@pytest.fixture
def interrupt_at(monkeypatch):
    """``interrupt_at(n)``: the compiled program raises KeyboardInterrupt at its n-th call (one
    call per seed and chunk), as Ctrl-C would."""
    real = sw._sharded_runner
    state = {"n": 0, "at": None}

    def counting(*args, **kwargs):
        fn = real(*args, **kwargs)

        def wrapped(*x):
            state["n"] += 1
            if state["at"] == state["n"]:
                raise KeyboardInterrupt
            return fn(*x)

        return wrapped

    monkeypatch.setattr(sw, "_sharded_runner", counting)

    def set_at(n):
        state.update(n=0, at=n)

    return set_at


def _sweep_argv(spectrum, out, *extra):
    return ["sweep", "--spectrum", spectrum, "--noise", "gaussian:sigma=0.5", "--eta", "1",
            "--clip", "0.1,0.5,1", "--T", "1", "--points", "3", "--seeds", "2", "--chunk-size", "1",
            "--out", out, *extra]


# Items 1 and 5: Ctrl-C keeps the finished chunks and says so; a changed file is not mixed in.

def test_ctrl_c_then_changed_spectrum_file(tmp_path, capsys, interrupt_at):
    lam_file = tmp_path / "lam.npy"
    np.save(lam_file, power_law_spectrum(300, 0.3))
    argv = _sweep_argv(f"file:{lam_file}", tmp_path / "sw")
    interrupt_at(3)  # chunk 1, first seed
    code, err = run_interrupted(capsys, *argv)
    assert code == 130
    assert err == (f"clipdyn: interrupted: 1 of 3 chunk(s) are kept in {tmp_path / 'sw.npz.partial'}/; "
                   "rerun the same command to resume\n")
    interrupt_at(None)
    new_lam = power_law_spectrum(300, 0.3)[::-1].copy()  # same d, Tr K and R0
    np.save(lam_file, new_lam)
    code, _, err = run(capsys, *argv, "--json")
    one_line_error(code, err, "sw.npz.partial", "spectrum", "--overwrite")
    code, _, err = run(capsys, *argv, "--json", "--overwrite")
    assert code == 0, err
    arrays, meta = results.load_results(tmp_path / "sw.npz")
    want = hashlib.sha256(np.ascontiguousarray(new_lam, np.float64).tobytes()).hexdigest()
    assert meta["config"]["fingerprints"]["spectrum"] == want
    # Every chunk comes from the new file: equal to a fresh sweep of it.
    fresh = tmp_path / "fresh"
    assert run(capsys, *_sweep_argv(f"file:{lam_file}", fresh, "--json"))[0] == 0
    np.testing.assert_array_equal(arrays["risk"], results.load_results(fresh)[0]["risk"])


def test_ctrl_c_in_simulate_is_one_line(capsys, interrupt_at):
    interrupt_at(1)
    code, err = run_interrupted(capsys, "simulate", *SIM)
    assert code == 130
    assert err == "clipdyn: interrupted: nothing is saved without an output file\n"


def test_unreadable_chunk_is_named_and_recomputed(tmp_path, capsys, interrupt_at):
    argv = _sweep_argv("power-law:d=300,alpha=0.3", tmp_path / "sw", "--json")
    interrupt_at(5)
    assert run_interrupted(capsys, *argv)[0] == 130
    interrupt_at(None)
    chunk = tmp_path / "sw.npz.partial" / "chunk_000001.npz"
    chunk.write_bytes(chunk.read_bytes()[:100])
    code, out, err = run(capsys, *argv)
    assert code == 0
    assert err.count("\n") == 1 and err.startswith("clipdyn: warning: chunk file") and str(chunk) in err
    assert json.loads(out)["out"] == str(tmp_path / "sw.npz")


# Item 2: the paths written are the paths reported; folders and other sweeps' results are safe.

def test_out_where_no_folder_can_be_made_is_one_line(tmp_path, capsys):
    # A plain file where a parent folder should be: nothing can be written there. Missing
    # parent folders, on the other hand, are created (the second run).
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, "sweep", *SIM, "--out", tmp_path / "file" / "x")
    one_line_error(code, err, "cannot create", "file/x.npz.partial", "Not a directory", "choose another --out")
    code, _, err = run(capsys, "sweep", *SIM, "--json", "--out", tmp_path / "new" / "sub" / "x")
    assert code == 0, err
    assert (tmp_path / "new" / "sub" / "x.npz").is_file()


def test_out_paths_are_kept_apart_and_reported(tmp_path, capsys):
    argv = ["sweep", *SIM, "--json"]
    for name in ("run.a", "run.b"):
        code, out, err = run(capsys, *argv, "--out", tmp_path / name)
        assert code == 0, err
        summary = json.loads(out)
        assert summary["out"] == str(tmp_path / f"{name}.npz")
        assert summary["sidecar"] == str(tmp_path / f"{name}.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.a.json", "run.a.npz", "run.b.json",
                                                         "run.b.npz"]
    code, _, err = run(capsys, *argv, "--out", tmp_path)
    one_line_error(code, err, "--out", "existing folder")
    before = (tmp_path / "run.a.npz").read_bytes()
    other = [a if a != "0.5" else "0.25" for a in argv]  # another threshold
    code, _, err = run(capsys, *other, "--out", tmp_path / "run.a")
    one_line_error(code, err, "run.a.npz", "different sweep", "--overwrite",
                   'it differs in: clip ("0.5" there, "0.25" here)')
    assert (tmp_path / "run.a.npz").read_bytes() == before
    code, _, err = run(capsys, *other, "--out", tmp_path / "run.a", "--overwrite")
    assert code == 0, err
    assert (tmp_path / "run.a.npz").read_bytes() != before


# Item 7: impossible sizes are refused up front, with the amount or the limit.

@pytest.mark.parametrize("argv, words", [
    (["simulate", *SIM[:-2], "--seeds", "1e12"], ["--seeds=1e12", "4294967295"]),
    (["simulate", *SIM, "--seed-offset", "1e30"], ["--seed-offset=1e30", "4294967295"]),
    (["sweep", *SIM[:-8], "--clip", "0.1:1:1e12", "--T", "1", "--points", "3", "--out", "x"],
     ["--clip", "1e12", "1000000"]),
    (["sweep", *PROBLEM, "--eta", "0.1:1:1e4", "--clip", "0.1:1:1e4", "--T", "1", "--points", "3",
      "--out", "x"], ["100,000,000 configurations", "--clip", "--eta", "at most 1,000,000"]),
    (["ode", *SIM[:-4], "--points", "1e9"], ["--points=1e9", "1,000,000"]),
])
def test_impossible_sizes_are_refused(capsys, tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)  # where "--out x" would land
    code, _, err = run(capsys, *argv)
    one_line_error(code, err, *words)


@pytest.mark.parametrize("argv, words", [
    (["simulate", "--spectrum", "identity:d=1e9", *SIM[2:]], ["d=1000000000", "memory", "16 GB"]),
    (["simulate", *SIM[:-2], "--seeds", "1e9"], ["the runs (1000000000 seed(s)", "needs about", "16 GB available"]),
    (["sweep", *SIM[:-2], "--seeds", "1e9", "--out", "x"], ["this sweep (1000000000 seed(s)", "needs about"]),
])
def test_runs_beyond_memory_are_refused_with_the_amount(capsys, tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    from clipdyn import validation

    monkeypatch.setattr(validation, "available_memory", lambda: 16 * 2**30)
    code, _, err = run(capsys, *argv)
    one_line_error(code, err, *words)


def test_long_runs_announce_an_estimate(capsys, monkeypatch):
    monkeypatch.setattr(sw, "LONG_RUN_SECONDS", 0.0)  # every run counts as long
    monkeypatch.setattr(sw, "CALIBRATION_MIN_WORK", 0.0)
    code, out, err = run(capsys, "simulate", *SIM)
    assert code == 0 and "clipdyn: about 77 steps x 2 seed-chunk(s)" in err and "estimated" in err
    code, out, err = run(capsys, "simulate", *SIM, "--json")
    assert code == 0 and err == ""  # --json: nothing on stderr


# Item 8: horizons the engines cannot count or resolve name --T.

@pytest.mark.parametrize("command", ["simulate", "validate"])
def test_horizon_too_long_is_refused(capsys, command):
    argv = [a if a != "1" or i != SIM.index("--T") + 1 else "1e20" for i, a in enumerate(SIM)]
    code, out, err = run(capsys, command, *argv)
    one_line_error(code, err, "--T=1e+20", "7.661e+21 steps", "2,000,000,000")
    assert out == ""


@pytest.mark.parametrize("command", ["simulate", "validate"])
def test_horizon_shorter_than_the_output_steps_is_refused(capsys, command):
    argv = [a if a != "1" or i != SIM.index("--T") + 1 else "1e-9" for i, a in enumerate(SIM)]
    trace = float(power_law_spectrum(300, 0.3).sum())
    code, out, err = run(capsys, command, *argv)
    one_line_error(code, err, "--T=1e-09", "--points=3", "at least")
    least = float(err.rsplit("= ", 1)[1].split(",")[0])
    assert least >= 2 / trace and least == pytest.approx(2 / trace, rel=1e-5)
    assert out == ""


# Item 10: divergence is reported as divergence, not as a gap.

def test_validate_reports_divergence_instead_of_a_gap(capsys):
    argv = [*PROBLEM, "--eta", "3", "--clip", "inf", "--T", "40", "--points", "2", "--seeds", "3"]
    code, out, err = run(capsys, "validate", *argv, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["max_rel_gap"] is None and res["max_rel_gap_until"] is None
    assert res["diverged"]["seeds"] == 3 and 0 < res["diverged"]["ode"] < 40
    assert 0 < res["diverged"]["first_seed_at"] < 40
    code, out, err = run(capsys, "validate", *argv)
    lines = out.strip().splitlines()
    assert lines[-2].startswith("# ODE diverged at t = ") and "3/3 seeds diverged" in lines[-2]
    assert lines[-1] == "max_rel_gap none (no gap to report: something diverged at once)"


def test_gap_is_over_the_times_where_everything_is_alive():
    from clipdyn.cli.sim import compare_to_ode

    t = np.arange(6.0)
    ode = np.array([1.0, 0.8, 0.6, 0.5, 0.4, 0.35])
    sim = np.array([ode * 1.01, ode * 0.97, ode * 1.02, ode * 1.5])
    sim[3, 3:] = np.nan  # seed 3 diverges at t = 3 (its risk had grown: a survivor bias after)
    div = np.array([np.nan, np.nan, np.nan, 3.0])
    rep = compare_to_ode(t, ode, math.nan, sim, div)
    mean = sim[:, :3].mean(0)
    want = np.max(np.abs(mean - ode[:3]) / ode[:3])
    assert rep["max_rel_gap"] == pytest.approx(want, rel=1e-12) and rep["max_rel_gap_until"] == 2.0
    np.testing.assert_allclose(rep["rel_gap"][3:], 0.0, atol=1e-12)  # survivors only, flagged
    assert rep["diverged"] == {"ode": None, "seeds": 1, "of": 4, "first_seed_at": 3.0}
    assert "1/4 seeds diverged" in rep["note"] and "t <= 2" in rep["note"]
    # The ODE diverging right after the start leaves only t = 0: no gap.
    ode_div = ode.copy()
    ode_div[1:] = np.nan
    rep = compare_to_ode(t, ode_div, 0.5, sim, div)
    assert rep["max_rel_gap"] is None and "ODE diverged at t = 0.5" in rep["note"]
    # Nothing diverged: the gap over every time, as before.
    rep = compare_to_ode(t, ode, math.nan, sim[:3], div[:3])
    assert rep["note"] is None
    assert rep["max_rel_gap"] == pytest.approx(np.max(np.abs(sim[:3].mean(0) - ode) / ode), rel=1e-12)


def test_the_program_leaves_at_once_after_ctrl_c(monkeypatch):
    # After Ctrl-C the console script exits through os._exit(130) (an interrupted computation
    # still running on XLA's threads crashed the interpreter's teardown with SIGSEGV, 139);
    # other statuses exit normally.
    import os

    import clipdyn.cli as cli

    calls = []
    monkeypatch.setattr(os, "_exit", lambda code: calls.append(code) or (_ for _ in ()).throw(SystemExit(code)))
    for code, via_os_exit in [(130, True), (2, False), (0, False)]:
        calls.clear()
        monkeypatch.setattr(cli, "main", lambda c=code: c)
        with pytest.raises(SystemExit) as exc:
            cli.run()
        assert exc.value.code == code and bool(calls) == via_os_exit
    # The sweep's own handler ends with SystemExit(130) (after saying what was kept): that too
    # leaves through os._exit (it used to run JAX's distributed shutdown at exit, which waited
    # 300 s for the other processes and then aborted with 134).
    calls.clear()

    def interrupted():
        raise SystemExit(130)

    monkeypatch.setattr(cli, "main", interrupted)
    with pytest.raises(SystemExit) as exc:
        cli.run()
    assert exc.value.code == 130 and calls == [130]


def test_same_sweep_typed_differently_is_the_same_and_real_changes_are_named(tmp_path, capsys,
                                                                                 interrupt_at):
    # The identity is by content: "--eta 1.0" after "--eta 1" (and "sigma=0.50") reran as the same
    # sweep, where it used to be refused as a different one, even mid-way through its chunks.
    argv = [str(a) for a in _sweep_argv("power-law:d=300,alpha=0.3", tmp_path / "sw", "--json")]
    interrupt_at(3)
    assert run_interrupted(capsys, *argv)[0] == 130
    interrupt_at(None)
    retyped = [a.replace("sigma=0.5", "sigma=0.50") for a in argv]
    retyped[retyped.index("--eta") + 1] = "1.0"
    code, out, err = run(capsys, *retyped)
    assert code == 0, err
    arrays, meta = results.load_results(tmp_path / "sw.npz")
    assert meta["config"]["options"]["eta"] == "1.0"  # the options as typed this time
    code, _, err = run(capsys, *argv)  # the finished file: the same sweep too
    assert code == 0, err
    # A real change mid-way through the chunks is named with both values (the partial folder
    # used to say only "configuration").
    interrupt_at(3)
    changed = [a if a != "1" or argv[i - 1] != "--T" else "2" for i, a in enumerate(argv)]
    out2 = str(tmp_path / "sw2")
    for lst in (argv, changed):
        lst[lst.index("--out") + 1] = out2
    assert run_interrupted(capsys, *argv)[0] == 130
    interrupt_at(None)
    code, _, err = run(capsys, *changed)
    one_line_error(code, err, "sw2.npz.partial", "T (1.0 there, 2.0 here)", "--overwrite")


def test_data_sweep_records_the_datasets_risk_not_the_option_text(tmp_path, capsys):
    # The command line's option texts used to overwrite the sweep's own entries: R0 "1" for
    # every --data sweep, and "batch" as the option text instead of one value per configuration.
    code, _, err = run(capsys, "sweep", "--data", "sklearn:name=wine", "--eta", "0.5", "--clip", "1",
                       "--T", "0.5", "--points", "2", "--seeds", "1", "--batch", "1,2", "--json",
                       "--out", tmp_path / "wine")
    assert code == 0, err
    from clipdyn.data import load_problem

    meta = results.load_results(tmp_path / "wine")[1]
    assert meta["config"]["R0"] == pytest.approx(load_problem("sklearn:name=wine").R0, rel=1e-12)
    assert meta["config"]["batch"] == [1, 2] and meta["config"]["options"]["batch"] == "1,2"
    assert meta["config"]["options"]["R0"] is None  # --R0 is refused with --data: not "1"


def test_run_sweep_refuses_config_entries_it_records_itself():
    from clipdyn import Gaussian
    from clipdyn.theory.problem import make_problem
    from clipdyn.theory.schedules import constant

    with pytest.raises(ValueError, match=r"config entries \['R0', 'T'\] are not allowed"):
        sw.run_sweep(make_problem(power_law_spectrum(50, 0.3), Gaussian(0.5)),
                     sw.stack_schedules([constant(1.0, 1.0)]), [0], 1.0, 2, progress=False,
                     config={"R0": 1, "T": "x", "note": "fine"})


def test_a_sweep_whose_results_cannot_fit_is_refused_before_building_it(capsys, monkeypatch):
    # 1e6 configurations: refused from the counts alone (it took 40 s of building them before).
    from clipdyn import validation

    monkeypatch.setattr(validation, "available_memory", lambda: 10 * 2**30)
    built = []
    from clipdyn.theory import schedules

    monkeypatch.setattr(schedules, "constant", lambda *a: built.append(a))
    code, _, err = run(capsys, "sweep", *PROBLEM, "--eta", "0.1:2:1000", "--clip", "0:1:1000",
                       "--seeds", "100", "--T", "4", "--out", "never.npz")
    one_line_error(code, err, "this sweep (100 seed(s) x 1,000,000 configuration(s) x 101 output times; "
                   "its results alone) needs about 2", "10 GB available")
    assert built == []


# Found by trying the command line as a hurried user would (trial-cli, 2026-11-23).

ODE = ["ode", "--spectrum", "identity:d=10", "--noise", "gaussian:sigma=0.5", "--eta", "1",
       "--T", "1", "--points", "3"]


@pytest.mark.parametrize("argv, words", [
    # the last of a repeated option won silently (Cauchy ran for "--noise gaussian --noise cauchy")
    (["factors", "--noise", "gaussian:sigma=0.5", "--noise", "cauchy", "--R", "1", "--c", "1"],
     ["--noise is given twice"]),
    (["factors", "--noise", "cauchy", "--R", "1", "--c=1", "--c=2"], ["--c is given twice"]),
    # abbreviations: "--R 2" ran as "--R0 2"
    ([*ODE, "--clip", "1", "--R", "2"], ["unrecognized arguments: --R 2"]),
    # a misspelt feedback schedule ran as heuristic
    ([*ODE, "--clip", "heuristicX:kappa=1"], ["heuristicX:kappa=1", "heuristic:kappa=K"]),
    # extreme heuristic parameters made every threshold 0 (or nan): "diverged at t = 0"
    ([*ODE, "--clip", "heuristic:kappa=1e-300"], ["kappa=1e-300", "1e-100, 1e100"]),
    ([*ODE, "--clip", "heuristic:kappa=1,sigma2=1e200"], ["sigma2=1e+200", "1e-100, 1e100"]),
    # numbers a float cannot hold, and digits Python's float() reads but integers refuse
    ([*ODE, "--clip", "1e400"], ["1e400", "beyond the largest float"]),
    (["factors", "--noise", "cauchy", "--R", "1e-400", "--c", "1"], ["--R=1e-400", "below the smallest"]),
    ([*ODE, "--clip", "1_0"], ["'1_0' is not a number"]),
    (["ode", "--spectrum", "identity:d=10", "--noise", "gaussian:sigma=\uff11", "--eta", "1",
      "--clip", "1", "--T", "1"], ["is not a number"]),
    # bias read "-inf" as an unknown option ("expected one argument")
    (["bias", "--points=-inf,3", "--clip", "1"], ["--points", "finite"]),
    (["bias", "--points", "-inf,3", "--clip", "1"], ["--points", "finite"]),
    # the magnitude bounds apply to the horizon too (1e300 ran)
    ([*ODE[:7], "--T", "1e300", "--clip", "1"], ["--T=1e+300", "1e-100, 1e100"]),
    # messages that named something else than what was typed
    (["factors", "--noise", "cauchy:scale=inf", "--R", "1", "--c", "1"], ["cauchy: scale=inf"]),
    (["factors", "--noise", "student-t:df=1e7,scale=1", "--R", "1", "--c", "1"], ["within [0.01, 1e6]"]),
    ([*ODE[:1], "--spectrum", "file: /nonexistent/x.npy", *ODE[3:], "--clip", "1"],
     ["'/nonexistent/x.npy' does not exist"]),
    (["factors", "--data", "npz:path=/", "--R", "1", "--c", "1"], ["npz: '/' is a folder"]),
    # grids that cannot fit: MemoryError or RESOURCE_EXHAUSTED with exit status 1
    (["factors", "--noise", "cauchy", "--R", "1:2:1000000", "--c", "1:2:1000000"],
     ["1000000 x 1000000", "needs about"]),
    (["bias", "--points", "0:1:1000000", "--perturbation", "0:1:1000000", "--clip", "1"],
     ["1000000 point(s) x 1000000 perturbation(s)", "needs about"]),
])
def test_more_bad_input_gets_one_line(capsys, argv, words):
    code, out, err = run(capsys, *argv)
    one_line_error(code, err, *words)
    assert out == ""


def test_heuristic_within_the_bounds_still_runs(capsys):
    code, out, err = run(capsys, *ODE, "--clip", "heuristic:kappa=1e-100", "--json")
    assert code == 0, err
    assert json.loads(out)["risk"][-1] == pytest.approx(0.81067, rel=1e-4)  # the small-kappa limit


def test_factors_in_pieces_equal_one_call(capsys, monkeypatch):
    """`factors` computes its grid in pieces of a fixed width (the last one padded): the rows are
    the one-call rows, in order, bit for bit."""
    from clipdyn.cli import theory as cli_theory

    argv = ["factors", "--noise", "student-t:df=3,scale=1", "--R", "0.1:2:7", "--c", "0.5,1,inf", "--json"]
    code, whole, err = run(capsys, *argv)
    assert code == 0, err
    monkeypatch.setattr(cli_theory, "_PIECE", 4)
    code, pieces, err = run(capsys, *argv)
    assert code == 0, err
    assert pieces == whole and len(json.loads(whole)) == 21


def test_a_closed_pipe_ends_quietly():
    """`clipdyn factors ... | head -1` printed "clipdyn: error: [Errno 32] Broken pipe" (exit 2)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "clipdyn", "factors", "--noise", "gaussian:sigma=1", "--R",
           "1:2:20000", "--c", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # the reader stops after one line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and err == "", err


@pytest.mark.parametrize("option, value, field", [("--eta", "1e50", "Constant field eta=1e+50"),
                                                  ("--clip", "1e39", "Constant field clip=1e+39")])
def test_values_beyond_float32_are_named_in_a_float32_run(capsys, option, value, field):
    # Within the library's bounds but beyond float32's: the cast made them inf, and the refusal
    # said "eta=[inf]" (not what was typed) after a NumPy warning line (trial-limits).
    argv = [*PROBLEM, "--eta", "1", "--clip", "0.5", "--T", "1", "--points", "3", "--seeds", "1"]
    argv[argv.index(option) + 1] = value
    code, _, err = run(capsys, "simulate", *argv)
    one_line_error(code, err, field, "beyond float32's range", "--precision 64")
    code, out, err = run(capsys, "simulate", *argv, "--precision", "64")
    assert code == 0, err
