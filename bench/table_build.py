"""The one-off cost of a max-CCC schedule in a fresh process: building its tables for Student-t
(df 3) noise with the defaults (321 thresholds, ``mu`` on 2561 risks), compilation included.

Measures only. BENCHMARKS.md, "Feedback schedules against constant thresholds", compares two
commits by running this file alternately from a checkout of each.

    python bench/table_build.py
"""

import time

import clipdyn as cd
from clipdyn.theory.schedules import max_ccc

if __name__ == "__main__":
    t0 = time.perf_counter()
    sched = max_ccc(1.0, cd.StudentT(3.0, 1.0))
    sched.log_mu.block_until_ready()
    print(f"max-CCC table build (Student-t df 3, defaults): {time.perf_counter() - t0:.2f} s")
