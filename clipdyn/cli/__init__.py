"""The ``clipdyn`` command line.

Every command prints a table by default and JSON with ``--json``. Bad input exits with status 2
and one line on stderr (``clipdyn: error: ...``), never a traceback. In JSON, infinite values are
written as the string ``"inf"`` and missing ones (after a divergence) as ``null``, so the output
is strict JSON.

Commands live beside what they drive: :mod:`clipdyn.cli.theory` (``factors``, ``ode``),
:mod:`clipdyn.cli.sim` (``simulate``, ``sweep``, ``validate``), :mod:`clipdyn.cli.bias`
(``bias``, Chen et al.'s finite-sum clipping bias); :mod:`clipdyn.cli.common` holds what they
share.
"""

from __future__ import annotations

import sys

from clipdyn.cli import bias, sim, theory
from clipdyn.cli.common import CLIError, Parser

__all__ = ["main", "make_parser"]


def make_parser() -> Parser:
    parser = Parser(prog="clipdyn", description=__doc__.splitlines()[0].replace("``", ""))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    theory.add_commands(sub)
    sim.add_commands(sub)
    bias.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from clipdyn.precision import x64

    try:
        with x64():  # the theory needs float64; the user's process keeps its own JAX settings
            args = make_parser().parse_args(argv)
            args.func(args)
    except BrokenPipeError:  # the reader stopped (| head): leave quietly, as a killed writer would
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CLIError, ValueError, OSError) as err:
        print(f"clipdyn: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # sweep's own handler says what was kept; others say this
        print(f"clipdyn: interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - solver failures and the like: one line too
        print(f"clipdyn: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    """The ``clipdyn`` program: :func:`main`, then exit with its status.

    SIGTERM (what ``timeout``, SLURM and ``kill`` send) is answered as Ctrl-C is, with the line
    that says what was kept, and exit status 143 (it used to end the process without a word).
    After Ctrl-C the process leaves at once (``os._exit``, streams flushed): a JAX computation
    interrupted in flight keeps running on XLA's threads, and tearing the runtime down under it
    at interpreter exit crashed with SIGSEGV (status 139) instead of 130, and in a multi-process
    sweep JAX's shutdown at exit waited for the other processes up to the shutdown timeout (300 s)
    and then aborted with 134. Whatever must survive an interruption (a sweep's finished chunks) is
    already on disk by then.
    """
    import signal

    terminated = []

    def on_term(signum, frame):  # SIGTERM (timeout, SLURM, kill) as Ctrl-C: say what was kept
        terminated.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        code = main()
    except SystemExit as stop:  # a command's own Ctrl-C handler (sweep: what was kept) ends so
        code = stop.code
    if code == 130:
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signal.SIGTERM if terminated else 130)
    sys.exit(code)


if __name__ == "__main__":
    run()
