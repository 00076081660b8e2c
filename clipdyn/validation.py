"""Validation rules shared by clipdyn's public functions and its command line.

One rule, one message. Every check raises ``ValueError`` of the form

    [OWNER: ]NAME=VALUE is not allowed; NAME must be ALLOWED

so a bad risk reads the same from ``clipdyn.reduction_factors(law, R=-1, c=1)``
(``R=-1 is not allowed; R must be finite and > 0 ...``) and from ``clipdyn factors --R -1``
(the command line passes ``name="--R"``). Checks apply to concrete values only: inside ``jit``,
``vmap`` or ``grad`` values are tracers and pass unchecked (their concrete values were checked
before tracing, or the transformation is the caller's own).

**Types.** Numbers are Python ``int``/``float``, NumPy or JAX numbers, or arrays of a real
numeric dtype (integer or floating). Strings, booleans, complex numbers and ``None`` are refused,
whatever NumPy would make of them (``float("3")`` works, so ``StudentT(df="3")`` used to be
accepted and fail later inside ``jit``).

**Magnitudes.** clipdyn squares and multiplies its inputs in float64 (``2R + sigma^2``, ``c^2``,
``m_j^2 + s_j^2``, ``R0 / Tr K``, ``lam_i v_i``), whose normal range is about
``[2.2e-308, 1.8e308]``. Positive parameters are therefore kept within
``[MIN_MAGNITUDE, MAX_MAGNITUDE] = [1e-100, 1e100]``: a square, a product of two squares or a
sum of squares over 1e8 terms then stays finite and normal with a wide margin, and nothing a
least-squares problem can mean is excluded (rescale the data if it is).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

__all__ = [
    "MIN_MAGNITUDE",
    "MAX_MAGNITUDE",
    "MAX_SEED",
    "MAX_POINTS",
    "RTOL_RANGE",
    "is_concrete",
    "rebuilding",
    "one_schedule",
    "schedule_batch",
    "integer_text",
    "is_rebuilding",
    "check_real",
    "check_value",
    "single",
    "positive",
    "nonnegative",
    "magnitude",
    "threshold",
    "divergence_factor",
    "broadcastable",
    "integer",
    "flag",
    "optional_integer",
    "seeds",
    "schedule",
    "noise_law",
    "data_problem",
    "rtol",
    "real_vector",
    "load_npy_vector",
    "output_path",
    "number_text",
    "available_memory",
    "bytes_text",
    "check_memory",
]

MIN_MAGNITUDE = 1e-100
MAX_MAGNITUDE = 1e100
MAX_SEED = 2**32 - 1  # JAX in 32-bit mode folds larger seeds onto smaller ones
RTOL_RANGE = (1e-14, 0.1)
# Output times of a curve and points of a table: more is no curve anyone reads, and the
# command line's lists stop there too (solve_ode with 1e7 points ran for minutes).
MAX_POINTS = 1_000_000
_MAX_INT64 = 2**63 - 1

def number_text(x: float) -> str:
    """A bound as the messages write it: ``1e100``, ``0.01``."""
    return f"{x:g}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")


_RANGE = f"within [{number_text(MIN_MAGNITUDE)}, {number_text(MAX_MAGNITUDE)}]"
_NUMERIC_KINDS = "iuf"  # signed and unsigned integers, floating point


_CHECKABLE = (bool, int, float, complex, str, bytes, list, tuple, np.ndarray, np.generic, jax.Array)


def is_concrete(x) -> bool:
    """Whether ``x`` is a value to check now: anything but a tracer or a placeholder.

    Tracers pass unchecked, and so do the placeholders JAX puts in a pytree's fields when it
    rebuilds one (``None``, sentinel objects, ``ShapeDtypeStruct``: :func:`rebuilding`), which
    run the dataclasses' ``__post_init__`` too. Any other value is checked, whatever its type:
    a ``Fraction(-1)`` or ``Decimal`` risk used to pass as "not a number, so a placeholder" and
    compute (``mu(law, Fraction(-1), 1)`` returned 1.0); the type checks now refuse it.
    """
    if isinstance(x, jax.core.Tracer):
        return False
    if isinstance(x, (list, tuple)):
        return all(is_concrete(v) for v in x)
    if isinstance(x, _CHECKABLE):
        return True
    return not (_REBUILDING.get() or isinstance(x, jax.ShapeDtypeStruct))


# Set while JAX rebuilds a clipdyn pytree (clipdyn.pytrees.frozen_pytree's unflatten): JAX then
# puts None and other placeholders into the fields, and those pass. A user's own None does not.
_REBUILDING = contextvars.ContextVar("clipdyn_rebuilding", default=False)


@contextlib.contextmanager
def rebuilding():
    """Within it, ``None`` fields pass the checks: JAX's placeholders while it rebuilds a pytree."""
    token = _REBUILDING.set(True)
    try:
        yield
    finally:
        _REBUILDING.reset(token)


