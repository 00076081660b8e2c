"""SPEC strings: the command line's names for noise laws, spectra, thresholds and value lists.

Grammar: ``name`` or ``name:key=value,key=value``; lists inside a value are ``/``-separated.

* noise: ``gaussian:sigma=S``, ``student-t:df=N,scale=S``, ``cauchy:scale=S``,
  ``rademacher:sigma=S``, ``mixture:weights=W1/W2,means=M1/M2,sigmas=S1/S2``,
  ``empirical:file=PATH.npy``;
* spectrum: ``identity:d=D``, ``power-law:d=D,alpha=A``, ``file:PATH.npy``;
* threshold: a number, ``inf``, ``max-ccc``, or ``heuristic:kappa=K[,sigma2=S]``;
* LIST: comma-separated numbers, or ``START:STOP:NUM`` (NUM evenly spaced values, both ends in).

Every parse error is a ``ValueError`` whose message names the bad text and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdyn import noise as noise_laws
from clipdyn import problem as problems

__all__ = ["parse_noise", "parse_spectrum", "parse_clip", "parse_list", "ClipSpec", "parse_float"]


def parse_float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number") from None


def _split(spec: str, kind: str) -> tuple[str, dict[str, str]]:
    name, _, rest = spec.strip().partition(":")
    params: dict[str, str] = {}
    if rest:
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip() or not value.strip():
                raise ValueError(f"{kind} spec {spec!r}: {part!r} is not of the form key=value")
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
        path = Path(p["file"])
        if not path.is_file():
            raise ValueError(f"empirical noise file {str(path)!r} does not exist")
        try:
            atoms = np.load(path, allow_pickle=False)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"empirical noise file {str(path)!r} is not a readable .npy array ({err})") from None
        return noise_laws.Empirical(np.asarray(atoms, dtype=float))
    raise ValueError(f"noise spec {spec!r}: unknown law {name!r}; allowed: {', '.join(NOISE_NAMES)}")


def parse_spectrum(spec: str) -> np.ndarray:
    """A spectrum (array of eigenvalues) from its SPEC string."""
    name, _, rest = spec.strip().partition(":")
    name = name.lower()
    if name == "file":
        if not rest:
            raise ValueError(f"spectrum spec {spec!r}: give the file as file:PATH.npy")
        return problems.load_spectrum(rest)
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


def parse_clip(spec: str) -> ClipSpec:
    """A threshold: number >= 0, ``inf``, ``max-ccc`` or ``heuristic:kappa=K[,sigma2=S]``."""
    text = spec.strip().lower()
    if text == "max-ccc":
        return ClipSpec("max-ccc")
    if text.startswith("heuristic"):
        name, params = _split(text, "clip")
        p = _take(spec, params, {"kappa": None, "sigma2": ""})
        kappa = parse_float(p["kappa"], "heuristic kappa")
        if not (math.isfinite(kappa) and kappa > 0):
            raise ValueError(f"clip {spec!r}: kappa={p['kappa']} must be finite and > 0")
        sigma2 = parse_float(p["sigma2"], "heuristic sigma2") if p["sigma2"] else None
        return ClipSpec("heuristic", kappa=kappa, sigma2=sigma2)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"clip {spec!r} is not allowed; use a number >= 0, inf, max-ccc or heuristic:kappa=K"
        ) from None
    if math.isnan(value) or value < 0:
        raise ValueError(f"clip {spec!r} is not allowed; the threshold must be >= 0 (or inf)")
    return ClipSpec("constant", value=value)


def parse_list(text: str, what: str) -> np.ndarray:
    """``a,b,c`` or ``START:STOP:NUM`` into a float array."""
    text = text.strip()
    if text.count(":") == 2 and "," not in text:
        start, stop, num = text.split(":")
        n = parse_float(num, f"{what} NUM")
        if not (n.is_integer() and n >= 1):
            raise ValueError(f"{what} {text!r}: NUM must be a positive integer")
        return np.linspace(parse_float(start, what), parse_float(stop, what), int(n))
    values = [v for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError(f"{what}: empty list")
    return np.array([parse_float(v, what) for v in values])


def make_schedule(clip: ClipSpec, eta: float, noise: noise_laws.NoiseLaw):
    """The schedule a :class:`ClipSpec` names, with learning rate ``eta``."""
    from clipdyn import schedules  # local: schedules imports factors, which is heavier

    if clip.kind == "constant":
        return schedules.constant(eta, clip.value)
    if clip.kind == "max-ccc":
        return schedules.max_ccc(eta, noise)
    return schedules.heuristic(eta, clip.kappa, noise, clip.sigma2)
