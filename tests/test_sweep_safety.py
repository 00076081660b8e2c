"""Sweep safety (issue 12, items 1-8): results files, resuming, impossible sizes, progress.

Every sweep here runs in float32 (the default precision) on one small problem (``d = 100``,
``T = 1``, 3 output times, 2 seeds, 5 configurations in chunks of 2), so all of them share one
compiled program. Comparisons of results are exact (``assert_array_equal``): a run's numbers
depend only on its seed and configuration (tests/test_simulate.py), so a resumed, recomputed or
progress-reporting sweep must give the very same bits as a plain one. No tolerance is involved.
"""

import hashlib
import json
import math
import os
import shutil

import numpy as np
import pytest

import clipdyn as cd
from clipdyn.runs import results
from clipdyn.runs import sweep as sw
from clipdyn.theory import rules as clip_rules
from clipdyn.theory.problem import make_problem, power_law_spectrum
from clipdyn.theory.schedules import Constant

LAM = power_law_spectrum(100, 0.5)
CLIPS = (0.1, 0.3, 1.0, 3.0, math.inf)


def _problem(lam=LAM, noise=None):
    return make_problem(lam, cd.Gaussian(0.5) if noise is None else noise)


def _scheds(eta=1.0):
    return sw.stack_schedules([Constant(eta, c) for c in CLIPS])


def _sweep(problem=None, scheds=None, **kw):
    kw.setdefault("chunk_size", 2)
    kw.setdefault("progress", False)
    return sw.run_sweep(_problem() if problem is None else problem,
                        _scheds() if scheds is None else scheds, [0, 1], 1.0, 3, **kw)


class _Stop(Exception):
    pass


@pytest.fixture
def runner_calls(monkeypatch):
    """Counts the compiled program's calls (one per seed and chunk), can fail at call n with
    ``calls["raise"]`` (an exception class) and run ``calls["hook"]`` before call ``hook_at``."""
    real = sw._sharded_runner
    calls = {"n": 0, "fail_at": None, "raise": _Stop, "widths": [], "hook": None, "hook_at": None}

    def counting(*args, **kwargs):
        fn = real(*args, **kwargs)

        def wrapped(scheds, *rest):
            calls["n"] += 1
            calls["widths"].append(int(np.shape(scheds.eta)[0]))
            if calls["hook_at"] == calls["n"]:
                calls["hook"]()
            if calls["fail_at"] == calls["n"]:
                raise calls["raise"]
            return fn(scheds, *rest)

        return wrapped

    monkeypatch.setattr(sw, "_sharded_runner", counting)
    return calls


def _interrupted(out, runner_calls, fail_at, **kw):
    """A sweep to ``out`` stopped at runner call ``fail_at`` (2 calls per chunk: 2 seeds)."""
    runner_calls.update(n=0, fail_at=fail_at)
    with pytest.raises(_Stop):
        _sweep(out=out, **kw)
    runner_calls.update(n=0, fail_at=None)


# Item 1: the resume fingerprint covers contents, not names.

def test_changed_spectrum_contents_refuse_to_mix_chunks(tmp_path, runner_calls):
    out = tmp_path / "sw.npz"
    _interrupted(out, runner_calls, fail_at=5)  # chunks 0 and 1 kept
    # Same d, Tr K and R0 (the old fingerprint's view of the problem), different spectrum.
    flipped = _problem(LAM[::-1].copy())
    with pytest.raises(ValueError, match=r"different sweep.*spectrum.*--overwrite"):
        _sweep(flipped, out=out)
    assert not out.exists()
    res = _sweep(flipped, out=out, overwrite=True)
    np.testing.assert_array_equal(res.risk, _sweep(flipped).risk)
    _, meta = results.load_results(out)
    # The recorded hash is the sha256 of the float64 eigenvalues, computed here independently.
    want = hashlib.sha256(np.ascontiguousarray(LAM[::-1], np.float64).tobytes()).hexdigest()
    assert meta["config"]["fingerprints"]["spectrum"] == want
    assert meta["config"]["fingerprints"]["sweep"]


def test_changed_noise_atoms_refuse_to_mix_chunks(tmp_path, runner_calls):
    out = tmp_path / "sw.npz"
    atoms = np.linspace(-1.0, 1.0, 11)
    _interrupted(out, runner_calls, fail_at=3, problem=_problem(noise=cd.Empirical(atoms)))
    other = atoms.copy()
    other[3] += 0.25
    with pytest.raises(ValueError, match="noise law"):
        _sweep(_problem(noise=cd.Empirical(other)), out=out)


