"""Argument checks specific to the generative package (trace-time, named errors).

The generic helpers (``shape_str``, ``check_positive``, ``check_unit_interval``,
``per_sample``, ``float_dtype``, ...) live in :mod:`common.checks`; this module holds
only the checks of the score-model conventions: batch-first floating states
``x [B, ...]`` and per-sample diffusion times ``t [B]`` in ``[0, T]``, ``T = 1``.

Example:
    >>> check_x_t(jnp.zeros((4, 2)), jnp.full((4,), 0.5))   # passes
    >>> check_batch(jnp.ones((4, 2), jnp.int32))
    Traceback (most recent call last):
    ValueError: x must be floating point, got dtype int32
"""

from __future__ import annotations

import jax.numpy as jnp

from common.checks import check_float_dtype, check_unit_interval, shape_str

__all__ = ["check_batch", "check_x_t"]


def check_batch(x, name: str = "x") -> None:
    """``x`` is a batch-first ``[B, ...]`` floating array.

    Raises:
      ValueError: naming ``name`` for a scalar or a non-floating dtype.
    """
    if jnp.ndim(x) < 1:
        raise ValueError(f"{name} must be batch-first with shape [B, ...], got a scalar")
    check_float_dtype(x, name)


def check_x_t(x, t, x_name: str = "x", t_name: str = "t") -> None:
    """``x`` is ``[B, ...]`` (rank >= 1) and ``t`` is ``[B]`` with the same ``B``;
    concrete ``t`` must lie in ``[0, 1]`` (``T = 1``).

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
