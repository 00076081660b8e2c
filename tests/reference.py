"""Independent references for the reduction factors, built on scipy alone (no clipdyn code).

For ``w ~ N(m, s^2)`` the conditional ``P(|w| <= c)`` comes from scipy's normal tails and
``E[w^2 1{|w| <= c}]`` from ``scipy.integrate.quad`` on the window; the average over the noise law
is a sum over atoms or components, or (Student-t) an adaptive ``quad`` over ``eps`` split at the
places where the integrand turns (``+-c``, ``+-c +- 12 s``, 0) so that narrow features at small
``R`` are resolved.
"""

import numpy as np
from scipy import integrate, special, stats


def conditional(m, s, c):
    """(P(|w| <= c), E[min(w^2, c^2)]) for w ~ N(m, s^2), by quadrature on [-c, c]."""
    if s == 0:
        inside = abs(m) <= c
        return float(inside), (m * m if inside else c * c)
    a, b = (-c - m) / s, (c - m) / s
    q = special.ndtr(a) + special.ndtr(-b)
    dens = lambda w: np.exp(-0.5 * ((w - m) / s) ** 2) / (s * np.sqrt(2 * np.pi))
    pts = [p for p in (m - 8 * s, m, m + 8 * s) if -c < p < c]
    p_in, _ = integrate.quad(dens, -c, c, points=pts or None, epsabs=0, epsrel=1e-13, limit=200)
    e_in, _ = integrate.quad(lambda w: w * w * dens(w), -c, c, points=pts or None, epsabs=0,
                             epsrel=1e-13, limit=200)
    return p_in, e_in + c * c * q


def atoms_factors(weights, means, sigmas, R, c):
    mu = nu = 0.0
    for w, m, sd in zip(weights, means, sigmas):
        p, e = conditional(m, np.sqrt(2 * R + sd * sd), c)
        mu += w * p
        nu += w * e
    return mu, nu


def student_factors(df, scale, R, c):
    s = np.sqrt(2 * R)
    pdf = lambda e: stats.t.pdf(e, df, scale=scale)
    # Conditional values from the closed form here; quad per eps would be too slow. The window
    # quadrature above is used when the window is narrow against s, where the closed form cancels.
    def cond(m):
        a, b = (-c - m) / s, (c - m) / s
        q = special.ndtr(a) + special.ndtr(-b)
        p = 1.0 - q if q > 0.5 else special.ndtr(b) - special.ndtr(a)
        if a > 0:
            p = special.ndtr(-a) - special.ndtr(-b)
        phi = lambda u: np.exp(-u * u / 2) / np.sqrt(2 * np.pi)
        if c < 0.5 * s:
            xs, ws = np.polynomial.legendre.leggauss(30)
            w = c * xs
            d = phi((w - m) / s) / s
            return c * np.sum(ws * d), c * np.sum(ws * w * w * d) + c * c * q
        e_in = (m * m + s * s) * p + 2 * m * s * (phi(a) - phi(b)) + s * s * (a * phi(a) - b * phi(b))
        return p, e_in + c * c * q

    # Inside |eps| <= M = c + 40 s the integrand is integrated directly (no cancellation); beyond M,
    # |w| > c except with probability < e^-800, so P = 0 and E = c^2 there, and the tail mass is
    # scipy's Student-t survival function.
    M = c + 40 * s
    pts = sorted({-c - 12 * s, -c, -c + 12 * s, 0.0, c - 12 * s, c, c + 12 * s})
    edges = [-M] + [p for p in pts if -M < p < M] + [M]

    def integ(f):
        tot = 0.0
        for lo, hi in zip(edges[:-1], edges[1:]):
            if hi > lo:
                tot += integrate.quad(f, lo, hi, epsabs=0, epsrel=1e-13, limit=400)[0]
        return tot

    tail = 2 * stats.t.sf(M, df, scale=scale)
    mu = integ(lambda e: pdf(e) * cond(e)[0])
    nu = integ(lambda e: pdf(e) * cond(e)[1]) + c * c * tail
    return mu, nu


def numpy_csgd(lam, e0, z, eps, eta, c, record):
    """Plain NumPy loop of streaming C-SGD (THEORY.md section 1), fed given samples.

    ``z``: (K, d) standard normals, ``eps``: (K,) noise; returns the risk at the steps in
    ``record``. ``c = inf`` is plain SGD.
    """
    lam = np.asarray(lam, np.float64)
    trace = lam.sum()
    e = np.array(e0, np.float64)
    out = []
    for k in range(max(record) + 1):
        if k in record:
            out.append(0.5 * np.sum(lam * e * e))
        if k == max(record):
            break
        x = np.sqrt(lam) * z[k]
        r = x @ e - eps[k]
        g = r * x
        norm = np.linalg.norm(g)
        limit = c * np.sqrt(trace)
        scale = 1.0 if norm <= limit else limit / norm
        e = e - eta / trace * scale * g
    return np.array(out)


def numpy_rule_update(rule_kind, B, size, beta, S, K, x, eps, e, C, trace, zeta=None, zdp=None):
    """The update direction ``G`` of one step of a clipping rule, written from its definition
    (THEORY.md section 6) in plain NumPy, independently of clipdyn's coefficient form.

    ``x``: (B, d) data rows, ``eps``: (B,), ``zeta``: (B, d) pre-clip normals (or None),
    ``zdp``: (d,) DP normal (or None); ``K`` multiplies ``sqrt(Tr K / d)`` with ``d`` the number
    of non-padding modes (the caller passes rows already zero on padding).
    """
    def clip(g, limit):
        n = np.linalg.norm(g)
        return g if n <= limit else g * (limit / n)

    g = (x @ e - eps)[:, None] * x  # per-sample gradients (B, d)
    if rule_kind in ("per-sample", "index"):
        if zeta is not None:
            g = g + zeta
        limits = [C * (k ** (1.0 / beta)) if rule_kind == "index" else C for k in range(1, B + 1)]
        G = np.mean([clip(g[b], limits[b]) for b in range(B)], axis=0)
    else:
        groups = g.reshape(B // size, size, -1).mean(axis=1)
        G = np.mean([clip(gr, C) for gr in groups], axis=0)
    if zdp is not None:
        G = G + S * C / B * zdp
    return G