class _Data:
    """The duck-typed dataset run_sweep accepts (``features``, ``residuals``, ``e0``; see
    clipdyn.validation.data_problem): rows whose second moments are ``LAM`` and ``e0`` with
    ``e0^2 / 2 = v0``, so that it is the problem's dataset (the engines check both)."""

    def __init__(self, fingerprint, n=40, d=100, seed=0):
        rng = np.random.default_rng(seed)
        rows = rng.normal(size=(n, d))
        self.features = rows * np.sqrt(LAM / np.mean(rows * rows, axis=0))
        self.residuals = rng.normal(size=n) * 0.5
        self.e0 = -np.full(d, 0.1)
        self.fingerprint = fingerprint

    def describe(self):
        return "test data"


def test_changed_dataset_fingerprint_refuses_to_mix_chunks(tmp_path, runner_calls):
    out = tmp_path / "sw.npz"
    data = _Data("data-A")
    prob = make_problem(LAM, cd.Empirical(data.residuals), v0=0.5 * data.e0 ** 2)
    _interrupted(out, runner_calls, fail_at=3, problem=prob, data=data)
    with pytest.raises(ValueError, match="data"):
        _sweep(prob, out=out, data=_Data("data-B"))


def test_same_data_whose_derived_problem_differs_is_refused_and_explained(tmp_path, runner_calls):
    # The same data fingerprint with a problem that differs in its last bits (another CPU's BLAS):
    # refused, never mixed, and the refusal says the data are the same (it blamed the data).
    out = tmp_path / "sw.npz"
    data = _Data("data-A")
    prob = make_problem(LAM, cd.Empirical(data.residuals), v0=0.5 * data.e0 ** 2)
    _interrupted(out, runner_calls, fail_at=3, problem=prob, data=data)
    nudged = make_problem(LAM, cd.Empirical(np.nextafter(data.residuals, np.inf)), v0=0.5 * data.e0 ** 2)
    with pytest.raises(ValueError, match=r"differs in: noise law \(the data fingerprint is the same: "
                                         r"the problem derived from the same data differs in its "
                                         r"last bits") as info:
        _sweep(nudged, out=out, data=data)
    assert str(info.value).count("noise law") == 1
    with pytest.raises(ValueError, match="data") as info:  # other data: no such remark
        _sweep(prob, out=out, data=_Data("data-B"))
    assert "fingerprint is the same" not in str(info.value)
    # the rule itself, as the multi-process agreement check uses it (Gaussian data: no data)
    note = results.derived_only_note
    assert note({"spectrum", "sweep"}, "abc", "abc").startswith(" (the data fingerprint is the same")
    assert note({"spectrum"}, None, None) == note({"spectrum", "T"}, "abc", "abc") == ""
    assert note({"noise law"}, "abc", "abd") == ""


# Item 2: results paths, and finished results are never replaced by another sweep silently.

def test_results_paths_keep_other_suffixes(tmp_path):
    assert results.results_paths(tmp_path / "run.a") == (tmp_path / "run.a.npz", tmp_path / "run.a.json")
    assert results.results_paths(tmp_path / "run.npz") == (tmp_path / "run.npz", tmp_path / "run.json")
    for name in ("run.a", "run.b"):
        saved = results.save_results(tmp_path / name, {"x": np.arange(3) + len(name)}, {"name": name})
        assert saved == tmp_path / f"{name}.npz"
    for name in ("run.a", "run.b"):
        arrays, meta = results.load_results(tmp_path / name)
        assert meta["config"]["name"] == name
        assert (tmp_path / f"{name}.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.a.json", "run.a.npz", "run.b.json",
                                                         "run.b.npz"]
    # The sidecar's path names its pair ("r.json" was read as "r.json.npz"); a file name that is
    # only the suffix is refused (its sidecar was ".npz.json"); a folder is named as one.
    assert results.load_results(tmp_path / "run.a.json")[1]["config"]["name"] == "run.a"
    with pytest.raises(ValueError, match="must name a file before .npz"):
        results.results_paths(tmp_path / ".npz")
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        results.load_results(tmp_path / "dir.npz")
    side = tmp_path / "run.b.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "arrays": None}))
    with pytest.raises(ValueError, match="not a clipdyn results sidecar"):  # was a TypeError
        results.load_results(tmp_path / "run.b")


