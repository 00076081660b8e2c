"""The command line: output shape, values against the library, and one-line errors."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipdyn.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_factors_json_records(capsys):
    code, out, _ = run(capsys, "factors", "--noise", "gaussian:sigma=1", "--R", "0.5",
                       "--c", f"{math.sqrt(2)},inf", "--json")
    assert code == 0
    recs = json.loads(out)
    assert [set(r) for r in recs] == [{"R", "c", "mu", "nu_abs", "nu", "ccc", "csc"}] * 2
    assert recs[0]["mu"] == pytest.approx(0.682689, abs=1e-6)
    assert recs[1]["c"] == "inf" and recs[1]["mu"] == 1.0 and recs[1]["ccc"] == 1.0


def test_factors_table_and_lists(capsys):
    code, out, _ = run(capsys, "factors", "--noise", "student-t:df=3,scale=1", "--R", "0.01:1:3",
                       "--c", "0.5,1")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["R", "c", "mu", "nu_abs", "nu", "ccc", "csc"]
    assert len(lines) == 1 + 6


def test_ode_json_matches_check_values(capsys):
    code, out, _ = run(capsys, "ode", "--spectrum", "power-law:d=1000,alpha=0.3", "--noise",
                       "gaussian:sigma=0.5", "--eta", "1", "--clip", "0.5", "--T", "4",
                       "--points", "5", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["t"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert res["risk"][1] == pytest.approx(0.9158, abs=5e-5)
    assert res["risk"][4] == pytest.approx(0.7048, abs=5e-5)
    assert res["diverged"] is False


def test_ode_reports_divergence_without_nan(capsys):
    code, out, _ = run(capsys, "ode", "--spectrum", "identity:d=100", "--noise", "gaussian:sigma=0.5",
                       "--eta", "3", "--clip", "inf", "--T", "20", "--points", "5", "--json")
    assert code == 0
    assert "NaN" not in out
    res = json.loads(out)
    assert res["diverged"] is True and res["risk"][-1] is None and 0 < res["diverged_at"] < 20


@pytest.mark.slow
def test_ode_spectrum_file_and_schedules(tmp_path, capsys):
    f = tmp_path / "lam.npy"
    np.save(f, np.linspace(1.0, 0.01, 50))
    for clip in ("max-ccc", "heuristic:kappa=1"):
        code, out, err = run(capsys, "ode", "--spectrum", f"file:{f}", "--noise", "rademacher:sigma=0.5",
                             "--eta", "0.5", "--clip", clip, "--T", "2", "--points", "3", "--json")
        assert code == 0, err
        assert len(json.loads(out)["risk"]) == 3


BAD = [
    (["ode", "--spectrum", "power-law:d=10,alpha=1", "--noise", "gaussian:sigma=-1", "--eta", "1",
      "--clip", "1", "--T", "1"], "sigma=-1"),
    (["ode", "--spectrum", "power-law:d=10,alpha=1", "--noise", "student-t:df=0", "--eta", "1",
      "--clip", "1", "--T", "1"], "df=0"),
    (["ode", "--spectrum", "power-law:d=10,alpha=1", "--noise", "gaussian", "--eta", "0",
      "--clip", "1", "--T", "1"], "--eta=0"),
    (["ode", "--spectrum", "power-law:d=10,alpha=1", "--noise", "gaussian", "--eta", "1",
      "--clip", "-2", "--T", "1"], "clip '-2'"),
    (["ode", "--spectrum", "power-law:d=10,alpha=1", "--noise", "gaussian", "--eta", "1",
      "--clip", "1", "--R0", "0", "--T", "1"], "--R0=0"),
    (["ode", "--spectrum", "power-law:d=10,alpha=1", "--noise", "gaussian", "--eta", "1",
      "--clip", "1", "--T", "-1"], "--T=-1"),
    (["ode", "--spectrum", "power-law:d=10", "--noise", "gaussian", "--eta", "1",
      "--clip", "1", "--T", "1"], "missing alpha"),
    (["ode", "--spectrum", "banana:d=3", "--noise", "gaussian", "--eta", "1", "--clip", "1",
      "--T", "1"], "unknown spectrum"),
    (["ode", "--spectrum", "identity:d=3", "--noise", "weird", "--eta", "1", "--clip", "1",
      "--T", "1"], "unknown law"),
    (["ode", "--spectrum", "identity:d=3", "--noise", "gaussian:sigma", "--eta", "1", "--clip", "1",
      "--T", "1"], "key=value"),
    (["ode", "--spectrum", "identity:d=3", "--noise", "gaussian:mu=1", "--eta", "1", "--clip", "1",
      "--T", "1"], "unknown key"),
    (["ode", "--spectrum", "identity:d=3", "--noise", "cauchy", "--eta", "1",
      "--clip", "heuristic:kappa=1", "--T", "1"], "infinite variance"),
    (["factors", "--noise", "gaussian", "--R", "-1", "--c", "1"], "--R"),
    (["factors", "--noise", "gaussian", "--R", "1", "--c", "abc"], "'abc' is not a number"),
    (["factors", "--noise", "mixture:weights=1/1,means=0,sigmas=1/1", "--R", "1", "--c", "1"],
     "same length"),
    # beyond 1e100 like every scale: 1e300 overflowed float32 (three warning lines, "eta=[inf]"),
    # a DP noise of 1e200 printed iso_1 = inf
    (["simulate", "--spectrum", "identity:d=3", "--noise", "gaussian", "--eta", "1e300", "--clip", "1",
      "--T", "1"], "--eta=1e+300 is not allowed"),
    (["factors", "--noise", "gaussian", "--R", "1", "--c", "1", "--dp-noise", "1e200"],
     "dp_noise=1e+200 is not allowed"),
]


@pytest.mark.parametrize("argv, text", BAD)
def test_bad_input_is_one_clear_line(capsys, argv, text):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("clipdyn: error:")
    assert text in err
    assert "Traceback" not in err


def test_bad_spectrum_file(tmp_path, capsys):
    f = tmp_path / "lam.npy"
    np.save(f, np.array([1.0, np.nan]))
    code, _, err = run(capsys, "ode", "--spectrum", f"file:{f}", "--noise", "gaussian", "--eta", "1",
                       "--clip", "1", "--T", "1")
    assert code == 2 and "entry 1" in err
    code, _, err = run(capsys, "ode", "--spectrum", f"file:{tmp_path / 'missing.npy'}", "--noise",
                       "gaussian", "--eta", "1", "--clip", "1", "--T", "1")
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("command", [[str(Path(sys.executable).parent / "clipdyn")],
                                     [sys.executable, "-m", "clipdyn"]], ids=["script", "python -m"])
def test_console_script_entry_point(command):
    out = subprocess.run([*command, "factors", "--noise", "gaussian", "--R", "1", "--c", "1", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["R"] == 1.0
    bad = subprocess.run([*command, "factors", "--noise", "gaussian", "--R", "1"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--c" in bad.stderr


def test_sigterm_stops_a_sweep_saying_what_was_kept(tmp_path):
    # SIGTERM (timeout, SLURM, kill) ended a sweep with status 143 and no word; it now says what
    # was kept, as Ctrl-C does. A sweep of 40 one-configuration chunks, stopped once the first is
    # on disk (bounded waits; the process is killed in any case).
    out = tmp_path / "sw.npz"
    argv = [sys.executable, "-m", "clipdyn", "sweep", "--spectrum", "power-law:d=100,alpha=0.3",
            "--noise", "gaussian:sigma=0.5", "--eta", "1", "--clip", "0.01:10:40", "--T", "200",
            "--points", "3", "--seeds", "1", "--chunk-size", "1", "--engine", "step", "--out", out]
    proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        partial = Path(f"{out}.partial")
        while time.monotonic() < deadline and proc.poll() is None:
            if partial.is_dir() and any(partial.glob("chunk_*.npz")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, err
    assert re.search(r"clipdyn: interrupted: \d+ of 40 chunk\(s\) are kept in .*sw\.npz\.partial", err), err


SIM = ["--spectrum", "power-law:d=300,alpha=0.3", "--noise", "gaussian:sigma=0.5", "--eta", "1",
       "--clip", "0.5", "--T", "1", "--points", "3", "--seeds", "3"]


def test_simulate_json(capsys):
    code, out, err = run(capsys, "simulate", *SIM, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert set(res) >= {"t", "risk_mean", "risk_stderr", "risk", "diverged"}
    risk = np.array(res["risk"])
    assert risk.shape == (3, 3) and res["diverged"] == [None] * 3
    np.testing.assert_allclose(res["risk_mean"], risk.mean(0), rtol=1e-6)
    np.testing.assert_allclose(res["risk_stderr"][1:], risk.std(0, ddof=1)[1:] / np.sqrt(3), rtol=1e-5)


def test_simulate_reports_divergence(capsys):
    argv = [a if a != "1" or i != SIM.index("--eta") + 1 else "3" for i, a in enumerate(SIM)]
    argv[argv.index("--clip") + 1] = "inf"
    argv[argv.index("--T") + 1] = "40"
    code, out, _ = run(capsys, "simulate", *argv, "--json")
    res = json.loads(out)
    assert code == 0 and all(t is not None and 0 < t <= 40 for t in res["diverged"])
    assert res["risk_mean"][-1] is None and "NaN" not in out


def test_validate_json(capsys):
    code, out, err = run(capsys, "validate", *SIM, "--json")
    assert code == 0, err
    res = json.loads(out)
    gaps = np.array(res["rel_gap"], float)
    want = np.abs(np.array(res["sim_mean"]) - np.array(res["ode"])) / np.array(res["ode"])
    np.testing.assert_allclose(gaps, want, rtol=1e-9)
    assert res["max_rel_gap"] == pytest.approx(gaps.max())


def test_validate_public_check_problem(capsys):
    # The acceptance check: THEORY.md's problem, 8 seeds, max_rel_gap under 1 %.
    code, out, err = run(capsys, "validate", "--spectrum", "power-law:d=1000,alpha=0.3", "--noise",
                         "gaussian:sigma=0.5", "--eta", "1", "--clip", "0.5", "--T", "4",
                         "--seeds", "8", "--json")
    assert code == 0, err
    assert json.loads(out)["max_rel_gap"] < 0.01


def test_sweep_writes_results(tmp_path, capsys):
    out_path = tmp_path / "sw.npz"
    argv = [a for a in SIM]
    argv[argv.index("--clip") + 1] = "0.1:1:3"
    argv[argv.index("--eta") + 1] = "0.5,1"
    code, out, err = run(capsys, "sweep", *argv, "--out", str(out_path), "--json")
    assert code == 0, err
    summary = json.loads(out)["configs"]
    assert [(c["eta"], c["clip"]) for c in summary] == [(0.5, 0.1), (1.0, 0.1), (0.5, 0.55),
                                                         (1.0, 0.55), (0.5, 1.0), (1.0, 1.0)]
    from clipdyn.runs.results import load_results

    arrays, meta = load_results(out_path)
    assert arrays["risk"].shape == (3, 6, 3)
    assert meta["config"]["options"]["noise"] == "gaussian:sigma=0.5" and meta["provenance"]["git_commit"]
    code, _, err = run(capsys, "sweep", *SIM[:-2], "--seeds", "0", "--out", str(out_path))
    assert code == 2 and "--seeds=0" in err
