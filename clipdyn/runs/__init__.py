"""Running and results: sweeps (vmapped, sharded, chunked, resumable), sweeps across processes
and hosts, and results files with their configuration and provenance.

Modules: :mod:`~clipdyn.runs.sweep`, :mod:`~clipdyn.runs.distributed`, :mod:`~clipdyn.runs.results`.
"""
