"""Simulation commands of the ``clipdyn`` command line (filled in with the simulation engine)."""


def add_commands(sub, problem_args) -> None:
    return None