def is_rebuilding() -> bool:
    """Whether JAX is rebuilding a clipdyn pytree (:func:`rebuilding`): its fields then hold
    placeholders, or leaves stacked over configurations, that were checked when first built."""
    return _REBUILDING.get()


def _refuse_none(owner: str, name: str, value) -> None:
    if value is None and not _REBUILDING.get():
        raise ValueError(f"{_prefix(owner)}{name}=None is not allowed; {name} must be a real number "
                         "(int or float), not None")


def single(name: str, value, *, owner: str = "", what: str = "one law"):
    """One number, not an array: a scalar law's parameter. Batched laws are JAX's to make (by
    ``vmap`` over a function that builds one, or by stacking laws), not the constructor's: an
    array there used to be accepted and fail later with a shape error naming nothing."""
    if is_concrete(value) and np.ndim(value) != 0 and not _REBUILDING.get():
        raise ValueError(f"{_prefix(owner)}{name}={_show(value)} is not allowed; {name} must be a "
                         f"single number ({what}), not an array of shape {np.shape(value)}")
    return value


def _prefix(owner: str) -> str:
    return f"{owner}: " if owner else ""


def _show(value) -> str:
    if isinstance(value, (str, bytes)):
        return repr(value)
    if isinstance(value, int) and abs(value) > 10**20:  # 10**400 printed in full
        return f"<int of {len(str(abs(value)))} digits>"
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - anything unprintable is shown by its type
        return f"<{type(value).__name__}>"
    if arr.ndim == 0:
        return str(arr.item())
    if arr.size <= 8:
        return str(arr.tolist())
    return f"array of shape {arr.shape}"


def _refuse(owner: str, name: str, value, allowed: str):
    raise ValueError(f"{_prefix(owner)}{name}={_show(value)} is not allowed; {name} must be {allowed}")


def _kind(value) -> tuple[str, str]:
    """``(dtype kind, what it is called)`` of a concrete value."""
    if isinstance(value, (bool, np.bool_)):
        return "b", "bool"
    if isinstance(value, (str, bytes)):
        return "U", type(value).__name__
    if value is None:
        return "O", "None"
    if isinstance(value, int):  # arbitrarily large Python ints are integers too
        return "i", "int"
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001
        return "O", type(value).__name__
    if np.isscalar(value) or arr.ndim == 0:
        return arr.dtype.kind, type(value).__name__
    return arr.dtype.kind, f"an array of dtype {arr.dtype}"


def check_real(owner: str, name: str, value) -> None:
    """Refuse anything that is not a real number or an array of real numbers (when concrete)."""
    _refuse_none(owner, name, value)
    if not is_concrete(value):
        return
    kind, what = _kind(value)
    if kind not in _NUMERIC_KINDS:
        raise ValueError(
            f"{_prefix(owner)}{name}={_show(value)} is not allowed; {name} must be a real number "
            f"(int or float), not {what}"
        )


def check_value(owner: str, name: str, value, ok: Callable[[np.ndarray], Any], allowed: str) -> None:
    """Raise ``ValueError`` naming the bad value unless ``ok(value)`` holds everywhere.

    Args:
        owner: what the value belongs to (``"gaussian"``, ``"schedule"``), or ``""``.
        name: the parameter's name as the caller knows it (``"sigma"``, ``"--R"``).
        value: the value; tracers pass unchecked.
        ok: elementwise predicate on the value as a float64 array.
        allowed: what is allowed, completing "``name`` must be ...".
    """
    _refuse_none(owner, name, value)
    if not is_concrete(value):
        return
    check_real(owner, name, value)
    try:
        arr = np.asarray(value, dtype=float)
    except OverflowError:  # a Python int beyond float's range (10**400)
        _refuse(owner, name, value, allowed)
    with np.errstate(invalid="ignore", over="ignore"):
        good = arr.size > 0 and bool(np.all(ok(arr)))
    if not good:
        _refuse(owner, name, value, allowed)


