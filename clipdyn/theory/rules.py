"""Clipping rules: how the ``B`` per-sample gradients of one step become the update ``G``.

One step uses ``B`` fresh samples, ``g_b = w_b x_b`` with ``w_b = <x_b, theta - theta*> - eps_b``,
the threshold ``C = c sqrt(Tr K)``, and ``theta <- theta - (eta / Tr K) G``. Time stays
``t = steps / Tr K`` whatever ``B`` is (THEORY.md section 6; theory/clip_rules.md):

=================  =====================================================================
rule               ``G``
=================  =====================================================================
``per-sample``     ``mean_b clip_C(g_b)`` (the default; ``B = 1`` is the paper's C-SGD)
``batch``          ``clip_C(mean_b g_b)`` (optax's ``clip_by_global_norm`` on the batch mean)
``micro:size=b``   mean over the ``B / b`` groups of ``clip_C(group mean)``
``index:beta=P``   per-sample with threshold ``C k^(1/P)`` for the ``k``-th sample
=================  =====================================================================

Two options combine with the rules: DP noise ``S`` (``G <- G + (S C / B) z``, ``z ~ N(0, I_d)``,
optax's private-aggregation convention) and pre-clip noise ``K`` (with ``per-sample`` and
``index``: ``g_b <- g_b + K sqrt(Tr K / d) zeta_b`` before clipping).

A :class:`ClipRule` is a pytree: its kind, batch size, group size and which options are on are
static (they fix array shapes); ``beta``, ``dp_noise`` and ``preclip_noise`` are arrays, so a sweep
vmaps over them as over thresholds. The same object is consumed by

* the simulators, through :meth:`ClipRule.coefficients`: given the residuals and the Gram
  matrix of the step's rows (data rows, then pre-clip rows, then the DP row) it returns the
  coefficients ``a`` with ``G = sum_i a_i row_i``; the step engine and the block engine call it
  alike, so clipping is written once;
* the ODE, C-HSGD and the criteria, through :meth:`ClipRule.ode_factors`: the rule's descent
  factor ``mu``, its ``lam``-proportional noise ``nu`` and its isotropic noise terms.

References:
    Marshall, Xiao, Agarwala, Paquette, arXiv 2406.11733; Abadi et al., "Deep learning with
    differential privacy" (CCS 2016); Chen, Wu, Hong, NeurIPS 2020; Nobile, Grohs, arXiv
    2605.02701 (PS-Clip-SGD); theory/clip_rules.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from clipdyn import validation
from clipdyn.precision import uses_x64
from clipdyn.pytrees import frozen_pytree, stack
from clipdyn.theory import batch_factors, factors
from clipdyn.theory.batch_factors import MAX_GROUP
from clipdyn.theory.noise import NoiseLaw
from clipdyn.validation import check_value

Array = jax.Array

__all__ = ["ClipRule", "RuleFactors", "clip_scale", "per_sample", "batch_mean", "micro_batch",
           "index_thresholds", "RULE_KINDS", "default_rule", "stack_rules", "static_signature",
           "FactorTable", "tabulate", "resolved"]

RULE_KINDS = ("per-sample", "batch", "micro", "index")


def clip_scale(norm: Array, limit: Array) -> Array:
    """``min(1, C / ||g||)``, written so that ``||g|| = 0`` and ``C = inf`` give 1 without 0/0 or
    inf/inf. The one clipping formula of the library: every engine and rule calls it."""
    return jnp.where(norm > limit, limit / jnp.where(norm > 0, norm, 1.0), 1.0)


class RuleFactors(NamedTuple):
    """A rule's coefficients in the ODE (theory/clip_rules.md, eq. (7)):

    ``dv_i/dt = -2 eta mu lam_i v_i + eta^2/2 (lam_i nu / Tr K + iso_d / d + iso_1)``.

    ``nu`` reduces to ``nu_abs`` for ``B = 1``; ``iso_d`` is the pre-clip noise's isotropic part
    (``O(1/d)`` per mode) and ``iso_1`` the DP noise's (``S^2 c^2 / B^2`` per mode).
    """

    mu: Array
    nu: Array
    iso_d: Array
    iso_1: Array


def _static(default):
    return dataclasses.field(default=default, metadata=dict(static=True))


@frozen_pytree
class ClipRule:
    """A clipping rule with batch size ``batch`` (see the module doc).

    Build it with :func:`per_sample`, :func:`batch_mean`, :func:`micro_batch` or
    :func:`index_thresholds` (or :func:`clipdyn.cli.specs.parse_rule`).

    Attributes:
        kind: ``"per-sample"``, ``"batch"``, ``"micro"`` or ``"index"`` (static).
        batch: samples per step ``B`` (static).
        size: samples per clipped group: 1 for per-sample and index, ``B`` for batch, ``b``
            for micro (static).
        beta: the index rule's exponent (``inf`` elsewhere: every threshold is ``C``).
        dp_noise: the DP noise multiplier ``S`` (used when ``use_dp``).
        preclip_noise: the pre-clip noise level ``K`` (used when ``use_preclip``).
        use_dp, use_preclip: whether the options are on (static: they add rows to a step).
        table: a :class:`FactorTable` of the rule's factors at one threshold (see
            :func:`tabulate`), used by the ODE instead of evaluating them; ``None`` (default)
            evaluates them exactly.
        cos_terms: the cosine terms of the group factors' COS expansion where they are traced
            (static; default ``batch_factors.DEFAULT_COS_TERMS``). :func:`resolved` raises it
            to what a law needs down to a risk; ``solve_ode`` and :func:`tabulate` do so
            themselves.
    """

    kind: str = _static("per-sample")
    batch: int = _static(1)
    size: int = _static(1)
    beta: ArrayLike = math.inf
    dp_noise: ArrayLike = 0.0
    preclip_noise: ArrayLike = 0.0
    use_dp: bool = _static(False)
    use_preclip: bool = _static(False)
    table: object = None
    cos_terms: int = _static(batch_factors.DEFAULT_COS_TERMS)

    def __post_init__(self):
        if self.kind not in RULE_KINDS:
            raise ValueError(f"clip rule {self.kind!r} is not allowed; use one of "
                             "per-sample, batch, micro:size=b, index:beta=P")
        for name in ("batch", "size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"clip rule: {name}={v!r} is not allowed; it must be an integer >= 1")
        if self.kind in ("batch", "micro") and self.size > MAX_GROUP:
            raise ValueError(f"clip rule {self.kind}: a group of {self.size} residuals is not allowed; "
                             f"groups clipped together hold at most {MAX_GROUP} (beyond, the group "
                             "factors lose accuracy: clipdyn.theory.batch_factors.MAX_GROUP)")
        if self.batch % self.size:
            raise ValueError(f"clip rule micro: size={self.size} does not divide the batch "
                             f"B={self.batch}; the micro-batch size must divide B")
        expected = {"per-sample": 1, "index": 1, "batch": self.batch}.get(self.kind, self.size)
        if self.size != expected:
            raise ValueError(f"clip rule {self.kind}: size={self.size} is not allowed; it is "
                             f"{expected} for this rule")
        check_value("clip rule index", "beta", self.beta, lambda a: ~np.isnan(a) & (a > 0),
                    "> 0 (inf: every threshold is C)")
        # At most 1e100, like every scale: their squares enter the factors (1e200 gave iso_1 = inf)
        limit = validation.MAX_MAGNITUDE
        check_value("clip rule", "dp_noise", self.dp_noise, lambda a: (a >= 0) & (a <= limit),
                    "finite, >= 0 and <= 1e100")
        check_value("clip rule", "preclip_noise", self.preclip_noise,
                    lambda a: (a >= 0) & (a <= limit), "finite, >= 0 and <= 1e100")
        validation.integer("cos_terms", self.cos_terms, 16, high=batch_factors.MAX_COS_TERMS,
                           owner="clip rule")
        if self.use_preclip and self.kind not in ("per-sample", "index"):
            raise ValueError(f"pre-clip noise is not allowed with the {self.kind} rule; it is "
                             "defined for per-sample and index clipping only")

    # ---- shapes --------------------------------------------------------------------------
    @property
    def plain(self) -> bool:
        """One sample, no options: every rule is the paper's C-SGD (the engines' fast path)."""
        return self.batch == 1 and not self.use_dp and not self.use_preclip

    @property
    def n_extra(self) -> int:
        """Rows a step adds to its ``B`` data rows: ``B`` pre-clip rows, then one DP row."""
        return (self.batch if self.use_preclip else 0) + (1 if self.use_dp else 0)

    @property
    def n_rows(self) -> int:
        return self.batch + self.n_extra

    def describe(self) -> str:
        """The rule as its SPEC (``per-sample``, ``batch``, ``micro:size=b``, ``index:beta=P``)."""
        if self.kind == "micro":
            return f"micro:size={self.size}"
        if self.kind == "index":
            return "index:beta=" + _fmt(self.beta)
        return self.kind

    # ---- the simulators' side -------------------------------------------------------------
    def thresholds(self, C: Array) -> Array:
        """Per-position thresholds ``(B,)``: ``C k^(1/beta)`` for the index rule, else ``C``."""
        C = jnp.asarray(C)
        k = jnp.arange(1, self.batch + 1, dtype=C.dtype)
        if self.kind != "index":
            return jnp.broadcast_to(C, k.shape)
        return C * k ** (1.0 / jnp.asarray(self.beta, C.dtype))

    @uses_x64
    def coefficients(self, r: Array, gram: Array, C: Array, pre_scale: Array) -> Array:
        """The update's coefficients on the step's rows: ``G = sum_i a_i row_i``.

        Args:
            r: residuals ``w_b = <x_b, e> - eps_b`` of the ``B`` data rows, ``(B,)``.
            gram: inner products of the step's rows ``(n_rows, n_rows)``: data rows
                ``x_1..x_B``, then (pre-clip) ``zeta_1..zeta_B``, then (DP) ``z``. Only the
                blocks the rule needs are read.
            C: the threshold ``c sqrt(Tr K)`` (``inf``: unclipped).
            pre_scale: ``sqrt(Tr K / d)``, the pre-clip noise's unit.

        Returns:
            ``(n_rows,)`` coefficients.

        References:
            theory/clip_rules.md, eqs. (1)-(4).
        """
        B, n = self.batch, self.size
        dtype = r.dtype
        diag = jnp.diagonal(gram)
        if self.kind in ("per-sample", "index"):
            Ck = self.thresholds(jnp.asarray(C, dtype))
            if self.use_preclip:
                a = jnp.asarray(self.preclip_noise, dtype) * pre_scale
                cross = gram[jnp.arange(B), B + jnp.arange(B)]
                sq = r * r * diag[:B] + 2.0 * r * a * cross + a * a * diag[B:2 * B]
                s = clip_scale(jnp.sqrt(jnp.maximum(sq, 0.0)), Ck)
                coef = jnp.concatenate([s * r / B, s * a / B])
            else:
                s = clip_scale(jnp.abs(r) * jnp.sqrt(diag[:B]), Ck)
                coef = s * r / B
        else:
            m = B // n
            rg = r.reshape(m, n)
            blocks = gram[:B, :B].reshape(m, n, m, n)[jnp.arange(m), :, jnp.arange(m), :]
            sq = jnp.sum(rg * jnp.sum(blocks * rg[:, None, :], axis=-1), axis=-1) / (n * n)
            s = clip_scale(jnp.sqrt(jnp.maximum(sq, 0.0)), jnp.asarray(C, dtype))
            coef = (s[:, None] * rg / (n * m)).reshape(B)
        if self.use_dp:
            dp = jnp.asarray(self.dp_noise, dtype) * jnp.asarray(C, dtype) / B
            coef = jnp.concatenate([coef, jnp.where(jnp.isfinite(dp), dp, 0.0)[None]])
        return coef

    # ---- the theory's side ----------------------------------------------------------------
    @uses_x64
    def ode_factors(self, noise: NoiseLaw, R: Array, c: Array) -> RuleFactors:
        """``(mu, nu, iso_d, iso_1)`` of the rule at risk ``R`` and threshold ``c`` (scalars).

        Per-sample: ``mu_1``, ``nu_abs / B``; batch and micro: the group factors of
        :func:`clipdyn.theory.batch_factors.group_factors` (``nu`` divided by the number of groups);
        index: the average over positions of the per-sample factors at ``c k^(1/beta)`` (``nu``
        summed and divided by ``B^2``); pre-clip noise replaces the per-sample factors by
        :func:`clipdyn.theory.batch_factors.preclip_factors` and adds their isotropic part; DP noise
        adds ``S^2 c^2 / B^2`` to every mode (theory/clip_rules.md, eqs. (5)-(9)). ``c = inf``
        gives unclipped SGD with batch ``B``; the DP term then has no finite scale and is 0.
        """
        B = self.batch
        zero = jnp.zeros_like(jnp.asarray(R, float))
        if self.table is not None:
            return self.table.factors(R, c, self._dp_term(c))
        if self.plain:  # every rule is the paper's C-SGD with one sample and no options
            m, na, _ = factors._factors_scalar(noise, R, c)
            return RuleFactors(m, na, zero, zero)
        if self.kind in ("per-sample", "index"):
            c = jnp.asarray(c, float)
            if self.use_preclip:
                K = jnp.asarray(self.preclip_noise, float)

                def one(cc):
                    return batch_factors.preclip_factors(noise, R, cc, K)
            else:
                def one(cc):
                    m, na, _ = factors._factors_scalar(noise, R, cc)
                    return m, na, zero

            if self.kind == "index":
                m, nu, iso = jax.vmap(one)(self.thresholds(c))
                mu_, nu_, iso_d = jnp.mean(m), jnp.sum(nu) / (B * B), jnp.sum(iso) / (B * B)
            else:
                mu_, nu_, iso = one(c)
                nu_ = nu_ if B == 1 else nu_ / B
                iso_d = iso / B
        else:
            mu_, nu_g = batch_factors.group_factors(noise, R, c, self.size, cos_terms=self.cos_terms)
            nu_ = nu_g / (B // self.size)
            iso_d = zero
        return RuleFactors(mu_, nu_, iso_d, self._dp_term(c) + zero)

    def _dp_term(self, c) -> Array:
        """DP noise per mode, ``S^2 c^2 / B^2`` (0 without DP, and for ``c = inf``)."""
        if not self.use_dp:
            return jnp.zeros(())
        c = jnp.asarray(c, float)
        S = jnp.asarray(self.dp_noise, float)
        return jnp.where(jnp.isfinite(c), S * S * c * c / (self.batch * self.batch), 0.0)

    @uses_x64
    def sgd_noise(self, noise: NoiseLaw, R: Array) -> Array:
        """``nu`` of unclipped SGD with this batch size, ``(2R + sigma^2) / B``: the reference
        that makes the rule's ``nu`` unitless in the criteria."""
        return (2.0 * jnp.asarray(R, float) + noise.second_moment) / self.batch


