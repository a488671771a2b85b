"""Argument checks shared by every package: one copy, named errors, trace-time first.

Policy for bad values. Shapes, ranks and dtypes are static, so they are always
checked at trace time. Checks on *values* (ranges, finiteness, probabilities that sum
to one) depend on the mode:

* **eager** (the value is concrete, :func:`is_concrete`): raise ``ValueError`` naming
  the argument;
* **traced** (inside ``jit``/``grad``/``vmap``/``scan``, where raising is impossible):
  the same condition is computed on device and the output is *poisoned* with
  :func:`poison`: floating outputs become NaN, integer outputs −1, and where the
  result is a structured type it carries a boolean ``valid`` field. Nothing
  plausible comes out of bad input: NaN propagates into every downstream value, and
  ``common.train.fit`` refuses a non-finite loss.

One policy for every entry point, chosen over ``jax.experimental.checkify`` because it
needs no wrapper around the caller's ``jit`` and works the same under ``vmap`` and on
every backend.

Every message names the argument and what was expected, for example
``x must have shape [B, D] = (8, 3), got shape (8, 4)``.

Example:
    >>> from common.checks import check_int, check_rank, shape_str
    >>> check_int(3, "num_layers")
    3
    >>> shape_str((2, 3))
    '(2, 3)'
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_fields",
    "check_finite",
    "check_float_dtype",
    "check_in_range",
    "check_int",
    "check_positive",
    "check_rank",
    "check_unit_interval",
    "concrete_value",
    "float_dtype",
    "is_concrete",
    "mark_valid",
    "per_sample",
    "poison",
    "shape_of",
    "shape_str",
    "value_ok",
]


def shape_str(shape) -> str:
    """``(2, 3)`` for a shape tuple (``(5,)`` is written ``(5)``, as in messages)."""
    return "(" + ", ".join(str(s) for s in shape) + ")"


def shape_of(x) -> tuple[int, ...]:
    """The shape of an array-like (scalars and lists included)."""
    return tuple(jnp.shape(x))


def is_concrete(x) -> bool:
    """True when ``x`` holds values now (not a tracer inside jit/grad/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def concrete_value(x) -> np.ndarray | None:
    """``x`` as a numpy array, or None when it is traced (inside jit/grad/vmap)."""
    return np.asarray(x) if is_concrete(x) else None


def check_int(value, name: str, minimum: int | None = 1, maximum: int | None = None) -> int:
    """``value`` as a Python int; raise unless it is an integer (not a bool) in range.

    Args:
      value: a Python or numpy integer (a float such as ``256.7`` is refused).
      name: the argument's name for the message.
      minimum, maximum: inclusive bounds (None: unbounded).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}, got {value!r}")
    return int(value)


def check_rank(x, name: str, ndim: int | Sequence[int], spec: str) -> None:
    """Raise unless ``x`` has rank ``ndim`` (or one of several); ``spec`` names the
    expected layout, e.g. ``"[B, D]"``."""
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if jnp.ndim(x) not in allowed:
        raise ValueError(f"{name} must have shape {spec}, got shape {shape_str(shape_of(x))}")


def check_float_dtype(x, name: str) -> None:
    """Raise unless ``x`` has a floating-point dtype."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point, got dtype {dtype}")


def check_finite(x, name: str) -> None:
    """Raise if a concrete ``x`` holds NaN or ±inf (skipped when traced)."""
    values = concrete_value(x)
    if values is not None and values.size and not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite, got non-finite values")


def check_positive(value, name: str) -> None:
    """Raise unless every entry of a concrete ``value`` is finite and > 0."""
    if is_concrete(value):
        arr = np.asarray(value, dtype=np.float64)
        if arr.size == 0 or not np.all(np.isfinite(arr)) or not np.all(arr > 0):
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def check_in_range(value, name: str, low: float, high: float, *,
                   low_open: bool = False, high_open: bool = False) -> None:
    """Raise unless every entry of a concrete ``value`` lies in the interval
    ``[low, high]`` (open ends with ``low_open``/``high_open``; NaN always fails)."""
    if not is_concrete(value):
        return
    arr = np.asarray(value, dtype=np.float64)
    ok = (arr > low if low_open else arr >= low) & (arr < high if high_open else arr <= high)
    if arr.size and not np.all(ok):
        interval = ("(" if low_open else "[") + f"{low:g}, {high:g}" + (")" if high_open else "]")
        bad = arr[~ok].ravel()[:3].tolist()
        raise ValueError(f"{name} must lie in {interval}, got values such as {bad}")