def test_finished_results_of_another_sweep_need_overwrite(tmp_path, runner_calls):
    out = tmp_path / "sw.npz"
    first = _sweep(out=out)
    before = out.read_bytes(), out.with_suffix(".json").read_bytes()
    # The refusal names what differs: here only the schedules' content.
    with pytest.raises(ValueError, match=r"different sweep \(it differs in: schedules\).*--overwrite"):
        _sweep(scheds=_scheds(eta=0.5), out=out)
    with pytest.raises(ValueError, match=r"it differs in: T \(1.0 there, 2.0 here\), samples .*--overwrite"):
        sw.run_sweep(_problem(), _scheds(), [0, 1], 2.0, 3, chunk_size=2, progress=False, out=out)
    # A noise law is named once, with its values (its content fingerprint differs too; the
    # message said "noise law (...), noise law").
    with pytest.raises(ValueError, match=r'it differs in: noise law \("Gaussian\(sigma=0.5\)" there, '
                                         r'"Gaussian\(sigma=0.7\)" here\)\).*--overwrite') as info:
        _sweep(problem=_problem(noise=cd.Gaussian(0.7)), out=out)
    assert str(info.value).count("noise law") == 1
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == before
    # The same sweep again is recomputed (and gives the same numbers).
    runner_calls["n"] = 0
    again = _sweep(out=out)
    assert runner_calls["n"] == 6
    np.testing.assert_array_equal(again.risk, first.risk)
    # With overwrite the other sweep replaces it.
    other = _sweep(scheds=_scheds(eta=0.5), out=out, overwrite=True)
    np.testing.assert_array_equal(results.load_results(out)[0]["risk"], other.risk)
    # A results path that is a folder is refused.
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ValueError, match="folder"):
        _sweep(out=tmp_path / "dir")


# Item 3: unusable chunk files are named and recomputed.

def test_truncated_and_foreign_chunks_are_recomputed(tmp_path, runner_calls):
    out = tmp_path / "sw.npz"
    _interrupted(out, runner_calls, fail_at=5)
    part = tmp_path / "sw.npz.partial"
    c0, c1 = part / "chunk_000000.npz", part / "chunk_000001.npz"
    c0.write_bytes(c0.read_bytes()[:40])  # truncated
    results.atomic_savez(c1, risk=np.zeros((3, 7, 3)), diverged=np.zeros((2, 2), bool),
                         diverged_step=np.zeros((2, 2), np.int32))  # another sweep's shapes
    with pytest.warns(results.ChunkWarning) as caught:
        res = _sweep(out=out)
    named = " ".join(str(w.message) for w in caught)
    assert "chunk_000000.npz" in named and "chunk_000001.npz" in named
    assert runner_calls["n"] == 6  # all three chunks computed
    np.testing.assert_array_equal(res.risk, _sweep().risk)


def test_finishing_removes_only_what_the_sweep_wrote(tmp_path):
    """The chunk folder was deleted whole (shutil.rmtree) when the sweep finished, with any file
    a user had put there."""
    part = tmp_path / "sw.npz.partial"
    part.mkdir()
    (part / "notes.txt").write_text("mine")
    (part / "draft.tmp").write_text("mine too")
    res = _sweep(out=tmp_path / "sw.npz")
    assert sorted(p.name for p in part.iterdir()) == ["draft.tmp", "notes.txt"]
    np.testing.assert_array_equal(res.risk, _sweep().risk)
    _sweep(out=tmp_path / "other.npz")
    assert not (tmp_path / "other.npz.partial").exists()  # its own folder goes


def test_swapped_chunk_files_are_recomputed(tmp_path, runner_calls):
    """A chunk file names its index: two chunks of equal shapes swapped by hand were read into
    each other's configurations (0.34 off, no warning)."""
    out = tmp_path / "sw.npz"
    _interrupted(out, runner_calls, fail_at=5)  # chunks 0 and 1 finished
    part = tmp_path / "sw.npz.partial"
    c0, c1 = part / "chunk_000000.npz", part / "chunk_000001.npz"
    tmp = part / "swap"
    c0.rename(tmp), c1.rename(c0), tmp.rename(c1)
    with pytest.warns(results.ChunkWarning, match="another chunk"):
        res = _sweep(out=out)
    assert runner_calls["n"] == 6
    np.testing.assert_array_equal(res.risk, _sweep().risk)


