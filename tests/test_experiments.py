"""Every experiment script runs end to end at a tiny size, and its plot script draws from the
saved results alone."""

import subprocess
import sys
from pathlib import Path

import pytest

from clipdyn.runs.results import load_results

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ["criteria", "risk_curves", "concentration", "stability", "when_clipping_helps",
           "schedules", "heuristic", "clip_rules", "dp", "real_data", "clipping_bias",
           "l0l1_acceleration", "smoothness", "network_clipping"]
# The clipping-rule studies compile one ODE and one simulation program per rule: minutes even at
# the tiny size, so they run with the slow suite.
SLOW = {"clip_rules", "dp", "heuristic", "schedules", "network_clipping", "smoothness", "criteria",
        "real_data", "risk_curves", "clipping_bias", "concentration", "stability",
        "when_clipping_helps", "l0l1_acceleration"}
# Studies that simulate record which engine ran (``run_sweep`` picks one per sweep); those on
# scikit-learn's digits record the data's fingerprint.
SIMULATING = {"risk_curves", "concentration", "stability", "when_clipping_helps", "schedules",
              "heuristic", "clip_rules", "dp"}
DIGITS = {"smoothness", "network_clipping"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else [])
                                  for n in STUDIES])
def test_study_runs_at_tiny_size(tmp_path, name):
    data = tmp_path / f"{name}.npz"
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{name}.py"), "--out", str(data),
                          "--size", "tiny"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    arrays, meta = load_results(data)
    assert arrays and meta["config"]["study"] == name
    assert meta["provenance"]["jax_version"]
    if name in SIMULATING:
        engines = meta["config"]["engines"]
        assert engines and set(engines) <= {"step", "block"} and all(n > 0 for n in engines.values())
    if name in DIGITS:
        assert len(meta["config"]["data_fingerprint"]) == 64
    png = tmp_path / f"{name}.png"
    plot = subprocess.run([sys.executable, str(ROOT / "experiments" / f"plot_{name.replace('-', '_')}.py"),
                           str(data), str(png)], capture_output=True, text=True, timeout=300)
    assert plot.returncode == 0, plot.stderr[-2000:]
    assert png.stat().st_size > 10_000


def test_a_plot_script_refuses_another_studys_results(tmp_path):
    # plot_dp.py given the clip-rules study's file ended in a KeyError traceback (trial-limits);
    # with matching array names it could have drawn the wrong figure. The committed results
    # record their study, and each plot script checks it is its own.
    png = tmp_path / "x.png"
    plot = subprocess.run([sys.executable, str(ROOT / "experiments" / "plot_dp.py"),
                           str(ROOT / "figures" / "data" / "clip_rules.npz"), str(png)],
                          capture_output=True, text=True, timeout=300)
    assert plot.returncode == 1 and not png.exists()
    assert plot.stderr.strip().endswith("holds the results of study 'clip_rules', not 'dp'"), plot.stderr
    assert "Traceback" not in plot.stderr
