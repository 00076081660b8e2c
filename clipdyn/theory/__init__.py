"""The theory core: noise laws, the problem, clipping rules and their reduction factors, schedules,
the deterministic ODE and tuning through it (THEORY.md; derivations in the top-level ``theory/``).

Modules: :mod:`~clipdyn.theory.noise` (label-noise laws), :mod:`~clipdyn.theory.problem` (spectrum,
start, noise), :mod:`~clipdyn.theory.factors` (``mu``, ``nu`` and the criteria),
:mod:`~clipdyn.theory.batch_factors` (group clipping and pre-clip noise),
:mod:`~clipdyn.theory.rules` (clipping rules), :mod:`~clipdyn.theory.schedules`,
:mod:`~clipdyn.theory.ode` and :mod:`~clipdyn.theory.tuning`.
"""