def test_chunks_of_another_clipdyn_version_are_not_resumed(tmp_path, runner_calls, monkeypatch):
    """The stamp names the code (clipdyn's version and commit, JAX's, the backend): the results'
    sidecar names one version, so chunks computed by another are not mixed in."""
    out = tmp_path / "sw.npz"
    _interrupted(out, runner_calls, fail_at=3)
    real = results.code_version()
    monkeypatch.setattr(sw, "code_version", lambda: {**real, "git_commit": "0" * 40,
                                                     "jax_version": "0.0.1"})
    with pytest.raises(ValueError, match="holds 1 finished chunk.*differs in: git commit, jax version"):
        _sweep(out=out)
    res = _sweep(out=out, overwrite=True)
    assert runner_calls["n"] == 6  # recomputed
    np.testing.assert_array_equal(res.risk, _sweep().risk)


def test_a_save_stopped_between_its_two_files_resumes(tmp_path, runner_calls, monkeypatch):
    """The sidecar is written first: stopped before the arrays, the same sweep rerun is still
    recognised as itself (an .npz left without its sidecar was refused as another sweep's)."""
    out = tmp_path / "sw.npz"
    real = results.atomic_write_bytes

    def stop_at_npz(path, data):
        if str(path) == str(out):
            raise _Stop
        real(path, data)

    monkeypatch.setattr(results, "atomic_write_bytes", stop_at_npz)
    with pytest.raises(_Stop):
        _sweep(out=out)
    monkeypatch.setattr(results, "atomic_write_bytes", real)
    assert out.with_suffix(".json").exists() and not out.exists()
    runner_calls.update(n=0)
    res = _sweep(out=out)
    assert runner_calls["n"] == 0  # every chunk was kept
    arrays, _ = results.load_results(out)
    np.testing.assert_array_equal(arrays["risk"], _sweep().risk)
    np.testing.assert_array_equal(res.risk, arrays["risk"])


def test_chunk_validation_checks_arrays(tmp_path):
    store = results.ChunkStore(tmp_path, {"sweep": "this", "layout": {"chunk_size": 2}})
    assert store.open() == 0
    expect = {"risk": ((2, 2, 3), "float32"), "diverged": ((2, 2), "b")}
    store.save(0, {"risk": np.ones((2, 2, 3), np.float32), "diverged": np.zeros((2, 2), bool)})
    assert store.load(0, expect)["risk"].shape == (2, 2, 3)
    store.save(1, {"risk": np.ones((2, 2, 3), np.float64), "diverged": np.zeros((2, 2), bool)})
    store.save(2, {"risk": np.ones((2, 2, 3), np.float32)})
    (tmp_path / "chunk_000003.npz").write_bytes(b"")
    other = results.ChunkStore(tmp_path, {"sweep": "other", "layout": {"chunk_size": 2}}).identity(5)
    results.atomic_savez(tmp_path / "chunk_000005.npz", risk=np.ones((2, 2, 3), np.float32),
                         diverged=np.zeros((2, 2), bool), sweep_identity=np.array(other))
    results.atomic_savez(tmp_path / "chunk_000006.npz", risk=np.ones((2, 2, 3), np.float32),
                         diverged=np.zeros((2, 2), bool))  # right arrays, no identity
    for j, why in [(1, "float64"), (2, "lacks"), (3, "cannot be read"), (5, "another sweep"),
                   (6, "records no sweep fingerprint")]:
        with pytest.warns(results.ChunkWarning, match=why):
            assert store.load(j, expect) is None
    assert store.load(4, expect) is None  # absent: nothing to say