class FactorTable(NamedTuple):
    """A rule's factors at one threshold ``c`` on a grid of ``log R``, with their derivatives, for
    cubic Hermite interpolation (theory/clip_rules.md, section 5).

    Group rules under non-Gaussian noise evaluate their factors by Laplace inversion, which is
    accurate but costs thousands of transform evaluations; an ODE needs them at every stage of
    every step. With a constant threshold they depend on ``R`` alone, so :func:`tabulate` computes
    them once. Asked at another threshold, the table answers ``nan`` (the ODE then stops with an
    error) instead of a wrong number.
    """

    c: Array
    log_R: Array
    log_mu: Array
    log_nu: Array
    iso_d: Array
    d_log_mu: Array
    d_log_nu: Array
    d_iso_d: Array

    def factors(self, R, c, iso_1) -> RuleFactors:
        x = jnp.log(jnp.asarray(R, float))
        x = jnp.clip(x, self.log_R[0], self.log_R[-1])
        mu_ = jnp.exp(_hermite(x, self.log_R, self.log_mu, self.d_log_mu))
        nu_ = jnp.exp(_hermite(x, self.log_R, self.log_nu, self.d_log_nu))
        iso = _hermite(x, self.log_R, self.iso_d, self.d_iso_d)
        ok = jnp.asarray(c, float) == self.c
        bad = jnp.nan
        return RuleFactors(jnp.where(ok, mu_, bad), jnp.where(ok, nu_, bad), jnp.where(ok, iso, bad),
                           iso_1 + jnp.zeros_like(mu_))


