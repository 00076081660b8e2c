"""Sweeps across processes and hosts with JAX's multi-process runtime (``jax.distributed``).

A multi-process sweep runs the same program in every process (one per host, or one per GPU):
every process builds the same problem and schedules from the same options, the configurations
are sharded over the *global* mesh of all processes' devices (``jax.devices()``), and each
chunk's results are gathered back to every process. One process, the *writer* (process 0),
writes the chunk checkpoints and the results file; the others learn from it which chunks are
already finished, so every process skips the same chunks (a process that skipped a collective
the others enter would leave them waiting).

Every device runs the same program on the same per-device batch whichever process it belongs
to, and gathering moves data without arithmetic, so a multi-process sweep equals a one-process
sweep over the same *total* number of devices, bit for bit with the step engine
(``tests/test_distributed.py``: 2 processes x 2 CPU devices against 1 process x 4). Compare with
a reference of the same global device count: the block engine's last bits may depend on the
per-device batch (matrix-product kernels do; the step engine's do not, ``tests/test_simulate.py``).

Facts about jax 0.10 this module relies on (measured, see ``tests/test_distributed.py``):

* Cross-process collectives on CPU need ``jax_cpu_collectives_implementation`` (``"gloo"`` by
  default since jax 0.6.1; unset, the first collective fails with "Multiprocess computations
  aren't implemented on the CPU backend"). :func:`initialize` sets ``"gloo"`` only if it is unset.
* Host-replicated inputs (NumPy arrays, or JAX arrays not committed to a device) may be passed
  to a program sharded over the global mesh; its outputs are global arrays that no one process
  can read whole, hence :func:`to_host`.
* A dead peer: a collective in flight with it fails at once (gloo: "Connection reset by
  peer"); otherwise the coordination service notices its missing heartbeats within the
  heartbeat timeout (JAX's default 100 s). A process leaving, with or without an error, waits
  for the others up to the shutdown timeout (300 s), after which the runtime aborts every
  process still there. Both timeouts are options of :class:`Cluster` (the test uses 5 s: a
  killed non-writer ends the writer about 4 s later, a killed writer ends the other at once).
* The coordinator binds every interface unless told otherwise; a loopback coordinator address
  (one-host runs, tests) binds the loopback interface only.

References:
    JAX, "Introduction to multi-controller JAX" and ``jax.distributed.initialize``
    (https://docs.jax.dev/en/latest/multi_process.html).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable

import jax
import numpy as np

from clipdyn import validation
from clipdyn.runs import results

__all__ = ["Cluster", "parse_coordinator", "initialize", "shutdown", "session", "is_writer",
           "global_devices", "barrier", "to_host", "broadcast_bytes", "check_agreement", "on_writer",
           "add_cli_options", "cluster_from_args", "DEFAULT_TIMEOUTS"]

_MAX_C_INT = 2**31 - 1  # JAX's runtime takes counts and timeouts as C ints (2^31 gave a TypeError)

#: JAX's defaults (seconds) for the connection, heartbeat and shutdown timeouts.
DEFAULT_TIMEOUTS = {"init_timeout": 300, "heartbeat_timeout": 100, "shutdown_timeout": 300}


def _integer(value: Any, what: str, low: int, high: int | None = None, owner: str = "") -> int:
    """An integer in ``[low, high]`` from a number or its text, read as every other integer option
    is (``2.0`` and ``1e3`` are integers, as for ``--seeds``), or a one-line ValueError."""
    if isinstance(value, str):
        return validation.integer_text(what, value, low, high=high, owner=owner)
    return validation.integer(what, value, low, high=high, owner=owner)


def parse_coordinator(text: str) -> tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT`` (``[IPv6]:PORT`` for IPv6 addresses).

    Raises:
        ValueError: without a host, or unless ``PORT`` is an integer in 1..65535.
    """
    host, sep, port = str(text).strip().rpartition(":")
    if not sep or not host or host in ("[", "[]"):
        raise ValueError(f"--coordinator={text} is not allowed; give HOST:PORT, e.g. 10.0.0.1:1234")
    port = _integer(port, "port", 1, 65535, owner=f"--coordinator={text}")
    if not _valid_host(host):
        # JAX took malformed hosts (h:1234:5, 256.1.1.1, "a b", an IPv6 address without
        # brackets) and failed after its init timeout with a 14-line abort, or crashed (SIGSEGV)
        raise ValueError(f"--coordinator={text} is not allowed; HOST must be a host name, an IPv4 "
                         "address or an IPv6 address in brackets ([::1]:1234)")
    return host, port


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if all(label.isdigit() for label in labels):  # dotted numbers: an IPv4 address
        try:
            ipaddress.IPv4Address(host)
            return True
        except ValueError:
            return False
    return len(host) <= 253 and all(_LABEL.match(label) for label in labels)


