"""Argument checks specific to the generative package (trace-time, named errors).

The generic helpers (``shape_str``, ``check_positive``, ``check_unit_interval``,
``per_sample``, ``float_dtype``, ...) live in :mod:`common.checks`; this module holds
only the checks of the score-model conventions: batch-first floating states
``x [B, ...]``, per-sample diffusion times ``t [B]`` in ``[0, T]``, ``T = 1``, scores of
x's shape, and the smallest time ``eps`` of samplers, losses and likelihoods.

Example:
    >>> check_x_t(jnp.zeros((4, 2)), jnp.full((4,), 0.5))   # passes
    >>> check_batch(jnp.ones((4, 2), jnp.int32))
    Traceback (most recent call last):
    ValueError: x must be floating point, got dtype int32
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from common.checks import check_float_dtype, check_unit_interval, is_concrete, shape_str

__all__ = ["check_batch", "check_eps", "check_score", "check_x_t", "checked_score_fn"]


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


def check_score(out, x, name: str = "score_fn") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``out`` (its output at ``x``) has x's
    shape ``[B, ...]`` (a static check: it runs at trace time)."""
    if jnp.shape(out) != jnp.shape(x):
        raise ValueError(f"{name} must return an array of shape [B, ...] = "
                         f"{shape_str(jnp.shape(x))} (x's shape), got shape "
                         f"{shape_str(jnp.shape(out))}")


def checked_score_fn(score_fn: Callable, name: str = "score_fn") -> Callable:
    """``score_fn(x, *args)`` whose output shape is checked by :func:`check_score`."""
    def checked(x, *args):
        out = score_fn(x, *args)
        check_score(out, x, name)
        return out

    return checked


def _std_vanishes_at_zero(sde) -> bool:
    """Whether the perturbation kernel's std is 0 at ``t = 0`` (VP, sub-VP; not VE)."""
    with jax.ensure_compile_time_eval():
        _, std = sde.marginal_prob(jnp.zeros((1, 1)), jnp.zeros((1,)))
        return bool(std[0] == 0)


def check_eps(eps, sde, name: str = "eps", *, positive: bool = False) -> float:
    """``eps`` as a float: the smallest time of a sampler, loss or likelihood.

    Raises ``ValueError`` naming ``name`` unless ``eps`` is a number in ``[0, T)``,
    and ``> 0`` when ``positive`` or when the SDE's marginal std vanishes at ``t = 0``
    (VP, sub-VP): a score ``s = −ε̂/std`` (:func:`generative.sde.make_score_fn`) is then
    0/0 at ``t = 0`` and every sample would be NaN.

    Example:
        >>> check_eps(1e-3, VPSDE())
        0.001
    """
    if not is_concrete(eps) or jnp.ndim(eps) != 0:
        raise ValueError(f"{name} must be a number (static), got {eps!r}")
    value = float(eps)
    if not 0.0 <= value < sde.T:
        raise ValueError(f"{name} must be in [0, T) = [0, {sde.T}), got {value}")
    if value == 0.0 and (positive or _std_vanishes_at_zero(sde)):
        why = ("" if positive else f": the marginal std of {type(sde).__name__} vanishes at "
               "t = 0, where a score −ε̂/std is undefined")
        raise ValueError(f"{name} must be > 0{why}; got {name} = 0 (score_sde uses 1e-3 for "
                         "sampling, 1e-5 for training and likelihood)")
    return value
