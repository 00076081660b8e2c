"""The command line's clipping-rule options and the input checks wired into it (float64 via the
CLI's own x64 context): one line, exit status 2, the bad value named."""

import json

import pytest

from clipdyn.cli import main

PROBLEM = ["--spectrum", "power-law:d=64,alpha=0.5", "--noise", "gaussian:sigma=0.5", "--eta", "1",
           "--clip", "0.5", "--T", "1", "--points", "3"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, match", [
    (["--batch", "6", "--clip-rule", "micro:size=4"], "does not divide --batch 6"),
    (["--batch", "4", "--clip-rule", "batch", "--preclip-noise", "0.5"], "--preclip-noise is not allowed with --clip-rule batch"),
    (["--dp-noise", "-1"], "--dp-noise=-1 is not allowed"),
    (["--batch", "0"], "--batch=0"),
    (["--clip-rule", "index:beta=0"], "beta=0 must be > 0"),
    (["--clip-rule", "fancy"], "clip rule 'fancy' is not allowed"),
    (["--clip-rule", "micro:size=2,size=2"], "size"),
])
def test_rule_options_refused(capsys, argv, match):
    code, out, err = run(capsys, "ode", *PROBLEM, *argv)
    assert code == 2 and out == ""
    assert err.startswith("clipdyn: error:") and err.count("\n") == 1 and match in err


@pytest.mark.parametrize("batch", ["0", "1.5", "2,0"])
def test_sweep_batch_list_refused_as_typed(capsys, tmp_path, batch):
    # sweep takes a LIST of batch sizes; the message quotes what was typed ("0", not "[0.0]").
    code, out, err = run(capsys, "sweep", *PROBLEM, "--batch", batch, "--out", str(tmp_path / "s.npz"))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"--batch={batch} is not allowed; values must be integers >= 1" in err


@pytest.mark.parametrize("argv, match", [
    (["factors", "--noise", "gaussian", "--R", "0.5", "--c", "-inf"], "--c=[-inf] is not allowed"),
    (["factors", "--noise", "gaussian", "--R", "1", "--c", "1e200"], "--c=[1e+200] is not allowed"),
    (["factors", "--noise", "gaussian", "--R", "-1e-3", "--c", "1"], "--R="),
    (["factors", "--noise", "gaussian", "--R", "1", "--c", "0:inf:3"], "--c"),
    (["factors", "--noise", "gaussian:sigma=1,sigma=2", "--R", "1", "--c", "1"], "sigma"),
    (["ode", *PROBLEM, "--rtol", "0"], "--rtol"),
    (["ode", *PROBLEM, "--rtol", "nan"], "--rtol"),
    (["ode", *PROBLEM, "--rtol", "1"], "--rtol"),
])
def test_values_refused_with_one_line(capsys, argv, match):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("clipdyn: error:") and err.count("\n") == 1 and match in err
    assert "Warning" not in err


def test_factors_with_a_rule(capsys):
    # Per-sample clipping with B = 4 keeps mu and the unitless nu and CCC of B = 1 and divides
    # nu_abs by B (THEORY.md section 6); DP noise adds iso_1 = S^2 c^2 / B^2.
    base = ["factors", "--noise", "student-t:df=3,scale=1", "--R", "0.3", "--c", "0.8", "--json"]
    _, one, _ = run(capsys, *base)
    code, four, _ = run(capsys, *base, "--batch", "4", "--dp-noise", "0.5")
    assert code == 0
    one, four = json.loads(one)[0], json.loads(four)[0]
    assert four["mu"] == pytest.approx(one["mu"], rel=1e-12)
    assert four["nu_abs"] == pytest.approx(one["nu_abs"] / 4, rel=1e-12)
    assert four["ccc"] == pytest.approx(one["ccc"], rel=1e-12)
    assert four["iso_1"] == pytest.approx(0.25 * 0.64 / 16, rel=1e-12)
    assert "iso_1" not in one


def test_sweep_table_shows_the_noise_it_varies(capsys, tmp_path):
    # Rows of --dp-noise 0,0.5 printed identical eta/clip/rule/batch columns: the DP noise column
    # is shown where the sweep sets it, and left out where it does not.
    code, out, err = run(capsys, "sweep", *PROBLEM, "--dp-noise", "0,0.5", "--seeds", "1",
                         "--out", str(tmp_path / "s.npz"))
    assert code == 0, err
    header, first, second = out.splitlines()[:3]
    assert "dp_noise" in header.split() and "preclip_noise" not in header.split()
    col = header.split().index("dp_noise")
    assert (first.split()[col], second.split()[col]) == ("0", "0.5")
    code, out, err = run(capsys, "sweep", *PROBLEM, "--seeds", "1", "--out", str(tmp_path / "t.npz"))
    assert code == 0 and "dp_noise" not in out.splitlines()[0]