def _in_range(a):
    return (a >= MIN_MAGNITUDE) & (a <= MAX_MAGNITUDE)


def positive(name: str, value, *, owner: str = "", bounded: bool = True):
    """A finite value ``> 0`` (within the magnitude bounds unless ``bounded=False``); returned as given."""
    if bounded:
        check_value(owner, name, value, lambda a: np.isfinite(a) & _in_range(a),
                    f"finite and > 0 ({_RANGE})")
    else:
        check_value(owner, name, value, lambda a: np.isfinite(a) & (a > 0), "finite and > 0")
    return value


def nonnegative(name: str, value, *, owner: str = ""):
    """``0`` or a finite value within the magnitude bounds (a noise scale, say)."""
    check_value(owner, name, value, lambda a: (a == 0) | (np.isfinite(a) & _in_range(a)),
                f"finite and >= 0 (0, or {_RANGE})")
    return value


def magnitude(name: str, value, *, owner: str = ""):
    """A finite value of either sign whose magnitude is 0 or within the bounds (a mean, say)."""
    check_value(owner, name, value, lambda a: (a == 0) | (np.isfinite(a) & _in_range(np.abs(a))),
                f"finite, with |{name}| 0 or {_RANGE}")
    return value


def divergence_factor(value, *, owner: str = ""):
    """A divergence bound's factor: finite and ``> 1`` (a run has diverged once ``R > factor R0``;
    a factor of 1 or less called runs whose risk falls from its start diverged)."""
    single("divergence_factor", value, owner=owner, what="one factor")
    check_value(owner, "divergence_factor", value, lambda a: np.isfinite(a) & (a > 1), "finite and > 1")
    return value


def broadcastable(**values) -> None:
    """Refuse arrays that do not broadcast against each other, naming each with its shape (NumPy's
    and JAX's own messages name neither)."""
    try:
        np.broadcast_shapes(*(np.shape(v) for v in values.values()))
    except ValueError:
        shapes = " and ".join(f"{k} of shape {np.shape(v)}" for k, v in values.items())
        raise ValueError(f"{shapes} do not broadcast against each other (numpy's rules: equal sizes "
                         "or 1, axis by axis from the last)") from None


def threshold(name: str, value, *, owner: str = ""):
    """A clipping threshold: ``0``, ``inf`` (unclipped) or a value within the magnitude bounds.

    A finite threshold beyond 1e100 would overflow ``c^2``; it never clips anything a bounded
    noise law and risk can produce, so ``inf`` says the same exactly.
    """
    check_value(owner, name, value, lambda a: (a == 0) | (a == np.inf) | _in_range(a),
                f">= 0: 0, inf (unclipped) or {_RANGE}")
    return value


def integer(name: str, value, low: int, *, high: int | None = None, owner: str = "") -> int:
    """An integer ``>= low`` (and ``<= high``): ``int``, NumPy integer or an integral float.

    Returns:
        The value as a Python ``int``.
    """
    upper = "" if high is None else f" and <= {high}"
    allowed = f"an integer >= {low}{upper}"
    if value is None:
        raise ValueError(f"{_prefix(owner)}{name}=None is not allowed; {name} must be {allowed}")
    if not is_concrete(value):
        raise ValueError(f"{_prefix(owner)}{name} must be a concrete integer, not a traced value")
    kind, what = _kind(value)
    if kind not in _NUMERIC_KINDS or np.ndim(value) != 0:
        raise ValueError(f"{_prefix(owner)}{name}={_show(value)} is not allowed; {name} must be "
                         f"{allowed}, not {what}")
    if kind == "f":
        x = float(value)
        if not (math.isfinite(x) and x.is_integer()):
            _refuse(owner, name, value, allowed)
        n = int(x)
    else:
        n = value if isinstance(value, int) else int(np.asarray(value))
    if n < low or (high is not None and n > high):
        _refuse(owner, name, value, allowed)
    if n > _MAX_INT64:  # counts reach JAX and NumPy as 64-bit integers (10**400 overflowed there)
        _refuse(owner, name, value, f"{allowed} (a 64-bit integer)")
    return n