def test_a_folder_emptied_by_a_finished_run_of_the_same_sweep_is_not_a_takeover(tmp_path, runner_calls):
    # The same command run twice on one --out: the first finished and removed the chunk folder
    # while the second computed, which then stopped with "taken over by another sweep" (a
    # hand-run trial, 2026-11-23). An emptied folder is this sweep's to go on with.
    out = tmp_path / "sw.npz"
    want = _sweep()

    def other_run_finishes():
        shutil.rmtree(tmp_path / "sw.npz.partial")

    runner_calls.update(hook=other_run_finishes, hook_at=1)
    res = _sweep(out=out)
    np.testing.assert_array_equal(res.risk, want.risk)
    np.testing.assert_array_equal(results.load_results(out)[0]["risk"], want.risk)
    assert not (tmp_path / "sw.npz.partial").exists()
    # A different sweep that finished meanwhile also empties the folder: its results are not
    # replaced (the check at the start is made again before saving).
    other = tmp_path / "other.npz"
    _sweep(scheds=_scheds(eta=0.5), out=other)
    out.unlink(), out.with_suffix(".json").unlink()

    def different_sweep_finishes():
        shutil.rmtree(tmp_path / "sw.npz.partial")
        shutil.copy(other, out), shutil.copy(other.with_suffix(".json"), out.with_suffix(".json"))

    runner_calls.update(hook=different_sweep_finishes, hook_at=1, n=0)
    with pytest.raises(ValueError, match=r"already holds the results of a different sweep"):
        _sweep(out=out)
    assert out.read_bytes() == other.read_bytes()


def test_two_sweeps_on_one_out_never_mix_their_chunks(tmp_path, runner_calls):
    """The same --out given to two sweeps at once. The stamp is compared when a sweep opens the
    folder, and a folder with no chunk yet is re-stamped, so sweep B, started while A computes
    its first chunk, took the folder over and A then read B's chunks (same shapes) as its own
    (a hand-run trial: 4 of 8 configurations of a T = 3000 results file were a T = 300 run's).
    Now A stops before writing into a folder another sweep has taken, and a chunk file names its
    sweep, so one that is not A's is never read as A's."""
    out = tmp_path / "sw.npz"
    folder = tmp_path / "sw.npz.partial"
    shapes = {"risk": np.full((2, 2, 3), 7.0, np.float32), "diverged": np.zeros((2, 2), bool),
              "diverged_step": np.full((2, 2), -1, np.int32)}

    def b_takes_over():  # B opens the folder (no chunk there yet) and finishes its chunk 1
        b = results.ChunkStore(folder, {"sweep": "B", "layout": {"chunk_size": 2}})
        assert b.open() == 0
        b.save(1, shapes)

    runner_calls.update(hook=b_takes_over, hook_at=1)
    with pytest.raises(ValueError, match="taken over by another sweep.*same --out"):
        _sweep(out=out)
    assert sorted(p.name for p in folder.glob("chunk_*")) == ["chunk_000001.npz"]  # B's, untouched
    assert not out.exists()
    # A rerun of A is refused (B's chunk is there) until B is done or discarded; with B's
    # chunk moved under A's own stamp, A names it and computes it again.
    runner_calls.update(hook=None, hook_at=None, n=0)
    with pytest.raises(ValueError, match="holds 1 finished chunk"):
        _sweep(out=out)
    shutil.rmtree(folder)
    _interrupted(out, runner_calls, fail_at=3)  # A's own chunk 0 is kept
    b = results.ChunkStore(folder / "b", {"sweep": "B", "layout": {"chunk_size": 2}})
    b.open()
    b.save(1, shapes)
    shutil.move(folder / "b" / "chunk_000001.npz", folder / "chunk_000001.npz")
    runner_calls.update(n=0)
    with pytest.warns(results.ChunkWarning, match="chunk_000001.npz.*another sweep"):
        res = _sweep(out=out)
    assert runner_calls["n"] == 4  # chunks 1 and 2 computed, A's chunk 0 reused
    np.testing.assert_array_equal(res.risk, _sweep().risk)


# Item 4: a stamp without chunks blocks nothing; chunks of another layout are named.

def test_partial_folder_without_chunks_does_not_block(tmp_path, runner_calls):
    out = tmp_path / "sw.npz"
    _interrupted(out, runner_calls, fail_at=1)  # killed in its first chunk
    assert (tmp_path / "sw.npz.partial" / "fingerprint").exists()
    assert not list((tmp_path / "sw.npz.partial").glob("chunk_*"))
    res = _sweep(out=out, chunk_size=5)
    np.testing.assert_array_equal(res.risk, _sweep().risk)


def test_chunks_of_another_chunk_size_are_refused_with_the_reason(tmp_path, runner_calls):
    out = tmp_path / "sw.npz"
    _interrupted(out, runner_calls, fail_at=3)
    with pytest.raises(ValueError, match=r"chunk size \(2 there, 3 here\)"):
        _sweep(out=out, chunk_size=3)
    res = _sweep(out=out, chunk_size=2)  # resumes
    np.testing.assert_array_equal(res.risk, _sweep().risk)


