"""SPEC strings and LIST parsing: duplicate and unknown keys, the sweep's threshold LIST, LIST
ranges, integer options, and values read from .npy files (issue 12, items 9, 12, 13, 14).

Every refusal is a ``ValueError`` whose message names the bad text and what is allowed; the tests
check the named part. Values are compared exactly where they are parsed text (float64).
"""

import argparse
import math
import warnings

import numpy as np
import pytest

import clipdyn as cd
from clipdyn.cli import specs
from clipdyn.cli.specs import ClipSpec, parse_clip, parse_list, parse_noise, parse_spectrum


def parse_clip_list(text):
    return specs.parse_clip_list(text)  # looked up at call time: new in this change


# --- item 13: a key given twice, unknown keys in a sweep's heuristic --------------------------

@pytest.mark.parametrize("parse, text, key", [
    (parse_noise, "gaussian:sigma=1,sigma=2", "sigma"),
    (parse_noise, "student-t:df=3,scale=1,df=4", "df"),
    (parse_spectrum, "identity:d=10,d=20", "d"),
    (parse_spectrum, "power-law:d=10,alpha=1,alpha=2", "alpha"),
    (parse_clip, "heuristic:kappa=1,kappa=2", "kappa"),
    (parse_clip_list, "heuristic:kappa=1/2,kappa=3", "kappa"),
])
def test_a_key_given_twice_is_refused_with_its_name(parse, text, key):
    with pytest.raises(ValueError, match=f"key '{key}' is given twice"):
        parse(text)


def test_sweep_clip_list_checks_heuristic_keys_like_parse_clip():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['foo'\]"):
        parse_clip_list("heuristic:kappa=1,foo=3")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['foo'\]"):
        parse_clip("heuristic:kappa=1,foo=3")
    with pytest.raises(ValueError, match="missing kappa"):
        parse_clip_list("heuristic:sigma2=1")
    with pytest.raises(ValueError, match="kappa="):
        parse_clip_list("heuristic:kappa=1/-2")
    with pytest.raises(ValueError, match="sigma2="):
        parse_clip_list("heuristic:kappa=1,sigma2=-1")


def test_sweep_clip_list_forms():
    assert parse_clip_list("max-ccc") == [ClipSpec("max-ccc")]
    assert parse_clip_list("0.1,1,inf") == [ClipSpec("constant", value=v) for v in (0.1, 1.0, math.inf)]
    assert [c.value for c in parse_clip_list("0.5:1.5:3")] == [0.5, 1.0, 1.5]
    got = parse_clip_list("heuristic:kappa=0.5/1/2,sigma2=0.25")
    assert got == [ClipSpec("heuristic", kappa=k, sigma2=0.25) for k in (0.5, 1.0, 2.0)]
    assert [c.kappa for c in parse_clip_list("heuristic:kappa=1:2:3")] == [1.0, 1.5, 2.0]
    for bad, text in [("-1,1", "--clip="), ("nan", "--clip="), ("abc", "'abc' is not a number"),
                      ("1e200", "--clip=")]:
        with pytest.raises(ValueError, match=text):
            parse_clip_list(bad)


# --- item 14 (LIST part): ranges with an infinite end, absurd NUM ------------------------------

def test_list_range_with_an_infinite_end_is_refused_without_a_warning():
    # Today np.linspace(0, inf, 3) warns (inf - inf) and yields [nan, inf, inf].
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for text in ("0:inf:3", "-inf:1:3", "0:nan:2"):
            with pytest.raises(ValueError, match="START and STOP must be finite"):
                parse_list(text, "--c")
    np.testing.assert_array_equal(parse_list("0,1,inf", "--c"), [0.0, 1.0, math.inf])


@pytest.mark.parametrize("text", ["1,,2", "1,", ",1", "1, ,2", ",", ""])
def test_list_with_an_empty_value_is_refused(text):
    # A missing value is a typo, not a shorter list: '1,,2' used to run as [1, 2].
    with pytest.raises(ValueError, match="empty"):
        parse_list(text, "--R")
    np.testing.assert_array_equal(parse_list(" 1, 2 ", "--R"), [1.0, 2.0])


def test_list_num_is_bounded_before_any_allocation():
    # 0.1:1:1e12 used to end in MemoryError; it is refused from the text alone.
    for num in ("1e12", "0", "2.5", "nan"):
        with pytest.raises(ValueError, match="NUM="):
            parse_list(f"0.1:1:{num}", "--R")
    assert parse_list(f"0:1:{specs.MAX_LIST}", "--R").size == specs.MAX_LIST


def test_parse_int_refuses_empty_fractional_and_bool_like_text():
    assert specs.parse_int("1e3", "--chunk-size", 1) == 1000
    assert specs.parse_int("8.0", "--seeds", 1) == 8
    with pytest.raises(ValueError, match="--chunk-size: '' is not a number"):
        specs.parse_int("", "--chunk-size", 1)
    with pytest.raises(ValueError,
                       match="--chunk-size=1.5 is not allowed; --chunk-size must be an integer >= 1"):
        specs.parse_int("1.5", "--chunk-size", 1)
    with pytest.raises(ValueError, match="--seed-offset=1e"):
        specs.parse_int("1e30", "--seed-offset", 0, high=2**32 - 1)


