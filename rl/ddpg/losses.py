"""Pure DDPG/TD3 loss pieces: TD targets, critic and actor losses, target smoothing,
soft target updates. Nothing here knows about networks: values come in as arrays.

With a deterministic policy ``μ_θ``, critics ``Q_φc`` (``c = 1..C``; ``C = 1`` for
DDPG, ``2`` for TD3's twin critics) and their target copies ``μ_θ'``, ``Q_φ'c``:

* target action   ``a' = clip(μ_θ'(s') + clip(ε, −c, c), low, high)``,
  ``ε ~ N(0, σ²)`` (TD3 target policy smoothing; ``σ = 0`` for DDPG), clipped to the
  real action bounds;
* TD target       ``y = r + γ d min_c Q_φ'c(s', a')`` with ``d = 1 − terminated``
  (a truncated episode keeps ``d = 1`` and bootstraps from its final observation);
* critic loss     ``L(φ) = Σ_c mean_b (Q_φc(s_b, a_b) − y_b)²``;
* actor loss      ``J(θ) = −mean_b Q_φ1(s_b, μ_θ(s_b))``, whose gradient is the
  deterministic policy gradient ``−mean_b ∇_a Q(s_b, a)|_{a = μ(s_b)} ∇_θ μ_θ(s_b)``;
* soft update     ``θ' ← τ θ + (1 − τ) θ'`` (``optax.incremental_update``), so after
  ``n`` updates towards fixed ``θ``: ``θ'_n − θ = (1 − τ)ⁿ (θ'_0 − θ)``.

References: D. Silver et al., "Deterministic Policy Gradient Algorithms", ICML 2014;
T. P. Lillicrap et al., "Continuous control with deep reinforcement learning", ICLR
2016; S. Fujimoto, H. van Hoof, D. Meger, "Addressing Function Approximation Error in
Actor-Critic Methods" (TD3), ICML 2018.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["critic_loss", "dpg_actor_loss", "scale_action", "smoothed_target_action",
           "soft_update", "td_target", "validate_tau"]


def _check_rank(x, ndim: int, name: str, shape: str) -> None:
    if jnp.ndim(x) != ndim:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(jnp.shape(x))}")


def validate_tau(tau) -> None:
    """Raise ``ValueError`` unless ``0 < tau <= 1`` (only for concrete values)."""
    if isinstance(tau, jax.core.Tracer):
        return
    value = float(tau)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {value}")


def td_target(reward: jax.Array, discount: jax.Array, next_q: jax.Array,
              gamma: float) -> jax.Array:
    """One-step TD target ``y = r + γ d q'``.

    Args:
      reward: ``[B]`` rewards.
      discount: ``[B]`` ``1 − terminated`` (1 for truncated transitions).
      next_q: ``[B]`` target value of the successor, ``min_c Q'_c(s', a')``.
      gamma: discount factor in ``[0, 1]``.

    Returns:
      ``[B]`` targets (no gradient is stopped here; callers stop it).

    Example:
        >>> td_target(jnp.array([1.0]), jnp.array([0.0]), jnp.array([5.0]), 0.9)
        Array([1.], dtype=float32)
    """
    for x, name in ((reward, "reward"), (discount, "discount"), (next_q, "next_q")):
        _check_rank(x, 1, name, "[B]")
    if not (reward.shape == discount.shape == next_q.shape):
        raise ValueError(f"reward, discount and next_q must all be [B], got {reward.shape}, "
                         f"{discount.shape}, {next_q.shape}")
    if not isinstance(gamma, jax.core.Tracer) and not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    return reward + gamma * discount * next_q


def critic_loss(q: jax.Array, target: jax.Array) -> jax.Array:
    """``Σ_c mean_b (q[c, b] − y[b])²``: the critics' squared TD errors.

    Args:
      q: ``[C, B]`` values of the stored actions under each of ``C`` critics.
      target: ``[B]`` TD targets (treated as constants).

    Returns:
      Scalar loss.
    """
    _check_rank(q, 2, "q", "[C, B]")
    _check_rank(target, 1, "target", "[B]")
    if q.shape[1] != target.shape[0]:
        raise ValueError(f"q [C, B] and target [B] disagree on B: {q.shape} vs {target.shape}")
    target = jax.lax.stop_gradient(target)
    return jnp.sum(jnp.mean((q - target[None, :]) ** 2, axis=1))


def dpg_actor_loss(q: jax.Array) -> jax.Array:
    """``−mean_b Q(s_b, μ(s_b))``; differentiate through ``μ`` for the DPG.

    Args:
      q: ``[B]`` first-critic values of the policy's actions.

    Returns:
      Scalar loss.
    """
    _check_rank(q, 1, "q", "[B]")
    return -jnp.mean(q)


def _bounds(low, high, like: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``low, high [A]`` as arrays of ``like``'s dtype and rank (explicit broadcasting)."""
    shape = (1,) * (jnp.ndim(like) - 1) + (-1,)
    low = jnp.asarray(low, like.dtype).reshape(shape)
    high = jnp.asarray(high, like.dtype).reshape(shape)
    if low.shape[-1] != like.shape[-1] or high.shape[-1] != like.shape[-1]:
        raise ValueError(f"bounds low/high must have shape [{like.shape[-1]}], got "
                         f"{jnp.shape(low)[-1:]} and {jnp.shape(high)[-1:]}")
    return low, high


