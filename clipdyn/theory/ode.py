"""The deterministic equivalent of clipped SGD: an ODE for the mode energies.

With ``v_i(t) = 1/2 <theta_t - theta*, u_i>^2`` and ``R = sum_i lam_i v_i`` (THEORY.md section 2;
theory/derivation.md, eq. (2.7)):

    dv_i/dt = -2 eta mu_c(R) lam_i v_i + eta^2 lam_i nu_abs_c(R) / (2 Tr K),

where ``(eta, c) = schedule(t, R)``. The modes couple only through the scalar ``R``, so the
Jacobian is ``diag(-2 eta mu lam) + u lam^T``: diagonal plus rank one. The solver is the
L-stable, stiffly accurate Rosenbrock method RODAS4 (Hairer and Wanner, *Solving ODEs II*,
section IV.7) with embedded error estimate and adaptive steps; its linear systems
``(I / (h gamma) - J) k = r`` are solved by the Sherman-Morrison formula in ``O(d)``
(theory/derivation.md, eq. (6.2)), so no ``d x d`` matrix is ever formed.

Modes with equal ``(lam_i, v_i(0))`` stay equal for ever and are merged before solving (the
identity spectrum is one mode whatever ``d``); ``lam_i = 0`` modes never move.

References:
    Marshall, Xiao, Agarwala, Paquette, arXiv 2406.11733, eq. (ODE) / section 2;
    theory/derivation.md, sections 2 and 6.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clipdyn import validation
from clipdyn.precision import uses_x64
from clipdyn.theory import factors, rules, schedules
from clipdyn.theory.problem import Problem, check_problem

Array = jax.Array

__all__ = ["ODEResult", "ODESolverError", "solve_ode", "ode_risk", "STATUS"]

# The solver's working set per mode (the state, its stages, error estimate and merged copy):
# peak memory grew by 140-180 bytes per mode from d = 1e6 to 8e6 (measured 2026-11-23).
_BYTES_PER_MODE = 192

STATUS = {0: "ok", 1: "diverged", 2: "step limit reached", 3: "step size underflow",
          4: "the schedule gave a learning rate or threshold < 0 (or nan), or an infinite "
             "learning rate"}

# RODAS4 coefficients (Hairer & Wanner 1996, the RODAS code, method choice 1), padded to 6x6 so
# the stages run in one scan. Row i of _A gives stage i's point v + sum_j A[i, j] k_j; rows 4 and 5
# are the stiffly accurate ones (Y_5 = Y_4 + k_5, and the solution is Y_5 + k_6).
_GAMMA = 0.25
_TINY = 1e-300  # keeps error scales positive if R underflows to 0
_A = np.zeros((6, 6))
_A[1, :1] = (1.544000000000000,)
_A[2, :2] = (0.9466785280815826, 0.2557011698983284)
_A[3, :3] = (3.314825187068521, 2.896124015972201, 0.9986419139977817)
_A[4, :4] = (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950)
_A[5] = _A[4] + np.eye(6)[4]
_B = _A[5] + np.eye(6)[5]
_C = np.zeros((6, 6))
_C[1, :1] = (-5.668800000000000,)
_C[2, :2] = (-2.430093356833875, -0.2063599157091915)
_C[3, :3] = (-0.1073529058151375, -9.594562251023355, -20.47028614809616)
_C[4, :4] = (7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160)
_C[5, :5] = (8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136,
             -6.058818238834054)
_CT = np.array([0.0, 0.386, 0.21, 0.63, 1.0, 1.0])
_D = np.array([0.25, -0.1043, 0.1035, -0.03620000000000023, 0.0, 0.0])


class ODESolverError(RuntimeError):
    """The ODE solver could not reach the requested time (not a divergence of the dynamics)."""


class ODEResult(NamedTuple):
    """Output of :func:`solve_ode`.

    Attributes:
        t: output times, shape ``(n,)``.
        risk: ``R(t)``; ``nan`` after a divergence (see ``diverged``), shape ``(n,)``.
        v: mode energies ``v_i(t)``, shape ``(n, d)``, when requested; else ``None``.
        diverged: whether ``R`` exceeded ``divergence_factor * R0`` or became infinite, or grew
            so fast that no step could follow it (the risk's feedback on itself outran ``1/h``
            at the smallest step, ``1e-13`` of the problem's time scale: learning rates of
            1e20).
        diverged_at: the time it did (``nan`` if it did not): where ``R`` crossed the bound,
            interpolated as exponential growth within the solver step that crossed it (the
            step's start when ``R`` became infinite in it, or when no step could follow it).
        n_steps: accepted steps. n_rejected: rejected steps.
    """

    t: Array
    risk: Array
    v: Array | None
    diverged: Array
    diverged_at: Array
    n_steps: Array
    n_rejected: Array


class _Core(NamedTuple):
    """What the jitted solver needs: merged modes and their multiplicities."""

    lam: Array
    mult: Array
    v0: Array
    trace: Array
    dim: Array


def _coefficients(schedule: Callable, noise, trace: Array, rule, dim: Array) -> Callable:
    """``(t, R) -> (a, b, iso)`` with ``a = eta mu``, ``b = eta^2 nu / (2 Tr K)`` and the
    isotropic term ``iso = eta^2 (iso_d / d + iso_1) / 2`` of a clipping rule's pre-clip and DP
    noise (theory/clip_rules.md, eq. (7); 0 for the paper's C-SGD)."""

    def coef(t, R):
        eta, c = schedule(t, R)
        if rule is None or rule.plain:
            m, na, _ = factors._factors_scalar(noise, R, c)
            iso = jnp.zeros_like(na)
        else:
            f = rule.ode_factors(noise, R, c)
            m, na = f.mu, f.nu
            iso = eta * eta * (f.iso_d / dim + f.iso_1) / 2.0
        return jnp.stack([eta * m, eta * eta * na / (2.0 * trace), iso])

    return coef


def _solve_core(core: _Core, noise, schedule, t_out: Array, rtol, atol, max_steps: int,
                divergence_factor, return_modes: bool, rule=None):
    lam, mult, v0, trace, dim = core
    w = lam * mult  # dR/dv
    R0 = jnp.sum(w * v0)
    coef = _coefficients(schedule, noise, trace, rule, dim)
    n_modes = jnp.sum(mult)
    # Schedules constant in t between jumps (StepDecay.next_jump): a step ends at each jump and
    # sees one rate, its middle's; the others (TimeVarying) are evaluated at the stage times.
    piecewise = hasattr(schedule, "next_jump")
    # clipdyn's constants, steps and feedback rules were checked when built; the values of a
    # TimeVarying's functions or a user's class are checked here (a negative threshold ran as
    # unclipped SGD, a negative rate was integrated, a nan was reported as a step size underflow).
    check_values = schedules.checks_values(schedule)

    def rhs(t, v):
        ab = coef(t, jnp.dot(w, v))
        return lam * (-2.0 * ab[0] * v + ab[1]) + ab[2]

    def step(t, v, h):
        R = jnp.dot(w, v)
        t_coef = t + 0.5 * h if piecewise else t
        ab = coef(t_coef, R)
        d_ab = jax.jacfwd(coef, argnums=(0, 1))(t_coef, R)  # (d/dt, d/dR) of (a, b)
        diag = -2.0 * ab[0] * lam
        u = lam * (-2.0 * d_ab[1][0] * v + d_ab[1][1]) + d_ab[1][2]
        f_t = lam * (-2.0 * d_ab[0][0] * v + d_ab[0][1]) + d_ab[0][2]
        m_inv = 1.0 / (1.0 / (h * _GAMMA) - diag)
        z = u * m_inv
        denom = 1.0 - jnp.dot(w, z)

        def solve(r):  # (I/(h gamma) - diag - u w^T)^{-1} r, Sherman-Morrison
            y = r * m_inv
            return y + z * (jnp.dot(w, y) / denom)

        def stage(ks, i):
            y = v + jnp.tensordot(jnp.asarray(_A)[i], ks, axes=1)
            r = rhs(t + 0.5 * h if piecewise else t + jnp.asarray(_CT)[i] * h, y)
            r = r + jnp.tensordot(jnp.asarray(_C)[i], ks, axes=1) / h + h * jnp.asarray(_D)[i] * f_t
            return ks.at[i].set(solve(r)), None

        ks, _ = jax.lax.scan(stage, jnp.zeros((6,) + v.shape, v.dtype), jnp.arange(6))
        v_new = v + jnp.tensordot(jnp.asarray(_B), ks, axes=1)
        # Tolerances follow the state, not the start: R is controlled relatively, and the modes'
        # absolute floor is relative to the current largest mode energy. With a floor fixed at
        # R0 the relative accuracy would collapse once R decays far below R0 (noiseless problems
        # decay exponentially for ever).
        size = jnp.maximum(jnp.abs(v), jnp.abs(v_new))
        err_v = ks[5] / (atol * jnp.max(size) + rtol * size + _TINY)
        err_modes = jnp.sqrt(jnp.sum(mult * err_v * err_v) / n_modes)
        R_new = jnp.dot(w, v_new)
        err_R = jnp.abs(jnp.dot(w, ks[5])) / (rtol * jnp.maximum(jnp.abs(R), jnp.abs(R_new)) + _TINY)
        err = jnp.maximum(err_modes, err_R)
        ok = jnp.isfinite(err) & (denom > 0) & jnp.all(jnp.isfinite(v_new))
        growth = jnp.dot(w, lam * (-2.0 * ab[0] * v + ab[1]) + ab[2]) / jnp.maximum(R, _TINY)
        return v_new, jnp.where(ok, err, jnp.inf), jnp.all(jnp.isfinite(ab)), denom > 0, growth

    # Initial step: a small fraction of the fastest relaxation time 1 / (2 eta mu lam_max).
    a0 = coef(t_out[0], R0)[0]
    rate = 2.0 * jnp.abs(a0) * jnp.max(lam)
    h0 = jnp.minimum(t_out[-1] - t_out[0], 0.01 / jnp.maximum(rate, 1e-300))
    h0 = jnp.where(h0 > 0, h0, 1.0)
    # The step-size floor is relative to the problem's own time scale (the fastest relaxation
    # time, or the horizon if shorter) and to t: an absolute 1e-13 stopped fast problems that
    # are well posed (a spectrum at 1e12, a learning rate of 1e6 diverging in its first instants)
    # with "step size underflow" at t = 0.
    # At most 1: a slow start (a warm-up) must not raise the floor above the absolute 1e-13 that
    # a later jump of the learning rate needs (1e-13 T stopped T = 1e5 at its jump).
    scale = jnp.minimum(jnp.minimum(t_out[-1] - t_out[0], 1.0 / jnp.maximum(rate, 1e-300)), 1.0)
    scale = jnp.where(scale > 0, scale, 1.0)

    def advance(carry, t_target):
        def cond(c):
            t, _, _, status, n, _ = c
            return (t < t_target) & (status == 0)

        def body(c):
            t, v, h, status, n, nrej = c
            t_stop = jnp.minimum(t_target, schedule.next_jump(t)) if piecewise else t_target
            last = h >= t_stop - t
            h_try = jnp.where(last, t_stop - t, h)
            v_new, err, coef_finite, solvable, growth = step(t, v, h_try)
            refused, t_bad = jnp.asarray(False), t
            if check_values:  # at both ends of the step (a nan ahead would only shrink it)
                def allowed(s):
                    return schedules.values_allowed(*schedule(s, jnp.dot(w, v)))

                ok_start, ok_end = allowed(t), allowed(t + h_try)
                refused = (status == 0) & ~(ok_start & ok_end)
                t_bad = jnp.where(ok_start, t + h_try, t)
                status = jnp.where(refused, 4, status)
            accept = err <= 1.0
            fac = jnp.clip(0.9 * err ** -0.25, 0.2, 6.0)
            fac = jnp.where(jnp.isfinite(err), fac, 0.2)
            h_next = h_try * fac
            h_next = jnp.where(accept & last, jnp.maximum(h_next, h), h_next)
            t_new = jnp.where(accept, jnp.where(last, t_stop, t + h_try), t)
            v_acc = jnp.where(accept, v_new, v)
            R_new = jnp.dot(w, v_acc)
            # a refusal, not a divergence, even where the refused values made the risk blow up
            blown = ~refused & (~coef_finite | (accept & ~(R_new <= divergence_factor * R0)))
            status = jnp.where(blown, 1, status)
            # A step that cannot shrink further while the risk's feedback on itself (the
            # rank-one part of the Jacobian) outruns 1 / h is a divergence at t: growth that
            # fast passes any bound at once (eta = 1e20 unclipped reaches 1e6 R0 within ~1e-34
            # of ODE time). Any other failure at the floor (a jump of the schedule, say) stays
            # an error, not a result. So is a risk growing at a rate g that would cross the bound
            # within 1e4 floor steps (1e-9 of t): a learning rate jumping to 1e6 crossed it
            # within 1.4e-11 of the jump, and Rosenbrock's steps, rejected down to the floor
            # first, reported an underflow for jumps from 3e5 to 3e6 (diverged on either side).
            floor = 1e-13 * jnp.maximum(scale, jnp.abs(t))
            tiny = (status == 0) & (h_next < floor)
            R_now = jnp.dot(w, v)
            to_bound = jnp.log(divergence_factor * R0 / jnp.maximum(R_now, _TINY))
            racing = (growth > 0) & (to_bound < 1e4 * floor * growth)
            status = jnp.where(tiny, jnp.where(solvable & ~racing, 3, 1), status)
            status = jnp.where((status == 0) & (n + 1 >= max_steps), 2, status)
            # The crossing of divergence_factor * R0 lies inside the step: interpolated as
            # exponential growth between its ends (the start of the step, reported before, was
            # early by up to a step: 6.8e-4 relative against an event-located Radau solve).
            R_old, R_bound = jnp.dot(w, v), divergence_factor * R0
            crossed = blown & coef_finite & jnp.isfinite(R_new) & (R_old > 0) & (R_old < R_bound)
            frac = jnp.log(R_bound / jnp.where(crossed, R_old, 1.0)) / jnp.log(
                jnp.where(crossed, R_new / R_old, 2.0))
            t_new = jnp.where(blown, t + jnp.where(crossed, jnp.clip(frac, 0.0, 1.0) * h_try, 0.0), t_new)
            t_new = jnp.where(status == 4, t_bad, t_new)  # where the bad value was seen
            v_acc = jnp.where(blown, v, v_acc)
            return (t_new, v_acc, h_next, status, n + accept.astype(n.dtype),
                    nrej + (~accept).astype(n.dtype))

        t, v, h, status, n, nrej = carry
        t, v, h, status, n, nrej = jax.lax.while_loop(cond, body, (t, v, h, status, n, nrej))
        good = status == 0
        risk = jnp.where(good, jnp.dot(w, v), jnp.nan)
        out = (risk, jnp.where(good, v, jnp.nan)) if return_modes else (risk,)
        return (t, v, h, status, n, nrej), (out, t)

    init = (t_out[0], v0, h0, jnp.asarray(0), jnp.asarray(0), jnp.asarray(0))
    (t_end, _, _, status, n, nrej), (outs, _) = jax.lax.scan(advance, init, t_out[1:])
    risk = jnp.concatenate([R0[None], outs[0]])
    modes = jnp.concatenate([v0[None], outs[1]]) if return_modes else None
    return risk, modes, status, t_end, n, nrej


@uses_x64
@functools.partial(jax.jit, static_argnames=("max_steps", "return_modes"))
def ode_risk(core: _Core, noise, schedule, t_out: Array, rtol=1e-9, atol=1e-12,
             max_steps: int = 200_000, divergence_factor=1e6, return_modes: bool = False,
             rule=None):
    """Jitted, vmappable solver on merged modes (see :func:`solve_ode` for the friendly entry).

    Returns:
        ``(risk, modes, status, t_reached, n_steps, n_rejected)``; ``status`` indexes
        :data:`STATUS`.
    """
    return _solve_core(core, noise, schedule, t_out, rtol, atol, max_steps, divergence_factor,
                       return_modes, rule)


@uses_x64
def merge_modes(problem: Problem) -> tuple[_Core, np.ndarray, np.ndarray]:
    """Merge modes with equal ``(lam, v0)`` and drop ``lam = 0`` modes.

    Returns:
        ``(core, index, moving)``: ``index[i]`` is the merged mode of original mode ``i``
        (where ``moving[i]``), for expanding mode energies back.
    """
    lam = np.asarray(problem.lam, float)
    v0 = np.asarray(problem.v0, float)
    moving = lam > 0
    keys = np.stack([lam[moving], v0[moving]], axis=1)
    uniq, index, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    core = _Core(jnp.asarray(uniq[:, 0]), jnp.asarray(counts, float), jnp.asarray(uniq[:, 1]),
                 jnp.asarray(lam.sum()), jnp.asarray(float(lam.size)))
    return core, np.ravel(index), moving


def resolved_rule(rule, noise, risk, who: str = "solve_ode"):
    """``rule`` with the cosine terms its traced group factors need down to the lowest risk a
    solve reached (:func:`clipdyn.theory.rules.resolved`); ``rule`` itself when it has them.

    The solvers that trace a rule's factors (:func:`solve_ode`,
    :func:`clipdyn.theory.tuning.ode_final_risks`) solve again with the rule this returns until it
    comes back unchanged. ``who`` names the solver in the error raised where the law is beyond
    the COS expansion at that risk."""
    if rule is None or rule.table is not None:  # a table's accuracy is its own
        return rule
    r = np.asarray(risk, float)
    r = r[np.isfinite(r) & (r > 0)]
    if r.size == 0:
        return rule
    try:
        return rules.resolved(rule, noise, float(r.min()))
    except ValueError as e:
        raise ValueError(f"{who}: the risk fell to R={float(r.min()):.6g}, where {e}") from None


@uses_x64
def solve_ode(
    problem: Problem,
    schedule,
    T: float | None = None,
    points: int = 101,
    *,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    max_steps: int | None = None,
    divergence_factor: float = 1e6,
    return_modes: bool = False,
    times=None,
    rule=None,
) -> ODEResult:
    """Solve the ODE for ``R(t)`` on ``points`` evenly spaced times in ``[0, T]``.

    Args:
        problem: spectrum, start and noise (:func:`clipdyn.theory.problem.make_problem`).
        schedule: a schedule from :mod:`clipdyn.theory.schedules` (``Constant(eta, inf)`` is SGD).
        T: horizon, ``> 0``.
        points: number of output times (including 0 and ``T``), ``>= 2``.
        rtol, atol: error tolerances. ``R`` is controlled relatively (``rtol``); each mode
            ``v_i`` to ``rtol |v_i| + atol max_j |v_j|`` at the current time, so accuracy holds
            however far ``R`` decays. The defaults give ``R`` to about 1e-9 relative.
        max_steps: step limit (default ``200_000`` plus the number of output times: each output
            time ends a step, so a million of them needed more than the old fixed limit).
        divergence_factor: the dynamics are reported diverged once ``R > factor * R0``.
        return_modes: also return ``v_i(t)`` at the output times (``points x d`` floats).
        times: explicit output times instead (increasing, starting at 0; ``T`` and ``points``
            are then ignored), e.g. a simulation's step times.
        rule: a :class:`clipdyn.theory.rules.ClipRule` (default: one sample per step, per-sample
            clipping: the paper's C-SGD). Modes with ``lam = 0`` do not enter the risk and are
            not integrated: with isotropic (DP or pre-clip) noise their returned energies stay
            at ``v_i(0)``.

    Returns:
        :class:`ODEResult`.

    Raises:
        ValueError: for a bad argument: ``problem`` not a :class:`Problem`, ``schedule`` not a
            schedule, ``T`` not one finite number ``> 0``, ``points`` not an integer in
            ``[2, 1e6]``, ``rtol`` outside ``[1e-14, 0.1]``, ``atol`` not one finite number
            ``>= 0``, ``max_steps`` not an integer in ``[1, 2^31 - 1]``, ``divergence_factor``
            not one finite number ``> 1``, ``return_modes`` not a bool.
        ODESolverError: when the step limit is reached or the step size underflows.

    References:
        theory/derivation.md, eqs. (2.7) and (6.1)-(6.3).
    """
    check_problem(problem)
    validation.schedule(schedule)
    validation.clip_rule(rule)
    validation.rtol(rtol)
    validation.single("atol", atol, what="one tolerance")
    validation.check_value("", "atol", atol, lambda a: np.isfinite(a) & (a >= 0), "finite and >= 0")
    if max_steps is not None:  # the solver counts its steps in int32
        max_steps = validation.integer("max_steps", max_steps, 1, high=2**31 - 1)
    return_modes = validation.flag("return_modes", return_modes)
    validation.divergence_factor(divergence_factor)
    if times is not None:
        validation.check_real("", "times", times)
        t_out = np.asarray(times, dtype=float)
        if (t_out.ndim != 1 or t_out.size < 2 or t_out[0] != 0 or not np.all(np.isfinite(t_out))
                or np.any(np.diff(t_out) <= 0)):
            raise ValueError("times must be finite, increasing, start at 0 and have at least 2 "
                             "entries")
        T, points = float(t_out[-1]), t_out.size
    elif T is None:
        raise ValueError("solve_ode needs the horizon T (output times linspace(0, T, points)) or "
                         "the output times themselves, times=")
    validation.single("T", T, what="one horizon")
    validation.positive("T", T)
    points = validation.integer("points", points, 2, high=validation.MAX_POINTS)
    if max_steps is None:
        max_steps = 200_000 + points
    validation.one_schedule(schedule, "solve_ode")
    d = int(np.shape(problem.lam)[0])
    validation.check_memory(
        _BYTES_PER_MODE * d + 8.0 * points * ((d + 2) if return_modes else 2),
        f"solve_ode (d = {d}, {points} output times{', with the modes' if return_modes else ''})")
    core, index, moving = merge_modes(problem)
    t_out = jnp.asarray(t_out) if times is not None else jnp.linspace(0.0, float(T), int(points))
    while True:  # ends: each repeat doubles the rule's cosine terms at least, up to their cap
        risk, modes, status, t_end, n, nrej = ode_risk(
            core, problem.noise, schedule, t_out, rtol, atol, int(max_steps), divergence_factor,
            return_modes, rule,
        )
        finer = resolved_rule(rule, problem.noise, risk)
        if finer is rule:
            break
        rule = finer  # the risk went where the group factors need more cosine terms: again
    status = int(status)
    if status == 4:
        raise ValueError(f"solve_ode: at t={float(t_end):.6g} {STATUS[4]}; a schedule's learning "
                         "rate and threshold (a TimeVarying's eta_fn and clip_fn) must stay >= 0, "
                         "the rate finite (clip inf: unclipped)")
    if status in (2, 3):
        raise ODESolverError(
            f"ODE solver stopped at t={float(t_end):.6g} of T={T}: {STATUS[status]} "
            f"after {int(n)} steps ({int(nrej)} rejected); try a larger max_steps or looser rtol"
        )
    diverged = status == 1
    v_full = None
    if return_modes:
        v_full = np.tile(np.asarray(problem.v0, float), (int(points), 1))
        v_full[:, moving] = np.asarray(modes)[:, index]
        v_full = jnp.asarray(v_full)
    return ODEResult(
        t=t_out,
        risk=risk,
        v=v_full,
        diverged=jnp.asarray(diverged),
        diverged_at=jnp.asarray(float(t_end) if diverged else np.nan),
        n_steps=n,
        n_rejected=nrej,
    )
