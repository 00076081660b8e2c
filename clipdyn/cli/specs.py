"""SPEC strings: the command line's names for noise laws, spectra, thresholds and value lists.

Grammar: ``name`` or ``name:key=value,key=value``; lists inside a value are ``/``-separated.

* noise: ``gaussian:sigma=S``, ``student-t:df=N,scale=S``, ``cauchy:scale=S``,
  ``rademacher:sigma=S``, ``mixture:weights=W1/W2,means=M1/M2,sigmas=S1/S2``,
  ``empirical:file=PATH.npy``;
* spectrum: ``identity:d=D``, ``power-law:d=D,alpha=A``, ``file:PATH.npy``;
* threshold: a number, ``inf``, ``max-ccc``, or ``heuristic:kappa=K[,sigma2=S]``;
* a sweep's thresholds: a LIST, ``max-ccc``, or ``heuristic:kappa=K1/K2/...[,sigma2=S]``;
* LIST: comma-separated numbers, or ``START:STOP:NUM`` (NUM evenly spaced values, both ends in;
  START and STOP finite, NUM at most :data:`MAX_LIST`).

A key may appear once in a SPEC, and only the keys a name takes are accepted. Every parse error is
a ``ValueError`` whose message names the bad text and what is allowed; the values are then checked
by the constructors, with the rules of :mod:`clipdyn.validation`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from clipdyn import validation
from clipdyn.theory import noise as noise_laws
from clipdyn.theory import problem as problems

__all__ = ["parse_noise", "parse_spectrum", "parse_clip", "parse_clip_list", "parse_list", "ClipSpec",
           "parse_float", "parse_int", "split_items", "MAX_LIST", "NEGATIVE_VALUE"]

MAX_LIST = 1_000_000
"""The most values a LIST may hold (``START:STOP:NUM``): 8 MB of float64, far beyond any grid a
sweep can run, and small enough that a typo such as ``0:1:1e12`` is refused at once instead of
exhausting memory."""

NEGATIVE_VALUE = re.compile(r"^-(?:\d|\.\d|inf|nan)", re.IGNORECASE)
"""Command-line words that are values although they start with ``-``: ``-1``, ``-1e-3``, ``-.5``,
``-inf``, ``-nan``, ``-1,2``, ``-1:1:3``. argparse's own test (plain integers and decimals only)
misses ``-1e-3``, ``-inf``, ``-nan``, ``-1,2`` and ``-1:1:3`` and reads them as unknown options
("expected one argument"); the command line's parser sets
``parser._negative_number_matcher = NEGATIVE_VALUE`` so they reach the value checks, which then
say what is wrong with them (no clipdyn option starts with ``-`` and a digit, ``.``, ``inf`` or
``nan``). ``--c=-inf`` works with any parser."""


def parse_float(text: str, what: str) -> float:
    """A number from text (``inf`` and ``nan`` included: the value checks come after).

    ASCII digits only, as :func:`clipdyn.validation.integer_text` reads integers (Python's
    ``float`` also reads ``1_0`` and full-width digits), and a number the text names but a float
    cannot hold is refused as typed: ``1e400`` was ``inf`` (unclipped SGD for ``--c 1e400``) and
    ``1e-400`` was refused as ``0.0``.
    """
    s = str(text).strip()
    try:
        if not s.isascii() or "_" in s:
            raise ValueError
        x = float(s)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {s!r} is not a number") from None
    mantissa = s.lower().partition("e")[0]
    if math.isinf(x) and "inf" not in s.lower():
        raise ValueError(f"{what}={s} is not allowed; it is beyond the largest float (1.8e308)")
    if x == 0 and any(c in "123456789" for c in mantissa):
        raise ValueError(f"{what}={s} is not allowed; it is below the smallest float (4.9e-324)")
    return x


def parse_int(text: str, what: str, low: int, high: int | None = None) -> int:
    """An integer option ``>= low`` (``1e3`` and ``8.0`` are integers; ``1.5`` and ``""`` are not)."""
    return validation.integer_text(what, text, low, high=high)


def _split(spec: str, kind: str) -> tuple[str, dict[str, str]]:
    name, _, rest = spec.strip().partition(":")
    params: dict[str, str] = {}
    if rest:
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise ValueError(f"{kind} spec {spec!r}: {part!r} is not of the form key=value")
            if key.strip() in params:
                raise ValueError(f"{kind} spec {spec!r}: key {key.strip()!r} is given twice; give "
                                 "each key once")
            params[key.strip()] = value.strip()
    return name.strip().lower(), params


def _take(spec: str, params: dict, allowed: dict[str, object]) -> dict:
    unknown = set(params) - set(allowed)
    if unknown:
        raise ValueError(
            f"spec {spec!r}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    out = {}
    for key, default in allowed.items():
        if key in params:
            out[key] = params[key]
        elif default is None:
            raise ValueError(f"spec {spec!r}: missing {key}=...")
        else:
            out[key] = default
    return out


def _floats(text: str, what: str) -> np.ndarray:
    return np.array([parse_float(x, what) for x in str(text).split("/")])


NOISE_NAMES = ("gaussian", "student-t", "cauchy", "rademacher", "mixture", "empirical")


def parse_noise(spec: str) -> noise_laws.NoiseLaw:
    """A noise law from its SPEC string (see the module doc)."""
    name, params = _split(spec, "noise")
    if name == "gaussian":
        p = _take(spec, params, {"sigma": "1"})
        return noise_laws.Gaussian(parse_float(p["sigma"], "gaussian sigma"))
    if name in ("student-t", "student", "t"):
        p = _take(spec, params, {"df": None, "scale": "1"})
        return noise_laws.StudentT(parse_float(p["df"], "student-t df"),
                                   parse_float(p["scale"], "student-t scale"))
    if name == "cauchy":
        p = _take(spec, params, {"scale": "1"})
        return noise_laws.cauchy(parse_float(p["scale"], "cauchy scale"))
    if name == "rademacher":
        p = _take(spec, params, {"sigma": "1"})
        return noise_laws.Rademacher(parse_float(p["sigma"], "rademacher sigma"))
    if name == "mixture":
        p = _take(spec, params, {"weights": None, "means": None, "sigmas": None})
        return noise_laws.GaussianMixture(
            _floats(p["weights"], "mixture weights"),
            _floats(p["means"], "mixture means"),
            _floats(p["sigmas"], "mixture sigmas"),
        )
    if name == "empirical":
        p = _take(spec, params, {"file": None})
        atoms = validation.load_npy_vector(p["file"], "empirical noise")
        try:
            return noise_laws.Empirical(atoms)
        except ValueError as err:
            raise ValueError(f"empirical noise file {p['file']!r}: {err}") from None
    raise ValueError(f"noise spec {spec!r}: unknown law {name!r}; allowed: {', '.join(NOISE_NAMES)}")


def parse_spectrum(spec: str) -> np.ndarray:
    """A spectrum (array of eigenvalues) from its SPEC string."""
    name, _, rest = spec.strip().partition(":")
    name = name.lower()
    if name == "file":
        if not rest:
            raise ValueError(f"spectrum spec {spec!r}: give the file as file:PATH.npy")
        return problems.load_spectrum(rest.strip())
    name, params = _split(spec, "spectrum")

    def dim(text):
        d = parse_float(text, "spectrum d")
        if not (d.is_integer() and d >= 1):
            raise ValueError(f"spectrum spec {spec!r}: d={text} must be a positive integer")
        return int(d)

    if name == "identity":
        p = _take(spec, params, {"d": None})
        return problems.identity_spectrum(dim(p["d"]))
    if name in ("power-law", "powerlaw"):
        p = _take(spec, params, {"d": None, "alpha": None})
        return problems.power_law_spectrum(dim(p["d"]), parse_float(p["alpha"], "power-law alpha"))
    raise ValueError(
        f"spectrum spec {spec!r}: unknown spectrum {name!r}; allowed: identity, power-law, file"
    )


@dataclass(frozen=True)
class ClipSpec:
    """A threshold choice: a constant ``value`` (``inf`` = SGD), ``max-ccc`` or ``heuristic``."""

    kind: str  # "constant" | "max-ccc" | "heuristic"
    value: float = math.inf
    kappa: float = math.nan
    sigma2: float | None = None

    def describe(self) -> str:
        if self.kind == "constant":
            return "inf" if math.isinf(self.value) else f"{self.value:g}"
        if self.kind == "heuristic":
            extra = "" if self.sigma2 is None else f",sigma2={self.sigma2:g}"
            return f"heuristic:kappa={self.kappa:g}{extra}"
        return self.kind


def _heuristic(spec: str, what: str, allowed: str) -> tuple[np.ndarray, float | None]:
    """The kappas (``K`` or ``K1/K2/...`` or ``START:STOP:NUM``) and ``sigma2`` of a
    ``heuristic:`` threshold, checked as :func:`clipdyn.theory.schedules.heuristic` checks them."""
    name, params = _split(spec.strip().lower(), "clip")
    if name != "heuristic":  # "heuristicX:kappa=1" ran as heuristic
        raise ValueError(f"{what} {spec!r} is not allowed; use {allowed}")
    p = _take(spec, params, {"kappa": None, "sigma2": ""})
    kappas = parse_list(p["kappa"].replace("/", ","), "heuristic kappa")
    validation.positive("kappa", kappas[0] if kappas.size == 1 else kappas, owner=f"{what} {spec!r}")
    sigma2 = parse_float(p["sigma2"], "heuristic sigma2") if p["sigma2"] else None
    if sigma2 is not None:
        validation.nonnegative("sigma2", sigma2, owner=f"{what} {spec!r}")
    return kappas, sigma2


def parse_clip(spec: str) -> ClipSpec:
    """A threshold: number >= 0, ``inf``, ``max-ccc`` or ``heuristic:kappa=K[,sigma2=S]``."""
    text = spec.strip().lower()
    if text == "max-ccc":
        return ClipSpec("max-ccc")
    if text.startswith("heuristic"):
        kappas, sigma2 = _heuristic(spec, "clip", "heuristic:kappa=K[,sigma2=S]")
        if kappas.size != 1:
            raise ValueError(f"clip {spec!r} is not allowed; one kappa here (a LIST of them is "
                             "sweep's --clip heuristic:kappa=K1/K2)")
        return ClipSpec("heuristic", kappa=float(kappas[0]), sigma2=sigma2)
    try:
        value = parse_float(text, "clip")
    except ValueError as err:
        raise ValueError(
            f"{err}; use a number >= 0, inf, max-ccc or heuristic:kappa=K") from None
    if math.isnan(value) or value < 0:
        raise ValueError(f"clip {spec!r} is not allowed; the threshold must be >= 0 (or inf)")
    validation.threshold("clip", value)
    return ClipSpec("constant", value=value)


def parse_clip_list(spec: str, what: str = "--clip") -> list[ClipSpec]:
    """A sweep's thresholds: a LIST of numbers >= 0 (``inf`` allowed), ``max-ccc``, or
    ``heuristic:kappa=K1/K2/...[,sigma2=S]`` (the kappas also as ``START:STOP:NUM``).

    The keys are checked as :func:`parse_clip` checks them: ``kappa`` is required, ``sigma2`` is
    optional, anything else (or a key given twice) is refused.

    Returns:
        One :class:`ClipSpec` per threshold choice, in order.
    """
    text = spec.strip().lower()
    if text == "max-ccc":
        return [ClipSpec("max-ccc")]
    if text.startswith("heuristic"):
        kappas, sigma2 = _heuristic(spec, what, "a LIST, max-ccc or heuristic:kappa=K1/K2[,sigma2=S]")
        return [ClipSpec("heuristic", kappa=float(k), sigma2=sigma2) for k in kappas]
    try:
        values = parse_list(text, what)
    except ValueError as err:
        raise ValueError(f"{err}; {what} takes a LIST of thresholds (numbers >= 0 or inf), max-ccc "
                         "or heuristic:kappa=K1/K2") from None
    validation.threshold(what, values)
    return [ClipSpec("constant", value=float(c)) for c in values]


def split_items(text: str, what: str) -> list[str]:
    """The comma-separated items of a command-line list, stripped; an empty one is refused."""
    text = text.strip()
    if not text:
        raise ValueError(f"{what}: empty list")
    items = [v.strip() for v in text.split(",")]
    if not all(items):  # '1,,2' or '1,': a typo, not a shorter list
        raise ValueError(f"{what} {text!r}: an empty value between commas; a list is a,b,c")
    return items


def parse_list(text: str, what: str) -> np.ndarray:
    """``a,b,c`` or ``START:STOP:NUM`` into a float array.

    ``START`` and ``STOP`` must be finite (``0:inf:3`` has no evenly spaced values; list
    ``inf`` explicitly: ``0,1,inf``) and ``NUM`` an integer in ``[1, MAX_LIST]``.
    """
    text = text.strip()
    if text.count(":") == 2 and "," not in text:
        start, stop, num = text.split(":")
        n = parse_float(num, f"{what} NUM")
        if not (n.is_integer() and 1 <= n <= MAX_LIST):
            raise ValueError(f"{what} {text!r}: NUM={num} is not allowed; NUM must be an integer "
                             f"from 1 to {MAX_LIST}")
        a, b = parse_float(start, what), parse_float(stop, what)
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"{what} {text!r}: START and STOP must be finite numbers; to include "
                             "inf, list the values (e.g. 0.1,1,inf)")
        return np.linspace(a, b, int(n))
    values = split_items(text, what)
    if len(values) > MAX_LIST:
        raise ValueError(f"{what}: {len(values)} values; a LIST holds at most {MAX_LIST}")
    return np.array([parse_float(v, what) for v in values])


def make_schedule(clip: ClipSpec, eta: float, noise: noise_laws.NoiseLaw, rule=None):
    """The schedule a :class:`ClipSpec` names, with learning rate ``eta``; feedback schedules use
    the factors of the clipping ``rule`` (default: the paper's one-sample C-SGD)."""
    from clipdyn.theory import schedules  # local: schedules imports factors, which is heavier

    if clip.kind == "constant":
        return schedules.constant(eta, clip.value)
    if clip.kind == "max-ccc":
        return schedules.max_ccc(eta, noise, rule=None if rule is None or rule.plain else rule)
    return schedules.heuristic(eta, clip.kappa, noise, clip.sigma2,
                               rule=None if rule is None or rule.plain else rule)


RULE_NAMES = ("per-sample", "batch", "micro:size=b", "index:beta=P")


def parse_rule(spec: str, batch: int = 1, dp_noise: float | None = None,
               preclip_noise: float | None = None):
    """A clipping rule from its SPEC (``per-sample``, ``batch``, ``micro:size=b``,
    ``index:beta=P``) and the batch size and options (see :mod:`clipdyn.theory.rules`)."""
    from clipdyn.theory import rules

    name, params = _split(spec, "clip rule")
    if name == "per-sample":
        _take(spec, params, {})
        return rules.per_sample(batch, dp_noise=dp_noise, preclip_noise=preclip_noise)
    if name in ("batch", "micro") and preclip_noise is not None:
        raise ValueError(f"--preclip-noise is not allowed with --clip-rule {spec}: pre-clip noise "
                         "is defined for per-sample and index clipping only")
    if name == "batch":
        _take(spec, params, {})
        return rules.batch_mean(batch, dp_noise=dp_noise)
    if name == "micro":
        p = _take(spec, params, {"size": None})
        size = parse_float(p["size"], "micro size")
        if not (size.is_integer() and size >= 1):
            raise ValueError(f"clip rule {spec!r}: size={p['size']} must be an integer >= 1")
        if batch % int(size):
            raise ValueError(f"clip rule {spec!r}: size={int(size)} does not divide --batch {batch}")
        return rules.micro_batch(batch, int(size), dp_noise=dp_noise)
    if name == "index":
        p = _take(spec, params, {"beta": None})
        beta = parse_float(p["beta"], "index beta")
        if not (beta > 0):
            raise ValueError(f"clip rule {spec!r}: beta={p['beta']} must be > 0 (inf allowed)")
        return rules.index_thresholds(batch, beta, dp_noise=dp_noise, preclip_noise=preclip_noise)
    raise ValueError(f"clip rule {spec!r} is not allowed; use one of {', '.join(RULE_NAMES)}")