def scale_action(u: jax.Array, low, high) -> jax.Array:
    """Map ``u ∈ [−1, 1]^A`` affinely onto ``[low, high]``: ``low + (u + 1)(high − low)/2``.

    Args:
      u: ``[..., A]``.
      low, high: ``[A]`` bounds.

    Example:
        >>> scale_action(jnp.array([0.0]), [-2.0], [2.0])
        Array([0.], dtype=float32)
    """
    if jnp.ndim(u) < 1:
        raise ValueError(f"u must have shape [..., A], got {jnp.shape(u)}")
    low, high = _bounds(low, high, u)
    return low + (u + 1.0) * (0.5 * (high - low))


def smoothed_target_action(action: jax.Array, key: jax.Array, noise_std: float,
                           noise_clip: float, low, high) -> jax.Array:
    """TD3 target policy smoothing, clipped to the real action bounds.

    ``a' = clip(a + clip(ε, −c, c), low, high)`` with ``ε ~ N(0, σ²)``; ``σ`` and ``c``
    are in units of the half action range ``(high − low)/2`` (TD3's 0.2 and 0.5 for
    a ``[−1, 1]`` action space).

    Args:
      action: ``[B, A]`` target-policy actions.
      key: PRNG key.
      noise_std: ``σ >= 0`` (``0`` only clips to the bounds).
      noise_clip: ``c > 0``.
      low, high: ``[A]`` action bounds.

    Returns:
      ``[B, A]`` actions inside ``[low, high]``.
    """
    _check_rank(action, 2, "action", "[B, A]")
    low, high = _bounds(low, high, action)  # [1, A]
    half = 0.5 * (high - low)
    eps = noise_std * jax.random.normal(key, action.shape, action.dtype)
    eps = jnp.clip(eps, -noise_clip, noise_clip) * half
    return jnp.clip(action + eps, low, high)


def soft_update(target, online, tau: float):
    """Polyak averaging ``target ← τ online + (1 − τ) target`` (``optax.incremental_update``).

    Args:
      target: the target-network pytree.
      online: the online-network pytree (same structure).
      tau: step size in ``(0, 1]``; ``1`` copies ``online``.

    Returns:
      The new target pytree.

    Raises:
      ValueError: for a concrete ``tau`` outside ``(0, 1]``.
    """
    validate_tau(tau)
    return optax.incremental_update(online, target, tau)