def _check_port_free(host: str, port: int, loopback: bool) -> None:
    """Refuse a coordinator port something already listens on (process 0 only).

    JAX then failed to start its service and, in 5 of 8 runs, crashed with SIGSEGV; a second
    sweep started on a running sweep's port joined it and made it abort.
    """
    family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    address = host.strip("[]") if loopback else ("::" if family == socket.AF_INET6 else "0.0.0.0")
    if host == "localhost":
        address = "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle
        try:
            probe.bind((address, port))
        except OSError as err:
            raise ValueError(f"--coordinator: port {port} on {address} is not free ({err.strerror}); "
                             "another program (another sweep's coordinator?) uses it: give every "
                             "multi-process run its own port") from None


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Cluster:
    """How this process joins a multi-process run.

    Either the explicit trio (``coordinator``, ``num_processes``, ``process_id``), or
    ``auto=True`` to let ``jax.distributed.initialize()`` read the cluster's environment
    (SLURM, Open MPI, Cloud TPU pods, Kubernetes).

    Attributes:
        coordinator: ``HOST:PORT`` of process 0, where it runs the coordination service.
        num_processes: number of processes ``N >= 1``.
        process_id: this process, ``0 <= I < N``; process 0 is the writer.
        auto: detect the three from the environment instead.
        init_timeout: seconds to wait for every process to connect.
        heartbeat_timeout: seconds after which a silent process counts as dead and the others
            abort (instead of waiting forever inside a collective).
        shutdown_timeout: seconds a finishing process waits for the others at exit.

    Raises:
        ValueError: for a bad address, count, id or timeout, or a mix of ``auto`` and the trio.
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False
    init_timeout: int = DEFAULT_TIMEOUTS["init_timeout"]
    heartbeat_timeout: int = DEFAULT_TIMEOUTS["heartbeat_timeout"]
    shutdown_timeout: int = DEFAULT_TIMEOUTS["shutdown_timeout"]

    def __post_init__(self):
        trio = (self.coordinator, self.num_processes, self.process_id)
        if self.auto:
            if any(v is not None for v in trio):
                raise ValueError("--distributed reads the cluster's environment; it is not allowed "
                                 "with --coordinator, --num-processes or --process-id")
        else:
            if any(v is None for v in trio):
                raise ValueError("give all of --coordinator HOST:PORT, --num-processes N and "
                                 "--process-id I (or --distributed to read them from the cluster)")
            parse_coordinator(self.coordinator)
            n = _integer(self.num_processes, "--num-processes", 1, _MAX_C_INT)
            i = _integer(self.process_id, "--process-id", 0)
            if i >= n:
                raise ValueError(f"--process-id={self.process_id} is not allowed; it must be an "
                                 f"integer in 0..{n - 1} (--num-processes={n})")
            object.__setattr__(self, "num_processes", n)
            object.__setattr__(self, "process_id", i)
        for name in DEFAULT_TIMEOUTS:
            flag = "--" + name.replace("_", "-")
            object.__setattr__(self, name, _integer(getattr(self, name), flag, 1, _MAX_C_INT))

    def kwargs(self) -> dict:
        """Keyword arguments for ``jax.distributed.initialize``."""
        kw = {"initialization_timeout": self.init_timeout,
              "heartbeat_timeout_seconds": self.heartbeat_timeout,
              "shutdown_timeout_seconds": self.shutdown_timeout}
        if not self.auto:
            host, port = parse_coordinator(self.coordinator)
            kw.update(coordinator_address=f"{host}:{port}", num_processes=self.num_processes,
                      process_id=self.process_id)
            if _is_loopback(host):  # every process is on this host: do not listen on the network
                kw["coordinator_bind_address"] = f"{host}:{port}"
        return kw


def initialize(cluster: Cluster) -> None:
    """Join the multi-process run ``cluster`` describes (before any other JAX call).

    Sets ``jax_cpu_collectives_implementation`` to ``"gloo"`` if it is unset (CPU collectives
    across processes need one; a user's ``"mpi"`` is kept).

    Raises:
        ValueError: if ``auto`` finds no cluster environment, or JAX's backend already started.
    """
    if not isinstance(cluster, Cluster):
        raise ValueError(f"cluster must be a Cluster; got {type(cluster).__name__}")
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if not cluster.auto and cluster.process_id == 0:
        host, port = parse_coordinator(cluster.coordinator)
        _check_port_free(host, port, _is_loopback(host))
    try:
        jax.distributed.initialize(**cluster.kwargs())
    except ValueError as err:
        if cluster.auto:
            raise ValueError(f"--distributed found no cluster environment (SLURM, Open MPI, Cloud "
                             f"TPU, Kubernetes) to read ({err}); give --coordinator HOST:PORT "
                             f"--num-processes N --process-id I instead") from None
        raise
    except RuntimeError as err:
        raise ValueError(f"cannot join the multi-process run: {err}") from None


def shutdown() -> None:
    """Leave the multi-process run (waits for the others, up to the shutdown timeout)."""
    jax.distributed.shutdown()


@contextlib.contextmanager
def session(cluster: Cluster | None):
    """Run the body inside the multi-process run ``cluster`` (nothing to do for ``None``).

    On success every process shuts down together. After an error the exception propagates; at
    exit JAX's runtime waits for the other processes up to the shutdown timeout, and if they do
    not all arrive, it aborts every process (measured with jax 0.10, see the module docstring).
    Meanwhile native output on stdout is sent to stderr (see :func:`_native_stdout_to_stderr`).
    """
    if cluster is None:
        yield
        return
    with _native_stdout_to_stderr():
        initialize(cluster)
        _STATE["agreed"] = False
        try:
            yield
        except Exception:
            # A process that fails on its own options or files before the agreement check (a
            # spectrum file missing on one host) left the others waiting for it inside JAX for
            # the init or shutdown timeout (2-5 minutes), then failing with a message about the
            # backend. It takes part in the check instead, as failed, so all stop at once.
            if not _STATE["agreed"]:
                check_agreement(_FAILED)
            raise
        shutdown()


@contextlib.contextmanager
def _native_stdout_to_stderr():
    """Send what native code prints to file descriptor 1 to stderr while Python's ``sys.stdout``
    keeps the real standard output: gloo prints a line on stdout for every communicator it
    connects, which would break a command's ``--json`` output."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (captured): nothing to guard
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    os.dup2(sys.stderr.fileno(), fd)
    python_stdout = sys.stdout
    sys.stdout = open(saved, "w", buffering=1, encoding=python_stdout.encoding, closefd=False)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = python_stdout
        os.dup2(saved, fd)
        os.close(saved)


def is_writer() -> bool:
    """Whether this process writes results and checkpoints (process 0; always in one process)."""
    return jax.process_index() == 0


def global_devices() -> list:
    """Every process's devices, in process order (the mesh of a multi-process sweep)."""
    return list(jax.devices())


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier called ``name`` (no-op in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def to_host(tree: Any) -> Any:
    """NumPy copies of a pytree of arrays, gathered to every process if they span several.

    Gathering moves data only, so values are bit-for-bit those computed on the devices.
    """
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


_MAX_BYTES = 2**31 - 1


def broadcast_bytes(data: bytes | None) -> bytes:
    """The writer's ``data`` on every process (``data`` is ignored elsewhere).

    Bytes travel as ``uint8`` arrays summed with zeros from the other processes, which is exact.
    """
    if jax.process_count() == 1:
        return bytes(data or b"")
    from jax.experimental import multihost_utils

    data = bytes(data or b"") if is_writer() else b""
    if len(data) > _MAX_BYTES:
        raise ValueError(f"cannot broadcast {len(data)} bytes; at most {_MAX_BYTES}")
    n = int(multihost_utils.broadcast_one_to_all(np.asarray([len(data)], np.int32))[0])
    if n == 0:
        return b""
    buf = np.frombuffer(data, np.uint8) if is_writer() else np.zeros(n, np.uint8)
    return multihost_utils.broadcast_one_to_all(buf).tobytes()


def _entry_text(value: Any) -> str:
    """How :func:`check_agreement` shows an entry: its JSON where short, else its hash."""
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:12]


def _flat(entries: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested entries by their dotted names, so a refusal names the option that differs (a
    dict of the options as typed was shown as one hash)."""
    out = {}
    for k, v in entries.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Whether this process has been through check_agreement since it joined: an error before that
# point is announced to the others (session), who would otherwise wait for it inside JAX.
_STATE = {"agreed": True}
_FAILED = object()


def check_agreement(entries: dict[str, Any], what: str = "sweep") -> None:
    """Refuse, on every process, to go on unless every process was given the same ``entries``.

    Each process computes its share of a sweep from its own options and files, and the writer
    saves every share under its own configuration: processes started with different options
    (an edited launch script) or reading different files (an ``npz:`` or ``file:`` path whose
    contents differ between hosts) would save one sweep's labels over another's numbers, and
    a different number of seeds leaves them waiting on each other for ever. So before the
    first collective of the computation, every process checks that all processes have the same
    number of local devices (the global mesh needs it; read from the global device list) and
    compares ``entries`` (its configuration and content fingerprints) with the writer's, and all
    learn whether any differs.

    Args:
        entries: what must agree, by name (JSON-serialisable values).
        what: how messages name the computation.

    Raises:
        ValueError: on every process if any process differs, naming the processes and, on a
            differing process, the entries with both values.
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    # Every process sees the global device list, so this needs no exchange (the exchange itself
    # fails on unequal counts, with "cannot reshape array of size 3 into shape (2,1)").
    counts = collections.Counter(d.process_index for d in jax.devices())
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"process {i}: {n}" for i, n in sorted(counts.items()))
        raise ValueError(f"the processes have different numbers of local devices ({shown}); a {what} "
                         "shards over them evenly, so give every process the same number")
    failed = entries is _FAILED
    mine = {"failed": "yes"} if failed else {k: _entry_text(v) for k, v in _flat(entries).items()}
    writer = json.loads(broadcast_bytes(json.dumps(mine, sort_keys=True).encode()).decode())
    differs = [f"{k} ({writer.get(k)} on process 0, {v} here)" for k, v in mine.items()
               if writer.get(k) != v]
    flag = 2 if failed else int(bool(differs) or "failed" in writer)
    flags = np.asarray(multihost_utils.process_allgather(np.asarray([flag], np.int32))).reshape(-1)
    _STATE["agreed"] = True
    stopped = [int(i) for i in np.flatnonzero(flags == 2)]
    if failed:
        return
    if stopped:
        raise ValueError(f"process(es) {stopped} stopped with an error before the {what} began (see "
                         "their own message); nothing was computed")
    bad = [int(i) for i in np.flatnonzero(flags)]
    if not bad:
        return
    names = {k.split(".")[-1] for k, v in mine.items() if writer.get(k) != v}
    data = mine.get("data_fingerprint")  # as its JSON text: "null" for Gaussian data
    note = results.derived_only_note(names, writer.get("data_fingerprint"),
                                     None if data in (None, "null") else data)
    detail = (f"this process (process {jax.process_index()}) differs in: {', '.join(differs)}{note}"
              if differs else "see their own messages")
    raise ValueError(f"the processes were not given the same {what}: process(es) {bad} differ from "
                     f"process 0; {detail}. Start every process with the same options, files and "
                     "number of local devices")


def on_writer(fn: Callable[..., Any], *args, **kwargs) -> None:
    """Call ``fn`` on the writer process only; every process returns once it has returned.

    An exception raised by ``fn`` on the writer is raised there and reaches every other process
    too (a ``ValueError`` for a ``ValueError`` or ``OSError``, which the command line reports as
    bad input, a ``RuntimeError`` otherwise, with the writer's message), so no process goes on
    to a collective that the writer will never enter. ``fn``'s return value is discarded.
    """
    if jax.process_count() == 1:
        fn(*args, **kwargs)
        return
    failure = None
    message = b""
    if is_writer():
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised below, after telling the others
            failure = err
            kind = b"V" if isinstance(err, (ValueError, OSError)) else b"R"
            message = kind + f"on process 0: {type(err).__name__}: {err}".encode()
    message = broadcast_bytes(message)
    if failure is not None:
        raise failure
    if message:
        error = ValueError if message[:1] == b"V" else RuntimeError
        raise error(message[1:].decode(errors="replace"))


def add_cli_options(parser) -> None:
    """The ``--coordinator``, ``--num-processes``, ``--process-id``, ``--distributed`` and timeout
    options of a command that can run across processes."""
    g = parser.add_argument_group("multi-process runs (jax.distributed)")
    g.add_argument("--coordinator", default=None,
                   help="HOST:PORT of process 0 (with --num-processes and --process-id)")
    g.add_argument("--num-processes", default=None, help="number of processes N >= 1")
    g.add_argument("--process-id", default=None, help="this process, 0 <= I < N; 0 writes the results")
    g.add_argument("--distributed", action="store_true",
                   help="read the three from the cluster (SLURM, Open MPI, Cloud TPU, Kubernetes)")
    for name, default in DEFAULT_TIMEOUTS.items():
        what = {"init_timeout": "for every process to connect",
                "heartbeat_timeout": "before a silent process counts as dead",
                "shutdown_timeout": "for the others at exit"}[name]
        g.add_argument("--" + name.replace("_", "-"), default=None,
                       help=f"seconds to wait {what} (default {default})")


def cluster_from_args(args) -> Cluster | None:
    """The :class:`Cluster` of the options of :func:`add_cli_options` (``None``: one process).

    Raises:
        ValueError: for bad values, a mix of ``--distributed`` and the explicit trio, or a
            timeout without either.
    """
    timeouts = {name: getattr(args, name) for name in DEFAULT_TIMEOUTS
                if getattr(args, name, None) is not None}
    trio = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed and all(v is None for v in trio):
        if timeouts:
            flag = "--" + next(iter(timeouts)).replace("_", "-")
            raise ValueError(f"{flag} is only allowed with --coordinator or --distributed")
        return None
    return Cluster(*trio, auto=bool(args.distributed), **timeouts)

