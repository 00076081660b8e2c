"""``python -m clipdyn.cli ...`` is the ``clipdyn`` command too."""

from clipdyn.cli import run

run()
