"""One process of a ``clipdyn sweep`` for ``tests/test_distributed.py``.

Usage::

    python tests/distributed_worker.py REPORT.npz DIE_AT -- SWEEP OPTIONS...

Runs ``clipdyn sweep SWEEP OPTIONS`` (the command line, multi-process options included) and
saves to ``REPORT.npz`` what ``run_sweep`` returned in *this* process and how many times it
gathered computed results (:func:`clipdyn.runs.distributed.to_host`; chunks loaded from a checkpoint
are not gathered). With ``DIE_AT = K > 0`` the process kills itself with SIGKILL when it is about
to make its ``K``-th gather, as a crashed host would: no Python cleanup, no goodbye to the other
processes.
"""

import os
import signal
import sys

import numpy as np


def main(argv: list[str]) -> int:
    report, die_at, sep, *cli_args = argv
    if sep != "--":
        raise SystemExit("usage: distributed_worker.py REPORT.npz DIE_AT -- SWEEP OPTIONS...")
    die_at = int(die_at)

    from clipdyn.runs import distributed, sweep
    from clipdyn.cli import main as cli_main

    gathers = {"n": 0}
    gather = distributed.to_host
    run_sweep = sweep.run_sweep

    def counting_gather(tree):  # every process gathers the same computed results
        gathers["n"] += 1
        if gathers["n"] == die_at:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return gather(tree)

    def recording_run_sweep(*args, **kwargs):
        res = run_sweep(*args, **kwargs)
        distributed.barrier("sweep returned")  # every process gets here (exercises the barrier)
        np.savez(report, risk=res.risk, diverged=res.diverged, diverged_at=res.diverged_at,
                 gathers=gathers["n"])
        return res

    distributed.to_host = counting_gather
    sweep.run_sweep = recording_run_sweep
    return cli_main(["sweep", *cli_args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
