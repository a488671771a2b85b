"""Value learning, one transition at a time: TD targets and soft target-network updates.

rlax-style: each function describes **one** transition; a batch ``[B]`` is
``jax.vmap(fn)`` and a sequence of batches ``[T, B]`` is ``jax.vmap(jax.vmap(fn))``.

* **One-step TD target.** For a transition ``(s, a, r, s')`` with discount flag
  ``d = 1 − terminated`` (a time-limit truncation keeps ``d = 1`` and bootstraps from
  the final observation) and a target value ``v'`` of the successor (for DDPG/TD3
  ``v' = min_c Q'_c(s', a')``, for SARSA ``Q(s', a')``, for Q-learning
  ``max_a' Q(s', a')``)::

      y = r + γ d v'

  The TD error is ``δ = y − Q(s, a)``; regressing ``Q(s, a)`` on ``y`` with ``y``
  held fixed is semi-gradient TD(0). No gradient is stopped here: callers stop it.

* **Soft (Polyak) target update.** With online parameters ``θ`` and target
  parameters ``θ'``::

      θ' ← τ θ + (1 − τ) θ',   τ ∈ (0, 1]

  so after ``n`` updates towards a fixed ``θ`` the gap shrinks geometrically,
  ``θ'_n − θ = (1 − τ)ⁿ (θ'_0 − θ)``; ``τ = 1`` copies ``θ``.

Example:
    >>> td_target(jnp.float32(1.0), jnp.float32(1.0), jnp.float32(5.0), 0.9)  # 1 + 0.9 · 5
    Array(5.5, dtype=float32)
    >>> batched = jax.vmap(td_target, in_axes=(0, 0, 0, None))   # [B] transitions
    >>> target = soft_update(target, online, tau=0.005)

References: R. S. Sutton, "Learning to predict by the methods of temporal
differences", Machine Learning 3 (1988) (TD targets); R. S. Sutton & A. G. Barto,
*Reinforcement Learning: An Introduction* (2nd ed., 2018), §6.1; T. P. Lillicrap et
al., "Continuous control with deep reinforcement learning", ICLR 2016 (soft target
updates); F. Pardo et al., "Time Limits in Reinforcement Learning", ICML 2018
(bootstrapping at time-outs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from common.checks import (
    check_float_dtype,
    check_in_range,
    check_rank,
    is_concrete,
    shape_of,
    shape_str,
)

__all__ = ["soft_update", "td_target", "validate_tau"]


def validate_tau(tau) -> None:
    """Raise ``ValueError`` unless a concrete ``tau`` is a scalar with ``0 < tau <= 1``
    (NaN fails; a traced ``tau`` is not checked)."""
    check_rank(tau, "tau", 0, "[] (a scalar)")
    if is_concrete(tau):
        value = float(tau)
        if not 0.0 < value <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {value}")


def td_target(reward, discount, next_value, gamma) -> jax.Array:
    """One-step TD target ``y = r + γ d v'`` of one transition.

    Args:
      reward: ``[]`` reward ``r`` of the transition.
      discount: ``[]`` ``d = 1 − terminated`` (1 for truncated transitions).
      next_value: ``[]`` target value ``v'`` of the successor.
      gamma: ``[]`` discount factor in ``[0, 1]``.

    The three per-transition arguments must have the same shape; the function is
    elementwise, so equal-shaped ``[B]`` arrays give exactly what ``jax.vmap`` over
    ``B`` gives (the DDPG learner passes its batch directly).

    Returns:
      ``[]`` the target ``y`` (same shape as ``reward``).

    Raises:
      ValueError: shapes that differ, a non-floating ``reward`` or ``next_value``, a
        non-scalar ``gamma``, or a concrete ``gamma`` outside ``[0, 1]``.

    Example:
        >>> td_target(jnp.float32(1.0), jnp.float32(0.0), jnp.float32(5.0), 0.9)  # terminal
        Array(1., dtype=float32)
        >>> jax.vmap(jax.vmap(td_target, (0, 0, 0, None)), (0, 0, 0, None))(r, d, v, 0.99)

    Reference: Sutton (1988); Sutton & Barto (2018), §6.1.
    """
    reward, discount, next_value = (jnp.asarray(x) for x in (reward, discount, next_value))
    check_float_dtype(reward, "reward")
    check_float_dtype(next_value, "next_value")
    shape = shape_of(reward)
    for x, name in ((discount, "discount"), (next_value, "next_value")):
        if shape_of(x) != shape:
            raise ValueError(f"{name} must have the shape of reward {shape_str(shape)} (one "
                             f"transition: []), got shape {shape_str(shape_of(x))}")
    check_rank(gamma, "gamma", 0, "[] (a scalar)")
    check_in_range(gamma, "gamma", 0.0, 1.0)
    return reward + gamma * discount * next_value


def soft_update(target, online, tau):
    """Polyak averaging ``θ' ← τ θ + (1 − τ) θ'`` of a target pytree towards ``online``.

    Args:
      target: the target parameters ``θ'`` (a pytree of arrays).
      online: the online parameters ``θ`` (same structure and leaf shapes).
      tau: ``[]`` step size in ``(0, 1]``; ``1`` copies ``online``.

    Returns:
      The new target pytree (``optax.incremental_update``).

    Raises:
      ValueError: a concrete ``tau`` outside ``(0, 1]``, or ``target`` and ``online``
        with different structures or leaf shapes.

    Example:
        >>> soft_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, 0.1)["w"]
        Array([0.1, 0.1], dtype=float32)

    Reference: Lillicrap et al. (2016), §7 ("soft" target updates).
    """
    validate_tau(tau)
    if jax.tree.structure(target) != jax.tree.structure(online):
        raise ValueError("target and online must have the same pytree structure, got "
                         f"{jax.tree.structure(target)} and {jax.tree.structure(online)}")
    for (path, t), o in zip(jax.tree_util.tree_leaves_with_path(target),
                            jax.tree.leaves(online), strict=True):
        if shape_of(t) != shape_of(o):
            raise ValueError(f"target leaf {jax.tree_util.keystr(path)} must have the "
                             f"shape of online {shape_str(shape_of(o))}, got "
                             f"{shape_str(shape_of(t))}")
    return optax.incremental_update(online, target, tau)