def _hermite(x, xs, ys, dys):
    """Cubic Hermite interpolation of ``(xs, ys)`` with slopes ``dys`` at ``x`` (inside ``xs``)."""
    i = jnp.clip(jnp.searchsorted(xs, x, side="right") - 1, 0, xs.shape[0] - 2)
    h = xs[i + 1] - xs[i]
    u = (x - xs[i]) / h
    h00 = (1 + 2 * u) * (1 - u) ** 2
    h10 = u * (1 - u) ** 2
    h01 = u * u * (3 - 2 * u)
    h11 = u * u * (u - 1)
    return h00 * ys[i] + h10 * h * dys[i] + h01 * ys[i + 1] + h11 * h * dys[i + 1]


def tabulate(rule: ClipRule, noise: NoiseLaw, c, *, R_min: float = 1e-8, R_max: float = 1e6,
             per_decade: int = 8) -> ClipRule:
    """``rule`` carrying a :class:`FactorTable` of its ODE factors at the threshold ``c``.

    The factors and their ``log R``-derivatives (forward-mode autodiff) are computed at
    ``per_decade`` points per decade of ``R`` in ``[R_min, R_max]``, and the ODE interpolates
    them by cubic Hermite polynomials: the error is ``O(h^4)`` in the grid step ``h`` (measured
    at about 1e-5 relative at the default 8 points per decade, 16 times less at 16, for Gaussian
    and Student-t noise; tests/test_rules.py). ``R`` outside
    the range is clamped to it: keep ``R_min`` below the risks a run reaches (``R_max`` is the
    default divergence bound ``1e6 R0`` for ``R0 = 1``).

    Args:
        rule: the rule (its DP term is kept exact: it depends on ``c`` only).
        noise: the noise law.
        c: the (finite, > 0) threshold the table is for.
        R_min, R_max, per_decade: the grid.

    Returns:
        A copy of ``rule`` with ``table`` set.
    """
    from clipdyn.precision import x64

    if not isinstance(rule, ClipRule):
        raise ValueError("tabulate: rule must be a clipdyn clipping rule (per_sample, batch_mean, "
                         f"micro_batch or index_thresholds); {validation.got(rule)}")
    validation.noise_law(noise, "tabulate: noise")
    c = float(c)
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"tabulate: c={c} is not allowed; the threshold must be finite and > 0")
    if not (0 < R_min < R_max < math.inf):
        raise ValueError(f"tabulate: need 0 < R_min < R_max < inf; got {R_min}, {R_max}")
    n = int(math.ceil(per_decade * math.log10(R_max / R_min))) + 1
    with x64():
        log_R = jnp.linspace(math.log(R_min), math.log(R_max), n)
        plain = resolved(dataclasses.replace(rule, table=None), noise, R_min)
        vals, slopes = _factor_grid(plain, noise, jnp.asarray(c), log_R)
        table = FactorTable(jnp.asarray(c), log_R, vals[:, 0], vals[:, 1], vals[:, 2],
                            slopes[:, 0], slopes[:, 1], slopes[:, 2])
    return dataclasses.replace(rule, table=table)