def check_unit_interval(t, name: str = "t") -> None:
    """Raise if a concrete ``t`` has values outside ``[0, 1]`` (or NaN)."""
    check_in_range(t, name, 0.0, 1.0)


def check_fields(config, *, positive_ints=(), nonnegative_ints=(), positive=(),
                 nonnegative=(), fractions=(), sizes=(), nonempty=()) -> None:
    """Check named fields of a config dataclass; ``ValueError`` naming the first bad one.

    Args:
      config: the config (any object with the named attributes).
      positive_ints: integers >= 1 (floats such as ``256.7`` and bools refused).
      nonnegative_ints: integers >= 0.
      positive: finite numbers > 0.
      nonnegative: finite numbers >= 0.
      fractions: finite numbers in ``[0, 1)`` (dropout rates, split fractions).
      sizes: non-empty sequences of integers >= 1 (layer widths).
      nonempty: non-empty sequences.

    Example:
        >>> check_fields(cfg, positive_ints=("steps", "batch_size"), fractions=("dropout",))
    """
    for name in positive_ints:
        check_int(getattr(config, name), name, 1)
    for name in nonnegative_ints:
        check_int(getattr(config, name), name, 0)

    def number(name: str, low: float, *, strict: bool, high: float | None = None) -> None:
        value = getattr(config, name)
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, bool) and np.isfinite(value) and (value > low if strict else value >= low)
        if ok and high is not None:
            ok = value < high
        if not ok:
            bound = f"in [{low:g}, {high:g})" if high is not None else (
                f"{'>' if strict else '>='} {low:g}")
            raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")

    for name in positive:
        number(name, 0.0, strict=True)
    for name in nonnegative:
        number(name, 0.0, strict=False)
    for name in fractions:
        number(name, 0.0, strict=False, high=1.0)
    for name in sizes:
        values = getattr(config, name)
        if not isinstance(values, (tuple, list)) or not values:
            raise ValueError(f"{name} must list at least one size, got {values!r}")
        for i, value in enumerate(values):
            check_int(value, f"{name}[{i}]", 1)
    for name in nonempty:
        values = getattr(config, name)
        if not isinstance(values, (tuple, list)) or not values:
            raise ValueError(f"{name} must hold at least one entry, got {values!r}")


def poison(tree, ok):
    """``tree`` where ``ok`` holds, invalid values where it does not (the traced-value
    policy above): floating leaves become NaN, integer leaves −1, booleans False.

    Args:
      tree: a pytree of arrays.
      ok: a boolean scalar (or an array broadcastable to every leaf).

    Example:
        >>> values = poison(values, (gamma >= 0) & (gamma < 1))
    """
    def one(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            bad = jnp.array(jnp.nan, x.dtype)
        elif jnp.issubdtype(x.dtype, jnp.bool_):
            bad = jnp.array(False)
        else:
            bad = jnp.array(-1, x.dtype)
        return jnp.where(ok, x, bad)

    return jax.tree.map(one, tree)


def mark_valid(result, ok):
    """``result`` (a NamedTuple with a ``valid`` field) with ``valid = ok`` (broadcast to
    the field's shape), poisoned where ``ok`` is False (:func:`poison`)."""
    valid = jnp.broadcast_to(jnp.asarray(ok, jnp.bool_), jnp.shape(result.valid))
    return poison(result._replace(valid=valid), ok)


def value_ok(value, name: str, condition, expected: str):
    """Whether every entry of ``value`` satisfies ``condition``, by the policy above.

    A concrete failure raises ``ValueError`` naming ``name`` and ``expected``; a
    concrete success gives True; a traced value gives the on-device boolean for the
    caller to :func:`poison` with. Constants closed over by a traced function count as
    concrete (they are checked eagerly, at trace time).

    Example:
        >>> ok = value_ok(beta, "beta", lambda b: jnp.isfinite(b) & (b > 0), "finite and > 0")
    """
    if not is_concrete(value):
        return jnp.all(condition(value))
    with jax.ensure_compile_time_eval():
        arr = jnp.asarray(value)
        bad = ~condition(arr)
        if bool(jnp.any(bad)):
            shown = float(arr) if arr.ndim == 0 else f"values such as {arr[bad][:3].tolist()}"
            raise ValueError(f"{name} must be {expected}, got {shown}")
    return True


def per_sample(v, x):
    """Reshape a per-sample ``[B]`` array to ``[B, 1, ..., 1]`` to scale ``x [B, ...]``."""
    return jnp.reshape(v, (v.shape[0],) + (1,) * (jnp.ndim(x) - 1))


def float_dtype(x):
    """``x``'s dtype if floating, else the default float dtype."""
    dtype = jnp.result_type(x)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)