def test_block_engine_chunks_record_their_device_count(tmp_path, runner_calls):
    # The block engine's last bits depend on the per-device batch: its chunks are stamped with
    # the device count, so a sweep resumed on another count (a 2 x 2 multi-process sweep resumed
    # by one process on one device mixed both layouts) is refused, naming it. The step engine's
    # numbers do not depend on it and its chunks resume across layouts.
    out = tmp_path / "sw.npz"
    _interrupted(out, runner_calls, fail_at=3, engine="block")
    stamp = json.loads((tmp_path / "sw.npz.partial" / "fingerprint").read_text())
    assert stamp["layout"] == {"chunk_size": 2, "devices": 1}
    step = tmp_path / "step.npz"
    _interrupted(step, runner_calls, fail_at=3, engine="step")
    assert json.loads((tmp_path / "step.npz.partial" / "fingerprint").read_text())["layout"] == {"chunk_size": 2}
    tampered = dict(stamp, layout={"chunk_size": 2, "devices": 4})
    (tmp_path / "sw.npz.partial" / "fingerprint").write_text(json.dumps(tampered))
    with pytest.raises(ValueError, match=r"devices \(4 there, 1 here\)"):
        _sweep(out=out, engine="block")


# Item 5: Ctrl-C keeps the finished chunks and says so.

def test_keyboard_interrupt_says_what_is_kept(tmp_path, runner_calls):
    out = tmp_path / "sw.npz"
    runner_calls.update(fail_at=4, **{"raise": KeyboardInterrupt})
    with pytest.raises(KeyboardInterrupt) as info:
        _sweep(out=out)
    err = info.value
    assert isinstance(err, sw.SweepInterrupted)
    assert (err.kept, err.total) == (1, 3)
    assert "1 of 3 chunk(s) are kept" in str(err) and "rerun" in str(err)
    assert [p.name for p in (tmp_path / "sw.npz.partial").glob("chunk_*")] == ["chunk_000000.npz"]


# Item 6: files get the mode the umask gives new files.