@jax.jit
def _factor_grid(rule: ClipRule, noise: NoiseLaw, c, log_R):
    """``(log mu, log nu, iso_d)`` and their ``log R``-derivatives on the grid ``log_R``, compiled
    once per kind of rule and law and grid size (the threshold is an argument: a study
    tabulating many thresholds compiles once)."""

    def logs(x):
        f = rule.ode_factors(noise, jnp.exp(x), c)
        return jnp.stack([jnp.log(f.mu), jnp.log(f.nu), f.iso_d])

    # A few grid points at a time: the Laplace inversion's intermediate arrays are large.
    return jax.lax.map(lambda x: jax.jvp(logs, (x,), (jnp.ones_like(x),)), log_R, batch_size=8)


def _fmt(x) -> str:
    try:
        return f"{float(x):g}"
    except (TypeError, ValueError):
        return "traced"


def _options(dp_noise, preclip_noise) -> dict:
    # One rule, one number each (a sweep's rules are stacked by stack_rules): an array here was
    # accepted and failed in the factors with a shape error naming nothing.
    for name, value in (("dp_noise", dp_noise), ("preclip_noise", preclip_noise)):
        if value is not None:
            validation.single(name, value, owner="clip rule", what="one rule")
    return dict(dp_noise=0.0 if dp_noise is None else dp_noise,
                preclip_noise=0.0 if preclip_noise is None else preclip_noise,
                use_dp=dp_noise is not None, use_preclip=preclip_noise is not None)