def test_negative_values_reach_the_value_checks_with_the_documented_parser_setting():
    # argparse alone reads "-inf" and "-1e-3" as options; with NEGATIVE_VALUE they are values,
    # and the value checks then say what is wrong with them.
    def parser(fixed):
        p = argparse.ArgumentParser(exit_on_error=False)
        if fixed:
            p._negative_number_matcher = specs.NEGATIVE_VALUE
        p.add_argument("--c")
        return p

    for word in ("-inf", "-1e-3", "-1,2", "-0.5:1:3"):
        with pytest.raises((argparse.ArgumentError, SystemExit)):
            parser(False).parse_args(["--c", word])
        assert parser(True).parse_args(["--c", word]).c == word
        with pytest.raises(ValueError, match="--clip"):
            parse_clip_list(word)
    assert parser(True).parse_args(["--c=-inf"]).c == "-inf"
    assert not specs.NEGATIVE_VALUE.match("--c") and not specs.NEGATIVE_VALUE.match("-h")


# --- items 9 and 12: noise values that overflow, mixture weights, 2-D data --------------------

@pytest.mark.parametrize("text, named", [
    ("mixture:weights=1e308/1e308,means=0/0,sigmas=1/1", "weights"),
    ("mixture:weights=0.5/0.6,means=0/0,sigmas=1/1", "sum to 1"),
    ("mixture:weights=0.5/0.5,means=1e300/-1e300,sigmas=1/1", "means"),
    ("mixture:weights=0.5/0.5,means=0/0,sigmas=1e200/1", "sigmas"),
    ("gaussian:sigma=1e308", "sigma=1e+308"),
    ("student-t:df=3,scale=1e150", "scale=1e+150"),
    ("student-t:df=1e-6", "df=1e-06"),
    ("rademacher:sigma=inf", "sigma=inf"),
])
def test_noise_values_that_overflow_or_do_not_sum_to_one_are_refused(text, named):
    with pytest.raises(ValueError, match=named.replace("+", r"\+")):
        parse_noise(text)


def test_mixture_weights_within_tolerance_are_accepted_and_exactly_normalised():
    law = parse_noise("mixture:weights=0.3333333333/0.3333333333/0.3333333334,means=0/1/2,sigmas=1/1/1")
    assert float(np.sum(law.weights)) == pytest.approx(1.0, abs=1e-15)


def _npy(tmp_path, name, arr):
    path = tmp_path / name
    np.save(path, arr, allow_pickle=True)
    return str(path)


@pytest.mark.parametrize("arr, dtype", [
    (np.array([1.0 + 2.0j, 3.0]), "complex128"),
    (np.array(["a", "b"]), "<U1"),
    (np.array([True, False]), "bool"),
])
def test_npy_files_of_non_real_dtype_are_refused_naming_file_and_dtype(tmp_path, arr, dtype):
    path = _npy(tmp_path, "bad.npy", arr)
    for parse in (lambda: parse_spectrum(f"file:{path}"), lambda: parse_noise(f"empirical:file={path}")):
        with pytest.raises(ValueError) as err:
            parse()
        assert path in str(err.value) and dtype in str(err.value)


def test_object_2d_and_npz_files_are_refused_naming_the_file(tmp_path):
    obj = _npy(tmp_path, "obj.npy", np.array([1.0, None], dtype=object))
    two_d = _npy(tmp_path, "two_d.npy", np.ones((2, 3)))
    npz = tmp_path / "arch.npz"
    np.savez(npz, a=np.ones(3))
    for path, text in [(obj, "not a readable .npy array"), (two_d, r"shape \(2, 3\); it must be 1-D"),
                       (str(npz), ".npz archive")]:
        for parse in (lambda: parse_spectrum(f"file:{path}"), lambda: parse_noise(f"empirical:file={path}")):
            with pytest.raises(ValueError, match=text) as err:
                parse()
            assert path in str(err.value)


def test_integer_files_are_read_as_float64(tmp_path):
    path = _npy(tmp_path, "ints.npy", np.array([3, -1, 2], dtype=np.int32))
    law = parse_noise(f"empirical:file={path}")
    np.testing.assert_array_equal(law.atoms, [3.0, -1.0, 2.0])
    assert law.atoms.dtype == np.float64
    lam = _npy(tmp_path, "lam.npy", np.array([2, 1]))
    np.testing.assert_array_equal(parse_spectrum(f"file:{lam}"), [2.0, 1.0])


@pytest.mark.parametrize("arr, text", [
    (np.array([1e-320]), "largest eigenvalue is 1e-320"),
    (np.array([1e308, 1.0]), "entry 0 is 1e+308"),
    (np.array([1.0, np.nan]), "entry 1"),
])
def test_spectra_outside_float64s_safe_range_are_refused(tmp_path, arr, text):
    path = _npy(tmp_path, "lam.npy", arr)
    with pytest.raises(ValueError, match=text.replace("+", r"\+")) as err:
        parse_spectrum(f"file:{path}")
    assert path in str(err.value)


def test_empirical_atoms_that_overflow_are_refused_with_the_entry(tmp_path):
    path = _npy(tmp_path, "eps.npy", np.array([0.5, 1e300, -2.0]))
    with pytest.raises(ValueError, match=r"atoms\[1\]=1e\+300") as err:
        parse_noise(f"empirical:file={path}")
    assert path in str(err.value)
    with pytest.raises(ValueError, match="1-D"):
        cd.Empirical(np.ones((2, 2)))
