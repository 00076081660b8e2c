"""``python -m clipdyn ...`` is the ``clipdyn`` command (for environments without its script)."""

from clipdyn.cli import run

run()