def per_sample(batch: int = 1, *, dp_noise=None, preclip_noise=None) -> ClipRule:
    """Per-sample clipping, ``G = mean_b clip_C(g_b)`` (the default rule).

    Args:
        batch: samples per step ``B``.
        dp_noise: DP noise multiplier ``S`` (``None``: off).
        preclip_noise: pre-clip noise ``K`` (``None``: off).

    Example:
        >>> from clipdyn.theory import rules
        >>> rules.per_sample(8, dp_noise=0.5).n_rows
        9
    """
    return ClipRule("per-sample", batch, 1, **_options(dp_noise, preclip_noise))


def batch_mean(batch: int, *, dp_noise=None) -> ClipRule:
    """Batch clipping, ``G = clip_C(mean_b g_b)`` (optax's ``clip_by_global_norm``)."""
    return ClipRule("batch", batch, batch, **_options(dp_noise, None))


def micro_batch(batch: int, size: int, *, dp_noise=None) -> ClipRule:
    """Micro-batch clipping: each group of ``size`` consecutive samples is averaged and clipped,
    and the ``batch / size`` clipped group means are averaged (clipping each accumulated
    micro-batch, as in gradient accumulation with ``optax.MultiSteps``)."""
    return ClipRule("micro", batch, size, **_options(dp_noise, None))


