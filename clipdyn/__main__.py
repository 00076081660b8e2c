"""``python -m clipdyn ...`` is the ``clipdyn`` command (for environments without its script)."""

import sys

from clipdyn.cli import main

sys.exit(main())
