"""Shape and value checks shared by the generative package (trace-time, named errors)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def shape_str(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def is_concrete(x) -> bool:
    """True when ``x`` holds values now (not a tracer inside jit/grad/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def check_x_t(x, t, x_name: str = "x", t_name: str = "t") -> None:
    """``x`` is ``[B, ...]`` (rank >= 1) and ``t`` is ``[B]`` with the same ``B``;
    concrete ``t`` must lie in ``[0, 1]``.

    Raises:
      ValueError: naming the argument and the expected shape or range.
    """
    if jnp.ndim(x) < 1:
        raise ValueError(f"{x_name} must be batch-first with shape [B, ...], got a scalar")
    if jnp.ndim(t) != 1:
        raise ValueError(f"{t_name} must have shape [B] = ({x.shape[0]},) (one time per "
                         f"sample of {x_name}), got shape {shape_str(jnp.shape(t))}")
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"{x_name} and {t_name} must share the batch size B: {x_name} has "
                         f"shape {shape_str(x.shape)}, {t_name} has shape "
                         f"{shape_str(t.shape)}")
    check_unit_interval(t, t_name)


def check_unit_interval(t, name: str = "t") -> None:
    """Raise if a concrete ``t`` has values outside ``[0, 1]`` (or NaN)."""
    if is_concrete(t):
        values = np.asarray(t)
        if values.size and not (np.all(values >= 0.0) and np.all(values <= 1.0)):
            bad = values[~((values >= 0.0) & (values <= 1.0))].ravel()[:3].tolist()
            raise ValueError(f"{name} must lie in [0, 1] (T = 1), got values such as {bad}")


def check_positive(value, name: str) -> None:
    """Raise unless every entry of a concrete ``value`` is finite and > 0."""
    if is_concrete(value):
        arr = np.asarray(value, dtype=np.float64)
        if arr.size == 0 or not np.all(np.isfinite(arr)) or not np.all(arr > 0):
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def per_sample(v, x):
    """Reshape a per-sample ``[B]`` array to ``[B, 1, ..., 1]`` to scale ``x [B, ...]``."""
    return jnp.reshape(v, (v.shape[0],) + (1,) * (jnp.ndim(x) - 1))


def float_dtype(x):
    """``x``'s dtype if floating, else the default float dtype."""
    dtype = jnp.result_type(x)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)
