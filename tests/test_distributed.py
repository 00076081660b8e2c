"""Multi-process sweeps (``clipdyn.runs.distributed``, ``clipdyn sweep --coordinator ...``).

The main test runs real ``jax.distributed`` processes on the loopback address: a sweep is run
by 1 process with 4 forced CPU devices (the reference), then by 2 processes with 2 devices each,
which are killed one after the other in the middle of the sweep (first the non-writer, then the
writer) and rerun until the sweep completes. Precision: float32 (the command's default); the
comparison is exact (bit for bit), because the claim is exact: the same program runs on every
device with the same per-device batch, whichever process the device belongs to, and gathering
the results moves data without arithmetic.

Every process runs in its own session and is polled; a process group still alive at the end
(or after the time bound) is killed, and the test asserts that none is left. The processes get
short heartbeat and shutdown timeouts, so a dead peer makes the survivors abort in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipdyn.cli import main
from clipdyn.runs import distributed

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"

# 12 configurations in chunks of 4 (the global device count): 3 chunks, 2 seeds each.
SWEEP = ["--spectrum", "power-law:d=64,alpha=0.5", "--noise", "gaussian:sigma=0.5",
         "--eta", "0.5,1", "--clip", "0.1,0.3,1,3,10,inf", "--T", "1", "--points", "3",
         "--seeds", "2", "--chunk-size", "4", "--json"]
N_CHUNKS = 3
HEARTBEAT, SHUTDOWN = 5, 5  # seconds: a dead peer is noticed, and the others give up, quickly
TIME_BOUND = 150.0  # seconds for one launch of the processes (compilation on 2 busy cores)
# Environment variables by which a cluster would be detected, or JAX configured differently.
_FOREIGN = ("SLURM_", "OMPI_", "PMI_", "JAX_", "TPU_", "CLOUD_TPU", "MEGASCALE_", "XLA_")


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_FOREIGN) and k != "KUBERNETES_SERVICE_HOST"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"  # before jax's import
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of that group exists (not ours to signal)
        return True
    return True


def _launch(cmds: list[list[str]], env: dict | list[dict], logs: Path, wait_for_all: bool) -> dict:
    """Start every command in its own session, poll them, and always clean up.

    Returns the exit codes, the time each exit was seen (seconds after the start), whether the
    time bound was hit, and the logs. With ``wait_for_all=False`` the first failure kills the
    others at once (nothing useful can follow); with ``True`` the survivors must exit by
    themselves (a test of how they handle a dead peer).
    """
    procs, files = [], []
    codes: list[int | None] = [None] * len(cmds)
    seen = [None] * len(cmds)
    timed_out = False
    start = time.monotonic()
    try:
        for i, cmd in enumerate(cmds):
            out, err = open(logs / f"out{i}", "wb"), open(logs / f"err{i}", "wb")
            files += [out, err]
            procs.append(subprocess.Popen(cmd, env=env[i] if isinstance(env, list) else env, cwd=logs,
                                          stdout=out, stderr=err,
                                          stdin=subprocess.DEVNULL, start_new_session=True))
        while True:
            for i, p in enumerate(procs):
                if codes[i] is None and p.poll() is not None:
                    codes[i], seen[i] = p.returncode, time.monotonic() - start
            if all(c is not None for c in codes):
                break
            if not wait_for_all and any(c not in (None, 0) for c in codes):
                break
            if time.monotonic() - start > TIME_BOUND:
                timed_out = True
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for p in procs:
            p.wait(timeout=60)
        for f in files:
            f.close()
        # Nothing is left behind: no process of any of the sessions we started.
        assert not any(_group_alive(p.pid) for p in procs), "stray processes were left"
    texts = [(logs / f"out{i}").read_text(errors="replace") for i in range(len(cmds))]
    errs = [(logs / f"err{i}").read_text(errors="replace") for i in range(len(cmds))]
    return {"codes": codes, "seen": seen, "timed_out": timed_out, "out": texts, "err": errs}


def _on_free_port(tmp: Path, tag: str, commands, env, wait_for_all: bool) -> dict:
    """Launch ``commands(cluster_options, logs)`` (two processes on 127.0.0.1), retrying with a
    fresh port if the coordinator could not bind the one we probed."""
    for _ in range(3):
        port = _free_port()
        logs = tmp / f"{tag}-{port}"
        logs.mkdir()
        cluster = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                   "--heartbeat-timeout", str(HEARTBEAT), "--shutdown-timeout", str(SHUTDOWN),
                   "--init-timeout", "60"]
        res = _launch(commands(cluster, logs), env, logs, wait_for_all=wait_for_all)
        res["logs"] = logs
        if res["codes"][0] != 0 and ("Failed to add port" in res["err"][0]
                                     or "is not free" in res["err"][0]):
            continue  # someone took the port between our probe and the coordinator's bind
        return res
    pytest.fail("could not find a free port for the coordinator in 3 tries")


def _cluster_run(tmp: Path, tag: str, die_at: tuple[int, int]) -> dict:
    """Two processes x 2 CPU devices; ``die_at[i] = K > 0`` kills process ``i`` at its ``K``-th
    gather."""
    def commands(cluster, logs):
        return [[sys.executable, str(WORKER), str(logs / f"report{i}.npz"), str(die_at[i]), "--",
                 *SWEEP, "--out", str(tmp / "dist.npz"), *cluster, "--process-id", str(i)]
                for i in range(2)]

    return _on_free_port(tmp, tag, commands, _env(2), wait_for_all=any(die_at))


def _chunks(tmp: Path) -> list[str]:
    return sorted(p.name for p in (tmp / "dist.npz.partial").glob("chunk_*.npz"))


def _check_killed_run(res: dict, victim: int) -> None:
    detail = "\n".join(e[-3000:] for e in res["err"])
    assert not res["timed_out"], f"processes still running after {TIME_BOUND} s:\n{detail}"
    assert res["codes"][victim] == -signal.SIGKILL, detail
    survivor = 1 - victim
    assert res["codes"][survivor] != 0, detail  # it could not finish without its peer ...
    # ... and gave up by itself within the heartbeat and shutdown timeouts (plus start-up slack).
    assert res["seen"][survivor] - res["seen"][victim] < HEARTBEAT + SHUTDOWN + 30, res["seen"]


def test_two_processes_equal_one_and_resume_after_either_is_killed(tmp_path):
    t0 = time.monotonic()
    # The reference: one process with the same global device count (4).
    ref_logs = tmp_path / "ref"
    ref_logs.mkdir()
    ref = _launch([[sys.executable, str(WORKER), str(ref_logs / "report.npz"), "0", "--", *SWEEP,
                    "--out", str(tmp_path / "ref.npz")]], _env(4), ref_logs, wait_for_all=False)
    assert ref["codes"] == [0], ref["err"][0][-3000:]
    ref_report = np.load(ref_logs / "report.npz")
    per_chunk = int(ref_report["gathers"]) // N_CHUNKS  # gathers per computed chunk
    assert per_chunk * N_CHUNKS == int(ref_report["gathers"]) and per_chunk >= 1

    # Kill the non-writer at the first gather of its second chunk: chunk 0 is kept.
    a = _cluster_run(tmp_path, "a", (0, per_chunk + 1))
    _check_killed_run(a, victim=1)
    assert _chunks(tmp_path) == ["chunk_000000.npz"]
    assert not (tmp_path / "dist.npz").exists()

    # Rerun, and kill the writer at the same point of its run: it resumed at chunk 1 and kept it.
    b = _cluster_run(tmp_path, "b", (per_chunk + 1, 0))
    _check_killed_run(b, victim=0)
    assert _chunks(tmp_path) == ["chunk_000000.npz", "chunk_000001.npz"]

    # Rerun to the end: only chunk 2 is computed, by both processes.
    c = _cluster_run(tmp_path, "c", (0, 0))
    detail = "\n".join(e[-3000:] for e in c["err"])
    assert c["codes"] == [0, 0] and not c["timed_out"], detail
    elapsed = time.monotonic() - t0
    reports = [np.load(c["logs"] / f"report{i}.npz") for i in range(2)]
    assert [int(r["gathers"]) for r in reports] == [per_chunk, per_chunk]
    assert not (tmp_path / "dist.npz.partial").exists()

    # The saved results equal the one-process reference bit for bit, every array.
    with np.load(tmp_path / "ref.npz") as z_ref, np.load(tmp_path / "dist.npz") as z:
        assert sorted(z.files) == sorted(z_ref.files)
        for name in z_ref.files:
            assert z[name].dtype == z_ref[name].dtype, name
            assert z[name].tobytes() == z_ref[name].tobytes(), name
        # So do the results every process returned (the non-writer's loaded chunks came from
        # the writer's checkpoints), and the sweep is not trivial (the runs differ).
        for r in reports:
            for name in ("risk", "diverged", "diverged_at"):
                assert r[name].tobytes() == z_ref[name].tobytes(), name
        assert np.unique(z_ref["risk"][:, :, -1]).size > 6
    # One summary, from the writer, strict JSON (native gloo notices went to stderr).
    assert c["out"][1] == ""
    summary = json.loads(c["out"][0])
    assert summary["configs"] == json.loads(ref["out"][0])["configs"]
    print(f"\n2-process test: {elapsed:.1f} s wall for 1 + 3 x 2 processes")


@pytest.mark.parametrize("differ", ["T", "devices", "missing file"])
def test_processes_given_different_sweeps_all_refuse_before_computing(tmp_path, differ):
    # Each process computes its share from its own options and the writer saves every share
    # under its own: different --T (or --clip) saved T=30 numbers labelled T=3, and different
    # --seeds left both processes waiting on each other; different local device counts failed
    # with "cannot reshape array of size 3 into shape (2,1)". Now every process stops with exit 2.
    # A spectrum file missing on the writer's host: the writer failed before the agreement
    # check and the other process waited for it inside JAX for the init timeout (300 s by
    # default), then failed naming the backend; now both stop at once.
    Ts = ["1", "2"] if differ == "T" else ["1", "1"]
    envs = [_env(1), _env(2)] if differ == "devices" else [_env(2), _env(2)]
    at = SWEEP.index("--T") + 1
    spectra = ["power-law:d=64,alpha=0.5"] * 2
    if differ == "missing file":
        np.save(tmp_path / "lam.npy", np.linspace(1.0, 0.1, 64))
        spectra = [f"file:{tmp_path / 'absent.npy'}", f"file:{tmp_path / 'lam.npy'}"]

    def commands(cluster, logs):
        return [[sys.executable, "-m", "clipdyn.cli", "sweep", "--spectrum", spec, *SWEEP[2:at], T,
                 *SWEEP[at + 1:], "--out", str(tmp_path / "mix.npz"), *cluster, "--process-id", str(i)]
                for i, (T, spec) in enumerate(zip(Ts, spectra))]

    res = _on_free_port(tmp_path, "mix", commands, envs, wait_for_all=True)
    detail = "\n".join(e[-3000:] for e in res["err"])
    assert not res["timed_out"] and res["codes"] == [2, 2], detail
    if differ == "T":
        for err in res["err"]:
            assert "clipdyn: error: the processes were not given the same sweep: process(es) [1] differ" in err
        assert "differs in: T (1.0 on process 0, 2.0 here)" in res["err"][1], res["err"][1][-2000:]
    elif differ == "devices":
        for err in res["err"]:
            assert ("clipdyn: error: the processes have different numbers of local devices (process 0: "
                    "1, process 1: 2)") in err, err[-2000:]
    else:
        assert "clipdyn: error: spectrum file" in res["err"][0] and "absent.npy" in res["err"][0]
        assert ("clipdyn: error: process(es) [0] stopped with an error before the sweep began"
                in res["err"][1]), res["err"][1][-2000:]
    assert not (tmp_path / "mix.npz").exists() and not (tmp_path / "mix.npz.partial").exists()


# --- The command line checks its multi-process options before joining anything. -----------

BASE = ["sweep", "--spectrum", "identity:d=8", "--noise", "gaussian:sigma=1", "--eta", "1",
        "--clip", "1", "--T", "1", "--out", "never-written.npz"]


@pytest.mark.parametrize("extra, needle", [
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
    (["--coordinator", ":1234", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
    (["--coordinator", "h:0", "--num-processes", "2", "--process-id", "0"], "port=0 is not allowed; port must be an integer >= 1 and <= 65535"),
    (["--coordinator", "h:65536", "--num-processes", "2", "--process-id", "0"], "<= 65535"),
    (["--coordinator", "h:port", "--num-processes", "2", "--process-id", "0"], "port: 'port' is not a number"),
    (["--coordinator", "h:1234:5", "--num-processes", "2", "--process-id", "0"], "HOST must be a host name"),
    (["--coordinator", "256.1.1.1:1234", "--num-processes", "2", "--process-id", "0"], "HOST must be"),
    (["--coordinator", "a b:1234", "--num-processes", "2", "--process-id", "0"], "HOST must be"),
    (["--coordinator", "::1:1234", "--num-processes", "1", "--process-id", "0"], "IPv6 address in brackets"),
    (["--coordinator", "h:1234", "--num-processes", "99999999999", "--process-id", "0"], "<= 2147483647"),
    (["--coordinator", "h:1234", "--num-processes", "2", "--process-id", "0",
      "--heartbeat-timeout", "2147483648"], "--heartbeat-timeout=2147483648"),
    (["--coordinator", "h:1234", "--num-processes", "0", "--process-id", "0"], "--num-processes=0"),
    (["--coordinator", "h:1234", "--num-processes", "1.5", "--process-id", "0"], "--num-processes=1.5"),
    (["--coordinator", "h:1234", "--num-processes", "2", "--process-id", "2"], "0..1"),
    (["--coordinator", "h:1234", "--num-processes", "2", "--process-id", "-1"], "--process-id=-1"),
    (["--coordinator", "h:1234", "--num-processes", "2"], "--process-id"),
    (["--num-processes", "2", "--process-id", "0"], "--coordinator"),
    (["--distributed", "--coordinator", "h:1234"], "not allowed with --coordinator"),
    (["--distributed", "--process-id", "0"], "not allowed with"),
    (["--distributed", "--heartbeat-timeout", "0"], "--heartbeat-timeout=0"),
    (["--distributed", "--shutdown-timeout", "x"], "--shutdown-timeout: 'x' is not a number"),
    (["--distributed", "--init-timeout", "-3"], "--init-timeout=-3"),
    (["--heartbeat-timeout", "5"], "only allowed with --coordinator or --distributed"),
])
def test_cli_rejects_bad_cluster_options(capsys, extra, needle):
    assert main(BASE + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipdyn: error: ") and err.count("\n") == 1, err
    assert needle in err, err
    assert not Path("never-written.npz").exists()


def test_distributed_without_a_cluster_environment_is_one_clear_error(tmp_path):
    # A fresh process (jax.distributed can only be initialised before JAX starts), in an
    # environment with no SLURM, Open MPI, TPU or Kubernetes variables.
    run = subprocess.run([sys.executable, "-m", "clipdyn.cli", *BASE, "--distributed",
                          "--init-timeout", "5"], env=_env(1), cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clipdyn: error: --distributed found no cluster")
    assert run.stdout == ""


def test_cluster_options_are_validated_in_python_too():
    c = distributed.Cluster("10.0.0.1:1234", "4", "3", heartbeat_timeout="7")
    assert (c.num_processes, c.process_id, c.heartbeat_timeout) == (4, 3, 7)
    kw = c.kwargs()
    assert kw["coordinator_address"] == "10.0.0.1:1234" and "coordinator_bind_address" not in kw
    assert kw["heartbeat_timeout_seconds"] == 7 and kw["shutdown_timeout_seconds"] == 300
    # A loopback coordinator listens on loopback only; IPv6 literals keep their brackets.
    assert distributed.Cluster("127.0.0.1:99", 2, 0).kwargs()["coordinator_bind_address"] == "127.0.0.1:99"
    assert distributed.Cluster("[::1]:99", 2, 1).kwargs()["coordinator_bind_address"] == "[::1]:99"
    assert distributed.Cluster(auto=True).kwargs() == {
        "initialization_timeout": 300, "heartbeat_timeout_seconds": 100, "shutdown_timeout_seconds": 300}
    # integers read as every integer option is ("2.0", "1e0" were refused here only)
    assert (distributed.Cluster("h:1", "2.0", "1e0").num_processes, distributed.Cluster("h:1", "2.0", "1e0").process_id) == (2, 1)
    for bad in [dict(coordinator="h:1", num_processes=2, process_id=True),
                dict(coordinator="h:1", num_processes=2),
                dict(auto=True, num_processes=2),
                dict(coordinator="h:1", num_processes=1, process_id=0, shutdown_timeout=0)]:
        with pytest.raises(ValueError):
            distributed.Cluster(**bad)
    with pytest.raises(ValueError, match="must be a Cluster"):
        distributed.initialize({"coordinator": "h:1"})


def test_single_process_helpers_are_plain():
    # In one process the helpers do no collective: bytes and errors stay as they are.
    assert distributed.is_writer() and distributed.global_devices()
    assert distributed.broadcast_bytes(b"abc") == b"abc" and distributed.broadcast_bytes(None) == b""
    x = {"a": np.arange(3.0), "b": np.array([True])}
    got = distributed.to_host(x)
    assert all(np.array_equal(got[k], x[k]) for k in x)
    calls = []
    distributed.on_writer(calls.append, 1)
    assert calls == [1]
    with pytest.raises(OSError):
        distributed.on_writer(open, "/nonexistent/dir/file")
    distributed.barrier("noop")


def test_coordinator_port_in_use_is_refused_before_joining(tmp_path):
    # Something already listens on the port (another sweep's coordinator): JAX failed to start
    # its service and crashed with SIGSEGV in 5 of 8 runs, and a second sweep on a running
    # sweep's port made that one abort. Process 0 now probes the port and refuses it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "clipdyn.cli", *BASE, "--coordinator",
                              f"127.0.0.1:{port}", "--num-processes", "1", "--process-id", "0"],
                             env=_env(1), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"clipdyn: error: --coordinator: port {port} on "
                                                   "127.0.0.1 is not free"), lines
    assert not (tmp_path / "never-written.npz").exists()