def flag(name: str, value, *, owner: str = "") -> bool:
    """``True`` or ``False`` (a NumPy bool too): ``"no"`` or ``[None]`` used to count as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{_prefix(owner)}{name}={_show(value)} is not allowed; {name} must be "
                         f"True or False, not {_kind(value)[1]}")
    return bool(value)


def integer_text(name: str, text, low: int, *, high: int | None = None, owner: str = "") -> int:
    """An integer ``>= low`` (and ``<= high``) typed as text (an option, a SPEC's value).

    Digits are read exactly (through float a seed of 2^53 + 1 became 2^53, and 2^63 - 2 was
    refused as 2^63); other forms (``1e3``, ``8.0``) through float when they are whole. The
    refusal names the text as typed (``--points=1``, not ``1.0``).
    """
    s = str(text).strip()
    if not s.isascii() or "_" in s:  # Python's int() and float() also read "1_000" and "３"
        raise ValueError(f"{_prefix(owner)}{name}: {s!r} is not a number")
    try:
        value: int | float = int(s)
    except ValueError:
        try:
            value = float(s)
        except ValueError:
            raise ValueError(f"{_prefix(owner)}{name}: {s!r} is not a number") from None
    try:
        return integer(name, value, low, high=high, owner=owner)
    except ValueError:
        upper = "" if high is None else f" and <= {high}"
        raise ValueError(f"{_prefix(owner)}{name}={s} is not allowed; {name} must be an integer "
                         f">= {low}{upper}") from None


def optional_integer(name: str, value, low: int, *, owner: str = "") -> int | None:
    """``None`` (the default is used) or an integer ``>= low``."""
    return None if value is None else integer(name, value, low, owner=owner)


def seeds(value, name: str = "seeds") -> np.ndarray:
    """Integer seeds: a non-empty sequence of distinct integers in ``[0, MAX_SEED]``.

    Runs with the same seed share their samples, so a repeated seed would be counted twice as
    independent; an integer ``S`` alone is refused (write ``range(S)``).

    Returns:
        The seeds as an ``int64`` array.
    """
    if (isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__")
            or (hasattr(value, "ndim") and value.ndim != 1)):
        what = f"a {value.ndim}-D array" if hasattr(value, "ndim") else type(value).__name__
        raise ValueError(f"{name}={_show(value)} is not allowed; {name} must be a sequence of integer "
                         f"seeds, e.g. range(8) for 8 seeds, not {what}")
    items = list(value)
    if not items:
        raise ValueError(f"{name}=[] is not allowed; give at least one seed")
    out = [integer(f"{name}[{i}]", s, 0, high=MAX_SEED) for i, s in enumerate(items)]
    uniq, counts = np.unique(out, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"{name}: seed(s) {uniq[counts > 1].tolist()} repeated; each seed must appear "
                         "once (runs with one seed share their samples)")
    return np.asarray(out, dtype=np.int64)


def schedule(value, name: str = "schedule"):
    """A clipdyn schedule: a callable ``(t, R) -> (eta, c)`` (see :mod:`clipdyn.theory.schedules`)."""
    if not callable(value) or isinstance(value, type):
        raise ValueError(
            f"{name} must be a clipdyn schedule (callable (t, R) -> (eta, c)); got {type(value).__name__}"
        )
    if jax.tree_util.all_leaves([value]):  # a plain function: JAX cannot pass it to a program
        raise ValueError(
            f"{name} must be a clipdyn schedule object (clipdyn.theory.schedules: Constant, "
            "StepDecay, PiecewiseConstant, max_ccc, heuristic; TimeVarying(eta_fn, clip_fn) for "
            f"functions of t); got the {type(value).__name__} {getattr(value, '__name__', value)!r}")
    return value


def one_schedule(value, who: str):
    """One schedule, whose ``(eta, c)`` are scalars, not a batch from ``stack_schedules`` (which is
    for sweeps; a batch passed on crashed inside JAX with a broadcasting error). Shapes only
    (``eval_shape``: nothing runs or compiles)."""
    schedule(value)
    R = jax.ShapeDtypeStruct((), jax.dtypes.canonicalize_dtype(np.float64))  # float64 under x64
    shapes = jax.eval_shape(lambda r: value(jax.numpy.zeros((), r.dtype), r), R)
    if any(s.shape != () for s in jax.tree.leaves(shapes)):
        raise ValueError(f"{who} takes one schedule, whose (eta, c) are scalars; got (eta, c) of "
                         f"shapes {[s.shape for s in jax.tree.leaves(shapes)]} (a batch from "
                         "stack_schedules is for sweeps: run_sweep, or one schedule at a time)")
    return value


def schedule_batch(value, who: str, one: str) -> int:
    """The number ``C`` of schedules in a batch, whose every parameter has the leading axis ``C``
    (:func:`clipdyn.runs.sweep.stack_schedules` makes one).

    A batch whose parameters disagree is refused with each field's shape: ``constant(etas)`` with
    the default scalar threshold crashed inside JAX with an IndexError. Scalar fields are not
    broadcast: a feedback schedule's tables are arrays too, and a table of 321 thresholds would
    have been taken for 321 schedules.

    Args:
        value: the batched schedule.
        who: the function taking it, as the message names it.
        one: what to use for one schedule, completing the refusal of one (``"solve_ode solves one"``).
    """
    schedule(value, "schedules")
    fields = jax.tree_util.tree_flatten_with_path(value)[0]
    if not fields:
        raise ValueError(
            f"{who} takes a batch of schedules with array parameters; a {type(value).__name__} "
            "has none to batch over (a TimeVarying's functions are static: it runs in solve_ode; "
            "batches are of Constant, StepDecay, PiecewiseConstant, max_ccc or heuristic)")
    shapes = {jax.tree_util.keystr(path).lstrip("."): np.shape(x) for path, x in fields}
    leading = {s[0] if s else None for s in shapes.values()}
    if len(leading) == 1 and None not in leading:
        return int(leading.pop())
    if all(s == () for s in shapes.values()):
        raise ValueError(f"{who} takes a batch of schedules, stack_schedules([...]); got one "
                         f"{type(value).__name__} with scalar parameters ({one})")
    raise ValueError(f"{who} takes a batch of schedules whose every parameter has the same leading "
                     f"axis C; got a {type(value).__name__} with parameter shapes {shapes} "
                     "(stack_schedules([...]) of C schedules of one kind makes one, or give every "
                     "parameter as an array of length C)")


def _has_static(value, attr: str) -> bool:
    try:
        inspect.getattr_static(value, attr)
    except AttributeError:
        return False
    return True


_LAW_NAMES = "Gaussian, StudentT, cauchy(...), Rademacher, GaussianMixture or Empirical"


_LAW_PROTOCOL = ("sample", "second_moment", "scale", "gaussian_mixture", "astype")
_LAW_NEEDS = ("or your own law: a pytree (clipdyn.pytrees.frozen_pytree) with sample(key, shape, "
              "dtype), second_moment, scale, gaussian_mixture() and astype(dtype); see "
              "clipdyn.theory.noise")
# A mixture's E eps^2 and the law's second_moment (used at c = inf) must agree this closely: a
# law whose two disagreed had nu_abs jump from 1.2 at c = 1e6 to 4.2 at c = inf.
LAW_MOMENT_RTOL = 1e-6
# A user's mixture weights must sum to 1 this closely (a discretised law's quadrature weights,
# summed in float32, are off by ~1e-7; clipdyn's own mixtures are held to WEIGHTS_TOL = 1e-9).
LAW_WEIGHTS_TOL = 1e-6


def noise_law(value, name: str = "noise"):
    """A clipdyn noise law: one of clipdyn's, or a user's class with the same protocol.

    The attributes are looked up without evaluating them for clipdyn's own laws, whose
    constructors checked their parameters (``second_moment`` is a property that computes, and
    compiled a small program at every CLI start-up, only to be checked for). A user's law is
    checked for what the engines rely on (:func:`_user_law`).
    """
    _duck_typed(value, _LAW_PROTOCOL,
                f"{name} must be a clipdyn noise law ({_LAW_NAMES} from clipdyn.theory.noise), "
                f"{_LAW_NEEDS}")
    if type(value).__module__ != "clipdyn.theory.noise":
        _user_law(value, name)
    return value


def _user_law(law, name: str) -> None:
    """A user's law, checked where its values are concrete: a pytree; ``gaussian_mixture()``
    with finite weights ``>= 0`` summing to 1 (within :data:`LAW_WEIGHTS_TOL`), finite means and
    variances ``>= 0``,
    whose ``E eps^2`` equals ``second_moment`` where that is finite (within
    :data:`LAW_MOMENT_RTOL`); ``sample`` honouring ``shape`` and ``dtype``.

    Each of these, broken, used to give numbers or deep JAX errors: weights summing to 2 gave
    ``mu = 1.99``, a nan variance ran as the noiseless law, a ``sample`` ignoring ``dtype`` failed
    inside the engine's loop.
    """
    what = f"{name} ({type(law).__name__})"
    if jax.tree_util.all_leaves([law]):
        raise ValueError(f"{what} must be a JAX pytree, so that it can enter jit and vmap: decorate "
                         "its class with clipdyn.pytrees.frozen_pytree (a subclass of a clipdyn law "
                         "needs it too)")
    if not all(is_concrete(x) for x in jax.tree.leaves(law)):
        return
    rep = law.gaussian_mixture()
    w = np.asarray(rep.weights, float)
    v = np.asarray(rep.variances, float)
    m = np.zeros_like(w) if rep.means is None else np.asarray(rep.means, float)
    if w.ndim != 1 or w.size == 0 or v.shape != w.shape or m.shape != w.shape:
        raise ValueError(f"{what}: gaussian_mixture() must give 1-D weights, means (or None) and "
                         f"variances of one length; got shapes {w.shape}, {m.shape}, {v.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.sum(w))
        moment = float(np.sum(w * (m * m + v)))
    if not (np.all(np.isfinite(w) & (w >= 0)) and abs(total - 1.0) <= LAW_WEIGHTS_TOL):
        raise ValueError(f"{what}: gaussian_mixture()'s weights must be finite, >= 0 and sum to 1 "
                         f"(within {number_text(LAW_WEIGHTS_TOL)}); they sum to {total:.10g}"
                         f"{'' if np.all(w >= 0) else ', and some are negative'}")
    if not np.all(np.isfinite(m) & np.isfinite(v) & (v >= 0)):
        raise ValueError(f"{what}: gaussian_mixture()'s means must be finite and its variances "
                         "finite and >= 0 (a component of zero variance is an atom)")
    second = float(np.asarray(law.second_moment, float))
    if np.isfinite(second) and not abs(second - moment) <= LAW_MOMENT_RTOL * max(abs(second), moment):
        raise ValueError(f"{what}: second_moment={second:.10g} disagrees with its "
                         f"gaussian_mixture()'s E eps^2 = sum_j p_j (m_j^2 + s_j^2) = {moment:.10g}; "
                         f"they must agree within {number_text(LAW_MOMENT_RTOL)} relative (second_moment is "
                         "used at c = inf, the mixture at finite c)")
    if np.isnan(second):
        raise ValueError(f"{what}: second_moment is nan; it must be E eps^2 (inf where it does not exist)")
    for dtype in (np.float32, np.float64):
        try:
            got_ = jax.eval_shape(lambda: law.sample(jax.random.key(0), (3,), dtype))
        except Exception as err:  # noqa: BLE001 - the user's code: say whose it is
            raise ValueError(f"{what}: sample(key, (3,), {np.dtype(dtype).name}) failed: "
                             f"{type(err).__name__}: {err}") from None
        want = jax.ShapeDtypeStruct((3,), jax.dtypes.canonicalize_dtype(dtype))
        if (getattr(got_, "shape", None), getattr(got_, "dtype", None)) != (want.shape, want.dtype):
            raise ValueError(f"{what}: sample(key, shape, dtype) must return an array of that shape "
                             f"and dtype; sample(key, (3,), {np.dtype(dtype).name}) gave "
                             f"{getattr(got_, 'shape', '?')} {getattr(got_, 'dtype', type(got_).__name__)}")


def data_problem(value, name: str = "data"):
    """A dataset in eigen-coordinates (duck-typed :class:`clipdyn.data.DataProblem`: the engines
    read ``features``, ``residuals`` and ``e0``), or ``None``."""
    if value is None:
        return value
    return _duck_typed(value, ("features", "residuals", "e0"),
                       f"{name} must be a dataset as clipdyn.data.load_problem returns it (a "
                       "DataProblem), e.g. load_problem('sklearn:name=digits')")


def got(value) -> str:
    """How a refusal names what it was given: the type, and the value where it is short."""
    shown = f" {value!r}" if isinstance(value, (str, int, float)) else ""
    return f"got {type(value).__name__}{shown}"


def _duck_typed(value, attrs: tuple[str, ...], must: str):
    """``value`` if it has every attribute in ``attrs`` (looked up statically), else the refusal."""
    if isinstance(value, type) or not all(_has_static(value, attr) for attr in attrs):
        raise ValueError(f"{must}; {got(value)}")
    return value


_RULE_MAKERS = "per_sample, batch_mean, micro_batch or index_thresholds from clipdyn.theory.rules"


def clip_rule(value, name: str = "rule"):
    """``None`` (one sample per step, the paper's C-SGD) or a clipdyn clipping rule.

    Duck-typed like :func:`noise_law` (``coefficients``, ``ode_factors``, ``batch``): this module
    sits below :mod:`clipdyn.theory.rules`. A rule's name as a string is refused with the makers' names.
    """
    if value is None:
        return value
    return _duck_typed(value, ("coefficients", "ode_factors", "batch"),
                       f"{name} must be None or a clipdyn clipping rule ({_RULE_MAKERS})")


def rtol(value, name: str = "rtol"):
    """The ODE's relative tolerance, in ``RTOL_RANGE``.

    Below 1e-14 the error estimate is rounding (float64 resolves 2.2e-16 per operation) and the
    step size underflows; above 0.1 the curve has no digit to trust.
    """
    lo, hi = RTOL_RANGE
    single(name, value, what="one tolerance")
    check_value("", name, value, lambda a: np.isfinite(a) & (a >= lo) & (a <= hi),
                f"a relative tolerance in [{lo:g}, {hi:g}]")
    return value


def real_vector(value, what: str) -> np.ndarray:
    """A concrete 1-D array of real numbers (integer or float), as float64.

    Args:
        value: the array (or anything NumPy turns into one).
        what: how messages name it (``"spectrum"``, ``"spectrum file 'lam.npy'"``).
    """
    kind, found = _kind(value)
    if kind not in _NUMERIC_KINDS:
        dtype = found if found.startswith("an array") else f"a {found}"
        raise ValueError(f"{what} must hold real numbers (integer or float); got {dtype}")
    arr = np.asarray(value, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D array; got shape {arr.shape}")
    return arr


def load_npy_vector(path: str | Path, what: str) -> np.ndarray:
    """A 1-D real array from a ``.npy`` file; every refusal names the file.

    Refused: a missing or unreadable file, a ``.npz`` archive, pickled (object) arrays, and arrays
    that are not 1-D or not of a real numeric dtype (complex, string, boolean, structured).
    """
    path = Path(path)
    label = f"{what} file {str(path)!r}"
    if path.is_dir():
        raise ValueError(f"{label} is a folder; give a .npy file")
    if not path.is_file():
        raise ValueError(f"{label} does not exist")
    try:
        with open(path, "rb") as f:  # closed even if unreadable (np.load leaks it then)
            arr = np.load(f, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise ValueError(f"{label} is not a readable .npy array ({err})") from None
    if not isinstance(arr, np.ndarray):
        if hasattr(arr, "close"):
            arr.close()
        raise ValueError(f"{label} is a .npz archive; give a .npy file holding one 1-D array")
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise ValueError(f"{label} holds an array of dtype {arr.dtype}; it must hold real numbers "
                         "(integer or float)")
    if arr.ndim != 1:
        raise ValueError(f"{label} holds an array of shape {arr.shape}; it must be 1-D")
    return arr.astype(float)


def output_path(value, name: str = "--out") -> Path:
    """A results path: a non-empty file name, not an existing folder."""
    if value is not None and not isinstance(value, (str, Path)):
        raise ValueError(f"{name}={value!r} is not allowed; {name} must be a path (str or Path), "
                         f"e.g. runs/sweep.npz; {got(value)}")
    text = str(value) if value is not None else ""
    if not text.strip() or text.endswith(("/", "\\")):
        raise ValueError(f"{name}={text!r} is not allowed; {name} must name a file, e.g. runs/sweep.npz")
    path = Path(text)
    if path.is_dir():
        raise ValueError(f"{name}={text!r} is an existing folder; {name} must name a file inside it, "
                         f"e.g. {str(path / 'sweep.npz')!r}")
    return path


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable``), or ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def bytes_text(n: float) -> str:
    """An amount of memory as the messages write it: ``7.45 GB``."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PB"  # pragma: no cover


def check_memory(n_bytes: float, what: str) -> None:
    """Refuse up front what cannot fit in this machine's available memory, with the amount.

    Args:
        n_bytes: what ``what`` would need.
        what: the request, as the user wrote it (``"identity: d=1000000000"``).
    """
    have = available_memory()
    if have is not None and n_bytes > have:
        raise ValueError(f"{what} needs about {bytes_text(n_bytes)} of memory; this machine has "
                         f"{bytes_text(have)} available")