@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_results_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        results.save_results(tmp_path / "r", {"x": np.arange(2)}, {})
    finally:
        os.umask(old)
    for name in ("r.npz", "r.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask


# Item 7: impossible sizes are refused up front; chunks are capped; progress keeps the numbers.

def test_chunk_size_is_capped_at_the_number_of_configurations(runner_calls):
    res = _sweep(chunk_size=1000)
    assert runner_calls["widths"] == [5, 5]  # one chunk of the 5 configurations, per seed
    assert res.config["chunk_size"] == 5


def test_chunks_are_capped_at_the_largest_group_of_one_rule(runner_calls):
    """A chunk holds one rule group's configurations (programs differ by rule); padding every
    group to the whole sweep's width made 4 rules of 4 thresholds run 4 programs of 16 runs."""
    rule_list = [clip_rules.per_sample(1)] * 3 + [clip_rules.batch_mean(2)] * 2
    res = _sweep(rules=rule_list, chunk_size=None)
    assert runner_calls["widths"] == [3, 3, 3, 3]  # 2 groups x 2 seeds, the second padded to 3
    assert res.config["chunk_size"] == 3 and res.config["engine"] == "step"
    # (the step engine's numbers do not depend on the chunk: test_simulate.py)


def test_sweep_that_cannot_fit_in_memory_is_refused(monkeypatch, runner_calls):
    from clipdyn import validation

    monkeypatch.setattr(validation, "available_memory", lambda: 10**4)
    with pytest.raises(ValueError, match=r"needs about .* of memory; this machine has 9.77 KB"):
        _sweep()
    # A billion seeds is refused before any list of them is built.
    monkeypatch.setattr(validation, "available_memory", lambda: 2**34)
    with pytest.raises(ValueError, match=r"1000000000 seed\(s\).*needs about"):
        sw.run_sweep(_problem(), _scheds(), range(10**9), 1.0, 3, progress=False)
    assert runner_calls["n"] == 0


def test_memory_estimate_counts_results_and_engine():
    # Results: 3 float64 copies of S x C x P; engine: 4 copies of the chunk's states.
    est = sw.memory_estimate(d=1000, n_seeds=10, n_configs=20, points=101, chunk=20, itemsize=4)
    assert est["results"] >= 3 * 10 * 20 * 101 * 8
    assert est["engine"] >= 4 * 20 * 1024 * 4


@pytest.mark.parametrize("seeds", [[0.5], 3, [-1], [2**32], [1, 1]])
def test_bad_seeds_are_refused(seeds):
    with pytest.raises(ValueError, match="seed"):
        sw.run_sweep(_problem(), _scheds(), seeds, 1.0, 3, progress=False)


@pytest.mark.parametrize("impl", [None, "threefry2x32", "rbg", "unsafe_rbg"])
def test_seed_keys_are_jax_keys_of_each_seed(impl):
    # Exact: the batched keys must be the very keys jax.random.key gives seed by seed (a run's
    # numbers depend only on its seed), at the ends of the allowed range [0, 2^32 - 1] too.
    import jax

    seeds = [0, 1, 7, 2**31 - 1, 2**31, 2**32 - 1]
    got = sw.seed_keys(seeds, impl)
    want = [jax.random.key(s, impl=impl) for s in seeds]
    assert got.shape == (len(seeds),) and got.dtype == want[0].dtype
    for g, w in zip(got, want):
        np.testing.assert_array_equal(jax.random.key_data(g), jax.random.key_data(w))


@pytest.mark.parametrize("kw, name", [({"chunk_size": 1.5}, "chunk_size"), ({"dt": 0.0}, "dt"),
                                      ({"dt": -1.0}, "dt"), ({"divergence_factor": 0.0},
                                                             "divergence_factor")])
def test_bad_sweep_options_are_refused(kw, name):
    with pytest.raises(ValueError, match=f"{name}=.* is not allowed"):
        sw.run_sweep(_problem(), _scheds(), [0], 1.0, 3, progress=False, **kw)


def test_estimate_counts_the_block_engines_masked_steps(monkeypatch, capsys):
    # Exact arithmetic on a fixed per-step time: intervals of 300 steps run as two blocks of 224
    # (448 steps each), so 2 seed-chunks of 600 steps at 1 s per step are 2 x 896 s = 30 min, not
    # 2 x 600 s = 20 min; the step engine (granule 1) computes exactly the steps.
    monkeypatch.setattr(sw, "_seconds_per_step", lambda call, steps, work, granule: 1.0)
    steps = np.array([0, 300, 600])
    for granule, want in [(224, "estimated 30 min"), (1, "estimated 20 min")]:
        sw._start_progress(None, steps, 2, 0, 2, 16, 100, granule).close()  # the bar it starts
        assert want in capsys.readouterr().err


def test_progress_estimate_keeps_numbers_bit_identical(monkeypatch, capsys):
    plain = _sweep()
    monkeypatch.setattr(sw, "LONG_RUN_SECONDS", 0.0)  # every run counts as long
    monkeypatch.setattr(sw, "CALIBRATION_MIN_WORK", 0.0)
    shown = _sweep(progress=True)
    err = capsys.readouterr().err
    assert "steps x 6 seed-chunk(s)" in err and "estimated" in err
    np.testing.assert_array_equal(shown.risk, plain.risk)
    np.testing.assert_array_equal(shown.diverged_at, plain.diverged_at)


# Item 8: horizons the engines cannot count or resolve.

def test_horizon_beyond_int32_steps_is_refused():
    trace = float(LAM.sum())
    ok = sw.MAX_STEPS / trace
    assert sw.checked_output_steps(ok, 2, trace)[-1] == sw.MAX_STEPS
    with pytest.raises(ValueError, match=r"needs 1\.\d+e\+\d+ steps"):
        sw.checked_output_steps(1e20, 101, trace)
    with pytest.raises(ValueError, match="T=1e\\+20"):
        sw.run_sweep(_problem(), _scheds(), [0], 1e20, 3, progress=False)


def test_output_times_closer_than_one_step_are_refused():
    trace = float(LAM.sum())
    least = 100 / trace  # (points - 1) steps of 1 / Tr K
    assert np.all(np.diff(sw.checked_output_steps(least, 101, trace)) > 0)
    with pytest.raises(ValueError, match=r"T=1e-09 with points=101 .* at least .* = 5\.3793\d"):
        sw.checked_output_steps(1e-9, 101, trace)
    # The bound in the message is rounded up, so it can be typed back in.
    msg = ""
    try:
        sw.checked_output_steps(0.5 * least, 101, trace)
    except ValueError as err:
        msg = str(err)
    typed = float(msg.split("= ")[-1].split(",")[0])
    assert typed >= least and np.all(np.diff(sw.checked_output_steps(typed, 101, trace)) > 0)


def test_provenance_records_the_commit_the_code_was_imported_from(monkeypatch):
    # A long run saves after the tree may have moved on: the commit that ran is the one read at
    # import; a different one at saving is recorded beside it, never in its place.
    monkeypatch.setattr(results, "_COMMIT_AT_IMPORT", "aaaa")
    monkeypatch.setattr(results, "_git_commit", lambda: "aaaa")
    assert results.provenance()["git_commit"] == "aaaa"
    assert "git_commit_at_save" not in results.provenance()
    monkeypatch.setattr(results, "_git_commit", lambda: "bbbb+dirty")
    p = results.provenance()
    assert p["git_commit"] == "aaaa" and p["git_commit_at_save"] == "bbbb+dirty"


def test_load_results_refuses_a_pair_that_does_not_belong_together(tmp_path):
    # Nothing was checked: another study's sidecar, a missing one ({} came back), an interrupted
    # save (new arrays beside the old sidecar) all loaded, and a plot drew the wrong figure.
    a = results.save_results(tmp_path / "a", {"x": np.arange(3.0)}, {"name": "a"})
    b = results.save_results(tmp_path / "b", {"x": np.arange(4.0)}, {"name": "b"})
    arrays, meta = results.load_results(a)
    assert meta["config"]["name"] == "a" and meta["format"] == "clipdyn-results-1"
    shutil.copy(b.with_suffix(".json"), a.with_suffix(".json"))  # b's sidecar beside a's arrays
    with pytest.raises(ValueError, match="do not belong together: the sidecar describes other arrays"):
        results.load_results(a)
    # a save interrupted between its two files: the new arrays, the old sidecar
    results.atomic_savez(b, x=np.arange(5.0))
    with pytest.raises(ValueError, match="do not belong together"):
        results.load_results(b)
    b.with_suffix(".json").unlink()
    with pytest.raises(ValueError, match=r"has no sidecar"):
        results.load_results(b)
    c = results.save_results(tmp_path / "c", {"x": np.arange(3.0)}, {"name": "c"})
    c.with_suffix(".json").write_text("{truncated")
    with pytest.raises(ValueError, match=r"sidecar .*c\.json' is not readable JSON"):
        results.load_results(c)
    c.with_suffix(".json").write_text(json.dumps({"format": "other-9", "config": {}, "arrays": ["x"]}))
    with pytest.raises(ValueError, match=r"has format 'other-9'; this clipdyn reads 'clipdyn-results-1'"):
        results.load_results(c)
    c.with_suffix(".json").write_text(json.dumps({"config": {}, "arrays": ["y"]}))  # no digest: names
    with pytest.raises(ValueError, match=r"the sidecar lists arrays \['y'\], the file holds \['x'\]"):
        results.load_results(c)
    c.write_bytes(c.read_bytes()[:20])
    with pytest.raises(ValueError, match=r"c\.npz' is not a readable \.npz archive"):
        results.load_results(c)


def test_committed_results_load_as_pairs():
    # Every committed results pair carries its digest (added to the older sidecars from their
    # committed arrays) and loads.
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "figures"
    pairs = sorted(root.glob("**/data/*.npz"))
    assert len(pairs) >= 14
    for npz in pairs:
        _, meta = results.load_results(npz)
        assert meta["npz_sha256"] and meta["format"] == "clipdyn-results-1", npz


def test_threefry_partitionable_is_part_of_the_sweeps_identity():
    """JAX's jax_threefry_partitionable flag changes which bits one seed draws (trial-precision:
    R = 0.9217 against 0.8885 for one run), so the sweep records it, its fingerprint covers it
    (a resumed sweep never mixes the two streams) and the provenance names it."""
    import jax

    a = _sweep()
    with jax.threefry_partitionable(not jax.config.jax_threefry_partitionable):
        b = _sweep()
    assert a.config["threefry_partitionable"] == jax.config.jax_threefry_partitionable
    assert b.config["threefry_partitionable"] != a.config["threefry_partitionable"]
    assert a.config["fingerprints"]["sweep"] != b.config["fingerprints"]["sweep"]
    assert not np.array_equal(a.risk, b.risk)
    assert "threefry_partitionable" in results.provenance()
