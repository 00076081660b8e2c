"""Models of clipdyn's other sources, outside Gaussian least squares.

This subpackage holds one module per source whose claims need a model of their own: ``finite_sum``
(Chen, Wu, Hong, NeurIPS 2020: the bias of clipping on a finite sum of quadratics and the
pre-clip perturbation that removes it), ``smoothness`` (Zhang, He, Sra, Jadbabaie, ICLR 2020:
``(L0, L1)``-smooth functions and why clipping accelerates on them) and ``networks`` (Nobile and
Grohs: per-sample clipping on a small network trained on real data). The modules are independent
of each other and are imported by name (``from clipdyn.sources import finite_sum``); nothing is
imported here, so importing one source never pulls in another's dependencies.
"""
