"""The studies' ``--out``, checked before they run (no side effects: real_data.py imports it
without common.py, which switches its process to float64)."""

import os

from clipdyn import validation


def check_out(ap, out):
    """Refuse an ``--out`` that cannot be written before the study runs (exit 2, one line): a
    real-data study on CIFAR-10 takes 1-2 hours, and ended in a traceback at the save."""
    try:
        path = validation.output_path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as err:
        ap.error(f"--out={out}: {err}" if isinstance(err, OSError) else str(err))
    if not os.access(path.parent, os.W_OK):
        ap.error(f"--out={out}: its folder {str(path.parent)!r} is not writable")
