"""Test configuration: float64, and JAX's strict rank and dtype promotion (as diffrax's suite does).

Every test states its precision and where its tolerance comes from.
"""

import os
import tempfile

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


def pytest_configure(config):
    # One JAX compilation cache per test session, shared by the xdist workers and the CLI and
    # study subprocesses the tests start: the same programs are not compiled once per process.
    # (The multi-process runs of test_distributed.py start from an environment without JAX_
    # variables; given the cache they were no faster: their time is start-up and timeouts.)
    # A fresh directory each session, so nothing leaks between runs and no test sees a warm
    # cache it did not build; removed at the end by the controller.
    if "CLIPDYN_TEST_JAX_CACHE" not in os.environ:
        os.environ["CLIPDYN_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="clipdyn-jax-cache-")
        config._clipdyn_cache_owner = True
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["CLIPDYN_TEST_JAX_CACHE"])
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    jax.config.update("jax_compilation_cache_dir", os.environ["CLIPDYN_TEST_JAX_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def pytest_unconfigure(config):
    if getattr(config, "_clipdyn_cache_owner", False):
        import shutil

        shutil.rmtree(os.environ.pop("CLIPDYN_TEST_JAX_CACHE"), ignore_errors=True)