def index_thresholds(batch: int, beta, *, dp_noise=None, preclip_noise=None) -> ClipRule:
    """Per-sample clipping with threshold ``C k^(1/beta)`` for the ``k``-th sample of the batch
    (PS-Clip-SGD's ``alpha k^(1/beta)`` with ``alpha = C``)."""
    validation.single("beta", beta, owner="clip rule index", what="one rule")
    return ClipRule("index", batch, 1, beta, **_options(dp_noise, preclip_noise))


def static_signature(rule: ClipRule) -> tuple:
    """What must agree between the rules of one compiled program (array shapes and branches)."""
    return (rule.kind, rule.batch, rule.size, rule.use_dp, rule.use_preclip, rule.cos_terms)


def resolved(rule: ClipRule, noise: NoiseLaw, R_min) -> ClipRule:
    """``rule`` with the cosine terms its group factors need under ``noise`` down to ``R_min``.

    Group rules (``batch``, ``micro``) under laws with shifted components (atoms, two-point and
    asymmetric mixtures) need more terms of the COS expansion as ``R`` falls
    (:func:`clipdyn.theory.batch_factors.cos_terms_needed`); where their factors are traced (the
    ODE, C-HSGD, the criteria) the rule's ``cos_terms`` is used. Other rules and laws come back
    unchanged, and a rule is never lowered.

    Raises:
        ValueError: where the law needs more than ``batch_factors.MAX_COS_TERMS`` at ``R_min``.
    """
    if not isinstance(rule, ClipRule):
        raise ValueError(f"resolved: rule must be a clipdyn clipping rule; {validation.got(rule)}")
    if rule.kind not in ("batch", "micro") or rule.size == 1:
        return rule
    need = batch_factors.cos_terms_needed(noise, R_min, rule.size)
    return rule if need <= rule.cos_terms else dataclasses.replace(rule, cos_terms=need)


@uses_x64
def stack_rules(rules) -> ClipRule:
    """One batched rule (array leaves with a leading axis) from rules sharing their static fields."""
    rules = list(rules)
    sigs = {static_signature(r) for r in rules}
    if len(sigs) != 1:
        raise ValueError(f"rules of one program must share kind, batch size and options; got {sorted(sigs)}")
    return stack(rules, float)


def default_rule() -> ClipRule:
    """The paper's C-SGD: one sample per step, no options."""
    return ClipRule()
